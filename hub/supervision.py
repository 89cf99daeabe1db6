"""What every hub process runs with: supervised background tasks, its log format, and
its garbage collector's and memory allocator's settings.

A background task that fails is restarted, never fatal: `Supervisor.run` calls its
factory again after a backoff (a full disk: at the storage pace, see `storage_full`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger(__name__)

RESTART_MIN_S: Final = 1.0
"""A failed supervised task restarts after this long, doubling per failure ..."""
RESTART_MAX_S: Final = 60.0
"""... up to this."""
RESTART_STABLE_S: Final = 60.0
"""A task that ran this long before failing starts its backoff from the minimum again."""
STORAGE_RESTART_S: Final = 1.0
"""A task that failed because its disk is full restarts after this long, every time: the
disk frees up on its own schedule (an operator, a reclaim), and the rules' commits must
resume as soon as it does, as the intake's writes do (`ingest.intake.STORAGE_RETRY_S`),
not after a backoff grown to a minute."""


@dataclass
class TaskHealth:
    """One supervised task as the status file and `/readyz` see it."""

    state: str = "running"
    """running, restarting (failed, waiting out its backoff) or ended (returned)."""
    failures: int = 0
    last_error: str | None = None
    last_failure_at: float | None = None
    """Wall-clock time (s) of the last failure."""
    restart_at: float | None = None
    """Wall-clock time (s) of the next start while restarting."""


class Supervisor:
    """Runs background tasks so that a failure restarts the task instead of ending the
    hub: `await supervisor.run(name, factory)` calls `factory()` for a fresh coroutine
    after each failure, waiting `min_s`, then twice as long each time, up to `max_s`."""

    def __init__(
        self,
        *,
        min_s: float = RESTART_MIN_S,
        max_s: float = RESTART_MAX_S,
        stable_s: float = RESTART_STABLE_S,
        storage_s: float = STORAGE_RESTART_S,
    ) -> None:
        self.min_s, self.max_s, self.stable_s = min_s, max_s, stable_s
        self.storage_s = storage_s
        self.tasks: dict[str, TaskHealth] = {}

    async def run(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `factory()` until it returns or is cancelled, restarting it on failure."""
        health = self.tasks.setdefault(name, TaskHealth())
        delay = self.min_s
        while True:
            health.state, health.restart_at = "running", None
            started = time.monotonic()
            try:
                await factory()
            except Exception as exc:  # a background task must not end the hub
                if time.monotonic() - started >= self.stable_s:
                    delay = self.min_s
                health.failures += 1
                health.last_error = f"{type(exc).__name__}: {exc}"
                health.last_failure_at = time.time()
                disk_full = storage_full(exc)
                wait = self.storage_s if disk_full else delay
                health.state, health.restart_at = "restarting", time.time() + wait
                if disk_full:  # once a minute in the log, not once a second
                    level = logging.ERROR if health.failures % 60 == 1 else logging.DEBUG
                    log.log(level, "task %s: the disk is full (%s); retrying every %.0f s",
                            name, health.last_error, wait)  # fmt: skip
                else:
                    log.exception(
                        "task %s failed (%d failures so far); restarting in %.0f s",
                        name,
                        health.failures,
                        wait,
                    )
                await asyncio.sleep(wait)
                if not disk_full:
                    delay = min(delay * 2, self.max_s)
            else:
                health.state = "ended"
                log.info("task %s ended", name)
                return

    def problems(self) -> dict[str, str]:
        """The tasks that are not running, with why (for `/readyz`)."""
        return {
            name: f"failed {h.failures}x, restarting (last: {h.last_error})"
            for name, h in self.tasks.items()
            if h.state == "restarting"
        }

    def status(self) -> dict[str, dict[str, Any]]:
        """Per task: state, failures, last error (for the status file)."""
        return {
            name: {
                "state": h.state,
                "failures": h.failures,
                "last_error": h.last_error,
                "last_failure_at": h.last_failure_at,
                "restart_at": h.restart_at,
            }
            for name, h in self.tasks.items()
        }


_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the disk is full: an OSError with ENOSPC or
    EDQUOT, SQLite's "database or disk is full", PostgreSQL's class 53 (insufficient
    resources: disk full, out of memory)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _FULL_ERRNOS:
            return True
        if "database or disk is full" in str(cause):
            return True
        if str(getattr(cause, "sqlstate", "") or "").startswith("53"):
            return True
        cause = getattr(cause, "orig", None) or cause.__cause__ or cause.__context__
    return False


def setup_logging(level: str) -> None:
    """Log to stderr at `level` (a name such as "INFO"), the HTTP libraries at WARNING or above."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    # One line per HTTP request would drown the hub's own messages.
    for noisy in ("httpx", "httpcore", "influxdb_client"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


GC_THRESHOLDS: Final = (50_000, 20, 50)
"""The cyclic GC's thresholds in every hub process (Python's defaults: 700, 10, 10).
Readings, records and line protocol are acyclic and freed by reference counting, so a
young-generation pass every 700 allocations finds nothing to free, and at tens of
thousands of readings a second it was real work: in the detection worker's log reads
(`gridwatch bench detection`) the passes cost 8 of 13 µs per record. Cyclic garbage
waits longer, so what holds large buffers must not be left in cycles
(`ingest.influx.detached`)."""


def tune_gc() -> None:
    """Freeze what start-up made (it lives as long as the process) and collect rarely
    (`GC_THRESHOLDS`). Call it once the process is set up, before its main loop."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


MALLOC_ARENAS: Final = 2
"""glibc malloc arenas per process (glibc's default: 8 per core). Each thread that
allocates gets an arena of its own, and memory freed in one is never reused by another:
the hub's and the worker's thread pools (SQLite commits, password hashes, the InfluxDB
writer) each kept their peak. At 10,000 devices this was about 14 MB of the hub's and
its worker's peak together (`gridwatch bench ingest --devices 10000`, docs/alarm-path.md)."""
MMAP_THRESHOLD_BYTES: Final = 128 * 1024
"""Blocks this large or larger are mmapped and returned to the system when freed. It is
glibc's starting value, pinned: otherwise glibc raises it (up to 32 MiB) each time such a
block is freed, and the log's frames and batches then stay in the heap after use."""
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
"""`mallopt` parameters (malloc.h)."""


def tune_malloc() -> dict[str, int]:
    """Apply `MALLOC_ARENAS` and `MMAP_THRESHOLD_BYTES` before the process starts
    threads; returns what it set. A value the environment already sets
    (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) wins; not glibc: nothing."""
    wanted = {
        "MALLOC_ARENA_MAX": (_M_ARENA_MAX, MALLOC_ARENAS),
        "MALLOC_MMAP_THRESHOLD_": (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    }
    applied: dict[str, int] = {}
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(None).mallopt  # AttributeError: not glibc (musl, macOS)
        for env, (param, value) in wanted.items():
            if env not in os.environ and mallopt(param, value) == 1:
                applied[env] = value
    if applied:
        log.debug("malloc: %s", ", ".join(f"{k}={v}" for k, v in applied.items()))
    return applied
