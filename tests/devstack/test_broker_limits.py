"""The stack's Mosquitto refuses publishes larger than the hub takes (`max_packet_size`)
instead of PUBACKing them to the device and dropping them before the hub."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from devstack.stack import (
    HUB_MAX_PAYLOAD_BYTES,
    ManagedProcess,
    broker_max_packet,
    mosquitto_conf,
)
from tests.support.services import running_mosquitto

integration = pytest.mark.integration
TOPIC = "gw/v1/s1/smoke/sm-1/telemetry"


class Device:
    """A paho client that records PUBACKs (with their reason codes) and disconnects."""

    def __init__(self, port: int, protocol: MQTTProtocolVersion, name: str) -> None:
        self.acked: dict[int, int] = {}
        self.disconnected = threading.Event()
        self.disconnect_reason: ReasonCode | None = None
        self.connected = threading.Event()
        self.changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def _on_connect(self, *_args: object) -> None:
        self.connected.set()

    def _on_publish(self, _c: object, _u: object, mid: int, reason: ReasonCode, _p: object) -> None:
        with self.changed:
            self.acked[mid] = reason.value
            self.changed.notify_all()

    def _on_disconnect(
        self, _c: object, _u: object, _flags: object, reason: ReasonCode, _p: object
    ) -> None:
        self.disconnect_reason = reason
        self.disconnected.set()
        with self.changed:
            self.changed.notify_all()

    def publish(self, size: int) -> mqtt.MQTTMessageInfo:
        return self.client.publish(TOPIC, b"x" * size, qos=1)

    def wait_ack(self, mid: int, timeout: float = 5.0) -> int | None:
        """The PUBACK's reason code, or None when none came (refused or disconnected)."""
        with self.changed:
            self.changed.wait_for(lambda: mid in self.acked or self.disconnected.is_set(), timeout)
            return self.acked.get(mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ManagedProcess]:
    with running_mosquitto(tmp_path / "mosquitto") as proc:
        yield proc


def test_broker_limit_lies_within_what_the_hub_accepts() -> None:
    limit = broker_max_packet()
    hub_client_max = 4 * HUB_MAX_PAYLOAD_BYTES + 1024  # hub.runtime's maximum packet size
    assert HUB_MAX_PAYLOAD_BYTES + 1024 < limit < hub_client_max
    assert f"max_packet_size {limit}\n" in mosquitto_conf(Path("/tmp/x"), 1883)
    assert "max_packet_size 4096\n" in mosquitto_conf(Path("/tmp/x"), 1883, max_packet_size=4096)


@integration
@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
def test_oversized_publish_is_refused_not_acked(
    broker: ManagedProcess, protocol: MQTTProtocolVersion
) -> None:
    device = Device(broker.port, protocol, f"sm-1-{protocol.name}")
    try:
        small = device.publish(10 * 1024)
        code = device.wait_ack(small.mid)
        # MQTT 5: 0x10 "no matching subscribers" is a success too (below 0x80)
        assert code is not None and code < 0x80, f"a 10 KiB publish got {code}"
        big = device.publish(70 * 1024)
        code = device.wait_ack(big.mid)
        assert code is None, f"a 70 KiB publish was acked with reason {code}"
        if protocol is MQTTProtocolVersion.MQTTv5 and big.rc != mqtt.MQTT_ERR_SUCCESS:
            # paho knows the broker's Maximum Packet Size from CONNACK and refuses to send
            assert big.rc == mqtt.MQTT_ERR_PAYLOAD_SIZE
        else:
            assert device.disconnected.wait(5), "the broker did not disconnect the publisher"
            if protocol is MQTTProtocolVersion.MQTTv5:
                assert device.disconnect_reason is not None
                assert device.disconnect_reason.getName() == "Packet too large"
    finally:
        device.close()
