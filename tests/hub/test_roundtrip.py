"""Round trip per kind: paho publisher → real Mosquitto → hub → real InfluxDB 1.6.7,
and the v2 write path (`influxdb-client`) into VictoriaMetrics, checked via its export API."""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import ManagedProcess
from hub.settings import InfluxSettings, Settings
from ingest.influxql import query
from sensors.base import keyed_hash
from simulators.traffic import make_fleet, message
from tests.support.hub import make_settings, running_hub, target
from tests.support.publishers import Publisher, count_points, until

pytestmark = pytest.mark.integration


def _traffic(kind: str, n: int, site: str = "rt") -> list[tuple[str, bytes]]:
    fleet = [d for d in make_fleet(30, site=site, seed=3) if d.kind == kind]
    rng = random.Random(5)
    now = time.time_ns() // 1_000_000 - 60_000
    return [message(fleet[i % len(fleet)], rng, now + i) for i in range(n)]


@pytest.mark.parametrize("kind", ["access", "smoke", "parking"])
async def test_round_trip_per_kind(
    kind: str, settings: Settings, influxdb: ManagedProcess, database: str
) -> None:
    sent = _traffic(kind, 300)
    async with running_hub(settings) as hub:
        pub = Publisher(int(settings.mqtt.port), f"pub-{kind}")
        pub.publish_all(sent)
        await asyncio.to_thread(pub.wait)
        pub.close()
        tgt = target(influxdb, database)
        await until(lambda: count_points(tgt, kind) == 300, 20, f"300 {kind} points")
        assert hub.stats.rejected == {}
    # Spot-check values: the last message of one device is stored field for field.
    topic, payload = sent[-1]
    body = json.loads(payload)
    device = topic.split("/")[4]
    rows = query(tgt, f"SELECT * FROM \"{kind}\" WHERE device='{device}' AND seq={body['seq']}")[
        0
    ].records()
    assert len(rows) == 1
    row = rows[0]
    assert row["time"] == body["ts"] * 1_000_000
    assert row["site"] == "rt" and row["kind"] == kind and row["cell"] == body["cell"]
    for key, value in body.items():
        if key in ("ts", "cell", "credential"):
            continue
        assert row[key] == value, key
    if "credential" in body:
        assert row["credential_hash"] == keyed_hash(
            b"test-credential-key-0123456789", body["credential"]
        )


async def test_clear_card_numbers_never_reach_influxdb(
    settings: Settings, influxdb: ManagedProcess, database: str
) -> None:
    sent = _traffic("access", 200)
    cards = {json.loads(p)["credential"] for _, p in sent if b"credential" in p}
    assert cards
    async with running_hub(settings):
        pub = Publisher(int(settings.mqtt.port), "pub-cards")
        pub.publish_all(sent)
        await asyncio.to_thread(pub.wait)
        pub.close()
        await until(
            lambda: count_points(target(influxdb, database), "access") == 200, 20, "access points"
        )
    dump = json.dumps([s.values for s in query(target(influxdb, database), "SELECT * FROM /.*/")])
    assert not [c for c in cards if c in dump]


async def test_status_will_and_rejects_are_recorded(
    settings: Settings, influxdb: ManagedProcess, database: str
) -> None:
    tgt = target(influxdb, database)
    async with running_hub(settings) as hub:
        status_topic = "gw/v1/rt/smoke/sd-will/status"
        device = Publisher(int(settings.mqtt.port), "sd-will", will=(status_topic, b"offline"))
        device.publish(status_topic, b"online", retain=True)
        await asyncio.to_thread(device.wait)
        # Drop the TCP connection without DISCONNECT: the broker publishes the will.
        device.client.loop_stop()
        device.client.socket().close()  # type: ignore[union-attr]
        bad = Publisher(int(settings.mqtt.port), "pub-bad")
        bad.publish("gw/v1/rt/smoke/sd-1/telemetry", b"{not json")
        bad.publish("gw/v1/rt/smoke/sd-1/telemetry", b'{"temperature": "hot"}')
        bad.publish("gw/v1/rt/lift/l-1/telemetry", b"{}")
        await asyncio.to_thread(bad.wait)
        bad.close()

        def statuses() -> list[str]:
            series = query(tgt, "SELECT state FROM device_status WHERE device='sd-will'")
            return [r["state"] for r in series[0].records()] if series else []

        await until(lambda: statuses()[-1:] == ["offline"], 20, "the will recorded as offline")
        assert statuses()[0] == "online"
        await until(lambda: sum(hub.stats.rejected.values()) == 3, 10, "3 rejections")
        assert dict(hub.stats.rejected) == {"bad_json": 1, "invalid_payload": 1, "unknown_kind": 1}

        def stats_rejected() -> int:
            series = query(tgt, "SELECT last(rejected) FROM hub_stats")
            return int(series[0].values[0][1]) if series else 0

        await until(lambda: stats_rejected() == 3, 10, "hub_stats with the rejections")
    letters = (settings.deadletters.directory / "deadletters.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["reason"] for x in letters) == [
        "bad_json",
        "invalid_payload",
        "unknown_kind",
    ]


async def test_shared_subscription_splits_load(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    def hub_settings(name: str) -> Settings:
        base = make_settings(tmp_path / name, mosquitto.port, influxdb.port, database)
        return base.model_copy(
            update={
                "mqtt": base.mqtt.model_copy(update={"client_id": name, "shared_group": "hubs"})
            }
        )

    sent = _traffic("smoke", 600, site="shared")
    async with running_hub(hub_settings("hub-a")) as a, running_hub(hub_settings("hub-b")) as b:
        pub = Publisher(mosquitto.port, "pub-shared")
        pub.publish_all(sent)
        await asyncio.to_thread(pub.wait)
        pub.close()
        await until(
            lambda: count_points(target(influxdb, database), "smoke") == 600, 20, "600 points"
        )
        assert a.stats.received + b.stats.received == 600
        assert a.stats.received > 0 and b.stats.received > 0


async def test_v2_write_path_into_victoria_metrics(
    tmp_path: Path, mosquitto: ManagedProcess, victoria: ManagedProcess
) -> None:
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        victoria.port,
        "unused",
        influx=InfluxSettings(
            url=f"http://127.0.0.1:{victoria.port}",
            api="v2",
            org="gw",
            bucket="telemetry",
            token="vm-accepts-any-token",
            flush_interval_s=0.2,
        ),
    )
    sent = _traffic("smoke", 120, site="vmsite")
    async with running_hub(settings) as hub:
        pub = Publisher(mosquitto.port, "pub-v2")
        pub.publish_all(sent)
        await asyncio.to_thread(pub.wait)
        pub.close()
        await until(lambda: hub.stats.stored >= 120, 20, "120 points written")
        assert not hub.stats.write_failures

    def exported() -> list[dict[str, Any]]:
        url = (
            f"http://127.0.0.1:{victoria.port}/api/v1/export?"
            "match[]=%7B__name__%3D%22smoke_temperature%22%2Csite%3D%22vmsite%22%7D"
        )
        with urllib.request.urlopen(url, timeout=5) as resp:
            return [json.loads(line) for line in resp.read().splitlines() if line]

    await until(
        lambda: sum(len(s["values"]) for s in exported()) == 120,
        30,
        "120 samples in VictoriaMetrics",
    )
    series = exported()
    by_ts = {ts: v for s in series for ts, v in zip(s["timestamps"], s["values"], strict=True)}
    for _, payload in sent:
        body = json.loads(payload)
        assert by_ts[body["ts"]] == pytest.approx(body["temperature"])
    assert {s["metric"]["device"] for s in series} == {t.split("/")[4] for t, _ in sent}
