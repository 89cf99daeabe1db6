"""Context managers that run a real service on a free loopback port for one test scope.

Plain helpers (not a conftest) so fixtures of any scope can wrap them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.postgres import create_database, drop_database, postgres_bindir, running_postgres
from devstack.stack import (
    ManagedProcess,
    free_port,
    start_influxdb,
    start_mosquitto,
    start_victoria_metrics,
)


@contextmanager
def running_mosquitto(workdir: Path, *, extra_conf: str = "") -> Iterator[ManagedProcess]:
    """A private broker that is stopped (and its state saved) however the test ends."""
    proc = start_mosquitto(workdir, free_port(), extra_conf=extra_conf)
    try:
        yield proc
    finally:
        proc.stop()


@contextmanager
def running_influxdb(workdir: Path) -> Iterator[ManagedProcess]:
    """A private InfluxDB 1.x that is stopped however the test ends."""
    proc = start_influxdb(workdir, free_port())
    try:
        yield proc
    finally:
        proc.stop()


@contextmanager
def running_victoria_metrics(workdir: Path) -> Iterator[ManagedProcess]:
    """A private VictoriaMetrics that is stopped however the test ends."""
    proc = start_victoria_metrics(workdir, free_port())
    try:
        yield proc
    finally:
        proc.stop()


__all__ = [
    "create_database",
    "drop_database",
    "postgres_bindir",
    "running_influxdb",
    "running_mosquitto",
    "running_postgres",
    "running_victoria_metrics",
]
