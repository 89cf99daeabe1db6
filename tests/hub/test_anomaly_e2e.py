"""End to end: history in a real InfluxDB 1.6.7 → `gridwatch anomaly train` → a live
anomalous reading through Mosquitto and the hub → an anomaly event in the event store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from anomaly.history import HistoryStats, read_history
from anomaly.model_store import load_model
from devstack.stack import ManagedProcess
from events.model import SecurityEvent, Source
from events.store import EventFilter, EventStore
from hub.cli import main
from hub.settings import AnomalySettings, EventsSettings, Settings
from hub.wiring import store_url
from ingest.influxql import query
from ingest.line_protocol import encode_reading
from ingest.status import read_status
from sensors.registry import KINDS
from tests.support.anomaly_fixtures import MS_PER_MIN, SITE, smoke_history
from tests.support.hub import make_settings, running_hub, target
from tests.support.publishers import Publisher, until

pytestmark = pytest.mark.integration

DEVICES = ["sm-kg-kitchen", "sm-kg-corridor"]
DAY_MIN = 1440


def _write_history(influxdb: ManagedProcess, database: str, start_ms: int) -> int:
    tgt = target(influxdb, database)
    query(tgt, f'CREATE DATABASE "{database}"')
    readings = smoke_history(DEVICES, start_ms, DAY_MIN)
    body = b"".join(encode_reading(r) for r in readings)
    resp = httpx.post(
        f"{tgt.url}/write", params={"db": database, "precision": "ns"}, content=body, timeout=30
    )
    assert resp.status_code == 204, resp.text
    return len(readings)


def _anomaly_events(settings: Settings) -> list[SecurityEvent]:
    with EventStore(store_url(settings)) as store:
        return [e for e in store.list_events(EventFilter(site=SITE)) if e.source is Source.ANOMALY]


async def test_history_train_live_reading_event(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    now_ms = int(time.time() * 1000) // MS_PER_MIN * MS_PER_MIN
    history_start = now_ms - (DAY_MIN + 20) * MS_PER_MIN  # a day, ending 20 min ago
    written = _write_history(influxdb, database, history_start)

    # The history reader gives back what was written, typed as the kind declares.
    stats = HistoryStats()
    back = list(
        read_history(
            target(influxdb, database),
            list(KINDS.values()),
            (history_start - MS_PER_MIN) * 1_000_000,
            now_ms * 1_000_000,
            site=SITE,
            chunk_ns=4 * 3600 * 1_000_000_000,
            stats=stats,
        )
    )
    assert len(back) == written and stats.skipped == {}
    assert [r.ts_ns for r in back] == sorted(r.ts_ns for r in back)
    assert isinstance(back[0].fields["temperature"], float)
    assert isinstance(back[0].fields["seq"], int)

    model_dir = tmp_path / "model"
    config = tmp_path / "gridwatch.toml"
    config.write_text(
        f'[influx]\nurl = "http://127.0.0.1:{influxdb.port}"\ndatabase = "{database}"\n'
        f'[hub]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[anomaly]\nmodel_dir = "{model_dir}"\n'
    )
    result = CliRunner().invoke(
        main, ["anomaly", "train", "--since", "2d", "--site", SITE, "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "model saved" in result.output and "smoke" in result.output
    model = load_model(model_dir)
    assert set(model.kinds) == {"smoke"}
    assert model.kinds["smoke"].report["own_detectors"] == len(DEVICES)

    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        database,
        events=EventsSettings(snapshot_interval_s=0.5, publish_mqtt=False, detection="process"),
        anomaly=AnomalySettings(model_dir=model_dir, batch_interval_s=0.1),
    )
    device = DEVICES[0]
    topic = f"gw/v1/{SITE}/smoke/{device}/telemetry"
    live = smoke_history([device], history_start, 8, seed=5, first_minute=DAY_MIN)
    publisher = Publisher(mosquitto.port, device)
    try:
        async with running_hub(settings) as hub:

            def counter(name: str) -> int:  # the detection worker's report of its scorer
                anomaly = hub.detection_status().get("anomaly") or {}
                return int(anomaly.get(name, 0))

            def scored() -> int:
                return counter("scored")

            def readings() -> int:
                return counter("readings")

            for reading in live:  # usual readings fill the device's window: no event
                body = {"ts": reading.ts_ns // 1_000_000, "cell": "yy-g07", **reading.fields}
                publisher.publish(topic, json.dumps(body).encode())
            publisher.wait()
            await until(lambda: scored() >= 3, 20, "the usual readings scored")
            assert _anomaly_events(settings) == []
            hot = {
                "ts": live[-1].ts_ns // 1_000_000 + MS_PER_MIN,
                "seq": DAY_MIN + 9,
                "cell": "yy-g07",
                "temperature": 58.0,
                "eco2": 2400.0,
                "obscuration": 0.01,
                "humidity": 45.0,
            }
            publisher.publish(topic, json.dumps(hot).encode())
            publisher.wait()
            await until(lambda: len(_anomaly_events(settings)) == 1, 20, "the anomaly event")
            # Every reading the hub acked was scored: the log keeps what waits, never drops.
            await until(lambda: readings() == len(live) + 1, 10, "every reading scored")
            await until(
                lambda: (
                    (read_status(settings.hub.data_dir) or {}).get("anomaly", {}).get("flagged", 0)
                    >= 1
                ),
                10,
                "the anomaly counters in the status file",
            )
        (event,) = _anomaly_events(settings)
        assert event.rule_id == "anomaly.smoke" and event.key == device
        assert event.device == device and event.cell == "yy-g07"
        values = event.values
        assert float(values["score"]) >= float(values["threshold"])
        assert any(name.startswith(("temperature", "eco2")) for name in values)
    finally:
        publisher.close()
