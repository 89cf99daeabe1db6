"""Run a detector over a time series in streaming order: features, score, decide, learn.

One ``StreamConfig`` names every choice (features, detector, likelihood post-processing,
threshold, refractory period), so an evaluation runs ONE configuration over every series.
Each row is scored before it is learned (prequential), and rows that raised an alarm
stay out of training unless ``learn_flagged`` is set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from anomaly.detectors import (
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    PCAReconstruction,
    RollingMedianMAD,
)
from anomaly.likelihood import AnomalyLikelihood
from anomaly.protocol import Detector, FloatArray

FEATURE_SETS = ("value", "delta", "lags", "value+lags")
DETECTOR_NAMES = ("median_mad", "isolation_forest", "pca", "lof")


@dataclass(frozen=True)
class StreamConfig:
    """Everything that decides a streaming run; nothing is tuned per series.

    Each entry of ``features`` is a channel with its own detector and its own likelihood
    (a level channel and a shape channel are surprised by different things, and each
    likelihood normalises its own channel); the final score is the largest of them.
    ``trigger="edge"`` raises an alarm when the score crosses the threshold (an event
    opens once, like a rule's), ``"level"`` on every row at or above it; either way no
    alarm follows another within ``refractory`` rows.
    """

    detector: str = "median_mad"
    features: tuple[str, ...] = ("value",)
    lags: int = 3
    window: int = 4032
    likelihood: bool = True
    short_window: int = 10
    learning_period: int = 388
    threshold: float = 0.5
    trigger: str = "edge"
    refractory: int = 0
    learn_flagged: bool = False
    refresh_every: int = 1
    seed: int = 0

    def describe(self) -> str:
        """A one-line summary for tables and logs."""
        parts = [self.detector, f"features={','.join(self.features)}", f"window={self.window}"]
        if any("lags" in f for f in self.features):
            parts.append(f"lags={self.lags}")
        parts.append("likelihood" if self.likelihood else "raw")
        parts.append(f"threshold={self.threshold:g}")
        parts.append(f"trigger={self.trigger}")
        parts.append(f"refractory={self.refractory}")
        if self.learn_flagged:
            parts.append("learn_flagged")
        if self.detector == "median_mad" and self.refresh_every > 1:
            parts.append(f"refresh_every={self.refresh_every}")
        if self.detector != "median_mad":
            parts.append(f"seed={self.seed}")
        return " ".join(parts)


def default_config() -> StreamConfig:
    """The one configuration every evaluation uses unless told otherwise.

    Chosen by measured score on all three real datasets (docs/anomaly.md): a robust level
    channel and a change channel over a two-week window (at 5-minute rows), each turned
    into a likelihood; alarm when the tail probability drops below about 1e-5 (score
    0.5, the HTM convention, not tuned), at most one alarm per 144 rows. LOF in the
    same pipeline scores higher on the two NAB series but worse on smoke and occupancy.
    """
    return StreamConfig(
        detector="median_mad",
        refresh_every=16,
        features=("value", "lags"),
        lags=3,
        window=4032,
        likelihood=True,
        threshold=0.5,
        trigger="edge",
        refractory=144,
    )


def feature_rows(values: npt.ArrayLike, features: str, lags: int = 6) -> FloatArray:
    """Feature rows from a series (1-D, or 2-D with one column per channel).

    Each row uses only the past and the present. ``value``: the readings; ``delta``: the
    readings and their change from the previous row; ``lags``: the last ``lags`` changes
    of every channel (the local shape, independent of level); ``value+lags``: both the
    level and the shape.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    diff = np.diff(x, axis=0, prepend=x[:1])
    shifted = [
        np.vstack([np.zeros((min(k, x.shape[0]), x.shape[1])), diff[: x.shape[0] - k]])
        for k in range(lags)
    ]
    if features == "value":
        return x
    if features == "delta":
        return np.hstack([x, diff])
    if features == "lags":
        return np.hstack(shifted)
    if features == "value+lags":
        return np.hstack([x, *shifted])
    raise ValueError(f"unknown feature set {features!r}; choose from {', '.join(FEATURE_SETS)}")


def make_detector(config: StreamConfig) -> Detector:
    """Build the configured detector (deterministic with ``config.seed``)."""
    refit = max(32, config.window // 4)
    builders: dict[str, Callable[[], Detector]] = {
        "median_mad": lambda: RollingMedianMAD(
            window=config.window,
            min_periods=min(12, config.window),
            refresh_every=config.refresh_every,
        ),
        "isolation_forest": lambda: IsolationForestDetector(
            window=config.window, refit_every=refit, min_samples=64, seed=config.seed
        ),
        "pca": lambda: PCAReconstruction(
            window=config.window, refit_every=refit, min_samples=32, seed=config.seed
        ),
        "lof": lambda: LocalOutlierFactorDetector(
            window=config.window, refit_every=refit, min_samples=32, seed=config.seed
        ),
    }
    if config.detector not in builders:
        raise ValueError(
            f"unknown detector {config.detector!r}; choose from {', '.join(DETECTOR_NAMES)}"
        )
    return builders[config.detector]()


@dataclass(frozen=True)
class StreamResult:
    """Per row: the channels' raw scores, the final score, and the alarms raised."""

    raw: FloatArray
    score: FloatArray
    alarms: npt.NDArray[np.bool_]


@dataclass
class _Channel:
    rows: FloatArray
    detector: Detector
    likelihood: AnomalyLikelihood | None
    pending: FloatArray
    pending_from: int


def _channels(values: npt.ArrayLike, config: StreamConfig) -> list[_Channel]:
    if not config.features:
        raise ValueError("need at least one feature set")
    channels = []
    for features in config.features:
        likelihood = (
            AnomalyLikelihood(
                short_window=config.short_window,
                learning_period=config.learning_period,
                history=max(8640, config.learning_period),
            )
            if config.likelihood
            else None
        )
        rows = feature_rows(values, features, config.lags)
        channels.append(_Channel(rows, make_detector(config), likelihood, np.zeros(0), 0))
    return channels


def run_stream(
    values: npt.ArrayLike,
    config: StreamConfig,
    on_progress: Callable[[int], None] | None = None,
) -> StreamResult:
    """Score a series row by row: score, post-process, decide, then learn if not flagged.

    Between refits a model does not change, so each channel scores the rows up to its
    next possible change in one batch call; the result is identical to scoring them one
    by one.
    """
    if config.trigger not in ("edge", "level"):
        raise ValueError("trigger must be 'edge' or 'level'")
    channels = _channels(values, config)
    n = channels[0].rows.shape[0]
    raw = np.zeros((n, len(channels)), dtype=np.float64)
    score = np.zeros(n, dtype=np.float64)
    alarms = np.zeros(n, dtype=np.bool_)
    quiet_until = -1
    was_flagged = False
    step = max(1, n // 200)
    reported = 0
    for i in range(n):
        final = 0.0
        for k, channel in enumerate(channels):
            offset = i - channel.pending_from
            if offset >= channel.pending.shape[0]:
                ahead = rows_until_change(channel.detector)
                channel.pending = channel.detector.score_many(channel.rows[i : i + ahead])
                channel.pending_from, offset = i, 0
            raw[i, k] = channel.pending[offset]
            value = (
                channel.likelihood.update(raw[i, k])
                if channel.likelihood is not None
                else raw[i, k]
            )
            final = max(final, value)
        score[i] = final
        flagged = final >= config.threshold
        rising = flagged and (config.trigger == "level" or not was_flagged)
        if rising and i > quiet_until:
            alarms[i] = True
            quiet_until = i + config.refractory
        was_flagged = flagged
        if config.learn_flagged or not flagged:
            for channel in channels:
                may_change = rows_until_change(channel.detector) <= 1
                channel.detector.learn_one(channel.rows[i])
                if may_change:  # scores computed ahead with the old model are stale now
                    channel.pending = channel.pending[: i - channel.pending_from + 1]
        if on_progress is not None and ((i + 1) % step == 0 or i + 1 == n):
            on_progress(i + 1 - reported)
            reported = i + 1
    return StreamResult(raw, score, alarms)


def rows_until_change(detector: Detector) -> int:
    """How many rows can be learned before the detector's scores may change (>= 1)."""
    hint = getattr(detector, "rows_until_change", None)
    if callable(hint):
        return max(1, int(hint()))
    return 1
