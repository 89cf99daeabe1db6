"""Anomaly likelihood: turn a detector's raw scores into "how unusual is this level of
surprise", the post-processing behind NAB's best streaming detectors (HTM, ARTime).

Raw scores are not comparable across series: a noisy series scores high all the time.
The likelihood compares a short moving average of recent raw scores with the
distribution of that average over a long history (a Gaussian fitted to it), and reports
the upper tail probability on a log scale in [0, 1]: 0.5 means about 1 in 10^5.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

LOG_EPSILON = 1e-10  # log scale: a tail probability of 1e-10 scores 1.0


class AnomalyLikelihood:
    """Streaming likelihood of a raw score stream. ``update`` returns the new score.

    Until ``learning_period`` raw scores have been seen it returns 0.0 (no evidence).
    The Gaussian is re-estimated every ``reestimate_every`` updates from the last
    ``history`` moving averages. ``min_std`` keeps a flat history from making every small
    wiggle infinitely unlikely.
    """

    def __init__(
        self,
        *,
        short_window: int = 10,
        history: int = 8640,
        learning_period: int = 388,
        reestimate_every: int = 100,
        min_std: float = 1e-3,
    ) -> None:
        if short_window < 1 or learning_period < 2 or history < learning_period:
            raise ValueError("need short_window >= 1 and 2 <= learning_period <= history")
        self.short_window = short_window
        self.learning_period = learning_period
        self.reestimate_every = reestimate_every
        self.min_std = min_std
        self._recent: deque[float] = deque(maxlen=short_window)
        self._averages: deque[float] = deque(maxlen=history)
        self._seen = 0
        self._mean = 0.0
        self._std = 1.0
        self._since_estimate = 0
        self._estimated = False

    def _estimate(self) -> None:
        values = np.fromiter(self._averages, dtype=np.float64, count=len(self._averages))
        self._mean = float(values.mean())
        self._std = max(float(values.std()), self.min_std)
        self._since_estimate = 0
        self._estimated = True

    def update(self, raw: float) -> float:
        """Fold one raw score in and return the log-likelihood score in [0, 1]."""
        self._recent.append(raw)
        average = sum(self._recent) / len(self._recent)
        self._seen += 1
        score = 0.0
        if self._seen > self.learning_period:
            if not self._estimated or self._since_estimate >= self.reestimate_every:
                self._estimate()
            score = log_tail_score(tail_probability(average, self._mean, self._std))
        self._averages.append(average)
        self._since_estimate += 1
        return score


def tail_probability(value: float, mean: float, std: float) -> float:
    """P(X >= value) for X ~ N(mean, std^2)."""
    return 0.5 * math.erfc((value - mean) / (std * math.sqrt(2.0)))


def log_tail_score(tail: float) -> float:
    """Map a tail probability to [0, 1] on a log scale (1e-5 -> 0.5, 1e-10 -> 1.0)."""
    return min(1.0, math.log(tail + LOG_EPSILON) / math.log(LOG_EPSILON))
