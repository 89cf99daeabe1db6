"""Fit one model per sensor kind from history, and calibrate its threshold on held-out hours.

History is replayed twice in time order: once to learn the usual curves (`Profiles`),
once through the same `FeatureExtractor` the hub runs, collecting feature vectors per
kind. History is cut into 2-hour blocks; every 4th block is held out (so calibration
sees every hour of the day and every day), the rest fits a pooled detector per kind and,
where a device has enough history, that device's own detector (anomaly.detectors). The
held-out blocks set the threshold so that about `false_alarms_per_device_day` readings
per device-day would be flagged. Rows the first fit flags as anomalous are taken out and
the detectors refitted: incidents in the history must not become part of "normal".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from anomaly.detectors import (
    MAD_TO_SIGMA,
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    PCAReconstruction,
    RollingMedianMAD,
)
from anomaly.extractor import (
    FEATURES,
    SCHEMAS,
    FeatureExtractor,
    FeatureVector,
    ProfileBuilder,
    Profiles,
)
from anomaly.features import MS_PER_DAY
from anomaly.protocol import (
    Detector,
    FloatArray,
    Threshold,
    calibrate_threshold,
    rate_per_reading,
)
from sensors.base import Reading

DETECTORS: Final[Mapping[str, Callable[[int, int], Detector]]] = {
    "median_mad": lambda window, seed: RollingMedianMAD(
        window=window, min_periods=2, min_scale=1.0
    ),
    "isolation_forest": lambda window, seed: IsolationForestDetector(
        window=window, refit_every=window, min_samples=min(64, window), seed=seed
    ),
    "pca": lambda window, seed: PCAReconstruction(
        window=window, refit_every=window, min_samples=min(32, window), seed=seed
    ),
    "lof": lambda window, seed: LocalOutlierFactorDetector(
        window=window, refit_every=window, min_samples=min(32, window), seed=seed
    ),
}
"""Detector choices by name. Each sees rows already robust-scaled by `Scaler` (so the
median/MAD detector's `min_scale` of 1 is the feature floor). A model-based detector is
fitted once on the training rows (its refit interval is the whole window), never
refitted while scoring."""

MIN_ROWS: Final = 64
"""A kind with fewer training vectors gets no model (logged in the training report)."""
_MIN_SCALE: Final = 1e-6
TAIL_QUANTILE: Final = 0.999
TAIL_Z: Final = 5.0


class TrainingError(ValueError):
    """History too short or empty for what was asked."""


@dataclass(frozen=True, slots=True)
class TrainConfig:
    detector: str = "median_mad"
    false_alarms_per_device_day: float = 0.5
    """Target: flagged readings per device and day on normal (held-out) history."""
    min_device_rows: int = 200
    """A device with this many training vectors gets its own detector; others the pooled."""
    window: int = 512
    """Rows a detector keeps, evenly thinned over the whole history when it has more (the
    median/MAD detector recomputes its medians over them at every scoring call)."""
    holdout_every: int = 4
    """Every n-th block of history is held out to calibrate the threshold (the rest fits)."""
    block_hours: float = 2.0
    """Held-out blocks are this long: interleaved over the whole history, so the threshold
    sees every hour of the day and every day, not only the last ones."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector {self.detector!r}: choose from {', '.join(DETECTORS)}")
        if self.false_alarms_per_device_day <= 0:
            raise ValueError("false_alarms_per_device_day must be > 0")
        if not 2 <= self.holdout_every <= 20 or self.block_hours <= 0:
            raise ValueError("holdout_every must be 2..20 and block_hours positive")
        if self.window < 16 or self.min_device_rows < 16:
            raise ValueError("window and min_device_rows must be at least 16")


@dataclass
class Scaler:
    """Median and robust scale of training rows, never below each feature's floor, and
    wide enough that the feature's rare-but-normal tail (its 99.9th percentile deviation,
    e.g. cooking smoke at a kitchen detector) sits at z = `TAIL_Z`.

    Without the tail term one heavy-tailed feature would set every threshold and hide
    the others; with it, each feature's normal extremes look alike. Detectors see rows in
    these units, and the same z-scores explain a flag feature by feature."""

    center: FloatArray
    scale: FloatArray

    @classmethod
    def fit(cls, rows: FloatArray, floors: FloatArray) -> Scaler:
        center = np.median(rows, axis=0)
        deviation = np.abs(rows - center)
        mad = MAD_TO_SIGMA * np.median(deviation, axis=0)
        tail = np.quantile(deviation, TAIL_QUANTILE, axis=0) / TAIL_Z
        scale = np.maximum(np.maximum(mad, tail), np.maximum(floors, _MIN_SCALE))
        return cls(center.astype(np.float64), scale.astype(np.float64))

    def impute(self, rows: FloatArray) -> FloatArray:
        """Unknown (NaN) features take the usual value: no evidence either way."""
        if not np.isnan(rows).any():
            return rows
        out: FloatArray = np.where(np.isnan(rows), self.center, rows)
        return out

    def z(self, row: FloatArray) -> FloatArray:
        out: FloatArray = (self.impute(row) - self.center) / self.scale
        return out


@dataclass
class KindModel:
    """A kind's detectors (pooled, and per device where history allows) and threshold."""

    kind: str
    schema: tuple[str, ...]
    detector: str
    pooled: Detector
    pooled_scaler: Scaler
    devices: dict[str, Detector]
    device_scalers: dict[str, Scaler]
    threshold: Threshold
    report: dict[str, float | int | str] = field(default_factory=dict)

    def score(self, device: str, rows: FloatArray) -> FloatArray:
        """Scores of one device's rows (its own detector if it has one, else the pooled)."""
        own = self.devices.get(device)
        if own is not None:  # the scalers' z() takes unknown features as usual (z = 0)
            return own.score_many(self.device_scalers[device].z(rows))
        return self.pooled.score_many(self.pooled_scaler.z(rows))

    def explain(self, device: str, row: FloatArray, top: int = 3) -> list[tuple[str, float, float]]:
        """The features furthest from this device's usual: (name, value, robust z)."""
        scaler = self.device_scalers.get(device, self.pooled_scaler)
        known = scaler.impute(row)
        z = scaler.z(known)
        order = np.argsort(-np.abs(z), kind="stable")[:top]
        return [(self.schema[i], float(known[i]), float(z[i])) for i in order]


@dataclass
class AnomalyModel:
    """Everything online scoring needs: per-kind models and the usual curves."""

    kinds: dict[str, KindModel]
    profiles: Profiles
    meta: dict[str, str | int | float | None]


def _thin(rows: FloatArray, limit: int) -> FloatArray:
    """At most `limit` rows, evenly spaced in time (keeps every part of the day)."""
    if rows.shape[0] <= limit:
        return rows
    index = np.linspace(0, rows.shape[0] - 1, limit).round().astype(np.int64)
    return rows[index]


def _device_days(devices: list[str], ts_ms: FloatArray) -> float:
    """Sum over devices of the span each was seen (at least a minute each)."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for device, t in zip(devices, ts_ms.tolist(), strict=True):
        first.setdefault(device, t)
        last[device] = t
    return sum(max(last[d] - first[d], 60_000.0) for d in first) / MS_PER_DAY


def _scores(model: KindModel, devices: list[str], rows: FloatArray) -> FloatArray:
    """Score rows grouped by device, returned in the rows' order."""
    out = np.zeros(rows.shape[0], dtype=np.float64)
    groups: dict[str, list[int]] = {}
    for i, device in enumerate(devices):
        groups.setdefault(device, []).append(i)
    for device, index in groups.items():
        out[index] = model.score(device, rows[index])
    return out


def fit_kind(kind: str, vectors: list[FeatureVector], config: TrainConfig) -> KindModel | None:
    """Fit a kind's detectors and threshold; None when history is too short."""
    if len(vectors) < MIN_ROWS:
        return None
    schema = SCHEMAS[kind]
    floors = np.array([floor for _, floor in FEATURES[kind]], dtype=np.float64)
    rows = np.array([v.values for v in vectors], dtype=np.float64)
    missing = np.isnan(rows)
    if missing.any():  # unknown values (a first reading's gap) count as the usual value
        filled = np.where(missing.all(axis=0), 0.0, rows)  # a feature never known: 0
        rows = np.where(missing, np.nanmedian(filled, axis=0), rows)
    devices = [v.device for v in vectors]
    ts_ms = np.array([v.ts_ms for v in vectors], dtype=np.float64)
    block = (ts_ms // (config.block_hours * 3_600_000)).astype(np.int64)
    held_mask = block % config.holdout_every == config.holdout_every - 1
    if held_mask.all() or not held_mask.any():  # history shorter than a cycle of blocks
        held_mask = np.arange(len(vectors)) >= len(vectors) * (1 - 1 / config.holdout_every)
    fit_index = np.flatnonzero(~held_mask)
    held_index = np.flatnonzero(held_mask)
    fit_all = rows[fit_index]
    fit_devs = [devices[i] for i in fit_index]
    readings_per_device_day = len(vectors) / _device_days(devices, ts_ms)
    make = DETECTORS[config.detector]

    def fit(keep: np.ndarray) -> KindModel:
        fit_rows = fit_all[keep]
        fit_devices = [d for d, k in zip(fit_devs, keep.tolist(), strict=True) if k]
        pooled_scaler = Scaler.fit(fit_rows, floors)
        pooled = make(config.window, config.seed)
        pooled.learn_many(pooled_scaler.z(_thin(fit_rows, config.window)))
        own: dict[str, Detector] = {}
        scalers: dict[str, Scaler] = {}
        by_device: dict[str, list[int]] = {}
        for i, device in enumerate(fit_devices):
            by_device.setdefault(device, []).append(i)
        for device, index in sorted(by_device.items()):
            if len(index) >= config.min_device_rows:
                device_rows = fit_rows[index]
                scaler = Scaler.fit(device_rows, floors)
                detector = make(config.window, config.seed)
                detector.learn_many(scaler.z(_thin(device_rows, config.window)))
                own[device] = detector
                scalers[device] = scaler
        return KindModel(
            kind,
            schema,
            config.detector,
            pooled,
            pooled_scaler,
            own,
            scalers,
            Threshold(math.inf),
        )

    def calibrate(model: KindModel) -> Threshold:
        held_devices = [devices[i] for i in held_index]
        held = rows[held_index]
        if held.shape[0] == 0:
            raise TrainingError(f"{kind}: no held-out history to calibrate on")
        rate = rate_per_reading(config.false_alarms_per_device_day, readings_per_device_day)
        return calibrate_threshold(_scores(model, held_devices, held).tolist(), rate)

    keep_all = np.ones(len(fit_index), dtype=bool)
    model = fit(keep_all)
    model.threshold = calibrate(model)
    flagged = _scores(model, fit_devs, fit_all) >= model.threshold.value
    dropped = int(flagged.sum())
    if dropped:
        model = fit(~flagged)
        model.threshold = calibrate(model)
    model.report = {
        "vectors": len(vectors),
        "fit_rows": len(fit_index) - dropped,
        "held_out_rows": len(held_index),
        "flagged_in_training": dropped,
        "devices": len(set(devices)),
        "own_detectors": len(model.devices),
        "device_days": round(_device_days(devices, ts_ms), 3),
        "threshold": model.threshold.value,
    }
    return model


def train(
    history: Callable[[], Iterable[Reading]],
    config: TrainConfig,
    *,
    meta: Mapping[str, str | int | float | None] | None = None,
    on_pass: Callable[[str], None] | None = None,
) -> AnomalyModel:
    """Train from `history()` (called twice; each call replays readings in time order)."""
    if on_pass is not None:
        on_pass("profiles")
    builder = ProfileBuilder()
    first_ms: int | None = None
    last_ms: int | None = None
    for reading in history():
        builder.observe(reading)
        ts = reading.ts_ns // 1_000_000
        first_ms = ts if first_ms is None else first_ms
        last_ms = ts
    profiles = builder.build()
    if on_pass is not None:
        on_pass("features")
    extractor = FeatureExtractor(profiles)
    vectors: dict[str, list[FeatureVector]] = {kind: [] for kind in SCHEMAS}
    for reading in history():
        vector = extractor.update(reading)
        if vector is not None:
            vectors[vector.kind].append(vector)
    kinds: dict[str, KindModel] = {}
    skipped: list[str] = []
    for kind, kind_vectors in vectors.items():
        model = fit_kind(kind, kind_vectors, config)
        if model is None:
            skipped.append(f"{kind} ({len(kind_vectors)} vectors)")
        else:
            kinds[kind] = model
    if not kinds:
        raise TrainingError(
            f"no kind has {MIN_ROWS} feature vectors in the history: {', '.join(skipped)}"
        )
    info: dict[str, str | int | float | None] = dict(meta or {})
    info.update(
        first_reading_ms=first_ms,
        last_reading_ms=last_ms,
        detector=config.detector,
        false_alarms_per_device_day=config.false_alarms_per_device_day,
        min_device_rows=config.min_device_rows,
        window=config.window,
        holdout_every=config.holdout_every,
        block_hours=config.block_hours,
        seed=config.seed,
        skipped_kinds=", ".join(skipped),
    )
    return AnomalyModel(kinds, profiles, info)
