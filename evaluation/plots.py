"""Figures for the evaluation harnesses: series, scores, labelled spans and alarms (Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from anomaly.protocol import FloatArray


@dataclass(frozen=True)
class Panel:
    """One series to draw: values, final scores, labelled spans (row indices), alarms."""

    title: str
    values: FloatArray
    score: FloatArray
    alarms: npt.NDArray[np.bool_]
    spans: Sequence[tuple[int, int]]
    threshold: float
    span_label: str = "anomaly window"
    marker: int | None = None  # a row to mark with a vertical line (e.g. probation end)
    marker_label: str = ""


def plot_panels(panels: Sequence[Panel], path: Path) -> None:
    """Draw each panel (values on top, score below) into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2 * len(panels),
        1,
        figsize=(14, 4.2 * len(panels)),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1] * len(panels)},
    )
    for k, panel in enumerate(panels):
        top, bottom = axes[2 * k][0], axes[2 * k + 1][0]
        rows = np.arange(panel.values.shape[0])
        values = panel.values if panel.values.ndim == 1 else panel.values[:, 0]
        top.plot(rows, values, lw=0.6, color="tab:blue", label="value")
        for n, (left, right) in enumerate(panel.spans):
            top.axvspan(
                left, right, color="tab:red", alpha=0.18, label=panel.span_label if n == 0 else None
            )
            bottom.axvspan(left, right, color="tab:red", alpha=0.18)
        hits = np.flatnonzero(panel.alarms)
        top.scatter(
            hits,
            values[hits],
            color="black",
            marker="v",
            s=36,
            zorder=3,
            label=f"alarms ({hits.size})",
        )
        if panel.marker is not None:
            top.axvline(panel.marker, color="grey", ls="--", lw=1, label=panel.marker_label)
        top.set_title(panel.title, fontsize=10)
        top.legend(loc="upper right", fontsize=8)
        bottom.plot(rows, panel.score, lw=0.6, color="tab:green")
        bottom.axhline(panel.threshold, color="black", ls=":", lw=1)
        bottom.set_ylabel("score", fontsize=8)
        bottom.set_xlabel("row", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
