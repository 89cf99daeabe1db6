"""Issue 18 against real Mosquitto and InfluxDB: no message may stop the hub.

The issue's poison (a `ts` of 401 digits) used to raise OverflowError out of the MQTT
client's `data_received`: the connection dropped, the broker redelivered the message,
and the hub looped forever while other devices' readings waited. Now it is a rejection,
and whatever a future bug raises for one message is dead-lettered once and acked once,
also across a restart (poison quarantine).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from devstack.stack import ManagedProcess
from hub.runtime import Hub
from hub.settings import Settings
from ingest.decode import Rejected
from sensors.base import Reading
from tests.support.hub import running_hub, target
from tests.support.publishers import Publisher, count_points, until

pytestmark = pytest.mark.integration

POISON_TOPIC = "gw/v1/yingyang/smoke/sm-kg-kitchen/telemetry"
POISON = b'{"ts":1' + b"0" * 400 + b',"temperature":20}'


def mosquitto_pub(port: int, topic: str, payload: bytes, client_id: str) -> None:
    """The issue's reproduction: the Mosquitto command-line client, QoS 1."""
    subprocess.run(
        [
            *("mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-i", client_id, "-q", "1"),
            *("-t", topic, "-m", payload.decode()),
        ],
        check=True,
        timeout=10,
    )


def others(n: int) -> list[tuple[str, bytes]]:
    """Valid smoke readings of other devices, device time just now."""
    now_ms = time.time_ns() // 1_000_000
    return [
        (
            f"gw/v1/yingyang/smoke/sm-other-{i % 5}/telemetry",
            json.dumps({"ts": now_ms - 5_000 + i, "seq": i, "temperature": 20.5}).encode(),
        )
        for i in range(n)
    ]


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    path = settings.deadletters.directory / "deadletters.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@contextlib.asynccontextmanager
async def hub_with(
    settings: Settings, patch: Callable[[Hub], None] = lambda hub: None
) -> AsyncIterator[Hub]:
    """`running_hub`, patched before it connects (queued messages arrive on connect)."""
    hub = Hub(settings)
    patch(hub)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    try:
        await asyncio.wait_for(hub.client.connected.wait(), 10)
        yield hub
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def raise_on_poison(hub: Hub) -> None:
    """A bug to come: decode raises for the poison (as OverflowError did in issue 18)."""
    original = hub.decoder.decode

    def decode(topic: str, payload: bytes, received_ns: int) -> Reading | Rejected:
        if payload == POISON:
            raise OverflowError("integer division result too large for a float")
        return original(topic, payload, received_ns)

    hub.decoder.decode = decode  # type: ignore[method-assign]  # fault injection


async def test_the_issue_poison_does_not_stop_the_hub(
    settings: Settings, influxdb: ManagedProcess, database: str
) -> None:
    port = int(settings.mqtt.port)
    sent = others(200)
    async with running_hub(settings) as hub:
        await asyncio.to_thread(mosquitto_pub, port, POISON_TOPIC, POISON, "poisoner")
        pub = Publisher(port, "pub-others")
        pub.publish_all(sent)
        await asyncio.to_thread(pub.wait)
        pub.close()
        await until(
            lambda: count_points(target(influxdb, database), "smoke") == len(sent),
            20,
            "the other devices' readings in InfluxDB",
        )
        await until(lambda: hub.stats.acked >= len(sent) + 1, 10, "every message acked")
        assert dict(hub.stats.rejected) == {"timestamp_future": 1}
        assert hub.client.counters.reconnects == 0
        assert hub.client.counters.connects == 1
        assert hub.client.counters.dispatch_errors == 0
    (letter,) = dead_letters(settings)
    assert letter["reason"] == "timestamp_future"
    assert letter["detail"] == "ts is more than 10^12 s ahead of the hub clock"
    assert letter["topic"] == POISON_TOPIC
    assert base64.b64decode(letter["payload_b64"]) == POISON


async def test_a_raising_message_is_dead_lettered_once_and_not_redelivered(
    settings: Settings, influxdb: ManagedProcess, database: str
) -> None:
    """Poison quarantine: the message is queued for the hub while it is down (as after
    a crash); on start it arrives, raises, is dead-lettered and acked, and the restart
    after that gets nothing again."""
    port = int(settings.mqtt.port)
    async with running_hub(settings):
        pass  # the persistent session and its subscription now exist
    await asyncio.to_thread(mosquitto_pub, port, POISON_TOPIC, POISON, "poisoner")
    sent = others(20)
    pub = Publisher(port, "pub-after-poison")
    pub.publish_all(sent)
    await asyncio.to_thread(pub.wait)
    pub.close()
    async with hub_with(settings, raise_on_poison) as hub:
        await until(
            lambda: count_points(target(influxdb, database), "smoke") == len(sent),
            20,
            "the readings queued behind the poison",
        )
        await until(lambda: hub.stats.acked == len(sent) + 1, 10, "the poison acked")
        assert dict(hub.stats.rejected) == {"internal_error": 1}
        assert hub.client.counters.reconnects == 0
    async with hub_with(settings, raise_on_poison) as again:
        await asyncio.sleep(1.5)  # what the broker still had would arrive now
        assert again.stats.received == 0
        assert dict(again.stats.rejected) == {}
    (letter,) = dead_letters(settings)
    assert (letter["reason"], letter["detail"]) == ("internal_error", "decode raised OverflowError")
    assert base64.b64decode(letter["payload_b64"]) == POISON


async def test_device_messages_on_hub_topics_are_counted_not_dropped(
    settings: Settings, influxdb: ManagedProcess, database: str
) -> None:
    port = int(settings.mqtt.port)
    async with running_hub(settings) as hub:
        pub = Publisher(port, "pub-reserved")
        pub.publish("gw/v1/_hub/peer-hub/status", b"online", retain=True)  # a peer: fine
        pub.publish("gw/v1/_hub/peer-hub/status", b'{"temperature": 20}')
        pub.publish("gw/v1/_hub/peer-hub/telemetry", b"online")
        pub.publish("gw/v1/_hub/x", b"hello")
        await asyncio.to_thread(pub.wait)
        pub.close()
        await until(lambda: sum(hub.stats.rejected.values()) == 3, 10, "3 rejections")
        await asyncio.sleep(0.5)
        assert dict(hub.stats.rejected) == {"reserved_topic": 3}
    letters = dead_letters(settings)
    assert sorted(letter["topic"] for letter in letters) == [
        "gw/v1/_hub/peer-hub/status",
        "gw/v1/_hub/peer-hub/telemetry",
        "gw/v1/_hub/x",
    ]
    assert {letter["reason"] for letter in letters} == {"reserved_topic"}
