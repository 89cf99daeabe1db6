"""`gridwatch stack up --dynsec` against a real Mosquitto with the dynamic-security
plugin (and a real InfluxDB 1.6.7): logins provisioned, anonymous clients refused, and
`gridwatch run --demo` storing the demo's readings through the authenticated broker."""

from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.dynsec import (
    HUB_USERNAME,
    SIMULATOR_USERNAME,
    dynsec_up,
    logins_path,
    read_logins,
    uses_dynsec,
)
from devstack.stack import LocalStack, StackError, free_port, http_status
from hub.settings import load_settings
from hub.wiring import stack_logins
from tests.support.dynsec_fixtures import Device

integration = pytest.mark.integration
GRIDWATCH = [sys.executable, "-m", "hub"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """Hub settings whose data_dir holds the stack (where `run` looks for logins)."""
    mqtt_port, influx_port = free_port(), free_port()
    path = tmp_path / "gridwatch.toml"
    path.write_text(
        f"""\
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
[influx]
url = "http://127.0.0.1:{influx_port}"
flush_interval_s = 0.2
[hub]
data_dir = "{tmp_path / "data"}"
status_interval_s = 0.2
[spool]
directory = "{tmp_path / "spool"}"
[deadletters]
directory = "{tmp_path / "dead"}"
[api]
enabled = false
"""
    )
    return path


@pytest.fixture
def stack(config: Path) -> Iterator[LocalStack]:
    settings = load_settings(config)
    influx_port = urllib.parse.urlsplit(settings.influx.url).port
    assert influx_port is not None
    st = LocalStack(settings.hub.data_dir / "stack", settings.mqtt.port, influx_port)
    try:
        yield st
    finally:
        st.down()


@integration
def test_dynsec_stack_provisions_logins_and_refuses_anonymous(
    stack: LocalStack, config: Path
) -> None:
    report = dynsec_up(stack)
    assert report["mosquitto"].startswith("started") and "logins" in report
    assert uses_dynsec(stack)
    path = logins_path(stack.root)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    logins = read_logins(path)
    assert (logins.hub.username, logins.simulator.username) == (HUB_USERNAME, SIMULATOR_USERNAME)
    port = stack.ports["mosquitto"]

    anonymous = Device(port, "anon")
    try:
        assert anonymous.connect(None, None) != 0  # refused: no anonymous clients
    finally:
        anonymous.close()
    simulator = Device(port, "sm-kg-kitchen")
    hub = Device(port, "hub-probe")
    try:
        assert simulator.connect(logins.simulator.username, logins.simulator.password) == 0
        assert simulator.publish("gw/v1/yingyang/smoke/sm-kg-kitchen/telemetry") in (0, 16)
        assert simulator.publish("gw/v1/elsewhere/smoke/x/telemetry") == 135
        assert simulator.subscribe("gw/v1/#") == 135
        assert hub.connect(logins.hub.username, logins.hub.password) == 0
        assert hub.subscribe("gw/v1/#") == 1
        assert hub.publish("gw/v1/yingyang/smoke/x/telemetry") == 135
        assert hub.publish("gw/events/v1/yingyang") in (0, 16)  # the security events
    finally:
        simulator.close()
        hub.close()

    # `gridwatch run` fills the logins in, leaving settings that name their own alone.
    settings, demo = stack_logins(load_settings(config))
    assert settings.mqtt.username == HUB_USERNAME and settings.registry.dynsec
    assert demo is not None and demo.username == SIMULATOR_USERNAME

    # Again: already running, new passwords; the old hub password stops working.
    again = dynsec_up(stack)
    assert again["mosquitto"].startswith("already running")
    fresh = read_logins(path)
    assert fresh.admin == logins.admin and fresh.hub.password != logins.hub.password
    stale = Device(port, "stale")
    try:
        assert stale.connect(logins.hub.username, logins.hub.password) != 0
    finally:
        stale.close()


@integration
def test_plain_stack_is_untouched_and_refuses_a_dynsec_upgrade(
    stack: LocalStack, config: Path
) -> None:
    stack.up()
    assert not uses_dynsec(stack)
    assert "plugin" not in (stack.root / "mosquitto" / "mosquitto.conf").read_text()
    settings = load_settings(config)
    assert stack_logins(settings) == (settings, None)  # nothing to pick up
    with pytest.raises(StackError, match="without dynamic security"):
        dynsec_up(stack)


def _influx_count(port: int, database: str = "gridwatch") -> int:
    """Readings the hub stored (0 while the database does not exist yet)."""
    q = urllib.parse.urlencode({"db": database, "q": "SELECT count(seq) FROM smoke,access"})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", f"/query?{q}")
        body = conn.getresponse().read()
    finally:
        conn.close()
    try:
        series = json.loads(body)["results"][0].get("series", [])
    except (ValueError, KeyError, IndexError):
        return 0
    return sum(int(s["values"][0][1]) for s in series)


@integration
def test_cli_stack_up_dynsec_then_run_demo_stores_readings(stack: LocalStack, config: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.run(
        [*GRIDWATCH, "stack", "up", "--dynsec", "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert "logins:" in up.stdout
    # the fixture's stack object and the CLI's share root and ports
    assert stack.status()["mosquitto"]["running"]
    log = stack.root.parent / "run.log"
    with log.open("wb") as out:
        hub = subprocess.Popen(
            [*GRIDWATCH, "run", "--demo", "--demo-speed", "60", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        stored = 0
        while time.monotonic() < deadline and hub.poll() is None:
            stored = _influx_count(stack.ports["influxdb"])
            if stored >= 200:
                break
            time.sleep(1)
        text = log.read_text(errors="replace")
        assert stored >= 200, text[-3000:]
        assert "using the local stack's broker logins" in text
        assert "not authorised" not in text.lower()
    finally:
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(30)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()
    assert http_status(stack.ports["influxdb"], "/ping") == 204
