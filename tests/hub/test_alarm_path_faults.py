"""The alarm path end to end: the hub as a real process deciding a scenario stream, against
the offline harness and against itself uninterrupted, with the hub SIGKILLed mid-stream.

A short version of `gridwatch drill alarm-path` (`evaluation.drill`): a few simulated
hours of the Yingyang site (~9,400 messages) on a private broker, published at QoS 1 as
fast as the broker takes them over one connection (so the hub receives them in the
order the harness reads them); events are compared up to the last message's time. The
harness runs without ticks between messages (`run_rules(tick_ms=None)`), its model of a
hub fed faster than real time.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from devstack.stack import ManagedProcess
from devstack.tmpfs import MountError
from evaluation.drill import (
    FaultPlan,
    Services,
    compare_decisions,
    expected_points,
    harness_decisions,
    offline_store,
    plan_faults,
    points_of,
    run_live,
)
from tests.support.drill_fixtures import (
    SHORT_SCENARIOS,
    TIMED_SCENARIOS,
    drill_options,
    explain,
    services,
    short_stream,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def drill_services(tmp_path: Path, influxdb: ManagedProcess) -> Services:
    return services(tmp_path, influxdb)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_services(
    request: pytest.FixtureRequest, tmp_path: Path, influxdb: ManagedProcess
) -> Services:
    """The drill's services with the event store on SQLite, then on PostgreSQL."""
    if request.param == "sqlite":
        return services(tmp_path, influxdb)
    return services(tmp_path, influxdb, request.getfixturevalue("postgres_url"))


def test_the_live_hub_decides_the_events_the_harness_decides(drill_services: Services) -> None:
    """The acceptance test: every scenario that fits a few hours, no fault; the same
    events (ids, rules, keys, raise and clear times, counts) from the hub and the harness."""
    stream = short_stream(SHORT_SCENARIOS)
    harness, _count, _rejected = harness_decisions(stream, offline_store(drill_services, "harness"))
    live = run_live("uninterrupted", drill_services, stream, drill_options())

    assert live.log is not None
    assert live.log.missing == 0
    assert live.log.replay_identical, "the hub's events are not a function of its log"
    assert len(harness) > 30
    found = compare_decisions(live.decisions, harness)
    assert not found, explain(found, "hub", "harness")


def test_a_hub_killed_twice_and_a_broker_restart_change_no_event(
    store_services: Services,
) -> None:
    """Two SIGKILLs of the hub at random points of its progress and one SIGKILL of the
    broker: the same events as an uninterrupted hub and as the harness, no reading lost
    or stored twice. Plain-text statuses are left out (the last test)."""
    stream = short_stream(TIMED_SCENARIOS)
    options = drill_options(kills=2, broker_restart=True)
    harness, _count, _rejected = harness_decisions(stream, offline_store(store_services, "harness"))
    calm = run_live("uninterrupted", store_services, stream, options)
    faulted = run_live("faulted", store_services, stream, options, plan_faults(options, stream))

    assert faulted.hub_starts == 3, faulted.faults
    assert faulted.log is not None
    assert faulted.log.missing == 0
    assert faulted.log.replay_identical, "the restarted hub's events are not its log's"
    found = compare_decisions(faulted.decisions, calm.decisions)
    assert not found, explain(found, "faulted", "uninterrupted")
    found = compare_decisions(faulted.decisions, harness)
    assert not found, explain(found, "faulted", "harness")
    assert not [d for d in faulted.decisions.values() if d.rule_id == "reporting_gap"]
    for measurement, want in expected_points(stream).items():
        assert points_of(faulted.points.get(measurement, {})) == want, measurement
        assert faulted.points.get(measurement) == calm.points.get(measurement), measurement


def test_on_nats_a_hub_killed_twice_and_a_broker_sigkill_change_no_event(
    drill_services: Services,
) -> None:
    """The same faults on the second broker, NATS 2.9 (MQTT 3.1.1 on JetStream): the hub
    SIGKILLed twice, NATS SIGKILLed and started again on its store. What a killed hub
    left unacknowledged NATS re-sends only after `ack_wait`; the hub's `resume_wait_s`
    connects after that, so the re-sent come first (docs/alarm-path.md)."""
    stream = short_stream(TIMED_SCENARIOS)
    options = drill_options(kills=2, broker_restart=True, broker="nats")
    harness, _count, _rejected = harness_decisions(stream, offline_store(drill_services, "harness"))
    calm = run_live("uninterrupted", drill_services, stream, options)
    faulted = run_live("faulted", drill_services, stream, options, plan_faults(options, stream))

    assert faulted.hub_starts == 3, faulted.faults
    assert any("SIGKILL broker" in fault for fault in faulted.faults), faulted.faults
    assert faulted.log is not None and calm.log is not None
    assert faulted.log.missing == 0 and faulted.log.repeated == 0
    assert faulted.log.replay_identical, "the restarted hub's events are not its log's"
    found = compare_decisions(calm.decisions, harness)
    assert not found, explain(found, "uninterrupted", "harness")
    found = compare_decisions(faulted.decisions, calm.decisions)
    assert not found, explain(found, "faulted", "uninterrupted")
    for measurement, want in expected_points(stream).items():
        assert points_of(faulted.points.get(measurement, {})) == want, measurement
        assert faulted.points.get(measurement) == calm.points.get(measurement), measurement


def test_a_status_without_device_time_is_stored_once_across_hub_restarts(
    drill_services: Services,
) -> None:
    """A device's will (`offline`, plain text) and its plain `online`, then the hub
    SIGKILLed twice once it has decided the whole stream: every restart resubscribes,
    and the broker hands on the retained `online` again."""
    stream = short_stream(["device_offline"])
    options = drill_options(kills=2)
    calm = run_live("uninterrupted", drill_services, stream, options)
    at_end = FaultPlan([stream.cutoff_ms] * 2, None, None, 0.0, random.Random(7))
    faulted = run_live("faulted", drill_services, stream, options, at_end)

    assert faulted.hub_starts == 3, faulted.faults
    assert compare_decisions(faulted.decisions, calm.decisions) == []
    assert faulted.points["device_status"] == calm.points["device_status"]


def test_a_full_spool_disk_stops_acks_not_the_hub_and_changes_no_event(
    drill_services: Services,
) -> None:
    """The spool's disk (a tmpfs) kept full mid-stream for 6 s by another writer, then
    enlarged: the hub stays up, stops acknowledging, raises and clears a health event,
    resumes within the retry interval, and decides and stores exactly what the harness
    does. (The spool frees segments meanwhile, so its log is not analysed whole.)"""
    stream = short_stream(TIMED_SCENARIOS)
    options = replace(drill_options(), disk_full_s=6.0)
    harness, _count, _rejected = harness_decisions(stream, offline_store(drill_services, "harness"))
    try:
        faulted = run_live("faulted", drill_services, stream, options, plan_faults(options, stream))
    except MountError as exc:
        pytest.skip(f"{exc}: the disk-full drill needs a tmpfs mount (root)")

    assert faulted.hub_starts == 1, faulted.faults  # never ended by the full disk
    assert any("stopped acknowledging" in f for f in faulted.faults), faulted.faults
    found = compare_decisions(faulted.decisions, harness)
    assert not found, explain(found, "faulted", "harness")
    for measurement, want in expected_points(stream).items():
        assert points_of(faulted.points.get(measurement, {})) == want, measurement
    assert faulted.health["hub_storage_failing/yingyang"][:2] == ["raise", "return"]
    print(f"disk full: recovery {faulted.recovery_s}")
    assert faulted.recovery_s["disk"] <= 3.0  # retried every second
