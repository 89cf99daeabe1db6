"""Hub settings and an in-process hub for tests that run the whole pipeline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from devstack.stack import ManagedProcess
from hub.runtime import Hub
from hub.settings import (
    ApiSettings,
    DeadLetterSettings,
    EventsSettings,
    HubSettings,
    InfluxSettings,
    MqttSettings,
    Settings,
    SpoolSettings,
)
from ingest.influxql import QueryTarget


def make_settings(
    tmp_path: Path, mqtt_port: int, influx_port: int, database: str, **sections: object
) -> Settings:
    """Hub settings for a test: its own spool, dead letters, data dir and client id."""
    values: dict[str, object] = {
        "mqtt": MqttSettings(
            url=f"mqtt://127.0.0.1:{mqtt_port}",
            client_id=f"hub-{database}",
            reconnect_min_s=0.1,
            reconnect_max_s=1.0,
        ),
        "influx": InfluxSettings(
            url=f"http://127.0.0.1:{influx_port}",
            database=database,
            flush_interval_s=0.2,
            retry_max_s=2.0,
        ),
        "spool": SpoolSettings(directory=tmp_path / "spool"),
        "deadletters": DeadLetterSettings(directory=tmp_path / "dead"),
        "hub": HubSettings(
            data_dir=tmp_path / "data",
            stats_interval_s=0.5,
            status_interval_s=0.2,
            credential_hash_key="test-credential-key-0123456789",
        ),
        # Ingest tests count exactly what they publish; rules/events tests opt in.
        "events": EventsSettings(enabled=False),
        # The API binds a fixed port; tests that want it serve their own app.
        "api": ApiSettings(enabled=False),
    }
    values.update(sections)
    events = values["events"]
    if isinstance(events, EventsSettings) and "detection" not in events.model_fields_set:
        # Detection on the hub's threads unless a test asks for the worker process
        # (`events.detection = "process"`, the product's default): a worker's start
        # costs every in-process hub a second Python. The worker's own tests, the
        # end-to-end ones and the drill's (hub processes, default settings) run it.
        values["events"] = events.model_copy(update={"detection": "thread"})
    return Settings.model_validate(values)


def target(influxdb: ManagedProcess, database: str) -> QueryTarget:
    return QueryTarget(url=f"http://127.0.0.1:{influxdb.port}", database=database)


@contextlib.asynccontextmanager
async def running_hub(settings: Settings) -> AsyncIterator[Hub]:
    """A hub on the test's event loop, connected before the body runs, stopped after."""
    hub = Hub(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    try:
        await asyncio.wait_for(hub.client.connected.wait(), 10)
        yield hub
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
