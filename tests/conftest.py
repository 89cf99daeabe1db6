"""Fixtures: real services on free loopback ports, and a hub running in-process.

Mosquitto is per test (cheap, and fault tests restart it); InfluxDB 1.6.7 and
VictoriaMetrics are per session with a fresh database per test, and so is PostgreSQL
(the event store's). Any GRIDWATCH_ variable from the caller's shell is removed so tests
see embedded defaults only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

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
from hub.stack import CLIENT_PACKAGES, ManagedProcess, ensure_installed
from ingest.influxql import QueryTarget
from tests.services import (
    create_database,
    drop_database,
    running_influxdb,
    running_mosquitto,
    running_postgres,
    running_victoria_metrics,
)

_db_counter = itertools.count(1)


@pytest.fixture(autouse=True)
def _no_gridwatch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GRIDWATCH_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session", autouse=True)
def _client_tools() -> None:
    ensure_installed(CLIENT_PACKAGES)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[ManagedProcess]:
    with running_mosquitto(tmp_path / "mosquitto") as proc:
        yield proc


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    with running_influxdb(tmp_path_factory.mktemp("influxdb")) as proc:
        yield proc


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    with running_victoria_metrics(tmp_path_factory.mktemp("victoria")) as proc:
        yield proc


@pytest.fixture
def database() -> str:
    return f"gw_test_{next(_db_counter)}"


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
    return Settings.model_validate(values)


@pytest.fixture
def settings(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> Settings:
    return make_settings(tmp_path, mosquitto.port, influxdb.port, database)


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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL server for the session; its admin database's URL.

    Its directory is made under the system temp dir, not pytest's: the server runs as
    the `postgres` user when we are root, and pytest's tmp dirs are closed to others.
    """
    with (
        tempfile.TemporaryDirectory(prefix="gridwatch-pg-") as workdir,
        running_postgres(Path(workdir)) as url,
    ):
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def event_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty event database: a SQLite file, or a fresh PostgreSQL database per test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    admin: str = request.getfixturevalue("postgres_url")
    name = f"gw_events_{next(_db_counter)}"
    url = create_database(admin, name)
    try:
        yield url
    finally:
        drop_database(admin, name)
