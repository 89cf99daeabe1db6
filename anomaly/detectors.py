"""Detectors that follow anomaly.protocol: robust median/MAD, IsolationForest, PCA, LOF.

All are deterministic for a given ``seed``. The model-based ones (IsolationForest, PCA,
LOF) keep a sliding window of the rows they learned and refit from it every
``refit_every`` rows; their state is that window plus the sample of the last fit, so a
saved detector is rebuilt by refitting with the same seed (no pickles).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from anomaly.fast_forest import FlatForest
from anomaly.protocol import (
    Detector,
    DetectorState,
    FeatureMismatch,
    FloatArray,
    JsonValue,
    StateMismatch,
    as_row,
    as_rows,
    check_state,
    check_width,
    clean_score,
)

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


def _int_param(params: Mapping[str, JsonValue], name: str) -> int:
    value = params[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise StateMismatch(f"parameter {name!r} must be an integer")
    return value


def _float_param(params: Mapping[str, JsonValue], name: str) -> float:
    value = params[name]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise StateMismatch(f"parameter {name!r} must be a number")
    return float(value)


def _robust_center_scale(sample: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per-feature median and MAD-sigma; the std, then 1, where the MAD is zero."""
    center: FloatArray = np.median(sample, axis=0)
    scale = MAD_TO_SIGMA * np.median(np.abs(sample - center), axis=0)
    spread = sample.std(axis=0)
    return center, np.where(scale > 1e-9, scale, np.where(spread > 1e-9, spread, 1.0))


class RollingMedianMAD:
    """Robust z-score against the median and MAD of the last ``window`` rows.

    The score of a row is the largest robust z over its features, so one wild feature is
    enough. Where the MAD is 0 (a mostly constant feature) the mean absolute deviation
    stands in, then ``min_scale``; z is capped at ``max_z`` so one value from a flat
    history cannot dwarf every later score. The median and scale are recomputed every
    ``refresh_every`` learned rows (1 = every row). Streaming and batch learning are the
    same thing here.
    """

    kind: str = "median_mad"
    version: int = 1
    batch_equals_stream: bool = True

    def __init__(
        self,
        *,
        window: int = 288,
        min_periods: int = 12,
        min_scale: float = 1e-6,
        max_z: float = 1000.0,
        refresh_every: int = 1,
    ) -> None:
        if window < 2 or min_periods < 2 or min_periods > window or refresh_every < 1:
            raise ValueError("need 2 <= min_periods <= window and refresh_every >= 1")
        self.window = window
        self.min_periods = min_periods
        self.min_scale = min_scale
        self.max_z = max_z
        self.refresh_every = refresh_every
        self.n_features: int | None = None
        self._ring = np.zeros((0, 0))
        self._count = 0
        self._next = 0
        self._since_refresh = 0
        self._center: FloatArray | None = None
        self._scale = np.ones(0)

    def learn_one(self, x: npt.ArrayLike) -> None:
        row = as_row(x)
        if self.n_features is None:
            self._ring = np.zeros((self.window, row.size))
        self.n_features = check_width(self.n_features, row)
        self._ring[self._next] = row
        self._next = (self._next + 1) % self.window
        self._count = min(self._count + 1, self.window)
        self._since_refresh += 1
        if self._count >= self.min_periods and (
            self._center is None or self._since_refresh >= self.refresh_every
        ):
            self._refresh()

    def _refresh(self) -> None:
        history = self._ring[: self._count]
        center = np.median(history, axis=0)
        deviation = np.abs(history - center)
        scale = MAD_TO_SIGMA * np.median(deviation, axis=0)
        mean_scale = 1.2533 * deviation.mean(axis=0)  # mean |dev| of a normal x this = sigma
        scale = np.where(scale > 0.0, scale, mean_scale)
        self._center = center
        self._scale = np.maximum(scale, self.min_scale)
        self._since_refresh = 0

    def learn_many(self, rows: npt.ArrayLike) -> None:
        for row in as_rows(rows):
            self.learn_one(row)

    def rows_until_change(self) -> int:
        """Rows that can be learned before scores may change (lets callers batch-score)."""
        if self._center is None:
            return max(1, self.min_periods - self._count)
        return max(1, self.refresh_every - self._since_refresh)

    def history(self) -> FloatArray:
        """The rows in the window, oldest first."""
        if self._count < self.window:
            return self._ring[: self._count].copy()
        return np.roll(self._ring, -self._next, axis=0)

    def _robust_z(self, rows: FloatArray) -> FloatArray:
        assert self._center is not None
        z: FloatArray = np.minimum(np.abs(rows - self._center) / self._scale, self.max_z)
        return z

    def score_one(self, x: npt.ArrayLike) -> float:
        row = as_row(x)
        check_width(self.n_features, row)
        if self._center is None:
            return 0.0
        return clean_score(float(np.max(self._robust_z(row.reshape(1, -1)))))

    def score_many(self, rows: npt.ArrayLike) -> FloatArray:
        array = as_rows(rows)
        if array.shape[0]:
            check_width(self.n_features, array[0])
        if self._center is None or array.shape[0] == 0:
            return np.zeros(array.shape[0], dtype=np.float64)
        z = np.max(self._robust_z(array), axis=1)
        return np.array([clean_score(float(v)) for v in z], dtype=np.float64)

    def get_state(self) -> DetectorState:
        history = self.history() if self.n_features else np.empty((0, 0))
        return DetectorState(
            kind=self.kind,
            version=self.version,
            n_features=self.n_features,
            params={
                "window": self.window,
                "min_periods": self.min_periods,
                "min_scale": self.min_scale,
                "max_z": self.max_z,
                "refresh_every": self.refresh_every,
                "since_refresh": self._since_refresh,
            },
            arrays={
                "history": history.astype(np.float64),
                **(
                    {"center": self._center, "scale": self._scale}
                    if self._center is not None
                    else {}
                ),
            },
        )

    @classmethod
    def from_state(cls, state: DetectorState) -> RollingMedianMAD:
        check_state(state, cls.kind, cls.version)
        detector = cls(
            window=_int_param(state.params, "window"),
            min_periods=_int_param(state.params, "min_periods"),
            min_scale=_float_param(state.params, "min_scale"),
            max_z=_float_param(state.params, "max_z"),
            refresh_every=_int_param(state.params, "refresh_every"),
        )
        history = np.asarray(state.arrays["history"], dtype=np.float64)
        if (
            state.n_features is not None
            and history.shape[0]
            and (history.ndim != 2 or history.shape[1] != state.n_features)
        ):
            raise FeatureMismatch("history width differs from the state's n_features")
        for row in history[-detector.window :]:
            detector.learn_one(row)
        detector.n_features = state.n_features
        # The statistics of the last refresh, not of the current window, are in force.
        if "center" in state.arrays:
            detector._center = np.asarray(state.arrays["center"], dtype=np.float64)
            detector._scale = np.asarray(state.arrays["scale"], dtype=np.float64)
        else:
            detector._center = None
        detector._since_refresh = _int_param(state.params, "since_refresh")
        return detector


def _window_params(params: Mapping[str, JsonValue]) -> dict[str, int]:
    """The `_WindowedModel` constructor parameters, as `get_state` stores them."""
    names = ("window", "refit_every", "min_samples", "seed")
    return {name: _int_param(params, name) for name in names}


class _WindowedModel(ABC):
    """Shared machinery of the model-based detectors: a training window and refits."""

    kind: str = ""
    version: int = 1
    batch_equals_stream: bool = False

    def __init__(self, *, window: int, refit_every: int, min_samples: int, seed: int) -> None:
        if min_samples < 2 or refit_every < 1 or window < min_samples:
            raise ValueError("need 2 <= min_samples <= window and refit_every >= 1")
        self.window = window
        self.refit_every = refit_every
        self.min_samples = min_samples
        self.seed = seed
        self.n_features: int | None = None
        self._rows: deque[FloatArray] = deque(maxlen=window)
        self._since_fit = 0
        self._fit_sample: FloatArray | None = None

    @abstractmethod
    def _fit(self, sample: FloatArray) -> None:
        """Fit the model on the training window."""

    @abstractmethod
    def _raw_scores(self, rows: FloatArray) -> FloatArray:
        """Score rows with the fitted model (higher = more anomalous)."""

    @abstractmethod
    def _params(self) -> dict[str, JsonValue]:
        """The constructor parameters particular to this detector."""

    # --- protocol ---------------------------------------------------------------------
    def _refit(self) -> None:
        sample = np.vstack(self._rows)
        self._fit(sample)
        self._fit_sample = sample
        self._since_fit = 0

    def _append(self, x: npt.ArrayLike) -> None:
        row = as_row(x)
        self.n_features = check_width(self.n_features, row)
        self._rows.append(row)
        self._since_fit += 1

    def rows_until_change(self) -> int:
        """Rows that can be learned before scores may change (lets callers batch-score)."""
        if self._fit_sample is None:
            return max(1, self.min_samples - len(self._rows))
        return max(1, self.refit_every - self._since_fit)

    def learn_one(self, x: npt.ArrayLike) -> None:
        self._append(x)
        first_fit = self._fit_sample is None and len(self._rows) >= self.min_samples
        if first_fit or (self._fit_sample is not None and self._since_fit >= self.refit_every):
            self._refit()

    def learn_many(self, rows: npt.ArrayLike) -> None:
        for row in as_rows(rows):
            self._append(row)
        if len(self._rows) >= self.min_samples and self._since_fit > 0:
            self._refit()

    def score_one(self, x: npt.ArrayLike) -> float:
        return float(self.score_many(as_row(x).reshape(1, -1))[0])

    def score_many(self, rows: npt.ArrayLike) -> FloatArray:
        array = as_rows(rows)
        if array.shape[0]:
            check_width(self.n_features, array[0])
        if self._fit_sample is None or array.shape[0] == 0:
            return np.zeros(array.shape[0], dtype=np.float64)
        raw = self._raw_scores(array)
        return np.array([clean_score(float(v)) for v in raw], dtype=np.float64)

    def get_state(self) -> DetectorState:
        width = self.n_features or 0
        arrays: dict[str, FloatArray] = {
            "window": np.vstack(self._rows) if self._rows else np.empty((0, width)),
        }
        if self._fit_sample is not None:
            arrays["fit_sample"] = self._fit_sample
        params = self._params()
        params.update(
            window=self.window,
            refit_every=self.refit_every,
            min_samples=self.min_samples,
            seed=self.seed,
            since_fit=self._since_fit,
        )
        return DetectorState(self.kind, self.version, self.n_features, params, arrays)

    def _restore(self, state: DetectorState) -> None:
        self.n_features = state.n_features
        for row in state.arrays["window"]:
            self._rows.append(np.array(row, dtype=np.float64))
        self._since_fit = _int_param(state.params, "since_fit")
        if "fit_sample" in state.arrays:
            sample = np.asarray(state.arrays["fit_sample"], dtype=np.float64)
            if self.n_features is not None and sample.shape[1] != self.n_features:
                raise FeatureMismatch("fit sample width differs from the state's n_features")
            self._fit(sample)
            self._fit_sample = sample


class IsolationForestDetector(_WindowedModel):
    """scikit-learn IsolationForest; score = the paper's s(x, n) in (0, 1], 0.5 is ordinary.

    Use one instance per kind (pooled over that kind's devices) or one per device where
    history allows (see ``PerKey``).
    """

    kind: str = "isolation_forest"

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        max_samples: int = 256,
        window: int = 2048,
        refit_every: int = 512,
        min_samples: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(window=window, refit_every=refit_every, min_samples=min_samples, seed=seed)
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self._model: FlatForest | None = None

    def _fit(self, sample: FloatArray) -> None:
        from sklearn.ensemble import IsolationForest

        model = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, sample.shape[0]),
            random_state=self.seed,
        ).fit(sample)
        # Scored through flat arrays: identical to model.score_samples for finite rows,
        # ~60x faster for one row. (A NaN feature goes to the right child.)
        self._model = FlatForest.from_sklearn(model)

    def _raw_scores(self, rows: FloatArray) -> FloatArray:
        assert self._model is not None  # _WindowedModel scores only after a fit
        result: FloatArray = -self._model.score_samples(rows)
        return result

    def _params(self) -> dict[str, JsonValue]:
        return {"n_estimators": self.n_estimators, "max_samples": self.max_samples}

    @classmethod
    def from_state(cls, state: DetectorState) -> IsolationForestDetector:
        check_state(state, cls.kind, cls.version)
        p = state.params
        detector = cls(
            n_estimators=_int_param(p, "n_estimators"),
            max_samples=_int_param(p, "max_samples"),
            **_window_params(p),
        )
        detector._restore(state)
        return detector


class PCAReconstruction(_WindowedModel):
    """Distance from the principal subspace of standardised training rows.

    Score = root of the summed squared residual (in robust-standardised units) after
    projecting onto the leading components that explain ``variance`` of the training
    window. Catches rows that break the usual correlation between features (a stuck
    temperature while eCO2 climbs) even when every feature alone looks ordinary.
    """

    kind: str = "pca"

    def __init__(
        self,
        *,
        variance: float = 0.9,
        window: int = 2048,
        refit_every: int = 256,
        min_samples: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(window=window, refit_every=refit_every, min_samples=min_samples, seed=seed)
        if not 0.0 < variance <= 1.0:
            raise ValueError("variance must be in (0, 1]")
        self.variance = variance
        self._center = np.zeros(0)
        self._offset = np.zeros(0)
        self._scale = np.ones(0)
        self._components = np.zeros((0, 0))

    def _fit(self, sample: FloatArray) -> None:
        center, scale = _robust_center_scale(sample)
        z = (sample - center) / scale
        z = z - z.mean(axis=0)
        _, singular, vt = np.linalg.svd(z, full_matrices=False)
        energy = singular**2
        total = float(energy.sum())
        if total <= 0.0:
            keep = 0
        else:
            cumulative = np.cumsum(energy) / total
            keep = int(np.searchsorted(cumulative, self.variance) + 1)
            keep = min(keep, vt.shape[0] - 1) if vt.shape[0] > 1 else 0
        self._center = center
        self._offset = (sample - center).mean(axis=0) / scale
        self._scale = scale
        self._components = vt[:keep]

    def _raw_scores(self, rows: FloatArray) -> FloatArray:
        z = (rows - self._center) / self._scale - self._offset
        projected = z @ self._components.T @ self._components
        result: FloatArray = np.sqrt(np.sum((z - projected) ** 2, axis=1))
        return result

    def _params(self) -> dict[str, JsonValue]:
        return {"variance": self.variance}

    @classmethod
    def from_state(cls, state: DetectorState) -> PCAReconstruction:
        check_state(state, cls.kind, cls.version)
        p = state.params
        detector = cls(
            variance=_float_param(p, "variance"),
            **_window_params(p),
        )
        detector._restore(state)
        return detector


class LocalOutlierFactorDetector(_WindowedModel):
    """scikit-learn LOF in novelty mode on robust-standardised rows; score = LOF (~1 normal).

    Finds rows in sparse regions between dense clusters (a door opened at an hour that is
    busy on other days but never at this level), which a global model can miss.
    """

    kind: str = "lof"

    def __init__(
        self,
        *,
        n_neighbors: int = 20,
        window: int = 1024,
        refit_every: int = 256,
        min_samples: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(window=window, refit_every=refit_every, min_samples=min_samples, seed=seed)
        self.n_neighbors = n_neighbors
        self._model: Any = None
        self._center = np.zeros(0)
        self._scale = np.ones(0)

    def _fit(self, sample: FloatArray) -> None:
        from sklearn.neighbors import LocalOutlierFactor

        center, self._scale = _robust_center_scale(sample)
        self._center = center
        # Tiny deterministic jitter breaks exact duplicates, which make LOF infinite.
        jitter = np.random.default_rng(self.seed).normal(0.0, 1e-6, sample.shape)
        self._model = LocalOutlierFactor(
            n_neighbors=min(self.n_neighbors, sample.shape[0] - 1), novelty=True
        ).fit((sample - center) / self._scale + jitter)

    def _raw_scores(self, rows: FloatArray) -> FloatArray:
        z = (rows - self._center) / self._scale
        result: FloatArray = -np.asarray(self._model.score_samples(z), dtype=np.float64)
        return result

    def _params(self) -> dict[str, JsonValue]:
        return {"n_neighbors": self.n_neighbors}

    @classmethod
    def from_state(cls, state: DetectorState) -> LocalOutlierFactorDetector:
        check_state(state, cls.kind, cls.version)
        p = state.params
        detector = cls(
            n_neighbors=_int_param(p, "n_neighbors"),
            **_window_params(p),
        )
        detector._restore(state)
        return detector


class PerKey:
    """One detector per key (device) once it has ``min_history`` rows; the pooled one before.

    Every row also trains the pooled (per kind) detector, so a new device is scored
    against its kind until its own history suffices.
    """

    def __init__(
        self, factory: Callable[[], Detector], pooled: Detector, *, min_history: int = 512
    ) -> None:
        self.factory = factory
        self.pooled = pooled
        self.min_history = min_history
        self._own: dict[Hashable, Detector] = {}
        self._counts: dict[Hashable, int] = {}

    def learn_one(self, key: Hashable, x: npt.ArrayLike) -> None:
        """Train the pooled detector and the key's own detector on ``x``."""
        self.pooled.learn_one(x)
        own = self._own.get(key)
        if own is None:
            own = self._own[key] = self.factory()
        own.learn_one(x)
        self._counts[key] = self._counts.get(key, 0) + 1

    def score_one(self, key: Hashable, x: npt.ArrayLike) -> float:
        """Score with the key's own detector when it has enough history, else pooled."""
        if self._counts.get(key, 0) >= self.min_history:
            return self._own[key].score_one(x)
        return self.pooled.score_one(x)

    def uses_own(self, key: Hashable) -> bool:
        """Whether ``key`` is scored by its own detector."""
        return self._counts.get(key, 0) >= self.min_history


def detector_from_state(state: DetectorState) -> Detector:
    """Rebuild any detector of this module from ``get_state()`` output."""
    readers: dict[str, Callable[[DetectorState], Detector]] = {
        RollingMedianMAD.kind: RollingMedianMAD.from_state,
        IsolationForestDetector.kind: IsolationForestDetector.from_state,
        PCAReconstruction.kind: PCAReconstruction.from_state,
        LocalOutlierFactorDetector.kind: LocalOutlierFactorDetector.from_state,
    }
    reader = readers.get(state.kind)
    if reader is None:
        raise StateMismatch(f"unknown detector kind {state.kind!r}")
    return reader(state)
