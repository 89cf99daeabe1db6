"""Turns detections into events and operator requests into transitions, with flood control.

Clock: every time this module writes comes from one clock, the one that drives the rules
(simulated or real): a detection's `at_ms` for what it causes, the operator's `at_ms` for
`act`, and for timers their own due time. The hub must pass that same clock to `tick` and
`act`, else shelve expiry and flood quiet-down would compare unrelated clocks.

Replays are harmless, so a consumer that re-reads its input after a crash may hand the
same detections over again: an event's id is a function of the raise that opened it
(`events.model.event_id`), a raise whose event exists already or a repeat not newer than
the event's `last_ms` writes nothing, and so does a clear older than the last raise.

Timers are in event time: a shelve runs out at `shelved_until_ms` and a flood parent
returns at `last_ms + flood_window_ms`, whether `tick` finds them or a later transition of
the same event (or a new event at the parent's site) finds them first and applies them
before itself. So how often `tick` runs changes when the timers are written, never what
is written.

Flood control (ISA-18.2 "alarm flood"): per site, the raise times of new events in the
last `flood_window_ms`, every severity counted (the flood is the operator's load, and an
emergency adds to it). When a new event makes them exceed `flood_limit`, a parent event
(`flood_control`, key = site) opens, and every open top-level event of the site raised in
the window, the new one included, is grouped under it and suppressed. While the parent is
active, each further new event of the site joins it the same way and repeats the parent,
so the parent's `last_ms` is the site's last new event. Once the site has been quiet for
`flood_window_ms` the parent returns and unsuppresses the children it suppressed (they
stay grouped under it). Children otherwise keep their own lifecycle.

The hub's own health events and anomaly events (`NO_FLOOD`) are outside flood control:
neither counted nor grouped.

Flood control groups the noise, never the emergencies: an event whose severity is in
`flood_exempt` (default: critical) is never grouped or suppressed. It stays a top-level,
annunciated event; a new one raised during a flood repeats the parent (the site is not
quiet), is counted and named in the parent's message, and gets a system comment naming
the parent. A parent opens only when there is something to group, and a grouped child
that a repeat escalates into an exempt severity is unsuppressed at once.

The parent's title, message, `values` (`events`: grouped children; `apart`: exempt events
of the flood shown on their own; `devices`: how many devices its children name) and
device list are rewritten on every join, so they always agree.

State kept here: the per-site window (at most `flood_limit + 1` times each) and a copy
of the open events (by condition and by id), both loaded from the store on start and by
`reload()`, and kept current by every save made here. The copy saves the reads a raise
would otherwise make (the condition's open event, the site's flood parent, whether the
new id exists) and is only ever trusted where the store checks it: every write is
version-checked, an open condition is unique and an id is a primary key, so a decision
made on a stale copy (another process acted on the event; a closed event's id raised
again by a replay) fails as `StaleEvent`, and the retry reads the store afresh. So several
managers (or a restart) never write on stale copies.

Units of work: `batch()` makes everything the manager (and the store) does on this thread
in the block one store transaction, e.g. the events of a batch of detections together
with the rules engine's snapshot.
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Final, TypeVar

from events.model import (
    OPERATOR_ACTIONS,
    SYSTEM,
    Action,
    AuditRecord,
    Detection,
    ForbiddenTransition,
    Mode,
    SecurityEvent,
    Severity,
    Source,
    State,
    event_id,
    new_event,
    transition,
)
from events.store import EventFilter, EventStore, StaleEvent, UnknownEvent

FLOOD_RULE: Final = "flood_control"
FLOOD_INCIDENT: Final = "incident_storm"
FLOOD_EXEMPT: Final = frozenset({Severity.CRITICAL})
"""Severities flood control never groups or suppresses, by default."""
NO_FLOOD: Final = frozenset({Source.HUB, Source.ANOMALY})
"""Sources whose events flood control neither counts nor groups. The hub's own health
events are no field alarms. Anomaly events come from a consumer of their own (the rules
and anomaly consumers read the log independently): if they counted, which rule events a
flood groups would depend on how the two consumers' commits interleave, and a restart or
the offline harness could decide differently from a live run. They are low-severity
advisories, rate-limited per device (docs/anomaly-hub.md)."""
STORM_DEVICES_NAMED: Final = 100
"""Devices a flood parent names (the first to join). Each child that joins repeats the
parent, and each repeat's audit record and outbox items carry the whole event: naming
every device made a storm's cost grow with its square (1,737 children of one parent in
`gridwatch bench detection` took every transition to 20 KB of device names)."""
RETRIES: Final = 5
"""Attempts at one system transition that keeps losing optimistic-lock races."""

_OPEN_STATES: Final = frozenset(State) - {State.CLOSED}
_PAGE: Final = 500

Change = tuple[SecurityEvent, AuditRecord]
NewId = Callable[[str, str, int], str]
"""The id of the event a raise opens, from (rule id, key, raise time in ms)."""
T = TypeVar("T")


class EventManager:
    """The only writer of events: detections, operator actions and timers go through here."""

    def __init__(
        self,
        store: EventStore,
        *,
        workers: Mapping[str, str],
        sinks: Sequence[str] = (),
        new_id: NewId = event_id,
        flood_limit: int = 10,
        flood_window_ms: int = 600_000,
        flood_exempt: Collection[Severity] = FLOOD_EXEMPT,
    ) -> None:
        """`flood_exempt`: severities that always annunciate on their own, even in a
        flood (critical by default; add high to keep those apart too)."""
        if flood_limit < 1 or flood_window_ms < 1:
            raise ValueError("flood_limit and flood_window_ms must be positive")
        self.store = store
        self.workers = dict(workers)
        self.sinks = tuple(sinks)
        self._new_id = new_id
        self.flood_limit = flood_limit
        self.flood_window_ms = flood_window_ms
        self.flood_exempt = frozenset(flood_exempt)
        # One writer at a time in this process; other processes are caught by the store.
        # Reentrant: `batch` holds it around the calls made inside it.
        self._lock = threading.RLock()
        self._recent: defaultdict[str, list[int]] = defaultdict(list)
        """Per site, the raise times of its newest events (at most `flood_limit + 1`,
        enough to tell "more than flood_limit"), in time order: see `_counted`."""
        self._recent_stale = False
        self._rebuild_recent()
        self._open = _OpenEvents()
        self._load_open()

    # ------------------------------------------------------------------ units of work

    @contextmanager
    def batch(self) -> Iterator[None]:
        """`EventStore.batch` under the manager's lock: whatever this thread hands the
        manager or writes to the store in the block commits together, or not at all.

        Holding the lock throughout keeps other threads' manager calls (API actions) out
        until the batch commits, rather than waiting inside the database for rows the
        batch holds while the batch waits for the lock. If the block raises, the flood
        windows are rebuilt from the store before the next raise.
        """
        with self._lock:
            try:
                with self.store.batch():
                    yield
            except BaseException:
                self._recent_stale = True
                raise

    def reload(self) -> None:
        """Rebuild the flood windows from the store: after a batch that rolled back they
        still count the raises it had saved."""
        with self._lock:
            self._recent.clear()
            self._rebuild_recent()
            self._load_open()
            self._recent_stale = False

    # ------------------------------------------------------------------ detections

    def handle(self, detection: Detection, now_ms: int) -> list[SecurityEvent]:
        """Apply one detection; return the events it changed (latest versions).

        Event times are `detection.at_ms`; `now_ms` stands in only if that is unset (<= 0).
        """
        if detection.rule_id == FLOOD_RULE:
            raise ValueError(f"rule id {FLOOD_RULE!r} is reserved for flood control")
        if detection.at_ms <= 0:
            detection = replace(detection, at_ms=now_ms)
        with self._lock:
            if self._recent_stale:
                self.reload()
            if detection.raised:
                return self._retry(lambda: self._raise(detection))
            return self._retry(lambda: self._clear(detection))

    def _raise(self, detection: Detection) -> list[SecurityEvent]:
        at = detection.at_ms
        existing = self._open_event(detection.rule_id, detection.key)
        if existing is not None:
            if at <= existing.last_ms:
                return []  # a replay, or older than what the event already has
            changes = self._overdue(existing, at)
            repeat = _system(_latest(changes, existing), Action.REPEAT, at, detection=detection)
            changes.append(repeat)
            repeated = repeat[0]
            if repeated.mode is Mode.SUPPRESSED and self._exempt(repeated):
                # Escalated while hidden in a flood: annunciate it now.
                note = f"flood control: {repeated.severity.value} events are never suppressed"
                changes.append(_system(repeated, Action.UNSUPPRESS, at, note=note))
            return self._save(changes)
        new_id = self._new_id(detection.rule_id, detection.key, at)
        if self._open.fresh and self.store.get(new_id) is not None:
            # A replay of the raise that opened it (closed since). Not read first on
            # the copy: the insert of a known id fails, and the retry reads this.
            return []
        if detection.source in NO_FLOOD:  # counted in no flood, grouped in none
            event, raised = new_event(new_id, detection, at)
            return self._save([(event, raised)])
        parent, changes = self._flood_parent(detection.site, at)
        event, raised = new_event(new_id, detection, at)
        changes.append((event, raised))
        worker = self.workers.get(detection.cell) if detection.cell else None
        if worker:
            note = f"grid worker of cell {detection.cell}"
            event, assigned = _system(event, Action.ASSIGN, at, assignee=worker, note=note)
            changes.append((event, assigned))
        changes += self._flood(event, at, parent)
        saved = self._save(changes)
        # Only once saved: a failed save must not count towards a flood (and a batch
        # that rolls back is followed by `reload`).
        self._counted(event.site, at)
        return saved

    def _counted(self, site: str, at: int) -> None:
        """Count a raise in its site's window. In time order, whatever order the raises
        came in: detections are not in time order (a late reading's, a timer's), and the
        window rebuilt at a restart is sorted. Kept in arrival order, an old raise that
        came late sat behind newer ones where the expiry (from the front) did not reach
        it, and counted towards a flood it was outside of, but only until a restart: a
        run with a restart (or a hand-over) decided differently from one without."""
        recent = self._recent[site]
        bisect.insort(recent, at)
        if len(recent) > self.flood_limit + 1:
            del recent[0]  # the oldest: once a parent is active only its last_ms matters

    def _clear(self, detection: Detection) -> list[SecurityEvent]:
        at = detection.at_ms
        existing = self._open_event(detection.rule_id, detection.key)
        if existing is None or not existing.active:
            return []  # cleared before it was raised, or already returned: nothing to do
        if at < existing.last_ms:
            return []  # raised again since: a replay, or late
        changes = self._overdue(existing, at)
        back = _system(_latest(changes, existing), Action.RETURN, at, note=detection.message)
        return self._save([*changes, back])

    # ------------------------------------------------------------------ flood control

    def _flood_parent(self, site: str, at: int) -> tuple[SecurityEvent | None, list[Change]]:
        """The site's open flood parent as of `at`, and the changes that return it first
        if it went quiet by then."""
        parent = self._open_event(FLOOD_RULE, site)
        if parent is None:
            return None, []
        changes = self._overdue(parent, at)
        return _latest(changes, parent), changes

    def _flood(self, event: SecurityEvent, at: int, parent: SecurityEvent | None) -> list[Change]:
        """The changes that bring `event` into its site's flood, if there is one
        (`parent`: the site's open flood parent, see `_flood_parent`): grouped and
        suppressed, or, if exempt, only counted and named by the parent."""
        site = event.site
        recent = self._recent[site]
        # The window ends at the site's newest raise, this one's or one before it: a raise
        # that comes late counts what a restart's rebuilt window would (`_rebuild_recent`).
        newest = max(at, recent[-1]) if recent else at
        del recent[: bisect.bisect_right(recent, newest - self.flood_window_ms)]
        changes: list[Change] = []
        joining: list[SecurityEvent] = []
        apart: list[SecurityEvent] = []
        if parent is not None and parent.active:
            (apart if self._exempt(event) else joining).append(event)
        elif len(recent) + 1 > self.flood_limit:
            for other in self._open_in_window(site, at):
                if self._exempt(other):
                    apart.append(other)
                    continue
                # An expired shelve runs out before the event is grouped, as if ticked.
                overdue = self._overdue(other, at)
                changes += overdue
                joining.append(_latest(overdue, other))
            (apart if self._exempt(event) else joining).append(event)
            if not joining:
                return []  # only emergencies: each stands on its own, nothing to group
        else:
            return []
        head = self._storm(site, at, parent, joining, apart, latest=event)
        changes.append(head)
        parent_id = head[0].id
        note = f"flood control: incident storm {parent_id}"
        for child in joining:
            grouped, record = _system(child, Action.GROUP, at, parent_id=parent_id, note=note)
            changes.append((grouped, record))
            # A shelved or out-of-service child is already not annunciated: leave its mode.
            if grouped.mode is Mode.NORMAL:
                changes.append(_system(grouped, Action.SUPPRESS, at, note=note))
        if self._exempt(event):
            context = (
                f"raised during incident storm {parent_id}; "
                f"{event.severity.value} events are annunciated on their own"
            )
            changes.append(_system(event, Action.COMMENT, at, note=context))
        return changes

    def _storm(
        self,
        site: str,
        at: int,
        parent: SecurityEvent | None,
        joining: Sequence[SecurityEvent],
        apart: Sequence[SecurityEvent],
        *,
        latest: SecurityEvent,
    ) -> Change:
        """Open the site's flood parent, or repeat it with its summary brought up to
        date: children so far (a returned parent reopened by a new storm keeps its old
        ones), exempt events shown apart, every child's device."""
        old = parent.values if parent is not None else {}
        grouped = _int(old.get("events")) + len(joining)
        shown_apart = _int(old.get("apart")) + len(apart)
        named = _devices(joining, first=parent.devices if parent is not None else ())
        devices = named[:STORM_DEVICES_NAMED]
        # Past the cap a device may or may not be new: say "at least".
        more = len(named) > len(devices) or bool(old.get("devices_more"))
        counted = f"{len(devices)}+" if more else f"{len(devices)}"
        latest_title = latest.title or latest.rule_id
        if self._exempt(latest):
            latest_title += " (shown on its own)"
        also = f", {shown_apart} more shown on their own" if shown_apart else ""
        minutes = f"{self.flood_window_ms / 60_000:g}"
        storm = Detection(
            rule_id=FLOOD_RULE,
            key=site,
            raised=True,
            at_ms=at,
            site=site,
            # The parent is as severe as its worst child (a repeat only raises it).
            severity=_most_severe(
                [e.severity for e in joining] + ([parent.severity] if parent else [])
            ),
            title=f"Incident storm at {site}: {grouped} events grouped",
            message=(
                f"{grouped} events from {counted} devices grouped at {site}{also} "
                f"(more than {self.flood_limit} new events in {minutes} min); "
                f"latest: {latest_title}"
            ),
            incident=FLOOD_INCIDENT,
            source=Source.RULE,
            values={
                "events": grouped,
                "apart": shown_apart,
                "devices": len(devices),
                **({"devices_more": True} if more else {}),
            },
            devices=devices,
        )
        if parent is None:
            return new_event(self._new_id(FLOOD_RULE, site, at), storm, at)
        # Active: one more joins; returned: a new storm reopens it.
        return _system(parent, Action.REPEAT, at, detection=storm)

    def _exempt(self, event: SecurityEvent) -> bool:
        """Whether flood control must leave `event` annunciated on its own."""
        return event.rule_id != FLOOD_RULE and event.severity in self.flood_exempt

    def _open_in_window(self, site: str, at: int) -> list[SecurityEvent]:
        """Open top-level events of the site raised in the window (not flood parents)."""
        found: list[SecurityEvent] = []
        while True:
            where = EventFilter(
                site=site,
                states=_OPEN_STATES,
                since_ms=at - self.flood_window_ms + 1,
                top_level_only=True,
            )
            page = self.store.list_events(where, limit=_PAGE, offset=len(found))
            found += page
            if len(page) < _PAGE:
                return [
                    e
                    for e in reversed(found)
                    if e.rule_id != FLOOD_RULE and e.source not in NO_FLOOD
                ]

    def _rebuild_recent(self) -> None:
        """Refill the flood windows from the store: per site, what `_flood` would hold
        had this process counted every raise (the newest `flood_limit + 1`, within the
        window of the site's newest). Each site by its own newest raise: sites' event
        times need not keep pace with each other."""
        newest = self.store.newest_raises(
            self.flood_limit + 1, leave_out_rule=FLOOD_RULE, leave_out_sources=NO_FLOOD
        )
        for site, raised in newest.items():
            self._recent[site] = [t for t in raised if t > raised[-1] - self.flood_window_ms]

    # ------------------------------------------------------------------ timers

    def tick(self, now_ms: int) -> list[SecurityEvent]:
        """Apply the timers due by `now_ms`, each at its own due time: unshelve expired
        shelves, return flood parents whose site went quiet."""
        changed: list[SecurityEvent] = []
        with self._lock:
            if self._recent_stale:
                self.reload()
            for shelved in self.store.shelved_expired(now_ms):
                changed += self._retry(functools.partial(self._catch_up, shelved.id, now_ms))
            open_parents = EventFilter(rule_id=FLOOD_RULE, states=_OPEN_STATES)
            parents = self.store.list_events(open_parents, limit=10_000)
            for parent in parents:
                if self._quiet_due(parent, now_ms):
                    changed += self._retry(functools.partial(self._catch_up, parent.id, now_ms))
        return changed

    def _catch_up(self, event_id: str, now_ms: int) -> list[SecurityEvent]:
        event = self.store.get(event_id)
        # Nothing if someone got there first (or shelved it again, or a new event joined).
        return [] if event is None else self._save(self._overdue(event, now_ms))

    def _overdue(self, event: SecurityEvent, at: int) -> list[Change]:
        """The timer transitions `tick` would have made to `event` by `at`, in the order
        they fell due: its shelve running out, the quiet-down of its flood (as parent or
        suppressed child).

        Applied before anything else happens to the event at `at`, so its audit trail
        is the same however often `tick` runs.
        """
        changes: list[Change] = []
        while step := self._next_timer(_latest(changes, event), at):
            changes += step
        return changes

    def _next_timer(self, event: SecurityEvent, at: int) -> list[Change]:
        """The first of `event`'s timers due by `at` (a tie: the shelve first, as `tick`
        does), as changes; none if nothing is due."""
        if event.closed:
            return []
        if event.rule_id != FLOOD_RULE and event.mode is Mode.SUPPRESSED and event.parent_id:
            # A suppressed child waits for its parent; that one's timers come first.
            parent = self._get(event.parent_id)
            if parent is None or not self._quiet_due(parent, at):
                return []
            return self._overdue(parent, at)  # ends with the quiet-down: unsuppresses
        quiet_at = None
        if event.rule_id == FLOOD_RULE and self._quiet_due(event, at):
            quiet_at = event.last_ms + self.flood_window_ms
        until = event.shelved_until_ms if event.mode is Mode.SHELVED else None
        if until is not None and until <= at and (quiet_at is None or until <= quiet_at):
            return [_system(event, Action.UNSHELVE, until, note="shelve expired")]
        return [] if quiet_at is None else self._quiet_changes(event)

    def _quiet_due(self, parent: SecurityEvent, at: int) -> bool:
        """Whether the flood of `parent` was over by `at` (its site quiet for the window)."""
        return parent.active and not parent.closed and parent.last_ms + self.flood_window_ms <= at

    def _quiet_changes(self, parent: SecurityEvent) -> list[Change]:
        """Return a flood parent at the moment its site went quiet, and unsuppress its
        children."""
        quiet_at = parent.last_ms + self.flood_window_ms
        minutes = f"{self.flood_window_ms / 60_000:g}"
        note = f"no new event at {parent.site} for {minutes} min"
        changes = [_system(parent, Action.RETURN, quiet_at, note=note)]
        # The flood is over: its children are annunciated again, each in its own state
        # (still grouped under the parent, so the desk shows where they came from).
        unsuppress = f"flood control: incident storm {parent.id} is over"
        for child in self.store.children(parent.id):
            if child.mode is Mode.SUPPRESSED and not child.closed:
                changes.append(_system(child, Action.UNSUPPRESS, quiet_at, note=unsuppress))
        return changes

    # ------------------------------------------------------------------ operators

    def act(
        self,
        event_id: str,
        action: Action,
        *,
        actor: str,
        at_ms: int,
        note: str = "",
        assignee: str | None = None,
        until_ms: int | None = None,
        expected_version: int | None = None,
    ) -> SecurityEvent:
        """Apply an operator's action; `expected_version` turns a lost race into StaleEvent.

        Timers of the event due by `at_ms` (see `tick`) are applied first.
        """

        def attempt() -> SecurityEvent:
            event = self.store.get(event_id)
            if event is None:
                raise UnknownEvent(event_id)
            if action not in OPERATOR_ACTIONS:
                raise ForbiddenTransition(event, action, "only the system does that")
            if expected_version is not None and event.version != expected_version:
                raise StaleEvent(event_id)
            changes = self._overdue(event, at_ms)
            acted, record = transition(
                _latest(changes, event),
                action,
                actor=actor,
                at_ms=at_ms,
                note=note,
                assignee=assignee,
                until_ms=until_ms,
            )
            self._save([*changes, (acted, record)])
            return acted

        with self._lock:
            if self._recent_stale:
                self.reload()
            # With an expected version the operator decided on what they saw: never retry.
            return attempt() if expected_version is not None else self._retry(attempt)

    # ------------------------------------------------------------------ helpers

    def _save(self, changes: list[Change]) -> list[SecurityEvent]:
        if not changes:
            return []
        self.store.save(changes, sinks=self.sinks)
        latest = {event.id: event for event, _ in changes}  # keeps first-seen order
        for event in latest.values():
            self._open.saved(event)
        return list(latest.values())

    # ------------------------------------------------------------------ the open events

    def _load_open(self) -> None:
        """Copy the store's open events (the copy `_open_event` and `_get` answer from)."""
        found: list[SecurityEvent] = []
        where = EventFilter(states=_OPEN_STATES)
        while page := self.store.list_events(where, limit=_PAGE, offset=len(found)):
            found += page
        self._open.load(found)

    def _open_event(self, rule_id: str, key: str) -> SecurityEvent | None:
        """The condition's open event: from the copy, or (in a retry) from the store."""
        if not self._open.fresh:
            return self._open.by_condition.get((rule_id, key))
        event = self.store.open_event(rule_id, key)
        self._open.read(rule_id, key, event)
        return event

    def _get(self, event_id: str) -> SecurityEvent | None:
        """An event by id: an open one from the copy (outside a retry), else the store."""
        if not self._open.fresh and (event := self._open.by_id.get(event_id)) is not None:
            return event
        event = self.store.get(event_id)
        if event is not None and self._open.fresh:
            self._open.saved(event)
        return event

    def _retry(self, attempt: Callable[[], T]) -> T:
        """`_retry`, reading the store afresh (and refreshing the copy) after a lost race."""
        try:
            return attempt()
        except StaleEvent:
            pass
        self._open.fresh = True
        try:
            return _retry(attempt)
        finally:
            self._open.fresh = False

    # ------------------------------------------------------------------ escalation
    # (issue 16, item 4) The one write `events.escalation` makes; nothing above uses it.

    def record_escalation(
        self, event_id: str, action: Action, *, at_ms: int, note: str, expected_version: int
    ) -> SecurityEvent:
        """Record an escalation step (NOTIFY or ESCALATE, system actor, wall-clock `at_ms`)
        on the event as the escalator read it: `StaleEvent` if it changed since (decide
        again on the fresh trail), `ForbiddenTransition` if it may no longer be escalated
        (acknowledged, shelved, suppressed, out of service, closed). Goes to every sink."""
        if action not in (Action.NOTIFY, Action.ESCALATE):
            raise ValueError(f"{action.value} is not an escalation step")
        with self._lock:
            event = self.store.get(event_id)
            if event is None:
                raise UnknownEvent(event_id)
            if event.version != expected_version:
                raise StaleEvent(event_id)
            change = _system(event, action, at_ms, note=note)
            self._save([change])
            return change[0]


class _OpenEvents:
    """The manager's copy of the open (not closed) events, by condition and by id."""

    def __init__(self) -> None:
        self.by_condition: dict[tuple[str, str], SecurityEvent] = {}
        self.by_id: dict[str, SecurityEvent] = {}
        self.fresh = False
        """Inside a retry: read the store, not the copy."""

    def load(self, events: Sequence[SecurityEvent]) -> None:
        self.by_condition.clear()
        self.by_id.clear()
        for event in events:
            self.saved(event)

    def saved(self, event: SecurityEvent) -> None:
        """`event` as now stored: kept while open, dropped once closed."""
        condition = (event.rule_id, event.key)
        if event.closed:
            self.by_id.pop(event.id, None)
            if (held := self.by_condition.get(condition)) is not None and held.id == event.id:
                del self.by_condition[condition]
            return
        if (held := self.by_condition.get(condition)) is not None and held.id != event.id:
            self.by_id.pop(held.id, None)  # the store holds one open event per condition
        self.by_condition[condition] = event
        self.by_id[event.id] = event

    def read(self, rule_id: str, key: str, event: SecurityEvent | None) -> None:
        """What a fresh read of the condition found."""
        held = self.by_condition.pop((rule_id, key), None)
        if held is not None:
            self.by_id.pop(held.id, None)
        if event is not None:
            self.saved(event)


def _system(
    event: SecurityEvent,
    action: Action,
    at_ms: int,
    *,
    note: str = "",
    assignee: str | None = None,
    parent_id: str | None = None,
    detection: Detection | None = None,
) -> Change:
    return transition(
        event,
        action,
        actor=SYSTEM,
        at_ms=at_ms,
        note=note,
        assignee=assignee,
        parent_id=parent_id,
        detection=detection,
    )


def _latest(changes: Sequence[Change], event: SecurityEvent) -> SecurityEvent:
    """`event` as `changes` leave it."""
    for changed, _ in reversed(changes):
        if changed.id == event.id:
            return changed
    return event


def _retry(attempt: Callable[[], T]) -> T:
    """Run `attempt` again (it re-reads) when another writer changed an event first."""
    for _ in range(RETRIES - 1):
        try:
            return attempt()
        except StaleEvent:
            continue
    return attempt()


def _devices(events: Sequence[SecurityEvent], first: Sequence[str] = ()) -> tuple[str, ...]:
    """`first`, then every further device of the events, in first-seen order."""
    seen = dict.fromkeys(first)
    for event in events:
        for device in (event.device, *event.devices):
            if device:
                seen[device] = None
    return tuple(seen)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _most_severe(severities: Sequence[Severity]) -> Severity:
    return min(severities, key=lambda s: s.rank)
