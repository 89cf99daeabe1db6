"""Issue 18, MQTT client: a PUBLISH callback that raises does not drop the connection.

Before, the exception escaped `data_received`, asyncio closed the transport, the broker
redelivered the same message on the next connection, and the hub looped forever. Now
the client logs and counts it, acks the message (it would raise again), and goes on
with the rest of the chunk.
"""

from __future__ import annotations

import asyncio

import pytest

from broker.client import (
    MQTT_V5,
    MQTT_V311,
    ClientCounters,
    ConnectOptions,
    MqttProtocol,
    encode_pubacks,
    encode_publish,
)


class _Transport(asyncio.Transport):
    """Records what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


@pytest.mark.parametrize("protocol", [MQTT_V5, MQTT_V311])
async def test_a_raising_callback_is_counted_acked_and_the_link_stays_up(protocol: int) -> None:
    got: list[tuple[str, bytes, int]] = []

    def on_publish(topic: str, payload: bytes, qos: int, retain: bool, pid: int) -> None:
        if payload.startswith(b"poison"):
            raise OverflowError("integer division result too large for a float")
        got.append((topic, payload, pid))

    counters = ClientCounters()
    proto = MqttProtocol(ConnectOptions(client_id="c", protocol=protocol), on_publish, counters)
    transport = _Transport()
    proto.connection_made(transport)
    transport.written.clear()  # CONNECT
    wire = b"".join(
        encode_publish("gw/v1/s/smoke/d/telemetry", payload, qos, False, pid, protocol)
        for payload, qos, pid in [
            (b"ok-1", 1, 1),
            (b"poison-qos1", 1, 2),
            (b"poison-qos0", 0, 0),
            (b"ok-2", 1, 3),
        ]
    )
    proto.data_received(wire)  # one chunk: the messages after the poison still arrive
    assert not transport.aborted
    assert [pid for _, _, pid in got] == [1, 3]
    assert counters.dispatch_errors == 2
    # Only the QoS 1 poison is acked by the client; the others are the callback's.
    assert bytes(transport.written) == encode_pubacks([2])
    proto.data_received(encode_publish("t", b"ok-3", 1, False, 4, protocol))
    assert [pid for _, _, pid in got] == [1, 3, 4]


async def test_counters_default_per_protocol() -> None:
    proto = MqttProtocol(ConnectOptions(client_id="c"), lambda *m: None)
    assert proto.counters.dispatch_errors == 0
