"""The vocabulary of scenarios: what a plan does to a site's traffic, and its ground truth.

A scenario plans, for a site and a time window, what its incident changes in the
traffic: messages to inject, devices to silence (offline), telemetry to freeze (stuck)
or override (a low battery, a full car park), and the labels that say what happened.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from simulators.engine import SimMessage
from simulators.labels import IncidentKind, Label
from sites.model import Site

Payload = Mapping[str, object] | bytes


@dataclass(frozen=True, slots=True)
class Injection:
    """One message a scenario adds; bytes are a raw (malformed) payload sent as is."""

    at_ms: int
    device_id: str
    channel: str
    payload: Payload
    label: str = ""
    """Id of the label whose incident this message carries ("" for none)."""


@dataclass(frozen=True, slots=True)
class Silence:
    """Drop the device's background messages in [from_ms, to_ms): it is offline."""

    device_id: str
    from_ms: int
    to_ms: int
    channels: frozenset[str] | None = None
    """Only these channels (None: all, the device is offline)."""
    label: str = ""
    """Label whose incident the device's remaining messages in the span carry."""

    def drops(self, message: SimMessage) -> bool:
        return self.from_ms <= message.sim_ms < self.to_ms and (
            self.channels is None or message.channel in self.channels
        )


@dataclass(frozen=True, slots=True)
class Stuck:
    """Freeze the device's telemetry values in [from_ms, to_ms) at their last values."""

    device_id: str
    from_ms: int
    to_ms: int
    label: str = ""


@dataclass(frozen=True, slots=True)
class Override:
    """Set telemetry fields of the device's background messages in [from_ms, to_ms)."""

    device_id: str
    from_ms: int
    to_ms: int
    fields: Mapping[str, object]
    label: str = ""


@dataclass(slots=True)
class ScenarioPlan:
    """What one scenario does to the traffic, and its ground truth."""

    injections: list[Injection] = field(default_factory=list)
    silences: list[Silence] = field(default_factory=list)
    stuck: list[Stuck] = field(default_factory=list)
    overrides: list[Override] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)


PlanFn = Callable[[Site, random.Random, int, int], ScenarioPlan]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named incident and how to plan it on a site in a window [start_ms, end_ms)."""

    name: str
    kind: IncidentKind
    description: str
    plan: PlanFn
    exclusive: bool = True
    """Keep off devices other scenarios of a run use at the same time (re-draw if not);
    False for incidents that hit many devices at once (a storm)."""


class ScenarioError(ValueError):
    """A scenario cannot run on this site or in this window; the message says why."""
