"""End to end: a device message → Mosquitto → hub → rules → event in the store, in
InfluxDB (`security_event`) and on `gw/events/v1/<site>`, which no hub receives; and a
restart resumes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from devstack.stack import ManagedProcess
from events.model import State
from events.sinks import MqttSink
from events.store import EventFilter, EventStore
from hub.runtime import Hub, subscription_filters
from hub.settings import EventsSettings, MqttSettings, Settings
from hub.wiring import store_url
from ingest.influxql import InfluxQLError, query
from tests.support.hub import make_settings, running_hub, target
from tests.support.publishers import Publisher, until

pytestmark = pytest.mark.integration

DOOR = "ac-gate-south"
TOPIC = f"gw/v1/yingyang/access/{DOOR}/event"


class Listener:
    """A QoS 1 subscriber (MQTT 5, so shared subscriptions work) on one filter."""

    def __init__(self, port: int, topic_filter: str, client_id: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"no SUBACK for {topic_filter}")

    def _on_message(self, _c: object, _u: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self.messages]

    def received(self) -> list[dict[str, object]]:
        with self._lock:
            return [json.loads(p) for _, p in self.messages]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _settings(
    tmp_path: Path, mosquitto: ManagedProcess, influx: ManagedProcess, db: str
) -> Settings:
    return make_settings(
        tmp_path,
        mosquitto.port,
        influx.port,
        db,
        events=EventsSettings(snapshot_interval_s=0.5, detection="process"),
    )


def _event_points(influxdb: ManagedProcess, database: str) -> int:
    try:
        series = query(target(influxdb, database), 'SELECT count("event_id") FROM security_event')
    except InfluxQLError:
        return 0
    return int(series[0].values[0][1]) if series else 0


def evaluated(hub: Hub) -> int:
    """Readings the rules evaluated since the hub (its detection worker) started."""
    return int(hub.detection_status().get("rules_evaluated", 0))


def _open_events(settings: Settings) -> list[object]:
    with EventStore(store_url(settings)) as store:
        return list(store.list_events(EventFilter(site="yingyang")))


async def test_forced_door_becomes_an_event_everywhere(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    settings = _settings(tmp_path, mosquitto, influxdb, database)
    listener = Listener(mosquitto.port, "gw/events/v1/yingyang", "event-listener")
    # Subscribed exactly as the hub is: sees what the hub's session receives.
    shadow = Listener(mosquitto.port, subscription_filters(settings)[0], "hub-shadow")
    publisher = Publisher(mosquitto.port, "door-controller")
    try:
        async with running_hub(settings) as hub:
            body = {"ts": int(time.time() * 1000), "seq": 1, "door": "gate", "event": "door_forced"}
            publisher.publish(TOPIC, json.dumps(body).encode())
            publisher.wait()
            await until(lambda: len(_open_events(settings)) == 1, 20, "the event in the store")
            await until(lambda: bool(listener.received()), 20, "the event on gw/events/v1/yingyang")
            await until(lambda: _event_points(influxdb, database) >= 1, 20, "the event point")
            # The hub's input was the device message alone: its events never came back.
            assert hub.stats.received == 1 and not hub.stats.rejected
        assert set(shadow.topics()) == {TOPIC, f"gw/v1/_hub/{settings.mqtt.client_id}/status"}
        assert listener.topics() and set(listener.topics()) == {"gw/events/v1/yingyang"}
        with EventStore(store_url(settings)) as store:
            (event,) = store.list_events(EventFilter(site="yingyang"))
            assert event.rule_id == "door_forced"
            assert event.device == DOOR
            assert event.cell == "yy-g07"
            assert event.state is State.ACTIVE_UNACKNOWLEDGED
            assert event.assignee is not None  # the cell's grid worker
            trail = store.audit_trail(event.id)
            assert [a.action.value for a in trail][:2] == ["raise", "assign"]
        first = listener.received()[0]
        assert first["rule_id"] == "door_forced"
        # Nothing was dead-lettered.
        dead = list((tmp_path / "dead").glob("*"))
        assert all(p.stat().st_size == 0 for p in dead if p.is_file())
    finally:
        publisher.close()
        listener.close()
        shadow.close()


@pytest.mark.parametrize(
    ("prefix", "group", "events"),
    [
        ("gw/v1", None, "gw/events/v1/yingyang"),
        ("gw/v1", "hubs", "gw/events/v1/yingyang"),
        ("/acme/grid/v9/", None, "acme/grid/events/v9/yingyang"),
        ("gw", "g", "events/gw/yingyang"),
    ],
)
async def test_the_hubs_subscription_does_not_match_the_events_topic(
    mosquitto: ManagedProcess, prefix: str, group: str | None, events: str
) -> None:
    """Real Mosquitto matching: what a hub subscribes to (plain or shared) gets the device
    topics and never the events its MqttSink publishes; an events reader gets those."""
    mqtt = MqttSettings(
        url=f"mqtt://127.0.0.1:{mosquitto.port}", topic_prefix=prefix, shared_group=group
    )
    if group is not None:
        # A shared group splits each device's messages across hubs: rules refuse it.
        with pytest.raises(ValidationError, match="shared_group"):
            Settings(mqtt=mqtt)
    # Ingest-only hubs may share (their events are off); the subscription is the same.
    settings = Settings(mqtt=mqtt, events=EventsSettings(enabled=group is None))
    hub = Listener(mosquitto.port, subscription_filters(settings)[0], "hub-like")
    reader = Listener(mosquitto.port, events, "events-reader")
    publisher = Publisher(mosquitto.port, "sink-and-device")
    sent: list[str] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append(topic)
        publisher.publish(topic, payload)

    try:
        sink = MqttSink(publish, settings.mqtt.topic_prefix)
        await publish(sink.topic("yingyang"), b"{}")
        device = f"{settings.mqtt.topic_prefix}/yingyang/access/{DOOR}/event"
        publisher.publish(device, b"{}")
        publisher.wait()
        await until(lambda: bool(hub.topics()) and bool(reader.topics()), 10, "both deliveries")
        await asyncio.sleep(0.3)  # time for a wrong delivery to show up
        assert hub.topics() == [device]
        assert reader.topics() == sent == [events]
    finally:
        publisher.close()
        hub.close()
        reader.close()


async def test_restart_neither_forgets_nor_repeats_an_open_condition(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    """Four denials in two minutes raise once, even when the hub restarts between them."""
    settings = _settings(tmp_path, mosquitto, influxdb, database)
    publisher = Publisher(mosquitto.port, "door-controller-2")
    now = int(time.time() * 1000)

    def deny(seq: int) -> None:
        body = {
            "ts": now + seq * 1000,
            "seq": seq,
            "door": "gate",
            "event": "access_denied",
            "credential": f"9999000{seq}",
            "reason": "unknown card",
        }
        publisher.publish(TOPIC, json.dumps(body).encode())
        publisher.wait()

    try:
        async with running_hub(settings) as hub:
            for seq in (1, 2):
                deny(seq)
            await until(lambda: evaluated(hub) >= 2, 20, "two denials evaluated")
        # Stopped with two denials in the window: the snapshot keeps them.
        async with running_hub(settings) as hub:
            for seq in (3, 4, 5):
                deny(seq)
            await until(lambda: evaluated(hub) >= 3, 20, "three more denials evaluated")
            await until(lambda: len(_open_events(settings)) == 1, 20, "one denial event")
        with EventStore(store_url(settings)) as store:
            events = [
                e
                for e in store.list_events(EventFilter(site="yingyang"))
                if e.rule_id == "repeated_denials"
            ]
            assert len(events) == 1
            assert events[0].count == 2  # raised at the 4th denial, repeated at the 5th
    finally:
        publisher.close()
