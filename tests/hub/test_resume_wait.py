"""`mqtt.resume_wait_s`: a hub whose previous run was seen moments ago (a crash, a fast
restart, a partition taken over from a dead node) connects only once the wait has run out
since then, so that a broker which re-sends unacknowledged messages on an ack timeout
(NATS) has queued them before newer ones; `/readyz` and the status file say why it is
not connected yet. A first start, or a run long gone, connects at once."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from devstack.stack import ManagedProcess, free_port
from hub.runtime import Hub
from hub.settings import ApiSettings, MqttSettings, Settings
from ingest.status import STATUS_FILE, read_status, write_status
from tests.support.hub import make_settings

pytestmark = [pytest.mark.integration]

WAIT_S = 2.0


def _settings(tmp_path: Path, mosquitto: ManagedProcess, influx: ManagedProcess) -> Settings:
    base = make_settings(tmp_path, mosquitto.port, influx.port, "resumewait")
    mqtt = MqttSettings(**{**base.mqtt.model_dump(), "resume_wait_s": WAIT_S})
    return base.model_copy(
        update={"mqtt": mqtt, "api": ApiSettings(enabled=True, port=free_port())}
    )


async def _connected_after(hub: Hub, stop: asyncio.Event) -> tuple[float, asyncio.Task[None]]:
    started = time.monotonic()
    task = asyncio.create_task(hub.run(stop))
    await asyncio.wait_for(hub.client.connected.wait(), WAIT_S + 10)
    return time.monotonic() - started, task


async def test_after_a_crash_the_hub_connects_once_the_wait_has_run_out(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess
) -> None:
    settings = _settings(tmp_path, mosquitto, influxdb)
    hub = Hub(settings)
    stop = asyncio.Event()
    # What a SIGKILLed run leaves: a status that says running, written just now. (The
    # wait counts from then: a slow start of the next run is part of it.)
    write_status(settings.hub.data_dir, {"running": True, "pid": 2**22 + 1})
    started = time.monotonic()
    task = asyncio.create_task(hub.run(stop))
    try:
        assert hub.api is not None
        async with httpx.AsyncClient(trust_env=False) as http:
            while True:  # the API is up at once; the session is not
                try:
                    ready = await http.get(hub.api.url + "/readyz", timeout=5)
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        assert ready.status_code == 503
        reason = ready.json()["checks"]["broker"]["detail"]
        assert "connects in" in reason and "mqtt.resume_wait_s" in reason, reason
        await asyncio.sleep(0.5)
        status = read_status(settings.hub.data_dir)
        assert status is not None and 0 < status["connect_in_s"] <= WAIT_S
        assert not hub.client.connected.is_set()
        await asyncio.wait_for(hub.client.connected.wait(), WAIT_S + 10)
        waited = time.monotonic() - started
        assert WAIT_S - 0.3 <= waited <= WAIT_S + 5, waited
        await asyncio.sleep(0.5)
        status = read_status(settings.hub.data_dir)
        assert status is not None and "connect_in_s" not in status and status["connected"]
        # A clean stop is seen too: the next run waits out what is left of the wait
        # (built now, so that its start-up is not part of what it waits).
        after = Hub(settings.model_copy(update={"api": ApiSettings(enabled=False)}))
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    stopped_at = time.time()
    hub, stop = after, asyncio.Event()
    left = WAIT_S - (time.time() - stopped_at)
    waited, task = await _connected_after(hub, stop)
    try:
        assert left > 1.5 and left - 0.3 <= waited <= WAIT_S + 5, (left, waited)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_a_first_start_or_a_run_long_gone_connects_at_once(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess
) -> None:
    settings = _settings(tmp_path, mosquitto, influxdb)
    settings = settings.model_copy(
        update={"mqtt": settings.mqtt.model_copy(update={"resume_wait_s": 60.0})}
    )
    for previous in (None, time.time() - 120.0):
        if previous is not None:  # a run last seen two minutes ago
            body = {"running": True, "pid": 2**22 + 1, "written_at": previous}
            (settings.hub.data_dir / STATUS_FILE).write_text(json.dumps(body))
        hub = Hub(settings)
        stop = asyncio.Event()
        waited, task = await _connected_after(hub, stop)
        try:
            assert waited < 5, (previous, waited)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
