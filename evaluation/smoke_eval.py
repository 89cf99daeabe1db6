"""Unsupervised check on the real smoke-detector run (shared/data/smoke): how long after the
Fire Alarm column turns 0 -> 1 does the stream raise its first alarm, and how many alarms
came before that?"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly.protocol import FloatArray, JsonValue
from anomaly.streaming import StreamConfig, StreamResult, run_stream
from evaluation.plots import Panel

SMOKE_CHANNELS: tuple[str, ...] = (
    "Temperature[C]",
    "Humidity[%]",
    "TVOC[ppb]",
    "eCO2[ppm]",
    "Raw H2",
    "Raw Ethanol",
    "Pressure[hPa]",
    "PM1.0",
    "PM2.5",
    "NC0.5",
    "NC1.0",
    "NC2.5",
)


class SmokeFormatError(ValueError):
    """The smoke CSV lacks a needed column or has no usable rows."""


@dataclass(frozen=True)
class SmokeData:
    """Readings (one column per channel), their UTC seconds and the Fire Alarm label."""

    utc: FloatArray
    readings: FloatArray
    alarm_label: FloatArray
    skipped: int


def load_smoke(path: Path) -> SmokeData:
    """Read the Kaggle smoke CSV; a malformed row is skipped and counted, not fatal."""
    utc: list[float] = []
    rows: list[list[float]] = []
    label: list[float] = []
    skipped = 0
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        needed = {"UTC", "Fire Alarm", *SMOKE_CHANNELS}
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise SmokeFormatError(f"{path}: missing columns {', '.join(sorted(missing))}")
        for row in reader:
            try:
                values = [float(row[name]) for name in SMOKE_CHANNELS]
                stamp = float(row["UTC"])
                fire = float(row["Fire Alarm"])
            except (TypeError, ValueError):
                skipped += 1
                continue
            if not all(np.isfinite(values)):
                skipped += 1
                continue
            utc.append(stamp)
            rows.append(values)
            label.append(fire)
    if not rows:
        raise SmokeFormatError(f"{path}: no usable rows")
    return SmokeData(
        np.asarray(utc), np.asarray(rows, dtype=np.float64), np.asarray(label), skipped
    )


@dataclass(frozen=True)
class SmokeReport:
    """When the fire started (label 0 -> 1), when the stream first alarmed after it."""

    config: StreamConfig
    data: SmokeData
    result: StreamResult
    transition_row: int | None
    first_alarm_row: int | None
    false_alarms_before: int

    @property
    def delay_s(self) -> float | None:
        """Seconds from the label's 0 -> 1 transition to the first alarm at or after it."""
        if self.transition_row is None or self.first_alarm_row is None:
            return None
        return float(self.data.utc[self.first_alarm_row] - self.data.utc[self.transition_row])

    def to_json(self) -> dict[str, JsonValue]:
        """Plain data for ``--json``."""
        return {
            "config": self.config.describe(),
            "rows": int(self.data.readings.shape[0]),
            "skipped_rows": self.data.skipped,
            "transition_row": self.transition_row,
            "transition_utc": None
            if self.transition_row is None
            else float(self.data.utc[self.transition_row]),
            "first_alarm_row": self.first_alarm_row,
            "delay_s": self.delay_s,
            "false_alarms_before": self.false_alarms_before,
            "alarms": int(self.result.alarms.sum()),
        }


def evaluate_smoke(
    path: Path, config: StreamConfig, on_progress: Callable[[int], None] | None = None
) -> SmokeReport:
    """Stream the detector over the smoke run and time its first alarm against the label."""
    data = load_smoke(path)
    result = run_stream(data.readings, config, on_progress)
    rises = np.flatnonzero((data.alarm_label[1:] > 0.5) & (data.alarm_label[:-1] <= 0.5)) + 1
    transition = int(rises[0]) if rises.size else None
    first_alarm = None
    if transition is not None:
        after = np.flatnonzero(result.alarms[transition:])
        first_alarm = transition + int(after[0]) if after.size else None
    end = transition if transition is not None else data.readings.shape[0]
    before = int(np.count_nonzero(result.alarms[:end]))
    return SmokeReport(config, data, result, transition, first_alarm, before)


def format_smoke(report: SmokeReport) -> str:
    """One paragraph for the terminal."""
    j = report.to_json()
    delay = "no alarm after it" if report.delay_s is None else f"{report.delay_s:.0f} s"
    return (
        f"configuration: {j['config']}\n"
        f"smoke: {j['rows']} rows ({j['skipped_rows']} malformed skipped); "
        f"Fire Alarm 0->1 at row {j['transition_row']}; first alarm after it: {delay}; "
        f"false alarms before it: {j['false_alarms_before']}; alarms in all: {j['alarms']}"
    )


def smoke_panel(report: SmokeReport, threshold: float) -> Panel:
    """TVOC with the score, from the Fire Alarm label's rise to the end of the run."""
    last_row = report.data.readings.shape[0] - 1
    spans = [] if report.transition_row is None else [(report.transition_row, last_row)]
    return Panel(
        title=f"smoke run, TVOC[ppb] shown; first alarm after fire label: "
        f"{report.delay_s} s; false alarms before: {report.false_alarms_before}",
        values=report.data.readings[:, SMOKE_CHANNELS.index("TVOC[ppb]")],
        score=report.result.score,
        alarms=report.result.alarms,
        spans=spans,
        threshold=threshold,
        span_label="Fire Alarm = 1",
    )
