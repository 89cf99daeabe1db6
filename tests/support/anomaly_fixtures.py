"""Synthetic device history for the anomaly tests: a few smoke detectors, one a minute."""

from __future__ import annotations

import math
import random

from sensors.base import Reading

SITE = "yingyang"
MS_PER_MIN = 60_000


def smoke_reading(device: str, ts_ms: int, seq: int, temperature: float, eco2: float) -> Reading:
    return Reading(
        measurement="smoke",
        site=SITE,
        kind="smoke",
        device=device,
        channel="telemetry",
        cell="c1",
        ts_ns=ts_ms * 1_000_000,
        ts_from_device=True,
        seq=seq,
        tags={},
        fields={
            "seq": seq,
            "temperature": temperature,
            "eco2": eco2,
            "obscuration": 0.01,
            "humidity": 45.0 + (seq % 7) * 0.1,
        },
    )


def smoke_history(
    devices: list[str], start_ms: int, minutes: int, seed: int = 1, first_minute: int = 0
) -> list[Reading]:
    """Noisy, daily-swinging smoke telemetry, time-ordered across devices; minute i is at
    start_ms + i min (`first_minute` continues an earlier history seamlessly)."""
    rng = random.Random(seed)
    out: list[Reading] = []
    for i in range(first_minute, first_minute + minutes):
        ts = start_ms + i * MS_PER_MIN
        swing = math.sin(2 * math.pi * i / 1440)
        for d, device in enumerate(devices):
            temperature = round(21.0 + d + swing + rng.gauss(0, 0.05), 2)
            eco2 = round(420.0 + rng.gauss(0, 15), 1)
            out.append(smoke_reading(device, ts + d, i + 1, temperature, eco2))
    return out
