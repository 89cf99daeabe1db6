"""Run one streaming configuration over every series of a NAB-layout directory and score it
with NAB's method (evaluation.nab)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from anomaly.protocol import JsonValue
from anomaly.streaming import StreamConfig, StreamResult, run_stream
from evaluation.nab import (
    FileScore,
    NabSeries,
    load_nab_dir,
    probationary_length,
    profiles_for,
    score_table,
)
from evaluation.plots import Panel


@dataclass(frozen=True)
class SeriesRun:
    """One series: its data, the stream's output and its scores per profile."""

    series: NabSeries
    result: StreamResult
    scores: dict[str, FileScore]


@dataclass(frozen=True)
class NabReport:
    """Per-series runs and the corpus scores per profile (NAB-normalised, 0..100)."""

    config: StreamConfig
    runs: tuple[SeriesRun, ...]
    overall: dict[str, float]

    def to_json(self) -> dict[str, JsonValue]:
        """``{"series": {NAME: {...}}, "overall": {profile: score}, "config": ...}``."""
        series: dict[str, JsonValue] = {}
        for run in self.runs:
            profiles: dict[str, JsonValue] = {}
            for profile, score in run.scores.items():
                profiles[profile] = {
                    "raw": score.raw,
                    "null": score.null,
                    "perfect": score.perfect,
                    "tp": score.tp,
                    "tn": score.tn,
                    "fp": score.fp,
                    "fn": score.fn,
                    "total": score.total,
                    "windows": score.windows,
                    "detected_windows": score.detected_windows,
                }
            series[run.series.name] = {
                "rows": len(run.series.timestamps),
                "windows": len(run.series.windows),
                "alarms": int(run.result.alarms.sum()),
                "profiles": profiles,
            }
        overall: dict[str, JsonValue] = {k: v for k, v in self.overall.items()}
        return {"series": series, "overall": overall, "config": self.config.describe()}


def evaluate_nab(
    root: Path,
    config: StreamConfig,
    on_series: Callable[[NabSeries], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    series: list[NabSeries] | None = None,
) -> NabReport:
    """Stream ``config`` over every series under ``root`` and score the alarms the NAB way.

    ``series`` may carry ``load_nab_dir(root)`` when the caller has read it already.
    """
    all_series = load_nab_dir(root) if series is None else series
    profiles = profiles_for(root)
    results: dict[str, StreamResult] = {}
    for one in all_series:
        if on_series is not None:
            on_series(one)
        results[one.name] = run_stream(one.values, config, on_progress)
    per_file, overall = score_table(
        {name: result.alarms for name, result in results.items()},
        {one.name: one.windows for one in all_series},
        profiles,
    )
    runs = tuple(SeriesRun(one, results[one.name], per_file[one.name]) for one in all_series)
    return NabReport(config, runs, overall)


def format_nab(report: NabReport) -> str:
    """A plain-text table: one line per series and profile, then the corpus scores."""
    lines = [f"configuration: {report.config.describe()}"]
    header = f"{'series':<50} {'profile':<19} {'raw':>8} {'windows':>8} {'TP':>5} {'FP':>5}"
    lines.append(header)
    for run in report.runs:
        for profile, score in run.scores.items():
            lines.append(
                f"{run.series.name:<50} {profile:<19} {score.raw:8.3f} "
                f"{score.detected_windows:>3}/{score.windows:<4} {score.tp:5d} {score.fp:5d}"
            )
    for profile, value in report.overall.items():
        lines.append(f"overall {profile:<19} {value:6.1f}")
    return "\n".join(lines)


def nab_panels(report: NabReport, threshold: float) -> list[Panel]:
    """One panel per series: values, score, NAB's windows, the end of the probation."""
    return [
        Panel(
            title=f"{run.series.name}: standard raw {run.scores['standard'].raw:.2f}, "
            f"{run.scores['standard'].detected_windows}/{run.scores['standard'].windows}"
            f" windows, {run.scores['standard'].fp} FP",
            values=run.series.values,
            score=run.result.score,
            alarms=run.result.alarms,
            spans=[(w.left, w.right) for w in run.series.windows],
            threshold=threshold,
            marker=probationary_length(len(run.series.timestamps)),
            marker_label="end of probation",
        )
        for run in report.runs
    ]
