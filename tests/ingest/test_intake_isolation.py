"""Issue 18, intake: whatever raises for one message stays with that message.

It is dead-lettered as `internal_error` (the exception type in the detail), counted and
acked after the fsync like any rejection; the messages around it are untouched, in the
spool's lines and in its records (the log the detection consumers read). A
message under the hubs' `_hub/` level that is no hub presence is a `reserved_topic`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

import pytest

from ingest.deadletter import read_dead_letters
from ingest.decode import Rejected
from ingest.intake import Intake
from ingest.spool import Spool
from sensors.base import Reading
from tests.support.intake import Rig, make_rig

TOPIC = "gw/v1/s1/smoke/sd-1/telemetry"
GOOD = b'{"temperature": 21.5}'
POISON = b'{"temperature": 66.6}'


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    r.spool.close()
    r.dead.close()


def letters(rig: Rig) -> list[dict[str, Any]]:
    return list(read_dead_letters(rig.dead.directory, keep=rig.dead.keep))


def spooled(rig: Rig) -> list[bytes]:
    batch = rig.spool.read(1_000_000)
    return batch.payload.splitlines() if batch else []


def poison_on(intake: Intake, attribute: str, target: str, exc: Exception) -> None:
    """Make `intake.<attribute>.<target>` raise `exc` for the poison payload only."""
    owner = getattr(intake, attribute)
    original = getattr(owner, target)

    def poisoned(*args: Any) -> Any:
        subject = args[1] if target == "decode" else args[0]
        if subject == POISON or (
            isinstance(subject, Reading) and subject.fields == {"temperature": 66.6}
        ):
            raise exc
        return original(*args)

    setattr(owner, target, poisoned)


async def publish_around_the_poison(rig: Rig, intake: Intake) -> None:
    intake.on_publish(TOPIC, GOOD, 1, False, 1)
    intake.on_publish(TOPIC, POISON, 1, False, 2)
    intake.on_publish(TOPIC, GOOD, 1, False, 3)
    await intake.drain()


@pytest.mark.parametrize(
    ("attribute", "target", "stage"),
    [("_decoder", "decode", "decode"), ("_encoder", "encode", "line protocol")],
)
async def test_a_raising_step_dead_letters_that_message_only(
    rig: Rig, attribute: str, target: str, stage: str
) -> None:
    intake = rig.intake()
    poison_on(intake, attribute, target, OverflowError("integer division result too large"))
    await publish_around_the_poison(rig, intake)
    assert sorted(rig.acks.acked) == [1, 2, 3]  # all acked, once
    assert rig.acks.dead_at_ack[-1] == 1  # the dead letter was durable before the ack
    assert len(spooled(rig)) == 2
    (letter,) = letters(rig)
    assert letter["reason"] == "internal_error"
    assert letter["detail"] == f"{stage} raised OverflowError"
    assert base64.b64decode(letter["payload_b64"]) == POISON
    assert letter["topic"] == TOPIC
    assert rig.stats.rejected == {"internal_error": 1}
    assert rig.stats.received == 3 and rig.stats.acked == 3 and rig.stats.dead_lettered == 1
    # The log's records, in arrival order: the rules see the rejection between the two.
    logged = rig.spool.read_records(rig.spool.start_of_log(), 100)
    assert logged is not None
    assert [type(r).__name__ for r in logged.records] == ["Reading", "Rejected", "Reading"]
    rejection = logged.records[1]
    assert isinstance(rejection, Rejected) and rejection.reason.value == "internal_error"


class Level(StrEnum):
    HIGH = "high"


class Floor(IntEnum):
    SECOND = 2


async def test_a_value_the_log_cannot_hold_as_it_is_costs_nothing(rig: Rig) -> None:
    """A plugin bug: field values of `str` and `int` subclasses (enums), which the line
    protocol takes as their plain values but `marshal` (the log's records) refuses. The
    log stores the plain values too: the batch is never lost over one message."""
    intake = rig.intake()
    original = intake._decoder.decode

    def decode(topic: str, payload: bytes, received_ns: int) -> Reading | Rejected:
        result = original(topic, payload, received_ns)
        if payload == POISON and isinstance(result, Reading):
            fields = {**result.fields, "level": Level.HIGH, "floor": Floor.SECOND}
            return replace(result, fields=fields)
        return result

    intake._decoder.decode = decode  # type: ignore[method-assign]  # fault injection
    await publish_around_the_poison(rig, intake)
    assert sorted(rig.acks.acked) == [1, 2, 3]
    assert len(spooled(rig)) == 3 and letters(rig) == []
    assert b'level="high",floor=2i' in spooled(rig)[1]
    rig.spool.close()
    rig.spool = Spool(rig.spool.directory, max_bytes=rig.spool.max_bytes)
    rig.spool.open()  # a restart: from disk, not from the records kept in memory
    logged = rig.spool.read_records(rig.spool.start_of_log(), 100)
    assert logged is not None
    values = [r.fields for r in logged.records if isinstance(r, Reading)]
    assert values[1] == {"temperature": 66.6, "level": "high", "floor": 2}
    assert type(values[1]["level"]) is str and type(values[1]["floor"]) is int


async def test_every_kind_of_exception_is_caught(rig: Rig) -> None:
    intake = rig.intake()
    errors: list[Exception] = [
        KeyError("x"),
        RecursionError(),
        MemoryError(),
        AssertionError(),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
    ]
    original = intake._decoder.decode
    calls = iter(errors)

    def decode(topic: str, payload: bytes, received_ns: int) -> Reading | Rejected:
        error = next(calls, None)
        if error is not None:
            raise error
        return original(topic, payload, received_ns)

    intake._decoder.decode = decode  # type: ignore[method-assign]  # fault injection
    for pid in range(1, len(errors) + 2):
        intake.on_publish(TOPIC, GOOD, 1, False, pid)
    await intake.drain()
    assert sorted(rig.acks.acked) == list(range(1, len(errors) + 2))
    assert sorted(r["detail"] for r in letters(rig)) == sorted(
        f"decode raised {type(e).__name__}" for e in errors
    )
    assert len(spooled(rig)) == 1
    assert rig.stats.rejected == {"internal_error": len(errors)}


async def test_a_redelivered_poison_message_is_acked_and_dead_lettered_once(
    rig: Rig,
) -> None:
    """The broker redelivers what was not acked. A message that once stopped the hub is
    caught, dead-lettered and acked on its first delivery: there is no second one; and a
    redelivery of a message that was never acked (the hub died before) is handled once."""
    first = rig.intake()
    poison_on(first, "_decoder", "decode", OverflowError())
    first.on_publish(TOPIC, POISON, 1, False, 7)  # the hub dies before persisting
    assert rig.acks.acked == [] and letters(rig) == []
    rig.generation[0] = 2  # restarted: the broker sends it again on the new connection
    second = rig.intake()
    poison_on(second, "_decoder", "decode", OverflowError())
    second.on_publish(TOPIC, POISON, 1, False, 1)
    second.on_publish(TOPIC, GOOD, 1, False, 2)
    await second.drain()
    assert rig.acks.calls == [(2, [1, 2])]
    assert [r["reason"] for r in letters(rig)] == ["internal_error"]
    assert len(spooled(rig)) == 1


async def test_hub_presence_is_acked_at_once_and_not_counted(rig: Rig) -> None:
    intake = rig.intake()
    intake.on_reserved("gw/v1/_hub/hub-a/status", b"online", 0, True, 0)
    intake.on_reserved("gw/v1/_hub/hub-b/status", b"offline", 1, True, 5)
    await intake.drain()
    assert rig.acks.calls == [(1, []), (1, [5])]
    assert letters(rig) == []
    assert rig.stats.rejected == {} and rig.stats.received == 0


async def test_other_messages_under_hub_are_reserved_topic_rejections(rig: Rig) -> None:
    intake = rig.intake()
    intake.on_reserved("gw/v1/_hub/hub-a/status", b'{"temperature": 20}', 1, False, 3)
    intake.on_reserved("gw/v1/_hub/x/telemetry", b"online", 1, False, 4)
    intake.on_reserved("gw/v1/_hub/x", b"", 0, False, 0)
    await intake.drain()
    assert sorted(rig.acks.acked) == [3, 4]
    assert rig.acks.dead_at_ack[-1] == 3
    assert [r["reason"] for r in letters(rig)] == ["reserved_topic"] * 3
    assert rig.stats.rejected == {"reserved_topic": 3}
    assert rig.stats.received == 3 and rig.stats.dead_lettered == 3


async def test_a_raising_reserved_check_is_an_internal_error(rig: Rig) -> None:
    intake = rig.intake()

    def broken(topic: str, payload: bytes, received_ns: int) -> Rejected | None:
        raise ValueError("bug")

    intake._decoder.decode_reserved = broken  # type: ignore[method-assign]  # fault injection
    intake.on_reserved("gw/v1/_hub/hub-a/status", b"online", 1, False, 9)
    await intake.drain()
    assert rig.acks.acked == [9]
    assert [(r["reason"], r["detail"]) for r in letters(rig)] == [
        ("internal_error", "reserved topic raised ValueError")
    ]
