"""Devices and simulators may not publish under the hub's reserved topics (its presence
`gw/v1/_hub/#`, the security events `gw/events/v1/#`), even when another role of theirs
grants everything: a real Mosquitto with the dynamic-security plugin."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.dynsec import (
    RESERVED_PRIORITY,
    AdminLogin,
    BrokerAccounts,
    DynsecClient,
    device_acls,
    reserved_denies,
    simulator_acls,
)
from devstack.stack import ManagedProcess
from tests.support.dynsec_fixtures import Device, dynsec_mosquitto

NOT_AUTHORISED = 135
ACCEPTED = {0, 16}
DOOR_1 = "gw/v1/s1/access/door-1"
RESERVED = (
    "gw/v1/_hub/gridwatch-hub/status",
    "gw/v1/_hub/x",
    "gw/events/v1/s1",
    "gw/events/v1/s1/extra",
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[ManagedProcess, AdminLogin]]:
    with dynsec_mosquitto(tmp_path) as running:
        yield running


def test_reserved_denies_come_first_in_device_and_simulator_roles() -> None:
    denies = {(a.topic, a.allow, a.priority) for a in reserved_denies("acme/grid/v9")}
    assert denies == {
        ("acme/grid/v9/_hub/#", False, RESERVED_PRIORITY),
        ("acme/grid/events/v9/#", False, RESERVED_PRIORITY),
    }
    for acls in (device_acls(DOOR_1), simulator_acls(["s1"])):
        allows = [a for a in acls if a.allow]
        assert all(a.priority < RESERVED_PRIORITY for a in allows)
        assert {a.topic for a in acls if not a.allow} == {"gw/v1/_hub/#", "gw/events/v1/#"}


@pytest.mark.integration
async def test_devices_and_simulators_cannot_publish_as_the_hub(
    broker: tuple[ManagedProcess, AdminLogin],
) -> None:
    proc, admin = broker
    client = DynsecClient(admin)
    accounts = BrokerAccounts(client)
    await accounts.prepare()
    hub_login = await accounts.register_hub("gridwatch-hub")
    door1 = await accounts.register_device("door-1", DOOR_1)
    sim = await accounts.register_simulator("sim-s1", ["s1"])
    # a careless extra grant on the device's login: publish anything
    await client.run(
        "createRole",
        rolename="wide-open",
        acls=[{"acltype": "publishClientSend", "topic": "#", "allow": True, "priority": 0}],
    )
    await client.run("addClientRole", username="door-1", rolename="wide-open", priority=-1)

    hub = Device(proc.port, "hub")
    device = Device(proc.port, "door-1")
    simulator = Device(proc.port, "sim-s1")
    try:
        assert hub.connect(hub_login.username, hub_login.password) == 0
        assert hub.subscribe("gw/v1/#") == 1
        assert device.connect("door-1", door1.password) == 0
        assert simulator.connect(sim.username, sim.password) == 0

        for topic in RESERVED:
            assert device.publish(topic, b"offline") == NOT_AUTHORISED, topic
            assert simulator.publish(topic, b"offline") == NOT_AUTHORISED, topic
        # what they may publish still goes through (the wide role still works elsewhere)
        assert device.publish(f"{DOOR_1}/telemetry", b'{"seq": 1}') in ACCEPTED
        assert device.publish("gw/v1/s2/access/door-9/telemetry") in ACCEPTED
        assert simulator.publish("gw/v1/s1/smoke/sm-1/telemetry") in ACCEPTED
        # the hub keeps its own topics
        assert hub.publish("gw/v1/_hub/gridwatch-hub/status", b"online") in ACCEPTED
        assert hub.publish("gw/events/v1/s1", b"{}") in ACCEPTED
        await asyncio.sleep(0.3)
        forged = [t for t, p in hub.received if t.startswith("gw/v1/_hub/") and p == b"offline"]
        assert forged == []
    finally:
        for c in (hub, device, simulator):
            c.close()
