"""Short alarm-path drills for the tests: a few simulated hours of scenario traffic, the
hub as a real process on its own broker, the session's InfluxDB (`evaluation.drill`)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from devstack.stack import ManagedProcess
from evaluation.drill import (
    Difference,
    DrillOptions,
    Services,
    Stream,
    build_stream,
    default_start,
)
from simulators.scenarios import SCENARIOS

HOURS = 4.0
"""Simulated hours of a test drill: ~9,400 messages of the Yingyang site."""
LONG_SCENARIOS = frozenset({"welfare_check", "parking_overstay"})
"""Scenarios that need more than a day (`gridwatch rules evaluate` runs them for 40 h)."""
SHORT_SCENARIOS = tuple(name for name in SCENARIOS if name not in LONG_SCENARIOS)
UNTIMED_SCENARIOS = frozenset({"device_offline"})
"""Scenarios with messages that carry no device time: plain-text wills (and the plain
`online` after them). The hub stores those at its receive time (see the last test)."""
TIMED_SCENARIOS = tuple(name for name in SHORT_SCENARIOS if name not in UNTIMED_SCENARIOS)


def short_stream(scenarios: Sequence[str], *, hours: float = HOURS, seed: int = 3) -> Stream:
    """A few hours of the Yingyang site with `scenarios`, starting in the future."""
    options = DrillOptions(duration_s=hours * 3600, seed=seed, scenarios=tuple(scenarios))
    return build_stream(options, default_start())


def drill_options(
    *, kills: int = 0, broker_restart: bool = False, broker: str = "mosquitto"
) -> DrillOptions:
    """The test drills' options: one publisher connection, no InfluxDB outage (the
    session's InfluxDB is shared with other tests), fault times from a fixed seed."""
    return DrillOptions(
        duration_s=HOURS * 3600,
        seed=3,
        kills=kills,
        broker_restart=broker_restart,
        influx_outage_s=0.0,
        gateways=1,
        fault_seed=7,
        broker=broker,
    )


def services(
    tmp_path: Path, influxdb: ManagedProcess, postgres_admin: str | None = None
) -> Services:
    """Where a test drill runs: the test's tmp dir, the session's InfluxDB (databases of
    its own), SQLite stores, or PostgreSQL ones on the server of `postgres_admin`."""
    return Services(tmp_path, influxdb, postgres_admin, print, prefix=f"drill{next(_runs)}")


_runs = itertools.count(1)


def explain(found: Sequence[Difference], left: str, right: str) -> str:
    """Every difference, one per line, for an assertion message."""
    return "\n".join(d.describe(left, right) for d in found)
