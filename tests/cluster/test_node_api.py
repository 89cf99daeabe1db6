"""A cluster node serves the API (`api.enabled`): every partition's events from the
shared PostgreSQL store, and `/readyz` asks the hubs of the partitions it owns. A real
node process, Mosquitto, InfluxDB and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx

from accounts.roles import Role
from accounts.users import UserStore
from devstack.stack import ManagedProcess, free_port
from hub.cli.status import format_cluster_status
from ingest.status import read_status
from tests.cluster.nodes import partition_status, start_node, stop_node, wait_for
from tests.support.publishers import Publisher

PASSWORD = "node-api-password"


def test_a_node_serves_the_api_for_every_partition(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, postgres_db: str
) -> None:
    users = UserStore(postgres_db)
    try:
        users.migrate()
        users.add_user("op", PASSWORD, Role.operator)
    finally:
        users.close()
    data, port = tmp_path / "data", free_port()
    node, log = start_node(
        tmp_path,
        mosquitto,
        influxdb,
        postgres_db,
        "nodeapi",
        f'[api]\nhost = "127.0.0.1"\nport = {port}\n',
    )
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        wait_for(
            "yingyang's hub connected",
            lambda: partition_status(data, "yingyang").get("connected"),
            log,
        )

        def ready() -> bool:
            try:
                return api.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for("the node's /readyz says ready", ready, log)
        node_status = wait_for(
            "the node's status naming its API",
            lambda: (found := read_status(data / "nodes" / "solo") or {}).get("api") and found,
            log,
        )
        assert node_status["api"] == f"http://127.0.0.1:{port}"
        assert f"api           http://127.0.0.1:{port}" in format_cluster_status(
            {**node_status, "alive": True}
        )
        publisher = Publisher(mosquitto.port, "pub-node-api")
        body = {"ts": int(time.time() * 1000), "seq": 1, "event": "door_forced"}
        publisher.publish("gw/v1/yingyang/access/ac-gate-south/event", json.dumps(body).encode())
        publisher.wait(30)
        publisher.close()
        token = api.post(
            "/api/v1/auth/token", data={"username": "op", "password": PASSWORD}
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        def forced() -> list[dict[str, object]]:
            found = api.get("/api/v1/events", params={"site": "yingyang"}, headers=headers)
            assert found.status_code == 200, found.text
            items = found.json()
            items = items["items"] if isinstance(items, dict) else items
            return [e for e in items if e["rule_id"] == "door_forced"]

        events = wait_for("the partition hub's event listed by the node's API", forced, log)
        assert len(events) == 1 and events[0]["device"] == "ac-gate-south"
        # A partition's hub that dies is a problem /readyz names until the node restarts it.
        os.kill(int(partition_status(data, "yingyang")["pid"]), signal.SIGKILL)
        refused = wait_for(
            "/readyz naming the dead partition hub",
            lambda: (r := api.get("/readyz")).status_code == 503 and r.json(),
            log,
            timeout_s=10,
        )
        assert "its hub is not running" in json.dumps(refused)
        wait_for("the node restarted the hub and is ready again", ready, log)
    finally:
        api.close()
        code = stop_node(node)
    assert code == 0, log.read_text()[-3000:]
