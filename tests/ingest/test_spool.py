"""The durable spool: frames in order, cursor commits, rotation, torn-tail recovery, lock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.spool import Cursor, Spool, SpoolBatch, SpoolError, encode_frame

SPOOLED_MS = 1_740_788_130_250


def lines_of(tag: str, n: int) -> list[bytes]:
    return [f"m,f={tag} v={i}i {i}\n".encode() for i in range(n)]


def open_spool(directory: Path, **kwargs: int) -> Spool:
    spool = Spool(directory, max_bytes=kwargs.pop("max_bytes", 1 << 30), **kwargs)
    spool.open()
    return spool


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = open_spool(tmp_path / "spool")
    yield s
    s.close()


def put(spool: Spool, lines: list[bytes], spooled_ms: int = SPOOLED_MS) -> int:
    """Append one frame and fsync it; return the frame's size."""
    frame = encode_frame(lines, spooled_ms)
    spool.append(frame, len(lines))
    spool.sync()
    return len(frame)


def read_all(spool: Spool, max_lines: int = 1_000_000) -> SpoolBatch:
    batch = spool.read(max_lines)
    assert batch is not None
    return batch


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


# ---------------------------------------------------------------- append, read, commit


def test_empty_spool_reads_nothing(spool: Spool) -> None:
    assert spool.read(100) is None
    assert spool.pending_lines == 0
    assert spool.pending_bytes == 0
    assert spool.oldest_pending_ms() is None
    assert not spool.full


def test_append_sync_read_returns_frames_in_order(spool: Spool) -> None:
    a, b, c = lines_of("a", 3), lines_of("b", 1), lines_of("c", 5)
    sizes = [put(spool, a, 1), put(spool, b, 2), put(spool, c, 3)]
    assert spool.pending_lines == 9
    assert spool.pending_bytes == sum(sizes)
    batch = read_all(spool)
    assert batch.payload == b"".join(a + b + c)
    assert batch.lines == 9
    assert batch.oldest_spooled_ms == 1
    assert batch.end == Cursor(0, sum(sizes))
    assert spool.oldest_pending_ms() == 1


def test_read_stops_after_max_lines_but_returns_at_least_one_frame(spool: Spool) -> None:
    put(spool, lines_of("a", 3))
    put(spool, lines_of("b", 3))
    put(spool, lines_of("c", 3))
    first = spool.read(1)
    assert first is not None
    assert first.lines == 3 and first.payload == b"".join(lines_of("a", 3))
    two = spool.read(4)
    assert two is not None
    assert two.lines == 6
    assert two.payload == b"".join(lines_of("a", 3) + lines_of("b", 3))


def test_read_before_sync_sees_nothing(spool: Spool) -> None:
    spool.append(encode_frame(lines_of("a", 2), SPOOLED_MS), 2)
    assert spool.read(100) is None
    assert spool.pending_lines == 0
    spool.sync()
    batch = read_all(spool)
    assert batch.lines == 2


def test_unsynced_frame_is_invisible_behind_synced_ones(spool: Spool) -> None:
    put(spool, lines_of("a", 2))
    spool.append(encode_frame(lines_of("b", 2), SPOOLED_MS), 2)
    batch = read_all(spool)
    assert batch.payload == b"".join(lines_of("a", 2))
    assert spool.pending_lines == 2


def test_commit_moves_the_cursor_and_counters(spool: Spool) -> None:
    size_a = put(spool, lines_of("a", 3))
    size_b = put(spool, lines_of("b", 2))
    first = spool.read(1)
    assert first is not None
    spool.commit(first.end, first.lines)
    assert spool.pending_lines == 2
    assert spool.pending_bytes == size_b
    rest = read_all(spool)
    assert rest.payload == b"".join(lines_of("b", 2))
    assert rest.end == Cursor(0, size_a + size_b)
    spool.commit(rest.end, rest.lines)
    assert spool.pending_lines == 0
    assert spool.pending_bytes == 0
    assert spool.read(100) is None
    assert (spool.directory / "cursor").read_text().split() == ["0", str(size_a + size_b)]


def test_reopen_after_commit_resumes_from_the_cursor(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = open_spool(directory)
    put(spool, lines_of("a", 3))
    put(spool, lines_of("b", 2))
    first = spool.read(1)
    assert first is not None
    spool.commit(first.end, first.lines)
    spool.close()

    again = open_spool(directory)
    try:
        assert again.pending_lines == 2
        batch = read_all(again)
        assert batch.payload == b"".join(lines_of("b", 2))
        put(again, lines_of("c", 1))
        assert again.pending_lines == 3
        assert read_all(again).payload == b"".join(lines_of("b", 2) + lines_of("c", 1))
    finally:
        again.close()


def test_reopen_without_commit_keeps_everything(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = open_spool(directory)
    put(spool, lines_of("a", 3))
    spool.close()
    again = open_spool(directory)
    try:
        assert again.pending_lines == 3
        assert read_all(again).payload == b"".join(lines_of("a", 3))
    finally:
        again.close()


# ---------------------------------------------------------------- segments


def test_rotation_across_segments_and_deletion_after_commit(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = open_spool(directory, segment_bytes=100)
    try:
        frames = [lines_of(str(i), 2) for i in range(10)]
        for lines in frames:
            put(spool, lines)
        assert len(segment_files(directory)) > 2
        assert spool.pending_lines == 20
        batch = read_all(spool)
        assert batch.payload == b"".join(line for lines in frames for line in lines)
        assert batch.lines == 20

        # Commit half: the segments entirely before the cursor are deleted.
        half = spool.read(10)
        assert half is not None
        before = segment_files(directory)
        spool.commit(half.end, half.lines)
        after = segment_files(directory)
        assert len(after) < len(before)
        assert all(int(p.stem) >= half.end.segment for p in after)
        assert spool.pending_lines == 20 - half.lines
        rest = read_all(spool)
        assert rest.payload == b"".join(
            line for lines in frames[half.lines // 2 :] for line in lines
        )
        spool.commit(rest.end, rest.lines)
        assert spool.pending_lines == 0
        assert len(segment_files(directory)) == 1
        assert spool.read(100) is None
    finally:
        spool.close()


def test_oldest_pending_follows_the_cursor_across_segments(tmp_path: Path) -> None:
    """The lag statistic reads one header: the first unstored frame's, wherever it is."""
    spool = open_spool(tmp_path / "spool", segment_bytes=100)
    try:
        for i in range(6):
            put(spool, lines_of(str(i), 2), spooled_ms=1000 + i)
        assert spool.oldest_pending_ms() == 1000
        while (batch := spool.read(1)) is not None:
            spool.commit(batch.end, batch.lines)
            after = spool.oldest_pending_ms()
            assert after is None or after == batch.oldest_spooled_ms + 1
        assert spool.oldest_pending_ms() is None
        put(spool, lines_of("late", 1), spooled_ms=2000)
        assert spool.oldest_pending_ms() == 2000
    finally:
        spool.close()


def test_reopen_after_rotation_deletes_finished_segments(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = open_spool(directory, segment_bytes=100)
    for i in range(10):
        put(spool, lines_of(str(i), 2))
    batch = read_all(spool)
    spool.commit(batch.end, batch.lines)
    spool.close()
    again = open_spool(directory, segment_bytes=100)
    try:
        assert again.pending_lines == 0
        assert all(int(p.stem) >= batch.end.segment for p in segment_files(directory))
        put(again, lines_of("new", 1))
        assert read_all(again).payload == b"".join(lines_of("new", 1))
    finally:
        again.close()


# ---------------------------------------------------------------- crash recovery


def test_torn_tail_garbage_is_cut(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = open_spool(directory)
    size = put(spool, lines_of("a", 2)) + put(spool, lines_of("b", 3))
    spool.close()
    (last,) = segment_files(directory)
    with last.open("ab") as f:
        f.write(b"\x07garbage from a crash mid-write")
    again = open_spool(directory)
    try:
        assert last.stat().st_size == size
        assert again.pending_lines == 5
        assert read_all(again).payload == b"".join(lines_of("a", 2) + lines_of("b", 3))
        put(again, lines_of("c", 1))
        assert read_all(again).lines == 6
    finally:
        again.close()


def put_unsynced(spool: Spool, lines: list[bytes]) -> int:
    """Append one frame without its fsync (a crash before the fsync: never acked)."""
    frame = encode_frame(lines, SPOOLED_MS)
    spool.append(frame, len(lines))
    return len(frame)


@pytest.mark.parametrize("cut", [1, 10, 20, 25])
def test_unsynced_frame_truncated_mid_way_is_cut(tmp_path: Path, cut: int) -> None:
    directory = tmp_path / "spool"
    spool = open_spool(directory)
    first = put(spool, lines_of("a", 2))
    second = put_unsynced(spool, lines_of("b", 3))
    spool.close()
    (last,) = segment_files(directory)
    with last.open("r+b") as f:
        f.truncate(first + second - cut)
    again = open_spool(directory)
    try:
        assert last.stat().st_size == first
        assert again.pending_lines == 2
        assert read_all(again).payload == b"".join(lines_of("a", 2))
    finally:
        again.close()


def test_corrupt_unsynced_frame_cuts_from_there(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = open_spool(directory)
    first = put(spool, lines_of("a", 2))
    second = put_unsynced(spool, lines_of("b", 3))
    put_unsynced(spool, lines_of("c", 1))
    spool.close()
    (last,) = segment_files(directory)
    data = bytearray(last.read_bytes())
    data[first + second - 3] ^= 0xFF  # a payload byte of the second frame
    last.write_bytes(bytes(data))
    again = open_spool(directory)
    try:
        assert last.stat().st_size == first
        assert again.pending_lines == 2
        assert read_all(again).payload == b"".join(lines_of("a", 2))
    finally:
        again.close()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_synced_frame_is_refused_not_cut(tmp_path: Path, damage: str) -> None:
    """Synced frames were acknowledged: recovery must not cut them as a torn tail."""
    directory = tmp_path / "spool"
    spool = open_spool(directory)
    first = put(spool, lines_of("a", 2))
    second = put(spool, lines_of("b", 3))
    put(spool, lines_of("c", 1))
    spool.close()
    (last,) = segment_files(directory)
    size = last.stat().st_size
    if damage == "flip":
        data = bytearray(last.read_bytes())
        data[first + second - 3] ^= 0xFF
        last.write_bytes(bytes(data))
    else:
        with last.open("r+b") as f:
            f.truncate(first + second - 5)
    with pytest.raises(SpoolError, match=r"offset \d+ fails its check.*not cut"):
        open_spool(directory)
    assert last.stat().st_size == (size if damage == "flip" else first + second - 5)


def test_damage_in_an_older_segment_is_refused_without_a_mark(tmp_path: Path) -> None:
    """A spool from before the synced mark: an older segment was synced whole at rotation."""
    directory = tmp_path / "spool"
    spool = open_spool(directory, segment_bytes=64)
    for i in range(3):
        put(spool, lines_of(f"s{i}", 3))
    spool.close()
    (directory / "synced").unlink()
    oldest = segment_files(directory)[0]
    data = bytearray(oldest.read_bytes())
    data[-2] ^= 0xFF
    oldest.write_bytes(bytes(data))
    with pytest.raises(SpoolError, match="not cut"):
        open_spool(directory, segment_bytes=64)


def test_torn_tail_after_the_cursor(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = open_spool(directory)
    put(spool, lines_of("a", 2))
    batch = read_all(spool)
    spool.commit(batch.end, batch.lines)
    put(spool, lines_of("b", 2))
    spool.close()
    (last,) = segment_files(directory)
    with last.open("ab") as f:
        f.write(b"\x00" * 7)
    again = open_spool(directory)
    try:
        assert again.pending_lines == 2
        assert read_all(again).payload == b"".join(lines_of("b", 2))
    finally:
        again.close()


# ---------------------------------------------------------------- lock, limits, cursor


def test_second_spool_on_the_same_directory_is_refused(spool: Spool) -> None:
    other = Spool(spool.directory, max_bytes=1 << 30)
    with pytest.raises(SpoolError, match="in use"):
        other.open()


def test_lock_is_released_on_close(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    open_spool(directory).close()
    open_spool(directory).close()


def test_full_at_max_bytes(tmp_path: Path) -> None:
    frame_size = len(encode_frame(lines_of("a", 1), SPOOLED_MS))
    spool = open_spool(tmp_path / "spool", max_bytes=3 * frame_size)
    try:
        put(spool, lines_of("a", 1))
        put(spool, lines_of("a", 1))
        assert not spool.full
        put(spool, lines_of("a", 1))
        assert spool.pending_bytes == 3 * frame_size
        assert spool.full
        batch = spool.read(1)
        assert batch is not None
        spool.commit(batch.end, batch.lines)
        assert not spool.full
    finally:
        spool.close()


def test_unsynced_bytes_count_towards_full(tmp_path: Path) -> None:
    frame = encode_frame(lines_of("a", 1), SPOOLED_MS)
    spool = open_spool(tmp_path / "spool", max_bytes=len(frame))
    try:
        spool.append(frame, 1)
        assert spool.full
    finally:
        spool.close()


@pytest.mark.parametrize("content", ["", "garbage\n", "1\n", "a b\n", "1 2 3\n"])
def test_corrupt_cursor_file_is_a_spool_error(tmp_path: Path, content: str) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "cursor").write_text(content)
    spool = Spool(directory, max_bytes=1 << 30)
    with pytest.raises(SpoolError, match="corrupt"):
        spool.open()
    spool.close()


def test_cursor_left_in_a_deleted_segment_resumes_at_the_first_live_one(tmp_path: Path) -> None:
    """`commit` unlinks finished segments, then writes the cursor: a crash in between must
    not leave a spool whose lines are counted but can never be read."""
    directory = tmp_path / "spool"
    spool = open_spool(directory, segment_bytes=100)
    frames = [lines_of(str(i), 2) for i in range(10)]
    for lines in frames:
        put(spool, lines)
    batch = spool.read(9)
    assert batch is not None and batch.end.segment > 0
    spool.commit(batch.end, batch.lines)
    spool.close()
    (directory / "cursor").write_text("0 0\n")  # the cursor update never reached the disk
    assert not (directory / f"{0:016d}.seg").exists()

    again = open_spool(directory, segment_bytes=100)
    try:
        live = segment_files(directory)
        first_live = int(live[0].stem)
        per_segment = {int(p.stem): p.read_bytes() for p in live}
        assert again.pending_bytes == sum(len(data) for data in per_segment.values())
        resent = read_all(again)
        # Everything from the first live segment on is re-sent (InfluxDB folds repeats).
        assert resent.lines == again.pending_lines
        assert resent.payload.endswith(b"".join(frames[-1]))
        assert resent.end.segment == max(per_segment)
        assert first_live == min(per_segment)
        again.commit(resent.end, resent.lines)
        assert again.pending_lines == 0
        assert again.read(100) is None
    finally:
        again.close()
