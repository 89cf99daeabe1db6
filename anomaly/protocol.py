"""The one small protocol every detector follows, and thresholds kept apart from scores.

Contract (checked for every detector by tests/test_anomaly_detectors.py):

- ``learn_one(x)`` folds one feature vector into the model; ``score_one(x) -> float`` says
  how unusual ``x`` is for the model as it stands (higher = more anomalous, always finite,
  never negative). Scoring never changes the model.
- ``learn_many(X)`` / ``score_many(X)`` are the batch forms over the rows of a 2-D array.
  ``score_many(X)`` equals ``[score_one(x) for x in X]``. ``learn_many(X)`` equals
  ``for x in X: learn_one(x)`` when the class says ``batch_equals_stream = True``; the
  model-based detectors (IsolationForest, PCA, LOF) refit once at the end of a batch
  instead of every ``refit_every`` rows, so they say ``False``.
- A detector built with the same parameters and ``seed`` and fed the same rows gives the
  same scores, bit for bit.
- Every row of one detector has the same number of features (fixed by the first row
  learned); a row of another width raises ``FeatureMismatch``.
- A score is not a decision. ``Threshold`` turns scores into flags; ``calibrate_threshold``
  chooses one from scores of normal data for a target false-alarm rate.
- ``Guarded(detector, threshold)`` is the streaming form used online and in evaluation:
  each row is scored first and learned only if it was not flagged, so an anomaly does not
  become part of "normal" (``learn_flagged=True`` turns this off).
- ``get_state() -> DetectorState`` returns plain data only (JSON-able ``params`` and
  float64 ``arrays``); ``detector_from_state(state)`` (anomaly/detectors.py) rebuilds a
  detector that scores identically. No pickles: the model-file owner can store ``params``
  as JSON and ``arrays`` with ``numpy.savez(..., allow_pickle=False)``, and check
  ``state.kind``/``state.version``/``state.n_features`` against its feature schema before
  use. Model-based detectors keep their training sample and refit deterministically
  from it with their seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float64]
JsonScalar: TypeAlias = str | int | float | bool | None
JsonValue: TypeAlias = JsonScalar | list["JsonValue"] | dict[str, "JsonValue"]


class FeatureMismatch(ValueError):
    """A row's width differs from the width the detector was built or trained with."""


class StateMismatch(ValueError):
    """A saved state belongs to another detector kind or version."""


@dataclass(frozen=True)
class DetectorState:
    """Everything needed to rebuild a detector: its kind, parameters and learned arrays."""

    kind: str
    version: int
    n_features: int | None
    params: Mapping[str, JsonValue]
    arrays: Mapping[str, FloatArray] = field(default_factory=dict)


@runtime_checkable
class Detector(Protocol):
    """Learn normal behaviour one row at a time; score how far a row is from it."""

    kind: str
    batch_equals_stream: bool

    def learn_one(self, x: npt.ArrayLike) -> None:
        """Fold one feature vector into the model."""

    def score_one(self, x: npt.ArrayLike) -> float:
        """Return how anomalous ``x`` is (finite, >= 0, higher = more anomalous)."""

    def learn_many(self, rows: npt.ArrayLike) -> None:
        """Fold the rows of a 2-D array into the model, in order."""

    def score_many(self, rows: npt.ArrayLike) -> FloatArray:
        """Score every row of a 2-D array against the current model."""

    def get_state(self) -> DetectorState:
        """Return plain data from which ``detector_from_state`` rebuilds this detector."""


def as_row(x: npt.ArrayLike) -> FloatArray:
    """Return ``x`` as a 1-D float64 row (a scalar becomes a one-feature row)."""
    row = np.asarray(x, dtype=np.float64).reshape(-1)
    return row


def as_rows(rows: npt.ArrayLike) -> FloatArray:
    """Return ``rows`` as a 2-D float64 array (a 1-D array is one feature per row)."""
    array = np.asarray(rows, dtype=np.float64)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise FeatureMismatch(f"expected a 2-D array of rows, got {array.ndim} dimensions")
    return array


def check_width(expected: int | None, row: FloatArray) -> int:
    """Return the row width, refusing a width other than ``expected``."""
    width = int(row.shape[-1])
    if expected is not None and width != expected:
        raise FeatureMismatch(f"row has {width} features, the detector expects {expected}")
    return width


def clean_score(value: float) -> float:
    """Clamp a raw score into the contract: finite and >= 0 (NaN means 'no evidence')."""
    if math.isnan(value):
        return 0.0
    if math.isinf(value):
        return 1e300 if value > 0 else 0.0
    return max(0.0, float(value))


@dataclass(frozen=True)
class Threshold:
    """A decision on scores: flag when ``score >= value``. Lives apart from any detector."""

    value: float
    false_alarm_rate: float | None = None

    def is_anomalous(self, score: float) -> bool:
        """Flag a score (NAB's convention: a score equal to the threshold is a detection)."""
        return score >= self.value

    def flags(self, scores: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Flag every score of an array."""
        return np.asarray(scores, dtype=np.float64) >= self.value

    def to_json(self) -> dict[str, JsonValue]:
        """Plain data for a model file."""
        return {"value": self.value, "false_alarm_rate": self.false_alarm_rate}

    @classmethod
    def from_json(cls, data: Mapping[str, JsonValue]) -> Threshold:
        """Rebuild from ``to_json`` output."""
        value = data["value"]
        rate = data.get("false_alarm_rate")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError("threshold value must be a number")
        if rate is not None and (not isinstance(rate, int | float) or isinstance(rate, bool)):
            raise ValueError("threshold false_alarm_rate must be a number or null")
        return cls(float(value), None if rate is None else float(rate))


def calibrate_threshold(scores: Iterable[float], false_alarm_rate: float) -> Threshold:
    """Choose the threshold that flags about ``false_alarm_rate`` of these (normal) scores.

    Uses the higher empirical quantile so that at most that share of the calibration
    scores is flagged; with too few scores for the rate, the threshold sits just above the
    largest score seen (no calibration alarm at all).
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError("false_alarm_rate must be in (0, 1)")
    values = np.sort(np.asarray(list(scores), dtype=np.float64))
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite scores to calibrate on")
    allowed = math.floor(false_alarm_rate * values.size)
    if allowed == 0:
        value = float(np.nextafter(values[-1], np.inf))
    else:
        value = float(values[values.size - allowed])
        # Ties at the cut would flag more than allowed: move just above them.
        if int(np.count_nonzero(values >= value)) > allowed:
            value = float(np.nextafter(value, np.inf))
    return Threshold(value, false_alarm_rate)


def rate_per_reading(alarms_per_device_day: float, readings_per_device_day: float) -> float:
    """Convert a false-alarm budget per device-day into a share of readings."""
    if readings_per_device_day <= 0:
        raise ValueError("readings_per_device_day must be > 0")
    return min(alarms_per_device_day / readings_per_device_day, 0.5)


class Guarded:
    """Score first, then learn only rows that were not flagged (flagged rows stay out)."""

    def __init__(
        self, detector: Detector, threshold: Threshold | None, *, learn_flagged: bool = False
    ) -> None:
        self.detector = detector
        self.threshold = threshold
        self.learn_flagged = learn_flagged

    def process_one(self, x: npt.ArrayLike) -> tuple[float, bool]:
        """Score ``x``, learn it unless it is flagged, and return (score, flagged)."""
        score = self.detector.score_one(x)
        flagged = self.threshold is not None and self.threshold.is_anomalous(score)
        if self.learn_flagged or not flagged:
            self.detector.learn_one(x)
        return score, flagged

    def process_many(self, rows: npt.ArrayLike) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        """``process_one`` over every row, in order."""
        array = as_rows(rows)
        scores = np.empty(array.shape[0], dtype=np.float64)
        flags = np.zeros(array.shape[0], dtype=np.bool_)
        for index, row in enumerate(array):
            scores[index], flags[index] = self.process_one(row)
        return scores, flags


def check_state(state: DetectorState, kind: str, version: int) -> None:
    """Refuse a state written for another detector kind or version."""
    if state.kind != kind:
        raise StateMismatch(f"state is for detector {state.kind!r}, not {kind!r}")
    if state.version != version:
        raise StateMismatch(
            f"state of {kind!r} has version {state.version}, this code reads {version}"
        )
