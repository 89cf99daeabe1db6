"""Ingest self-observation: counters since start, recent publish→stored latency.

Counters are cumulative (like Telegraf's `internal` plugin): dashboards take
`non_negative_derivative` for rates, and a restart shows as a reset, not a gap.
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sensors.base import FieldValue


class LatencyWindow:
    """The last `size` publish→stored latencies in ms (a ring buffer: bounded memory)."""

    def __init__(self, size: int = 100_000) -> None:
        self._values = array("d", bytes(8 * size))
        self._size = size
        self._count = 0

    def add(self, ms: float) -> None:
        self._values[self._count % self._size] = ms
        self._count += 1

    def percentiles(self, *qs: float) -> list[float | None]:
        n = min(self._count, self._size)
        if n == 0:
            return [None for _ in qs]
        data = sorted(self._values[:n])
        return [data[min(n - 1, round(q * (n - 1)))] for q in qs]


@dataclass
class IngestStats:
    started_ns: int = field(default_factory=time.time_ns)
    received: int = 0
    acked: int = 0
    stored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    write_failures: Counter[str] = field(default_factory=Counter)
    backpressure_waits: int = 0
    spool_bytes: int = 0
    spool_lines: int = 0
    lag_s: float = 0.0
    reconnects: int = 0
    connected: bool = False
    first_received_ns: int = 0
    last_stored_ns: int = 0
    latency: LatencyWindow = field(default_factory=LatencyWindow)

    def fields(self) -> dict[str, FieldValue]:
        """The `hub_stats` point: flat, typed, one field per rejection reason."""
        out: dict[str, FieldValue] = {
            "received": self.received,
            "acked": self.acked,
            "stored": self.stored,
            "rejected": sum(self.rejected.values()),
            "dead_lettered": self.dead_lettered,
            "write_failures": sum(self.write_failures.values()),
            "backpressure_waits": self.backpressure_waits,
            "spool_bytes": self.spool_bytes,
            "spool_lines": self.spool_lines,
            "lag_s": float(self.lag_s),
            "reconnects": self.reconnects,
            "connected": self.connected,
            "uptime_s": float((time.time_ns() - self.started_ns) / 1e9),
        }
        for reason, count in sorted(self.rejected.items()):
            out[f"rejected_{reason}"] = count
        for failure, count in sorted(self.write_failures.items()):
            out[f"write_failures_{failure}"] = count
        return out

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view for `gridwatch status` and the benchmark."""
        p50, p99 = self.latency.percentiles(0.5, 0.99)
        data: dict[str, Any] = dict(self.fields())
        data["rejected_by_reason"] = dict(self.rejected)
        data["write_failures_by_kind"] = dict(self.write_failures)
        data["latency_p50_ms"] = p50
        data["first_received_ns"] = self.first_received_ns
        data["last_stored_ns"] = self.last_stored_ns
        data["latency_p99_ms"] = p99
        return data
