"""`gridwatch bench detection` (run by `hub.detection_bench`): the log it replays, the
stage clock, the output. What the detection worker spends per log record, by stage.

A PART of the default pipeline, measured alone: the ingest benchmark's stream (its
templates, devices, seed and `door_forced` probes) is decoded and written to a log (a
spool) up front, then the detection worker's own tasks (`hub.worker.DetectionWorker`,
default settings: rules, event store, outbox, InfluxDB and MQTT sinks to a private
Mosquitto and InfluxDB) consume it in this process until every record is decided and
every transition delivered. CPU is this process's (`time.process_time`, all threads), so
what else the machine runs changes it little; `gridwatch bench ingest` measures the
whole pipeline with the same stream.

Stages are timed by wrapping the worker's calls with per-thread CPU clocks:
`read` (records from the log), `rules` (`RulesService.consume`), `commit` (events,
audit and outbox rows, one transaction per turn), `outbox` (reading due deliveries and
forgetting delivered ones); `other` is the rest: the sinks' rendering and I/O and the
event loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from evaluation.bench_costs import bench_decoder, bench_messages
from evaluation.ingest_bench import (
    PROBE_DEVICE_PREFIX,
    _probe_payload,
    _templates,
)
from ingest.decode import Rejected
from ingest.line_protocol import LineEncoder
from ingest.records import Record
from ingest.spool import Spool, encode_frame
from sensors import topics

FRAME_RECORDS: Final = 500
"""Records per log frame (the intake's fsync batches are of this order flat out)."""
PROBE_EVERY: Final = 2_000
"""One `door_forced` probe among this many messages (every 100 ms at 20,000 msg/s)."""
STAGES: Final = ("read", "rules", "commit", "anomaly", "outbox")

T = TypeVar("T")


def build_log(spool_dir: Path, n: int, devices: int, seed: int = 1) -> int:
    """The ingest benchmark's stream, decoded as the intake decodes it, in a spool, with
    one `door_forced` probe (a device of its own) every `PROBE_EVERY` messages; returns
    the number of records."""
    messages = bench_messages(_templates(n, devices, seed))
    decoder = bench_decoder()
    encode = LineEncoder().encode
    received_ns = messages.received_ns
    probe_ms = received_ns // 1_000_000 - 1_000
    stream: list[tuple[str, bytes]] = []
    for i, message in enumerate(messages.messages):
        if i % PROBE_EVERY == PROBE_EVERY // 2:  # an alarm among the telemetry
            device = f"{PROBE_DEVICE_PREFIX}replay-{i:07d}"
            topic = topics.device_topic(topics.DEFAULT_PREFIX, device, "access", device, "event")
            stream.append((topic, _probe_payload(probe_ms)))
        stream.append(message)
    spool = Spool(spool_dir, max_bytes=1 << 40)
    spool.open()
    try:
        for at in range(0, len(stream), FRAME_RECORDS):
            records: list[Record] = []
            lines: list[bytes] = []
            for topic, payload in stream[at : at + FRAME_RECORDS]:
                found = decoder.decode(topic, payload, received_ns)
                records.append(found)
                if not isinstance(found, Rejected):
                    lines.append(encode(found))
            spool.append(encode_frame(lines, 0, records), len(lines), records)
        spool.sync()
    finally:
        spool.close()
    return len(stream)


class StageClock:
    """Per-thread CPU time spent inside the wrapped calls, by stage."""

    def __init__(self) -> None:
        self.cpu_s = dict.fromkeys(STAGES, 0.0)

    def wrap(self, stage: str, call: Callable[..., T]) -> Callable[..., T]:
        def timed(*args: Any, **kwargs: Any) -> T:
            started = time.thread_time()
            try:
                return call(*args, **kwargs)
            finally:
                self.cpu_s[stage] += time.thread_time() - started

        return timed


def format_detection_bench(result: dict[str, Any]) -> str:
    stages = result["stages_us_per_record"]
    delivered = ", ".join(f"{k} {v:,}" for k, v in sorted(result["delivered"].items()))
    return "\n".join(
        [
            f"gridwatch detection benchmark: {result['messages']:,} messages, "
            f"{result['devices']:,} devices ({result['records']:,} log records)",
            "measured: a PART, the detection worker's tasks replaying a prepared log in one "
            "process (default settings); `gridwatch bench ingest` measures the pipeline",
            f"  detections {result['detections']:,}; transitions delivered: {delivered}"
            + ("" if result["drained"] else " (NOT all delivered within 60 s)"),
            f"  CPU {result['cpu_us_per_record']:.1f} µs/record "
            f"({result['cpu_us_per_record_to_decided']:.1f} until every record was decided)",
            "  by stage, µs/record: "
            + ", ".join(f"{name} {stages[name]:.1f}" for name in (*STAGES, "other")),
            f"  wall {result['wall_s']:.2f} s; peak RSS {result['peak_rss_mb']:.1f} MB",
        ]
    )


def detection_bench_json(result: dict[str, Any]) -> str:
    return json.dumps(result, sort_keys=True)
