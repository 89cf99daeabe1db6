"""Broker credentials against a real Mosquitto with the dynamic-security plugin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.dynsec import AdminLogin, BrokerAccounts, DynsecClient, DynsecError, DynsecUnavailable
from devstack.stack import ManagedProcess
from tests.support.dynsec_fixtures import Device, dynsec_mosquitto

pytestmark = pytest.mark.integration

NOT_AUTHORISED = 135
ACCEPTED = {0, 16}  # success / success, no matching subscribers
REFUSED = {134, 135}  # bad user name or password / not authorised
DOOR_1 = "gw/v1/s1/access/door-1"
DOOR_2 = "gw/v1/s1/access/door-2"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[ManagedProcess, AdminLogin]]:
    with dynsec_mosquitto(tmp_path) as running:
        yield running


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.02)
    return False


async def test_a_device_publishes_only_its_own_topics_and_reads_nothing_else(
    broker: tuple[ManagedProcess, AdminLogin],
) -> None:
    proc, admin = broker
    accounts = BrokerAccounts(DynsecClient(admin))
    await accounts.prepare()
    hub_login = await accounts.register_hub("gridwatch-hub")
    door1 = await accounts.register_device("door-1", DOOR_1)
    await accounts.register_device("door-2", DOOR_2)

    hub = Device(proc.port, "hub")
    device = Device(proc.port, "door-1")
    try:
        assert hub.connect(hub_login.username, hub_login.password) == 0
        assert hub.subscribe("gw/v1/#") == 1
        assert hub.subscribe("$share/hubs/gw/v1/#") == 1  # scale-out (mqtt.shared_group)
        assert device.connect("door-1", door1.password) == 0

        assert device.publish(f"{DOOR_1}/telemetry", b'{"seq": 1}') in ACCEPTED
        assert device.publish(f"{DOOR_2}/telemetry", b'{"seq": 666}') == NOT_AUTHORISED
        assert device.publish("gw/events/v1/s1", b"{}") == NOT_AUTHORISED
        assert device.subscribe(f"{DOOR_2}/#") == NOT_AUTHORISED
        assert device.subscribe("gw/v1/#") == NOT_AUTHORISED
        assert device.subscribe(f"{DOOR_1}/#") == 1  # its own topics (commands)

        assert wait_for(lambda: (f"{DOOR_1}/telemetry", b'{"seq": 1}') in hub.received)
        await asyncio.sleep(0.2)
        assert {t for t, _ in hub.received} == {f"{DOOR_1}/telemetry"}  # never door-2's
        # the hub publishes its status and the event streams, and cannot pose as a device
        assert hub.publish("gw/v1/_hub/gridwatch-hub/status", b"online") in ACCEPTED
        assert hub.publish("gw/events/v1/s1", b"{}") in ACCEPTED
        assert hub.publish("gw/v1/s1/events", b"{}") == NOT_AUTHORISED  # the old place
        assert hub.publish(f"{DOOR_2}/telemetry") == NOT_AUTHORISED
    finally:
        hub.close()
        device.close()


async def test_an_events_reader_reads_the_events_and_nothing_else(
    broker: tuple[ManagedProcess, AdminLogin],
) -> None:
    proc, admin = broker
    accounts = BrokerAccounts(DynsecClient(admin))
    await accounts.prepare()
    hub_login = await accounts.register_hub("gridwatch-hub")
    reader_login = await accounts.register_events_reader("desk-integration")
    door1 = await accounts.register_device("door-1", DOOR_1)

    hub = Device(proc.port, "hub")
    reader = Device(proc.port, "reader")
    device = Device(proc.port, "door-1")
    try:
        assert hub.connect(hub_login.username, hub_login.password) == 0
        assert reader.connect(reader_login.username, reader_login.password) == 0
        assert device.connect("door-1", door1.password) == 0
        assert reader.subscribe("gw/events/v1/+") == 1
        assert reader.subscribe("gw/v1/#") == NOT_AUTHORISED
        assert reader.publish("gw/events/v1/s1", b"{}") == NOT_AUTHORISED

        assert device.publish(f"{DOOR_1}/telemetry", b'{"seq": 1}') in ACCEPTED
        assert hub.publish("gw/events/v1/s1", b'{"event": 1}') in ACCEPTED
        assert wait_for(lambda: ("gw/events/v1/s1", b'{"event": 1}') in reader.received)
        await asyncio.sleep(0.2)
        assert reader.received == [("gw/events/v1/s1", b'{"event": 1}')]
    finally:
        hub.close()
        reader.close()
        device.close()


async def test_retired_device_is_refused_and_rotation_replaces_the_password(
    broker: tuple[ManagedProcess, AdminLogin],
) -> None:
    proc, admin = broker
    accounts = BrokerAccounts(DynsecClient(admin))
    await accounts.prepare()
    first = await accounts.register_device("door-1", DOOR_1)

    # the client id is bound to the device: its password alone is not enough
    impostor = Device(proc.port, "someone-else")
    assert impostor.connect("door-1", first.password) in REFUSED
    impostor.close()

    rotated = await accounts.rotate_device("door-1")
    assert rotated.password != first.password
    old = Device(proc.port, "door-1")
    assert old.connect("door-1", first.password) in REFUSED
    old.close()

    live = Device(proc.port, "door-1")
    assert live.connect("door-1", rotated.password) == 0
    assert live.publish(f"{DOOR_1}/telemetry") in ACCEPTED
    assert await accounts.device_enabled("door-1") is True

    await accounts.retire_device("door-1")
    assert await accounts.device_enabled("door-1") is False
    assert live.disconnected.wait(5), "a retired device stays connected"
    live.close()
    again = Device(proc.port, "door-1")
    assert again.connect("door-1", rotated.password) in REFUSED
    again.close()

    # registering it again (e.g. restored) re-keys and re-enables the same login
    restored = await accounts.register_device("door-1", DOOR_1)
    back = Device(proc.port, "door-1")
    assert back.connect("door-1", restored.password) == 0
    back.close()


async def test_anonymous_and_unknown_clients_are_refused(
    broker: tuple[ManagedProcess, AdminLogin],
) -> None:
    proc, admin = broker
    anonymous = Device(proc.port, "anon")
    assert anonymous.connect(None, None) in REFUSED
    anonymous.close()
    stranger = Device(proc.port, "door-9")
    assert stranger.connect("door-9", "guess") in REFUSED
    stranger.close()
    with pytest.raises(DynsecError, match="not found"):
        await DynsecClient(admin).run("disableClient", username="door-9")


async def test_simulator_role_covers_its_sites_only(
    broker: tuple[ManagedProcess, AdminLogin],
) -> None:
    proc, admin = broker
    accounts = BrokerAccounts(DynsecClient(admin))
    await accounts.prepare()
    sim = await accounts.register_simulator("sim-s1", ["s1"])
    client = Device(proc.port, "door-1")
    try:
        assert client.connect(sim.username, sim.password) == 0
        assert client.publish(f"{DOOR_1}/telemetry") in ACCEPTED
        assert client.publish("gw/v1/s2/access/door-7/telemetry") == NOT_AUTHORISED
    finally:
        client.close()


async def test_wrong_admin_login_is_reported(broker: tuple[ManagedProcess, AdminLogin]) -> None:
    _, admin = broker
    wrong = AdminLogin(admin.host, admin.port, admin.username, "not-the-password", timeout_s=1.0)
    with pytest.raises(DynsecUnavailable, match="cannot log in"):
        await DynsecClient(wrong).run("listClients")
