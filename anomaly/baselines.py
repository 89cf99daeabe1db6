"""Online baselines: anomaly scoring that learns each device from its first reading.

The hub's default when no trained model exists (`gridwatch anomaly train` saves one;
docs/anomaly-hub.md has the figures). Per (device, measurement) a `FieldNovelty` learns
the usual values as they come; per device a repeat counter learns how long its
measurements usually hold still. Pure CPU, no I/O, deterministic in the readings: the
same readings give the same detections however they are batched, and the learned state
(`state_changes` / `load_state`) is plain bytes the hub commits with its log position.

`FieldNovelty` is a cheaper cut of `anomaly.context.ContextNovelty` (the NAB-scored
detector, docs/anomaly-nab.md), sized for ~10 measurements per reading and ≤ 10 µs of CPU
per reading: one view (the values as they are, so the learned range is what an operator
reads), three grid resolutions instead of nine, and no duration component (its block
history is ~1000 floats per stream, rewritten at every commit); a stuck sensor, what that
component caught, is caught here by the repeat counter instead. What stays:

- **Warm-up.** The first `warmup_readings` values of a measurement fix its range (score
  0); until the device's warm-up (`warmup_ms`) ends, every value widens it. The grids
  span the range plus `headroom` and move to a wider span only when a value falls
  outside it (moving the visited cells is a pass over all of them).
- **Range break.** A value beyond the range by more than `margin` of its width scores 1.0;
  the range grows to include it (visited cells carried over, nothing forgotten).
- **Context.** Each value is a point (level in the range, step from the previous value,
  clipped at `delta_clip`); every grid resolution remembers the cells it has visited. The
  score is the share of grids for which neither the point's cell nor a neighbour was ever
  visited: a level, or a jump, this device has not shown before.
- **Stuck.** A device whose measured (float) fields all repeat exactly, reading after
  reading, more than `stuck_factor` times its longest such run so far and at least
  `stuck_min` times, scores 1.0 (live sensors carry noise; integer counts such as a car
  park's occupancy legitimately hold, so they do not take part).

Every reading is learned, flagged or not (a novelty detector must learn a new regime or
it would alarm on it for ever; the rate limit below keeps a held condition to one open
event). No device alarms during its warm-up: `warmup_ms` of event time from its first
reading (default a day, so the daily cycle is in the baseline before anything counts as
unusual), and a measurement not before its own `warmup_readings`.

Decisions per device, as the trained scorer (`anomaly.online`) makes them: a flagged
reading raises `anomaly.<kind>` keyed by the device; while it stays anomalous at most one
detection per `repeat_after_ms` is sent (the event manager bumps the open event; the
flags held in between are counted in `values["held"]`), and it clears once the device has
gone `clear_after_ms` without a flagged reading, at exactly that time (so a clear does
not depend on where the log was cut into batches).
"""

from __future__ import annotations

import functools
import json
import math
import struct
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

from anomaly.cells import CELL_ROW, moved_changes, moved_levels
from anomaly.conditions import INCIDENT, Scored, quiet_clear, rule_id
from anomaly.extractor import FeatureVector
from events.model import Detection, Severity, Source
from sensors.base import FieldValue, Reading, SensorKind
from sensors.registry import KINDS

SKIPPED: Final[Mapping[str, str]] = MappingProxyType(
    {
        "seq": "a message counter: it rises by design (gaps are the rules' sequence check)",
        "battery": "drains steadily, so every reading is a new low; a low charge is the "
        "device's own low_battery event and a rule",
        "pressure": "follows the weather: new highs and lows for weeks say nothing about "
        "the device or the place",
        "capacity": "configuration (a lot's spaces), not a measurement",
        "lat": "where the device is, not what it measures",
        "lon": "where the device is, not what it measures",
    }
)
"""Numeric fields the sensor kinds declare that are not scored, and why. Booleans and
text (door open/closed, alarm, event names) are states or categories: not scored either."""

STATE_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class ScoredField:
    """One measurement the baselines learn, with the words operators read."""

    name: str
    label: str
    unit: str
    measured: bool
    """A float measurement: it takes part in the stuck check (integer counts do not)."""


def scored_fields(kinds: Iterable[SensorKind]) -> dict[str, tuple[ScoredField, ...]]:
    """Per kind, the fields to score: every numeric field (int or float, never bool) its
    module declares, but those in `SKIPPED`. Kinds with none (access: door states and a
    battery) are left out."""
    out: dict[str, tuple[ScoredField, ...]] = {}
    for kind in kinds:
        chosen = tuple(
            ScoredField(spec.name, spec.description, spec.unit, spec.type is float)
            for spec in kind.fields
            if spec.type in (int, float) and spec.name not in SKIPPED
        )
        if chosen:
            out[kind.name] = chosen
    return out


@dataclass(frozen=True, slots=True)
class OnlineParams:
    """One configuration for every device and measurement."""

    warmup_readings: int = 60
    warmup_ms: int = 86_400_000
    margin: float = 0.25
    """After the warm-up, a value beyond the learned range by more than this share of
    its width is a range break."""
    headroom: float = 0.25
    """Spare span the grids get beyond the values when they widen."""
    resolutions: tuple[int, ...] = (16, 24, 32)
    """Grid sizes, coarse to fine (the finest last: `FieldNovelty.step` looks there first)."""
    delta_clip: float = 0.2
    threshold: float = 1.0
    """A reading is flagged when a measurement's score reaches this: a range break or
    a stuck device (1.0), or a context new to every grid."""
    stuck_min: int = 15
    stuck_factor: float = 2.0
    repeat_after_ms: int = 600_000
    clear_after_ms: int = 900_000

    def __post_init__(self) -> None:
        if self.warmup_readings < 2 or self.warmup_ms < 0:
            raise ValueError("need warmup_readings >= 2 and warmup_ms >= 0")
        if not self.resolutions or any(g < 2 or g > 256 for g in self.resolutions):
            raise ValueError("resolutions must be grid sizes in 2..256")
        if list(self.resolutions) != sorted(set(self.resolutions)):
            raise ValueError("resolutions must be distinct and rising (the finest last)")
        if not 0.0 <= self.margin <= 10.0 or not 0.0 < self.delta_clip <= 1.0:
            raise ValueError("need 0 <= margin <= 10 and 0 < delta_clip <= 1")
        if not 0.0 <= self.headroom <= 10.0:
            raise ValueError("need 0 <= headroom <= 10")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if self.stuck_min < 2 or self.stuck_factor < 1.0:
            raise ValueError("need stuck_min >= 2 and stuck_factor >= 1")
        if self.repeat_after_ms <= 0 or self.clear_after_ms <= 0:
            raise ValueError("repeat_after_ms and clear_after_ms must be > 0")


# --------------------------------------------------------------------------- one stream


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where a grid's cell (level i, step j) sits in its bit mask: bit
    `(i + 1) * width + j + shift`. Levels run 0..g (the grids span every value) and
    steps -J..J (clipped), with a margin of one for the neighbours, so a grid of 32 is
    a 500-bit integer: ~100 bytes, where a set of its cells took kilobytes."""

    g: int
    width: int
    shift: int
    neighbours: tuple[int, ...]

    def index(self, key: int) -> int:
        i, j = divmod(key + CELL_ROW // 2, CELL_ROW)
        return (i + 1) * self.width + j - CELL_ROW // 2 + self.shift

    def key(self, index: int) -> int:
        i, j = divmod(index, self.width)
        return (i - 1) * CELL_ROW + j - self.shift

    def widen(self, mask: int, old_lo: float, old_hi: float, lo: float, hi: float) -> int:
        """`anomaly.cells.widen_cells` on the bits of `mask`: the first day of a device
        regrids often, and going through sets of cell keys made its readings cost about
        half as much again as a learned device's. Each level's and each change's new
        cells are worked out once per call (a grid has a few dozen of each), not per cell,
        and a change's new cells, a contiguous run, are set in one shift per level."""
        old_width, width = old_hi - old_lo, hi - lo
        ratio = old_width / width
        g, row, shift = self.g, self.width, self.shift
        levels: dict[int, range] = {}
        runs: dict[int, int] = {}  # per old change, its new ones (a run) as bits of level -1
        out = 0
        for index in _bits(mask):
            i, j = divmod(index, row)
            new_levels = levels.get(i)
            if new_levels is None:
                new_levels = levels[i] = moved_levels(i - 1, g, old_lo, old_width, lo, width)
            run = runs.get(j)
            if run is None:
                moved = moved_changes(j - shift, ratio)
                run = runs[j] = ((1 << len(moved)) - 1) << (moved.start + shift)
            for a in new_levels:
                out |= run << ((a + 1) * row)
        return out


@functools.lru_cache(maxsize=16)
def _layouts(resolutions: tuple[int, ...], clip: float) -> tuple[_Layout, ...]:
    out = []
    for g in resolutions:
        steps = math.floor(clip * g + 0.5) + 1
        width = 2 * steps + 3
        neighbours = tuple(di * width + dj for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj)
        out.append(_Layout(g, width, steps + 1, neighbours))
    return tuple(out)


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class FieldNovelty:
    """Context novelty of one measurement of one device (see the module doc).

    Two ranges: `lo`..`hi`, the values learned (what range breaks are judged against
    and what operators read as "usual"), and `glo`..`ghi`, the span the grids divide,
    which grows with `headroom` to spare whenever a value falls outside it, so the
    visited cells move to a wider grid a few times while a device learns, not at every
    new extreme (moving them costs a pass over all of them). A grid's visited cells are
    the set bits of one integer (`_Layout`)."""

    __slots__ = (
        "before",
        "broke",
        "cells_changed",
        "clip",
        "fine",
        "ghi",
        "glo",
        "headroom",
        "hi",
        "layouts",
        "lo",
        "masks",
        "prev",
        "ready",
        "scale",
        "seen",
        "warm",
    )

    def __init__(self, p: OnlineParams) -> None:
        self.seen = 0
        self.ready = False
        """The readings' warm-up is over."""
        self.warm: list[float] = []
        self.lo = 0.0
        self.hi = 0.0
        self.glo = 0.0
        self.ghi = 0.0
        self.scale = 0.0
        """1 / (ghi - glo), or 0 for an empty span."""
        self.prev = 0.0
        self.before = (0.0, 0.0, 0.0)
        """(lo, hi, prev) before the last value that scored above 0 (for the wording)."""
        self.layouts = _layouts(p.resolutions, p.delta_clip)
        self.fine = self.layouts[-1]
        self.masks: list[int] = [0] * len(self.layouts)
        """Per grid, coarse to fine, its visited cells as bits."""
        self.clip = p.delta_clip
        self.headroom = p.headroom
        self.cells_changed = False
        """A cell was added or moved since the cells were last saved."""
        self.broke = False
        """The last value scored broke the range (else its score was the context's)."""

    def usual(self, x: float) -> bool:
        """Learn ``x`` if it is the usual case, the one most values take, and say so:
        inside the range, and the finest grid has visited the point's cell (see `step`),
        so it scores 0 and teaches the grids nothing. Else change nothing."""
        if not (self.ready and self.lo <= x <= self.hi):
            return False
        scale = self.scale
        du = (x - self.prev) * scale
        clip = self.clip
        if du > clip:
            du = clip
        elif du < -clip:
            du = -clip
        fine = self.fine
        g = fine.g
        index = (
            (math.floor((x - self.glo) * scale * g) + 1) * fine.width
            + math.floor(du * g + 0.5)
            + fine.shift
        )
        if (self.masks[-1] >> index) & 1:
            self.prev = x
            self.seen += 1
            return True
        return False

    def step(self, x: float, p: OnlineParams, learning: bool = False) -> float:
        """Score ``x`` as the next value, then learn it; the score is in [0, 1]. While
        `learning` (the device's warm-up) the range takes in every value. (`broke` and
        `before` tell about the last value that scored above 0.)"""
        if self.usual(x):
            return 0.0
        self.broke = False
        if self.seen < p.warmup_readings:
            self.seen += 1
            self.warm.append(x)
            if self.seen == p.warmup_readings:
                self._start(p)
            return 0.0
        self.seen += 1
        lo, hi = self.lo, self.hi
        prev = self.prev
        self.prev = x
        score = 0.0
        if x > hi or x < lo:
            slack = 0.0 if learning else p.margin * (hi - lo)
            if learning or x > hi + slack or x < lo - slack or hi == lo:
                self.lo, self.hi = min(lo, x), max(hi, x)
                self.before = (lo, hi, prev)
                self.broke = not learning
                score = 1.0
            if x > self.ghi or x < self.glo:
                self._regrid(x)
        scale = self.scale
        u = (x - self.glo) * scale
        du = (x - prev) * scale
        clip = self.clip
        if du > clip:
            du = clip
        elif du < -clip:
            du = -clip
        # The finest grid first: a point whose cell there was visited lies in, or next
        # to, a visited cell of every coarser grid too (the points that visited it were
        # learned in all grids), so it is not novel and teaches nothing new.
        floor = math.floor
        fine = self.fine
        g = fine.g
        index = (floor(u * g) + 1) * fine.width + floor(du * g + 0.5) + fine.shift
        masks = self.masks
        if (masks[-1] >> index) & 1:
            return score
        novel = 0
        for k, layout in enumerate(self.layouts):
            g = layout.g
            index = (floor(u * g) + 1) * layout.width + floor(du * g + 0.5) + layout.shift
            mask = masks[k]
            if not (mask >> index) & 1:
                for offset in layout.neighbours:
                    if (mask >> (index + offset)) & 1:
                        break
                else:
                    novel += 1
                masks[k] = mask | (1 << index)
        self.cells_changed = True
        if novel and score == 0.0:
            self.before = (lo, hi, prev)
            score = novel / len(masks)
        return score

    def _start(self, p: OnlineParams) -> None:
        """End of the readings' warm-up: fix the ranges, learn the values in order."""
        values = self.warm
        self.warm = []
        lo, hi = min(values), max(values)
        self.lo, self.hi = lo, hi
        spare = p.headroom * (hi - lo)
        self.set_span(lo - spare, hi + spare)
        self.prev = values[0]
        for value in values:
            self._visit(value)
        self.cells_changed = True
        self.ready = True

    def _regrid(self, x: float) -> None:
        """Widen the grids' span to take in ``x``, with headroom; carry the cells over."""
        glo, ghi = min(self.glo, x), max(self.ghi, x)
        spare = self.headroom * (ghi - glo)
        glo = glo - spare if glo < self.glo else glo
        ghi = ghi + spare if ghi > self.ghi else ghi
        for k, layout in enumerate(self.layouts):
            self.masks[k] = layout.widen(self.masks[k], self.glo, self.ghi, glo, ghi)
        self.set_span(glo, ghi)
        self.cells_changed = True

    def cells(self, k: int) -> set[int]:
        """Grid `k`'s visited cells as (level, step) keys (`anomaly.cells.CELL_ROW`)."""
        layout = self.layouts[k]
        return {layout.key(index) for index in _bits(self.masks[k])}

    def set_span(self, glo: float, ghi: float) -> None:
        """Set the span the grids divide (the cells must already be in its units)."""
        self.glo, self.ghi = glo, ghi
        self.scale = 1.0 / (ghi - glo) if ghi > glo else 0.0

    def _visit(self, x: float) -> None:
        """Learn ``x`` (inside the grids' span) without scoring it."""
        scale = self.scale
        u = (x - self.glo) * scale
        du = max(-self.clip, min(self.clip, (x - self.prev) * scale))
        self.prev = x
        for k, layout in enumerate(self.layouts):
            g = layout.g
            index = (math.floor(u * g) + 1) * layout.width + math.floor(du * g + 0.5)
            self.masks[k] |= 1 << (index + layout.shift)

    # --- state: the scalars go in the device's row (`_Device.encode`), the cells in
    # a row of their own, written only when they changed
    def cells_bytes(self) -> bytes:
        parts = [m.to_bytes((m.bit_length() + 7) // 8, "little") for m in self.masks]
        head = struct.pack(f"<{len(parts)}I", *(len(b) for b in parts))
        return head + b"".join(parts)

    def load_cells(self, data: bytes) -> None:
        n = len(self.masks)
        if len(data) < 4 * n:
            raise ValueError("cell state is cut short")
        sizes = struct.unpack_from(f"<{n}I", data)
        offset = 4 * n
        for k, size in enumerate(sizes):
            self.masks[k] = int.from_bytes(data[offset : offset + size], "little")
            offset += size
        if offset != len(data):
            raise ValueError("cell state has trailing bytes")


# --------------------------------------------------------------------------- one device


class _Device:
    __slots__ = (
        "cell",
        "fields",
        "first_ms",
        "held",
        "last_flag_ms",
        "last_sent_ms",
        "last_values",
        "longest",
        "open",
        "repeats",
        "since_ms",
        "site",
        "stuck",
    )

    def __init__(self, site: str, cell: str | None, first_ms: int) -> None:
        self.site = site
        self.cell = cell
        self.first_ms = first_ms
        self.fields: dict[str, FieldNovelty] = {}
        self.last_values: tuple[float, ...] = ()
        self.repeats = 0
        """Consecutive readings whose measured values all equal their predecessor's."""
        self.longest = 0
        """The longest such run that ended unflagged."""
        self.stuck = False
        self.open = False
        self.since_ms = 0
        self.last_flag_ms = 0
        self.last_sent_ms = 0
        self.held = 0
        """Flagged readings since the last detection sent (the rate limit held them)."""

    def encode(self) -> bytes:
        """The device as one row: a JSON line of names and integers, then every float as
        little-endian doubles (exact, and far cheaper to write than float text)."""
        floats = array("d", self.last_values)
        fields: list[list[Any]] = []
        for name, field in self.fields.items():
            floats.extend((field.lo, field.hi, field.glo, field.ghi, field.prev))
            floats.extend(field.warm)
            fields.append([name, field.seen, len(field.warm)])
        head = {
            "v": STATE_VERSION,
            "site": self.site,
            "cell": self.cell,
            "first_ms": self.first_ms,
            "last_values": len(self.last_values),
            "repeats": self.repeats,
            "longest": self.longest,
            "stuck": self.stuck,
            "open": self.open,
            "since_ms": self.since_ms,
            "last_flag_ms": self.last_flag_ms,
            "last_sent_ms": self.last_sent_ms,
            "held": self.held,
            "fields": fields,
        }
        if sys.byteorder != "little":
            floats.byteswap()
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + floats.tobytes()

    @classmethod
    def decode(cls, data: bytes, p: OnlineParams) -> _Device:
        """Rebuild a device from `encode`'s row."""
        line, _, packed = data.partition(b"\n")
        head = json.loads(line)
        if head.get("v") != STATE_VERSION:
            raise ValueError(f"device state version {head.get('v')!r}, not {STATE_VERSION}")
        floats = array("d")
        floats.frombytes(packed)
        if sys.byteorder != "little":
            floats.byteswap()
        device = cls(str(head["site"]), head["cell"], int(head["first_ms"]))
        n = int(head["last_values"])
        device.last_values = tuple(floats[:n])
        device.repeats = int(head["repeats"])
        device.longest = int(head["longest"])
        device.stuck = bool(head["stuck"])
        device.open = bool(head["open"])
        device.since_ms = int(head["since_ms"])
        device.last_flag_ms = int(head["last_flag_ms"])
        device.last_sent_ms = int(head["last_sent_ms"])
        device.held = int(head["held"])
        at = n
        for name, seen, warm in head["fields"]:
            field = device.fields[str(name)] = FieldNovelty(p)
            lo, hi, glo, ghi, prev = floats[at : at + 5]
            field.warm = list(floats[at + 5 : at + 5 + int(warm)])
            at += 5 + int(warm)
            field.seen = int(seen)
            field.ready = field.seen >= p.warmup_readings
            field.lo, field.hi, field.prev = lo, hi, prev
            field.set_span(glo, ghi)
        if at != len(floats):
            raise ValueError("device state has trailing values")
        return device


@dataclass(frozen=True, slots=True)
class _Finding:
    """What made a reading unusual (the wording's facts)."""

    reason: str
    """range (beyond the learned range), context (a level or step not seen), stuck."""
    field: ScoredField
    value: float
    low: float
    high: float
    previous: float
    score: float


# --------------------------------------------------------------------------- the scorer


class OnlineScorer:
    """Per-device baselines learned online; not thread-safe (one worker at a time).

    Same surface as `anomaly.online.AnomalyScorer` (`score_batch`, `tick`, counters),
    plus the learned state: `state_changes()` (the devices changed since the last call,
    as rows to commit) and `load_state(rows)` (what a restart resumes from)."""

    def __init__(
        self,
        params: OnlineParams | None = None,
        fields: Mapping[str, tuple[ScoredField, ...]] | None = None,
    ) -> None:
        self.params = params or OnlineParams()
        self.fields = dict(fields) if fields is not None else scored_fields(KINDS.values())
        self._plans = {
            kind: tuple((spec.name, spec.measured, spec) for spec in specs)
            for kind, specs in self.fields.items()
        }
        self._devices: dict[str, _Device] = {}
        self._open: set[str] = set()
        self._changed: set[str] = set()
        """Devices scored (or cleared) since the last `state_changes`."""
        self.scored = 0
        self.flagged = 0
        self.keep = True
        """Return each scored reading from `score_batch` (the service turns it off when
        nobody looks at them: building them costs ~1 µs a reading)."""

    @property
    def devices(self) -> int:
        return len(self._devices)

    # ------------------------------------------------------------------ scoring
    def score_batch(self, readings: Sequence[Reading]) -> tuple[list[Detection], list[Scored]]:
        """Score and learn readings (in log order); the detections, and when `keep` each
        scored reading (its scored values, best score, flag) for harnesses and plots."""
        detections: list[Detection] = []
        kept: list[Scored] = []
        keep = self.keep
        fields_of = self.fields
        for reading in readings:
            specs = fields_of.get(reading.kind)
            if specs is None:
                continue
            score, flagged = self._score(reading, specs, detections)
            if keep and score >= 0.0:
                values = reading.fields
                vector = FeatureVector(
                    reading.kind,
                    reading.site,
                    reading.device,
                    reading.cell,
                    reading.ts_ns // 1_000_000,
                    tuple(_number(values.get(s.name)) for s in specs),
                )
                kept.append(Scored(vector, score, flagged))
        return detections, kept

    def _score(
        self, reading: Reading, specs: tuple[ScoredField, ...], out: list[Detection]
    ) -> tuple[float, bool]:
        """Score one reading into `out`; its best score (-1: nothing scored) and flag."""
        p = self.params
        ts = reading.ts_ns // 1_000_000
        key = f"{reading.kind}/{reading.device}"
        device = self._devices.get(key)
        if device is None:  # kept once something of it is scored
            device = _Device(reading.site, reading.cell, ts)
        learning = ts - device.first_ms < p.warmup_ms
        values = reading.fields
        fields = device.fields
        best: FieldNovelty | None = None
        best_spec: ScoredField | None = None
        best_score = 0.0
        learned = False
        measured: list[float] = []
        for name, is_measured, spec in self._plans[reading.kind]:
            raw = values.get(name)
            if raw is None:
                continue
            x = raw if type(raw) is float else float(raw)
            if x - x != 0.0:  # NaN or infinite: nothing to learn
                continue
            if is_measured:
                measured.append(x)
            field = fields.get(name)
            if field is None:
                field = fields[name] = FieldNovelty(self.params)
            elif field.usual(x):
                learned = True
                continue
            learned = True
            score = field.step(x, p, learning)
            if score > best_score:
                best_score = score
                best, best_spec = field, spec
        if not learned:
            return -1.0, False
        self._devices[key] = device
        self._changed.add(key)
        self.scored += 1
        finding: _Finding | None = None
        if best is not None and best_spec is not None and best_score >= p.threshold:
            low, high, previous = best.before
            reason = "range" if best.broke else "context"
            finding = _Finding(reason, best_spec, best.prev, low, high, previous, best_score)
        if (
            measured
            and self._stuck(device, tuple(measured), learning)
            and (finding is None or finding.reason == "context")
        ):
            spec = next(s for s in specs if s.measured and s.name in values)
            field = fields[spec.name]
            finding = _Finding("stuck", spec, field.prev, field.lo, field.hi, field.prev, 1.0)
            best_score = 1.0
        flagged = not learning and finding is not None
        self._decide(key, device, ts, finding if flagged else None, out)
        return best_score, flagged

    def _stuck(self, device: _Device, values: tuple[float, ...], learning: bool) -> bool:
        """Count exact repeats of the measured values; whether the device is stuck."""
        p = self.params
        if values == device.last_values:
            device.repeats += 1
        else:
            if not device.stuck and device.repeats > device.longest:
                device.longest = device.repeats
            device.repeats = 0
            device.stuck = False
        device.last_values = values
        if learning or device.repeats < max(p.stuck_min, p.stuck_factor * device.longest):
            return False
        device.stuck = True
        return True

    # ------------------------------------------------------------------ decisions
    def _decide(
        self, key: str, device: _Device, ts: int, finding: _Finding | None, out: list[Detection]
    ) -> None:
        p = self.params
        if device.open and ts >= device.last_flag_ms + p.clear_after_ms:
            out.append(self._clear(key, device))
        if finding is None:
            return
        self.flagged += 1
        if not device.open:
            device.open = True
            self._open.add(key)
            device.since_ms = device.last_flag_ms = device.last_sent_ms = ts
            device.held = 0
            out.append(self._detection(key, device, ts, finding))
            return
        device.last_flag_ms = ts
        if ts - device.last_sent_ms >= p.repeat_after_ms:
            device.last_sent_ms = ts
            out.append(self._detection(key, device, ts, finding))
            device.held = 0
        else:
            device.held += 1

    def tick(self, now_ms: int) -> list[Detection]:
        """Clear the conditions of devices quiet for `clear_after_ms` by event time `now_ms`."""
        out: list[Detection] = []
        clear_after = self.params.clear_after_ms
        for key in sorted(self._open):
            device = self._devices[key]
            if now_ms >= device.last_flag_ms + clear_after:
                self._changed.add(key)
                out.append(self._clear(key, device))
        return out

    def _clear(self, key: str, device: _Device) -> Detection:
        device.open = False
        self._open.discard(key)
        at = device.last_flag_ms + self.params.clear_after_ms
        kind, name = key.split("/", 1)
        return quiet_clear(
            kind,
            name,
            at_ms=at,
            site=device.site,
            cell=device.cell,
            message=(
                f"back to usual: no unusual reading for "
                f"{_duration(self.params.clear_after_ms)} (unusual since "
                f"{_clock(device.since_ms, at)})"
            ),
        )

    def _detection(self, key: str, device: _Device, ts: int, finding: _Finding) -> Detection:
        kind, name = key.split("/", 1)
        learned = _duration(ts - device.first_ms)
        since = _clock(device.since_ms, ts)
        spec = finding.field
        unit = f" {spec.unit}" if spec.unit else ""
        usual = f"usual {_fmt(finding.low)} to {_fmt(finding.high)}{unit} (learned over {learned})"
        if finding.reason == "stuck":
            shown = [s for s in self.fields[kind] if s.measured and s.name in device.fields][:3]
            frozen = ", ".join(
                f"{s.label.lower()} {_fmt(device.fields[s.name].prev)}"
                + (f" {s.unit}" if s.unit else "")
                for s in shown
            )
            title = f"Unusual {kind}: readings frozen"
            message = (
                f"Readings frozen: the same values {device.repeats + 1} times in a row "
                f"({frozen}); this device's values usually change within "
                f"{device.longest + 1} readings (learned over {learned}); "
                f"unusual since {since}"
            )
        elif finding.reason == "range":
            title = f"Unusual {kind}: {spec.label.lower()}"
            message = f"{spec.label} {_fmt(finding.value)}{unit}, {usual}; unusual since {since}"
        else:
            title = f"Unusual {kind}: {spec.label.lower()}"
            step = finding.value - finding.previous
            message = (
                f"{spec.label} {_fmt(finding.value)}{unit} after {_fmt(finding.previous)}"
                f"{unit} (a change of {'+' if step >= 0 else ''}{_fmt(step)}{unit} this device "
                f"has not shown at this level), {usual}; unusual since {since}"
            )
        values: dict[str, FieldValue] = {
            "score": round(finding.score, 6),
            "threshold": self.params.threshold,
            "reason": finding.reason,
            "field": spec.name,
            "value": finding.value,
            "usual_low": finding.low,
            "usual_high": finding.high,
            "learned_s": (ts - device.first_ms) // 1000,
            "since_ms": device.since_ms,
            "held": device.held,
        }
        if finding.reason == "stuck":
            values["repeats"] = device.repeats + 1
        return Detection(
            rule_id=rule_id(kind),
            key=name,
            raised=True,
            at_ms=ts,
            site=device.site,
            cell=device.cell,
            device=name,
            severity=Severity.LOW,
            title=title,
            message=message,
            incident=INCIDENT,
            source=Source.ANOMALY,
            values=values,
        )

    # ------------------------------------------------------------------ state
    def state_changes(self) -> dict[str, bytes]:
        """Rows for the devices changed since the last call: `<kind>/<device>` (JSON:
        scalars, decision) and `<kind>/<device>/<field>` (visited cells, only when they
        changed). Marks them saved."""
        rows: dict[str, bytes] = {}
        changed, self._changed = self._changed, set()
        for key in changed:
            device = self._devices[key]
            rows[key] = device.encode()
            for name, field in device.fields.items():
                if field.cells_changed:
                    field.cells_changed = False
                    rows[f"{key}/{name}"] = field.cells_bytes()
        return rows

    def load_state(self, rows: Mapping[str, bytes]) -> None:
        """Replace everything learned with `rows` (as `state_changes` wrote them)."""
        devices: dict[str, _Device] = {}
        for key, data in rows.items():
            if key.count("/") == 1:
                devices[key] = _Device.decode(data, self.params)
        for key, data in rows.items():
            if key.count("/") == 2:
                device_key, name = key.rsplit("/", 1)
                device = devices.get(device_key)
                if device is not None and name in device.fields:
                    device.fields[name].load_cells(data)
        self._devices = devices
        self._open = {key for key, device in devices.items() if device.open}
        self._changed = set()


def _number(value: FieldValue | None) -> float:
    if value is None or isinstance(value, bool | str):
        return math.nan
    return float(value)


def _fmt(value: float) -> str:
    """A measurement as operators read it: a few significant digits, no exponent."""
    size = abs(value)
    if size >= 1000:
        return f"{value:.0f}"
    if size >= 100:
        return f"{value:.1f}"
    if size >= 0.1 or size == 0.0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _duration(ms: int) -> str:
    minutes = ms / 60_000
    if minutes < 90:
        return f"{max(1, round(minutes))} min"
    hours = minutes / 60
    if hours < 48:
        return f"{round(hours)} h"
    return f"{round(hours / 24)} days"


def _clock(at_ms: int, now_ms: int) -> str:
    """When, in UTC: the time of day, with the date when it is not `now_ms`'s day."""
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    return at.strftime("%H:%M UTC" if at.date() == now.date() else "%Y-%m-%d %H:%M UTC")
