"""What the detection consumers read from the log: readings, rejections and clock ticks.

Every spool frame carries, beside the line protocol InfluxDB gets, the records the
rules and anomaly consumers evaluate, in arrival order. They are kept as objects in
memory for the consumers that are caught up, and stored with `marshal` (plain tuples,
no code: a stored frame can only ever decode to data) for those resuming from disk.

A `SessionLost` says the broker lost what it queued for the hub (see the class).

A `Tick` moves event time forward when the whole input is idle: the hub appends one
(wall clock minus a bound, see `hub.runtime`) so that timers of silent devices fire,
and since ticks are in the log a consumer replaying it after a crash sees them in the
same place and decides the same.
"""

from __future__ import annotations

import marshal
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from ingest.decode import Rejected, RejectReason
from sensors.base import Reading, new_reading
from sensors.topics import Route

RECORDS_VERSION: Final = 1
_READING: Final = 0
_REJECTED: Final = 1
_TICK: Final = 2
_SESSION_LOST: Final = 3


@dataclass(frozen=True, slots=True)
class Tick:
    """Event time is at least `at_ms` (the input was idle; timers due by then may fire)."""

    at_ms: int


@dataclass(frozen=True, slots=True)
class SessionLost:
    """The broker answered our reconnect without the session it kept for `hub` (it
    crashed before saving it, or expired it): what it had queued for us is lost. In the
    log so that the rules mark the sequence gaps that follow, the same on every replay.
    `at_ms` is the wall clock at the reconnect; it does not move event time."""

    at_ms: int
    hub: str


Record = Reading | Rejected | Tick | SessionLost


class RecordsError(ValueError):
    """A stored records blob this code cannot read."""


def encode_records(records: Sequence[Record]) -> bytes:
    """The stored form: a rejection keeps its route, reason and detail, not its payload
    (the dead letters keep that); readings and ticks whole."""
    rows: list[tuple[object, ...]] = []
    for r in records:
        if isinstance(r, Reading):
            rows.append(
                (
                    _READING,
                    r.measurement,
                    r.site,
                    r.kind,
                    r.device,
                    r.channel,
                    r.cell,
                    r.ts_ns,
                    r.ts_from_device,
                    r.seq,
                    dict(r.tags),
                    dict(r.fields),
                )
            )
        elif isinstance(r, Rejected):
            route = tuple(r.route) if r.route is not None else None
            rows.append(
                (
                    _REJECTED,
                    r.reason.value,
                    r.detail,
                    r.topic,
                    r.received_ns,
                    route,
                    r.payload_digest,
                )
            )
        elif isinstance(r, Tick):
            rows.append((_TICK, r.at_ms))
        else:
            rows.append((_SESSION_LOST, r.at_ms, r.hub))
    try:
        return marshal.dumps((RECORDS_VERSION, rows))
    except ValueError:
        # A subclass of a plain type (a plugin's StrEnum field): the line protocol stored
        # its plain value, and so does the log; the batch must never fail on it.
        return marshal.dumps((RECORDS_VERSION, [_plain(row) for row in rows]))


def _plain(value: Any) -> Any:
    """`value` with every str, int, float or bool subclass replaced by its plain value."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def decode_records(blob: bytes) -> list[Record]:
    if not blob:
        return []
    try:
        # Our own CRC-checked frames (0600, in the hub's data dir); loads builds data
        # and never runs it, and `_record` accepts only the tuples above.
        version, rows = marshal.loads(blob)  # noqa: S302
    except (EOFError, ValueError, TypeError) as exc:
        raise RecordsError(f"unreadable records: {exc}") from exc
    if version != RECORDS_VERSION:
        raise RecordsError(f"records version {version!r} is not {RECORDS_VERSION}")
    try:
        return [_record(row) for row in rows]
    except (TypeError, ValueError, IndexError) as exc:
        raise RecordsError(f"malformed record: {exc}") from exc


def _record(row: tuple[Any, ...]) -> Record:
    tag = row[0]
    if tag == _READING:
        return new_reading(*row[1:])
    if tag == _REJECTED:
        _, reason, detail, topic, received_ns, route, *digest = row  # digest: since 2026-12
        return Rejected(
            RejectReason(reason),
            str(detail),
            str(topic),
            b"",
            int(received_ns),
            Route(*route) if route is not None else None,
            int(digest[0]) if digest else 0,
        )
    if tag == _TICK:
        return Tick(int(row[1]))
    if tag == _SESSION_LOST:
        return SessionLost(int(row[1]), str(row[2]))
    raise RecordsError(f"unknown record tag {tag!r}")


def event_time_ms(record: Record) -> int | None:
    """The event time a record carries (a reading's timestamp, a tick's time); None for
    a rejection, whose time is when it arrived, not when anything happened."""
    if isinstance(record, Reading):
        return record.ts_ns // 1_000_000
    if isinstance(record, Tick):
        return record.at_ms
    return None


K = TypeVar("K", int, tuple[str, int])


class Deduplicator:
    """Recognises a redelivered message, so that the log holds it once. The broker
    re-sends what it sent but saw no PUBACK for (the hub crashed after the fsync, or was
    killed when another took its partition), and devices retry.

    - A reading with a sequence number: the same device, sequence number and timestamp
      as one of the last `capacity` such readings.
    - A reading without one (a status, a will, a device that sends no counter), and a
      rejection: only MQTT's DUP flag says "sent again"; then the same content as one
      of the last `capacity` logged (a reading's device, measurement, values and own
      timestamp; a rejection's topic and bytes) is that one. Without DUP identical
      content is a new message: a device may well say "offline" twice."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: set[tuple[str, int, int]] = set()
        # Oldest first; a deque frees each key as it ages out (a list compacted now and
        # then kept up to twice the capacity alive: 34 MB instead of 17 at 100,000).
        self._order: deque[tuple[str, int, int]] = deque()
        self._unnumbered: dict[int, None] = {}
        """Content hashes of recent readings without a sequence number, oldest first."""
        self._rejections: dict[tuple[str, int], None] = {}
        """(topic, payload CRC) of recent rejections, oldest first."""

    def seen(self, reading: Reading, dup: bool = False) -> bool:
        """True for a duplicate; otherwise remember the reading and return False. `dup`:
        the message came with MQTT's DUP flag (what a reading without a sequence number
        is judged by)."""
        seq = reading.seq
        if seq is None:
            return self._seen_unnumbered(reading, dup)
        key = (reading.device, seq, reading.ts_ns)
        if key in self._seen:
            return True
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > self.capacity:
            self._seen.discard(self._order.popleft())
        return False

    def _seen_unnumbered(self, reading: Reading, dup: bool) -> bool:
        # An arrival stamp differs between the copies: only a device's own time counts.
        at = reading.ts_ns if reading.ts_from_device else 0
        key = hash((reading.device, reading.measurement, at, *sorted(reading.fields.items())))
        return self._sent_again(self._unnumbered, key, dup)

    def seen_again(self, rejected: Rejected, dup: bool) -> bool:
        """For a rejection: True when it is a retransmission (MQTT DUP set) of one of
        the last `capacity` rejections the log holds, same topic and payload bytes;
        otherwise remember it and return False. Without DUP, identical bytes are a new
        message (a device may send the same garbage twice, and each is counted)."""
        return self._sent_again(self._rejections, (rejected.topic, rejected.payload_digest), dup)

    def _sent_again(self, recent: dict[K, None], key: K, dup: bool) -> bool:
        """With DUP, whether `key` is among the `recent` (oldest first); else remember it,
        forgetting the oldest past `capacity`."""
        if dup and key in recent:
            return True
        recent[key] = None
        if len(recent) > self.capacity:
            del recent[next(iter(recent))]
        return False

    def remember(self, records: Iterable[Record]) -> None:
        """Seed from the log's tail at start (what was stored before a crash)."""
        for record in records:
            if isinstance(record, Reading):
                self.seen(record)
            elif isinstance(record, Rejected):
                self.seen_again(record, False)
