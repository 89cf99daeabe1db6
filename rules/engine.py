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
from rules.conditions import Change, Logic, Obs, any_match, compile_condition
from rules.directory import Directory
from rules.schema import Rule, template_names
from sensors.base import FieldValue, Reading

REJECTED: Final = "rejected"
"""Channel (and measurement) of the pseudo-readings the hub makes of rejected messages,
so rules can count malformed traffic per device."""

DEFAULT_INSTANT_CLEAR_MS: Final = 5 * 60_000
"""An instant condition with no `clear` returns to normal this long after its last raise."""

SNAPSHOT_VERSION: Final = 1

_NEVER: Final = 2**63


def rejected_reading(site: str, kind: str, device: str, reason: str, at_ns: int) -> Reading:
    """A rejected message as a reading rules can count (never stored in InfluxDB)."""
    return Reading(
        REJECTED, site, kind, device, REJECTED, None, at_ns, False, None, {}, {"reason": reason}
    )


@dataclass
class EngineState:
    """Everything the engine remembers; `to_json`/`from_json` for snapshots."""

    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    clock_ms: int = 0
    """The latest `now` seen: time never runs backwards for timers (clock jumps)."""
    next_due_ms: int | None = field(default=None, compare=False)
    """Earliest timer of any slot, or None when unknown (then `tick` scans). Derived,
    not snapshotted: it spares `evaluate` a scan of every slot per reading."""

    def to_json(self) -> bytes:
        body = {"version": SNAPSHOT_VERSION, "clock_ms": self.clock_ms, "slots": self.slots}
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> EngineState:
        body = json.loads(data)
        if body.get("version") != SNAPSHOT_VERSION:
            raise ValueError(
                f"rules snapshot version {body.get('version')!r} is not {SNAPSHOT_VERSION}"
            )
        return cls(slots=dict(body["slots"]), clock_ms=int(body["clock_ms"]))


class _Names(dict[str, str]):
    """Template values; a name with no value renders as `?` rather than failing."""

    def __missing__(self, key: str) -> str:
        return "?"


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: Rule
    logic: Logic
    clear_after_ms: int | None
    fingerprint: str

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

    def __init__(self, rules: Sequence[Rule], directory: Directory | None = None) -> None:
        self.directory = directory or Directory()
        self.rules: list[_Compiled] = []
        for rule in rules:
            logic = compile_condition(rule.condition, self.directory)
            after = rule.clear.after if rule.clear is not None else None
            if after is None and logic.instant:
                after = max(rule.cooldown, DEFAULT_INSTANT_CLEAR_MS)
            self.rules.append(_Compiled(rule, logic, after, rule.model_dump_json()))
        self._by_id = {c.rule.id: c for c in self.rules}

    # --- the two entry points -----------------------------------------------------

    def evaluate(self, reading: Reading, state: EngineState, now_ms: int) -> list[Detection]:
        """Fire timers due by `now`, then apply the reading to every rule in scope."""
        out = self.tick(state, now_ms)
        obs = Obs(reading, reading.ts_ns // 1_000_000, self.directory.device(reading.device))
        for compiled in self.rules:
            if not compiled.in_scope(obs):
                continue
            clear = compiled.rule.clear
            clears = clear is not None and clear.when is not None and any_match(obs, clear.when)
            relevant = compiled.logic.relevant(obs)
            if not clears and not relevant:
                continue
            key = self._render(compiled.rule.key, compiled, obs, {})
            sid = _slot_id(compiled.rule.id, key)
            slot = state.slots.get(sid)
            if slot is None:
                if not relevant:
                    continue  # a clear with nothing open
                slot = state.slots[sid] = {"c": {}, "open": False}
            # What messages fired later by a timer (no reading at hand) can still name:
            # the reading's identity and its kind's tags (`door`, `bay_id`, `lot`).
            slot["ctx"] = {
                **reading.tags,
                "site": reading.site,
                "cell": obs.get("cell"),
                "device": reading.device,
                "kind": reading.kind,
            }
            if clears and slot["open"]:
                slot["c"] = {}
                out += self._apply(compiled, key, slot, Change(False, obs.ts_ms), obs)
                self._schedule(compiled, slot, state)
                continue
            change = compiled.logic.observe(slot["c"], obs)
            if change is not None:
                out += self._apply(compiled, key, slot, change, obs)
            self._schedule(compiled, slot, state)
        return out

    def tick(self, state: EngineState, now_ms: int) -> list[Detection]:
        """Fire every timer due by `now` (condition timers and instant auto-clears)."""
        state.clock_ms = max(state.clock_ms, now_ms)
        now = state.clock_ms
        if state.next_due_ms is not None and now < state.next_due_ms:
            return []
        out: list[Detection] = []
        # A heap in time order: a slot whose next timer is also due by `now` (a window
        # sliding twice, a window end then an auto-clear) fires again in the same tick.
        due = [
            (slot["due"], sid)
            for sid, slot in state.slots.items()
            if slot.get("due") is not None and slot["due"] <= now
        ]
        heapq.heapify(due)
        while due:
            at_ms, sid = heapq.heappop(due)
            slot = state.slots[sid]
            rule_id, key = sid.split("\x1f", 1)
            compiled = self._by_id.get(rule_id)
            if compiled is None:
                del state.slots[sid]
                continue
            change: Change | None
            auto_clear = slot.get("clear_at") is not None and slot["clear_at"] <= at_ms
            if auto_clear:
                slot["clear_at"] = None
                change = Change(False, at_ms)
            else:
                change = compiled.logic.fire(slot["c"], at_ms)
            if change is not None:
                out += self._apply(compiled, key, slot, change, None)
            self._schedule(compiled, slot, state)
            if not slot["open"] and not slot["c"] and slot.get("due") is None:
                del state.slots[sid]  # nothing left to remember
                continue
            following = slot.get("due")
            # Only forward (or the condition timer an auto-clear shared its time with):
            # a timer that does not move on waits for the next tick instead of spinning.
            if following is not None and following <= now and (following > at_ms or auto_clear):
                heapq.heappush(due, (following, sid))
        pending = [slot["due"] for slot in state.slots.values() if slot.get("due") is not None]
        # A timer that did not move on (see above) is due again at the next tick.
        state.next_due_ms = min(pending) if pending else _NEVER
        return out

    # --- helpers ------------------------------------------------------------------

    def _schedule(self, compiled: _Compiled, slot: dict[str, Any], state: EngineState) -> None:
        times = [t for t in (compiled.logic.due(slot["c"]), slot.get("clear_at")) if t is not None]
        slot["due"] = due = min(times) if times else None
        if due is not None and state.next_due_ms is not None:
            state.next_due_ms = min(state.next_due_ms, due)

    def _apply(
        self, compiled: _Compiled, key: str, slot: dict[str, Any], change: Change, obs: Obs | None
    ) -> list[Detection]:
        rule = compiled.rule
        if change.raised:
            last = slot.get("last_raise")
            if slot["open"] and last is not None and change.at_ms - last < rule.cooldown:
                return []  # within cooldown: already counted as this open event
            slot["open"] = True
            slot["last_raise"] = change.at_ms
            if compiled.clear_after_ms is not None:
                slot["clear_at"] = change.at_ms + compiled.clear_after_ms
        else:
            if not slot["open"]:
                return []
            slot["open"] = False
            slot["clear_at"] = None
        return [self._detection(compiled, key, slot, change, obs)]

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
        longer means the same); keep the rest. Returns how many slots were dropped."""
        dropped = 0
        for sid in list(state.slots):
            rule_id = sid.split("\x1f", 1)[0]
            new, old = self._by_id.get(rule_id), previous._by_id.get(rule_id)
            if new is None or old is None or new.fingerprint != old.fingerprint:
                del state.slots[sid]
                dropped += 1
        return dropped


def evaluate(engine: Engine, reading: Reading, state: EngineState, now_ms: int) -> list[Detection]:
    """Functional spelling of `Engine.evaluate`."""
    return engine.evaluate(reading, state, now_ms)


def open_conditions(state: EngineState) -> Iterable[tuple[str, str]]:
    """(rule id, key) of every condition currently raised."""
    for sid, slot in state.slots.items():
        if slot.get("open"):
            rule_id, key = sid.split("\x1f", 1)
            yield rule_id, key
