"""Alarm quality: the events a rules engine raised, scored against ground-truth labels.

Pure functions, no I/O: give them the simulator's labels (`simulators.labels.Label`) and
the events the engine raised (`events.model.SecurityEvent`), get precision, recall,
detection delay and operator load per incident kind.

What is scored is what an operator sees. When flood control groups events, the parent
(incident `incident_storm`, `devices` = the grouped devices) is one event to an operator
and is scored as such, against `incident_storm` labels. Its children:

- raised after the parent (joining the flood as they came) were never shown on their
  own: not scored (counting them would credit detections nobody was shown);
- raised before it (the events of the window grouped when the flood began) had been
  shown on their own, so they are scored as their own kind like top-level events: a
  cloned card alarmed nine minutes before a power surge was detected. One that matches
  no label of its kind but lies in an `incident_storm` label (one of its devices, in its
  span) is part of the storm, scored through the parent, and neither a hit nor a false
  alarm.

`peak_events_per_10min` counts top-level events only: the desk shows a flood as one row.

Matching (`evaluation.matching`, shared with the anomaly harness). An event E matches a
label L when

- `E.incident == L.kind`,
- E's devices (`E.devices`, plus `E.device` when set) intersect `L.devices`, and
- `L.start_ms - early_ms <= E.raised_ms <= L.end_ms + grace`, where grace is
  `grace_ms[kind]` when given, else `default_grace_ms`. Grace lets kinds that can only
  fire after the incident (an absence rule, a "held open for N minutes" rule) count;
  `early_ms` forgives clock skew between the label's device time and the detection.

Labels are taken earliest first (by start, then id); each takes the earliest matching
event (by raised time, then id) that no earlier label took. So each label is detected by
at most one event and each event detects at most one label. An event left over is a
*duplicate* when it matches some label of its kind (necessarily one already taken), and
a *false positive* when it matches none.

Per kind K (every kind seen in labels or events; events with no incident are kind ""):

- precision = TP / (TP + FP + duplicates), None when no event of K;
- recall = TP / (TP + FN), None when no label of K;
- delay median / max = (event raised - label evident) in seconds over detected labels,
  where a label is evident from its `detectable_ms` when it has one, else from its start.
  A label's start is when the incident began; its detectable time is when the devices'
  messages first show it (a cloned card's second use, a nuisance's alarm, a fire's first
  alarm, a storm's 11th alarm). Measured from the start, a delay would charge the rule
  with time in which no detector could have known; matching still uses the start;
- false alarms per device-day = FP / (device_count * span_ms / 86_400_000).

Operator load: `peak_events_per_10min` is the most top-level events raised in any
window `[t, t + 10 min)` (t sliding over event times), divided by the number of operators.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from evaluation.matching import Hit, match_labels, matches
from events.model import SecurityEvent
from simulators.labels import IncidentKind, Label

WINDOW_MS: Final = 600_000
"""The operator-load window: 10 minutes (ISA-18.2's flood threshold is per 10 min)."""
DAY_MS: Final = 86_400_000
DEFAULT_GRACE_MS: Final = 120_000
DEFAULT_EARLY_MS: Final = 2_000
DELAY_SLACK_S: Final = 2.0
"""The median delay target of a kind is its expected wait plus this."""


@dataclass(frozen=True, slots=True)
class KindQuality:
    """The scores of one incident kind."""

    kind: str
    labels: int
    events: int
    tp: int
    fp: int
    fn: int
    duplicates: int
    precision: float | None
    """None when the engine raised no event of this kind."""
    recall: float | None
    """None when no label has this kind."""
    delay_median_s: float | None
    """None when no label of this kind was detected."""
    delay_max_s: float | None
    false_alarms_per_device_day: float

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "delay_median_s": self.delay_median_s,
            "delay_max_s": self.delay_max_s,
            "false_alarms_per_device_day": self.false_alarms_per_device_day,
            "labels": self.labels,
            "events": self.events,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "duplicates": self.duplicates,
        }


@dataclass(frozen=True, slots=True)
class QualityReport:
    by_kind: dict[str, KindQuality]
    """Keyed and ordered by kind."""
    peak_events_per_10min: float
    """Per operator."""

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (None stays None, i.e. `null`)."""
        return {
            "by_kind": {kind: q.to_json() for kind, q in self.by_kind.items()},
            "peak_events_per_10min": self.peak_events_per_10min,
        }


@dataclass(frozen=True, slots=True)
class Targets:
    """What counts as good enough: a figure that misses its target is marked `!`."""

    precision: float = 0.95
    recall: float = 0.95
    peak: float = 10.0
    """Most events per 10 minutes per operator (ISA-18.2: about 10 is a flood)."""
    wait_s: Mapping[str, float] = field(default_factory=dict)
    """Per kind, how long the rule must wait before it may fire (e.g. a held-open
    timer); the median delay target is this (0 when absent) plus 2 s."""

    def delay_target_s(self, kind: str) -> float:
        return self.wait_s.get(kind, 0.0) + DELAY_SLACK_S


# -- matching ------------------------------------------------------------------------------


@dataclass(slots=True)
class _KindMatch:
    labels: list[Label] = field(default_factory=list)
    events: list[SecurityEvent] = field(default_factory=list)
    detected: list[tuple[Label, SecurityEvent]] = field(default_factory=list)
    missed: list[Label] = field(default_factory=list)
    false_positives: list[SecurityEvent] = field(default_factory=list)
    duplicates: list[SecurityEvent] = field(default_factory=list)


def scored_events(events: Sequence[SecurityEvent]) -> list[SecurityEvent]:
    """The events an operator sees: top-level ones (flood-control children excluded)."""
    return [e for e in events if e.parent_id is None]


def shown_before_grouping(events: Sequence[SecurityEvent]) -> list[SecurityEvent]:
    """Flood-control children raised before their parent: each was shown on its own
    until the flood began."""
    parents = {e.id: e.raised_ms for e in events if e.parent_id is None}
    return [
        e
        for e in events
        if e.parent_id is not None and e.raised_ms < parents.get(e.parent_id, e.raised_ms)
    ]


def _in_storm(event: SecurityEvent, storms: Sequence[Label], early_ms: int, grace: int) -> bool:
    hit = Hit(event.raised_ms, _event_devices(event))
    return any(matches(storm, hit, early_ms=early_ms, grace_ms=grace) for storm in storms)


def _event_devices(event: SecurityEvent) -> set[str]:
    devices = set(event.devices)
    if event.device is not None:
        devices.add(event.device)
    return devices


def _match(
    labels: Sequence[Label],
    events: Sequence[SecurityEvent],
    *,
    grace_ms: Mapping[str, int] | None,
    default_grace_ms: int,
    early_ms: int,
) -> dict[str, _KindMatch]:
    """Match the events an operator saw to labels, per kind (see the module docstring;
    the matching itself is `evaluation.matching`, exclusive)."""
    by_kind: dict[str, _KindMatch] = {}
    for label in labels:
        by_kind.setdefault(label.kind.value, _KindMatch()).labels.append(label)
    early_children = shown_before_grouping(events)
    for event in [*scored_events(events), *early_children]:
        by_kind.setdefault(event.incident, _KindMatch()).events.append(event)

    grace = grace_ms or {}
    storms = [label for label in labels if label.kind is IncidentKind.INCIDENT_STORM]
    storm_grace = grace.get(IncidentKind.INCIDENT_STORM.value, default_grace_ms)
    child_ids = {e.id for e in early_children}
    for kind, m in by_kind.items():
        m.labels.sort(key=lambda label: (label.start_ms, label.id))
        m.events.sort(key=lambda event: (event.raised_ms, event.id))
        found = match_labels(
            m.labels,
            [Hit(e.raised_ms, _event_devices(e)) for e in m.events],
            early_ms=early_ms,
            grace_ms=grace.get(kind, default_grace_ms),
            exclusive=True,
        )
        for label, hit in zip(m.labels, found.taken, strict=True):
            if hit is None:
                m.missed.append(label)
            else:
                m.detected.append((label, m.events[hit]))
        taken = {hit for hit in found.taken if hit is not None}
        covered: set[str] = set()
        for i, event in enumerate(m.events):
            if i in taken:
                continue
            if found.matched[i]:
                m.duplicates.append(event)
            elif event.id in child_ids and _in_storm(event, storms, early_ms, storm_grace):
                covered.add(event.id)  # part of the storm: scored through its parent
            else:
                m.false_positives.append(event)
        m.events = [e for e in m.events if e.id not in covered]
    return dict(sorted((kind, m) for kind, m in by_kind.items() if m.labels or m.events))


# -- scoring -------------------------------------------------------------------------------


def peak_events_per_window(times_ms: Sequence[int], window_ms: int = WINDOW_MS) -> int:
    """Most times falling in any window `[t, t + window_ms)`, t sliding over the times."""
    ordered = sorted(times_ms)
    peak = 0
    end = 0
    for start, t in enumerate(ordered):
        while end < len(ordered) and ordered[end] < t + window_ms:
            end += 1
        peak = max(peak, end - start)
    return peak


def score(
    labels: Sequence[Label],
    events: Sequence[SecurityEvent],
    *,
    device_count: int,
    span_ms: int,
    operators: int = 1,
    grace_ms: Mapping[str, int] | None = None,
    default_grace_ms: int = DEFAULT_GRACE_MS,
    early_ms: int = DEFAULT_EARLY_MS,
    kinds: Sequence[str] = (),
) -> QualityReport:
    """Score the events raised over `span_ms` on `device_count` devices against labels.

    `kinds` are reported even with no label and no event (a replay whose ground truth
    has no incident of a kind still shows that nothing was raised for it)."""
    if device_count <= 0 or span_ms <= 0:
        raise ValueError("device_count and span_ms must be positive")
    if operators <= 0:
        raise ValueError("operators must be positive")
    device_days = device_count * span_ms / DAY_MS
    by_kind: dict[str, KindQuality] = {}
    matches = _match(
        labels, events, grace_ms=grace_ms, default_grace_ms=default_grace_ms, early_ms=early_ms
    )
    for kind in kinds:
        matches.setdefault(kind, _KindMatch())
    for kind, m in sorted(matches.items()):
        tp, fp, fn, dup = len(m.detected), len(m.false_positives), len(m.missed), len(m.duplicates)
        delays = [(e.raised_ms - label.evident_ms) / 1000 for label, e in m.detected]
        by_kind[kind] = KindQuality(
            kind=kind,
            labels=len(m.labels),
            events=len(m.events),
            tp=tp,
            fp=fp,
            fn=fn,
            duplicates=dup,
            precision=tp / (tp + fp + dup) if m.events else None,
            recall=tp / (tp + fn) if m.labels else None,
            delay_median_s=float(statistics.median(delays)) if delays else None,
            delay_max_s=max(delays) if delays else None,
            false_alarms_per_device_day=fp / device_days,
        )
    peak = peak_events_per_window([e.raised_ms for e in scored_events(events)])
    return QualityReport(by_kind=by_kind, peak_events_per_10min=peak / operators)


def unmatched(
    labels: Sequence[Label],
    events: Sequence[SecurityEvent],
    *,
    grace_ms: Mapping[str, int] | None = None,
    default_grace_ms: int = DEFAULT_GRACE_MS,
    early_ms: int = DEFAULT_EARLY_MS,
) -> tuple[list[Label], list[SecurityEvent]]:
    """For diagnosis: the labels nobody detected (FN) and the events matching no label
    (FP), each in time order; duplicates are in neither."""
    matches = _match(
        labels, events, grace_ms=grace_ms, default_grace_ms=default_grace_ms, early_ms=early_ms
    )
    missed = [label for m in matches.values() for label in m.missed]
    false_positives = [e for m in matches.values() for e in m.false_positives]
    missed.sort(key=lambda label: (label.start_ms, label.id))
    false_positives.sort(key=lambda e: (e.raised_ms, e.id))
    return missed, false_positives


# -- targets and the table -----------------------------------------------------------------


def _precision_missed(q: KindQuality, targets: Targets) -> bool:
    return q.precision is not None and q.precision < targets.precision


def _recall_missed(q: KindQuality, targets: Targets) -> bool:
    return q.recall is not None and q.recall < targets.recall


def _delay_missed(q: KindQuality, targets: Targets) -> bool:
    return q.delay_median_s is not None and q.delay_median_s > targets.delay_target_s(q.kind)


def _peak_missed(report: QualityReport, targets: Targets) -> bool:
    return report.peak_events_per_10min > targets.peak


def misses(report: QualityReport, targets: Targets) -> list[str]:
    """Each missed target in words, by kind then peak; empty when all are met."""
    out: list[str] = []
    for kind, q in report.by_kind.items():
        name = kind or "(no incident)"
        if _precision_missed(q, targets):
            out.append(f"{name}: precision {q.precision:.3f} < {targets.precision:.3f}")
        if _recall_missed(q, targets):
            out.append(f"{name}: recall {q.recall:.3f} < {targets.recall:.3f}")
        if _delay_missed(q, targets):
            out.append(
                f"{name}: median delay {q.delay_median_s:.1f} s"
                f" > {targets.delay_target_s(kind):.1f} s"
            )
    if _peak_missed(report, targets):
        out.append(
            f"peak {report.peak_events_per_10min:.1f} events per 10 min per operator"
            f" > {targets.peak:.1f}"
        )
    return out


_COLUMNS: Final = (
    ("kind", 24),
    ("labels", 7),
    ("events", 7),
    ("tp", 6),
    ("fp", 6),
    ("fn", 6),
    ("dup", 6),
    ("precision", 10),
    ("recall", 10),
    ("delay_med_s", 12),
    ("delay_max_s", 12),
    ("fa/dev-day", 11),
)


def _figure(value: float | None, digits: int, missed: bool) -> str:
    """A number with a trailing `!` when it misses its target (a space otherwise)."""
    if value is None:
        return "- "
    return f"{value:.{digits}f}" + ("!" if missed else " ")


def format_table(report: QualityReport, *, targets: Targets | None = None) -> str:
    """A fixed-width table, one row per kind (sorted), then the peak; with `targets`,
    every figure that misses its target ends in `!`."""

    def row(cells: Sequence[str]) -> str:
        first = f"{cells[0]:<{_COLUMNS[0][1]}}"
        rest = "".join(f"{c:>{w}}" for c, (_, w) in zip(cells[1:], _COLUMNS[1:], strict=True))
        return (first + rest).rstrip()

    lines = [row([name for name, _ in _COLUMNS])]
    for kind in sorted(report.by_kind):
        q = report.by_kind[kind]
        lines.append(
            row(
                [
                    kind or "(no incident)",
                    str(q.labels),
                    str(q.events),
                    str(q.tp),
                    str(q.fp),
                    str(q.fn),
                    str(q.duplicates),
                    _figure(q.precision, 3, targets is not None and _precision_missed(q, targets)),
                    _figure(q.recall, 3, targets is not None and _recall_missed(q, targets)),
                    _figure(q.delay_median_s, 1, targets is not None and _delay_missed(q, targets)),
                    _figure(q.delay_max_s, 1, False),
                    _figure(q.false_alarms_per_device_day, 3, False),
                ]
            )
        )
    peak = _figure(
        report.peak_events_per_10min, 1, targets is not None and _peak_missed(report, targets)
    )
    lines.append(f"peak events per 10 min per operator: {peak}".rstrip())
    return "\n".join(lines) + "\n"
