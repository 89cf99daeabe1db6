"""The spool as the hub's log: records (readings, rejections, ticks) stored beside the
line protocol, read back by consumers at their own positions; duplicates recognised
before they are logged; segments kept for every holder; the old format refused."""

from __future__ import annotations

import json
import logging
import marshal
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from ingest.decode import Rejected, RejectReason
from ingest.records import (
    Deduplicator,
    Record,
    RecordsError,
    Tick,
    decode_records,
    encode_records,
    event_time_ms,
)
from ingest.spool import FORMAT, Cursor, Spool, SpoolError, encode_frame
from sensors.base import Reading
from sensors.topics import Route
from tests.support.intake import Rig, make_rig
from tests.support.log import append_frame, log_records
from tests.support.rules import at, reading

TOPIC = "gw/v1/s1/smoke/sd-1/telemetry"


def every_kind() -> list[Record]:
    """A reading with tags and fields of every type, one without cell or seq, rejections
    with and without a route, and ticks."""
    full = reading(
        "smoke",
        "sd-1",
        1.5,
        {
            "temperature": 21.5,
            "battery": 87,
            "big": 2**62,
            "negative": -3,
            "alarm": True,
            "fault": False,
            "state": "normal",
            "note": "ünïcode ✓",
        },
        seq=42,
        tags={"room": "lab", "floor": "2"},
    )
    bare = reading("access", "a1", 2.0, {"event": "door_opened"}, channel="event", cell=None)
    route = Route("s1", "smoke", "sd-1", "telemetry")
    with_route = Rejected(RejectReason.BAD_JSON, "line 1", TOPIC, b"{", at(3) * 10**6, route)
    without = Rejected(RejectReason.BAD_TOPIC, "no device", "junk/topic", b"x", at(4) * 10**6, None)
    return [full, bare, with_route, Tick(at(5)), without, Tick(at(6))]


def as_stored(records: Sequence[Record]) -> list[Record]:
    """What the stored form keeps: a rejection without its payload (dead letters keep it),
    with the payload's CRC instead (to recognise a retransmission)."""
    return [
        replace(r, payload=b"", digest=r.payload_digest) if isinstance(r, Rejected) else r
        for r in records
    ]


# ---------------------------------------------------------------- records


def test_records_round_trip() -> None:
    records = every_kind()
    back = decode_records(encode_records(records))
    assert back == as_stored(records)
    assert [type(r) for r in back] == [type(r) for r in records]
    full = back[0]
    assert isinstance(full, Reading)
    assert [type(v) for v in full.fields.values()] == [float, int, int, int, bool, bool, str, str]
    assert decode_records(b"") == []


def test_event_time_of_each_kind() -> None:
    full, _bare, with_route, tick, _without, _ = every_kind()
    assert event_time_ms(full) == at(1.5)
    assert event_time_ms(tick) == at(5)
    assert event_time_ms(with_route) is None  # when it arrived is no event time


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (b"\x00not marshal at all", "unreadable"),
        (marshal.dumps(12), "unreadable"),
        (marshal.dumps((2, [])), "version 2"),
        (marshal.dumps((1, [(9, 1)])), "unknown record tag 9"),
        (marshal.dumps((1, [(0, "x")])), "malformed"),
        (marshal.dumps((1, [(1, "bad_json")])), "malformed"),
        (marshal.dumps((1, [5])), "malformed"),
    ],
    ids=["garbage", "no-tuple", "version", "tag", "short-reading", "short-rejection", "row"],
)
def test_a_foreign_blob_is_refused(blob: bytes, why: str) -> None:
    with pytest.raises(RecordsError, match=why):
        decode_records(blob)


# ---------------------------------------------------------------- deduplication


def seq_reading(device: str, seq: int | None, t: float = 0.0) -> Reading:
    return reading("smoke", device, t, {"temperature": 20.0}, seq=seq)


def test_a_redelivered_reading_is_recognised() -> None:
    dedup = Deduplicator()
    assert not dedup.seen(seq_reading("d1", 1))
    assert dedup.seen(seq_reading("d1", 1))
    # Another device, sequence number or timestamp is another reading.
    assert not dedup.seen(seq_reading("d2", 1))
    assert not dedup.seen(seq_reading("d1", 2))
    assert not dedup.seen(seq_reading("d1", 1, t=1.0))
    # Without a sequence number only MQTT's DUP flag tells a redelivery from a new
    # reading: the same content without it is a new one (a device may repeat itself).
    assert not dedup.seen(seq_reading("d1", None))
    assert not dedup.seen(seq_reading("d1", None))
    assert dedup.seen(seq_reading("d1", None), dup=True)
    assert not dedup.seen(seq_reading("d1", None, t=5.0), dup=True)  # its own time differs
    assert not dedup.seen(seq_reading("d2", None), dup=True)  # another device


def test_an_untimed_message_sent_again_is_recognised_whatever_its_arrival() -> None:
    """A status or a will carries no time of its own: each copy is stamped when it
    arrives, so the copies differ in time and are the same message all the same."""
    first = replace(seq_reading("d1", None), ts_from_device=False, ts_ns=at(1) * 1_000_000)
    again = replace(first, ts_ns=at(9) * 1_000_000)
    offline = replace(again, fields={"temperature": 99.0})
    dedup = Deduplicator()
    dedup.remember([first])  # in the log before a crash
    assert dedup.seen(again, dup=True)
    assert not dedup.seen(offline, dup=True)  # other values: another message


def test_the_deduplicator_remembers_only_the_last_capacity_readings() -> None:
    dedup = Deduplicator(capacity=3)
    for seq in range(1_000):  # well past the compaction threshold, several times
        assert not dedup.seen(seq_reading("d1", seq))
    assert all(dedup.seen(seq_reading("d1", seq)) for seq in (997, 998, 999))
    assert not dedup.seen(seq_reading("d1", 996))  # forgotten
    assert len(dedup._seen) == 3 and len(dedup._order) == 3  # nothing older kept alive


def test_remember_seeds_from_the_log() -> None:
    dedup = Deduplicator()
    dedup.remember([seq_reading("d1", 7), Tick(at(1)), *every_kind()])
    assert dedup.seen(seq_reading("d1", 7))
    with_seq = every_kind()[0]
    assert isinstance(with_seq, Reading) and with_seq.seq == 42
    assert dedup.seen(with_seq)
    assert not dedup.seen(seq_reading("d1", 8))


def malformed(payload: bytes, topic: str = "gw/v1/s1/parking/pk-1/telemetry") -> Rejected:
    return Rejected(RejectReason.BAD_JSON, "line 1", topic, payload, at(1) * 1_000_000, None)


def test_a_rejection_sent_again_with_dup_is_recognised_once_logged() -> None:
    """A rejection has no seq or timestamp: only MQTT's DUP flag says "sent again", and
    then the same topic and bytes as a logged rejection are that one."""
    dedup = Deduplicator()
    assert not dedup.seen_again(malformed(b"{garbage"), dup=False)
    assert dedup.seen_again(malformed(b"{garbage"), dup=True)
    # Identical bytes without DUP are a new message: a device may repeat its garbage.
    assert not dedup.seen_again(malformed(b"{garbage"), dup=False)
    # DUP with other bytes or another topic: a first sight, not a repeat.
    assert not dedup.seen_again(malformed(b"{other"), dup=True)
    assert not dedup.seen_again(malformed(b"{garbage", "gw/v1/s1/parking/pk-2/telemetry"), True)


def test_a_rejection_in_the_log_is_recognised_after_a_restart() -> None:
    """The log keeps a rejection's payload CRC (not its bytes): seeded from the tail, a
    redelivery after a crash between fsync and PUBACK is recognised."""
    (stored,) = decode_records(encode_records([malformed(b"\xff\xfe not json")]))
    assert isinstance(stored, Rejected) and stored.payload == b""
    dedup = Deduplicator()
    dedup.remember([stored])
    assert dedup.seen_again(malformed(b"\xff\xfe not json"), dup=True)


# ---------------------------------------------------------------- the intake writes the log


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    r.spool.close()
    r.dead.close()


def logged(spool: Spool) -> list[Record]:
    batch = spool.read_records(spool.start_of_log(), 1_000_000)
    return [] if batch is None else batch.records


async def test_a_redelivered_reading_is_acked_and_logged_once(rig: Rig) -> None:
    persisted: list[int] = []
    intake = rig.intake(on_persisted=lambda: persisted.append(rig.spool.synced_records))
    body = json.dumps({"ts": int(time.time() * 1000), "seq": 5, "temperature": 21.5}).encode()
    intake.on_publish(TOPIC, body, 1, False, 1)
    await intake.drain()
    rig.generation[0] = 2  # the PUBACK was lost: the broker sends it again
    intake.on_publish(TOPIC, body, 1, False, 1)
    intake.on_publish(TOPIC, b'{"temperature": 21.5}', 1, False, 2)  # no seq: logged
    intake.on_publish(TOPIC, b'{"temperature": 21.5}', 1, False, 3)
    await intake.drain()
    assert rig.acks.calls == [(1, [1]), (2, [1, 2, 3])]
    assert rig.stats.duplicates == 1
    assert [r.seq for r in logged(rig.spool) if isinstance(r, Reading)] == [5, None, None]
    assert rig.spool.synced_lines == 3
    assert persisted == [1, 3]  # after each fsync, records visible by then


async def test_a_reading_without_seq_sent_again_with_dup_is_acked_and_logged_once(
    rig: Rig,
) -> None:
    """A killed hub logged a status (no seq, no time) but its PUBACK never left: the
    broker sends it again, with DUP, to the next hub of the log."""
    intake = rig.intake()
    dup = [False]
    intake._dup = lambda: dup[0]
    intake.on_publish(TOPIC, b'{"temperature": 21.5}', 1, False, 1)
    await intake.drain()
    rig.generation[0] = 2
    dup[0] = True
    intake.on_publish(TOPIC, b'{"temperature": 21.5}', 1, False, 1)
    await intake.drain()
    assert rig.stats.duplicates == 1 and rig.acks.calls == [(1, [1]), (2, [1])]
    assert len([r for r in logged(rig.spool) if isinstance(r, Reading)]) == 1
    assert rig.spool.synced_lines == 1


async def test_ticks_are_logged_in_frames_of_their_own_and_the_writer_skips_them(
    rig: Rig,
) -> None:
    intake = rig.intake()
    intake.add_tick(at(10))
    await intake.drain()
    assert logged(rig.spool) == [Tick(at(10))]
    assert rig.spool.pending_lines == 0
    assert rig.spool.read(100) is None  # nothing for InfluxDB: the cursor moves past it
    assert rig.spool.pending_bytes == 0
    intake.on_publish(TOPIC, b'{"temperature": 21.5}', 1, False, 1)
    intake.add_tick(at(11))
    await intake.drain()
    batch = rig.spool.read(100)
    assert batch is not None and batch.lines == 1
    assert [type(r) for r in logged(rig.spool)] == [Tick, Reading, Tick]


async def test_without_consumers_no_records_are_logged(rig: Rig) -> None:
    intake = rig.intake()
    intake._records = False  # the hub's setting when events are off
    intake.on_publish(TOPIC, b'{"temperature": 21.5}', 1, False, 1)
    intake.on_publish(TOPIC, b"{", 1, False, 2)
    intake.add_tick(at(1))
    await intake.drain()
    assert rig.acks.acked == [1, 2] and rig.spool.synced_lines == 1
    assert logged(rig.spool) == [] and rig.spool.synced_records == 0


# ---------------------------------------------------------------- the spool keeps records


def open_spool(directory: Path, **kwargs: int) -> Spool:
    spool = Spool(directory, max_bytes=kwargs.pop("max_bytes", 1 << 30), **kwargs)
    spool.open()
    return spool


def read_everything(spool: Spool, start: Cursor, chunk: int) -> tuple[list[Record], Cursor]:
    out: list[Record] = []
    while (batch := spool.read_records(start, chunk)) is not None:
        assert batch.frames >= 1 and batch.end > start
        out += batch.records
        start = batch.end
    return out, start


def many(n: int) -> list[Record]:
    kinds = every_kind()
    return [
        replace(r, ts_ns=r.ts_ns + i * 10**6) if isinstance(r, Reading) else r
        for i in range(n)
        for r in kinds
    ]


@pytest.mark.parametrize("cache_records", [1_000_000, 10])
def test_records_read_back_from_memory_and_from_disk_are_the_same(
    tmp_path: Path, cache_records: int
) -> None:
    directory = tmp_path / "spool"
    records = many(60)
    spool = open_spool(directory, segment_bytes=4_096, cache_records=cache_records)
    ends = log_records(spool, records, per_frame=7)
    fresh, end = read_everything(spool, spool.start_of_log(), 25)
    assert end == ends[-1] == spool.end_of_log()
    assert spool.records_after(spool.start_of_log()) == len(records)
    # From a frame in the middle (a consumer's committed position) too.
    middle, _ = read_everything(spool, ends[10], 1)
    spool.close()
    again = open_spool(directory, segment_bytes=4_096)
    try:
        assert len(list(directory.glob("*.seg"))) > 2  # read across rotations
        stored, end_again = read_everything(again, again.start_of_log(), 25)
        assert end_again == end
        assert as_stored(fresh) == stored == as_stored(records)
        assert as_stored(middle) == as_stored(records[11 * 7 :])
        tail = again.tail_records(14)  # whole frames: about 14
        assert 14 <= len(tail) < 14 + 7 and tail == as_stored(records[-len(tail) :])
    finally:
        again.close()


def test_records_are_visible_only_once_synced(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "spool")
    try:
        records: list[Record] = [Tick(at(1))]
        spool.append(encode_frame([], 0, records), 0, records)
        assert spool.read_records(spool.start_of_log(), 10) is None
        assert spool.records_after(spool.start_of_log()) == 0
        spool.sync()
        batch = spool.read_records(spool.start_of_log(), 10)
        assert batch is not None and batch.records == records
        assert spool.latest_event_ms == at(1)
    finally:
        spool.close()


def committed_by_the_writer(spool: Spool) -> None:
    """What the InfluxDB writer does once everything is stored."""
    while (batch := spool.read(1_000)) is not None:
        spool.commit(batch.end, batch.lines)


def test_hold_keeps_what_the_writer_committed_until_release(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = open_spool(directory, segment_bytes=2_048)
    try:
        start = spool.hold("rules", None)
        assert start == spool.start_of_log()
        ends = log_records(spool, many(30), per_frame=6)
        segments = sorted(directory.glob("*.seg"))
        assert len(segments) > 3
        committed_by_the_writer(spool)
        assert spool.pending_bytes == 0 and spool.retained_bytes > 0
        assert sorted(directory.glob("*.seg")) == segments  # kept for the rules
        records, _ = read_everything(spool, start, 50)
        assert len(records) == 30 * 6
        spool.release("rules", ends[-2])  # all but the last frame
        left = sorted(directory.glob("*.seg"))
        assert left == [p for p in segments if int(p.stem) >= ends[-2].segment]
        assert spool.retained_bytes == spool._bytes_from(ends[-2])
        spool.release("rules", ends[-1])
        assert spool.retained_bytes == 0
        spool.unhold("rules")
    finally:
        spool.close()


def test_the_oldest_holder_decides(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "spool", segment_bytes=2_048)
    try:
        ends = log_records(spool, many(20), per_frame=6)
        spool.hold("rules", ends[2])
        spool.hold("anomaly", ends[8])
        committed_by_the_writer(spool)
        assert spool.retained_bytes == spool._bytes_from(ends[2])
        spool.release("rules", ends[-1])
        assert spool.retained_bytes == spool._bytes_from(ends[8])
        assert spool.start_of_log().segment <= ends[8].segment
    finally:
        spool.close()


def test_hold_at_a_position_the_log_no_longer_has_starts_at_its_oldest_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    spool = open_spool(directory, segment_bytes=2_048)
    try:
        log_records(spool, many(40), per_frame=6)
        committed_by_the_writer(spool)  # nobody held it: finished segments are gone
        oldest = spool.start_of_log()
        assert oldest.segment > 0
        with caplog.at_level(logging.WARNING, logger="ingest.spool"):
            assert spool.hold("rules", Cursor(0, 0)) == oldest
            assert spool.hold("anomaly", Cursor(oldest.segment + 99, 0)) == oldest  # never was
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2 and all("does not hold" in w for w in warnings)
        assert "consumer rules resumes at Cursor(segment=0, offset=0)" in warnings[0]
        records, _ = read_everything(spool, oldest, 100)
        assert records  # what the log still has, from its oldest frame
    finally:
        spool.close()


def test_full_counts_from_the_oldest_holder(tmp_path: Path) -> None:
    records: list[Record] = [Tick(at(1))]
    frame = encode_frame([b"m v=1i 1\n"], 0, records)
    spool = open_spool(tmp_path / "spool", max_bytes=3 * len(frame))
    try:
        spool.hold("rules", None)
        for _ in range(3):
            spool.append(frame, 1, records)
            spool.sync()
        assert spool.full
        committed_by_the_writer(spool)
        assert spool.pending_bytes == 0
        assert spool.full  # InfluxDB has it all, the rules do not
        spool.release("rules", Cursor(spool.end_of_log().segment, len(frame)))
        assert not spool.full
    finally:
        spool.close()


def test_a_spool_of_the_old_format_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    # Format 1: frames of lines only, and no `format` file.
    (directory / f"{0:016d}.seg").write_bytes(b"\x09\x00\x00\x00" + b"\x00" * 20 + b"m v=1i 1\n")
    spool = Spool(directory, max_bytes=1 << 30)
    with pytest.raises(SpoolError, match=r"older GridWatch \(frames without records\)"):
        spool.open()
    spool.close()
    assert not (directory / "format").exists()  # left as it was, for the old version
    (directory / "format").write_text("gridwatch-spool 9\n")
    with pytest.raises(SpoolError, match="gridwatch-spool 9"):
        spool.open()
    spool.close()


def test_a_new_spool_directory_is_stamped_with_the_format(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = open_spool(directory)
    append_frame(spool, [Tick(at(1))])
    spool.close()
    assert (directory / "format").read_text() == FORMAT
    open_spool(directory).close()  # and opens again


def test_the_writer_reads_lines_past_frames_without_any(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "spool")
    try:
        append_frame(spool, [Tick(at(1))])
        append_frame(spool, [Tick(at(2))])
        append_frame(spool, [reading("smoke", "sd-1", 3, {"temperature": 20.0})])
        append_frame(spool, [Tick(at(4))])
        batch = spool.read(100)
        assert batch is not None and batch.lines == 1
        assert batch.payload.startswith(b"smoke,") and batch.payload.count(b"\n") == 1
        spool.commit(batch.end, batch.lines)
        assert spool.read(100) is None
        assert spool.pending_lines == 0 and spool.pending_bytes == 0
        # The records are all still there for the consumers.
        records, _ = read_everything(spool, spool.start_of_log(), 100)
        assert [type(r) for r in records] == [Tick, Tick, Reading, Tick]
    finally:
        spool.close()
