"""Anomaly detection on the simulators' labelled scenarios: train on clean days, score incidents.

Detectors are trained on days of the site's background traffic just before the scenario
window (same seed, so the same devices; no incidents). Then the scenario traffic goes
through decode → `AnomalyService` (scorer, event manager, a temporary SQLite event store)
in simulated time, as the hub scores live readings: the service's clock is set to the
last reading of each batch before the service takes its turn (`AnomalyService.step`).
Anomaly events name no incident kind, so a label counts as detected when any anomaly
detection (raise or repeat) lands on one of its devices between its start and
`GRACE_MS` after its end (`evaluation.matching`, not exclusive). An event that opens
outside every label's span is a false alarm.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from anomaly.conditions import Scored
from anomaly.online import AnomalyScorer
from anomaly.training import AnomalyModel, TrainConfig, train
from detection.anomaly_service import AnomalyService
from evaluation.matching import Hit, match_labels
from events.manager import EventManager
from events.model import Detection
from events.store import EventStore
from ingest.decode import Decoder
from sensors.base import DecodeContext, Reading, keyed_hash
from sensors.registry import KINDS
from simulators.engine import SimMessage, simulate
from simulators.labels import Label
from sites.model import Site

GRACE_MS: Final = 10 * 60_000
EARLY_MS: Final = 2_000
BATCH: Final = 512
"""Readings per scoring batch (the hub's batches are of this order under load)."""
DAY_MS: Final = 86_400_000
FOCUS: Final = ("stuck_sensor", "cloned_card", "after_hours_access")
"""The incident kinds anomaly detection is meant to catch (rules name the others)."""


def decoded(messages: Iterable[SimMessage], key: bytes = b"anomaly-harness") -> list[Reading]:
    """The messages' readings (rejections dropped), as the hub's intake would see them."""
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: keyed_hash(key, v)))
    out: list[Reading] = []
    for message in messages:
        result = decoder.decode(message.topic, message.payload, message.sim_ms * 1_000_000)
        if isinstance(result, Reading):
            out.append(result)
    return out


def train_on_background(
    site: Site, *, end: datetime, days: float, seed: int, config: TrainConfig
) -> tuple[AnomalyModel, int]:
    """A model from `days` of clean background ending at `end`; also the readings count."""
    start = end - timedelta(days=days)
    # The same seed gives every device the same personality (baselines, keyholders) as in
    # the scored run that follows; the days before it carry no incident.
    readings = decoded(simulate(site, start=start, duration_s=days * 86_400, seed=seed))
    meta: dict[str, str | int | float | None] = {"site": site.site, "source": "simulated"}
    return train(lambda: readings, config, meta=meta), len(readings)


@dataclass(frozen=True, slots=True)
class LabelResult:
    label: Label
    detected: bool
    delay_s: float | None


@dataclass(frozen=True, slots=True)
class ScenarioReport:
    results: list[LabelResult]
    traces: list[Scored]
    """Scored vectors of the labelled devices (for `plot_labels`)."""
    events: int
    false_alarms: int
    device_days: float
    readings: int
    scored: int
    elapsed_s: float

    def per_kind(self) -> dict[str, dict[str, float | int | None]]:
        out: dict[str, dict[str, float | int | None]] = {}
        for result in self.results:
            row = out.setdefault(
                result.label.kind.value, {"labels": 0, "detected": 0, "delay_median_s": None}
            )
            row["labels"] = int(row["labels"] or 0) + 1
            row["detected"] = int(row["detected"] or 0) + int(result.detected)
        for kind, row in out.items():
            delays = sorted(
                r.delay_s
                for r in self.results
                if r.label.kind.value == kind and r.delay_s is not None
            )
            row["recall"] = int(row["detected"] or 0) / int(row["labels"] or 1)
            row["delay_median_s"] = delays[len(delays) // 2] if delays else None
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "per_kind": self.per_kind(),
            "events": self.events,
            "false_alarms": self.false_alarms,
            "false_alarms_per_device_day": self.false_alarms / self.device_days
            if self.device_days
            else None,
            "readings": self.readings,
            "scored": self.scored,
            "elapsed_s": round(self.elapsed_s, 2),
        }


def score_stream(
    model: AnomalyModel,
    readings: Sequence[Reading],
    *,
    on_progress: Callable[[int], None] | None = None,
    keep: Callable[[Scored], bool] = lambda _s: False,
) -> tuple[list[Detection], int, list[Scored]]:
    """Run readings through `AnomalyService` in batches of `BATCH`, each scored when its
    last reading has arrived, the detections persisted as in the hub: all detections,
    the number of vectors scored, and the scored vectors `keep` selects (for plots)."""
    kept: list[Scored] = []
    detections: list[Detection] = []
    with (
        tempfile.TemporaryDirectory(prefix="gridwatch-anomaly-eval-") as tmp,
        EventStore(f"sqlite:///{Path(tmp) / 'events.db'}") as store,
    ):
        store.migrate()
        service = AnomalyService(
            AnomalyScorer(model),
            EventManager(store, workers={}),
            on_scored=lambda scored: kept.extend(s for s in scored if keep(s)),
        )
        for i in range(0, len(readings), BATCH):
            batch = readings[i : i + BATCH]
            detections += service.step(batch)
            if on_progress is not None:
                on_progress(len(batch))
    return detections, service.counters.scored, kept


def match(
    labels: Sequence[Label],
    detections: Sequence[Detection],
    *,
    device_count: int,
    span_ms: int,
) -> tuple[list[LabelResult], int, int, float]:
    """Per label: detected and delay (from its start); plus events opened (a raise of a
    (rule, key) not open yet), false alarms (opened events matching no label), and
    device-days."""
    raised = sorted(
        (n for n, d in enumerate(detections) if d.raised), key=lambda n: detections[n].at_ms
    )
    hits = [Hit(detections[n].at_ms, _devices(detections[n])) for n in raised]
    found = match_labels(labels, hits, early_ms=EARLY_MS, grace_ms=GRACE_MS, exclusive=False)
    results = []
    for label, hit in zip(labels, found.taken, strict=True):
        delay = None if hit is None else max(0.0, (hits[hit].at_ms - label.start_ms) / 1000)
        results.append(LabelResult(label, hit is not None, delay))
    covered = {n for n, matched in zip(raised, found.matched, strict=True) if matched}
    open_keys: set[tuple[str, str]] = set()
    events = false_alarms = 0
    for n, d in enumerate(detections):
        key = (d.rule_id, d.key)
        if not d.raised:
            open_keys.discard(key)
            continue
        if key in open_keys:
            continue
        open_keys.add(key)
        events += 1
        false_alarms += n not in covered
    return results, events, false_alarms, device_count * span_ms / DAY_MS


def _devices(detection: Detection) -> frozenset[str]:
    return frozenset() if detection.device is None else frozenset((detection.device,))


def evaluate_scenarios(
    site: Site,
    model: AnomalyModel,
    messages: Sequence[SimMessage],
    labels: Sequence[Label],
    *,
    span_ms: int,
    on_progress: Callable[[int], None] | None = None,
) -> ScenarioReport:
    started = time.perf_counter()
    readings = decoded(messages)
    labelled = {device for label in labels for device in label.devices}
    detections, scored, traces = score_stream(
        model, readings, on_progress=on_progress, keep=lambda s: s.vector.device in labelled
    )
    results, events, false_alarms, device_days = match(
        labels, detections, device_count=len(site.devices), span_ms=span_ms
    )
    return ScenarioReport(
        results,
        traces,
        events,
        false_alarms,
        device_days,
        len(readings),
        scored,
        time.perf_counter() - started,
    )


def format_report(report: ScenarioReport) -> str:
    lines = [f"{'incident kind':<24} {'labels':>6} {'detected':>8} {'recall':>7} {'delay p50':>10}"]
    for kind, row in sorted(report.per_kind().items(), key=lambda kv: (kv[0] not in FOCUS, kv[0])):
        delay = row["delay_median_s"]
        mark = "*" if kind in FOCUS else " "
        lines.append(
            f"{mark}{kind:<23} {row['labels']:>6} {row['detected']:>8} "
            f"{float(row['recall'] or 0):>7.3f} "
            f"{'-' if delay is None else f'{float(delay):.0f} s':>10}"
        )
    per_day = report.false_alarms / report.device_days if report.device_days else 0.0
    lines.append(
        f"{report.events} anomaly events, {report.false_alarms} false alarms "
        f"({per_day:.3f} per device-day over {report.device_days:.1f} device-days); "
        f"{report.scored} of {report.readings} readings scored in {report.elapsed_s:.1f} s"
    )
    lines.append("* = kinds anomaly detection targets; the others are the rules' job")
    return "\n".join(lines)


def plot_labels(report: ScenarioReport, model: AnomalyModel, path: Path) -> None:
    """One panel per label: its (last) device's score from 3 h before to 1 h after, the
    threshold, the labelled span and the flagged readings; the upper trace is the
    feature that strayed furthest from the device's usual in that stretch."""
    import numpy as np

    from evaluation.plots import Panel, plot_panels

    panels = []
    for result in report.results:
        label = result.label
        device = label.devices[-1]
        lo, hi = label.start_ms - 3 * 3_600_000, label.end_ms + 3_600_000
        trace = [
            s for s in report.traces if s.vector.device == device and lo <= s.vector.ts_ms <= hi
        ]
        if not trace:
            continue
        km = model.kinds[trace[0].vector.kind]
        rows = np.array([s.vector.values for s in trace], dtype=np.float64)
        z = np.abs(
            km.pooled_scaler.z(rows)
            if device not in km.device_scalers
            else km.device_scalers[device].z(rows)
        )
        feature = int(np.argmax(z.max(axis=0)))
        inside = [
            i for i, s in enumerate(trace) if label.start_ms <= s.vector.ts_ms <= label.end_ms
        ]
        spans = [(inside[0], inside[-1])] if inside else []
        outcome = f"detected after {result.delay_s:.0f} s" if result.detected else "missed"
        panels.append(
            Panel(
                title=f"{label.kind.value} on {device}: {outcome}; "
                f"upper trace {km.schema[feature]}",
                values=rows[:, feature],
                score=np.array([s.score for s in trace], dtype=np.float64),
                alarms=np.array([s.flagged for s in trace], dtype=np.bool_),
                spans=spans,
                threshold=km.threshold.value,
                span_label="labelled incident",
            )
        )
    if not panels:
        raise ValueError("no labelled device was scored: nothing to plot")
    plot_panels(panels, path)
