"""`gridwatch simulate` against a real Mosquitto: identities, wills, gateways, the CLI.

An independent paho subscriber checks what arrives, and the engine run offline with the
same parameters says what should have arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from devstack.stack import ManagedProcess, free_port
from hub.cli import main
from simulators.engine import SimMessage, epoch_ms, simulate
from simulators.publish import (
    SimSummary,
    Simulation,
    format_summary,
    gateway_of,
    parse_duration,
    status_topic,
)
from sites.generate import generate_site
from sites.model import Site, demo_site_path, load_site
from tests.support.publishers import until

START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

Message = tuple[str, bytes, bool]


class Subscriber:
    """paho on its own thread: everything under a filter, with the retain flag."""

    def __init__(self, port: int, topic_filter: str = "gw/v1/#") -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sub-{free_port()}", clean_session=True
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("subscriber not subscribed")

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def subscribed(port: int, topic_filter: str = "gw/v1/#") -> Iterator[Subscriber]:
    sub = Subscriber(port, topic_filter)
    try:
        yield sub
    finally:
        sub.close()


async def retained(port: int, expected: int, topic_filter: str = "gw/v1/#") -> list[Message]:
    """The retained messages a fresh subscriber gets (waits until `expected` arrived)."""
    with subscribed(port, topic_filter) as sub:
        await until(lambda: sub.count() >= expected, 10, f"{expected} retained messages")
        await asyncio.sleep(0.2)  # nothing more should come
        messages = sub.snapshot()
    assert all(retain for _, _, retain in messages)
    return messages


def is_offline_json(payload: bytes) -> bool:
    return payload.startswith(b"{") and json.loads(payload).get("status") == "offline"


def status_topics(site: Site) -> set[str]:
    return {status_topic(site, d.kind, d.id) for d in site.devices}


def engine_messages(site: Site, duration_s: float, seed: int) -> list[SimMessage]:
    return list(simulate(site, start=START, duration_s=duration_s, seed=seed))


def assert_summary_matches(summary: SimSummary, expected: list[SimMessage]) -> None:
    assert summary.messages == len(expected)
    assert summary.by_kind == dict(Counter(m.kind for m in expected))
    assert summary.by_channel == dict(Counter(m.channel for m in expected))


async def deliver_and_compare(
    site: Site, port: int, *, duration_s: float, seed: int, gateways: int | None
) -> SimSummary:
    """Run at max speed; a subscriber must see the engine's multiset of (topic, payload)."""
    expected = engine_messages(site, duration_s, seed)
    with subscribed(port) as sub:
        summary = await Simulation(
            site,
            broker_host="127.0.0.1",
            broker_port=port,
            speed=None,
            duration_s=duration_s,
            seed=seed,
            start=START,
            gateways=gateways,
            progress=None,
        ).run()
        total = len(expected) + len(site.devices)
        await until(lambda: sub.count() >= total, 15, f"{total} messages")
        await asyncio.sleep(0.2)
        got = sub.snapshot()
    closing = [(t, p) for t, p, _ in got if t.endswith("/status") and is_offline_json(p)]
    assert sorted(t for t, _ in closing) == sorted(status_topics(site))
    data = Counter((t, p) for t, p, _ in got if not (t.endswith("/status") and is_offline_json(p)))
    assert data == Counter((m.topic, m.payload) for m in expected)
    assert_summary_matches(summary, expected)
    assert summary.offline_statuses == len(site.devices)
    return summary


@pytest.mark.integration
async def test_per_device_run_publishes_exactly_the_engine_stream(
    mosquitto: ManagedProcess,
) -> None:
    site = load_site(demo_site_path("yingyang"))
    summary = await deliver_and_compare(site, mosquitto.port, duration_s=600, seed=3, gateways=None)
    assert summary.mode == "device"
    assert summary.connections == summary.devices == len(site.devices)
    assert summary.sim_span_s == 600
    assert summary.rate > 0
    # One connection per device, named after it.
    log = mosquitto.log.read_text()
    connected = set(re.findall(r"New client connected from \S+ as (\S+)", log))
    assert {d.id for d in site.devices} <= connected
    # Afterwards the retained status of every device is its closing offline JSON.
    after = await retained(mosquitto.port, len(site.devices))
    assert {t for t, _, _ in after} == status_topics(site)
    assert all(is_offline_json(p) for _, p, _ in after)


@pytest.mark.integration
async def test_every_device_is_retained_online_while_running(mosquitto: ManagedProcess) -> None:
    site = load_site(demo_site_path("yingyang"))
    simulation = Simulation(
        site,
        broker_host="127.0.0.1",
        broker_port=mosquitto.port,
        speed=1,
        duration_s=3600,
        seed=1,
        start=START,
    )
    task = asyncio.create_task(simulation.run())
    await asyncio.wait_for(simulation.connected.wait(), 10)
    during = await retained(mosquitto.port, len(site.devices))
    assert {t for t, _, _ in during} == status_topics(site)
    for _, payload, _ in during:
        assert json.loads(payload) == {"ts": int(START.timestamp() * 1000), "status": "online"}
    # A stopped run (cancelled, as the demo is) still leaves every device offline.
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    after = await retained(mosquitto.port, len(site.devices))
    assert {t for t, _, _ in after} == status_topics(site)
    assert all(is_offline_json(p) for _, p, _ in after)


@pytest.mark.integration
async def test_dropped_device_connection_fires_its_will(mosquitto: ManagedProcess) -> None:
    site = generate_site(cells=1, devices=6, seed=4)
    victim = site.devices[0]
    topic = status_topic(site, victim.kind, victim.id)
    simulation = Simulation(
        site,
        broker_host="127.0.0.1",
        broker_port=mosquitto.port,
        speed=60,
        duration_s=3600,
        seed=1,
        start=START,
        reconnect_min_s=0.05,
    )
    task = asyncio.create_task(simulation.run())
    try:
        await asyncio.wait_for(simulation.connected.wait(), 10)
        with subscribed(mosquitto.port, topic) as sub:
            await until(lambda: sub.count() >= 1, 5, "the retained online status")
            simulation.drop_connection(victim.id)
            await until(lambda: any(p == b"offline" for _, p, _ in sub.snapshot()), 5, "the will")
            # The device reconnects by itself and says online again (JSON, retained).
            await until(lambda: sub.snapshot()[-1][1].startswith(b'{"ts":'), 5, "online again")
            payloads = [p for _, p, _ in sub.snapshot()]
        assert payloads[0].startswith(b"{") and json.loads(payloads[0])["status"] == "online"
        assert b"offline" in payloads
        assert json.loads(payloads[-1])["status"] == "online"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.integration
async def test_gateway_mode_multiplexes_devices_over_n_connections(
    mosquitto: ManagedProcess,
) -> None:
    site = generate_site(cells=10, devices=300, seed=2)
    assert {gateway_of(d.id, 3) for d in site.devices} == {0, 1, 2}
    summary = await deliver_and_compare(site, mosquitto.port, duration_s=300, seed=5, gateways=3)
    assert summary.mode == "gateway"
    assert summary.connections == 3
    log = mosquitto.log.read_text()
    connected = set(re.findall(r"New client connected from \S+ as (\S+)", log))
    simulated = {c for c in connected if not c.startswith("sub-")}
    assert simulated == {f"gw-sim-{site.site}-{i}" for i in range(3)}


@pytest.mark.integration
async def test_demo_mode_never_runs_ahead_of_the_wall_clock(mosquitto: ManagedProcess) -> None:
    """Accelerated catch-up on the recent past, then real time: no ts from the future."""
    site = load_site(demo_site_path("yingyang"))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    with subscribed(mosquitto.port) as sub:
        simulation = Simulation(
            site,
            broker_host="127.0.0.1",
            broker_port=mosquitto.port,
            speed=600,
            duration_s=None,
            seed=1,
            start=start,
            max_lead_s=0.0,
        )
        task = asyncio.create_task(simulation.run())
        await asyncio.sleep(2.5)  # 10 simulated minutes take 1 s at 600x
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
        got = sub.snapshot()
    now_ms = time.time() * 1000
    stamps = [json.loads(p)["ts"] for _, p, _ in got if p.startswith(b"{")]
    assert len(got) > len(site.devices) * 2  # online, the caught-up past, offline
    assert max(stamps) <= now_ms
    assert min(stamps) == int(start.timestamp() * 1000)


@pytest.mark.integration
def test_cli_simulate_prints_the_summary(mosquitto: ManagedProcess) -> None:
    args = [
        "simulate",
        "--speed",
        "max",
        "--duration",
        "5m",
        "--start",
        "2026-01-05T08:00:00Z",
        "--seed",
        "1",
        "--site",
        "yingyang",
        "--broker",
        f"mqtt://127.0.0.1:{mosquitto.port}",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    site = load_site(demo_site_path("yingyang"))
    expected = list(simulate(site, start=START, duration_s=300, seed=1))
    out = result.stdout
    assert f"messages  {len(expected)} " in out
    for kind, count in Counter(m.kind for m in expected).items():
        assert re.search(rf"^  {kind}\s+{count}$", out, re.M), out
    for channel, count in Counter(m.channel for m in expected).items():
        assert re.search(rf"^  {channel}\s+{count}$", out, re.M), out
    assert "msg/s" in out


# -- hermetic ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("45", 45)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "-5m", "0s", "10x", "infh", "nan"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_cli_refuses_bad_speed_and_naive_start() -> None:
    runner = CliRunner()
    base = ["simulate", "--site", "yingyang", "--duration", "1m"]
    assert runner.invoke(main, [*base, "--speed", "fast"]).exit_code == 2
    assert runner.invoke(main, [*base, "--speed", "0"]).exit_code == 2
    assert runner.invoke(main, [*base, "--start", "2026-01-05T08:00:00"]).exit_code == 2
    assert runner.invoke(main, [*base, "--duration", "soon"]).exit_code == 2


def test_cli_simulate_with_a_replay_writes_its_labels(
    mosquitto: ManagedProcess, tmp_path: Path
) -> None:
    """The smoke dataset drives one detector (no background traffic for it); its Fire
    Alarm run becomes a `fire` label; message counts add up."""
    from simulators.labels import read_labels
    from simulators.replay import replay_smoke

    data = Path(__file__).parents[3] / "shared" / "data"
    labels_file = tmp_path / "labels.jsonl"
    args = [
        "simulate", "--speed", "max", "--duration", "3h", "--start", "2026-01-05T08:00:00Z",
        "--seed", "1", "--site", "yingyang", "--broker", f"mqtt://127.0.0.1:{mosquitto.port}",
        "--replay", "smoke", "--data-dir", str(data), "--labels", str(labels_file),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    site = load_site(demo_site_path("yingyang"))
    replay = replay_smoke(
        site, data / "smoke" / "smoke_detection_iot_first10080_allcols.csv", start=START
    )
    replayed = {m.device_id for m in replay.messages}
    end_ms = epoch_ms(START) + 3 * 3600 * 1000
    background = list(simulate(site, start=START, duration_s=3 * 3600, seed=1, exclude=replayed))
    in_window = [m for m in replay.messages if m.sim_ms < end_ms]
    assert f"messages  {len(background) + len(in_window)} " in result.stdout
    labels = read_labels(labels_file)
    assert [label.kind for label in labels] == ["fire"]
    assert labels[0].devices == tuple(sorted(replayed))


def test_cli_simulate_with_scenarios_publishes_them_and_writes_labels(
    mosquitto: ManagedProcess, tmp_path: Path
) -> None:
    from simulators.labels import read_labels
    from simulators.scenarios import run_scenarios

    names = ["door_forced", "fire", "malformed_payloads"]
    labels_file = tmp_path / "labels.jsonl"
    night = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # the window includes closed hours
    args = [
        "simulate", "--speed", "max", "--duration", "12h", "--start", "2026-01-05T00:00:00Z",
        "--seed", "3", "--site", "yingyang", "--broker", f"mqtt://127.0.0.1:{mosquitto.port}",
        "--scenario", ",".join(names), "--labels", str(labels_file),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    site = load_site(demo_site_path("yingyang"))
    messages, labels = run_scenarios(site, names, start=night, duration_s=12 * 3600, seed=3)
    assert f"messages  {len(messages)} " in result.stdout
    assert read_labels(labels_file) == labels
    assert {label.kind.value for label in labels} == set(names)


def test_cli_simulate_lists_and_refuses_unknown_scenarios() -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["simulate", "--list"])
    assert listed.exit_code == 0 and "door_forced" in listed.output
    bad = runner.invoke(
        main, ["simulate", "--site", "yingyang", "--duration", "1h", "--scenario", "meteor"]
    )
    assert bad.exit_code == 2 and "meteor" in bad.output


def test_ten_thousand_devices_over_gateways_complete_and_report_a_rate(
    mosquitto: ManagedProcess,
) -> None:
    """Scale: one process drives 10,000 devices (over 4 gateway connections)."""
    site = generate_site(100, 10_000, seed=2)
    summary = asyncio.run(
        Simulation(
            site,
            broker_host="127.0.0.1",
            broker_port=mosquitto.port,
            speed=None,
            duration_s=60,
            seed=2,
            start=START,
            gateways=4,
        ).run()
    )
    assert summary.devices == 10_000
    assert summary.connections == 4
    expected = sum(1 for _ in simulate(site, start=START, duration_s=60, seed=2))
    assert summary.messages == expected
    assert summary.rate > 0
    print(format_summary(summary))  # the rate, in the test log


def test_broker_options_follow_the_hub_settings() -> None:
    """`gridwatch simulate` and the demo publish where and as the hub listens."""
    from hub.settings import MqttSettings, Settings
    from hub.wiring import broker_options

    settings = Settings(
        mqtt=MqttSettings(
            url="mqtt://127.0.0.1:2883",
            username="sim",
            password="sim-secret-1",
            topic_prefix="/x/y/",
        )
    )
    options = broker_options(settings)
    assert options == {
        "broker_host": "127.0.0.1",
        "broker_port": 2883,
        "username": "sim",
        "password": "sim-secret-1",
        "tls": None,
        "topic_prefix": "x/y",
    }
