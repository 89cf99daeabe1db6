"""Operations: the API inside `gridwatch run`, readiness against real services, the CLI.

`gridwatch run` serves the API from the hub's TaskGroup (real Mosquitto and InfluxDB);
`gridwatch serve` runs it as its own process; `gridwatch users` manages its users.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from accounts.roles import Role
from devstack.stack import ManagedProcess, free_port
from hub.cli import main
from hub.settings import ApiSettings, EventsSettings
from tests.support.api_fixtures import PASSWORD, api_harness
from tests.support.hub import make_settings, running_hub

HTTP = httpx.Client(trust_env=False, timeout=10)


async def test_run_serves_the_api_and_readyz_sees_store_broker_and_influxdb(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    port = free_port()
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        database,
        events=EventsSettings(enabled=True, publish_mqtt=False, write_influx=False),
        api=ApiSettings(enabled=True, port=port, bootstrap_admin="root"),
    )
    async with running_hub(settings) as hub:
        assert hub.api is not None
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert set(ready.json()["checks"]) == {"store", "broker", "influxdb"}
            users = hub.api.deps.users
            assert [(u.username, u.role) for u in users.list_users()] == [("root", Role.admin)]
            users.add_user("op", PASSWORD, Role.operator)
            login = await client.post(
                "/api/v1/auth/token", data={"username": "op", "password": PASSWORD}
            )
            token = login.json()["access_token"]
            events = await client.get(
                "/api/v1/events", headers={"Authorization": f"Bearer {token}"}
            )
            assert events.status_code == 200 and events.json()["total"] == 0
            metrics = (await client.get("/metrics")).text
            assert (
                'gridwatch_api_requests_total{method="GET",route="/readyz",status="200"} 1.0'
                in metrics
            )
    async with httpx.AsyncClient(trust_env=False) as after:
        try:
            await after.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        except httpx.ConnectError:
            pass  # stopped with the hub
        else:
            raise AssertionError("the API outlived the hub")


def test_readyz_names_what_is_unreachable(tmp_path: Path) -> None:
    from api.probes import default_probes

    dead = free_port()  # nothing listens here
    with api_harness(f"sqlite:///{tmp_path / 'events.db'}") as api:
        api.deps.probes = default_probes(
            api.deps.users, "127.0.0.1", dead, f"http://127.0.0.1:{dead}"
        )
        ready = api.client.get("/readyz")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["store"] == {"ok": True, "detail": ""}
    assert not checks["broker"]["ok"] and "Connect" in checks["broker"]["detail"]
    assert not checks["influxdb"]["ok"]


def test_users_cli_and_gridwatch_serve(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    port = free_port()
    config.write_text(
        f'[hub]\ndata_dir = "{tmp_path}/data"\n'
        f'[events]\nstore_url = "sqlite:///{tmp_path}/events.db"\n'
        f"[api]\nport = {port}\n"
    )
    runner = CliRunner()
    added = runner.invoke(
        main,
        [
            "users",
            "add",
            "alice",
            "--role",
            "operator",
            "--password-stdin",
            "--config",
            str(config),
        ],
        input=PASSWORD + "\n",
    )
    assert added.exit_code == 0, added.output
    short = runner.invoke(
        main,
        ["users", "add", "bob", "--role", "admin", "--password-stdin", "--config", str(config)],
        input="short\n",
    )
    assert short.exit_code != 0 and "at least 10 characters" in short.output
    key = runner.invoke(
        main, ["users", "key-add", "grafana", "--role", "operator", "--config", str(config)]
    )
    assert key.exit_code == 0, key.output
    plaintext = key.stdout.strip().splitlines()[-1]
    assert plaintext.startswith("gwk_")
    listed = runner.invoke(main, ["users", "list", "--config", str(config)])
    assert (
        "alice" in listed.output and "grafana" in listed.output and plaintext not in listed.output
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if HTTP.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.ConnectError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "gridwatch serve did not come up"
                time.sleep(0.1)
        login = HTTP.post(
            f"{base}/api/v1/auth/token", data={"username": "alice", "password": PASSWORD}
        )
        assert login.status_code == 200 and login.json()["role"] == "operator"
        me = HTTP.get(f"{base}/api/v1/auth/me", headers={"X-API-Key": plaintext})
        assert me.json() == {"subject": "grafana", "role": "operator", "via": "key"}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
