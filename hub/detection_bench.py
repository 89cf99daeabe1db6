"""`gridwatch bench detection`: the detection worker's tasks, in this process, over a log
prepared from the ingest benchmark's stream (`evaluation.detection_bench`), with the
default settings and real sinks (a private Mosquitto and InfluxDB). A PART of the
default pipeline, measured alone; the output says so."""

from __future__ import annotations

import asyncio
import gc
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.stack import ManagedProcess, free_port, start_influxdb, start_mosquitto
from evaluation.bench_costs import BENCH_HASH_KEY
from evaluation.detection_bench import StageClock, build_log
from hub.settings import load_settings
from hub.supervision import tune_gc
from hub.wiring import detection_tasks
from hub.worker import DetectionWorker


def _settings_text(work: Path, mqtt_port: int, influx_port: int) -> str:
    return (
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\nclient_id = "detection-bench"\n'
        f'[influx]\nurl = "http://127.0.0.1:{influx_port}"\ndatabase = "bench_detection"\n'
        f'[spool]\ndirectory = "{work}/spool"\n'
        f'[hub]\ndata_dir = "{work}/data"\nlog_level = "WARNING"\n'
        f'credential_hash_key = "{BENCH_HASH_KEY.decode()}"\n'
    )


async def _replay(work: Path, total: int, progress: Callable[[str], None]) -> dict[str, Any]:
    settings = load_settings(work / "hub.toml")
    worker = DetectionWorker(settings)
    worker.log.refresh()
    service, store = worker.events.service, worker.events.store
    clock = StageClock()
    worker.log.read_records = clock.wrap("read", worker.log.read_records)  # type: ignore[method-assign]
    service.consume = clock.wrap("rules", service.consume)  # type: ignore[method-assign]
    service.commit = clock.wrap("commit", service.commit)  # type: ignore[method-assign]
    if worker.anomaly is not None:
        worker.anomaly.score = clock.wrap("anomaly", worker.anomaly.score)  # type: ignore[method-assign]
        worker.anomaly.commit = clock.wrap("anomaly", worker.anomaly.commit)  # type: ignore[method-assign]
    store.outbox_due = clock.wrap("outbox", store.outbox_due)  # type: ignore[method-assign]
    store.outbox_done = clock.wrap("outbox", store.outbox_done)  # type: ignore[method-assign]
    tasks: list[asyncio.Task[None]] = []
    if worker.publisher is not None:
        tasks.append(asyncio.create_task(worker.publisher.run()))
        await asyncio.wait_for(worker.publisher.connected.wait(), 10)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for name, factory in detection_tasks(
        settings, worker.events, worker.anomaly, worker.log
    ).items():
        tasks.append(asyncio.create_task(factory(), name=name))
    shown = 0.0
    while service.evaluated < total:
        await asyncio.sleep(0.05)
        if time.perf_counter() - shown >= 2.0:
            shown = time.perf_counter()
            progress(f"  decided {service.evaluated:,}/{total:,} records")
    decided_cpu = time.process_time() - cpu0
    await service.stop()
    if worker.anomaly is not None:
        await worker.anomaly.stop()
    drained = await worker.events.dispatcher.drain(60.0)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    delivered = {name: s.delivered for name, s in worker.events.dispatcher.stats().items()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await worker.sink.aclose()
    store.close()
    worker.log.close()
    per = 1e6 / total
    stages = {k: round(v * per, 2) for k, v in clock.cpu_s.items()}
    stages["other"] = round(cpu * per - sum(stages.values()), 2)
    return {
        "records": total,
        "detections": service.detections,
        "delivered": delivered,
        "drained": drained,
        "cpu_us_per_record": round(cpu * per, 2),
        "cpu_us_per_record_to_decided": round(decided_cpu * per, 2),
        "stages_us_per_record": stages,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_detection_bench(
    n: int = 100_000,
    devices: int = 1000,
    *,
    progress: Callable[[str], None] = lambda _text: None,
) -> dict[str, Any]:
    """Build the log, start a private Mosquitto and InfluxDB, replay; the figures."""
    work = Path(tempfile.mkdtemp(prefix="gridwatch-detection-bench-"))
    services: list[ManagedProcess] = []
    try:
        progress(f"log: decoding {n:,} messages from {devices:,} devices into a spool")
        total = build_log(work / "spool", n, devices)
        mosquitto = start_mosquitto(work / "mosquitto", free_port())
        services.append(mosquitto)
        influx = start_influxdb(work / "influxdb", free_port())
        services.append(influx)
        (work / "hub.toml").write_text(_settings_text(work, mosquitto.port, influx.port))
        progress("replay: the detection worker's tasks over the log (default settings)")
        thresholds = gc.get_threshold()
        tune_gc()  # as the worker process runs (`hub.worker.main`)
        try:
            result = asyncio.run(_replay(work, total, progress))
        finally:  # this process (a test's, say) goes on as it was
            gc.unfreeze()
            gc.set_threshold(*thresholds)
        result.update(messages=n, devices=devices, part="detection worker (log replay)")
        return result
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(work, ignore_errors=True)
