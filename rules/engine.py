"""The rules engine: `evaluate(reading, state, now) -> detections` and `tick(state, now)`.

Pure: no I/O and no clock of its own. The caller passes `now` (the hub passes wall
time; the alarm-quality harness passes simulated time, as fast as it likes) and owns
`EngineState`, which is JSON so a restart resumes open conditions instead of forgetting
or repeating them. State lives in slots, one per (rule, dedup key).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from events.model import Detection, Location, Source
from rules.conditions import (
    EVENT_FIELD,
    Change,
    Logic,
    Matcher,
    Obs,
    Trigger,
    Triggers,
    compile_any,
    compile_condition,
    triggers_of,
    union,
)
from rules.directory import Directory
from rules.overrides import compile_overrides
from rules.schema import Match, Rule, template_names
from sensors.base import FieldValue, Reading

REJECTED: Final = "rejected"
"""Channel (and measurement) of the pseudo-readings the hub makes of rejected messages,
so rules can count malformed traffic per device."""

UNKNOWN_SOURCES: Final = "unknown_sources"
"""Field that marks the pseudo-readings standing for rejected messages under site or
device names the directory does not know, aggregated per known site (or for the hub):
channel `rejected` like a device's, but no `reason` field (so rules on a device's
rejections never see them) and the scope's tally so far instead: `unknown_sources`
(distinct names), `unknown_total` (messages), `unknown_names` (the most frequent, with
counts) and `last_reason`."""

HUB_SCOPE: Final = "_hub"
"""The site of aggregated rejections under unknown sites (never a site id: `_` cannot
start one)."""

DEFAULT_INSTANT_CLEAR_MS: Final = 5 * 60_000
"""An instant condition with no `clear` returns to normal this long after its last raise."""

SNAPSHOT_VERSION: Final = 1

_NEVER: Final = 2**63

_PARTITION: Final = "\x1e"
"""Starts the key part of a slot id whose state is partitioned by the condition (not
by the rule's key); such a slot keeps the key of its open event in `key`."""


def rejected_reading(site: str, kind: str, device: str, reason: str, at_ns: int) -> Reading:
    """A rejected message as a reading rules can count (never stored in InfluxDB)."""
    return Reading(
        REJECTED, site, kind, device, REJECTED, None, at_ns, False, None, {}, {"reason": reason}
    )


def unknown_sources_reading(
    scope: str, reason: str, at_ns: int, *, total: int, sources: int, names: str
) -> Reading:
    """A rejection under unknown names as a reading of its scope (a known site, or
    `HUB_SCOPE`), carrying the scope's tally so the event can list names and counts."""
    fields: dict[str, FieldValue] = {
        UNKNOWN_SOURCES: sources,
        "unknown_total": total,
        "unknown_names": names,
        "last_reason": reason,
    }
    return Reading(REJECTED, scope, "", "", REJECTED, None, at_ns, False, None, {}, fields)


@dataclass
class EngineState:
    """Everything the engine remembers; `to_json`/`from_json` for snapshots."""

    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    clock_ms: int = 0
    """The latest `now` seen: time never runs backwards for timers (clock jumps)."""
    next_due_ms: int | None = field(default=None, compare=False)
    """Earliest timer of any slot, or None when unknown (then `tick` rebuilds `timers`
    from the slots). Derived, not snapshotted."""
    timers: list[tuple[int, str]] = field(default_factory=list, compare=False, repr=False)
    """A heap of (due, slot id): `tick` pops what is due instead of scanning every slot.
    Entries go stale when a slot's `due` moves on or the slot goes; they are skipped
    (and pruned when they outnumber the slots). Derived, not snapshotted."""

    def to_json(self) -> bytes:
        return json.dumps(self.to_body(), separators=(",", ":"), sort_keys=True).encode()

    def to_body(self) -> dict[str, Any]:
        """The snapshot as JSON values (shared with the live state: encode it at once)."""
        return {"version": SNAPSHOT_VERSION, "clock_ms": self.clock_ms, "slots": self.slots}

    @classmethod
    def from_json(cls, data: bytes) -> EngineState:
        return cls.from_body(json.loads(data))

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> EngineState:
        """`to_body`'s output, decoded."""
        if body.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"rules snapshot version {body.get('version')!r} is not {SNAPSHOT_VERSION}"
            )
        return cls(slots=dict(body["slots"]), clock_ms=int(body["clock_ms"]))


class _Names(dict[str, str]):
    """Template values; a name with no value renders as `?` rather than failing."""

    def __missing__(self, key: str) -> str:
        return "?"


def _NOTHING(obs: Obs) -> bool:
    return False


CLOCK_TICKS: Final = "(hub clock ticks)"
"""What moved the watermark when the hub's idle ticks did (`Engine.late_behind`)."""
LATE_SOURCES: Final = 100
"""The most names `Engine.late_behind` keeps."""

_OTHER: Final = object()
"""A kind, channel or event type no rule names (the index maps them all to this)."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: Rule
    logic: Logic
    clear_after_ms: int | None
    fingerprint: str
    scoped: bool = True
    """The scope tests more than the kind (the index already tests that)."""
    clear_when: Sequence[Match] | None = None
    """The rule's `clear.when`, if it has one."""
    partitions: bool = False
    """The condition partitions its state (`Logic.partition` is its own)."""

    clears: Matcher = _NOTHING
    """`clear.when`, compiled."""
    sid_prefix: str = ""
    """Slot ids of the rule start with this (see `_slot_id`)."""

    def in_scope(self, obs: Obs) -> bool:
        scope = self.rule.scope
        r = obs.reading
        if scope.sites and r.site not in scope.sites:
            return False
        if scope.kinds and r.kind not in scope.kinds:
            return False
        if scope.cells and obs.get("cell") not in scope.cells:
            return False
        if scope.attributes:
            info = obs.device
            if info is None:
                return False
            for name, wanted in scope.attributes.items():
                if info.attributes.get(name) != wanted:
                    return False
        return True


def _slot_id(rule_id: str, key: str) -> str:
    return f"{rule_id}\x1f{key}"


class Engine:
    """Compiled rules over a directory; holds no per-reading state itself."""

    def __init__(
        self, rules: Sequence[Rule], directory: Directory | None = None, *, lateness_ms: int = 0
    ) -> None:
        self.directory = directory or Directory()
        if lateness_ms < 0:
            raise ValueError(f"lateness_ms must be 0 or more, not {lateness_ms}")
        self.lateness_ms = lateness_ms
        """Allowed lateness: a timer fires once the watermark is this far past it, so a
        reading up to this late (another connection's, delayed) is evaluated before it.
        A slot's own readings fire its due timers first, whatever the lateness."""
        self.late_readings = 0
        """Readings older than the watermark by more than the allowed lateness: timers
        past their time may have fired before them (not part of the state)."""
        self.late_behind: dict[str, int] = {}
        """Late readings by what last moved the watermark before them: a device (one
        whose clock runs ahead collects nearly all), or `CLOCK_TICKS` (the hub's idle
        ticks passed readings delayed in transit). At most `LATE_SOURCES` names."""
        self._leader = CLOCK_TICKS
        self.rules: list[_Compiled] = []
        for rule in rules:
            logic = compile_condition(
                rule.condition, self.directory, rule_clears=rule.clear is not None
            )
            after = rule.clear.after if rule.clear is not None else None
            if after is None and logic.instant:
                after = max(rule.cooldown, DEFAULT_INSTANT_CLEAR_MS)
            scope = rule.scope
            scoped = bool(scope.sites or scope.cells or scope.attributes)
            clear_when = rule.clear.when if rule.clear is not None else None
            partitions = type(logic).partition is not Logic.partition
            clears = compile_any(clear_when) if clear_when is not None else _NOTHING
            self.rules.append(
                _Compiled(
                    rule,
                    logic,
                    after,
                    rule.model_dump_json(),
                    scoped,
                    clear_when,
                    partitions,
                    clears,
                    rule.id + "\x1f",
                )
            )
        self._by_id = {c.rule.id: c for c in self.rules}
        self._variants, self.override_problems = compile_overrides(rules, self.directory)
        """Per (rule, device): the rule as its device's profile overrides it."""
        self._triggers = self._rule_triggers()
        named = [t for ts in self._triggers if ts is not None for t in ts]
        self._kinds = {t.kind for t in named} | {k for c in self.rules for k in c.rule.scope.kinds}
        self._channels = {t.channel for t in named}
        self._events = {t.event for t in named}
        self._candidates: dict[tuple[object, object, object], tuple[_Compiled, ...]] = {}
        """Rules a reading of (kind, channel, event type) can matter to, in rule order;
        names no rule uses are `_OTHER`, so the index stays as small as the rules."""

    def rebuilt(self, rules: Sequence[Rule], directory: Directory) -> Engine:
        """These rules over this directory, with this engine's lateness and counts of
        late readings (a reload, a registry change)."""
        new = Engine(rules, directory, lateness_ms=self.lateness_ms)
        new.late_readings, new.late_behind = self.late_readings, self.late_behind
        new._leader = self._leader
        return new

    def _rule_triggers(self) -> list[Triggers]:
        """Per rule: the readings its condition (any device's variant) or its `clear`
        can notice."""
        variants: dict[str, list[Logic]] = {}
        for (rule_id, _device), logic in self._variants.items():
            variants.setdefault(rule_id, []).append(logic)
        out: list[Triggers] = []
        for c in self.rules:
            logics = [c.logic, *variants.get(c.rule.id, [])]
            clear = c.rule.clear
            clears = triggers_of(clear.when) if clear is not None and clear.when else []
            out.append(union(clears, *(logic.triggers() for logic in logics)))
        return out

    def candidates(self, reading: Reading, event: object) -> tuple[_Compiled, ...]:
        """The rules, in order, a reading can matter to (`event`: its event type,
        `Obs.get("event")`); every other rule would find it out of scope or irrelevant."""
        kind = reading.kind if reading.kind in self._kinds else _OTHER
        channel = reading.channel if reading.channel in self._channels else _OTHER
        try:
            event = event if event in self._events else _OTHER
        except TypeError:  # unhashable: equals no scalar a rule names
            event = _OTHER
        index = (kind, channel, event)
        found = self._candidates.get(index)
        if found is None:
            found = self._candidates[index] = tuple(
                c
                for c, triggers in zip(self.rules, self._triggers, strict=True)
                if (not c.rule.scope.kinds or kind in c.rule.scope.kinds)
                and (triggers is None or any(_fits(t, kind, channel, event) for t in triggers))
            )
        return found

    # --- the two entry points -----------------------------------------------------

    def evaluate(self, reading: Reading, state: EngineState, now_ms: int) -> list[Detection]:
        """Fire timers due by `now` (less the allowed lateness), then apply the reading to
        every rule in scope, each slot's own due timers first."""
        timers = state.timers
        lateness = self.lateness_ms
        before = state.clock_ms
        if state.next_due_ms is None or (
            timers and timers[0][0] <= max(now_ms, state.clock_ms) - lateness
        ):
            out = self.tick(state, now_ms)
        else:
            out = []
            state.clock_ms = max(state.clock_ms, now_ms)
        obs = Obs(reading, reading.ts_ns // 1_000_000, self.directory.device(reading.device))
        if obs.ts_ms > before:
            self._leader = reading.device
        elif obs.ts_ms < state.clock_ms - lateness:
            self._late()
        ctx: dict[str, Any] | None = None
        keys: dict[str, str] = {}  # rendered once per reading, not once per rule
        variants = self._variants
        slots = state.slots
        for compiled in self.candidates(reading, obs.get(EVENT_FIELD)):
            if compiled.scoped and not compiled.in_scope(obs):
                continue
            clear_when = compiled.clear_when
            clears = clear_when is not None and compiled.clears(obs)
            logic = (
                variants.get((compiled.rule.id, reading.device), compiled.logic)
                if variants
                else compiled.logic
            )
            relevant = logic.relevant(obs)
            if not clears and not relevant:
                continue
            template = compiled.rule.key
            key = keys.get(template)  # the key's names come from the reading only
            if key is None:
                key = keys[template] = _render_key(template, obs) or self._render(
                    template, compiled, obs, {}
                )
            if compiled.partitions and (part := logic.partition(obs)) is not None:
                sid = compiled.sid_prefix + _PARTITION + part
            else:
                sid = compiled.sid_prefix + key
            slot = slots.get(sid)
            if lateness and slot is not None:
                due = slot.get("due")
                if due is not None and due <= obs.ts_ms:  # held back: its own time has come
                    out += self._fire_until(state, sid, obs.ts_ms)
                    slot = slots.get(sid)
            if slot is None:
                if not relevant or not logic.starts(obs):
                    continue  # a clear with nothing open, or nothing to remember
                slot = slots[sid] = {"c": {}, "open": False}
            # What messages fired later by a timer (no reading at hand) can still name:
            # the reading's identity and its kind's tags (`door`, `bay_id`, `lot`).
            # One dict per reading, shared by its slots (never changed in place).
            if ctx is None:
                ctx = {
                    **reading.tags,
                    "site": reading.site,
                    "cell": obs.get("cell"),
                    "device": reading.device,
                    "kind": reading.kind,
                }
            slot["ctx"] = ctx
            if clears and slot["open"]:
                slot["c"] = {}
                out += self._apply(compiled, key, slot, Change(False, obs.ts_ms), obs)
                self._schedule(compiled, slot, state, sid)
                continue
            c = slot["c"]
            change = logic.observe(c, obs)
            if change is not None:
                out += self._apply(compiled, key, slot, change, obs)
            # `_schedule` and `_forgettable`, inline: this runs per rule per reading.
            due = compiled.logic.due(c)
            clear_at = slot.get("clear_at")
            if clear_at is not None and (due is None or clear_at < due):
                due = clear_at
            if due is None:
                slot["due"] = None
                if not slot["open"] and compiled.logic.idle(c):
                    del slots[sid]
                continue
            if due != slot.get("due") and state.next_due_ms is not None:
                _push_timer(state, due, sid)
            slot["due"] = due
        _prune_timers(state)
        return out

    def tick(self, state: EngineState, now_ms: int) -> list[Detection]:
        """Fire every timer due by `now` (condition timers and instant auto-clears)."""
        if now_ms > state.clock_ms:
            self._leader = CLOCK_TICKS  # a reading that moved it says so after this
        state.clock_ms = max(state.clock_ms, now_ms)
        now = state.clock_ms - self.lateness_ms
        if state.next_due_ms is None:
            _rebuild_timers(state)
        timers = state.timers
        out: list[Detection] = []
        held: set[str] = set()
        # In time order: a slot whose next timer is also due by `now` (a window sliding
        # twice, a window end then an auto-clear) fires again in the same tick.
        while timers and timers[0][0] <= now:
            at_ms, sid = heapq.heappop(timers)
            slot = state.slots.get(sid)
            if slot is None or slot.get("due") != at_ms or sid in held:
                continue  # stale: the slot went or its timer moved (or waits, below)
            fired, auto_clear = self._fire(state, sid, slot, at_ms)
            out += fired
            if sid not in state.slots:
                continue
            following = slot.get("due")
            # Only forward (or the condition timer an auto-clear shared its time with):
            # a timer that does not move on waits for the next tick instead of spinning.
            if following is None or following > now:
                continue
            if not (following > at_ms or auto_clear):
                held.add(sid)
            elif following == at_ms:
                heapq.heappush(timers, (following, sid))  # `_schedule` pushes moves only
        for sid in held:
            heapq.heappush(timers, (state.slots[sid]["due"], sid))
        state.next_due_ms = timers[0][0] if timers else _NEVER
        _prune_timers(state)  # mostly stale entries: start afresh
        return out

    def _fire(
        self, state: EngineState, sid: str, slot: dict[str, Any], at_ms: int
    ) -> tuple[list[Detection], bool]:
        """A slot's timer due at `at_ms`: its condition's or its auto-clear. Reschedules
        the slot, or forgets it when nothing is left. Returns the detections, and whether
        it was the auto-clear."""
        rule_id, key = sid.split("\x1f", 1)
        key = slot.get("key", key)
        compiled = self._by_id.get(rule_id)
        if compiled is None:
            del state.slots[sid]
            return [], False
        change: Change | None
        auto_clear = slot.get("clear_at") is not None and slot["clear_at"] <= at_ms
        if auto_clear:
            slot["clear_at"] = None
            change = Change(False, at_ms)
        else:
            device = slot.get("ctx", {}).get("device")
            change = self._logic(compiled, device).fire(slot["c"], at_ms)
        out = self._apply(compiled, key, slot, change, None) if change is not None else []
        self._schedule(compiled, slot, state, sid)
        if self._forgettable(compiled, slot):
            del state.slots[sid]  # nothing left to remember
        return out, auto_clear

    def _fire_until(self, state: EngineState, sid: str, until_ms: int) -> list[Detection]:
        """Fire one slot's timers due by `until_ms` (a reading of its own at that time),
        in order, as `tick` would have; the heap's entries for them go stale."""
        out: list[Detection] = []
        while (slot := state.slots.get(sid)) is not None:
            at_ms = slot.get("due")
            if at_ms is None or at_ms > until_ms:
                break
            fired, auto_clear = self._fire(state, sid, slot, at_ms)
            out += fired
            following = slot.get("due")
            if following is not None and following <= at_ms and not auto_clear:
                break  # a timer that does not move on: the next tick sees it (as in `tick`)
        return out

    def _late(self) -> None:
        self.late_readings += 1
        behind = self.late_behind
        leader = self._leader
        if leader in behind:
            behind[leader] += 1
        elif len(behind) < LATE_SOURCES:
            behind[leader] = 1

    # --- helpers ------------------------------------------------------------------

    def _logic(self, compiled: _Compiled, device: str | None) -> Logic:
        """The rule's logic for a device: as its profile overrides it, if it does."""
        if device is None or not self._variants:
            return compiled.logic
        return self._variants.get((compiled.rule.id, device), compiled.logic)

    @staticmethod
    def _forgettable(compiled: _Compiled, slot: dict[str, Any]) -> bool:
        """No open event, no timer, and the condition has nothing left to remember."""
        return not slot["open"] and slot.get("due") is None and compiled.logic.idle(slot["c"])

    def _schedule(
        self, compiled: _Compiled, slot: dict[str, Any], state: EngineState, sid: str
    ) -> None:
        due = compiled.logic.due(slot["c"])
        clear_at = slot.get("clear_at")
        if clear_at is not None and (due is None or clear_at < due):
            due = clear_at
        if due is not None and due != slot.get("due") and state.next_due_ms is not None:
            _push_timer(state, due, sid)
        slot["due"] = due

    def _apply(
        self, compiled: _Compiled, key: str, slot: dict[str, Any], change: Change, obs: Obs | None
    ) -> list[Detection]:
        rule = compiled.rule
        out: list[Detection] = []
        if change.raised:
            last = slot.get("last_raise")
            if slot["open"] and last is not None and change.at_ms - last < rule.cooldown:
                return []  # within cooldown: already counted as this open event
            if slot["open"] and slot.get("key", key) != key:
                # A partitioned slot (travel) raising under another event key: the
                # event open under the old key returns first, so none is left open.
                ended = Change(False, change.at_ms)
                out.append(self._detection(compiled, slot["key"], slot, ended, None))
            slot["open"] = True
            slot["last_raise"] = change.at_ms
            slot["key"] = key
            if compiled.clear_after_ms is not None:
                slot["clear_at"] = change.at_ms + compiled.clear_after_ms
        else:
            if not slot["open"]:
                return []
            slot["open"] = False
            slot["clear_at"] = None
            key = slot.get("key", key)
        return [*out, self._detection(compiled, key, slot, change, obs)]

    def _detection(
        self, compiled: _Compiled, key: str, slot: dict[str, Any], change: Change, obs: Obs | None
    ) -> Detection:
        rule = compiled.rule
        ctx = slot.get("ctx", {})
        device = ctx.get("device")
        info = self.directory.device(device) if device else None
        values: dict[str, FieldValue] = dict(change.values)
        extra = {"key": key, "rule": rule.id, "title": rule.title}
        message = self._render(
            rule.message, compiled, obs, {**extra, **{k: str(v) for k, v in values.items()}}, ctx
        )
        location = Location(info.lon, info.lat) if info is not None else None
        return Detection(
            rule_id=rule.id,
            key=key,
            raised=change.raised,
            at_ms=change.at_ms,
            site=str(ctx.get("site", "")),
            cell=ctx.get("cell"),
            device=device,
            severity=rule.severity,
            title=rule.title,
            message=message,
            incident=rule.incident_kind,
            source=Source.RULE,
            values=values,
            devices=change.devices,
            location=location,
        )

    def _render(
        self,
        template: str,
        compiled: _Compiled,
        obs: Obs | None,
        extra: Mapping[str, str],
        ctx: Mapping[str, Any] | None = None,
    ) -> str:
        names = _Names()
        for name in template_names(template):
            if name in extra:
                names[name] = extra[name]
            elif obs is not None and (value := obs.get(name)) is not None:
                names[name] = str(value)
            elif ctx is not None and ctx.get(name) is not None:
                names[name] = str(ctx[name])
            elif ctx is not None:
                info = self.directory.device(str(ctx.get("device")))
                if info is not None and info.attributes.get(name) is not None:
                    names[name] = str(info.attributes[name])
        return template.format_map(names)

    def carry_over(self, state: EngineState, previous: Engine) -> int:
        """After a reload: drop the slots of rules removed or changed (their state no
        longer means the same); keep the rest. Returns how many slots were dropped.
        See `retire` for the events those slots had open."""
        return len(self._changed_slots(state, previous))

    def retire(self, state: EngineState, previous: Engine, now_ms: int) -> list[Detection]:
        """`carry_over`, and a clear for every event a dropped slot had open: nothing
        is left to clear it otherwise. A condition still true under the new rule raises
        again (the event manager makes that a repeat of the returned event)."""
        out: list[Detection] = []
        for sid, slot in self._changed_slots(state, previous):
            if not slot.get("open"):
                continue
            rule_id, key = sid.split("\x1f", 1)
            # The rule as it raised the event (a slot from an older snapshot may only be
            # known to the new engine, or to neither: then there is no event to name).
            owner, compiled = previous, previous._by_id.get(rule_id)
            if compiled is None:
                owner, compiled = self, self._by_id.get(rule_id)
            if compiled is None:
                continue
            change = Change(False, max(now_ms, state.clock_ms))
            out.append(owner._detection(compiled, slot.get("key", key), slot, change, None))
        return out

    def _changed_slots(
        self, state: EngineState, previous: Engine
    ) -> list[tuple[str, dict[str, Any]]]:
        dropped = []
        for sid in list(state.slots):
            rule_id = sid.split("\x1f", 1)[0]
            new, old = self._by_id.get(rule_id), previous._by_id.get(rule_id)
            if new is None or old is None or new.fingerprint != old.fingerprint:
                dropped.append((sid, state.slots.pop(sid)))
        state.next_due_ms = None  # rescan: the earliest timer may have gone
        return dropped


def _fits(t: Trigger, kind: object, channel: object, event: object) -> bool:
    return (
        (t.channel is None or t.channel == channel)
        and (t.kind is None or t.kind == kind)
        and (t.event is None or t.event == event)
    )


def _render_key(template: str, obs: Obs) -> str | None:
    """A key that is one name (`{device}`, `{cell}`) as `_render` renders it, without
    its template machinery; None for any other template."""
    names = template_names(template)
    if len(names) != 1 or len(template) != len(names[0]) + 2:
        return None
    value = obs.get(names[0])
    return "?" if value is None else str(value)


def _push_timer(state: EngineState, due: int, sid: str) -> None:
    """A slot's timer moved: push the new one; the old one is skipped when it comes up
    (see `_prune_timers`)."""
    heapq.heappush(state.timers, (due, sid))
    if state.next_due_ms is not None and due < state.next_due_ms:
        state.next_due_ms = due


def _prune_timers(state: EngineState) -> None:
    """Moved timers leave their old entries in the heap until they come up. In a backlog
    that spans less event time than the timers (a silence timer moves with every
    reading) none comes up, and the heap would grow with the readings: past twice one
    per slot, it is rebuilt from the slots, so memory follows the slots."""
    if len(state.timers) > 2 * len(state.slots) + 1024:
        _rebuild_timers(state)


def _rebuild_timers(state: EngineState) -> None:
    """The timer heap from the slots (a restored snapshot, a reload, or pruning)."""
    state.timers = [(s["due"], sid) for sid, s in state.slots.items() if s.get("due") is not None]
    heapq.heapify(state.timers)
    state.next_due_ms = state.timers[0][0] if state.timers else _NEVER


def evaluate(engine: Engine, reading: Reading, state: EngineState, now_ms: int) -> list[Detection]:
    """Functional spelling of `Engine.evaluate`."""
    return engine.evaluate(reading, state, now_ms)


def open_conditions(state: EngineState) -> Iterable[tuple[str, str]]:
    """(rule id, key) of every condition currently raised."""
    for sid, slot in state.slots.items():
        if slot.get("open"):
            rule_id, key = sid.split("\x1f", 1)
            yield rule_id, key
