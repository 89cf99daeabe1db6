"""The rules snapshot's stored form: compressed JSON built in slices of slots, read back
to the same state, whatever the names in it (senders choose some of them)."""

from __future__ import annotations

import json
import zlib

import pytest

from detection.rules_service import (
    SiteClocks,
    UnknownSources,
    _from_snapshot,
    _Tally,
    _to_snapshot,
    snapshot_body,
)
from ingest.spool import Cursor
from rules.engine import EngineState

ODD = 'x"}},"engine":{\\u0000slots\x00'
"""A name as a sender might make it up: quotes, braces, a NUL, JSON-looking text."""


@pytest.mark.parametrize("slots", [0, 1, 4_999])
def test_a_snapshot_reads_back_as_it_was_written(slots: int) -> None:
    state = EngineState(
        slots={
            f"rule-{i % 7}\x1fdev-{i}": {"c": {"times": [i, i + 1]}, "open": i % 2 == 0}
            for i in range(slots)
        },
        clock_ms=1_796_321_010_737,
    )
    if slots:
        state.slots[f"door_forced\x1f{ODD}"] = {"c": {}, "open": True, "ctx": {"device": ODD}}
    unknown = UnknownSources()
    unknown.tallies[ODD] = _Tally({ODD: 3, "b": 1}, 2, 6, 17)
    clocks = SiteClocks({ODD: 5}, 9)
    data = _to_snapshot(state, unknown, Cursor(3, 4096), False, 11, clocks)
    body = json.loads(zlib.decompress(data))
    assert snapshot_body(data) == body
    assert set(body) == {
        "format",
        "clockless",
        "session_lost_ms",
        "site_clocks",
        "position",
        "engine",
        "unknown",
    }
    back, unknown_back, position, clockless, session_lost_ms, clocks_back = _from_snapshot(data)
    assert back == state and back.clock_ms == state.clock_ms
    assert unknown_back.tallies == unknown.tallies
    assert (position, clockless, session_lost_ms) == (Cursor(3, 4096), False, 11)
    assert (clocks_back.sites, clocks_back.tick_ms) == ({ODD: 5}, 9)
    # The same state, written again, gives the same bytes (replays compare snapshots).
    assert _to_snapshot(state, unknown, Cursor(3, 4096), False, 11, clocks) == data


def test_a_plain_snapshot_of_before_is_still_read() -> None:
    state = EngineState(slots={"r\x1fk": {"c": {}, "open": True}}, clock_ms=5)
    plain = json.dumps(
        {**snapshot_body(_to_snapshot(state, UnknownSources(), None, True, 0, SiteClocks()))}
    ).encode()
    assert plain[:1] == b"{"
    assert _from_snapshot(plain)[0] == state
