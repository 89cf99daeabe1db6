"""The one MQTT adapter: a lean asyncio MQTT 5 / 3.1.1 client with manual acknowledgement.

Why not paho/aiomqtt/gmqtt (measured in README "Design notes"): the hub must ack a
QoS 1 message only once it is durable in the spool, and must keep up with a broker
that drains ~120k msg/s. paho's manual ack and gmqtt both work but spend ~20 µs per
message in the client alone (~50k msg/s with nothing else done); aiomqtt 2.x acks on
receipt; aiomqtt 3 is an alpha that needs a Rust toolchain online. This client parses
PUBLISH packets in place (~3.5 µs each), batches PUBACKs, and leaves flow control to the
broker: with MQTT 5 "Receive Maximum" the broker sends at most that many unacked
messages, so not acking is back-pressure and memory stays bounded.

Scope is what the hub needs: CONNECT (will, credentials, TLS, session expiry),
SUBSCRIBE, inbound PUBLISH QoS 0/1, outbound PUBLISH QoS 0/1, PUBACK, PING, DISCONNECT.
QoS 2 inbound is downgraded by the broker to the subscription QoS (we subscribe at 1).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

log = logging.getLogger(__name__)

# Packet types (high nibble of the first byte).
CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
SUBSCRIBE: Final = 8
SUBACK: Final = 9
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14

MQTT_V311: Final = 4
MQTT_V5: Final = 5

# MQTT 5 property identifiers we write or read.
_PROP_SESSION_EXPIRY: Final = 0x11
_PROP_RECEIVE_MAXIMUM: Final = 0x21
_PROP_MAXIMUM_PACKET_SIZE: Final = 0x27
_PROP_REASON_STRING: Final = 0x1F
_PROP_SERVER_KEEP_ALIVE: Final = 0x13

# Property id -> wire shape, to skip properties we do not read (MQTT 5 §2.2.2.2).
_BYTE, _TWO, _FOUR, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROPERTY_SHAPES: Final = {
    0x01: _BYTE,
    0x02: _FOUR,
    0x03: _UTF8,
    0x08: _UTF8,
    0x09: _BINARY,
    0x0B: _VARINT,
    0x11: _FOUR,
    0x12: _UTF8,
    0x13: _TWO,
    0x15: _UTF8,
    0x16: _BINARY,
    0x17: _BYTE,
    0x18: _FOUR,
    0x19: _BYTE,
    0x1A: _UTF8,
    0x1C: _UTF8,
    0x1F: _UTF8,
    0x21: _TWO,
    0x22: _TWO,
    0x23: _TWO,
    0x24: _BYTE,
    0x25: _BYTE,
    0x26: _PAIR,
    0x27: _FOUR,
    0x28: _BYTE,
    0x29: _BYTE,
    0x2A: _BYTE,
}

_CONNACK_V311_REASONS: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

# Packets we accept from the broker; bigger ones are dropped by the broker (MQTT 5).
MAX_INBOUND_PACKET: Final = 1 << 20

PROBE_INTERVAL_S: Final = 0.5
"""While the broker is unreachable, a TCP connect to host:port every half to whole of
this (jittered): a refused connect costs the broker nothing, and the real connect follows
as soon as the port accepts, instead of after a backoff grown through the outage."""

PROBE_TIMEOUT_S: Final = 2.0
"""A probe the network neither accepts nor refuses (a host gone silent) gives up after
this long; it also bounds the probe rate there."""

STABLE_AFTER_S: Final = 10.0
"""A connection that stayed up this long resets the backoff, and its loss is answered with
an immediate probe. One that keeps dropping sooner (another client taking over our
client id, a broker that disconnects us) backs off as a refusal does."""

OnPublish = Callable[[str, bytes, int, bool, int], None]
OnOversize = Callable[[str, int, int, int], None]
"""(topic, size in bytes, qos, packet id) of a PUBLISH discarded as too large; the
callback owns its PUBACK (the hub acks it once the rejection is logged)."""
"""(topic, payload, qos, retain, packet_id or 0) — called synchronously on receipt.

It owns the message: it acks a QoS 1 message (`MqttClient.ack`) when it is done with it.
It should not raise; if it does, the client logs it, counts it (`dispatch_errors`) and
acks the message itself, as a message that raised would raise again on redelivery: the
connection stays up (a callback that raises must not have arranged the ack already)."""


class MqttError(Exception):
    """Base class for MQTT failures the caller may handle."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a failure code: retrying will not help soon."""


class ProtocolViolation(MqttError):
    """The peer sent bytes that are not MQTT: drop the connection."""


class ConnectionLost(MqttError):
    """The connection closed while something waited on it."""


class BrokerUnreachable(MqttError):
    """No TCP connection to the broker (refused, reset, unreachable, timed out): it is down
    or restarting, so the client waits by probing rather than backing off."""


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """Everything CONNECT carries; fixed for the life of a client."""

    client_id: str
    protocol: int = MQTT_V5
    clean_start: bool = False
    session_expiry_s: int = 7 * 86400
    keepalive_s: int = 30
    receive_maximum: int = 4096
    username: str | None = None
    password: str | None = None
    will: Will | None = None
    maximum_packet_size: int = MAX_INBOUND_PACKET
    """MQTT 5: the broker drops bigger messages for us. With Receive Maximum it bounds
    the memory unacked messages can hold (receive_maximum x maximum_packet_size)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _binary(raw: bytes) -> bytes:
    return struct.pack("!H", len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _varint(len(body)) + body


def _read_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """Decode a variable byte integer at pos; return (value, next position)."""
    value = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 21:
            raise ProtocolViolation("malformed variable byte integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _read_properties(buf: bytes, pos: int) -> tuple[dict[int, int | str], int]:
    """Parse an MQTT 5 property block; keep integers and strings we may need."""
    length, pos = _read_varint(buf, pos)
    end = pos + length
    props: dict[int, int | str] = {}
    while pos < end:
        ident = buf[pos]
        pos += 1
        shape = _PROPERTY_SHAPES.get(ident)
        if shape is None:
            raise ProtocolViolation(f"unknown property 0x{ident:02x}")
        if shape == _BYTE:
            props[ident] = buf[pos]
            pos += 1
        elif shape == _TWO:
            props[ident] = struct.unpack_from("!H", buf, pos)[0]
            pos += 2
        elif shape == _FOUR:
            props[ident] = struct.unpack_from("!I", buf, pos)[0]
            pos += 4
        elif shape == _VARINT:
            props[ident], pos = _read_varint(buf, pos)
        elif shape == _PAIR:
            for _ in range(2):
                (size,) = struct.unpack_from("!H", buf, pos)
                pos += 2 + size
        else:
            (size,) = struct.unpack_from("!H", buf, pos)
            if shape == _UTF8:
                props[ident] = buf[pos + 2 : pos + 2 + size].decode("utf-8", "replace")
            pos += 2 + size
    if pos != end:
        raise ProtocolViolation("property block overruns its length")
    return props, end


def encode_connect(opts: ConnectOptions) -> bytes:
    """Build a CONNECT packet (MQTT 3.1.1 or 5)."""
    flags = 0x02 if opts.clean_start else 0x00
    payload = _utf8(opts.client_id)
    if opts.will is not None:
        flags |= 0x04 | (opts.will.qos << 3) | (0x20 if opts.will.retain else 0)
        if opts.protocol == MQTT_V5:
            payload += _varint(0)  # will properties
        payload += _utf8(opts.will.topic) + _binary(opts.will.payload)
    if opts.username is not None:
        flags |= 0x80
        payload += _utf8(opts.username)
    if opts.password is not None:
        flags |= 0x40
        payload += _binary(opts.password.encode("utf-8"))
    header = _utf8("MQTT") + bytes([opts.protocol, flags]) + struct.pack("!H", opts.keepalive_s)
    if opts.protocol == MQTT_V5:
        props = (
            bytes([_PROP_SESSION_EXPIRY])
            + struct.pack("!I", opts.session_expiry_s)
            + bytes([_PROP_RECEIVE_MAXIMUM])
            + struct.pack("!H", opts.receive_maximum)
            + bytes([_PROP_MAXIMUM_PACKET_SIZE])
            + struct.pack("!I", opts.maximum_packet_size)
        )
        header += _varint(len(props)) + props
    return _packet(CONNECT << 4, header + payload)


def encode_subscribe(packet_id: int, filters: Sequence[tuple[str, int]], protocol: int) -> bytes:
    body = struct.pack("!H", packet_id)
    if protocol == MQTT_V5:
        body += _varint(0)
    for topic_filter, qos in filters:
        body += _utf8(topic_filter) + bytes([qos])
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def encode_publish(
    topic: str, payload: bytes, qos: int, retain: bool, packet_id: int, protocol: int
) -> bytes:
    body = _utf8(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if protocol == MQTT_V5:
        body += _varint(0)
    return _packet((PUBLISH << 4) | (qos << 1) | int(retain), body + payload)


def encode_pubacks(packet_ids: Sequence[int]) -> bytes:
    """Many PUBACKs in one buffer (success; valid for 3.1.1 and 5).

    Built with slice assignments, not a packet at a time: a batch holds thousands."""
    count = len(packet_ids)
    ids = struct.pack(f"!{count}H", *packet_ids)
    out = bytearray(b"\x40\x02\x00\x00" * count)
    out[2::4] = ids[0::2]
    out[3::4] = ids[1::2]
    return bytes(out)


class MqttProtocol(asyncio.Protocol):
    """One network connection: framing, CONNACK/SUBACK/PUBACK bookkeeping, inbound PUBLISH."""

    def __init__(
        self,
        opts: ConnectOptions,
        on_publish: OnPublish,
        counters: ClientCounters | None = None,
        on_oversize: OnOversize | None = None,
    ) -> None:
        self._opts = opts
        self._v5 = opts.protocol == MQTT_V5
        self._on_publish = on_publish
        self._on_oversize = on_oversize
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[bool] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._puback_waiters: dict[int, asyncio.Future[None]] = {}
        self.server_receive_maximum = 65535
        self._loop = loop
        self.last_inbound = loop.time()
        self.paused = False
        self.dup = False
        """The DUP flag of the PUBLISH being dispatched (read from within `on_publish`)."""
        self.counters = counters if counters is not None else ClientCounters()
        self.close_reason: str | None = None
        """Why the broker ended the connection, when it said so (DISCONNECT)."""
        self._skip_left = 0
        """Bytes of an oversize PUBLISH still to discard (`_skip_oversize`)."""
        self._skipping: tuple[str, int, int, int] = ("", 0, 0, 0)
        """(topic, qos, packet id, size) of the oversize PUBLISH being discarded."""

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(encode_connect(self._opts))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        error = ConnectionLost(str(exc) if exc else "connection closed")
        waiters: list[asyncio.Future[Any]] = [
            self.connack,
            *self._subacks.values(),
            *self._puback_waiters.values(),
        ]
        for fut in waiters:
            if not fut.done():
                fut.set_exception(error)
                fut.exception()  # mark retrieved: the owner learns through `closed`
        self._subacks.clear()
        self._puback_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        """Frame and dispatch every complete packet in `data` (plus what was left over).

        The hot loop of the hub: PUBLISH is parsed inline, straight from the immutable
        chunk, so each payload is one slice (one copy) and no method call per message.
        """
        self.last_inbound = self._loop.time()
        if self._skip_left:  # the rest of an oversize PUBLISH: discard, never buffer it
            if len(data) < self._skip_left:
                self._skip_left -= len(data)
                return
            data = data[self._skip_left :]
            self._skip_left = 0
            self._oversize_skipped()
        if self._buf:  # a packet was cut at the end of the previous chunk
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        on_publish = self._on_publish
        v5 = self._v5
        max_packet = self._opts.maximum_packet_size
        pos = 0
        size = len(data)
        try:
            while size - pos >= 2:
                header = data[pos]
                # Remaining length, inline for speed (at most 4 bytes).
                i = pos + 1
                length = 0
                shift = 0
                while True:
                    if i >= size:
                        length = -1
                        break
                    byte = data[i]
                    i += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise ProtocolViolation("remaining length too long")
                end = i + length
                if length < 0:
                    break
                if length > max_packet and header >> 4 == PUBLISH:
                    resume = self._skip_oversize(data, i, end, header)
                    if resume is None:  # its topic and packet id are not all in yet
                        break
                    pos = resume
                    continue
                if end > size:
                    break
                if header >> 4 == PUBLISH:
                    qos = (header >> 1) & 0x03
                    j = i + 2 + ((data[i] << 8) | data[i + 1])
                    topic = data[i + 2 : j].decode("utf-8")
                    packet_id = 0
                    if qos:
                        packet_id = (data[j] << 8) | data[j + 1]
                        j += 2
                    if v5:
                        prop_len = data[j]
                        if prop_len < 0x80:  # the usual one-byte length (no properties: 0)
                            j += 1 + prop_len
                        else:
                            prop_len, j = _read_varint(data, j)
                            j += prop_len
                    if j > end:
                        raise ProtocolViolation("PUBLISH header overruns packet")
                    self.dup = bool(header & 0x08)
                    try:  # the message boundary: costs nothing until the callback raises
                        on_publish(topic, data[j:end], qos, bool(header & 0x01), packet_id)
                    except Exception as exc:  # noqa: BLE001 (one message must not drop us)
                        self._dispatch_failed(topic, end - j, qos, packet_id, exc)
                else:
                    self._handle_control(header, data[i:end])
                pos = end
        except (ProtocolViolation, struct.error, IndexError, UnicodeDecodeError) as exc:
            log.error("closing MQTT connection: protocol violation: %s", exc)
            self.abort()
            return
        if pos < size:
            self._buf += memoryview(data)[pos:]
            if len(self._buf) > self._opts.maximum_packet_size + 8:
                log.error(
                    "closing MQTT connection: packet larger than %d bytes",
                    self._opts.maximum_packet_size,
                )
                self.abort()

    # -- inbound ----------------------------------------------------------------------
    def _skip_oversize(self, data: bytes, start: int, end: int, header: int) -> int | None:
        """Discard a PUBLISH above our maximum packet size as it streams in, then ack it;
        return where framing resumes (None: wait for its topic and packet id).

        MQTT 3.1.1 has no Maximum Packet Size property, so the broker cannot know our
        limit, and a broker that does not bound publishes itself (NATS 2.9 forwards any
        size, whatever its `max_payload`) sends it anyway. Dropping the connection instead
        would be a loop: the broker redelivers the unacked message on every reconnect."""
        size = len(data)
        if start + 2 > size:
            return None
        topic_end = start + 2 + ((data[start] << 8) | data[start + 1])
        if topic_end + 2 > size:
            return None
        qos = (header >> 1) & 0x03
        packet_id = (data[topic_end] << 8) | data[topic_end + 1] if qos else 0
        topic = data[start + 2 : topic_end].decode("utf-8", "replace")
        self._skipping = (topic, qos, packet_id, end - start)
        if end <= size:
            self._oversize_skipped()
            return end
        self._skip_left = end - size
        return size

    def _oversize_skipped(self) -> None:
        """An oversize PUBLISH is discarded: count, log (the first few), and hand it to
        `on_oversize` (which acks it), or ack it here (QoS 1)."""
        topic, qos, packet_id, size = self._skipping
        self.counters.oversize_dropped += 1
        seen = self.counters.oversize_dropped
        if seen <= 3 or seen % 1000 == 0:
            log.warning(
                "dropped a %d-byte PUBLISH on %r above our maximum packet size of %d bytes "
                "(%d so far): acked, so the broker does not send it again",
                size,
                topic[:200],
                self._opts.maximum_packet_size,
                seen,
            )
        if self._on_oversize is not None:
            try:
                self._on_oversize(topic, size, qos, packet_id)
                return  # it acks once it has recorded the message
            except Exception as exc:  # noqa: BLE001 (the message boundary)
                log.error("oversize PUBLISH callback raised %r; acking it here", exc)
        if qos:
            self.write(encode_pubacks([packet_id]))

    def _dispatch_failed(
        self, topic: str, size: int, qos: int, packet_id: int, exc: Exception
    ) -> None:
        """The PUBLISH callback raised: log, count and ack (QoS 1) the message, so that
        the broker does not send it again (it would raise again) and the link stays up."""
        self.counters.dispatch_errors += 1
        seen = self.counters.dispatch_errors
        if seen <= 3 or seen % 1000 == 0:
            log.error(
                "PUBLISH callback raised %s on %r (%d bytes, %d so far): message acked, dropped",
                type(exc).__name__,
                topic[:200],
                size,
                seen,
                exc_info=exc if seen <= 3 else None,
            )
        if qos:
            self.write(encode_pubacks([packet_id]))

    def _handle_control(self, header: int, body: bytes) -> None:
        kind = header >> 4
        if kind == CONNACK:
            self._handle_connack(body)
        elif kind == SUBACK:
            (packet_id,) = struct.unpack_from("!H", body, 0)
            pos = 2
            if self._opts.protocol == MQTT_V5:
                _, pos = _read_properties(body, pos)
            waiter = self._subacks.pop(packet_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(list(body[pos:]))
        elif kind == PUBACK:
            (packet_id,) = struct.unpack_from("!H", body, 0)
            waiter_ack = self._puback_waiters.pop(packet_id, None)
            if waiter_ack is not None and not waiter_ack.done():
                code = body[2] if len(body) > 2 else 0
                if code >= 0x80:
                    waiter_ack.set_exception(MqttError(f"publish refused, reason 0x{code:02x}"))
                else:
                    waiter_ack.set_result(None)
        elif kind == PINGRESP:
            pass
        elif kind == DISCONNECT:
            reason = body[0] if body else 0
            # Reported once, by the client, as the reason the connection was lost.
            self.close_reason = f"broker disconnected us, reason 0x{reason:02x}"
            self.abort()
        else:
            raise ProtocolViolation(f"unexpected packet type {kind}")

    def _handle_connack(self, body: bytes) -> None:
        session_present = bool(body[0] & 0x01)
        code = body[1]
        if self._opts.protocol == MQTT_V5 and len(body) > 2:
            props, _ = _read_properties(body, 2)
            receive_max = props.get(_PROP_RECEIVE_MAXIMUM)
            if isinstance(receive_max, int):
                self.server_receive_maximum = receive_max
            if code >= 0x80:
                reason = props.get(_PROP_REASON_STRING, "")
                self.connack.set_exception(
                    ConnectRefused(f"broker refused CONNECT: reason 0x{code:02x} {reason}".strip())
                )
                return
        if code != 0:
            text = _CONNACK_V311_REASONS.get(code, f"code {code}")
            if code == 1 and self._opts.protocol == MQTT_V5:
                # How a 3.1.1-only broker (NATS 2.9) answers a v5 CONNECT: say what to do.
                text += " (the broker does not speak MQTT 5: connect with MQTT 3.1.1)"
            self.connack.set_exception(ConnectRefused(f"broker refused CONNECT: {text}"))
            return
        self.connack.set_result(session_present)

    # -- outbound ---------------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        """Send raw bytes; False when the connection is gone (caller drops stale work)."""
        if self._transport is None or self._transport.is_closing():
            return False
        self._transport.write(data)
        return True

    def subscribe(
        self, packet_id: int, filters: Sequence[tuple[str, int]]
    ) -> asyncio.Future[list[int]]:
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = fut
        if not self.write(encode_subscribe(packet_id, filters, self._opts.protocol)):
            fut.set_exception(ConnectionLost("not connected"))
        return fut

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, packet_id: int
    ) -> asyncio.Future[None] | None:
        fut: asyncio.Future[None] | None = None
        if qos:
            fut = asyncio.get_running_loop().create_future()
            self._puback_waiters[packet_id] = fut
        sent = self.write(
            encode_publish(topic, payload, qos, retain, packet_id, self._opts.protocol)
        )
        if not sent and fut is not None and not fut.done():
            self._puback_waiters.pop(packet_id, None)
            fut.set_exception(ConnectionLost("not connected"))
        return fut

    def outstanding_publishes(self) -> int:
        return len(self._puback_waiters)

    def packet_id_in_use(self, packet_id: int) -> bool:
        return packet_id in self._puback_waiters or packet_id in self._subacks

    def disconnect(self) -> None:
        """Graceful DISCONNECT: the broker discards our will and keeps our session."""
        if self.write(b"\xe0\x00") and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def set_reading(self, enabled: bool) -> None:
        """Pause or resume reading the socket (TCP back-pressure for QoS 0 and 3.1.1)."""
        if self._transport is None or self.paused == (not enabled):
            return
        self.paused = not enabled
        if enabled:
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()


@dataclass(slots=True)
class ClientCounters:
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    probes: int = 0
    """TCP connects made to see whether an unreachable broker is back."""
    dispatch_errors: int = 0
    """PUBLISH callbacks that raised (each message acked and dropped, logged)."""
    oversize_dropped: int = 0
    """PUBLISH packets above `maximum_packet_size`, discarded and acked (MQTT 3.1.1)."""


def _raise_if_cancelled(task: asyncio.Task[Any] | None) -> None:
    """Python 3.11's `wait_for` returns (or raises) the inner result when a cancel races
    it, swallowing the cancel: a client cancelled mid-connect would then run forever."""
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass(slots=True)
class _Backoff:
    minimum: float
    maximum: float
    current: float = field(default=0.0)

    def next_delay(self) -> float:
        """Exponential backoff with full jitter, so a fleet of hubs does not reconnect in step."""
        self.current = self.minimum if self.current == 0 else min(self.current * 2, self.maximum)
        return random.uniform(self.minimum, self.current)

    def reset(self) -> None:
        self.current = 0.0


class MqttClient:
    """A persistent MQTT session: connect, (re)subscribe, reconnect, forever (probing a
    broker that is down, backing off from one that refuses: see `run`).

    `generation` increases with every connection: acks for packet ids of an older
    connection are dropped, because the broker re-sends those messages on the new one.
    """

    def __init__(
        self,
        host: str,
        port: int,
        opts: ConnectOptions,
        *,
        subscriptions: Sequence[tuple[str, int]],
        on_publish: OnPublish,
        tls: ssl.SSLContext | None = None,
        on_connected: Callable[[MqttClient, bool], None] | None = None,
        on_oversize: OnOversize | None = None,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        log_connects: bool = True,
        probe_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self.host = host
        # A simulator with thousands of device clients would drown the log otherwise.
        self._connect_log_level = logging.INFO if log_connects else logging.DEBUG
        self._trouble_log_level = logging.WARNING if log_connects else logging.DEBUG
        self._probe_interval = probe_interval_s
        self.port = port
        self.opts = opts
        self.subscriptions = list(subscriptions)
        self._on_publish = on_publish
        self._on_oversize = on_oversize
        self._tls = tls
        self._on_connected = on_connected
        self._backoff = _Backoff(reconnect_min_s, reconnect_max_s)
        self._connect_timeout = connect_timeout_s
        self._protocol: MqttProtocol | None = None
        self._next_packet_id = 0
        self.generation = 0
        self.session_present = False
        """What the broker said in the last CONNACK (known before we resubscribe, so
        before the retained messages the resubscription brings)."""
        self.counters = ClientCounters()
        self.connected = asyncio.Event()
        self._stopping = False

    # -- public API ---------------------------------------------------------------
    def ack(self, generation: int, packet_ids: Sequence[int]) -> int:
        """PUBACK the given packet ids if they belong to the current connection."""
        proto = self._protocol
        if not packet_ids or proto is None or generation != self.generation:
            return 0
        return len(packet_ids) if proto.write(encode_pubacks(packet_ids)) else 0

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK (raises ConnectionLost)."""
        await self.connected.wait()
        proto = self._protocol
        if proto is None:
            raise ConnectionLost("not connected")
        fut = proto.publish(topic, payload, qos, retain, self._packet_id(proto) if qos else 0)
        if fut is not None:
            await fut

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None] | None:
        """Send without waiting; QoS 1 returns a future done on PUBACK (for pipelined senders).
        Raises ConnectionLost on a connection already lost: a sender retrying on the
        failed future it would get instead never yields, and the client never reconnects."""
        proto = self._protocol
        if proto is None or proto.closed.done():
            raise ConnectionLost("not connected")
        return proto.publish(topic, payload, qos, retain, self._packet_id(proto) if qos else 0)

    @property
    def dispatching_dup(self) -> bool:
        """Inside `on_publish`: the message's DUP flag (the broker, or the device, sends it
        again after a connection dropped before its PUBACK)."""
        return self._protocol is not None and self._protocol.dup

    def outstanding(self) -> int:
        return self._protocol.outstanding_publishes() if self._protocol else 0

    def drop(self) -> bool:
        """Abort the connection without DISCONNECT, as a network failure would: the broker
        publishes our will and the client reconnects. For fault injection; False if down."""
        if self._protocol is None:
            return False
        self._protocol.abort()
        return True

    def set_reading(self, enabled: bool) -> None:
        if self._protocol is not None:
            self._protocol.set_reading(enabled)

    async def run(self) -> None:
        """Keep a session up until cancelled; on cancel, DISCONNECT cleanly (session kept).

        How long to wait before the next attempt depends on who failed. The broker
        answered (CONNACK refusal, bad credentials, refused subscription, TLS or handshake
        failure, a connection that keeps dropping): back off exponentially, so a broker
        that is up but refusing is never hammered. No TCP connection at all (refused,
        reset, unreachable): the broker is down, so probe its port and connect as soon as
        it accepts (`_wait_for_port`). A connection lost after STABLE_AFTER_S is probed
        for at once. One warning per outage (and per new reason), one line when back."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        down_since: float | None = None
        last_reason = ""
        probe_passed = False
        try:
            while True:
                up_at: float | None = None
                try:
                    await self._connect_once(
                        None if down_since is None else loop.time() - down_since
                    )
                    _raise_if_cancelled(task)
                    down_since, last_reason, probe_passed = None, "", False
                    up_at = loop.time()
                    assert self._protocol is not None
                    await self._supervise(self._protocol)
                except (OSError, MqttError, TimeoutError) as exc:
                    _raise_if_cancelled(task)
                    self.counters.connect_failures += 1
                    self._drop_connection()
                    stable = up_at is not None and loop.time() - up_at >= STABLE_AFTER_S
                    if stable:
                        self._backoff.reset()
                    # A port that accepted a probe and still failed the connect is not down.
                    unreachable = isinstance(exc, BrokerUnreachable) and not probe_passed
                    probe = stable or unreachable
                    delay = 0.0 if probe else self._backoff.next_delay()
                    if down_since is None:
                        down_since = loop.time()
                    reason = str(exc) or type(exc).__name__
                    plan = "waiting for the broker" if probe else f"retrying in {delay:.1f} s"
                    log.log(
                        self._trouble_log_level if reason != last_reason else logging.DEBUG,
                        "MQTT %s:%d: %s; %s",
                        self.host,
                        self.port,
                        reason,
                        plan,
                    )
                    last_reason = reason
                    probe_passed = False
                    if probe:
                        await self._wait_for_port(immediately=stable)
                        probe_passed = True
                    else:
                        await asyncio.sleep(delay)
        finally:
            proto = self._protocol
            if proto is not None and not proto.closed.done():
                proto.disconnect()  # graceful: the broker discards our will, keeps the session
            self._drop_connection()

    async def _wait_for_port(self, *, immediately: bool) -> None:
        """Return once the broker's port accepts a TCP connection, probing it every
        PROBE_INTERVAL_S (jittered, so a fleet does not come back in step)."""
        interval = self._probe_interval
        if immediately and await self._port_accepts():
            return
        while True:
            await asyncio.sleep(random.uniform(interval / 2, interval))
            if await self._port_accepts():
                return

    async def _port_accepts(self) -> bool:
        """One probe: a bare TCP connect, closed at once (no MQTT, nothing to log)."""
        self.counters.probes += 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                transport, _ = await loop.create_connection(asyncio.Protocol, self.host, self.port)
        except (OSError, TimeoutError):
            return False
        # Connecting to a free loopback port can connect a socket to itself (TCP
        # simultaneous open): that is not the broker, and would hold its port.
        to_itself = transport.get_extra_info("sockname") == transport.get_extra_info("peername")
        transport.close()
        return not to_itself

    def _drop_connection(self) -> None:
        self.connected.clear()
        if self._protocol is not None:
            self._protocol.abort()
            self._protocol = None

    # -- internals ----------------------------------------------------------------
    def _packet_id(self, proto: MqttProtocol) -> int:
        for _ in range(65535):
            self._next_packet_id = self._next_packet_id % 65535 + 1
            if not proto.packet_id_in_use(self._next_packet_id):
                return self._next_packet_id
        raise MqttError("all 65535 packet ids in flight")

    async def _connect_once(self, down_s: float | None = None) -> None:
        """Connect, CONNECT, resubscribe; `down_s`: how long we have been without a
        connection (for the log). Raises BrokerUnreachable when TCP does not connect."""
        loop = asyncio.get_running_loop()
        # New generation before the socket opens: queued messages may arrive with CONNACK.
        self.generation += 1
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: MqttProtocol(
                        self.opts, self._on_publish, self.counters, self._on_oversize
                    ),
                    self.host,
                    self.port,
                    ssl=self._tls,
                ),
                self._connect_timeout,
            )
        except (ssl.SSLError, socket.gaierror):
            raise  # the broker answered (TLS), or the name is wrong: neither is a broker down
        except (OSError, TimeoutError) as exc:
            raise BrokerUnreachable(f"no connection: {exc or type(exc).__name__}") from exc
        self._protocol = proto
        session_present = await asyncio.wait_for(
            asyncio.shield(proto.connack), self._connect_timeout
        )
        self.session_present = session_present
        self.counters.connects += 1
        if self.counters.connects > 1:
            self.counters.reconnects += 1
        if self.subscriptions:
            # Always resubscribe: cheap, and covers a broker that lost its session store.
            codes = await asyncio.wait_for(
                proto.subscribe(self._packet_id(proto), self.subscriptions), self._connect_timeout
            )
            refused = [f for f, c in zip(self.subscriptions, codes, strict=False) if c >= 0x80]
            if refused:
                raise ConnectRefused(f"broker refused subscriptions {refused} (codes {codes})")
        log.log(
            self._connect_log_level,
            "MQTT connected to %s:%d as %s (session present: %s)%s",
            self.host,
            self.port,
            self.opts.client_id,
            session_present,
            "" if down_s is None else f", back after {down_s:.1f} s without a connection",
        )
        self.connected.set()
        if self._on_connected is not None:
            self._on_connected(self, session_present)

    async def _supervise(self, proto: MqttProtocol) -> None:
        """Ping at half the keepalive; drop a link that has been silent for 1.5 keepalives."""
        keepalive = max(self.opts.keepalive_s, 1)
        loop = asyncio.get_running_loop()
        while not proto.closed.done():
            done, _ = await asyncio.wait({proto.closed}, timeout=keepalive / 2)
            if done:
                break
            if not proto.paused and loop.time() - proto.last_inbound > keepalive * 1.5:
                raise ConnectionLost(f"no traffic from broker for {keepalive * 1.5:.0f} s")
            proto.write(b"\xc0\x00")
        raise ConnectionLost(proto.close_reason or "connection closed")
