"""The demo site's traffic for `gridwatch run --demo`: the Yingyang site, simulated live.

Every device of the site connects as itself (client id = device id, a last will on its
status topic) and publishes what the simulators' engine says, so a newcomer sees real
device behaviour within a minute of `stack up`.

Time: the hub refuses readings more than `hub.max_future_s` ahead of its clock, so the
demo cannot run ahead of the wall clock for long. It starts `DEMO_HISTORY_S` in the past,
replays that at `speed` x real time, and from then on keeps to real time.

First impression: the background alone is a calm site, so the replayed hour carries a
few distinct incidents of the scenario catalogue (`DEMO_INCIDENTS`: a forced door, a
fire confirmed by a second detector, a car in the fire lane, repeated card denials),
spaced so that at 10x one shows up every minute or so of the first five, far below
flood control's 10 events in 10 min. After that the site stays calm (background only).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sensors.base import EVENT
from sensors.topics import DEFAULT_PREFIX
from simulators.behaviour import MS_PER_HOUR, MS_PER_MIN, MS_PER_S
from simulators.engine import SimMessage, epoch_ms, simulate
from simulators.labels import Label, sorted_labels
from simulators.publish import (
    FOREVER_S,
    BrokerOptions,
    SimProgress,
    Simulation,
    now_utc_second,
)
from simulators.scenarios import SCENARIOS, ScenarioPlan, apply
from simulators.scenarios.compose import scenario_seed
from simulators.scenarios.plan import Override, Silence, Stuck
from sites.model import Site, demo_site_path, load_site

log = logging.getLogger(__name__)

DEMO_SITE: Final = "yingyang"
DEMO_SEED: Final = 7
DEMO_HISTORY_S: Final = 3600.0
"""How far back the demo starts: an hour of data in 6-7 minutes at 10x, then live."""
DEMO_SPEED: Final = 10.0
"""`gridwatch run --demo-speed`'s default: the replayed hour takes 6 minutes."""
LOG_EVERY: Final = 1000


@dataclass(frozen=True, slots=True)
class DemoIncident:
    """A scenario of the catalogue, made to begin `at_min` simulated minutes into the demo."""

    scenario: str
    at_min: int


DEMO_INCIDENTS: Final = (
    DemoIncident("door_forced", 4),
    DemoIncident("fire", 13),
    DemoIncident("fire_lane_violation", 27),
    DemoIncident("repeated_denials", 38),
)
"""What a newcomer sees in the first five minutes at 10x (one event each, minutes
apart); the scenarios' time-of-day needs (a forced door at night) do not apply here."""
_PLANNED_AT: Final = datetime(2026, 1, 5, 1, 0)
"""Local time (a Monday night) of the window each incident is planned in, before it is
moved to its demo time: the same devices and details on every run."""
_PLAN_WINDOW_MS: Final = 3 * MS_PER_HOUR
_KEEP_CLEAR_MS: Final = 15 * MS_PER_S
"""Background door events dropped around an incident's door events (no interleaving)."""


def demo_site() -> Site:
    return load_site(demo_site_path(DEMO_SITE))


def _shifted(plan: ScenarioPlan, delta_ms: int) -> ScenarioPlan:
    """The same plan `delta_ms` later."""

    def label(item: Label) -> Label:
        detectable = item.detectable_ms
        return dataclasses.replace(
            item,
            start_ms=item.start_ms + delta_ms,
            end_ms=item.end_ms + delta_ms,
            detectable_ms=None if detectable is None else detectable + delta_ms,
        )

    return ScenarioPlan(
        injections=[dataclasses.replace(i, at_ms=i.at_ms + delta_ms) for i in plan.injections],
        silences=[
            dataclasses.replace(s, from_ms=s.from_ms + delta_ms, to_ms=s.to_ms + delta_ms)
            for s in plan.silences
        ],
        stuck=[
            dataclasses.replace(s, from_ms=s.from_ms + delta_ms, to_ms=s.to_ms + delta_ms)
            for s in plan.stuck
        ],
        overrides=[
            dataclasses.replace(o, from_ms=o.from_ms + delta_ms, to_ms=o.to_ms + delta_ms)
            for o in plan.overrides
        ],
        labels=[label(item) for item in plan.labels],
    )


def _first_ms(plan: ScenarioPlan) -> int:
    """When the plan first changes the traffic."""
    rewrites: list[Silence | Stuck | Override] = [*plan.silences, *plan.stuck, *plan.overrides]
    return min([i.at_ms for i in plan.injections] + [r.from_ms for r in rewrites])


def demo_plans(site: Site, start_ms: int, seed: int = DEMO_SEED) -> list[ScenarioPlan]:
    """`DEMO_INCIDENTS` planned on the site, each moved to begin at its demo time.

    A planner picks its devices and details from its own stream (as in `run_scenarios`);
    the incident's door gets no background passage in between."""
    plans = []
    for incident in DEMO_INCIDENTS:
        scenario = SCENARIOS[incident.scenario]
        rng = random.Random(scenario_seed(seed, incident.scenario))
        window = epoch_ms(_PLANNED_AT.replace(tzinfo=site.tz))
        plan = scenario.plan(site, rng, window, window + _PLAN_WINDOW_MS)
        plan = _shifted(plan, start_ms + incident.at_min * MS_PER_MIN - _first_ms(plan))
        for device_id in {i.device_id for i in plan.injections if i.channel == EVENT}:
            if site.device(device_id).kind == "access":
                times = [i.at_ms for i in plan.injections if i.device_id == device_id]
                plan.silences.append(
                    Silence(
                        device_id,
                        min(times) - _KEEP_CLEAR_MS,
                        max(times) + _KEEP_CLEAR_MS,
                        frozenset({EVENT}),
                    )
                )
        plans.append(plan)
    return plans


def demo_traffic(
    site: Site, start: datetime, *, seed: int = DEMO_SEED, topic_prefix: str = DEFAULT_PREFIX
) -> tuple[Iterator[SimMessage], list[Label]]:
    """The demo's open-ended stream from `start` (background with `DEMO_INCIDENTS`), and
    the incidents' labels (planned times)."""
    start_ms = epoch_ms(start)
    plans = demo_plans(site, start_ms, seed)
    background = simulate(
        site, start=start, duration_s=FOREVER_S, seed=seed, topic_prefix=topic_prefix
    )
    labels = sorted_labels(label for plan in plans for label in plan.labels)
    return apply(background, plans, site, topic_prefix), labels


def demo_simulation(
    broker: BrokerOptions, speed: float, start: datetime | None = None
) -> Simulation:
    """The demo site on `broker`, open-ended, never ahead of the wall clock; from `start`
    (default: `DEMO_HISTORY_S` ago)."""
    logged = 0

    def progress(report: SimProgress) -> None:
        nonlocal logged
        if report.messages - logged >= LOG_EVERY:
            logged = report.messages
            log.info("demo: %d messages published", report.messages)

    site = demo_site()
    start = start or now_utc_second() - timedelta(seconds=DEMO_HISTORY_S)
    traffic, _labels = demo_traffic(site, start, topic_prefix=broker["topic_prefix"])
    return Simulation(
        site,
        **broker,
        speed=speed,
        duration_s=None,
        seed=DEMO_SEED,
        start=start,
        progress=progress,
        max_lead_s=0.0,
        source=traffic,
    )
