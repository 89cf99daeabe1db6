"""Alarm-quality harness: simulated incidents through the hub's rule path, scored.

The site's traffic (background plus labelled scenarios, or dataset replays) goes
through the hub's own decoder into `RulesService` (rules engine, event manager, event
store, snapshots) as the records the hub's log would hold, as fast as the CPU allows:
one synchronous turn (`RulesService.step`) per message, plus a `Tick` every simulated
second between messages (what the hub logs while its input is idle). The service runs
on event time in the hub too, so this is the live path's decision, not a model of it;
a 40-hour scenario suite takes seconds. MQTT and InfluxDB are left out on purpose
(they move messages, they do not decide events; the end-to-end test covers them).
Events are then matched to the ground-truth labels (`evaluation.alarm_quality`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from detection.rules_service import RulesService
from evaluation.alarm_quality import DEFAULT_GRACE_MS, QualityReport, score
from events.manager import EventManager
from events.model import Action, SecurityEvent, State
from events.store import EventStore
from ingest.decode import Decoder, Rejected
from ingest.records import Tick
from rules.engine import Engine
from rules.schema import Rule, rule_wait_ms
from rules.site_directory import directory_from_sites
from sensors import topics
from sensors.base import DecodeContext, keyed_hash
from sensors.registry import KINDS
from simulators.engine import SimMessage
from simulators.labels import HELD_OPEN_MS, IncidentKind, Label, held_open_labels
from sites.model import Site

HASH_KEY: Final = b"alarm-quality-harness"
"""The harness's key for hashing card numbers and plates (rule keys name the hashes)."""

TICK_MS: Final = 1_000
"""A `Tick` every simulated second between messages (rule timers of idle input)."""


def wait_s(rules: Sequence[Rule]) -> dict[str, float]:
    """Each incident kind's own waiting time in seconds (the longest of its rules'):
    the delay target is this plus 2 s."""
    waits: dict[str, float] = {}
    for rule in rules:
        kind = rule.incident_kind
        waits[kind] = max(waits.get(kind, 0.0), rule_wait_ms(rule) / 1000)
    return waits


GRACE_MS: Final = {
    "welfare_check": 25 * 3_600_000,
    "parking_overstay": 25 * 3_600_000,
    "device_offline": 5 * 60_000,
    "stuck_sensor": 30 * 60_000,
}
"""How long after a label ends its detection still counts (absence rules fire late)."""


@dataclass(frozen=True, slots=True)
class DoorEpisodes:
    """Door-state ground truth seen as cases: each recorded open episode is a held-open
    incident (positive) or a passage (negative), and was alarmed or not. Real passages
    are where a held-open rule's false alarms would show; precision and recall over the
    episodes are None when there is nothing to divide by."""

    episodes: int
    held_open: int
    """Episodes longer than the held-open limit (the positives)."""
    alarmed: int
    """Episodes during which (or up to the grace after) a held-open event was raised."""
    true_positives: int
    false_alarms: int
    """Alarmed passages."""
    shortest_s: float
    longest_s: float

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.alarmed if self.alarmed else None

    @property
    def recall(self) -> float | None:
        return self.true_positives / self.held_open if self.held_open else None

    @property
    def specificity(self) -> float | None:
        passages = self.episodes - self.held_open
        return (passages - self.false_alarms) / passages if passages else None

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "episodes": self.episodes,
            "held_open": self.held_open,
            "alarmed": self.alarmed,
            "true_positives": self.true_positives,
            "false_alarms": self.false_alarms,
            "precision": self.precision,
            "recall": self.recall,
            "specificity": self.specificity,
            "shortest_s": self.shortest_s,
            "longest_s": self.longest_s,
        }

    def describe(self) -> str:
        def fig(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        return (
            f"door episodes: {self.episodes} recorded"
            f" ({self.shortest_s:.1f}-{self.longest_s:.1f} s),"
            f" {self.held_open} longer than {HELD_OPEN_MS / 1000:g} s; held-open alarms:"
            f" {self.alarmed} ({self.false_alarms} on passages); precision {fig(self.precision)},"
            f" recall {fig(self.recall)}, specificity {fig(self.specificity)}"
        )


def door_episodes(labels: Sequence[Label], events: Sequence[SecurityEvent]) -> DoorEpisodes | None:
    """Score every `door_open` episode as a case (None when there are none)."""
    episodes = [label for label in labels if label.kind is IncidentKind.DOOR_OPEN]
    if not episodes:
        return None
    held = [e for e in events if e.incident == IncidentKind.DOOR_HELD_OPEN.value]
    alarmed = tp = 0
    for episode in episodes:
        positive = episode.end_ms - episode.start_ms > HELD_OPEN_MS
        hit = any(
            e.device in episode.devices
            and episode.start_ms <= e.raised_ms <= episode.end_ms + DEFAULT_GRACE_MS
            for e in held
        )
        alarmed += hit
        tp += hit and positive
    lengths = [(e.end_ms - e.start_ms) / 1000 for e in episodes]
    positives = sum(1 for e in episodes if e.end_ms - e.start_ms > HELD_OPEN_MS)
    return DoorEpisodes(
        len(episodes), positives, alarmed, tp, alarmed - tp, min(lengths), max(lengths)
    )


@dataclass(frozen=True, slots=True)
class EvalRun:
    report: QualityReport
    labels: list[Label]
    events: list[SecurityEvent]
    messages: int
    rejected: int
    elapsed_s: float
    doors: DoorEpisodes | None = None
    """Only for door-state ground truth (the Room-Climate replay)."""

    def to_json(self) -> dict[str, object]:
        """The report's JSON, plus `door_episodes` when there are door-state labels."""
        body = self.report.to_json()
        if self.doors is not None:
            body["door_episodes"] = self.doors.to_json()
        return body


def run_rules(
    sites: Sequence[Site],
    messages: Iterable[SimMessage],
    rules: Sequence[Rule],
    *,
    store_url: str,
    topic_prefix: str = topics.DEFAULT_PREFIX,
    on_progress: Callable[[int], None] | None = None,
    tick_ms: int | None = TICK_MS,
) -> tuple[list[SecurityEvent], int, int]:
    """Feed messages (in time order) through decode → `RulesService` → events; return
    every event in the store (with its re-annunciations), the message count and the
    rejected count. `tick_ms`: a `Tick` this often (simulated) between messages, as a
    hub receiving the traffic in real time logs while its input is idle; None: none
    until the end, as a hub fed faster than real time (`--speed max`) logs none."""
    directory = directory_from_sites(sites)
    decoder = Decoder(
        KINDS,
        DecodeContext(hash_identifier=lambda v: keyed_hash(HASH_KEY, v)),
        topic_prefix=topic_prefix,
    )
    with EventStore(store_url) as store:
        store.migrate()
        service = RulesService(Engine(rules, directory), store, EventManager(store, workers={}))
        service.manager.workers = directory.workers()
        count = rejected = 0
        next_tick = None
        last = 0
        for message in messages:
            now = message.sim_ms
            if tick_ms is not None:
                if next_tick is None:
                    next_tick = (now // tick_ms + 1) * tick_ms
                while next_tick <= now:  # the idle input's ticks, as the hub logs them
                    service.step([Tick(next_tick)])
                    next_tick += tick_ms
            decoded = decoder.decode(message.topic, message.payload, now * 1_000_000)
            rejected += isinstance(decoded, Rejected)
            count += 1
            service.step([decoded])
            last = now
            if on_progress is not None and count % 10_000 == 0:
                on_progress(count)
        service.step([Tick(last)], force=True)
        events = store.list_events(limit=1_000_000)
        events += reannunciations(store, events)
    return events, count, rejected


REANNUNCIATED_FROM: Final = frozenset({State.RETURNED_UNACKNOWLEDGED, State.CLEARED})
"""A repeat of an event in these states makes it active and unacknowledged again: the
operator is alerted anew (a repeat while active only bumps its counter)."""


def reannunciations(store: EventStore, events: Sequence[SecurityEvent]) -> list[SecurityEvent]:
    """Each time a returned event was raised again (the same rule and key: a device's
    second fault, the next day's overstay), as an event of its own raised then.

    The store keeps one event per rule and key until an operator closes it, and the
    harness closes none; scored by their first raise alone, every later incident the
    operator was alerted to would count as missed."""
    out: list[SecurityEvent] = []
    for event in events:
        if event.count < 2:
            continue
        for n, record in enumerate(store.audit_trail(event.id), start=1):
            if record.action is Action.REPEAT and record.from_state in REANNUNCIATED_FROM:
                out.append(replace(event, id=f"{event.id}@{n}", raised_ms=record.at_ms))
    return out


def evaluate(
    sites: Sequence[Site],
    messages: Sequence[SimMessage],
    labels: Sequence[Label],
    rules: Sequence[Rule],
    *,
    span_ms: int,
    store_url: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> EvalRun:
    """Run the rules over the messages and score the events against the labels.

    Door-state labels (`door_open`, from the Room-Climate replay) are ground truth of a
    state, not of an alarm: they are scored as the held-open incidents they contain
    (`simulators.labels.held_open_labels`), and not themselves."""
    started = time.perf_counter()
    states = labels
    labels = [
        *(label for label in labels if label.kind is not IncidentKind.DOOR_OPEN),
        *held_open_labels(labels),
    ]
    with tempfile.TemporaryDirectory(prefix="gridwatch-eval-") as tmp:
        url = store_url or f"sqlite:///{Path(tmp) / 'events.db'}"
        events, count, rejected = run_rules(
            sites, messages, rules, store_url=url, on_progress=on_progress
        )
    device_count = sum(len(site.devices) for site in sites)
    doors = door_episodes(states, events)
    report = score(
        labels,
        events,
        device_count=device_count,
        span_ms=span_ms,
        operators=max(1, len(sites)),
        grace_ms=GRACE_MS,
        kinds=[IncidentKind.DOOR_HELD_OPEN.value] if doors is not None else [],
    )
    elapsed = time.perf_counter() - started
    return EvalRun(report, list(labels), events, count, rejected, elapsed, doors)
