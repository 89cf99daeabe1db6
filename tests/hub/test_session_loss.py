"""A broker that lost the hub's session (crashed before saving it) is reported: a
warning, the `sessions_lost` counter, a `SessionLost` record in the log and a health
event; a broker restart that kept the session, or a first connection, is not."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from detection.rules_service import SESSION_LOST_RULE
from devstack.stack import ManagedProcess, restart
from evaluation.drill import read_log
from events.store import EventFilter, EventStore
from hub.runtime import Hub
from hub.settings import EventsSettings
from hub.wiring import store_url
from ingest.records import SessionLost
from tests.support.hub import make_settings, running_hub
from tests.support.publishers import until

pytestmark = [pytest.mark.integration]


def _lose_the_session(mosquitto: ManagedProcess) -> None:
    """SIGKILL the broker and start it without its saved state, as after a crash
    before its autosave."""
    mosquitto.kill()
    shutil.rmtree(mosquitto.workdir / "data", ignore_errors=True)
    (mosquitto.workdir / "data").mkdir()
    restart(mosquitto)


async def _reconnected(hub: Hub, before: int) -> None:
    await until(lambda: hub.client.counters.reconnects > before, 30, "the hub reconnected")


def _health_events(hub: Hub) -> int:
    with EventStore(store_url(hub.settings)) as store:  # written by the detection worker
        return len(store.list_events(EventFilter(rule_id=SESSION_LOST_RULE)))


async def test_a_lost_session_is_a_warning_a_log_record_and_an_event(
    tmp_path: Path,
    mosquitto: ManagedProcess,
    influxdb: ManagedProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        "sessionloss",
        events=EventsSettings(snapshot_interval_s=0.5, detection="process"),
    )
    caplog.set_level(logging.WARNING, logger="hub.runtime")
    async with running_hub(settings) as hub:
        assert hub.stats.sessions_lost == 0  # the first connection expects no session
        before = hub.client.counters.reconnects
        await asyncio.to_thread(restart, mosquitto)  # graceful: the broker saves it
        await _reconnected(hub, before)
        assert hub.client.session_present
        assert hub.stats.sessions_lost == 0

        before = hub.client.counters.reconnects
        await asyncio.to_thread(_lose_the_session, mosquitto)
        await _reconnected(hub, before)
        assert hub.stats.sessions_lost == 1
        assert "lost our session" in caplog.text
        await until(lambda: _health_events(hub) == 1, 15, "the session-lost event")

    records, _whole = read_log(settings.spool.directory)
    assert [r.hub for r in records if isinstance(r, SessionLost)] == [settings.mqtt.client_id]

    # A restarted hub remembers it held a session (data_dir): the loss still shows.
    await asyncio.to_thread(_lose_the_session, mosquitto)
    async with running_hub(settings) as hub:
        assert hub.stats.sessions_lost == 1
        assert hub.stats.fields()["sessions_lost"] == 1
