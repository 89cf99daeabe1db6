"""End to end: a device message → Mosquitto → hub → rules → event in the store, in
InfluxDB (`security_event`) and on `gw/v1/<site>/events`; and a restart resumes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devstack.stack import ManagedProcess
from events.model import State
from events.store import EventFilter, EventStore
from hub.settings import EventsSettings, Settings
from hub.wiring import store_url
from ingest.influxql import InfluxQLError, query
from tests.support.hub import make_settings, running_hub, target
from tests.support.publishers import Publisher, until

pytestmark = pytest.mark.integration

DOOR = "ac-gate-south"
TOPIC = f"gw/v1/yingyang/access/{DOOR}/event"


class EventListener:
    """A QoS 1 subscriber on the site's event topic."""

    def __init__(self, port: int) -> None:
        self.messages: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="event-listener")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("gw/v1/yingyang/events", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(json.loads(message.payload))

    def received(self) -> list[dict[str, object]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _settings(
    tmp_path: Path, mosquitto: ManagedProcess, influx: ManagedProcess, db: str
) -> Settings:
    return make_settings(
        tmp_path, mosquitto.port, influx.port, db, events=EventsSettings(snapshot_interval_s=0.5)
    )


def _event_points(influxdb: ManagedProcess, database: str) -> int:
    try:
        series = query(target(influxdb, database), 'SELECT count("event_id") FROM security_event')
    except InfluxQLError:
        return 0
    return int(series[0].values[0][1]) if series else 0


def _open_events(settings: Settings) -> list[object]:
    with EventStore(store_url(settings)) as store:
        return list(store.list_events(EventFilter(site="yingyang")))


async def test_forced_door_becomes_an_event_everywhere(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    settings = _settings(tmp_path, mosquitto, influxdb, database)
    listener = EventListener(mosquitto.port)
    publisher = Publisher(mosquitto.port, "door-controller")
    try:
        async with running_hub(settings):
            body = {"ts": int(time.time() * 1000), "seq": 1, "door": "gate", "event": "door_forced"}
            publisher.publish(TOPIC, json.dumps(body).encode())
            publisher.wait()
            await until(lambda: len(_open_events(settings)) == 1, 20, "the event in the store")
            await until(lambda: bool(listener.received()), 20, "the event on gw/v1/yingyang/events")
            await until(lambda: _event_points(influxdb, database) >= 1, 20, "the event point")
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
        # The hub ignores its own event stream: nothing was dead-lettered.
        dead = list((tmp_path / "dead").glob("*"))
        assert all(p.stat().st_size == 0 for p in dead if p.is_file())
    finally:
        publisher.close()
        listener.close()


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
            assert hub.events is not None
            service = hub.events.service
            await until(lambda: service.evaluated >= 2, 20, "two denials evaluated")
        # Stopped with two denials in the window: the snapshot keeps them.
        async with running_hub(settings) as hub:
            for seq in (3, 4, 5):
                deny(seq)
            assert hub.events is not None
            service = hub.events.service
            await until(lambda: service.evaluated >= 3, 20, "three more denials evaluated")
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
