"""Intake: decode → spool or dead letters → fsync → ack, with a real spool on tmp_path."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.deadletter import read_dead_letters
from ingest.spool import Spool, encode_frame
from ingest.stats import AHEAD_SOURCES, IngestStats
from tests.support.intake import Rig, make_rig, running, wait_for

TOPIC = "gw/v1/s1/smoke/sd-1/telemetry"
GOOD = b'{"temperature": 21.5}'
BAD = b'{"temperature": "warm"}'


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    r.spool.close()
    r.dead.close()


def spooled_lines(spool: Spool) -> list[bytes]:
    batch = spool.read(1_000_000)
    return batch.payload.splitlines() if batch else []


async def test_ack_only_after_the_spool_fsync(rig: Rig) -> None:
    intake = rig.intake()
    async with running(intake):
        for pid in (1, 2, 3):
            intake.on_publish(TOPIC, GOOD, 1, False, pid)
        await wait_for(lambda: rig.acks.acked == [1, 2, 3])
    # At the moment of the (single) ack, the three lines were already durable.
    assert rig.acks.calls == [(1, [1, 2, 3])]
    assert rig.acks.pending_at_ack == [3]
    assert rig.spool.pending_lines == 3
    assert len(spooled_lines(rig.spool)) == 3
    assert rig.stats.received == 3
    assert rig.stats.acked == 3


async def test_every_ack_sees_its_lines_in_the_spool(rig: Rig) -> None:
    intake = rig.intake(batch_max=2)
    async with running(intake):
        for pid in range(1, 8):
            intake.on_publish(TOPIC, GOOD, 1, False, pid)
            await asyncio.sleep(0)
        await wait_for(lambda: len(rig.acks.acked) == 7)
    acked_so_far = 0
    for (_, ids), pending in zip(rig.acks.calls, rig.acks.pending_at_ack, strict=True):
        acked_so_far += len(ids)
        assert pending >= acked_so_far
    assert sorted(rig.acks.acked) == list(range(1, 8))


async def test_rejects_go_to_dead_letters_and_are_acked(rig: Rig) -> None:
    intake = rig.intake()
    async with running(intake):
        intake.on_publish(TOPIC, GOOD, 1, False, 1)
        intake.on_publish(TOPIC, BAD, 1, False, 2)
        intake.on_publish("not/a/gridwatch/topic", b"x", 1, False, 3)
        await wait_for(lambda: len(rig.acks.acked) == 3)
    assert sorted(rig.acks.acked) == [1, 2, 3]
    assert rig.acks.dead_at_ack[-1] == 2  # dead letters written before the ack
    assert rig.spool.pending_lines == 1
    records = list(read_dead_letters(rig.dead.directory, keep=rig.dead.keep))
    assert [r["stage"] for r in records] == ["decode", "decode"]
    assert {r["reason"] for r in records} == {"invalid_payload", "bad_topic"}
    payloads = {base64.b64decode(r["payload_b64"]) for r in records}
    assert payloads == {BAD, b"x"}
    assert {r["topic"] for r in records} == {TOPIC, "not/a/gridwatch/topic"}
    assert rig.stats.rejected == {"invalid_payload": 1, "bad_topic": 1}
    assert rig.stats.dead_lettered == 2


async def test_only_rejects_still_acked(rig: Rig) -> None:
    intake = rig.intake()
    async with running(intake):
        intake.on_publish(TOPIC, b"{", 1, False, 9)
        await wait_for(lambda: rig.acks.acked == [9])
    assert rig.spool.pending_lines == 0
    assert rig.dead.written == 1


async def test_qos0_messages_are_stored_but_not_acked(rig: Rig) -> None:
    intake = rig.intake()
    intake.on_publish(TOPIC, GOOD, 0, False, 0)
    intake.on_publish(TOPIC, GOOD, 1, False, 5)
    await intake.drain()
    assert rig.acks.calls == [(1, [5])]
    assert rig.spool.pending_lines == 2


async def test_generation_change_splits_batches(rig: Rig) -> None:
    intake = rig.intake()
    intake.on_publish(TOPIC, GOOD, 1, False, 1)
    intake.on_publish(TOPIC, GOOD, 1, False, 2)
    rig.generation[0] = 2  # reconnected: packet ids of the old connection are void
    intake.on_publish(TOPIC, GOOD, 1, False, 1)
    await intake.drain()
    assert rig.acks.calls == [(1, [1, 2]), (2, [1])]
    assert rig.acks.pending_at_ack == [2, 3]


async def test_batch_max_seals_a_batch(rig: Rig) -> None:
    intake = rig.intake(batch_max=3)
    for pid in range(1, 8):
        intake.on_publish(TOPIC, GOOD, 1, False, pid)
    await intake.drain()
    assert [ids for _, ids in rig.acks.calls] == [[1, 2, 3], [4, 5, 6], [7]]
    assert rig.acks.pending_at_ack == [3, 6, 7]


async def test_stop_and_drain_persist_everything(rig: Rig) -> None:
    intake = rig.intake(linger_s=60.0)  # nothing would be flushed by the linger
    task = asyncio.create_task(intake.run())
    for pid in range(1, 11):
        intake.on_publish(TOPIC, GOOD if pid % 2 else BAD, 1, False, pid)
    await asyncio.sleep(0.01)
    assert rig.acks.calls == []
    intake.stop()
    await asyncio.wait_for(task, 5)
    await intake.drain()
    assert sorted(rig.acks.acked) == list(range(1, 11))
    assert rig.spool.pending_lines == 5
    assert rig.dead.written == 5
    assert rig.stats.acked == 10


async def test_add_point_goes_through_the_spool(rig: Rig) -> None:
    intake = rig.intake()
    intake.add_point(b"hub_stats received=1i 1\n")
    await intake.drain()
    assert spooled_lines(rig.spool) == [b"hub_stats received=1i 1"]


async def test_reading_pauses_at_high_water(rig: Rig) -> None:
    intake = rig.intake(high_water=4)
    for pid in range(1, 5):
        intake.on_publish(TOPIC, GOOD, 0, False, pid)
    assert rig.reading == [False]
    await intake.drain()
    assert rig.reading == [False, True]


async def test_full_spool_withholds_acks_until_space_is_freed(tmp_path: Path) -> None:
    frame = encode_frame([b"old,site=s v=1i 1\n"], 1)
    r = make_rig(tmp_path, max_bytes=len(frame))
    try:
        r.spool.append(frame, 1)
        r.spool.sync()
        assert r.spool.full
        intake = r.intake()
        task = asyncio.create_task(intake.run())
        intake.on_publish(TOPIC, GOOD, 1, False, 1)
        intake.on_publish(TOPIC, GOOD, 1, False, 2)
        await wait_for(lambda: r.stats.backpressure_waits >= 1)
        await asyncio.sleep(0.05)
        assert r.acks.calls == []
        assert r.spool.pending_lines == 1

        intake.space_freed()  # a wake-up without room changes nothing
        await asyncio.sleep(0.05)
        assert r.acks.calls == []

        batch = r.spool.read(10)  # the writer stores the old line and commits
        assert batch is not None
        r.spool.commit(batch.end, batch.lines)
        intake.space_freed()
        await wait_for(lambda: r.acks.acked == [1, 2])
        assert r.acks.pending_at_ack == [2]
        intake.stop()
        await asyncio.wait_for(task, 5)
        await intake.drain()
        lines = spooled_lines(r.spool)
        assert len(lines) == 2
        assert all(line.startswith(b"smoke,") for line in lines)
    finally:
        r.spool.close()
        r.dead.close()


async def test_readings_dated_ahead_of_the_hub_clock_are_counted_by_device(rig: Rig) -> None:
    """Transit only ages a reading: one dated in the future says its device's clock runs
    fast. Counted once per logged reading (a redelivery is not logged again)."""
    now_ms = time.time_ns() // 1_000_000

    def message(device: str, ahead_s: float, seq: int) -> tuple[str, bytes]:
        body = {"temperature": 21.5, "ts": now_ms + round(ahead_s * 1000), "seq": seq}
        return f"gw/v1/s1/smoke/{device}/telemetry", json.dumps(body).encode()

    sent = [
        message("sd-fast", 30.0, 1),
        message("sd-fast", 30.5, 2),
        message("sd-near", 0.5, 1),  # within the hub's and the device's clock error
        message("sd-old", -60.0, 1),  # old: delayed in transit, not a fast clock
        message("sd-fast", 30.0, 1),  # the broker sent it again
    ]
    intake = rig.intake()
    async with running(intake):
        for pid, (topic, payload) in enumerate(sent, start=1):
            intake.on_publish(topic, payload, 1, False, pid)
        await wait_for(lambda: len(rig.acks.acked) == len(sent))
    assert rig.stats.duplicates == 1
    assert rig.stats.readings_ahead == 2
    assert rig.stats.ahead_by == {"sd-fast": 2}
    assert 29.0 < rig.stats.ahead_max_s <= 30.5
    shown = rig.stats.snapshot()
    assert shown["readings_ahead"] == 2 and shown["readings_ahead_by"] == {"sd-fast": 2}


def test_the_names_of_fast_clocks_are_bounded() -> None:
    stats = IngestStats()
    for i in range(AHEAD_SOURCES + 50):
        stats.note_ahead(f"made-up-{i}", 5_000_000_000)
    stats.note_ahead("made-up-0", 9_000_000_000)
    assert stats.readings_ahead == AHEAD_SOURCES + 51
    assert len(stats.ahead_by) == AHEAD_SOURCES and stats.ahead_by["made-up-0"] == 2
    assert stats.ahead_max_s == 9.0
    assert list(stats.snapshot()["readings_ahead_by"]) == [
        "made-up-0", "made-up-1", "made-up-10", "made-up-11", "made-up-12",
    ]  # fmt: skip
