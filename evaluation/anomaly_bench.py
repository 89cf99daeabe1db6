"""`gridwatch bench anomaly`: what online anomaly scoring costs per reading.

Three figures, on realistic decoded readings of the Yingyang site (background plus the
stuck-sensor, cloned-card and after-hours scenarios) and a model trained on clean days:
- the log records the intake writes for the detection consumers (`ingest.records`),
  the only part on ingest's path;
- scoring alone (features + detectors, `AnomalyScorer.score_batch`) in hub-sized batches;
- the whole worker-thread step (`AnomalyService.process`: scoring plus the event manager
  writing detections to a SQLite event store).
Wall and CPU time per reading are both reported; the benchmark is a command, not a test.

`run_online_bench` measures the hub's default instead (no trained model: the per-device
baselines of `anomaly.baselines`, learned online): CPU time (`time.process_time`, GC off
as the hub tunes it) of the scenario hours after `warm_days` of background traffic have
taught every device (steady state), and of those warm-up days themselves (learning).
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from anomaly.baselines import OnlineScorer
from anomaly.conditions import Scored
from anomaly.online import AnomalyScorer
from anomaly.training import TrainConfig
from detection.anomaly_service import AnomalyService
from evaluation.anomaly_scenarios import (
    BATCH,
    DAY_MS,
    FOCUS,
    decoded,
    match,
    train_on_background,
)
from events.manager import EventManager
from events.model import Detection
from events.store import EventStore
from ingest.records import encode_records
from sensors.base import Reading
from simulators.engine import simulate
from simulators.scenarios import run_scenarios
from sites.model import load_site_ref


def run_anomaly_bench(*, train_days: float, hours: float, detector: str) -> dict[str, Any]:
    site = load_site_ref("yingyang")
    start = datetime(2026, 3, 2, tzinfo=UTC)
    started = time.perf_counter()
    model, n_train = train_on_background(
        site, end=start, days=train_days, seed=3, config=TrainConfig(detector=detector)
    )
    train_s = time.perf_counter() - started
    messages, _ = run_scenarios(site, FOCUS, start=start, duration_s=hours * 3600, seed=3)
    readings = decoded(messages)
    n = len(readings)
    batches = [readings[i : i + BATCH] for i in range(0, n, BATCH)]

    scorer = AnomalyScorer(model)
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    for batch in batches:
        scorer.score_batch(batch)
    score_wall, score_cpu = time.perf_counter() - wall0, time.thread_time() - cpu0

    with tempfile.TemporaryDirectory(prefix="gridwatch-anomaly-bench-") as tmp:
        store = EventStore(f"sqlite:///{Path(tmp) / 'events.db'}")
        try:
            store.migrate()
            service = AnomalyService(AnomalyScorer(model), EventManager(store, workers={}))
            # What the log adds on ingest's path for the detection consumers: the
            # records in the frame (the consumers read them after the fsync).
            wall0 = time.perf_counter()
            for batch in batches:
                encode_records(batch)
            hook_wall = time.perf_counter() - wall0
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            for batch in batches:
                service.process(batch, None)
            process_wall, process_cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
            counters = service.counters
        finally:
            store.close()
    per = 1e6 / n
    return {
        "detector": detector,
        "train_days": train_days,
        "train_readings": n_train,
        "train_s": round(train_s, 2),
        "readings": n,
        "scored": scorer.scored,
        "batch": BATCH,
        "detections": counters.detections,
        "records_us_per_reading": round(hook_wall * per, 3),
        "score_us_per_reading": round(score_wall * per, 2),
        "score_cpu_us_per_reading": round(score_cpu * per, 2),
        "process_us_per_reading": round(process_wall * per, 2),
        "process_cpu_us_per_reading": round(process_cpu * per, 2),
        "max_readings_per_s_one_core": round(n / process_cpu) if process_cpu > 0 else None,
    }


def format_bench(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"anomaly scoring ({result['detector']}, trained on {result['train_readings']} "
            f"readings in {result['train_s']} s) over {result['readings']} readings "
            f"({result['scored']} scored), batches of {result['batch']}:",
            f"  log records (on ingest's path): {result['records_us_per_reading']} µs/reading",
            f"  scoring (features + detectors): {result['score_us_per_reading']} µs/reading "
            f"(CPU {result['score_cpu_us_per_reading']})",
            f"  worker step incl. events:       {result['process_us_per_reading']} µs/reading "
            f"(CPU {result['process_cpu_us_per_reading']}), {result['detections']} detections",
            f"  one core keeps up with ≈ {result['max_readings_per_s_one_core']} readings/s",
        ]
    )


def _cpu_us(
    readings: Sequence[Reading], batch: int, run: Callable[[Sequence[Reading]], object]
) -> float:
    """CPU µs per reading of `run` over `readings` in batches (GC off while timed)."""
    gc.collect()
    gc.disable()
    try:
        cpu0 = time.process_time()
        for i in range(0, len(readings), batch):
            run(readings[i : i + batch])
        cpu = time.process_time() - cpu0
    finally:
        gc.enable()
    return round(cpu / max(len(readings), 1) * 1e6, 2)


class _NoScorer:
    """Scores nothing: what the worker step costs without a detector (the batch's
    transaction, position snapshot and record handling)."""

    scored = 0
    flagged = 0
    keep = False

    def score_batch(self, readings: Sequence[Reading]) -> tuple[list[Detection], list[Scored]]:
        return [], []

    def tick(self, now_ms: int) -> list[Detection]:
        return []

    def state_changes(self) -> dict[str, bytes]:
        return {}

    def load_state(self, rows: Mapping[str, bytes]) -> None:
        return None


def run_online_bench(
    *, warm_days: float = 2.0, hours: float = 6.0, batch: int = BATCH
) -> dict[str, Any]:
    """CPU per reading of the default online baselines on the Yingyang site: scoring alone
    (`OnlineScorer.score_batch`) and the whole worker step (`AnomalyService.process`:
    scoring, the changed devices' state rows and the events in one SQLite transaction),
    in batches of `batch`, after `warm_days` of background taught every device; plus the
    same step over the warm-up days (learning, no alarms after the first day). Also what
    it raised: conditions opened on the clean background after its first day (per
    device-day of the scored devices), and per scenario label whether it was found."""
    site = load_site_ref("yingyang")
    start = datetime(2026, 3, 2, tzinfo=UTC)
    background = decoded(
        simulate(
            site, start=start - timedelta(days=warm_days), duration_s=warm_days * 86_400, seed=3
        )
    )
    messages, labels = run_scenarios(site, FOCUS, start=start, duration_s=hours * 3600, seed=3)
    readings = decoded(messages)

    records_cpu = _cpu_us(readings, batch, encode_records)
    scorer = OnlineScorer()
    scorer.keep = False  # as in the service without `on_scored`
    for i in range(0, len(background), batch):
        scorer.score_batch(background[i : i + batch])
    scorer.state_changes()
    score_cpu = _cpu_us(readings, batch, scorer.score_batch)
    decided: list[Detection] = []

    def step(part: Sequence[Reading]) -> None:
        decided.extend(service.process(part, None))

    with tempfile.TemporaryDirectory(prefix="gridwatch-anomaly-bench-") as tmp:
        store = EventStore(f"sqlite:///{Path(tmp) / 'events.db'}")
        try:
            store.migrate()
            service = AnomalyService(OnlineScorer(), EventManager(store, workers={}))
            warm_cpu = _cpu_us(background, batch, step)
            on_background, decided = decided, []
            before = service.counters.state_rows
            process_cpu = _cpu_us(readings, batch, step)
            rows = service.counters.state_rows - before
            devices = service.scorer.devices if isinstance(service.scorer, OnlineScorer) else 0
            bare = AnomalyService(_NoScorer(), EventManager(store, workers={}))
            fixed_cpu = _cpu_us(readings, batch, lambda part: bare.process(part, None))
        finally:
            store.close()
    start_ms = int(start.timestamp() * 1000)
    learned_ms = start_ms - round((warm_days - 1.0) * DAY_MS)
    opened = [
        d
        for d in on_background
        if d.raised and d.at_ms >= learned_ms and d.values.get("since_ms") == d.at_ms
    ]
    results, _, false_alarms, _ = match(
        labels, decided, device_count=devices, span_ms=round(hours * 3_600_000)
    )
    return {
        "detector": "online",
        "warm_days": warm_days,
        "background_opened": len(opened),
        "background_device_days": round(devices * (warm_days - 1.0), 1),
        "opened_per_device_day": round(len(opened) / (devices * (warm_days - 1.0)), 3)
        if devices and warm_days > 1.0
        else None,
        "labels": {r.label.id: r.detected for r in results},
        "scenario_false_alarms": false_alarms,
        "warm_readings": len(background),
        "readings": len(readings),
        "devices": devices,
        "batch": batch,
        "detections": len(decided),
        "state_rows": rows,
        "records_us_per_reading": records_cpu,
        "score_cpu_us_per_reading": score_cpu,
        "process_cpu_us_per_reading": process_cpu,
        "fixed_process_cpu_us_per_reading": fixed_cpu,
        "warmup_process_cpu_us_per_reading": warm_cpu,
    }


def format_online_bench(result: dict[str, Any]) -> str:
    return (
        f"online baselines over {result['readings']} readings of {result['devices']} devices "
        f"after {result['warm_days']} warm-up days, batches of {result['batch']}: scoring "
        f"{result['score_cpu_us_per_reading']} µs CPU/reading, worker step incl. "
        f"{result['state_rows']} state rows and {result['detections']} detections "
        f"{result['process_cpu_us_per_reading']} µs CPU/reading, of which "
        f"{result['fixed_process_cpu_us_per_reading']} µs the step's own transaction and "
        f"records without any scorer (over the background days, the first one learning: "
        f"{result['warmup_process_cpu_us_per_reading']} µs CPU/reading); clean background "
        f"after the first day: {result['background_opened']} conditions opened in "
        f"{result['background_device_days']} device-days; scenario labels found: "
        f"{result['labels']}"
    )
