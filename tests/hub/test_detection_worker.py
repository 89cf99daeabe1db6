"""The detection worker (`hub.worker`, the default `events.detection = "process"`): it
dies with the hub, and a worker that dies alone is restarted and misses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from devstack.stack import ManagedProcess
from events.store import EventFilter, EventStore
from hub.settings import EventsSettings
from hub.wiring import store_url
from hub.worker import WorkerHandle
from ingest.records import Tick
from ingest.spool import Spool, SpoolFollower, encode_frame
from ingest.status import read_status
from tests.support.hub import make_settings, running_hub
from tests.support.publishers import Publisher, until

pytestmark = pytest.mark.integration

DOORS = ("ac-gate-south", "ac-service-exit", "ac-b1-entrance", "ac-flat-1-302")


def forced(publisher: Publisher, door: str, seq: int) -> None:
    body = {"ts": int(time.time() * 1000), "seq": seq, "event": "door_forced"}
    publisher.publish(f"gw/v1/yingyang/access/{door}/event", json.dumps(body).encode())


async def test_a_killed_worker_is_restarted_and_decides_what_came_meanwhile(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    settings = make_settings(
        tmp_path, mosquitto.port, influxdb.port, database,
        events=EventsSettings(snapshot_interval_s=0.5, detection="process"),
    )  # fmt: skip

    def events() -> list[tuple[str, int]]:
        with EventStore(store_url(settings)) as store:
            found = store.list_events(EventFilter(site="yingyang"))
        return sorted((e.device or "", e.count) for e in found)

    publisher = Publisher(mosquitto.port, "worker-kill-publisher")
    try:
        async with running_hub(settings) as hub:
            worker = hub.worker
            assert worker is not None and hub.events is None  # decided in the worker
            await until(lambda: worker.pid is not None, 20, "the worker started")
            for seq, door in enumerate(DOORS[:2], 1):
                forced(publisher, door, seq)
            publisher.wait()
            await until(lambda: len(events()) == 2, 20, "the first two events")
            first = worker.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            # Acknowledged while no worker runs: in the log, decided by the next worker.
            for seq, door in enumerate(DOORS[2:], 3):
                forced(publisher, door, seq)
            publisher.wait()
            await until(lambda: len(events()) == 4, 30, "the events of the restarted worker")
            assert worker.pid not in (None, first)
            assert hub.stats.received == 4
            assert hub.supervisor.tasks["detection"].failures == 1
        # Each door once, each raised once: nothing missed, nothing decided twice.
        assert events() == sorted((door, 1) for door in DOORS)
    finally:
        publisher.close()


def test_the_worker_dies_with_the_hub(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\nclient_id = "hub-orphan"\n'
        f'[influx]\nurl = "http://127.0.0.1:{influxdb.port}"\ndatabase = "orphan"\n'
        f'[spool]\ndirectory = "{tmp_path / "spool"}"\n'
        f'[deadletters]\ndirectory = "{tmp_path / "dead"}"\n'
        f'[hub]\ndata_dir = "{tmp_path / "data"}"\nstatus_interval_s = 0.1\n'
        'credential_hash_key = "test-credential-key-0123456789"\n'
        "[api]\nenabled = false\n"
    )
    hub = subprocess.Popen(
        [sys.executable, "-m", "hub", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        worker: psutil.Process | None = None
        while worker is None:
            assert hub.poll() is None, "the hub exited"
            assert time.monotonic() < deadline, "no detection worker"
            status = read_status(tmp_path / "data") or {}
            children = psutil.Process(hub.pid).children()
            if status.get("connected") and "rules_evaluated" in status and children:
                worker = children[0]
            time.sleep(0.1)
        assert "hub.worker" in " ".join(worker.cmdline())
        hub.kill()  # SIGKILL: no graceful stop, nothing to tell the worker
        hub.wait(10)
        _gone, alive = psutil.wait_procs([worker], timeout=5)
        assert not alive, "the worker outlived the hub that started it"
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait(10)


def test_a_report_of_no_lag_counts_what_was_logged_after_the_worker_looked(
    tmp_path: Path,
) -> None:
    # The worker reports every status interval; a report that predates the last synced
    # frames must not say "nothing left" (CI once asserted on such a report: 55,751 of
    # 60,000 readings evaluated, lag 0).
    spool = Spool(tmp_path, max_bytes=1 << 30)
    spool.open()
    follower = SpoolFollower(tmp_path)
    try:
        for first in (0, 5):
            ticks = [Tick(first + i) for i in range(5)]
            lines = [f"m v={first + i}i {first + i}\n".encode() for i in range(5)]
            spool.append(encode_frame(lines, 1, list(ticks)), len(lines), list(ticks))
            spool.sync()
            if first == 0:
                assert follower.refresh()  # the worker looks after the first frame
        handle = WorkerHandle(make_settings(tmp_path, 1, 1, "unused"), spool)
        end = follower.end
        handle._take(
            {
                "status": {"rules_lag_records": 0, "anomaly": {"lag_records": 0}},
                "holds": {"rules": [end.segment, end.offset]},
                "log_end": [end.segment, end.offset],
            }
        )
        found = handle.current_status()
        assert found["rules_lag_records"] == 5 and found["anomaly"]["lag_records"] == 5
        follower.refresh()
        end = follower.end
        handle._take({"status": {"rules_lag_records": 0}, "log_end": [end.segment, end.offset]})
        assert handle.current_status()["rules_lag_records"] == 0
    finally:
        spool.close()
        follower.close()
