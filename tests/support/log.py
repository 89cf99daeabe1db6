"""Shared test helpers: the hub's log (`ingest.spool`) written the way the intake writes it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

from ingest.decode import Decoder
from ingest.line_protocol import LineEncoder
from ingest.records import Record, Tick
from ingest.spool import Cursor, Spool, encode_frame
from sensors.base import Reading
from simulators.engine import SimMessage


def append_frame(spool: Spool, records: Sequence[Record], *, lines: bool = True) -> Cursor:
    """One fsynced frame of `records` (with the readings' line protocol unless `lines` is
    False); returns the position after it."""
    encoder = LineEncoder()
    payload = [encoder.encode(r) for r in records if isinstance(r, Reading)] if lines else []
    frame = encode_frame(payload, time.time_ns() // 1_000_000, records)
    spool.append(frame, len(payload), list(records))
    spool.sync()
    return spool.end_of_log()


def log_records(
    spool: Spool, records: Sequence[Record], *, per_frame: int = 100, lines: bool = True
) -> list[Cursor]:
    """Append `records` in frames of `per_frame`; returns the position after each frame."""
    return [
        append_frame(spool, records[i : i + per_frame], lines=lines)
        for i in range(0, len(records), per_frame)
    ]


def harness_records(
    messages: Iterable[SimMessage], decoder: Decoder, tick_ms: int = 1_000
) -> Iterator[Record]:
    """What `evaluation.rules_eval.run_rules` feeds the rules, in its order: each message
    decoded at its time, a `Tick` every `tick_ms` of simulated time between messages, and
    a last tick at the last message's time."""
    next_tick: int | None = None
    last = 0
    for message in messages:
        now = message.sim_ms
        if next_tick is None:
            next_tick = (now // tick_ms + 1) * tick_ms
        while next_tick <= now:
            yield Tick(next_tick)
            next_tick += tick_ms
        yield decoder.decode(message.topic, message.payload, now * 1_000_000)
        last = now
    yield Tick(last)
