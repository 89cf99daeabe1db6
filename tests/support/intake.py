"""Shared test helpers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.deadletter import DeadLetterStore
from ingest.decode import Decoder
from ingest.intake import Intake
from ingest.spool import Spool
from ingest.stats import IngestStats
from sensors.base import DecodeContext, keyed_hash
from sensors.registry import KINDS


@dataclass
class Acks:
    """The fake ack function, recording what was durable at the moment of each ack."""

    spool: Spool
    dead: DeadLetterStore
    calls: list[tuple[int, list[int]]] = field(default_factory=list)
    pending_at_ack: list[int] = field(default_factory=list)
    dead_at_ack: list[int] = field(default_factory=list)

    def __call__(self, generation: int, packet_ids: list[int]) -> int:
        self.calls.append((generation, list(packet_ids)))
        self.pending_at_ack.append(self.spool.pending_lines)
        self.dead_at_ack.append(self.dead.written)
        return len(packet_ids)

    @property
    def acked(self) -> list[int]:
        return [pid for _, ids in self.calls for pid in ids]


@dataclass
class Rig:
    spool: Spool
    dead: DeadLetterStore
    stats: IngestStats
    acks: Acks
    generation: list[int]
    reading: list[bool]

    def intake(self, *, on_persisted: Callable[[], None] = lambda: None, **kwargs: float) -> Intake:
        decoder = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: keyed_hash(b"k", v)))
        return Intake(
            decoder,
            self.spool,
            self.dead,
            self.stats,
            ack=self.acks,
            generation=lambda: self.generation[0],
            set_reading=self.reading.append,
            batch_max=int(kwargs.pop("batch_max", 2000)),
            linger_s=kwargs.pop("linger_s", 0.005),
            high_water=int(kwargs.pop("high_water", 20_000)),
            on_persisted=on_persisted,
        )


def make_rig(tmp_path: Path, max_bytes: int = 1 << 30) -> Rig:
    spool = Spool(tmp_path / "spool", max_bytes=max_bytes)
    spool.open()
    dead = DeadLetterStore(tmp_path / "dl", max_bytes=1 << 20, keep=2)
    dead.open()
    return Rig(spool, dead, IngestStats(), Acks(spool, dead), [1], [])


@contextlib.asynccontextmanager
async def running(intake: Intake) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(intake.run())
    try:
        yield task
    finally:
        intake.stop()
        await asyncio.wait_for(task, 5)
        await intake.drain()


async def wait_for(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Poll until the condition holds; fail after limit_s."""
    step = 0.002
    for _ in range(int(limit_s / step)):
        if condition():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {limit_s} s")
