"""`gridwatch bench anomaly`: what online anomaly scoring costs per reading.

Three figures, on realistic decoded readings of the Yingyang site (background plus the
stuck-sensor, cloned-card and after-hours scenarios) and a model trained on clean days:
- the log records the intake writes for the detection consumers (`ingest.records`),
  the only part on ingest's path;
- scoring alone (features + detectors, `AnomalyScorer.score_batch`) in hub-sized batches;
- the whole worker-thread step (`AnomalyService.process`: scoring plus the event manager
  writing detections to a SQLite event store).
Wall and CPU time per reading are both reported; the benchmark is a command, not a test.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anomaly.online import AnomalyScorer
from anomaly.training import TrainConfig
from detection.anomaly_service import AnomalyService
from evaluation.anomaly_scenarios import BATCH, FOCUS, decoded, train_on_background
from events.manager import EventManager
from events.store import EventStore
from ingest.records import encode_records
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
