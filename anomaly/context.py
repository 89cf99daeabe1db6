"""Context novelty: a streaming detector that learns from the first reading and flags what
the stream has never shown before, in the context of where it came from.

Why this shape (docs/anomaly-nab.md has the measurements): the detectors that lead the
Numenta Anomaly Benchmark all turn readings into coarse *contexts* and alarm on what those
contexts have not seen. CAD OSE quantises each value into 8 levels of the series' range and
alarms when the pair (context, next level) is new; ARTime's adaptive resonance alarms when
a window resonates with no category learned so far; HTM alarms when a transition was not
predicted, then asks how unusual that surprise is for this stream (anomaly likelihood).
This detector keeps the core of all three and nothing heavier than sets of integers:

- **Scale.** The first ``warmup`` readings fix the value range (no score during them).
  Afterwards a reading beyond the range by more than ``margin`` of its width is a *range
  break*: score 1.0, and the range grows to include it (the learned contexts are carried
  over to the wider range, so nothing is forgotten).
- **Contexts.** Each reading becomes a point (level, change): its place in the range and
  its step from the previous reading (clipped at ``delta_clip`` of the range). Every
  resolution in ``resolutions`` cuts that plane into a grid and remembers the cells it has
  visited. A point is *novel* for a grid when neither its cell nor any of the eight
  neighbouring cells was ever visited (so a value that merely crosses a cell boundary is not
  news). The score is the share of grids that find the point novel: one grid's boundaries
  are arbitrary, a vote across several resolutions is not, and the share is the likelihood-
  style post-processing that makes a score comparable across series (a noisy stream has
  visited its whole neighbourhood and scores low; a clean one scores high on a small step).
- **Durations.** Block means of ``run_block`` readings are levelled into ``run_levels``
  bands with hysteresis; a run in a band the stream has left before, longer than
  ``run_factor`` times every earlier run in that band (and at least ``run_min_blocks``
  blocks), scores 1.0 once: a signal stuck where it normally only passes through, or a
  daily rise that does not come.
- **Views.** All of the above runs on the values as they are (``linear``) and on
  ``asinh((x - median) / (compress_scale * robust sigma))`` with median and MAD from the
  warm-up (``compressed``: linear within about ``compress_scale`` robust sigmas of the
  median, logarithmic beyond, so one early
  burst does not squeeze the rest of a series into one cell). The score is the mean over
  the views.

The detector learns every reading, flagged or not: a novelty detector must learn the new
regime, or it would alarm on it forever (the ``Guarded`` default does not apply). Scores are
``0.0`` during the warm-up and for non-finite readings (which are not learned). A decision
is the caller's: ``alarm_flags`` / ``AlarmGate`` flag a score at or above a threshold and
then stay quiet for ``refractory`` readings. Pure Python per reading (no numpy on the hot
path): 5-8 microseconds of CPU per reading at the defaults on the NAB corpus, about half
of it per view (``evaluation.nab_eval.cpu_per_reading``; docs/anomaly-nab.md).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from anomaly.cells import CELL_ROW, widen_cells
from anomaly.protocol import (
    DetectorState,
    FeatureMismatch,
    FloatArray,
    JsonValue,
    StateMismatch,
    as_row,
    as_rows,
    check_state,
)

DEFAULT_RESOLUTIONS: tuple[int, ...] = (16, 18, 20, 22, 24, 26, 28, 30, 32)
VIEWS: tuple[str, ...] = ("linear", "compressed")
MAD_TO_SIGMA = 1.4826
# The decision that goes with the defaults, chosen on the tuning half of the NAB corpus
# (docs/anomaly-nab.md): alarm when the two views' mean share of novel grids reaches 9/18
# (e.g. 4 of 9 grids in one view and 5 in the other; a range break or a long run in one view
# counts 9), then stay quiet for 20 readings.
DEFAULT_THRESHOLD = 8.5 / (2 * len(DEFAULT_RESOLUTIONS))
DEFAULT_REFRACTORY = 20

_ROW = CELL_ROW  # a cell (i, j) is the integer i * _ROW + j (`anomaly.cells`)
_NEIGHBOURS: tuple[int, ...] = (
    -_ROW - 1,
    -_ROW,
    -_ROW + 1,
    -1,
    1,
    _ROW - 1,
    _ROW,
    _ROW + 1,
)


@dataclass(frozen=True)
class ContextParams:
    """The detector's configuration: one for every stream (nothing here is per series)."""

    warmup: int = 150
    margin: float = 0.1
    resolutions: tuple[int, ...] = DEFAULT_RESOLUTIONS
    delta_clip: float = 0.2
    run_block: int = 4
    run_levels: int = 4
    run_hysteresis: float = 0.5
    run_factor: float = 2.0
    run_min_blocks: int = 16
    run_history: int = 1000
    views: tuple[str, ...] = ("linear", "compressed")
    compress_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.warmup < 2:
            raise ValueError("warmup must be >= 2 readings")
        if not self.resolutions or any(g < 2 or g > 256 for g in self.resolutions):
            raise ValueError("resolutions must be grid sizes in 2..256")
        if not 0.0 <= self.margin <= 10.0 or not 0.0 < self.delta_clip <= 1.0:
            raise ValueError("need 0 <= margin <= 10 and 0 < delta_clip <= 1")
        if self.run_block < 1 or self.run_levels < 1 or self.run_history < 1:
            raise ValueError("run_block, run_levels and run_history must be >= 1")
        if self.run_factor < 1.0 or self.run_min_blocks < 1 or self.run_hysteresis < 0.0:
            raise ValueError("need run_factor >= 1, run_min_blocks >= 1, run_hysteresis >= 0")
        if not self.views or any(view not in VIEWS for view in self.views):
            raise ValueError(f"views must be a non-empty choice of {', '.join(VIEWS)}")
        if not self.compress_scale > 0.0:
            raise ValueError("compress_scale must be > 0")

    def to_json(self) -> dict[str, JsonValue]:
        """Plain data (for a model file or a state)."""
        return {
            "warmup": self.warmup,
            "margin": self.margin,
            "resolutions": list(self.resolutions),
            "delta_clip": self.delta_clip,
            "run_block": self.run_block,
            "run_levels": self.run_levels,
            "run_hysteresis": self.run_hysteresis,
            "run_factor": self.run_factor,
            "run_min_blocks": self.run_min_blocks,
            "run_history": self.run_history,
            "views": list(self.views),
            "compress_scale": self.compress_scale,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, JsonValue]) -> ContextParams:
        """Rebuild from ``to_json`` output."""
        resolutions = data["resolutions"]
        views = data["views"]
        if not isinstance(resolutions, list) or not isinstance(views, list):
            raise StateMismatch("resolutions and views must be lists")
        return cls(
            warmup=_int(data, "warmup"),
            margin=_float(data, "margin"),
            resolutions=tuple(_as_int(g, "resolutions") for g in resolutions),
            delta_clip=_float(data, "delta_clip"),
            run_block=_int(data, "run_block"),
            run_levels=_int(data, "run_levels"),
            run_hysteresis=_float(data, "run_hysteresis"),
            run_factor=_float(data, "run_factor"),
            run_min_blocks=_int(data, "run_min_blocks"),
            run_history=_int(data, "run_history"),
            views=tuple(_as_str(v, "views") for v in views),
            compress_scale=_float(data, "compress_scale"),
        )


def _as_int(value: JsonValue, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise StateMismatch(f"{name} must hold integers")
    return value


def _as_str(value: JsonValue, name: str) -> str:
    if not isinstance(value, str):
        raise StateMismatch(f"{name} must hold strings")
    return value


def _int(data: Mapping[str, JsonValue], name: str) -> int:
    return _as_int(data[name], name)


def _float(data: Mapping[str, JsonValue], name: str) -> float:
    value = data[name]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise StateMismatch(f"{name} must be a number")
    return float(value)


def _optional_float(data: Mapping[str, JsonValue], name: str) -> float | None:
    return None if data.get(name) is None else _float(data, name)


class _View:
    """One view of the stream (its values already transformed): range, grids, durations."""

    def __init__(self, params: ContextParams) -> None:
        self.params = params
        self.lo = 0.0
        self.hi = 0.0
        self.prev: float | None = None
        self.grids: list[set[int]] = [set() for _ in params.resolutions]
        self.pairs = list(zip(params.resolutions, self.grids, strict=True))
        self.share = 1.0 / len(self.grids)
        self.block_sum = 0.0
        self.block_count = 0
        self.blocks: deque[float] = deque(maxlen=params.run_history)
        self.band = -1
        self.run = 0
        self.fired = False
        self.longest: dict[int, int] = {}

    def start(self, values: Sequence[float]) -> None:
        """End of the warm-up: fix the range and learn the warm-up readings."""
        self.lo, self.hi = min(values), max(values)
        for value in values:
            self._visit(value)
            self.prev = value
            self._add_to_block(value, advance=False)
        self._replay_runs()

    def step(self, x: float, learn: bool) -> float:
        """Score ``x`` as the next value of this view and, if ``learn``, learn it."""
        p = self.params
        lo, hi = self.lo, self.hi
        slack = p.margin * (hi - lo)
        # a flat range (hi == lo) breaks on any other value
        if x > hi + slack or x < lo - slack or (hi == lo and x != lo):
            if learn:
                self._widen(min(lo, x), max(hi, x))
                self._visit(x)
                self.prev = x
                self._add_to_block(x, advance=True)
            return 1.0
        score = self._novelty(x, learn)
        if self.block_count + 1 >= p.run_block:
            score = max(score, self._run_score(x, learn))
        elif learn:
            self.block_sum += x
            self.block_count += 1
        if learn:
            self.prev = x
        return score

    # --- contexts ---------------------------------------------------------------------
    def _point(self, x: float) -> tuple[float, float]:
        """(level, change) of ``x`` in units of the range; the change clipped."""
        width = self.hi - self.lo
        scale = 1.0 / width if width > 0.0 else 0.0
        prev = self.prev if self.prev is not None else x
        clip = self.params.delta_clip
        du = (x - prev) * scale
        return (x - self.lo) * scale, clip if du > clip else (-clip if du < -clip else du)

    def _novelty(self, x: float, learn: bool) -> float:
        """Share of grids for which (level, change) lands away from every visited cell."""
        u, du = self._point(x)
        novel = 0
        floor = math.floor
        for g, cells in self.pairs:
            key = floor(u * g) * _ROW + floor(du * g + 0.5)
            if key not in cells:
                for offset in _NEIGHBOURS:
                    if key + offset in cells:
                        break
                else:
                    novel += 1
                if learn:
                    cells.add(key)
        return novel * self.share

    def _visit(self, x: float) -> None:
        """Mark the cells of ``x`` visited without scoring (warm-up, range breaks)."""
        u, du = self._point(x)
        for g, cells in self.pairs:
            cells.add(math.floor(u * g) * _ROW + math.floor(du * g + 0.5))

    # --- durations --------------------------------------------------------------------
    def _add_to_block(self, x: float, *, advance: bool) -> None:
        """Add a value to the open block without scoring; keep the block when it closes."""
        self.block_sum += x
        self.block_count += 1
        if self.block_count >= self.params.run_block:
            mean = self.block_sum / self.block_count
            self.block_sum, self.block_count = 0.0, 0
            self.blocks.append(mean)
            if advance:
                self._advance_run(mean, scoring=False)

    def _next_run(self, mean: float) -> tuple[int, int, bool]:
        """The band and run after a block of this mean, and whether the band changed."""
        width = self.hi - self.lo
        u = (mean - self.lo) / width if width > 0.0 else 0.0
        levels = self.params.run_levels
        band = min(max(math.floor(u * levels), 0), levels - 1)
        if self.band < 0:
            return band, 1, False
        h = self.params.run_hysteresis
        low = (self.band - h) / levels
        high = (self.band + 1 + h) / levels
        stays = (
            low <= u < high
            or (self.band == levels - 1 and u >= low)
            or (self.band == 0 and u < high)
        )
        if stays:
            return self.band, self.run + 1, False
        return band, 1, True

    def _fires(self, band: int, run: int, changed: bool) -> bool:
        """A run fires once, when a band left before is held ``run_factor`` times longer
        than ever (a band never left, e.g. a flat stream, has nothing to compare with)."""
        p = self.params
        if (self.fired and not changed) or run < p.run_min_blocks or band not in self.longest:
            return False
        return run > p.run_factor * self.longest[band]

    def _advance_run(self, mean: float, *, scoring: bool) -> bool:
        band, run, changed = self._next_run(mean)
        fires = scoring and self._fires(band, run, changed)
        if changed:
            self.longest[self.band] = max(self.longest.get(self.band, 0), self.run)
            self.fired = False
        self.band, self.run = band, run
        if fires:
            self.fired = True
        return fires

    def _run_score(self, x: float, learn: bool) -> float:
        """Score (and, learning, close) the block that ``x`` completes."""
        mean = (self.block_sum + x) / (self.block_count + 1)
        if learn:
            self.block_sum, self.block_count = 0.0, 0
            self.blocks.append(mean)
            return 1.0 if self._advance_run(mean, scoring=True) else 0.0
        band, run, changed = self._next_run(mean)
        return 1.0 if self._fires(band, run, changed) else 0.0

    def _replay_runs(self) -> None:
        """Rebuild the bands' history from the kept block means (after the range moved)."""
        self.band, self.run, self.fired = -1, 0, False
        self.longest = {}
        for mean in self.blocks:
            self._advance_run(mean, scoring=False)
        # a run already under way when the range moved is not news: it cannot fire
        self.fired = self._fires(self.band, self.run, changed=False)

    # --- range ------------------------------------------------------------------------
    def _widen(self, lo: float, hi: float) -> None:
        """Grow the range to [lo, hi]; carry every visited cell over to the wider grids."""
        for g, cells in self.pairs:
            widen_cells(cells, g, self.lo, self.hi, lo, hi)
        self.lo, self.hi = lo, hi
        self._replay_runs()

    # --- state ------------------------------------------------------------------------
    def state(self, prefix: str) -> tuple[dict[str, JsonValue], dict[str, FloatArray]]:
        """This view as JSON scalars and float64 arrays, keys prefixed."""
        params: dict[str, JsonValue] = {
            f"{prefix}lo": self.lo,
            f"{prefix}hi": self.hi,
            f"{prefix}prev": self.prev,
            f"{prefix}block_sum": self.block_sum,
            f"{prefix}block_count": self.block_count,
            f"{prefix}band": self.band,
            f"{prefix}run": self.run,
            f"{prefix}fired": self.fired,
        }
        longest = sorted(self.longest.items())
        arrays: dict[str, FloatArray] = {
            f"{prefix}blocks": np.asarray(self.blocks, dtype=np.float64),
            f"{prefix}longest": np.asarray(longest, dtype=np.float64).reshape(-1, 2),
        }
        for index, cells in enumerate(self.grids):
            arrays[f"{prefix}cells_{index}"] = np.asarray(sorted(cells), dtype=np.float64)
        return params, arrays

    def restore(self, prefix: str, state: DetectorState) -> None:
        """Load what ``state(prefix)`` wrote."""
        params = state.params
        self.lo = _float(params, f"{prefix}lo")
        self.hi = _float(params, f"{prefix}hi")
        self.prev = _optional_float(params, f"{prefix}prev")
        self.block_sum = _float(params, f"{prefix}block_sum")
        self.block_count = _int(params, f"{prefix}block_count")
        self.band = _int(params, f"{prefix}band")
        self.run = _int(params, f"{prefix}run")
        fired = params[f"{prefix}fired"]
        if not isinstance(fired, bool):
            raise StateMismatch("fired must be a boolean")
        self.fired = fired
        self.blocks.clear()
        self.blocks.extend(float(v) for v in state.arrays[f"{prefix}blocks"])
        longest = np.asarray(state.arrays[f"{prefix}longest"], dtype=np.float64).reshape(-1, 2)
        self.longest = {int(band): int(run) for band, run in longest}
        for index, cells in enumerate(self.grids):
            cells.clear()
            cells.update(int(v) for v in state.arrays[f"{prefix}cells_{index}"])


class ContextNovelty:
    """Streaming context-novelty detector for one univariate stream (see the module doc).

    ``process_one(x)`` scores a reading and learns it in one pass (the hot path);
    ``score_one``/``learn_one`` are the protocol's two halves and give the same numbers.
    """

    kind: str = "context_novelty"
    version: int = 1
    batch_equals_stream: bool = True

    def __init__(self, params: ContextParams | None = None) -> None:
        self.params = params if params is not None else ContextParams()
        self.n_features: int | None = 1
        self._seen = 0
        self._warm: list[float] = []
        self._center = 0.0
        self._scale = 1.0
        self._views = [_View(self.params) for _ in self.params.views]
        self._compressed = [view == "compressed" for view in self.params.views]
        self._plan = list(zip(self._views, self._compressed, strict=True))
        self._share = 1.0 / len(self._views)

    # --- the protocol -----------------------------------------------------------------
    def learn_one(self, x: npt.ArrayLike) -> None:
        """Fold one reading into the model."""
        self._step(_value(x), learn=True)

    def score_one(self, x: npt.ArrayLike) -> float:
        """How novel ``x`` would be as the next reading, in [0, 1]; the model is unchanged."""
        return self._step(_value(x), learn=False)

    def process_one(self, x: npt.ArrayLike | float) -> float:
        """Score ``x`` as the next reading, then learn it; returns the score."""
        return self._step(_value(x), learn=True)

    def learn_many(self, rows: npt.ArrayLike) -> None:
        """``learn_one`` over the rows, in order."""
        for value in _values(rows):
            self._step(value, learn=True)

    def score_many(self, rows: npt.ArrayLike) -> FloatArray:
        """Score every row against the current model (each as if it came next)."""
        return np.array([self._step(v, learn=False) for v in _values(rows)], dtype=np.float64)

    def process_many(self, values: Iterable[float]) -> FloatArray:
        """``process_one`` over a stream of readings: the scores, in order."""
        step = self._step
        return np.array([step(float(v), True) for v in values], dtype=np.float64)

    @property
    def warmed_up(self) -> bool:
        """Whether the warm-up is over (scores can be non-zero)."""
        return self._seen >= self.params.warmup

    @property
    def readings_seen(self) -> int:
        """How many finite readings the detector has learned."""
        return self._seen

    # --- the step ---------------------------------------------------------------------
    def _step(self, x: float, learn: bool) -> float:
        if not math.isfinite(x):
            return 0.0
        if self._seen < self.params.warmup:
            if learn:
                self._seen += 1
                self._warm.append(x)
                if self._seen == self.params.warmup:
                    self._end_warmup()
            return 0.0
        if learn:
            self._seen += 1
        total = 0.0
        for view, compressed in self._plan:
            total += view.step(
                math.asinh((x - self._center) / self._scale) if compressed else x, learn
            )
        return total * self._share

    def _end_warmup(self) -> None:
        """Fix the compressed view's centre and scale, and start every view."""
        values = self._warm
        center = float(np.median(values))
        spread = MAD_TO_SIGMA * float(np.median(np.abs(np.asarray(values) - center)))
        if spread <= 0.0:
            spread = float(np.std(values))
        if spread <= 0.0:
            spread = max(abs(center), 1.0)
        self._center = center
        self._scale = self.params.compress_scale * spread
        for view, compressed in zip(self._views, self._compressed, strict=True):
            view.start(
                [math.asinh((v - center) / self._scale) for v in values] if compressed else values
            )
        self._warm = []

    # --- state ------------------------------------------------------------------------
    def get_state(self) -> DetectorState:
        """Plain data: parameters and scalars as JSON, visited cells and history as arrays."""
        params: dict[str, JsonValue] = {
            "config": self.params.to_json(),
            "seen": self._seen,
            "center": self._center,
            "scale": self._scale,
        }
        arrays: dict[str, FloatArray] = {"warm": np.asarray(self._warm, dtype=np.float64)}
        for index, view in enumerate(self._views):
            view_params, view_arrays = view.state(f"view{index}_")
            params.update(view_params)
            arrays.update(view_arrays)
        return DetectorState(self.kind, self.version, 1, params, arrays)

    @classmethod
    def from_state(cls, state: DetectorState) -> ContextNovelty:
        """Rebuild a detector that continues exactly where ``get_state`` left off."""
        check_state(state, cls.kind, cls.version)
        config = state.params.get("config")
        if not isinstance(config, dict):
            raise StateMismatch("state has no detector configuration")
        detector = cls(ContextParams.from_json(config))
        detector._seen = _int(state.params, "seen")
        detector._center = _float(state.params, "center")
        detector._scale = _float(state.params, "scale")
        detector._warm = [float(v) for v in state.arrays["warm"]]
        for index, view in enumerate(detector._views):
            view.restore(f"view{index}_", state)
        return detector


def _value(x: npt.ArrayLike | float) -> float:
    """One reading as a float (a scalar or a one-feature row)."""
    if isinstance(x, float):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return float(x)
    row = as_row(x)
    if row.size != 1:
        raise FeatureMismatch(f"row has {row.size} features, the detector expects 1")
    return float(row[0])


def _values(rows: npt.ArrayLike) -> list[float]:
    array = as_rows(rows)
    if array.shape[1] != 1:
        raise FeatureMismatch(f"rows have {array.shape[1]} features, the detector expects 1")
    return [float(v) for v in array[:, 0]]


# --- the decision: a threshold and a quiet period, apart from the scores ----------------
def alarm_flags(
    scores: Sequence[float] | FloatArray,
    threshold: float = DEFAULT_THRESHOLD,
    refractory: int = DEFAULT_REFRACTORY,
) -> npt.NDArray[np.bool_]:
    """Alarm where the score reaches ``threshold``, then stay quiet for ``refractory`` rows."""
    values = np.asarray(scores, dtype=np.float64)
    flags = np.zeros(values.shape[0], dtype=np.bool_)
    quiet_until = -1
    for index in np.flatnonzero(values >= threshold).tolist():
        if index > quiet_until:
            flags[index] = True
            quiet_until = index + refractory
    return flags


@dataclass
class AlarmGate:
    """``alarm_flags`` one reading at a time (for a live stream); plain data, picklable."""

    threshold: float = DEFAULT_THRESHOLD
    refractory: int = DEFAULT_REFRACTORY
    quiet_for: int = 0

    def update(self, score: float) -> bool:
        """Return whether this score raises an alarm."""
        if self.quiet_for > 0:
            self.quiet_for -= 1
            return False
        if score >= self.threshold:
            self.quiet_for = self.refractory
            return True
        return False
