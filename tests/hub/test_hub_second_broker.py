"""The hub on the second broker: paho devices → NATS 2.9 (MQTT 3.1.1) → hub → InfluxDB 1.6.7.

The same round trips and faults as on Mosquitto (tests/hub/test_roundtrip.py,
tests/hub/test_faults.py), with the hub set to `mqtt.protocol = "3.1.1"`, the only
version NATS speaks: readings of every kind stored field for field, retained status and
wills recorded, rejects counted; a broker restarted or SIGKILLed mid-stream, and a hub
SIGKILLed mid-stream, lose nothing the broker acknowledged to the devices. A hub left at
MQTT 5 is refused with an error that says what to change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.nats import restart_nats
from devstack.stack import ManagedProcess
from hub.runtime import Hub
from hub.settings import Settings
from ingest.influxql import query
from sensors.base import keyed_hash
from simulators.traffic import make_fleet, message
from tests.support.hub import make_settings, running_hub, target
from tests.support.nats_fixtures import running_nats
from tests.support.publishers import Publisher, count_points, until, wait_for

pytestmark = pytest.mark.integration

ACK_WAIT_S = 5.0
"""NATS sends unacknowledged QoS 1 messages again `ack_wait` after it first sent them
(30 s by default), never at the reconnect: a shorter wait keeps the fault tests short
and tests the same redelivery."""


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[ManagedProcess]:
    with running_nats(tmp_path / "nats", ack_wait_s=ACK_WAIT_S) as proc:
        yield proc


def _traffic(kind: str, n: int, site: str, seed: int = 3) -> list[tuple[str, bytes]]:
    """n messages of one kind, uniquely timestamped (1 ms apart), from 10 devices."""
    fleet = [d for d in make_fleet(30, site=site, seed=seed) if d.kind == kind]
    rng = random.Random(seed + 2)
    start = time.time_ns() // 1_000_000 - 120_000
    return [message(fleet[i % len(fleet)], rng, start + i) for i in range(n)]


def _on_nats(settings: Settings, **mqtt: object) -> Settings:
    """The test's hub settings for NATS: MQTT 3.1.1 (and `mqtt` overrides)."""
    update = {"protocol": "3.1.1", **mqtt}
    return settings.model_copy(update={"mqtt": settings.mqtt.model_copy(update=update)})


@pytest.fixture
def nats_settings(
    tmp_path: Path, nats: ManagedProcess, influxdb: ManagedProcess, database: str
) -> Settings:
    return _on_nats(make_settings(tmp_path, nats.port, influxdb.port, database))


def _publish_in_background(
    port: int, messages: list[tuple[str, bytes]], rate: float, name: str
) -> tuple[threading.Thread, list[BaseException]]:
    """paho (persistent session, QoS 1, resends what was not PUBACKed after a reconnect)
    publishes at `rate` msg/s; the thread ends once the broker acknowledged all."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            pub = Publisher(port, name)
            pub.publish_all(messages, rate=rate or None)
            pub.wait(120)
            pub.close()
        except BaseException as exc:  # reported by the test, not swallowed
            errors.append(exc)

    thread = threading.Thread(target=work, name=name)
    thread.start()
    return thread, errors


@pytest.mark.parametrize("kind", ["access", "smoke", "parking"])
async def test_round_trip_per_kind(
    kind: str, nats_settings: Settings, influxdb: ManagedProcess, database: str
) -> None:
    sent = _traffic(kind, 300, "rt")
    tgt = target(influxdb, database)
    async with running_hub(nats_settings) as hub:
        pub = Publisher(int(nats_settings.mqtt.port), f"pub-{kind}")
        pub.publish_all(sent)
        await asyncio.to_thread(pub.wait)
        pub.close()
        await until(lambda: count_points(tgt, kind) == 300, 20, f"300 {kind} points")
        assert hub.stats.rejected == {}
        assert hub.stats.acked == 300
    topic, payload = sent[-1]
    body = json.loads(payload)
    device = topic.split("/")[4]
    series = query(tgt, f"SELECT * FROM \"{kind}\" WHERE device='{device}' AND seq={body['seq']}")
    rows = series[0].records()
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


async def test_status_will_and_rejects_are_recorded(
    nats_settings: Settings, influxdb: ManagedProcess, database: str
) -> None:
    tgt = target(influxdb, database)
    port = int(nats_settings.mqtt.port)
    async with running_hub(nats_settings) as hub:
        status_topic = "gw/v1/rt/smoke/sd-will/status"
        device = Publisher(port, "sd-will", will=(status_topic, b"offline"))
        device.publish(status_topic, b"online", retain=True)
        await asyncio.to_thread(device.wait)
        # Drop the TCP connection without DISCONNECT: the broker publishes the will.
        device.client.loop_stop()
        device.client.socket().close()  # type: ignore[union-attr]
        bad = Publisher(port, "pub-bad")
        bad.publish("gw/v1/rt/smoke/sd-1/telemetry", b"{not json")
        bad.publish("gw/v1/rt/smoke/sd-1/telemetry", b'{"temperature": "hot"}')
        bad.publish("gw/v1/rt/lift/l-1/telemetry", b"{}")
        await asyncio.to_thread(bad.wait)
        bad.close()

        def statuses() -> list[str]:
            series = query(tgt, "SELECT state FROM device_status WHERE device='sd-will'")
            return [r["state"] for r in series[0].records()] if series else []

        await until(lambda: statuses() == ["online", "offline"], 20, "online, then the will")
        await until(lambda: sum(hub.stats.rejected.values()) == 3, 10, "3 rejections")
        assert dict(hub.stats.rejected) == {"bad_json": 1, "invalid_payload": 1, "unknown_kind": 1}
    # The hub's own retained presence and will: `offline` after its graceful stop.
    async with running_hub(nats_settings) as hub:
        assert hub.client.session_present
        await asyncio.sleep(1.0)  # the retained statuses the resubscription brings
        assert statuses() == ["online", "offline"]  # skipped: the session saw them live


async def test_an_oversize_publish_costs_one_warning_not_the_connection(
    nats_settings: Settings, influxdb: ManagedProcess, database: str
) -> None:
    """NATS 2.9 forwards publishes of any size and MQTT 3.1.1 cannot tell it the hub's
    limit (4 x `hub.max_payload_bytes` + 1 KiB): the hub's client drops the message unread,
    instead of a disconnect the broker would answer by sending it again, and the hub files
    it as an `oversize` rejection (a dead letter with its topic and size) before the ack."""
    sent = _traffic("smoke", 20, "big")
    async with running_hub(nats_settings) as hub:
        pub = Publisher(int(nats_settings.mqtt.port), "pub-big")
        pub.publish(sent[0][0], b"{" + b" " * 200_000 + b"}")
        pub.publish_all(sent)
        await asyncio.to_thread(pub.wait)
        pub.close()
        tgt = target(influxdb, database)
        await until(lambda: count_points(tgt, "smoke") == 20, 20, "20 points")
        assert hub.client.counters.oversize_dropped == 1
        assert hub.client.counters.reconnects == 0
        await until(lambda: hub.stats.rejected.get("oversize") == 1, 10, "the rejection")
    letters = [
        json.loads(line)
        for line in (nats_settings.deadletters.directory / "deadletters.jsonl")
        .read_text()
        .splitlines()
    ]
    assert [(d["reason"], d["topic"]) for d in letters] == [("oversize", sent[0][0])]
    assert "200002-byte packet" not in letters[0]["detail"]  # the packet, not the payload
    assert "> the hub's maximum packet size" in letters[0]["detail"]


async def test_hub_left_at_mqtt5_is_refused_with_a_clear_error(
    nats_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _on_nats(nats_settings, protocol="5")
    caplog.set_level(logging.WARNING, logger="broker.client")
    hub = Hub(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    try:
        await until(lambda: "does not speak MQTT 5" in caplog.text, 10, "the refusal logged")
        assert not hub.client.connected.is_set()
        assert hub.client.counters.probes == 0  # refused: backed off, not probed for
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert "connect with MQTT 3.1.1" in caplog.text


async def test_broker_restart_mid_stream_loses_nothing(
    nats_settings: Settings, nats: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    """A graceful restart in lame duck mode (`devstack.nats.stop_nats`; a SIGTERM would
    lose what NATS PUBACKs while JetStream stops before the connections close)."""
    n = 3000
    async with running_hub(nats_settings) as hub:
        thread, errors = _publish_in_background(
            nats.port, _traffic("smoke", n, "f2"), 250, "pub-f2"
        )
        await asyncio.sleep(4)
        await asyncio.to_thread(restart_nats, nats)
        await asyncio.to_thread(thread.join)
        assert not errors
        await until(
            lambda: count_points(target(influxdb, database), "smoke") == n, 60, f"{n} points"
        )
        assert hub.client.counters.reconnects >= 1
        assert hub.stats.sessions_lost == 0


@pytest.mark.slow
async def test_broker_sigkill_mid_stream_keeps_the_session_and_loses_nothing(
    nats_settings: Settings, nats: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    """NATS SIGKILLed mid-stream at 1,000 msg/s, 1 s down, restarted on the same port and
    store: the hub reconnects to its session, and every message the broker PUBACKed to
    the device is stored (on Mosquitto up to `BROKER_AUTOSAVE_CHANGES` may be lost)."""
    n = 6000
    async with running_hub(nats_settings) as hub:
        thread, errors = _publish_in_background(
            nats.port, _traffic("smoke", n, "f5"), 1000, "pub-f5"
        )
        await asyncio.sleep(3)
        reconnects = hub.client.counters.reconnects
        await asyncio.to_thread(restart_nats, nats, kill=True, down_s=1.0)
        await until(lambda: hub.client.counters.reconnects > reconnects, 20, "hub reconnected")
        await asyncio.to_thread(thread.join)
        assert not errors
        tgt = target(influxdb, database)
        # Messages the hub had received but not yet acked come back `ack_wait` (ACK_WAIT_S)
        # after NATS first sent them, not at the reconnect (tests/broker/test_second_broker).
        await until(lambda: count_points(tgt, "smoke") >= n, 60, f"{n} points")
        await asyncio.sleep(1)
        stored = count_points(tgt, "smoke")
        print(f"\nNATS SIGKILL mid-stream: {n - stored} of {n} lost")
        assert stored == n
        assert hub.stats.sessions_lost == 0
        assert hub.client.session_present


def _start_hub_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
    return subprocess.Popen(
        [sys.executable, "-m", "hub", "run", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


@pytest.mark.slow
def test_hub_sigkill_mid_stream_loses_nothing(
    tmp_path: Path, nats: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    """The hub process SIGKILLed mid-stream and started again: what it had not acked comes
    back (`ACK_WAIT_S` after NATS first sent it), and everything is stored."""
    n = 4000
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{nats.port}"\nclient_id = "hub-kill"\n'
        f'protocol = "3.1.1"\nreconnect_min_s = 0.1\n'
        f'[influx]\nurl = "http://127.0.0.1:{influxdb.port}"\ndatabase = "{database}"\n'
        f"flush_interval_s = 0.2\n"
        f'[spool]\ndirectory = "{tmp_path}/spool"\n[deadletters]\ndirectory = "{tmp_path}/dead"\n'
        f'[hub]\ndata_dir = "{tmp_path}/data"\ncredential_hash_key = "kill-test-key-0123456789"\n'
    )
    log = tmp_path / "hub.log"
    hub = _start_hub_process(config, log)
    try:
        status_file = tmp_path / "data" / "status.json"
        wait_for(
            lambda: status_file.exists() and '"connected": true' in status_file.read_text(),
            60,
            "hub connected",
        )
        thread, errors = _publish_in_background(
            nats.port, _traffic("smoke", n, "f3"), 400, "pub-f3"
        )
        time.sleep(4)
        hub.send_signal(signal.SIGKILL)
        hub.wait(10)
        time.sleep(1)
        hub = _start_hub_process(config, log)
        thread.join()
        assert not errors
        wait_for(
            lambda: count_points(target(influxdb, database), "smoke") == n,
            90,
            f"{n} points",
            interval=0.5,
        )
    finally:
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(20)
        except subprocess.TimeoutExpired:
            hub.kill()
    assert "Traceback" not in log.read_text()
