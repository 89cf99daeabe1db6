"""A Mosquitto with the dynamic-security plugin, and a paho client that reports reason codes.

paho is an independent MQTT implementation: what it is allowed or refused is what the
broker decided, not what our own client believes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from broker.dynsec import AdminLogin, broker_conf, init_config
from devstack.stack import ManagedProcess
from tests.support.services import running_mosquitto

ADMIN = "gw-admin"
ADMIN_PASSWORD = "admin-test-password-0123456789"
TIMEOUT_S = 5.0


@contextmanager
def dynsec_mosquitto(workdir: Path) -> Iterator[tuple[ManagedProcess, AdminLogin]]:
    """A private broker that requires a login and takes its accounts from the plugin."""
    config = workdir / "dynamic-security.json"
    init_config(config, ADMIN, ADMIN_PASSWORD)
    with running_mosquitto(workdir / "mosquitto", extra_conf=broker_conf(config)) as proc:
        yield proc, AdminLogin("127.0.0.1", proc.port, ADMIN, ADMIN_PASSWORD)


class Device:
    """One MQTT 5 connection, driven synchronously; every call returns the broker's code."""

    def __init__(self, port: int, client_id: str) -> None:
        self.port = port
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.received: list[tuple[str, bytes]] = []
        self._connack: tuple[threading.Event, list[int]] = (threading.Event(), [])
        self._pubacks: dict[int, tuple[threading.Event, list[int]]] = {}
        self._subacks: dict[int, tuple[threading.Event, list[int]]] = {}
        self.disconnected = threading.Event()
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    # paho callbacks (its network thread)
    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._connack[1].append(rc.value)
        self._connack[0].set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._lock:
            waiter = self._pubacks.setdefault(mid, (threading.Event(), []))
        waiter[1].append(rc.value)
        waiter[0].set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        with self._lock:
            waiter = self._subacks.setdefault(mid, (threading.Event(), []))
        waiter[1].extend(rc.value for rc in rcs)
        waiter[0].set()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        self.received.append((msg.topic, bytes(msg.payload)))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        self.disconnected.set()

    # test API
    def connect(self, username: str | None, password: str | None) -> int:
        """The CONNACK reason code (0 = accepted, 134 bad login, 135 not authorised)."""
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(60, 60)  # a refused client must not retry here
        self.client.connect("127.0.0.1", self.port, clean_start=True)
        self.client.loop_start()
        assert self._connack[0].wait(TIMEOUT_S), "no CONNACK"
        return self._connack[1][0]

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        """The PUBACK reason code of a QoS 1 publish (135 = not authorised)."""
        info = self.client.publish(topic, payload, qos=1)
        with self._lock:
            waiter = self._pubacks.setdefault(info.mid, (threading.Event(), []))
        assert waiter[0].wait(TIMEOUT_S), f"no PUBACK for {topic}"
        return waiter[1][0]

    def subscribe(self, topic: str) -> int:
        """The SUBACK reason code (1 = granted QoS 1, 135 = not authorised)."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self._lock:
            waiter = self._subacks.setdefault(mid, (threading.Event(), []))
        assert waiter[0].wait(TIMEOUT_S), f"no SUBACK for {topic}"
        return waiter[1][0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
