"""The MQTT adapter against a real Mosquitto 2.0: manual ack, flow control, auth, TLS.

paho (tests/publishers.py) publishes, so our client is checked against an independent
implementation and the broker, not against itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.client import (
    MQTT_V5,
    MQTT_V311,
    ConnectionLost,
    ConnectOptions,
    ConnectRefused,
    MqttClient,
    MqttProtocol,
    encode_publish,
)
from devstack.stack import ManagedProcess, free_port
from tests.support.publishers import Publisher
from tests.support.services import running_mosquitto

pytestmark = pytest.mark.integration

Received = list[tuple[str, bytes, int]]


def _collector(received: Received) -> object:
    def on_publish(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int) -> None:
        received.append((topic, payload, packet_id))

    return on_publish


@contextlib.asynccontextmanager
async def _session(
    port: int, client_id: str, received: Received, **opts: object
) -> AsyncIterator[MqttClient]:
    tls = opts.pop("tls", None)
    client = MqttClient(
        "127.0.0.1",
        port,
        ConnectOptions(client_id=client_id, **opts),  # type: ignore[arg-type]
        subscriptions=[("gw/v1/#", 1)],
        on_publish=_collector(received),  # type: ignore[arg-type]
        tls=tls,  # type: ignore[arg-type]
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.connected.wait(), 10)
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _publish(port: int, n: int, prefix: str = "gw/v1/s/smoke/d1/telemetry") -> None:
    pub = Publisher(port, f"pub-{free_port()}")
    for i in range(n):
        pub.publish(prefix, f'{{"seq": {i}}}'.encode())
    pub.wait()
    pub.close()


async def _until(predicate: object, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_unacked_messages_are_redelivered_acked_ones_are_not(
    mosquitto: ManagedProcess,
) -> None:
    received: Received = []
    async with _session(mosquitto.port, "manual-ack", received) as client:
        await asyncio.to_thread(_publish, mosquitto.port, 10)
        await _until(lambda: len(received) == 10)
        client.ack(client.generation, [pid for _, _, pid in received[:4]])
        await asyncio.sleep(0.2)  # let the PUBACKs reach the broker
    # The session ended without acking 6 messages: the broker keeps them for us.
    again: Received = []
    async with _session(mosquitto.port, "manual-ack", again):
        await _until(lambda: len(again) == 6)
        await asyncio.sleep(0.3)
    assert sorted(p for _, p, _ in again) == sorted(p for _, p, _ in received[4:])


async def test_receive_maximum_bounds_a_fresh_burst(mosquitto: ManagedProcess) -> None:
    """Mosquitto 2.0.11 honours Receive Maximum until the first acks; after that it may
    release its whole queue (measured: 10 acks released 90 more). The hub therefore also
    pauses reading above a high-water mark (tests/test_faults.py::test_overload...)."""
    received: Received = []
    async with _session(mosquitto.port, "window", received, receive_maximum=10) as client:
        await asyncio.to_thread(_publish, mosquitto.port, 35)
        await _until(lambda: len(received) == 10)
        await asyncio.sleep(0.3)
        assert len(received) == 10  # nothing more until we ack
        client.ack(client.generation, [pid for _, _, pid in received])
        await _until(lambda: len(received) > 10)


async def test_acks_of_a_dropped_connection_are_not_sent_on_the_next(
    mosquitto: ManagedProcess,
) -> None:
    received: Received = []
    async with _session(mosquitto.port, "generations", received) as client:
        await asyncio.to_thread(_publish, mosquitto.port, 3)
        await _until(lambda: len(received) == 3)
        old = client.generation
        assert client.drop()  # a dropped link, as the network would do it
        await _until(lambda: client.generation > old and client.connected.is_set())
        assert client.ack(old, [pid for _, _, pid in received]) == 0
        await _until(lambda: len(received) == 6)  # the broker re-sent all three


async def test_mqtt_311_session_works(mosquitto: ManagedProcess) -> None:
    received: Received = []
    async with _session(mosquitto.port, "v311", received, protocol=MQTT_V311) as client:
        await asyncio.to_thread(_publish, mosquitto.port, 5)
        await _until(lambda: len(received) == 5)
        assert client.ack(client.generation, [pid for _, _, pid in received]) == 5


async def test_credentials_are_checked(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    await asyncio.to_thread(
        subprocess.run,
        ["mosquitto_passwd", "-b", "-c", str(passwords), "hub", "s3cret-pass"],
        check=True,
    )
    passwords.chmod(0o644)
    conf = f"allow_anonymous false\npassword_file {passwords}\n"
    with running_mosquitto(tmp_path / "mq", extra_conf=conf) as broker:
        # mosquitto.conf from the stack says allow_anonymous true first; the last wins
        bad = MqttClient(
            "127.0.0.1",
            broker.port,
            ConnectOptions(client_id="bad", username="hub", password="wrong"),
            subscriptions=[],
            on_publish=lambda *_: None,
        )
        with pytest.raises(ConnectRefused):
            await bad._connect_once()
        received: Received = []
        async with _session(
            broker.port, "good", received, username="hub", password="s3cret-pass"
        ) as client:
            assert client.connected.is_set()


def _make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=gw-test-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )
    for path in (ca_crt, key, crt):
        path.chmod(0o644)
    return ca_crt, crt, key


async def test_tls_connection_verifies_the_broker(tmp_path: Path) -> None:
    ca, crt, key = _make_ca_and_server_cert(tmp_path)
    tls_port = free_port()
    conf = (
        f"listener {tls_port} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {ca}\ncertfile {crt}\nkeyfile {key}\n"
    )
    with running_mosquitto(tmp_path / "mq", extra_conf=conf):
        received: Received = []
        ctx = ssl.create_default_context(cafile=str(ca))
        async with _session(tls_port, "tls-hub", received, tls=ctx) as client:
            assert client.connected.is_set()
        # A client that does not trust our CA must refuse the broker.
        untrusting = MqttClient(
            "127.0.0.1",
            tls_port,
            ConnectOptions(client_id="untrusting"),
            subscriptions=[],
            on_publish=lambda *_: None,
            tls=ssl.create_default_context(),
        )
        with pytest.raises(ssl.SSLError):
            await untrusting._connect_once()


async def test_garbage_from_the_peer_closes_the_connection_not_the_loop() -> None:
    """A broken or hostile peer: protocol violations end that connection only."""

    async def fake_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK (v5, success, no properties)
        subscribe = await reader.read(1024)
        packet_id = subscribe[2:4]  # SUBSCRIBE: header, length (1 byte here), packet id
        writer.write(b"\x90\x04" + packet_id + b"\x00\x01")  # SUBACK granting QoS 1
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"\xff\xff\xff\xff\xff")  # not MQTT: a malformed length
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(fake_broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = MqttClient(
            "127.0.0.1",
            port,
            ConnectOptions(client_id="victim"),
            subscriptions=[("gw/v1/#", 1)],
            on_publish=lambda *_: None,
        )
        await client._connect_once()
        proto = client._protocol
        assert isinstance(proto, MqttProtocol)
        await asyncio.wait_for(asyncio.shield(proto.closed), 5)


class _Transport(asyncio.Transport):
    """Swallows what the protocol writes; framing tests feed bytes in by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


def _wire_publishes(protocol: int) -> tuple[bytes, list[tuple[str, bytes, int, bool, int]]]:
    """PUBLISH packets of every shape the parser meets, and what each must yield."""
    expected = [
        ("gw/v1/s/smoke/d1/telemetry", b'{"seq":1}', 1, False, 7),
        ("gw/v1/s/smoke/d1/status", b"online", 0, True, 0),
        ("gw/v1/s/parking/p-\u00e9/event", b"x" * 300, 1, False, 65535),  # 2-byte length
        ("t", b"", 1, False, 1),
        ("gw/v1/s/access/a1/event", bytes(range(256)) * 70, 1, False, 2),  # 3-byte length
    ]
    wire = b"".join(
        encode_publish(topic, payload, qos, retain, pid, protocol)
        for topic, payload, qos, retain, pid in expected
    )
    if protocol == MQTT_V5:  # one with properties (a 2-byte property length) too
        topic = "gw/v1/s/smoke/d2/telemetry"
        props = b"\x26" + _utf8_pair("k", "v" * 200)  # a user property
        body = (
            len(topic).to_bytes(2, "big") + topic.encode() + b"\x00\x09"
            + bytes([len(props) & 0x7F | 0x80, len(props) >> 7]) + props + b"{}"
        )  # fmt: skip
        wire += bytes([0x32, len(body) & 0x7F | 0x80, len(body) >> 7]) + body
        expected.append((topic, b"{}", 1, False, 9))
    return wire, expected


def _utf8_pair(key: str, value: str) -> bytes:
    return b"".join(len(s).to_bytes(2, "big") + s.encode() for s in (key, value))


@pytest.mark.parametrize("protocol", [MQTT_V5, MQTT_V311])
async def test_publishes_split_anywhere_across_reads_parse_the_same(protocol: int) -> None:
    """TCP cuts the stream anywhere: packets split across reads at every offset, in
    random chunks and all at once must give the same messages, in order."""
    wire, expected = _wire_publishes(protocol)
    rng = random.Random(5)
    cuts = [[wire], [wire[i : i + 1] for i in range(len(wire))]]
    for _ in range(20):
        chunks, pos = [], 0
        while pos < len(wire):
            step = rng.randint(1, 3000)
            chunks.append(wire[pos : pos + step])
            pos += step
        cuts.append(chunks)
    for chunks in cuts:
        got: list[tuple[str, bytes, int, bool, int]] = []
        proto = MqttProtocol(
            ConnectOptions(client_id="framing", protocol=protocol),
            lambda *message, into=got: into.append(message),
        )
        transport = _Transport()
        proto.connection_made(transport)
        for chunk in chunks:
            proto.data_received(chunk)
        assert got == expected
        assert not transport.aborted


async def test_a_publish_header_overrunning_its_packet_closes_the_connection() -> None:
    got: list[object] = []
    proto = MqttProtocol(ConnectOptions(client_id="framing"), lambda *m: got.append(m))
    transport = _Transport()
    proto.connection_made(transport)
    # Remaining length 4, but the topic length claims 200 bytes.
    proto.data_received(b"\x32\x04\x00\xc8ab")
    assert transport.aborted
    assert got == []


async def test_publishing_on_a_lost_connection_raises_instead_of_failing_silently(
    mosquitto: ManagedProcess,
) -> None:
    """A sender that retries on the failed future of a lost connection never yields,
    so the client would never reconnect: the lost connection raises at once instead."""
    async with _session(mosquitto.port, "lost-publisher", []) as client:
        proto = client._protocol
        assert proto is not None
        proto.abort()
        await _until(proto.closed.done)
        with pytest.raises(ConnectionLost):
            client.publish_nowait("gw/v1/s/smoke/d1/telemetry", b"{}", qos=1)
        await asyncio.wait_for(client.connected.wait(), 10)  # and it does reconnect
