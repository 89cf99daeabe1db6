"""Feature functions: pure arithmetic over windows of one device's (or credential's) readings.

Every function takes plain sequences (times in epoch ms, values, events) and returns
numbers, so the same code computes training vectors from InfluxDB history and online
vectors inside the hub, and tests can feed hand-made windows. Keeping windows, and
learning the "usual" curves these functions compare against, is `anomaly.extractor`'s job.

Times of day are UTC: a profile learned and applied in one time base needs no site time
zone, and a whole-hour offset only rotates the 24 bins.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Final

MS_PER_S: Final = 1_000
MS_PER_MIN: Final = 60_000
MS_PER_HOUR: Final = 3_600_000
MS_PER_DAY: Final = 86_400_000
HOURS: Final = 24
_EPOCH_WEEKDAY: Final = 3
"""1970-01-01 was a Thursday (Monday = 0)."""


# ---------------------------------------------------------------- generic window stats


def level(values: Sequence[float]) -> float:
    """The current level: the newest value (0 for an empty window)."""
    return float(values[-1]) if values else 0.0


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def variance(values: Sequence[float]) -> float:
    """Population variance; 0 for fewer than two values (no spread is known)."""
    n = len(values)
    if n < 2:
        return 0.0
    m = mean(values)
    return math.fsum((v - m) ** 2 for v in values) / n


def slope_per_min(ts_ms: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope in units per minute; 0 when time does not move."""
    n = len(values)
    if n != len(ts_ms):
        raise ValueError(f"slope: {len(ts_ms)} times for {n} values")
    if n < 2:
        return 0.0
    t0 = ts_ms[0]
    xs = [(t - t0) / MS_PER_MIN for t in ts_ms]
    mx = sum(xs) / n
    my = sum(values) / n
    sxx = sxy = 0.0
    for x, y in zip(xs, values, strict=True):
        dx = x - mx
        sxx += dx * dx
        sxy += dx * (y - my)
    return sxy / sxx if sxx > 0.0 else 0.0


def count_since(ts_ms: Sequence[int], since_ms: int) -> int:
    """How many times in the (time-ordered) window are at or after `since_ms`."""
    n = 0
    for t in reversed(ts_ms):
        if t < since_ms:
            break
        n += 1
    return n


def rate_per_hour(ts_ms: Sequence[int], now_ms: int, span_ms: int = MS_PER_HOUR) -> float:
    """Events per hour over the last `span_ms` up to `now_ms`."""
    if span_ms <= 0:
        raise ValueError("span_ms must be positive")
    return count_since(ts_ms, now_ms - span_ms) * MS_PER_HOUR / span_ms


def gap_s(previous_ms: int | None, now_ms: int) -> float:
    """Seconds since the previous reading (0 for the first one: nothing is missing yet)."""
    if previous_ms is None:
        return 0.0
    return max(0.0, (now_ms - previous_ms) / MS_PER_S)


def largest_gap_s(ts_ms: Sequence[int]) -> float:
    """The longest silence inside the window, in seconds."""
    return max(((b - a) / MS_PER_S for a, b in itertools.pairwise(ts_ms)), default=0.0)


def seq_gap(previous_seq: int | None, seq: int | None) -> int:
    """Messages missing between two per-device counters (0 when unknown or restarted)."""
    if previous_seq is None or seq is None or seq <= previous_seq:
        return 0
    return seq - previous_seq - 1


def repeat_fraction(rows: Sequence[tuple[object, ...]]) -> float:
    """Share of consecutive rows identical to the one before: a stuck sensor tends to 1,
    a live one (noise in the last digit) stays near 0."""
    if len(rows) < 2:
        return 0.0
    same = sum(1 for a, b in itertools.pairwise(rows) if a == b)
    return same / (len(rows) - 1)


def repeat_run(run: int, previous: tuple[object, ...] | None, row: tuple[object, ...]) -> int:
    """Consecutive rows identical to the one before, carried from reading to reading: it
    keeps growing while a sensor stays frozen, so a long freeze scores ever higher
    (a fraction of a window would stop at 1)."""
    return run + 1 if previous is not None and row == previous else 0


# ---------------------------------------------------------------- time context


def hour_of_day(ts_ms: int) -> int:
    """UTC hour 0..23."""
    return (ts_ms // MS_PER_HOUR) % HOURS


def day_of_week(ts_ms: int) -> int:
    """UTC weekday, Monday = 0."""
    return (ts_ms // MS_PER_DAY + _EPOCH_WEEKDAY) % 7


def time_context(ts_ms: int) -> tuple[float, float, float, float]:
    """Hour of day and day of week on circles, so 23:59 sits next to 00:00."""
    hour = (ts_ms % MS_PER_DAY) / MS_PER_HOUR
    dow = day_of_week(ts_ms) + hour / HOURS
    h = 2 * math.pi * hour / HOURS
    d = 2 * math.pi * dow / 7
    return math.sin(h), math.cos(h), math.sin(d), math.cos(d)


def hour_share(profile: Sequence[float], hour: int) -> float:
    """How usual this hour is in a 24-bin histogram: 1 = an average hour, 0 = never seen.

    Laplace-smoothed (one pseudo count spread over the day), so a short history does not
    call every unseen hour impossible, and an empty profile says "average" (1.0)."""
    if len(profile) != HOURS:
        raise ValueError(f"an hour profile has {HOURS} bins, not {len(profile)}")
    total = math.fsum(profile)
    return (profile[hour] + 1.0 / HOURS) / (total + 1.0) * HOURS


def usual_at(curve: Sequence[float], hour: int, default: float) -> float:
    """The learned value of a 24-bin curve at this hour (NaN bins fall back to default)."""
    if len(curve) != HOURS:
        raise ValueError(f"a daily curve has {HOURS} bins, not {len(curve)}")
    value = curve[hour]
    return default if math.isnan(value) else value


# ---------------------------------------------------------------- access


def door_counts(
    events: Sequence[tuple[int, str]], now_ms: int, *, granted: str, denied: str, opened: str
) -> tuple[int, int, int]:
    """Grants, denials and openings at one door in the hour up to `now_ms`.

    `events` is the door's time-ordered (ts_ms, event type) window; the type names come
    from the access kind (passed in, never retyped here)."""
    since = now_ms - MS_PER_HOUR
    grants = denials = openings = 0
    for t, event in reversed(events):
        if t < since:
            break
        grants += event == granted
        denials += event == denied
        openings += event == opened
    return grants, denials, openings


def credential_activity(
    uses: Sequence[tuple[int, str]], now_ms: int, device: str
) -> tuple[int, int, float]:
    """For one credential's time-ordered (ts_ms, device) uses, the current one included:
    uses in the last hour, distinct doors in the last hour, and seconds since its last use
    at another door (capped at an hour: "not recently elsewhere").

    A cloned card shows up as two doors within minutes, faster than anyone walks."""
    since = now_ms - MS_PER_HOUR
    count = 0
    doors: set[str] = set()
    elsewhere_s = MS_PER_HOUR / MS_PER_S
    for t, dev in reversed(uses):
        if t < since:
            break
        count += 1
        doors.add(dev)
        if dev != device:
            elsewhere_s = min(elsewhere_s, max(0.0, (now_ms - t) / MS_PER_S))
    return count, len(doors), elsewhere_s


# ---------------------------------------------------------------- parking


def occupancy_ratio(occupancy: float, capacity: float) -> float:
    """Share of a lot in use; a lot without a capacity counts as empty (0)."""
    return occupancy / capacity if capacity > 0 else 0.0


def turnover(values: Sequence[float]) -> float:
    """Total movement in a window: the sum of absolute changes (bays: state flips;
    counters: vehicles in plus out, scaled by the caller)."""
    return math.fsum(abs(b - a) for a, b in itertools.pairwise(values))
