"""`SpoolFollower`: another process's read-only view of the log. It reads only what the
hub's spool has synced, across segments, including segments the hub emptied once every
consumer had passed them, and counts what arrives for the lag."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.records import Tick
from ingest.spool import Cursor, Spool, SpoolError, SpoolFollower, encode_frame


def frame(spool: Spool, first: int, n: int, *, sync: bool = True) -> None:
    records: list[Tick] = [Tick(first + i) for i in range(n)]
    lines = [f"m v={first + i}i {first + i}\n".encode() for i in range(n)]
    spool.append(encode_frame(lines, 1, records), len(lines), list(records))
    if sync:
        spool.sync()


def ticks(follower: SpoolFollower, start: Cursor) -> tuple[list[int], Cursor]:
    out: list[int] = []
    while (batch := follower.read_records(start, 7)) is not None:
        out += [r.at_ms for r in batch.records if isinstance(r, Tick)]
        start = batch.end
    return out, start


def test_it_reads_what_is_synced_and_nothing_after(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 30)
    spool.open()
    follower = SpoolFollower(tmp_path)
    try:
        frame(spool, 0, 5)
        frame(spool, 5, 5, sync=False)  # written, not yet durable: not in the log
        assert follower.refresh()
        start = follower.hold("rules", None)
        found, end = ticks(follower, start)
        assert found == list(range(5))
        spool.sync()
        assert not follower.read_records(end, 10)  # the mark is read on refresh only
        assert follower.refresh() and not follower.refresh()
        assert follower.synced_records == 5  # arrived since it started following
        more, _ = ticks(follower, end)
        assert more == list(range(5, 10))
        assert follower.records_after(start) == 10
    finally:
        spool.close()
        follower.close()


def test_it_crosses_segments_even_one_the_hub_emptied(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16)
    spool.open()
    follower = SpoolFollower(tmp_path)
    try:
        for at in range(0, 6000, 200):
            frame(spool, at, 200)
        segments = sorted(tmp_path.glob("*.seg"))
        assert len(segments) >= 3
        follower.refresh()
        start = follower.hold("rules", None)
        found, end = ticks(follower, start)
        assert found == list(range(6000))
        # The hub empties a finished segment in place once every consumer passed it
        # (a full disk): a consumer at its old end goes on into the next one.
        first_end = Cursor(0, segments[0].stat().st_size)
        beyond = follower.records_after(first_end)
        assert 0 < beyond < 6000
        segments[0].write_bytes(b"")
        frame(spool, 6000, 10)
        assert follower.refresh()
        assert follower.records_after(first_end) == beyond + 10
        tail, _ = ticks(follower, end)
        assert tail == list(range(6000, 6010))
    finally:
        spool.close()
        follower.close()


def test_a_frame_the_mark_promises_but_the_file_lacks_is_an_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 30)
    spool.open()
    follower = SpoolFollower(tmp_path)
    try:
        frame(spool, 0, 3)
        follower.refresh()
        start = follower.hold("rules", None)
        (segment,) = tmp_path.glob("*.seg")
        segment.write_bytes(b"")  # damage: the log lost frames it had synced
        with pytest.raises(SpoolError, match="no frame at"):
            follower.read_records(start, 10)
    finally:
        spool.close()
        follower.close()
