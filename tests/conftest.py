"""Fixtures: real services on free loopback ports, and a hub running in-process.

Mosquitto and NATS (the second broker) are per test (cheap, and fault tests restart
them); InfluxDB 1.6.7 and VictoriaMetrics are per session with a fresh database per
test, and so is PostgreSQL (the event store's). Any GRIDWATCH_ variable from the
caller's shell is removed so tests see embedded defaults only.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import CLIENT_PACKAGES, ManagedProcess, ensure_installed
from hub.settings import (
    Settings,
)
from tests.support.hub import make_settings
from tests.support.nats_fixtures import running_nats
from tests.support.services import (
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


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[ManagedProcess]:
    """The second broker (NATS 2.9, MQTT 3.1.1 over JetStream); `port` is its MQTT port."""
    with running_nats(tmp_path / "nats") as proc:
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


@pytest.fixture
def settings(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> Settings:
    return make_settings(tmp_path, mosquitto.port, influxdb.port, database)


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


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; its URL."""
    name = f"gw_test_pg_{next(_db_counter)}"
    url = create_database(postgres_url, name)
    try:
        yield url
    finally:
        drop_database(postgres_url, name)


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
