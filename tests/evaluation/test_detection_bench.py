"""`gridwatch bench detection`: the log it replays is the ingest benchmark's stream with
its probes, and a small replay through the worker's tasks (real Mosquitto and InfluxDB)
decides every record and delivers every transition to both sinks."""

from __future__ import annotations

from pathlib import Path

from evaluation.detection_bench import (
    PROBE_EVERY,
    STAGES,
    build_log,
    format_detection_bench,
)
from evaluation.ingest_bench import PROBE_DEVICE_PREFIX
from hub.detection_bench import run_detection_bench
from ingest.spool import Spool
from sensors.base import Reading


def test_the_log_holds_the_stream_and_one_probe_per_interval(tmp_path: Path) -> None:
    n = 3 * PROBE_EVERY
    total = build_log(tmp_path / "spool", n, devices=50)
    spool = Spool(tmp_path / "spool", max_bytes=1 << 40)
    spool.open()
    try:
        position, records = spool.start_of_log(), []
        while (batch := spool.read_records(position, 10_000)) is not None:
            records += batch.records
            position = batch.end
    finally:
        spool.close()
    assert total == len(records) == n + 3
    probes = [
        r for r in records if isinstance(r, Reading) and r.device.startswith(PROBE_DEVICE_PREFIX)
    ]
    assert [p.fields.get("event") for p in probes] == ["door_forced"] * 3
    assert (
        len({r.device for r in records if isinstance(r, Reading)} - {p.device for p in probes})
        == 50
    )


def test_a_small_replay_decides_everything_and_delivers_to_both_sinks() -> None:
    result = run_detection_bench(4_000, 100)
    assert result["records"] == 4_002
    assert result["drained"]
    assert result["detections"] >= 2  # the probes at least
    delivered = result["delivered"]
    assert set(delivered) == {"influxdb", "mqtt"} and delivered["influxdb"] == delivered["mqtt"] > 0
    stages = result["stages_us_per_record"]
    assert set(stages) == {*STAGES, "other"} and all(stages[s] > 0 for s in STAGES)
    assert "a PART" in format_detection_bench(result)
