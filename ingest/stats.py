"""Ingest self-observation: counters since start, recent publish→stored latency.

Counters are cumulative (like Telegraf's `internal` plugin): dashboards take
`non_negative_derivative` for rates, and a restart shows as a reset, not a gap.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from sensors.base import FieldValue

AHEAD_NOTED_S: Final = 2.0
"""A reading dated this far ahead of the hub's clock when it arrives is counted
(`readings_ahead`). Transit only makes a reading older, so only a device clock running
fast (or the hub's running slow) dates it in the future; the rules' event time follows
the fastest clock, so such a device makes other devices' readings late
(docs/alarm-path.md, finding 3)."""
AHEAD_SOURCES: Final = 100
"""The most device names `IngestStats.ahead_by` keeps (made-up names cannot grow it)."""
AHEAD_SHOWN: Final = 5
"""Devices the status file names, the most frequent first."""


class LatencyHistogram:
    """Publish→stored latencies since start, in log-spaced buckets 2 % wide.

    O(1) to add and a short scan to read, so the status file can report p50/p99 every
    second at any rate (sorting a window of samples cost ~20 ms a read). Percentiles are
    the buckets' upper edges: within 2 % of the true value. Below `min_ms` (including
    negative values from device clocks running ahead) counts as `min_ms`.
    """

    def __init__(self, *, min_ms: float = 0.1, max_ms: float = 86_400_000.0) -> None:
        self._min_ms = min_ms
        self._log_step = math.log(1.02)
        self._counts = [0] * (int(math.log(max_ms / min_ms) / self._log_step) + 2)
        self._total = 0

    def add(self, ms: float) -> None:
        index = 0
        if ms > self._min_ms:
            index = min(
                int(math.log(ms / self._min_ms) / self._log_step) + 1, len(self._counts) - 1
            )
        self._counts[index] += 1
        self._total += 1

    def percentiles(self, *qs: float) -> list[float | None]:
        if not self._total:
            return [None for _ in qs]
        out: list[float | None] = []
        for q in qs:
            rank = max(1, math.ceil(q * self._total))
            seen = 0
            for index, count in enumerate(self._counts):
                seen += count
                if seen >= rank:
                    out.append(self._min_ms * math.exp(index * self._log_step))
                    break
        return out


@dataclass
class IngestStats:
    started_ns: int = field(default_factory=time.time_ns)
    received: int = 0
    acked: int = 0
    stored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    duplicates: int = 0
    """Redelivered readings the log already held (acked, not logged again)."""
    retained_skipped: int = 0
    """Retained messages re-sent because the hub resubscribed to its kept session."""
    foreign_skipped: int = 0
    """Messages of sites another partition's hub reads (cluster mode, catch-all hub)."""
    readings_ahead: int = 0
    """Readings dated more than `AHEAD_NOTED_S` ahead of the hub's clock on arrival."""
    ahead_by: dict[str, int] = field(default_factory=dict)
    """`readings_ahead` per device (at most `AHEAD_SOURCES` names)."""
    ahead_max_s: float = 0.0
    """The furthest ahead any of them was."""
    write_failures: Counter[str] = field(default_factory=Counter)
    backpressure_waits: int = 0
    storage_failures: int = 0
    """Spool or dead-letter writes the disk refused (full, I/O error), retried."""
    storage_error: str | None = None
    """The current write failure; None while the disk takes writes."""
    storage_failing_since: float | None = None
    """`time.monotonic()` of the first failure of the current one."""
    spool_bytes: int = 0
    spool_lines: int = 0
    lag_s: float = 0.0
    reconnects: int = 0
    sessions_lost: int = 0
    """Reconnects where the broker no longer had the session it should have kept."""
    connected: bool = False
    first_received_ns: int = 0
    first_received_cpu_s: float = 0.0
    """Process CPU time when the first message arrived: the benchmark's CPU per message
    then leaves out start-up (imports, connecting)."""
    last_stored_ns: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def fields(self) -> dict[str, FieldValue]:
        """The `hub_stats` point: flat, typed, one field per rejection reason."""
        out: dict[str, FieldValue] = {
            "received": self.received,
            "acked": self.acked,
            "stored": self.stored,
            "rejected": sum(self.rejected.values()),
            "dead_lettered": self.dead_lettered,
            "duplicates": self.duplicates,
            "retained_skipped": self.retained_skipped,
            "foreign_skipped": self.foreign_skipped,
            "readings_ahead": self.readings_ahead,
            "write_failures": sum(self.write_failures.values()),
            "backpressure_waits": self.backpressure_waits,
            "storage_blocked": self.storage_error is not None,
            "storage_failures": self.storage_failures,
            "storage_blocked_s": float(self.storage_blocked_s()),
            "spool_bytes": self.spool_bytes,
            "spool_lines": self.spool_lines,
            "lag_s": float(self.lag_s),
            "reconnects": self.reconnects,
            "sessions_lost": self.sessions_lost,
            "connected": self.connected,
            "uptime_s": float((time.time_ns() - self.started_ns) / 1e9),
        }
        for reason, count in sorted(self.rejected.items()):
            out[f"rejected_{reason}"] = count
        for failure, count in sorted(self.write_failures.items()):
            out[f"write_failures_{failure}"] = count
        return out

    def note_ahead(self, device: str, ahead_ns: int) -> None:
        """A reading of `device` arrived dated `ahead_ns` ahead of the hub's clock."""
        self.readings_ahead += 1
        self.ahead_max_s = max(self.ahead_max_s, ahead_ns / 1e9)
        by = self.ahead_by
        if device in by:
            by[device] += 1
        elif len(by) < AHEAD_SOURCES:
            by[device] = 1

    def storage_blocked_s(self) -> float:
        since = self.storage_failing_since
        return 0.0 if since is None else time.monotonic() - since

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view for `gridwatch status` and the benchmark."""
        p50, p99 = self.latency.percentiles(0.5, 0.99)
        data: dict[str, Any] = dict(self.fields())
        data["rejected_by_reason"] = dict(self.rejected)
        data["write_failures_by_kind"] = dict(self.write_failures)
        data["storage_error"] = self.storage_error
        data["latency_p50_ms"] = p50
        data["first_received_ns"] = self.first_received_ns
        data["first_received_cpu_s"] = self.first_received_cpu_s
        data["last_stored_ns"] = self.last_stored_ns
        data["latency_p99_ms"] = p99
        if self.readings_ahead:
            ranked = sorted(self.ahead_by.items(), key=lambda kv: (-kv[1], kv[0]))
            data["readings_ahead_by"] = dict(ranked[:AHEAD_SHOWN])
            data["readings_ahead_max_s"] = round(self.ahead_max_s, 1)
        return data
