"""NATS (JetStream + MQTT 3.1.1) as the second broker: one private server per test.

The counterpart of `running_mosquitto` (tests/support/services.py): its own free
loopback ports (MQTT and the NATS protocol listener), its own JetStream store under
the test's tmp dir, stopped however the test ends. Standard-port servers on the
machine are never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.nats import start_nats
from devstack.stack import ManagedProcess, free_port


@contextmanager
def running_nats(workdir: Path, *, ack_wait_s: float | None = None) -> Iterator[ManagedProcess]:
    """A private NATS whose `port` is its MQTT listener; restart it with
    `devstack.nats.restart_nats` (same ports, same store)."""
    proc = start_nats(workdir, free_port(), ack_wait_s=ack_wait_s)
    try:
        yield proc
    finally:
        proc.stop()
