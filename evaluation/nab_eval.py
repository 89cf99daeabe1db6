"""Run one streaming configuration over every series of a NAB-layout directory and score it
with NAB's method (evaluation.nab); and the context-novelty detector (anomaly.context) on a
NAB corpus with a fixed tuning/held-out split, beside NAB's published detectors, with its
CPU cost per reading (docs/anomaly-nab.md)."""

from __future__ import annotations

import csv
import itertools
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from anomaly.context import DEFAULT_REFRACTORY, ContextNovelty, ContextParams, alarm_flags
from anomaly.protocol import FloatArray, JsonValue
from anomaly.streaming import StreamConfig, StreamResult, run_stream
from evaluation.nab import (
    CostMatrix,
    FileScore,
    NabFormatError,
    NabSeries,
    Window,
    load_nab_dir,
    normalised,
    probationary_length,
    profiles_for,
    score_detections,
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


# --- the context-novelty detector on a NAB corpus (docs/anomaly-nab.md) ------------------

CONTEXT_SPLIT_SEED = 15
PARTS: tuple[str, ...] = ("whole", "tuning", "held-out")
# The published detectors the report sets beside ours, as NAB's results name them.
PUBLISHED_DETECTORS: dict[str, str] = {
    "ARTime": "ARTime",
    "contextOSE": "CAD OSE",
    "numenta": "Numenta HTM",
    "htmjava": "htmjava",
    "earthgeckoSkyline": "Skyline",
    "knncad": "KNN CAD",
    "randomCutForest": "RCF",
}


def split_corpus(
    series: Sequence[NabSeries], seed: int = CONTEXT_SPLIT_SEED
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The fixed split: (tuning, held-out) file names, half of every category each.

    Within each category (sorted by name) the files are shuffled with ``random.Random(seed)``
    (one generator, categories in sorted order) and the first half tunes; a category with an
    odd count gives its extra file to the tuning part and the next odd one to the held-out
    part, alternately, so the halves are equal in size.
    """
    by_category: dict[str, list[str]] = {}
    for one in series:
        by_category.setdefault(one.name.split("/", 1)[0], []).append(one.name)
    rng = random.Random(seed)
    tuning: list[str] = []
    odd = 0
    for category in sorted(by_category):
        names = sorted(by_category[category])
        rng.shuffle(names)
        take = len(names) // 2
        if len(names) % 2:
            take += 1 - odd % 2
            odd += 1
        tuning.extend(names[:take])
    chosen = set(tuning)
    held_out = [one.name for one in series if one.name not in chosen]
    return tuple(sorted(tuning)), tuple(sorted(held_out))


def context_scores(
    series: Sequence[NabSeries], params: ContextParams | None = None
) -> tuple[dict[str, FloatArray], float]:
    """Stream every series through a fresh detector; return the scores and CPU seconds."""
    scores: dict[str, FloatArray] = {}
    cpu = 0.0
    for one in series:
        detector = ContextNovelty(params)
        values = one.values.tolist()
        started = time.process_time()
        scores[one.name] = detector.process_many(values)
        cpu += time.process_time() - started
    return scores, cpu


def cpu_per_reading(
    values: Sequence[float], params: ContextParams | None = None, repeats: int = 3
) -> float:
    """Microseconds of CPU per reading for ``process_one`` (the best of ``repeats`` runs)."""
    if not values:
        raise ValueError("need at least one reading to time")
    best = math.inf
    for _ in range(repeats):
        detector = ContextNovelty(params)
        step = detector.process_one
        started = time.process_time()
        for value in values:
            step(value)
        best = min(best, time.process_time() - started)
    return 1e6 * best / len(values)


def _flags(scores: FloatArray, threshold: float, refractory: int) -> npt.NDArray[np.bool_]:
    return alarm_flags(scores, threshold, refractory)


def part_score(
    flags: Mapping[str, npt.NDArray[np.bool_]],
    windows: Mapping[str, Sequence[Window]],
    names: Sequence[str],
    cost: CostMatrix,
) -> float:
    """NAB's normalised score of some files' detections."""
    return normalised([score_detections(flags[name], windows[name], cost) for name in names])


def threshold_candidates(scores: Mapping[str, FloatArray], names: Sequence[str]) -> list[float]:
    """Midpoints between the distinct positive scores of ``names`` (values closer than 1e-9
    count as one, so float rounding in an average cannot split a level in two)."""
    levels = sorted({round(float(v), 9) for name in names for v in np.unique(scores[name])})
    levels = [v for v in levels if v > 0.0]
    if not levels:
        return [1.0]
    return [levels[0] / 2, *((a + b) / 2 for a, b in itertools.pairwise(levels))]


def tune_threshold(
    scores: Mapping[str, FloatArray],
    windows: Mapping[str, Sequence[Window]],
    names: Sequence[str],
    cost: CostMatrix,
    refractory: int,
) -> tuple[float, float]:
    """The threshold that maximises the normalised score over ``names`` (as NAB tunes one
    per profile), out of ``threshold_candidates``; ties go to the higher threshold."""
    best = (-math.inf, math.inf)
    for threshold in threshold_candidates(scores, names):
        flags = {name: _flags(scores[name], threshold, refractory) for name in names}
        value = part_score(flags, windows, names, cost)
        if value >= best[0]:
            best = (value, threshold)
    return best[1], best[0]


def load_published(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """NAB's published raw per-file scores: ``{detector: {profile: {file: raw}}}``."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                detector = table.setdefault(row["detector"], {})
                detector.setdefault(row["profile"], {})[row["file"]] = float(row["score"])
    except (OSError, KeyError, ValueError) as exc:
        raise NabFormatError(f"{path}: not a published-scores table ({exc})") from exc
    return table


def published_part_score(
    raw: Mapping[str, float],
    null_perfect: Mapping[str, tuple[float, float]],
    names: Sequence[str],
) -> float | None:
    """A published detector's normalised score on ``names`` (None if a file is missing)."""
    if any(name not in raw for name in names):
        return None
    total = math.fsum(raw[name] for name in names)
    null = math.fsum(null_perfect[name][0] for name in names)
    perfect = math.fsum(null_perfect[name][1] for name in names)
    return 0.0 if perfect == null else 100.0 * (total - null) / (perfect - null)


@dataclass(frozen=True)
class ContextNabReport:
    """The context-novelty detector on a NAB corpus, beside NAB's published detectors.

    ``thresholds`` are chosen per profile on the tuning part only (NAB tunes one threshold
    per profile over its corpus); ``ours``/``published`` map part -> profile -> score.
    """

    params: ContextParams
    refractory: int
    seed: int
    tuning: tuple[str, ...]
    held_out: tuple[str, ...]
    thresholds: dict[str, float]
    ours: dict[str, dict[str, float]]
    published: dict[str, dict[str, dict[str, float]]]
    per_file: dict[str, dict[str, FileScore]]
    cpu_us_per_reading: float
    readings: int

    def parts(self) -> dict[str, tuple[str, ...]]:
        """The file names of each part."""
        return {
            "whole": tuple(sorted(self.tuning + self.held_out)),
            "tuning": self.tuning,
            "held-out": self.held_out,
        }

    def to_json(self) -> dict[str, JsonValue]:
        """Plain data for ``--json``."""
        per_file: dict[str, JsonValue] = {
            name: {
                profile: {
                    "raw": score.raw,
                    "tp": score.tp,
                    "fp": score.fp,
                    "windows": score.windows,
                    "detected_windows": score.detected_windows,
                }
                for profile, score in profiles.items()
            }
            for name, profiles in self.per_file.items()
        }
        return {
            "detector": ContextNovelty.kind,
            "params": self.params.to_json(),
            "refractory": self.refractory,
            "split_seed": self.seed,
            "tuning": list(self.tuning),
            "held_out": list(self.held_out),
            "thresholds": dict(self.thresholds),
            "ours": {part: dict(values) for part, values in self.ours.items()},
            "published": {
                detector: {part: dict(values) for part, values in parts.items()}
                for detector, parts in self.published.items()
            },
            "cpu_us_per_reading": self.cpu_us_per_reading,
            "readings": self.readings,
            "per_file": per_file,
        }


def evaluate_context_nab(
    root: Path,
    params: ContextParams | None = None,
    refractory: int = DEFAULT_REFRACTORY,
    seed: int = CONTEXT_SPLIT_SEED,
    series: list[NabSeries] | None = None,
) -> ContextNabReport:
    """Score the context-novelty detector on a NAB-layout corpus: thresholds tuned per
    profile on the tuning part, scores on the whole corpus and on each part, the published
    detectors on the same files (``results/published_scores.csv`` if the corpus has it),
    and the detector's CPU cost per reading over the whole corpus."""
    params = params if params is not None else ContextParams()
    all_series = load_nab_dir(root) if series is None else series
    profiles = profiles_for(root)
    tuning, held_out = split_corpus(all_series, seed)
    windows = {one.name: one.windows for one in all_series}
    scores, cpu = context_scores(all_series, params)
    readings = sum(len(one.values) for one in all_series)
    parts = {"whole": tuple(sorted(windows)), "tuning": tuning, "held-out": held_out}
    thresholds: dict[str, float] = {}
    ours: dict[str, dict[str, float]] = {part: {} for part in parts}
    per_file: dict[str, dict[str, FileScore]] = {name: {} for name in windows}
    null_perfect: dict[str, dict[str, tuple[float, float]]] = {}
    for profile, cost in profiles.items():
        threshold, _ = tune_threshold(scores, windows, tuning, cost, refractory)
        thresholds[profile] = threshold
        flags = {name: _flags(scores[name], threshold, refractory) for name in windows}
        for name, spans in windows.items():
            per_file[name][profile] = score_detections(flags[name], spans, cost)
        null_perfect[profile] = {
            name: (per_file[name][profile].null, per_file[name][profile].perfect)
            for name in windows
        }
        for part, names in parts.items():
            ours[part][profile] = normalised([per_file[name][profile] for name in names])
    published: dict[str, dict[str, dict[str, float]]] = {}
    table = root / "results" / "published_scores.csv"
    if table.is_file():
        raw = load_published(table)
        for detector in PUBLISHED_DETECTORS:
            for part, names in parts.items():
                for profile in profiles:
                    value = published_part_score(
                        raw.get(detector, {}).get(profile, {}), null_perfect[profile], names
                    )
                    if value is not None:
                        published.setdefault(detector, {}).setdefault(part, {})[profile] = value
    return ContextNabReport(
        params=params,
        refractory=refractory,
        seed=seed,
        tuning=tuning,
        held_out=held_out,
        thresholds=thresholds,
        ours=ours,
        published=published,
        per_file=per_file,
        cpu_us_per_reading=1e6 * cpu / readings,
        readings=readings,
    )


def format_context_nab(report: ContextNabReport) -> str:
    """Markdown tables: one per profile, ours and the published detectors, three parts."""
    counts = {part: len(names) for part, names in report.parts().items()}
    lines = [
        f"context novelty ({ContextNovelty.kind}), refractory {report.refractory} readings, "
        f"split seed {report.seed}: tuning {counts['tuning']} files, held-out "
        f"{counts['held-out']} files",
        f"CPU: {report.cpu_us_per_reading:.2f} us per reading over {report.readings} readings",
    ]
    for profile, threshold in report.thresholds.items():
        lines += [
            "",
            f"{profile} (threshold {threshold:.4f}, chosen on the tuning part)",
            "",
            f"| detector | whole ({counts['whole']}) | tuning ({counts['tuning']}) "
            f"| held-out ({counts['held-out']}) |",
            "|---|---:|---:|---:|",
            "| **context novelty (ours)** | "
            + " | ".join(f"**{report.ours[part][profile]:.1f}**" for part in PARTS)
            + " |",
        ]
        for detector, label in PUBLISHED_DETECTORS.items():
            values = report.published.get(detector, {})
            cells = [
                f"{values[part][profile]:.1f}" if profile in values.get(part, {}) else "-"
                for part in PARTS
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def context_nab_figure(report: ContextNabReport, path: Path) -> None:
    """Grouped bars, one panel per profile: ours beside the published detectors, per part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["context novelty (ours)", *PUBLISHED_DETECTORS.values()]
    keys = ["", *PUBLISHED_DETECTORS]
    profiles = list(report.thresholds)
    fig, axes = plt.subplots(1, len(profiles), figsize=(6.2 * len(profiles), 4.6), squeeze=False)
    width = 0.8 / len(names)
    colours = plt.get_cmap("tab10")
    for ax, profile in zip(axes[0], profiles, strict=True):
        for k, (label, key) in enumerate(zip(names, keys, strict=True)):
            values = [
                report.ours[part][profile]
                if not key
                else report.published.get(key, {}).get(part, {}).get(profile, math.nan)
                for part in PARTS
            ]
            positions = np.arange(len(PARTS)) + (k - (len(names) - 1) / 2) * width
            ax.bar(
                positions,
                values,
                width,
                label=label,
                color="black" if not key else colours(k),
                edgecolor="black",
                linewidth=0.4,
            )
        ax.set_xticks(np.arange(len(PARTS)))
        ax.set_xticklabels([f"{part}\n({len(report.parts()[part])} files)" for part in PARTS])
        ax.set_ylim(0, 100)
        ax.set_title(f"NAB {profile}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("NAB score (normalised, 0-100)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(names), fontsize=8)
    fig.suptitle(
        f"Context novelty vs the published NAB detectors "
        f"(thresholds tuned on the tuning part; split seed {report.seed})",
        fontsize=11,
    )
    fig.tight_layout(rect=(0.0, 0.07, 1.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
