"""devstack.stack against the real Debian services, on free loopback ports in tmp dirs."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devstack.stack import (
    CLIENT_PACKAGES,
    LocalStack,
    ManagedProcess,
    StackError,
    ensure_installed,
    free_port,
    mosquitto_conf,
    restart,
    start_mosquitto,
)
from tests.support.services import running_influxdb, running_mosquitto, running_victoria_metrics

integration = pytest.mark.integration


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """Every TCP listener and bound UDP socket of the process."""
    conns = psutil.Process(pid).net_connections(kind="inet")
    return [
        (str(c.laddr.ip), int(c.laddr.port))
        for c in conns
        if c.laddr and (c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM)
    ]


def assert_loopback_only(proc: ManagedProcess) -> None:
    """The service listens on its port and on nothing but 127.0.0.1."""
    addrs = listening_addresses(proc.pid)
    assert ("127.0.0.1", proc.port) in addrs
    assert all(ip == "127.0.0.1" for ip, _ in addrs), addrs


def http_call(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One plain HTTP request to 127.0.0.1 (no proxy env involved)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def influx_query(port: int, q: str, db: str = "") -> object:
    """Run InfluxQL over /query and return the decoded JSON."""
    params = urllib.parse.urlencode({"q": q, "db": db})
    status, body = http_call(port, "POST", f"/query?{params}")
    assert status == 200, body
    return json.loads(body)


@pytest.fixture
def mqtt_clients() -> None:
    """The CLI clients exist (installed on fresh machines)."""
    ensure_installed(CLIENT_PACKAGES)


# ----------------------------------------------------------------- no services needed


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_ensure_installed_is_a_noop_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("must not run apt")

    monkeypatch.setattr(subprocess, "run", boom)
    ensure_installed({"/bin/sh": "dash"})


def test_ensure_installed_explains_missing_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(StackError, match="no-such-pkg") as err:
        ensure_installed({"/nonexistent/gw-binary": "no-such-pkg"})
    assert "root" in str(err.value)


def test_mosquitto_conf_keeps_deep_queue_and_appends_extra(tmp_path: Path) -> None:
    text = mosquitto_conf(tmp_path, 1234, "plugin /x.so")
    lines = text.splitlines()
    assert lines[0] == "listener 1234 127.0.0.1"
    assert "max_queued_messages 1000000" in lines
    assert "max_inflight_messages" not in text
    assert lines[-1] == "plugin /x.so"


# ----------------------------------------------------------------- real services


@integration
def test_mosquitto_starts_on_loopback_and_keeps_retained_across_restart(
    tmp_path: Path, mqtt_clients: None
) -> None:
    with running_mosquitto(tmp_path) as proc:
        assert proc.alive()
        assert_loopback_only(proc)
        port = str(proc.port)
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-q",
                "1",
                "-r",
                "-t",
                "gw/test/retained",
                "-m",
                "survives",
            ],
            check=True,
            timeout=10,
        )
        old_pid = proc.pid
        restart(proc)
        assert proc.pid != old_pid and not psutil.pid_exists(old_pid)
        assert proc.port == int(port)
        out = subprocess.run(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-C",
                "1",
                "-W",
                "10",
                "-t",
                "gw/test/retained",
            ],
            check=True,
            timeout=15,
            capture_output=True,
            text=True,
        )
        assert out.stdout.strip() == "survives"
    assert not proc.alive()
    assert "running" in proc.log.read_text()


@integration
def test_mosquitto_bad_config_fails_with_log_tail(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="no_such_option"):
        start_mosquitto(tmp_path, free_port(), extra_conf="no_such_option true")


@integration
def test_kill_and_stop_are_safe_to_repeat(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path) as proc:
        proc.kill()
        assert not proc.alive()
        proc.kill()
        proc.stop()
        assert not psutil.pid_exists(proc.pid)


@integration
def test_influxdb_loopback_only_write_and_query(tmp_path: Path) -> None:
    with running_influxdb(tmp_path) as proc:
        assert_loopback_only(proc)
        influx_query(proc.port, "CREATE DATABASE gw")
        status, body = http_call(
            proc.port, "POST", "/write?db=gw&precision=s", b"access,site=s1 opened=1i 1700000000"
        )
        assert status == 204, body
        res = influx_query(proc.port, "SELECT opened FROM access", db="gw")
        assert res == {
            "results": [
                {
                    "statement_id": 0,
                    "series": [
                        {
                            "name": "access",
                            "columns": ["time", "opened"],
                            "values": [["2023-11-14T22:13:20Z", 1]],
                        }
                    ],
                }
            ]
        }
        assert all((tmp_path / d).is_dir() for d in ("meta", "data", "wal"))


@integration
def test_victoria_metrics_loopback_only_and_accepts_v2_write(tmp_path: Path) -> None:
    with running_victoria_metrics(tmp_path) as proc:
        assert_loopback_only(proc)
        ts = time.time_ns()
        status, body = http_call(
            proc.port,
            "POST",
            "/api/v2/write?org=o&bucket=b",
            f"smoke,device=d1 level=3 {ts}".encode(),
        )
        assert status == 204, body
        http_call(proc.port, "GET", "/internal/force_flush")
        time.sleep(1.2)  # 1.79 makes fresh rows searchable about once per second
        deadline = time.monotonic() + 15
        q = urllib.parse.urlencode({"query": "smoke_level"})
        while True:
            status, body = http_call(proc.port, "GET", f"/api/v1/query?{q}")
            if b'"device":"d1"' in body or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert b'"device":"d1"' in body, body


# ----------------------------------------------------------------- LocalStack


def _listener_pid(port: int) -> int | None:
    """Pid of whatever listens on the port, if psutil can tell."""
    for c in psutil.net_connections(kind="tcp"):
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN:
            return None if c.pid is None else int(c.pid)
    return None


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A LocalStack on free ports, always brought down."""
    st = LocalStack(tmp_path / "stack", mqtt_port=free_port(), influx_port=free_port())
    try:
        yield st
    finally:
        st.down()


@integration
def test_local_stack_up_status_idempotent_down(stack: LocalStack) -> None:
    system_broker = _listener_pid(1883)
    first = stack.up()
    assert set(first) == {"mosquitto", "influxdb"}
    assert all(v.startswith("started") for v in first.values()), first
    state = json.loads(stack.state_file.read_text())["services"]
    assert {"pid", "port", "started_at", "cmdline"} <= set(state["mosquitto"])
    status = stack.status()
    assert all(s["running"] for s in status.values()), status
    pids = {name: s["pid"] for name, s in status.items()}
    assert status["influxdb"]["url"] == f"http://127.0.0.1:{stack.ports['influxdb']}"

    again = stack.up()
    assert all(v.startswith("already running") for v in again.values()), again
    assert {name: s["pid"] for name, s in stack.status().items()} == pids

    stopped = stack.down()
    assert len(stopped) == 2
    for pid in pids.values():
        assert isinstance(pid, int) and not psutil.pid_exists(pid)
    assert not stack.state_file.exists()
    assert not any(s["running"] for s in stack.status().values())
    if system_broker is not None:
        assert psutil.pid_exists(system_broker)


@integration
def test_local_stack_down_never_kills_a_reused_pid(stack: LocalStack) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        stack.root.mkdir(parents=True)
        record = {
            "name": "mosquitto",
            "pid": stranger.pid,
            "port": 1,
            "workdir": "/x",
            "log": "/x/log",
            "cmdline": ["/usr/sbin/mosquitto", "-c", "/x"],
            "create_time": psutil.Process(stranger.pid).create_time(),
            "started_at": 0.0,
        }
        stack.state_file.write_text(json.dumps({"services": {"mosquitto": record}}))
        assert stack.down() == []
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


@integration
def test_local_stack_names_the_taken_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        st = LocalStack(tmp_path / "stack", mqtt_port=port, influx_port=free_port())
        with pytest.raises(StackError, match=str(port)) as err:
            st.up()
    assert f"pid {os.getpid()}" in str(err.value)
    assert not st.state_file.exists()
