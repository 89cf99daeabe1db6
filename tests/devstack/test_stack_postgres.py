"""`gridwatch stack up --postgres`: the local stack's PostgreSQL (a cluster's shared store
on one box) starts on loopback, keeps its data across a restart, and stops with the stack."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg

from devstack.stack import LocalStack, free_port


def test_the_stack_runs_a_durable_postgres_with_a_gridwatch_database() -> None:
    root = Path("/tmp") / f"gw-stack-pg-{free_port()}"  # reachable by the postgres user
    stack = LocalStack(root, free_port(), free_port(), postgres_port=free_port())
    try:
        started = stack.up()
        assert "postgres" in started and "started" in started["postgres"]
        url = stack.status()["postgres"]["url"]
        assert isinstance(url, str) and url.endswith("/gridwatch")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (7)")
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        # As `gridwatch stack down` does it: another process, from the state file.
        again = LocalStack(root, stack.ports["mosquitto"], stack.ports["influxdb"])
        assert any("postgres" in s for s in again.down())
        assert stack.up()["postgres"].startswith("started")  # same data directory
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone() == (7,)
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)
