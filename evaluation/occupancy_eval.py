"""The UCI Occupancy data (shared/data/occupancy) as a labelled stream: an office that fills
up is the "unusual" state, and the recorded Occupancy column says when it happened.

Scored three ways: per occupied episode (caught or not, delay to the first alarm), per
alarm (inside an episode or a false alarm), and NAB's standard profile with the episodes
as windows, plus the threshold-free ROC AUC of the score against the label.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from anomaly.protocol import FloatArray, JsonValue
from anomaly.streaming import StreamConfig, StreamResult, run_stream
from evaluation.nab import FileScore, Window, nab_default_profiles, normalised, score_detections
from evaluation.plots import Panel

OCCUPANCY_CHANNELS: tuple[str, ...] = ("Temperature", "Humidity", "Light", "CO2", "HumidityRatio")
OCCUPANCY_FILES: tuple[str, ...] = ("datatest.txt", "datatraining.txt")


class OccupancyFormatError(ValueError):
    """The occupancy directory lacks its files or they have no usable rows."""


@dataclass(frozen=True)
class OccupancyData:
    """Readings in time order, minutes since the first row, the label, malformed rows."""

    times: tuple[datetime, ...]
    readings: FloatArray
    occupied: FloatArray
    skipped: int


def load_occupancy(directory: Path) -> OccupancyData:
    """Read the UCI files in ``directory``, merge them in time order, skip bad rows."""
    records: dict[datetime, tuple[list[float], float]] = {}
    skipped = 0
    found = [directory / name for name in OCCUPANCY_FILES if (directory / name).is_file()]
    if not found:
        raise OccupancyFormatError(f"{directory}: none of {', '.join(OCCUPANCY_FILES)}")
    for path in found:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            missing = {"date", "Occupancy", *OCCUPANCY_CHANNELS} - set(header)
            if missing:
                raise OccupancyFormatError(f"{path}: missing columns {', '.join(sorted(missing))}")
            for fields in reader:
                # The UCI rows carry one leading id field that the header does not name.
                try:
                    row = dict(zip(header, fields[len(fields) - len(header) :], strict=True))
                    stamp = datetime.fromisoformat(row["date"])
                    values = [float(row[name]) for name in OCCUPANCY_CHANNELS]
                    label = float(row["Occupancy"])
                except (TypeError, ValueError, KeyError):
                    skipped += 1
                    continue
                records[stamp] = (values, label)
    if not records:
        raise OccupancyFormatError(f"{directory}: no usable rows")
    times = tuple(sorted(records))
    readings = np.asarray([records[t][0] for t in times], dtype=np.float64)
    occupied = np.asarray([records[t][1] for t in times], dtype=np.float64)
    return OccupancyData(times, readings, occupied, skipped)


def episodes(label: FloatArray) -> list[Window]:
    """Runs of label 1 as inclusive row spans."""
    flags = np.concatenate([[0], (label > 0.5).astype(np.int8), [0]])
    edges = np.diff(flags)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [Window(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


@dataclass(frozen=True)
class OccupancyReport:
    """The stream's output and its scores against the occupancy label."""

    config: StreamConfig
    data: OccupancyData
    result: StreamResult
    spans: tuple[Window, ...]
    caught: int
    delays_min: tuple[float, ...]
    alarms_inside: int
    alarms_outside: int
    roc_auc: float
    nab: FileScore
    nab_standard: float

    def to_json(self) -> dict[str, JsonValue]:
        """Plain data for ``--json``."""
        delays = sorted(self.delays_min)
        return {
            "config": self.config.describe(),
            "rows": int(self.data.readings.shape[0]),
            "skipped_rows": self.data.skipped,
            "episodes": len(self.spans),
            "episodes_caught": self.caught,
            "median_delay_min": float(np.median(delays)) if delays else None,
            "alarms_inside": self.alarms_inside,
            "alarms_outside": self.alarms_outside,
            "roc_auc": self.roc_auc,
            "nab_standard": self.nab_standard,
            "nab_raw": self.nab.raw,
        }


def evaluate_occupancy(
    directory: Path, config: StreamConfig, on_progress: Callable[[int], None] | None = None
) -> OccupancyReport:
    """Stream the detector over the office readings and score it against occupancy."""
    from sklearn.metrics import roc_auc_score

    data = load_occupancy(directory)
    result = run_stream(data.readings, config, on_progress)
    spans = tuple(episodes(data.occupied))
    minutes = np.array([t.timestamp() / 60.0 for t in data.times])
    caught = 0
    delays: list[float] = []
    inside = np.zeros(result.alarms.shape[0], dtype=np.bool_)
    for span in spans:
        inside[span.left : span.right + 1] = True
        hits = np.flatnonzero(result.alarms[span.left : span.right + 1])
        if hits.size:
            caught += 1
            delays.append(float(minutes[span.left + hits[0]] - minutes[span.left]))
    labels = data.occupied > 0.5
    auc = float(roc_auc_score(labels, result.score)) if 0 < labels.sum() < labels.size else 0.5
    nab = score_detections(result.alarms, spans, nab_default_profiles()["standard"])
    return OccupancyReport(
        config=config,
        data=data,
        result=result,
        spans=spans,
        caught=caught,
        delays_min=tuple(delays),
        alarms_inside=int(np.count_nonzero(result.alarms & inside)),
        alarms_outside=int(np.count_nonzero(result.alarms & ~inside)),
        roc_auc=auc,
        nab=nab,
        nab_standard=normalised([nab]),
    )


def format_occupancy(report: OccupancyReport) -> str:
    """One paragraph for the terminal."""
    j = report.to_json()
    delay = j["median_delay_min"]
    delay_text = "n/a" if delay is None else f"{delay:.0f} min"
    return (
        f"configuration: {j['config']}\n"
        f"occupancy: {j['rows']} rows ({j['skipped_rows']} malformed skipped); "
        f"{j['episodes_caught']}/{j['episodes']} occupied episodes caught, median delay "
        f"{delay_text}; alarms inside {j['alarms_inside']}, outside {j['alarms_outside']}; "
        f"ROC AUC {report.roc_auc:.3f}; NAB standard (episodes as windows) "
        f"{report.nab_standard:.1f}"
    )


def occupancy_panel(report: OccupancyReport, threshold: float) -> Panel:
    """CO2 with the score and the occupied episodes."""
    return Panel(
        title=f"UCI occupancy, CO2 shown: {report.caught}/{len(report.spans)} episodes "
        f"caught, {report.alarms_outside} alarms outside, ROC AUC {report.roc_auc:.3f}",
        values=report.data.readings[:, OCCUPANCY_CHANNELS.index("CO2")],
        score=report.result.score,
        alarms=report.result.alarms,
        spans=[(w.left, w.right) for w in report.spans],
        threshold=threshold,
        span_label="occupied",
    )
