"""Rule reload without a restart: `RulesService.reload_rules()` (what the hub API calls)
on a real SQLite event store, and SIGHUP to a real `gridwatch run` process wired to
Mosquitto and InfluxDB 1.6.7."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from detection.rules_service import RulesService, snapshot_body
from devstack.stack import ManagedProcess
from events.manager import EventManager
from events.model import State
from events.store import EventFilter, EventStore
from rules.engine import Engine
from rules.schema import RuleError, load_rules
from sensors.base import Reading
from tests.support.publishers import Publisher
from tests.support.rules import at, event

RULES = """\
rules:
  - id: tamper
    title: Tamper
    severity: high
    condition: {type: match, when: {channel: event, field: event, equals: tamper}}
    clear: {after: 1h}
    message: "tamper at {device}"
  - id: denials
    title: Denials
    severity: medium
    condition: {type: count, when: {channel: event, field: event, equals: access_denied},
                at_least: 2, within: 1h}
    message: "{count} denials"
"""
CHANGED = RULES.replace("title: Tamper", "title: Tamper (reworded)")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RulesService]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        yield RulesService(
            Engine(load_rules([rules])),
            store,
            EventManager(store, workers={}),
            rule_paths=[rules],
        )


def feed(service: RulesService, *readings: Reading) -> None:
    """One turn of the consumer over `readings`, committed."""
    service.step(readings, force=True)


def by_rule(store: EventStore) -> dict[str, State]:
    return {e.rule_id: e.state for e in store.list_events(EventFilter())}


def test_reload_keeps_unchanged_state_and_returns_changed_rules_events(
    service: RulesService,
) -> None:
    feed(service, event("access", "a1", 0, "tamper"), event("access", "a1", 1, "access_denied"))
    assert by_rule(service.store) == {"tamper": State.ACTIVE_UNACKNOWLEDGED}
    assert service.rule_paths[0].exists()
    service.rule_paths[0].write_text(CHANGED)

    result = service.reload_rules()
    assert result.to_json() == {"rules": 2, "kept": 1, "dropped": 1, "returned": 1}
    # The clear it owes is persisted with the next evaluation: the second denial, which
    # raises only because the first one's count survived the reload.
    feed(service, event("access", "a1", 2, "access_denied"))
    assert by_rule(service.store) == {
        "tamper": State.RETURNED_UNACKNOWLEDGED,
        "denials": State.ACTIVE_UNACKNOWLEDGED,
    }
    assert service.engine.rules[0].rule.title == "Tamper (reworded)"
    # The snapshot written after the reload is the pruned state.
    snapshot = service.store.get_snapshot("rules-engine")
    assert snapshot is not None
    body = snapshot_body(snapshot)
    assert body["format"] == 2
    assert set(body) == {
        "format",
        "clockless",
        "position",
        "engine",
        "unknown",
        "session_lost_ms",
        "site_clocks",
    }
    assert body["engine"]["slots"] and body["engine"]["clock_ms"] == at(2)
    assert all(not sid.startswith("tamper") for sid in body["engine"]["slots"])


def test_a_reload_alone_is_committed_at_the_next_turn(service: RulesService) -> None:
    """The clears a reload owes and its pruned state need no new reading: the next turn
    (the hub's loop runs one when idle) commits them."""
    feed(service, event("access", "a1", 0, "tamper"))
    service.rule_paths[0].write_text(CHANGED)
    service.reload_rules()
    commits = service.commits
    assert service.step([]) != []  # the owed clear, without `force`
    assert service.commits == commits + 1
    assert by_rule(service.store) == {"tamper": State.RETURNED_UNACKNOWLEDGED}


def test_reload_of_a_broken_file_keeps_the_running_rules(
    service: RulesService, caplog: pytest.LogCaptureFixture
) -> None:
    running = service.engine
    service.rule_paths[0].write_text(RULES.replace("type: count", "type: cuont"))
    with pytest.raises(RuleError, match=r"rules\.yaml"):
        service.reload_rules()
    assert service.engine is running
    service.reload_on_signal()  # the SIGHUP path logs instead of raising
    assert "rules not reloaded" in caplog.text
    assert service.engine is running and service.reloads == 0
    service.rule_paths[0].unlink()
    with pytest.raises(RuleError, match="cannot read"):
        service.reload_rules()


# --- SIGHUP to a running hub process -----------------------------------------------------

DOOR = "ac-gate-south"
TOPIC = f"gw/v1/yingyang/access/{DOOR}/event"


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.integration
def test_sighup_reloads_the_rules_of_a_running_hub(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\nclient_id = "hub-{database}"\n'
        f'[influx]\nurl = "http://127.0.0.1:{influxdb.port}"\ndatabase = "{database}"\n'
        f'[spool]\ndirectory = "{tmp_path}/spool"\n[deadletters]\ndirectory = "{tmp_path}/dead"\n'
        f'[hub]\ndata_dir = "{tmp_path}/data"\ncredential_hash_key = "reload-test-key-0123456789"\n'
        f'[events]\nrules = ["{rules}"]\nsnapshot_interval_s = 0.5\n[api]\nenabled = false\n'
    )
    log = tmp_path / "hub.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
    hub = subprocess.Popen(
        [sys.executable, "-m", "hub", "run", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    publisher = Publisher(mosquitto.port, "door-controller-reload")
    store = EventStore(f"sqlite:///{tmp_path / 'data' / 'events.db'}")
    seq = [0]

    def publish(name: str) -> None:
        seq[0] += 1
        body = {"ts": int(time.time() * 1000), "seq": seq[0], "door": "gate", "event": name}
        publisher.publish(TOPIC, json.dumps(body).encode())
        publisher.wait()

    def states() -> dict[str, State]:
        return by_rule(store) if (tmp_path / "data" / "events.db").exists() else {}

    try:
        status = tmp_path / "data" / "status.json"
        _wait(lambda: status.exists() and '"connected": true' in status.read_text(), 30, "hub")
        publish("tamper")
        publish("access_denied")
        _wait(lambda: "tamper" in states(), 20, "the tamper event")

        def denial_counted() -> bool:
            snapshot = store.get_snapshot("rules-engine")
            return snapshot is not None and any(
                sid.startswith("denials") for sid in snapshot_body(snapshot)["engine"]["slots"]
            )

        _wait(denial_counted, 20, "the first denial in the snapshot")

        rules.write_text(CHANGED)
        hub.send_signal(signal.SIGHUP)
        _wait(lambda: "rules reloaded" in log.read_text(), 20, "the reload")
        assert "rules reloaded: 2 rules, 1 condition slots kept, 1 dropped" in log.read_text()
        publish("access_denied")  # the second: the first one's count was kept
        _wait(lambda: states().get("denials") is State.ACTIVE_UNACKNOWLEDGED, 20, "denials")
        _wait(lambda: states()["tamper"] is State.RETURNED_UNACKNOWLEDGED, 20, "tamper returns")

        rules.write_text("rules: [")
        hub.send_signal(signal.SIGHUP)
        _wait(lambda: "rules not reloaded" in log.read_text(), 20, "the refused reload")
        assert hub.poll() is None  # still running, on the rules it had
        publish("tamper")
        _wait(lambda: states()["tamper"] is State.ACTIVE_UNACKNOWLEDGED, 20, "tamper again")
    finally:
        publisher.close()
        store.close()
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(30)
        except subprocess.TimeoutExpired:
            hub.kill()
    assert "Traceback" not in log.read_text()
