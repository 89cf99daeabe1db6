"""Applying scenario plans to a site's background traffic, and running scenarios.

`apply` merges plans into the background stream and keeps each device's protocol
intact (seq +1, ts strictly increasing); `run_scenarios` runs the whole thing and
stamps each label with the times of the first and last message carrying its incident.
Every scenario draws from its own random stream, seeded from (seed, scenario name), so
adding a scenario to a run never changes what the others do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Final

from sensors import topics
from sensors.base import EVENT, STATUS, TELEMETRY
from simulators.behaviour import MS_PER_MIN, MS_PER_S
from simulators.engine import SimMessage, epoch_ms, simulate
from simulators.labels import Label, sorted_labels
from simulators.scenarios.catalogue import SCENARIOS
from simulators.scenarios.plan import (
    Injection,
    Override,
    ScenarioError,
    ScenarioPlan,
    Silence,
    Stuck,
)
from sites.model import Site

_ENVELOPE: Final = frozenset({"ts", "seq", "cell"})
_PASSAGE_FOLLOWS: Final = frozenset({"door_opened", "door_closed"})
"""Background door events that belong to the grant before them."""


# --- merging ------------------------------------------------------------------------


class _DeviceState:
    """Protocol state of one device touched by a plan: what it last sent."""

    __slots__ = ("dropping_passage", "frozen", "last_seq", "last_ts")

    def __init__(self) -> None:
        self.last_seq = 0
        self.last_ts: int | None = None
        self.frozen: dict[str, object] | None = None
        self.dropping_passage: bool | None = None
        """Whether the door's current background passage (grant, opened, closed) is
        dropped: a passage is kept or dropped whole, never cut by a silence's edge."""

    def stamp(self, body: dict[str, object], channel: str, ts_ms: int) -> None:
        ts = ts_ms if self.last_ts is None or ts_ms > self.last_ts else self.last_ts + 1
        self.last_ts = ts
        body["ts"] = ts
        if channel != STATUS:
            self.last_seq += 1
            body["seq"] = self.last_seq


def _encode(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def apply(
    background: Iterable[SimMessage],
    plans: Sequence[ScenarioPlan],
    site: Site,
    topic_prefix: str = topics.DEFAULT_PREFIX,
    observe: Callable[[str, int], None] | None = None,
) -> Iterator[SimMessage]:
    """Merge plans into a time-ordered background stream, keeping device protocols.

    Injections go in time order (ties: device id, then plan order), after a background
    message of the same instant and device. Devices a plan touches get their seq
    renumbered and ts kept strictly increasing (their JSON re-encoded); others pass
    untouched, as do raw-bytes injections. A silence drops a door's background passage
    (grant, opened, closed) whole, by the grant's time. `observe(label_id, ts_ms)` hears
    every message carrying a labelled incident."""
    injections = sorted(
        (inj for plan in plans for inj in plan.injections),
        key=lambda inj: (inj.at_ms, inj.device_id),  # stable: plan order breaks ties
    )
    silences: dict[str, list[Silence]] = {}
    stuck: dict[str, list[Stuck]] = {}
    overrides: dict[str, list[Override]] = {}
    for plan in plans:
        for silence in plan.silences:
            silences.setdefault(silence.device_id, []).append(silence)
        for freeze in plan.stuck:
            stuck.setdefault(freeze.device_id, []).append(freeze)
        for override in plan.overrides:
            overrides.setdefault(override.device_id, []).append(override)
    touched = {inj.device_id for inj in injections} | silences.keys() | stuck.keys()
    touched |= overrides.keys()
    states = {device_id: _DeviceState() for device_id in touched}

    def heard(label: str, ts_ms: int) -> None:
        if label and observe is not None:
            observe(label, ts_ms)

    def injected(inj: Injection) -> SimMessage:
        device = site.device(inj.device_id)
        topic = topics.device_topic(topic_prefix, site.site, device.kind, device.id, inj.channel)
        retain = inj.channel == STATUS
        if isinstance(inj.payload, bytes):
            heard(inj.label, inj.at_ms)
            return SimMessage(
                inj.at_ms, device.id, device.kind, inj.channel, topic, inj.payload, retain
            )
        body: dict[str, object] = {"ts": 0}
        if inj.channel != STATUS:
            body["seq"] = 0
            body["cell"] = device.cell
        body.update(inj.payload)
        state = states[device.id]
        state.stamp(body, inj.channel, inj.at_ms)
        ts = body["ts"]
        assert isinstance(ts, int)
        heard(inj.label, ts)
        return SimMessage(
            inj.at_ms, device.id, device.kind, inj.channel, topic, _encode(body), retain
        )

    def rewritten(message: SimMessage) -> SimMessage | None:
        device_id = message.device_id
        t = message.sim_ms
        device_silences = silences.get(device_id, ())
        body: dict[str, object] = json.loads(message.payload)
        state = states[device_id]
        dropped = any(silence.drops(message) for silence in device_silences)
        event = body.get("event") if message.channel == EVENT else None
        if event in _PASSAGE_FOLLOWS:
            if state.dropping_passage is not None:
                dropped = state.dropping_passage
            if event == "door_closed":
                state.dropping_passage = None
        elif event == "access_granted":
            state.dropping_passage = dropped
        if dropped:
            return None
        labels = [s.label for s in device_silences if s.from_ms <= t < s.to_ms]
        if message.channel == TELEMETRY:
            for freeze in stuck.get(device_id, ()):
                if freeze.from_ms <= t < freeze.to_ms and state.frozen is not None:
                    body.update(state.frozen)
                    labels.append(freeze.label)
            for override in overrides.get(device_id, ()):
                if override.from_ms <= t < override.to_ms:
                    body.update(override.fields)
                    labels.append(override.label)
            state.frozen = {k: v for k, v in body.items() if k not in _ENVELOPE}
        ts = body.get("ts")
        state.stamp(body, message.channel, ts if isinstance(ts, int) else t)
        stamped = body["ts"]
        assert isinstance(stamped, int)
        for label in labels:
            heard(label, stamped)
        return dataclasses.replace(message, payload=_encode(body))

    pending = 0
    for message in background:
        key = (message.sim_ms, message.device_id)
        while (
            pending < len(injections)
            and (
                injections[pending].at_ms,
                injections[pending].device_id,
            )
            < key
        ):
            yield injected(injections[pending])
            pending += 1
        if message.device_id not in touched:
            yield message
            continue
        out = rewritten(message)
        if out is not None:
            yield out
    for inj in injections[pending:]:
        yield injected(inj)


# --- running ------------------------------------------------------------------------


def scenario_seed(seed: int, name: str) -> int:
    """Stable 64-bit seed of one scenario (hashlib: Python's hash() is salted)."""
    digest = hashlib.blake2b(f"{seed}\x00scenario\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def run_scenarios(
    site: Site,
    names: Iterable[str],
    *,
    start: datetime,
    duration_s: float,
    seed: int,
    topic_prefix: str = topics.DEFAULT_PREFIX,
) -> tuple[list[SimMessage], list[Label]]:
    """Background traffic of the site with the named scenarios applied, and the labels.

    Each label's start and end are the ts of the first and last message carrying its
    incident (planned times stand for labels no message carries)."""
    start_ms = epoch_ms(start)
    end_ms = start_ms + round(duration_s * MS_PER_S)
    plans: list[ScenarioPlan] = []
    taken: list[dict[str, tuple[int, int]]] = []
    for name in names:
        scenario = SCENARIOS.get(name)
        if scenario is None:
            raise ScenarioError(f"no scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        rng = random.Random(scenario_seed(seed, name))
        plan = scenario.plan(site, rng, start_ms, end_ms)
        if scenario.exclusive:
            # Two incidents on one device at one time would blur both ground truths:
            # re-draw from the same stream (deterministic), keep the last try if crowded.
            for _ in range(_REDRAWS):
                if not _overlaps(_footprint(plan), taken):
                    break
                plan = scenario.plan(site, rng, start_ms, end_ms)
            taken.append(_footprint(plan))
        plans.append(plan)
    seen: dict[str, list[int]] = {}

    def observe(label: str, ts_ms: int) -> None:
        span = seen.setdefault(label, [ts_ms, ts_ms])
        span[0] = min(span[0], ts_ms)
        span[1] = max(span[1], ts_ms)

    background = simulate(
        site, start=start, duration_s=duration_s, seed=seed, topic_prefix=topic_prefix
    )
    messages = list(apply(background, plans, site, topic_prefix, observe))
    labels = []
    for plan in plans:
        for label in plan.labels:
            span = seen.get(label.id)
            if span is None:
                labels.append(label)
            else:
                # Device time may run a few ms ahead of the plan (ts strictly rising):
                # the planned moment of evidence stays inside the refined span.
                detectable = label.detectable_ms
                if detectable is not None:
                    detectable = min(max(detectable, span[0]), span[1])
                labels.append(
                    dataclasses.replace(
                        label, start_ms=span[0], end_ms=span[1], detectable_ms=detectable
                    )
                )
    return messages, sorted_labels(labels)


_REDRAWS: Final = 20
_CLEARANCE_MS: Final = 10 * MS_PER_MIN
"""Two scenarios' uses of one device stay this far apart in time."""


def _footprint(plan: ScenarioPlan) -> dict[str, tuple[int, int]]:
    """Per device, the span of time the plan changes (injections, rewrites, labels)."""
    spans: dict[str, tuple[int, int]] = {}

    def add(device_id: str, first: int, last: int) -> None:
        old = spans.get(device_id)
        spans[device_id] = (first, last) if old is None else (min(old[0], first), max(old[1], last))

    for inj in plan.injections:
        add(inj.device_id, inj.at_ms, inj.at_ms)
    rewrites: list[Silence | Stuck | Override] = [*plan.silences, *plan.stuck, *plan.overrides]
    for item in rewrites:
        add(item.device_id, item.from_ms, item.to_ms)
    for label in plan.labels:
        for device_id in label.devices:
            add(device_id, label.start_ms, label.end_ms)
    return spans


def _overlaps(spans: dict[str, tuple[int, int]], taken: list[dict[str, tuple[int, int]]]) -> bool:
    for other in taken:
        for device_id, (first, last) in spans.items():
            span = other.get(device_id)
            if (
                span is not None
                and first - _CLEARANCE_MS <= span[1]
                and span[0] <= last + _CLEARANCE_MS
            ):
                return True
    return False
