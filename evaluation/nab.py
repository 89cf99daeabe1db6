"""The Numenta Anomaly Benchmark's scoring method, reproduced exactly (NAB v1.x sweeper).

Per file and application profile:
- the first ``min(floor(0.15 * n), 0.15 * 5000)`` rows are probationary and not scored;
- a detection inside a window earns ``tpWeight * S(p) / S(-1)`` where ``S`` is NAB's
  scaled sigmoid and ``p = -(right - i + 1) / width`` its relative position (earlier is
  better); only the best, i.e. the first, detection of a window counts; a window with no
  detection costs ``fnWeight``;
- a detection outside every window costs ``fpWeight * S(distance past the previous
  window / (its width - 1))`` (-``fpWeight`` before any window or > 3 widths after);
- the corpus score is ``100 * (raw - null) / (perfect - null)`` summed over the files,
  where the null detector flags nothing and the perfect one flags each window's start.

tests/test_anomaly_nab.py checks this against NAB's published per-file results.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from anomaly.protocol import FloatArray

PROBATION_PERCENT = 0.15
PROFILE_NAMES: tuple[str, ...] = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


class NabFormatError(ValueError):
    """A NAB directory, data file, label file or profile file is malformed."""


@dataclass(frozen=True)
class CostMatrix:
    """An application profile's weights."""

    tp: float
    fp: float
    fn: float
    tn: float = 1.0


def nab_default_profiles() -> dict[str, CostMatrix]:
    """NAB's three application profiles (config/profiles.json at NAB v1.1)."""
    return {
        "standard": CostMatrix(tp=1.0, fp=0.11, fn=1.0),
        "reward_low_FP_rate": CostMatrix(tp=1.0, fp=0.22, fn=1.0),
        "reward_low_FN_rate": CostMatrix(tp=1.0, fp=0.11, fn=2.0),
    }


def load_profiles(path: Path) -> dict[str, CostMatrix]:
    """Read NAB's profiles.json (``{name: {"CostMatrix": {tpWeight, ...}}}``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {
            name: CostMatrix(
                tp=float(body["CostMatrix"]["tpWeight"]),
                fp=float(body["CostMatrix"]["fpWeight"]),
                fn=float(body["CostMatrix"]["fnWeight"]),
                tn=float(body["CostMatrix"]["tnWeight"]),
            )
            for name, body in data.items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NabFormatError(f"{path}: not a NAB profiles file ({exc})") from exc


def sigmoid(x: float) -> float:
    """The logistic function."""
    return 1.0 / (1.0 + math.exp(-x))


def scaled_sigmoid(relative_position: float) -> float:
    """NAB's reward curve: +0.987 at a window's start, 0 at its end, -1 far after it."""
    if relative_position > 3.0:
        return -1.0
    return 2.0 * sigmoid(-5.0 * relative_position) - 1.0


def probationary_length(n_rows: int, probation_percent: float = PROBATION_PERCENT) -> int:
    """Rows at the start of a file that are never scored (NAB caps it at 750 rows)."""
    return int(min(math.floor(probation_percent * n_rows), probation_percent * 5000))


@dataclass(frozen=True)
class Window:
    """An anomaly window as inclusive row indices."""

    left: int
    right: int

    @property
    def width(self) -> int:
        """Rows in the window."""
        return self.right - self.left + 1


def windows_to_indices(
    timestamps: Sequence[datetime], windows: Sequence[tuple[datetime, datetime]]
) -> list[Window]:
    """Map (start, end) times to row indices the way NAB does: each must be a row's time.

    NAB takes the first row carrying each time (its data has the odd repeated hour), so
    this does too.
    """
    first_row: dict[datetime, int] = {}
    for index, stamp in enumerate(timestamps):
        first_row.setdefault(stamp, index)
    result = []
    for start, end in windows:
        if start not in first_row or end not in first_row:
            raise NabFormatError(f"window {start} .. {end}: its ends are not rows of the series")
        left, right = first_row[start], first_row[end]
        if right < left:
            raise NabFormatError(f"window {start} .. {end} ends before it starts")
        result.append(Window(left, right))
    result.sort(key=lambda w: w.left)
    for earlier, later in itertools.pairwise(result):
        if later.left <= earlier.right:
            raise NabFormatError("anomaly windows overlap")
    return result


@dataclass(frozen=True)
class Sweep:
    """Each row's weighted score if it were a detection, and its window (-1 outside)."""

    weights: FloatArray
    window_of: npt.NDArray[np.int64]
    scorable: npt.NDArray[np.bool_]


def sweep(n_rows: int, windows: Sequence[Window], cost: CostMatrix) -> Sweep:
    """NAB's ``calcSweepScore``: the weight each row would earn as a detection."""
    max_tp = scaled_sigmoid(-1.0)
    weights = np.empty(n_rows, dtype=np.float64)
    window_of = np.full(n_rows, -1, dtype=np.int64)
    by_left = {w.left: (k, w) for k, w in enumerate(windows)}
    current: tuple[int, Window] | None = None
    previous: Window | None = None
    for i in range(n_rows):
        if current is None and i in by_left:
            current = by_left[i]
        if current is not None:
            index, window = current
            position = -(window.right - i + 1) / float(window.width)
            weights[i] = scaled_sigmoid(position) * cost.tp / max_tp
            window_of[i] = index
            if i == window.right:
                previous = window
                current = None
        elif previous is None:
            weights[i] = -1.0 * cost.fp
        else:
            # NAB divides by (width - 1); a one-row window (never in NAB's labels) uses 1.
            position = abs(previous.right - i) / float(max(previous.width - 1, 1))
            weights[i] = scaled_sigmoid(position) * cost.fp
    scorable = np.arange(n_rows) >= probationary_length(n_rows)
    return Sweep(weights, window_of, scorable)


@dataclass(frozen=True)
class FileScore:
    """One file under one profile: NAB's raw score and its confusion counts (rows)."""

    raw: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int
    null: float
    perfect: float
    detected_windows: int
    windows: int


def score_detections(
    detections: npt.ArrayLike, windows: Sequence[Window], cost: CostMatrix
) -> FileScore:
    """Score one file's boolean detections (one per row) the way NAB does."""
    flags = np.asarray(detections, dtype=np.bool_)
    n_rows = int(flags.shape[0])
    swept = sweep(n_rows, windows, cost)
    scored = swept.scorable
    inside = swept.window_of >= 0
    hit = flags & scored
    tp = int(np.count_nonzero(hit & inside))
    fp = int(np.count_nonzero(hit & ~inside))
    fn = int(np.count_nonzero(~flags & scored & inside))
    tn = int(np.count_nonzero(~flags & scored & ~inside))
    raw = math.fsum(swept.weights[hit & ~inside].tolist())
    null = 0.0
    perfect = 0.0
    detected = 0
    counted = 0
    for index in range(len(windows)):
        rows = np.flatnonzero((swept.window_of == index) & scored)
        if rows.size == 0:
            continue  # a window wholly inside the probationary period is not scored
        counted += 1
        null -= cost.fn
        perfect += float(swept.weights[rows[0]])
        caught = rows[flags[rows]]
        if caught.size:
            detected += 1
            raw += max(-cost.fn, float(np.max(swept.weights[caught])))
        else:
            raw -= cost.fn
    return FileScore(raw, tp, tn, fp, fn, n_rows, null, perfect, detected, counted)


def normalised(scores: Sequence[FileScore]) -> float:
    """NAB's corpus score: 100 x (raw - null) / (perfect - null), summed over files."""
    raw = math.fsum(s.raw for s in scores)
    null = math.fsum(s.null for s in scores)
    perfect = math.fsum(s.perfect for s in scores)
    if perfect == null:
        return 0.0
    return 100.0 * (raw - null) / (perfect - null)


def threshold_detections(scores: npt.ArrayLike, threshold: float) -> npt.NDArray[np.bool_]:
    """NAB's decision rule: a row is a detection when its anomaly score >= threshold."""
    return np.asarray(scores, dtype=np.float64) >= threshold


# --- the NAB directory layout ----------------------------------------------------------


@dataclass(frozen=True)
class NabSeries:
    """One data file of a NAB-layout directory with its labelled windows."""

    name: str
    timestamps: tuple[datetime, ...]
    values: FloatArray
    windows: tuple[Window, ...]


def parse_time(text: str) -> datetime:
    """Parse NAB's ``YYYY-MM-DD HH:MM:SS[.ffffff]`` timestamps."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise NabFormatError(f"bad timestamp {text!r}") from exc


def read_series_csv(path: Path) -> tuple[list[datetime], FloatArray]:
    """Read a NAB data file (``timestamp,value`` header, one row per step)."""
    stamps: list[datetime] = []
    values: list[float] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"timestamp", "value"} <= set(reader.fieldnames):
            raise NabFormatError(f"{path}: expected a 'timestamp,value' header")
        for line, row in enumerate(reader, start=2):
            try:
                stamps.append(parse_time(row["timestamp"]))
                values.append(float(row["value"]))
            except (NabFormatError, ValueError, TypeError) as exc:
                raise NabFormatError(f"{path}:{line}: {exc}") from exc
    if not stamps:
        raise NabFormatError(f"{path}: no rows")
    return stamps, np.asarray(values, dtype=np.float64)


def load_windows(path: Path) -> dict[str, list[tuple[datetime, datetime]]]:
    """Read ``labels/combined_windows.json`` (``{"category/file.csv": [[start, end], ...]}``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {
            str(name): [(parse_time(a), parse_time(b)) for a, b in spans]
            for name, spans in data.items()
        }
    except (OSError, ValueError, TypeError) as exc:
        raise NabFormatError(f"{path}: not a NAB windows file ({exc})") from exc


def load_nab_dir(root: Path) -> list[NabSeries]:
    """Every ``data/<category>/<name>.csv`` of a NAB-layout directory, with its windows.

    A data file with no entry in ``labels/combined_windows.json`` is an error (NAB scores
    only labelled files; an empty list means "labelled, no anomaly").
    """
    data_dir = root / "data"
    labels = root / "labels" / "combined_windows.json"
    if not data_dir.is_dir():
        raise NabFormatError(f"{root}: no data/ directory")
    if not labels.is_file():
        raise NabFormatError(f"{root}: no labels/combined_windows.json")
    windows = load_windows(labels)
    series = []
    for path in sorted(data_dir.glob("*/*.csv")):
        name = path.relative_to(data_dir).as_posix()
        if name not in windows:
            raise NabFormatError(f"{name}: no entry in labels/combined_windows.json")
        stamps, values = read_series_csv(path)
        spans = windows_to_indices(stamps, windows[name])
        series.append(NabSeries(name, tuple(stamps), values, tuple(spans)))
    if not series:
        raise NabFormatError(f"{root}: no data/<category>/<name>.csv files")
    return series


def profiles_for(root: Path) -> dict[str, CostMatrix]:
    """The directory's ``config/profiles.json`` if it has one, else NAB's defaults."""
    path = root / "config" / "profiles.json"
    return load_profiles(path) if path.is_file() else nab_default_profiles()


def score_table(
    detections: Mapping[str, npt.ArrayLike],
    windows: Mapping[str, Sequence[Window]],
    profiles: Mapping[str, CostMatrix],
) -> tuple[dict[str, dict[str, FileScore]], dict[str, float]]:
    """Score every file under every profile; return per-file scores and corpus scores."""
    per_file: dict[str, dict[str, FileScore]] = {}
    overall: dict[str, float] = {}
    for profile, cost in profiles.items():
        scores = []
        for name, flags in detections.items():
            file_score = score_detections(flags, windows[name], cost)
            per_file.setdefault(name, {})[profile] = file_score
            scores.append(file_score)
        overall[profile] = normalised(scores)
    return per_file, overall
