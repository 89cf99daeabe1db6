"""End to end, no trained model: a fresh hub (detection worker process, real Mosquitto and
InfluxDB) learns a smoke detector's baselines online from its first reading and raises an
anomaly event when the simulator's stuck-sensor scenario freezes it; the offline harness
(the service the hub builds, driven by `step`) gives the same events for the same input,
and so does a hub process SIGKILLed halfway through the freeze and started again (the
learned baselines are committed with the consumer's log position)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack.stack import ManagedProcess
from evaluation.anomaly_scenarios import decoded
from events.manager import EventManager
from events.model import SecurityEvent, Source
from events.store import EventFilter, EventStore
from hub.settings import AnomalySettings, EventsSettings, Settings, load_settings
from hub.wiring import build_anomaly, store_url
from ingest.records import Tick
from ingest.status import read_status
from sensors.base import TELEMETRY
from simulators.engine import SimMessage, simulate
from simulators.scenarios import run_scenarios
from sites.model import load_site_ref
from tests.support.hub import make_settings, running_hub
from tests.support.publishers import Publisher, until

pytestmark = pytest.mark.integration

WARMUP_S = 7200.0
"""Two hours instead of the default day: fewer messages to publish."""
SEED = 3


def _messages(now: datetime) -> tuple[list[SimMessage], str, int]:
    """One smoke detector's telemetry: 3 h of background, then the stuck-sensor scenario
    freezes it (up to 2 h, within 4 h); the device and the freeze's start. The stream
    ends with the freeze: the open event's last word is then the frozen readings' (a
    device has one open anomaly event, and each repeat's message replaces the last)."""
    site = load_site_ref("yingyang")
    start = now.replace(second=0, microsecond=0) - timedelta(hours=7, minutes=5)
    scenario, labels = run_scenarios(
        site, ["stuck_sensor"], start=start + timedelta(hours=3), duration_s=4 * 3600, seed=SEED
    )
    (label,) = labels
    device = label.devices[0]
    background = simulate(site, start=start, duration_s=3 * 3600, seed=SEED)
    mine = [
        m
        for m in [*background, *scenario]
        if m.device_id == device and m.channel == TELEMETRY and m.sim_ms <= label.end_ms
    ]
    return mine, device, label.start_ms


def _anomaly_events(store: EventStore) -> list[SecurityEvent]:
    return [e for e in store.list_events(EventFilter(), limit=1000) if e.source is Source.ANOMALY]


def _rows(events: list[SecurityEvent]) -> list[tuple[object, ...]]:
    return sorted(
        (
            e.id,
            e.rule_id,
            e.key,
            e.raised_ms,
            e.last_ms,
            e.count,
            e.active,
            e.closed,
            e.title,
            e.message,
            sorted(e.values.items()),
        )
        for e in events
    )


def _harness(settings: Settings, messages: list[SimMessage], until_ms: int) -> list[SecurityEvent]:
    """The same messages through the service the hub builds, offline: decoded as the
    intake decodes them, scored in batches by `step`, then a clock tick at `until_ms`
    (the live hub logs ticks once its input is idle)."""
    with (
        tempfile.TemporaryDirectory(prefix="gridwatch-anomaly-harness-") as tmp,
        EventStore(f"sqlite:///{Path(tmp) / 'events.db'}") as store,
    ):
        store.migrate()
        service = build_anomaly(settings, EventManager(store, workers={}), lambda: None)
        assert service is not None
        readings = decoded(messages)
        for i in range(0, len(readings), 512):
            service.step(readings[i : i + 512])
        service.step([Tick(until_ms)])
        return _anomaly_events(store)


async def test_a_fresh_hub_finds_a_stuck_sensor_without_a_model(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    messages, device, stuck_ms = _messages(datetime.now(UTC))
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        database,
        events=EventsSettings(snapshot_interval_s=0.5, publish_mqtt=False, detection="process"),
        anomaly=AnomalySettings(
            model_dir=tmp_path / "no-model", warmup_s=WARMUP_S, batch_interval_s=0.1
        ),
    )
    publisher = Publisher(mosquitto.port, f"sim-{device}")
    try:
        async with running_hub(settings) as hub:

            def readings() -> int:
                anomaly = hub.detection_status().get("anomaly") or {}
                return int(anomaly.get("readings", 0))

            for message in messages:
                publisher.publish(message.topic, message.payload)
            publisher.wait()
            await until(lambda: readings() == len(messages), 60, "every reading scored")

            def stuck_events() -> list[SecurityEvent]:
                with EventStore(store_url(settings)) as store:
                    return [
                        e
                        for e in _anomaly_events(store)
                        if e.key == device and e.values.get("reason") == "stuck"
                    ]

            await until(lambda: bool(stuck_events()), 30, "the stuck sensor's anomaly event")
            # The input is idle now: the hub's clock ticks clear what went quiet.
            await until(
                lambda: all(not e.active for e in stuck_events()), 30, "the condition cleared"
            )
            tick_ms = int(time.time() * 1000)
        with EventStore(store_url(settings)) as store:
            live = _anomaly_events(store)
    finally:
        publisher.close()

    (event,) = [e for e in live if e.values.get("reason") == "stuck"]
    assert event.rule_id == "anomaly.smoke" and event.device == device
    # 15 repeats in: the freeze is seen within the quarter hour (the event may have been
    # opened before by an unusual reading of the young baseline: then this bumps it).
    assert stuck_ms + 14 * 60_000 <= event.last_ms <= stuck_ms + 2 * 3600_000
    assert int(event.values["since_ms"]) <= stuck_ms + 16 * 60_000
    assert event.message.startswith("Readings frozen: the same values ")
    assert "usually change within" in event.message and "unusual since" in event.message
    assert float(event.values["score"]) == 1.0
    # Nothing during the warm-up: the first event comes after WARMUP_S of event time.
    first_ms = min(m.sim_ms for m in messages)
    assert all(e.raised_ms >= first_ms + WARMUP_S * 1000 for e in live)

    assert _rows(_harness(settings, messages, tick_ms)) == _rows(live)


def _wait(predicate: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        time.sleep(0.1)


def test_a_hub_killed_mid_freeze_resumes_its_baselines(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    messages, device, stuck_ms = _messages(datetime.now(UTC))
    data_dir = tmp_path / "data"
    model_dir = tmp_path / "no-model"
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\nclient_id = "hub-{database}"\n'
        "reconnect_min_s = 0.1\nreconnect_max_s = 1.0\n"
        f'[influx]\nurl = "http://127.0.0.1:{influxdb.port}"\ndatabase = "{database}"\n'
        f'[spool]\ndirectory = "{tmp_path / "spool"}"\n'
        f'[deadletters]\ndirectory = "{tmp_path / "dead"}"\n'
        f'[hub]\ndata_dir = "{data_dir}"\nstatus_interval_s = 0.2\n'
        'credential_hash_key = "test-credential-key-0123456789"\n'
        "[events]\npublish_mqtt = false\n[api]\nenabled = false\n"
        f'[anomaly]\nmodel_dir = "{model_dir}"\nwarmup_s = {WARMUP_S}\nbatch_interval_s = 0.1\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
    log = (tmp_path / "hub.log").open("ab")
    hubs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        hubs.append(
            subprocess.Popen(
                [sys.executable, "-m", "hub", "run", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )
        _wait(lambda: status().get("connected") is True, 60, "the hub connected")

    def status() -> dict[str, object]:
        try:
            found = read_status(data_dir) or {}
        except (OSError, ValueError):
            return {}
        return found if hubs and found.get("pid") == hubs[-1].pid else {}

    def scored() -> int:
        anomaly = status().get("anomaly")
        return int(anomaly.get("readings", 0)) if isinstance(anomaly, dict) else 0

    half = next(i for i, m in enumerate(messages) if m.sim_ms >= stuck_ms + 30 * 60_000)
    publisher = Publisher(mosquitto.port, f"sim-{device}")
    try:
        start()
        for message in messages[:half]:
            publisher.publish(message.topic, message.payload)
        publisher.wait()
        # Counted after the commit: the state of all `half` readings is in the store.
        _wait(lambda: scored() == half, 60, "the first half scored")
        os.killpg(hubs[-1].pid, signal.SIGKILL)  # the hub and its detection worker
        hubs[-1].wait()
        for message in messages[half:]:  # queued by the broker for the hub's session
            publisher.publish(message.topic, message.payload)
        publisher.wait()
        start()
        _wait(lambda: scored() == len(messages) - half, 60, "the rest scored")
        tick_ms = int(time.time() * 1000)
        expected = _rows(_harness(load_settings(config), messages, tick_ms))

        def live() -> list[tuple[object, ...]]:
            with EventStore(f"sqlite:///{data_dir.resolve() / 'events.db'}") as store:
                return _rows(_anomaly_events(store))

        # The restarted hub's clock ticks clear what went quiet, as the harness's tick.
        _wait(lambda: live() == expected, 30, "the harness's events")
    finally:
        publisher.close()
        for hub in hubs:
            if hub.poll() is None:
                os.killpg(hub.pid, signal.SIGTERM)
                hub.wait(60)
        log.close()
    assert any(str(row[9]).startswith("Readings frozen") for row in expected), expected
