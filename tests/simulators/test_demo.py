"""The demo's first impression (issue 16 item 8): its traffic through the hub's rule path.

`gridwatch run --demo` replays the last hour at `DEMO_SPEED`; its first five minutes of
wall time are the first 50 simulated minutes. They go through the offline harness
(`evaluation.rules_eval.run_rules`: the hub's decoder, rules engine and event manager on
event time) at several times of day: a calm site with a few distinct, labelled
incidents, and no flood.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from evaluation.rules_eval import run_rules
from events.manager import FLOOD_RULE
from events.model import SecurityEvent
from hub.demo import demo_start
from rules.schema import load_rules
from simulators.demo import DEMO_SPEED, demo_site, demo_traffic
from simulators.engine import epoch_ms
from simulators.labels import Label

FIRST_WALL_S = 5 * 60
GRACE_MS = 5 * 60_000
"""An event raised this long after its label's last message still belongs to it."""


def _first_minutes(now: datetime, tmp_path: Path) -> tuple[list[SecurityEvent], list[Label]]:
    site = demo_site()
    start = demo_start(0, now)
    stream, labels = demo_traffic(site, start)
    end_ms = epoch_ms(start) + round(FIRST_WALL_S * DEMO_SPEED * 1000)
    messages = list(itertools.takewhile(lambda m: m.sim_ms < end_ms, stream))
    events, _count, rejected = run_rules(
        [site], messages, load_rules(), store_url=f"sqlite:///{tmp_path / 'events.db'}"
    )
    assert rejected == 0
    return sorted(events, key=lambda e: e.raised_ms), labels


def _label_of(event: SecurityEvent, labels: list[Label]) -> Label | None:
    for label in labels:
        if (
            label.kind.value == event.incident
            and event.device in label.devices
            and label.start_ms <= event.raised_ms <= label.end_ms + GRACE_MS
        ):
            return label
    return None


@pytest.mark.parametrize("local_hour", [3, 9, 14, 19, 23])
def test_first_five_minutes_are_calm_with_a_few_incidents(local_hour: int, tmp_path: Path) -> None:
    now = datetime(2026, 3, 4, local_hour, 30, tzinfo=demo_site().tz).astimezone(UTC)
    events, labels = _first_minutes(now, tmp_path)
    start_ms = epoch_ms(demo_start(0, now))
    local = now.astimezone(demo_site().tz)
    print(f"\nfirst {FIRST_WALL_S // 60} min of the demo at {DEMO_SPEED:g}x, from {local:%H:%M}:")
    for event in events:
        wall_s = (event.raised_ms - start_ms) / 1000 / DEMO_SPEED
        print(f"  {wall_s:5.0f} s  {event.severity:<8} {event.rule_id:<20} {event.message}")
    assert not [e for e in events if e.rule_id == FLOOD_RULE]
    assert 2 <= len(events) <= 6
    assert len({e.incident for e in events}) >= 2
    unlabelled = [e.message for e in events if _label_of(e, labels) is None]
    assert not unlabelled, "events of background noise, not of the demo's incidents"
    assert all(label.source.startswith("scenario ") for label in labels)
    # Spread over the minutes, not packed together.
    gaps = [(b.raised_ms - a.raised_ms) / 1000 / DEMO_SPEED for a, b in itertools.pairwise(events)]
    assert min(gaps) >= 30
