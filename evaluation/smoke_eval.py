"""Unsupervised check on the real smoke-detector run (shared/data/smoke): how long after the
Fire Alarm column turns 0 -> 1 does the stream raise its first alarm, and how many alarms
came before that? For the streaming detectors (`evaluate_smoke`) and for the hub's default
without a trained model, the online baselines (`evaluate_smoke_online`, through the same
`AnomalyService` the hub runs)."""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np

from anomaly.baselines import OnlineParams, OnlineScorer
from anomaly.conditions import Scored
from anomaly.protocol import FloatArray, JsonValue
from anomaly.streaming import StreamConfig, StreamResult, run_stream
from detection.anomaly_service import AnomalyService
from evaluation.anomaly_scenarios import BATCH, decoded
from evaluation.plots import Panel
from events.manager import EventManager
from events.model import Detection
from events.store import EventStore
from sensors.base import Reading
from simulators.replay import replay_smoke
from sites.model import load_site_ref

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


# -- the hub's default: per-device baselines learned online ----------------------------
ONLINE_SITE: Final = "yingyang"
"""The site whose default smoke detector the real runs are replayed onto."""
ONLINE_SHORT_WARMUP_S: Final = 1800.0
"""The documented shorter device warm-up for runs shorter than the default day (the
smoke run lasts 2.8 h): a parameter of the evaluation, never the hub's default."""


@dataclass(frozen=True)
class OnlineRun:
    """What the hub's online scorer made of one replayed device: every detection, and per
    replayed reading (by its event time in ms) its best score and whether it was flagged."""

    params: OnlineParams
    readings: int
    detections: tuple[Detection, ...]
    scores: dict[int, tuple[float, bool]]

    def opened_ms(self) -> list[int]:
        """Event times at which a condition opened (a raise that is not a repeat)."""
        return [
            d.at_ms for d in self.detections if d.raised and d.values.get("since_ms") == d.at_ms
        ]


def run_online(readings: Sequence[Reading], params: OnlineParams) -> OnlineRun:
    """Score `readings` as the hub does with no trained model: `OnlineScorer(params)` in an
    `AnomalyService` stepped over batches of `BATCH`, events kept in a SQLite store."""
    scores: dict[int, tuple[float, bool]] = {}
    detections: list[Detection] = []

    def keep(scored: list[Scored]) -> None:
        for one in scored:
            scores[one.vector.ts_ms] = (one.score, one.flagged)

    with (
        tempfile.TemporaryDirectory(prefix="gridwatch-online-eval-") as tmp,
        EventStore(f"sqlite:///{Path(tmp) / 'events.db'}") as store,
    ):
        store.migrate()
        service = AnomalyService(
            OnlineScorer(params), EventManager(store, workers={}), on_scored=keep
        )
        for i in range(0, len(readings), BATCH):
            detections += service.step(readings[i : i + BATCH])
    return OnlineRun(params, len(readings), tuple(detections), scores)


@dataclass(frozen=True)
class SmokeOnlineReport:
    """The online default on the smoke run: the first alarm (a detection raising or
    repeating the device's condition, what bumps an operator's event) at or after the
    Fire Alarm transition, whether the condition was already open then, and the
    conditions opened before it (false alarms)."""

    path: Path
    run: OnlineRun
    start_ms: int
    end_ms: int
    transition_ms: int | None
    first_alarm_ms: int | None
    first_flag_ms: int | None
    open_at_transition: bool
    false_alarms_before: int
    flagged_before: int

    @property
    def warmup_end_ms(self) -> int:
        return self.start_ms + self.run.params.warmup_ms

    @property
    def shorter_than_warmup(self) -> bool:
        """The run ends before its device's warm-up: nothing can be flagged."""
        return self.end_ms < self.warmup_end_ms

    def to_json(self) -> dict[str, JsonValue]:
        """Plain data for ``--json``; times in seconds from the run's first row."""

        def rel(ms: int | None, base: int | None) -> float | None:
            return None if ms is None or base is None else (ms - base) / 1000

        return {
            "detector": "online",
            "warmup_s": self.run.params.warmup_ms / 1000,
            "rows": self.run.readings,
            "duration_s": rel(self.end_ms, self.start_ms),
            "shorter_than_warmup": self.shorter_than_warmup,
            "transition_s": rel(self.transition_ms, self.start_ms),
            "delay_s": rel(self.first_alarm_ms, self.transition_ms),
            "first_flag_delay_s": rel(self.first_flag_ms, self.transition_ms),
            "open_at_transition": self.open_at_transition,
            "false_alarms_before": self.false_alarms_before,
            "flagged_before": self.flagged_before,
            "conditions_opened": len(self.run.opened_ms()),
            "detections": len(self.run.detections),
        }


def evaluate_smoke_online(path: Path, params: OnlineParams | None = None) -> SmokeOnlineReport:
    """Replay the smoke run onto a detector of the Yingyang site (`replay_smoke`), decode
    it as intake does and score it with the online baselines (`params`: the hub's
    defaults unless given)."""
    site = load_site_ref(ONLINE_SITE)
    replay = replay_smoke(site, path, start=datetime(2026, 3, 2, tzinfo=UTC))
    readings = decoded(replay.messages)
    if not readings:
        raise SmokeFormatError(f"{path}: no reading decoded")
    run = run_online(readings, params or OnlineParams())
    times = [r.ts_ns // 1_000_000 for r in readings]
    start_ms, end_ms = times[0], times[-1]
    # The Fire Alarm column's first 0 -> 1 (the replay's first `fire` label).
    transition = min((label.start_ms for label in replay.labels), default=None)
    opened = run.opened_ms()
    raised = sorted(d.at_ms for d in run.detections if d.raised)
    flags = sorted(ts for ts, (_score, flagged) in run.scores.items() if flagged)
    open_then = False
    if transition is None:
        first_alarm = first_flag = None
        before, flagged_before = len(opened), len(flags)
    else:
        first_alarm = next((t for t in raised if t >= transition), None)
        first_flag = next((t for t in flags if t >= transition), None)
        before = sum(1 for t in opened if t < transition)
        flagged_before = sum(1 for t in flags if t < transition)
        changes = [(d.at_ms, d.raised) for d in run.detections if d.at_ms < transition]
        open_then = bool(changes) and changes[-1][1]
    return SmokeOnlineReport(
        path,
        run,
        start_ms,
        end_ms,
        transition,
        first_alarm,
        first_flag,
        open_then,
        before,
        flagged_before,
    )


def format_smoke_online(report: SmokeOnlineReport) -> str:
    """One paragraph for the terminal."""
    j = report.to_json()
    delay = "none" if j["delay_s"] is None else f"{j['delay_s']:.0f} s"
    flag = "none" if j["first_flag_delay_s"] is None else f"{j['first_flag_delay_s']:.0f} s"
    held = " (a repeat of a condition open since before it)" if report.open_at_transition else ""
    warm = (
        f"; the run ({j['duration_s']:.0f} s) is shorter than the device warm-up "
        f"({j['warmup_s']:.0f} s): nothing can be flagged"
        if report.shorter_than_warmup
        else ""
    )
    return (
        f"configuration: online baselines (hub default scorer), device warm-up "
        f"{j['warmup_s']:.0f} s{warm}\n"
        f"smoke: {j['rows']} readings; Fire Alarm 0->1 at {j['transition_s']} s; "
        f"first alarm after it: {delay}{held}; first flagged reading after it: {flag}; "
        f"false alarms before it: {j['false_alarms_before']} conditions opened "
        f"({j['flagged_before']} flagged readings); conditions opened in all: "
        f"{j['conditions_opened']}"
    )
