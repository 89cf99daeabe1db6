"""Realistic background traffic for a fleet of the three kinds (benchmarks, demo, tests).

Deterministic for a seed. Values follow the shapes of the shared datasets: smoke
readings in the ranges of the Kaggle smoke-detection board (°C, %RH, ppb TVOC, ppm
eCO2), parking bays like the Melbourne in-ground sensors, lots like Birmingham's
counters, doors with grants, openings and closings. Timestamps are device time in
epoch ms, strictly increasing per device, so every message is a distinct point.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from sensors.topics import DEFAULT_PREFIX, device_topic

KINDS = ("access", "smoke", "parking")


@dataclass(slots=True)
class SimDevice:
    site: str
    kind: str
    device: str
    cell: str
    seq: int = 0
    last_ts_ms: int = 0
    state: dict[str, float | int | bool] = field(default_factory=dict)

    def topic(self, channel: str, prefix: str = DEFAULT_PREFIX) -> str:
        return device_topic(prefix, self.site, self.kind, self.device, channel)

    def next_ts(self, now_ms: int) -> int:
        self.last_ts_ms = max(now_ms, self.last_ts_ms + 1)
        return self.last_ts_ms


def make_fleet(
    n_devices: int, *, site: str = "bench", cells: int = 10, seed: int = 1
) -> list[SimDevice]:
    """Devices split evenly over the three kinds and `cells` grid cells."""
    rng = random.Random(seed)
    fleet = []
    for i in range(n_devices):
        kind = KINDS[i % len(KINDS)]
        device = SimDevice(site, kind, f"{kind[:2]}-{i:05d}", f"c{i % cells:02d}")
        if kind == "smoke":
            device.state = {"temperature": rng.uniform(19.0, 24.0), "battery": rng.uniform(60, 100)}
        elif kind == "parking":
            device.state = {"occupied": rng.random() < 0.5, "capacity": rng.choice([120, 220, 450])}
        else:
            device.state = {"door_open": False}
        fleet.append(device)
    return fleet


def _smoke(dev: SimDevice, rng: random.Random) -> tuple[str, dict[str, object]]:
    temp = float(dev.state["temperature"]) + rng.gauss(0, 0.05)
    dev.state["temperature"] = temp
    battery = max(0.0, float(dev.state["battery"]) - 0.001)
    dev.state["battery"] = battery
    return "telemetry", {
        "obscuration": round(abs(rng.gauss(0.02, 0.01)), 4),
        "temperature": round(temp, 2),
        "humidity": round(rng.uniform(35, 60), 1),
        "co": round(abs(rng.gauss(0.5, 0.3)), 2),
        "tvoc": rng.randint(0, 1200),
        "eco2": rng.randint(400, 700),
        "pm2_5": round(abs(rng.gauss(2.0, 1.0)), 2),
        "battery": round(battery, 2),
        "alarm": False,
        "fault": False,
        "test": False,
    }


def _parking(dev: SimDevice, rng: random.Random) -> tuple[str, dict[str, object]]:
    if dev.device.endswith("0"):  # one in ten is a lot counter, the rest bay sensors
        capacity = int(dev.state["capacity"])
        return "telemetry", {
            "lot": f"lot-{dev.device[-4:]}",
            "capacity": capacity,
            "occupancy": rng.randint(0, capacity),
        }
    if rng.random() < 0.2:
        dev.state["occupied"] = not dev.state["occupied"]
    return "telemetry", {
        "bay_id": f"bay-{dev.device[-5:]}",
        "occupied": bool(dev.state["occupied"]),
    }


def _access(dev: SimDevice, rng: random.Random) -> tuple[str, dict[str, object]]:
    roll = rng.random()
    if roll < 0.5:
        dev.state["door_open"] = not dev.state["door_open"]
        return "event", {"event": "door_opened" if dev.state["door_open"] else "door_closed"}
    if roll < 0.9:
        granted = rng.random() < 0.95
        return "event", {
            "event": "access_granted" if granted else "access_denied",
            "credential": f"{rng.randint(10_000_000, 10_000_999)}",
            "direction": rng.choice(["in", "out"]),
        }
    return "telemetry", {
        "door_open": bool(dev.state["door_open"]),
        "locked": not dev.state["door_open"],
    }


_MAKERS = {"smoke": _smoke, "parking": _parking, "access": _access}


def message(
    dev: SimDevice, rng: random.Random, now_ms: int, prefix: str = DEFAULT_PREFIX
) -> tuple[str, bytes]:
    """Next message of a device: (topic, JSON payload) with ts and seq."""
    channel, body = _MAKERS[dev.kind](dev, rng)
    dev.seq += 1
    payload = {"ts": dev.next_ts(now_ms), "seq": dev.seq, "cell": dev.cell, **body}
    return dev.topic(channel, prefix), json.dumps(payload, separators=(",", ":")).encode()


def stream(
    fleet: list[SimDevice], *, seed: int = 1, start_ms: int, step_ms: float = 0.0
) -> Iterator[tuple[str, bytes]]:
    """Endless round-robin-with-jitter traffic; device time advances by step_ms per message."""
    rng = random.Random(seed)
    now = float(start_ms)
    while True:
        dev = fleet[rng.randrange(len(fleet))]
        now += step_ms
        yield message(dev, rng, int(now))
