"""Which detections detect which ground-truth labels: the one matcher every scorer uses.

A *hit* is anything that may detect a label: a rule event (`evaluation.alarm_quality`,
per incident kind) or an anomaly detection (`evaluation.anomaly_scenarios`, any kind),
reduced to when it was raised and the devices it names. A hit matches a label when

- they share a device (a hit naming no device matches nothing), and
- `label.start_ms - early_ms <= hit.at_ms <= label.end_ms + grace_ms`: `early_ms`
  forgives clock skew between the label's device time and the detection, `grace_ms` lets
  detections that can only come after the incident (an absence rule, a timer) count.

Labels are taken in the order given (the caller sorts them); each takes the earliest
matching hit. `exclusive`: a hit detects at most one label, so a label takes the earliest
matching hit that no earlier label took (rule events: a second label needs a second
alarm). Not exclusive: every label takes its earliest matching hit (anomaly detections
name no incident, any of them on the label's devices in its span detects it).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence, Set
from dataclasses import dataclass
from itertools import pairwise

from simulators.labels import Label


@dataclass(frozen=True, slots=True)
class Hit:
    at_ms: int
    devices: Set[str]


@dataclass(frozen=True, slots=True)
class Matching:
    taken: list[int | None]
    """Per label (in the order given): the index of the hit that detected it, or None."""
    matched: list[bool]
    """Per hit: whether it matches some label at all (taken or not)."""


def matches(label: Label, hit: Hit, *, early_ms: int, grace_ms: int) -> bool:
    """The matching condition for one label and one hit."""
    return (
        not hit.devices.isdisjoint(label.devices)
        and label.start_ms - early_ms <= hit.at_ms <= label.end_ms + grace_ms
    )


def match_labels(
    labels: Sequence[Label],
    hits: Sequence[Hit],
    *,
    early_ms: int,
    grace_ms: int,
    exclusive: bool,
) -> Matching:
    """Match hits (sorted by `at_ms`) to labels (taken in the order given)."""
    times = [h.at_ms for h in hits]
    if any(a > b for a, b in pairwise(times)):
        raise ValueError("hits must be sorted by at_ms")
    taken_by: list[int | None] = []
    taken = [False] * len(hits)
    matched = [False] * len(hits)
    for label in labels:
        lo = bisect_left(times, label.start_ms - early_ms)
        hi = bisect_right(times, label.end_ms + grace_ms)
        hit: int | None = None
        for i in range(lo, hi):
            if hits[i].devices.isdisjoint(label.devices):
                continue
            matched[i] = True
            if hit is None and not (exclusive and taken[i]):
                hit = i
        if hit is not None:
            taken[hit] = True
        taken_by.append(hit)
    return Matching(taken_by, matched)
