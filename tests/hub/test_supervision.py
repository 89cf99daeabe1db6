"""A failing background task is logged, counted, reported and restarted; it never ends
the hub. `/readyz` follows ingestion: the broker gone → 503 with a reason, back → 200."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sqlite3
from pathlib import Path

import httpx
import pytest

from api.probes import IngestionView, NotReady, with_ingestion
from detection.directory_source import DirectorySource
from detection.rules_service import RulesService
from devstack.stack import ManagedProcess, free_port, restart
from hub.settings import ApiSettings, EventsSettings, RegistrySettings
from hub.supervision import Supervisor, storage_full
from ingest.status import read_status
from tests.support.hub import make_settings, running_hub
from tests.support.publishers import Publisher, until


async def test_supervisor_restarts_with_capped_backoff_and_counts() -> None:
    supervisor = Supervisor(min_s=0.01, max_s=0.02, stable_s=60)
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 3:
            raise RuntimeError(f"boom {len(runs)}")

    await asyncio.wait_for(supervisor.run("flaky", flaky), 5)
    health = supervisor.tasks["flaky"]
    assert len(runs) == 4 and health.failures == 3 and health.state == "ended"
    assert health.last_error == "RuntimeError: boom 3"
    assert supervisor.problems() == {}


async def test_a_task_failing_on_a_full_disk_retries_at_the_storage_pace() -> None:
    # Backoff would have grown to max_s (30 s) by the third failure; a full disk is
    # retried every storage_s instead, so commits resume as soon as space is back.
    supervisor = Supervisor(min_s=10, max_s=30, stable_s=60, storage_s=0.01)
    runs: list[int] = []

    async def committing() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        if len(runs) <= 4:
            try:
                raise sqlite3.OperationalError("database or disk is full")
            except sqlite3.OperationalError as exc:
                raise RuntimeError("commit failed") from exc

    await asyncio.wait_for(supervisor.run("rules", committing), 5)
    assert len(runs) == 5 and supervisor.tasks["rules"].failures == 4


def test_only_a_full_disk_counts_as_storage_full() -> None:
    assert storage_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not storage_full(OSError(errno.EACCES, "Permission denied"))
    assert not storage_full(RuntimeError("boom"))
    disk_full = type("DiskFull", (Exception,), {"sqlstate": "53100"})
    assert storage_full(disk_full("could not extend file"))


async def test_supervisor_reports_a_task_waiting_to_restart() -> None:
    supervisor = Supervisor(min_s=30, max_s=60)

    async def broken() -> None:
        raise ValueError("no")

    task = asyncio.create_task(supervisor.run("broken", broken))
    await until(lambda: supervisor.tasks.get("broken") is not None
                and supervisor.tasks["broken"].failures == 1, 5, "the failure")  # fmt: skip
    assert "broken" in supervisor.problems() and "ValueError: no" in supervisor.problems()["broken"]
    assert supervisor.status()["broken"]["state"] == "restarting"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_background_task_is_restarted_and_the_hub_keeps_ingesting(
    tmp_path: Path,
    mosquitto: ManagedProcess,
    influxdb: ManagedProcess,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0
    original = DirectorySource.refresh

    def failing_twice(self: DirectorySource, service: RulesService) -> bool:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("refresh exploded")
        return original(self, service)

    monkeypatch.setattr(DirectorySource, "refresh", failing_twice)
    rules = tmp_path / "rules.yaml"  # one rule of our own: the test is about supervision
    rules.write_text(
        "rules:\n  - {id: offline, title: Offline, severity: low, "
        "condition: {type: offline, after: 60s}, message: '{device} offline'}\n"
    )
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        database,
        # In this process: the failing refresh is patched in here.
        events=EventsSettings(
            snapshot_interval_s=0.5, sites=["yingyang"], rules=[rules], detection="thread"
        ),
        registry=RegistrySettings(refresh_s=0.1),
    )
    publisher = Publisher(mosquitto.port, "supervision-publisher")
    topic = "gw/v1/yingyang/smoke/sm-x/telemetry"
    try:
        with caplog.at_level(logging.ERROR, logger="hub.runtime"):
            async with running_hub(settings) as hub:
                await until(
                    lambda: (
                        hub.supervisor.tasks["rules-directory"].failures == 2
                        and hub.supervisor.tasks["rules-directory"].state == "running"
                    ),
                    20,
                    "two failures and a restart",
                )
                await until(lambda: calls >= 4, 10, "refreshes after the restart")
                for seq in range(5):
                    body = {"seq": seq, "smoke_obscuration": 0.0, "battery": 90.0}
                    publisher.publish(topic, json.dumps(body).encode())
                publisher.wait()
                await until(lambda: hub.stats.received >= 5, 10, "ingest carries on")
                await asyncio.sleep(0.5)  # a status write or two
                status = read_status(settings.hub.data_dir)
                assert status is not None
                assert status["tasks"]["rules-directory"]["failures"] == 2
                assert status["tasks"]["rules-directory"]["state"] == "running"
                assert status["tasks"]["rules"]["failures"] == 0
        failures = [r for r in caplog.records if "rules-directory failed" in r.getMessage()]
        assert len(failures) == 2 and all(r.exc_info for r in failures)  # with traceback
    finally:
        publisher.close()


async def test_readyz_follows_the_broker_connection(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        database,
        api=ApiSettings(enabled=True, port=free_port()),
    )
    async with running_hub(settings) as hub, httpx.AsyncClient(trust_env=False) as http:
        assert hub.api is not None
        url = hub.api.url + "/readyz"

        async def ready() -> httpx.Response:
            return await http.get(url, timeout=10)

        await until_ready(ready, 200)
        body = (await ready()).json()
        assert set(body["checks"]) == {"store", "broker", "influxdb"}

        await asyncio.to_thread(mosquitto.stop)
        await until(lambda: not hub.client.connected.is_set(), 10, "the hub to notice")
        down = await ready()
        assert down.status_code == 503
        assert down.json()["checks"]["broker"]["ok"] is False
        assert down.json()["checks"]["store"]["ok"] is True

        await asyncio.to_thread(restart, mosquitto)
        await asyncio.wait_for(hub.client.connected.wait(), 20)
        await until_ready(ready, 200)


async def until_ready(get: object, status: int, within_s: float = 20) -> None:
    assert callable(get)
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        response = await get()
        if response.status_code == status:
            return
        assert asyncio.get_running_loop().time() < deadline, response.text
        await asyncio.sleep(0.2)


async def test_readiness_asks_the_hub_about_ingestion_under_the_three_names() -> None:
    state = {"connected": True, "paused": 0.0, "full": False, "failing": 0.0}
    problems: dict[str, str] = {}
    view = IngestionView(
        connected=lambda: bool(state["connected"]),
        reading_paused_s=lambda: float(state["paused"]),
        spool_full=lambda: bool(state["full"]),
        writer_failing_s=lambda: float(state["failing"]),
        task_problems=lambda: problems,
        pause_grace_s=30,
        writer_grace_s=60,
    )

    async def fine() -> None:
        return None

    probes = with_ingestion({"store": fine, "broker": fine, "influxdb": fine}, view)

    async def reasons() -> dict[str, str]:
        out = {}
        for name, probe in probes.items():
            try:
                await probe()
            except NotReady as exc:
                out[name] = str(exc)
        return out

    assert await reasons() == {}
    state |= {"connected": False, "failing": 61.0}
    problems["rules"] = "failed 1x, restarting"
    found = await reasons()
    assert "not connected to the broker" in found["broker"]
    assert "failing for 61 s" in found["influxdb"] and "rules" in found["store"]
    state |= {"connected": True, "paused": 31.0}
    assert "has not read from the broker" in (await reasons())["broker"]
