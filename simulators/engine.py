"""Deterministic discrete-event engine: a site's devices as one stream of MQTT messages.

`simulate` merges every device's state machine on a heap ordered by (simulated time,
device id), so a seed gives the same messages byte for byte however fast they are
consumed. `pace` releases them in real time, accelerated, or as fast as possible; the
clock and sleep are injected so tests need not wait.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sensors.base import STATUS
from sensors.topics import DEFAULT_PREFIX, device_root, normalise_prefix
from simulators.behaviour import (
    DEFAULT_RATES,
    MS_PER_S,
    Behaviour,
    Emission,
    LocalClock,
    Rates,
    behaviour_for,
)
from sites.model import Site

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One message to publish, stamped with the simulated time it belongs to.

    `sim_ms` is the engine's clock; the payload's `ts` equals it, or leads it by a few
    ms when one device sends several messages at one instant (ts is strictly increasing
    per device, so each message is a distinct InfluxDB point).
    """

    sim_ms: int
    device_id: str
    kind: str
    channel: str
    topic: str
    payload: bytes
    retain: bool
    qos: int = 1


def epoch_ms(instant: datetime) -> int:
    """Epoch milliseconds of an aware datetime, in integers (no float rounding)."""
    if instant.tzinfo is None:
        raise ValueError("simulation start must be timezone-aware; naive time is ambiguous")
    return (instant - _EPOCH) // _ONE_MS


def encode_payload(emission: Emission, cell: str) -> bytes:
    """Compact JSON: ts, seq and cell first, then the kind's fields (status: ts only)."""
    body: dict[str, object] = {"ts": emission.ts_ms}
    if emission.channel != STATUS:
        body["seq"] = emission.seq
        body["cell"] = cell
    body.update(emission.payload)
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def simulate(
    site: Site,
    *,
    start: datetime,
    duration_s: float,
    seed: int,
    rates: Rates = DEFAULT_RATES,
    topic_prefix: str = DEFAULT_PREFIX,
    exclude: Collection[str] = (),
) -> Iterator[SimMessage]:
    """Messages of every device of the site in [start, start + duration), in time order.

    `exclude`: devices driven by something else (a dataset replay), which must not also
    produce background traffic (their seq and ts would clash)."""
    start_ms = epoch_ms(start)
    end_ms = start_ms + round(duration_s * MS_PER_S)
    clock = LocalClock(site.tz)
    behaviours: list[Behaviour] = [
        behaviour_for(site, device, seed=seed, start_ms=start_ms, clock=clock, rates=rates)
        for device in site.devices
        if device.id not in exclude
    ]
    prefix = normalise_prefix(topic_prefix)
    # Each device's topics but the channel, built once: `root + channel` per message.
    roots = [device_root(prefix, site.site, b.kind, b.device_id) + "/" for b in behaviours]
    # Device ids are unique in a site: they break ties, the index is never compared.
    heap = [(b.next_ms, b.device_id, i) for i, b in enumerate(behaviours)]
    heapq.heapify(heap)
    while heap:
        now_ms, device_id, i = heap[0]
        if now_ms >= end_ms:
            return
        behaviour = behaviours[i]
        for emission in behaviour.step_ms(now_ms):
            yield SimMessage(
                sim_ms=now_ms,
                device_id=device_id,
                kind=behaviour.kind,
                channel=emission.channel,
                topic=roots[i] + emission.channel,
                payload=encode_payload(emission, behaviour.cell),
                retain=emission.retain,
            )
        heapq.heapreplace(heap, (behaviour.next_ms, device_id, i))


def serialise(messages: Iterable[SimMessage]) -> bytes:
    """One line per message (time, topic, retain, qos, payload): compare runs byte for byte."""
    return b"".join(
        f"{m.sim_ms} {m.topic} {int(m.retain)} {m.qos} ".encode() + m.payload + b"\n"
        for m in messages
    )


async def pace(
    messages: Iterable[SimMessage],
    *,
    speed: float | None,
    start_sim_ms: int,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[SimMessage]:
    """Release each message no earlier than its simulated offset divided by `speed`.

    speed 1 is real time, 60 is a minute per second, None is as fast as possible (never
    sleeps). Lateness is not carried forward: a slow consumer catches up in a burst,
    so simulated time keeps its rate on average.
    """
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be positive or None, not {speed}")
    started = clock()
    for message in messages:
        if speed is not None:
            due = started + (message.sim_ms - start_sim_ms) / MS_PER_S / speed
            delay = due - clock()
            if delay > 0:
                await sleep(delay)
        yield message
