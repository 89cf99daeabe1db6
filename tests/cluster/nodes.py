"""A real cluster node process for the cluster tests: its settings, its start, and
waiting on what it and its partitions' hubs write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cluster.partitions import partition_name, partition_of
from devstack.stack import ManagedProcess
from ingest.status import read_status

PARTITIONS = 2


def wait_for(what: str, check: Any, log: Path, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout_s} s; node log:\n{log.read_text()[-3000:]}")


def partition_status(data: Path, site: str) -> dict[str, Any]:
    folder = data / "partitions" / partition_name(partition_of(site, PARTITIONS))
    try:
        return read_status(folder) or {}
    except (OSError, ValueError):
        return {}


def start_node(
    tmp_path: Path,
    mosquitto: ManagedProcess,
    influxdb: ManagedProcess,
    store_url: str,
    database: str,
    extra: str,
) -> tuple[subprocess.Popen[bytes], Path]:
    """`gridwatch run` of node "solo" (PARTITIONS partitions, data in tmp_path/data);
    `extra`: more settings sections. Returns the process and its log."""
    config = tmp_path / "node.toml"
    config.write_text(
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        f'[influx]\nurl = "http://127.0.0.1:{influxdb.port}"\ndatabase = "{database}"\n'
        f'[spool]\ndirectory = "{tmp_path / "spool"}"\n'
        f'[deadletters]\ndirectory = "{tmp_path / "dead"}"\n'
        f'[hub]\ndata_dir = "{tmp_path / "data"}"\nstatus_interval_s = 0.2\n'
        f'[events]\nstore_url = "{store_url}"\n'
        f'[cluster]\nenabled = true\nnode_id = "solo"\npartitions = {PARTITIONS}\n'
        "lease_ttl_s = 3.0\n" + extra
    )
    log = tmp_path / "node.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
    with log.open("wb") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "hub", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return node, log


def stop_node(node: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    """SIGTERM, as an operator stops it; killed (and an error) if it hangs. Its status."""
    node.send_signal(signal.SIGTERM)
    try:
        return node.wait(timeout_s)
    except subprocess.TimeoutExpired:
        node.kill()
        raise
