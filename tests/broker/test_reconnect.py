"""Reconnecting: a broker that is down is probed for, one that refuses is backed off.

The outage test stops the real Mosquitto for 7 s (long enough for a backoff to grow past
several seconds) and starts it again on the same port and data directory; the others
check, without waiting for long, that the probe rate is bounded while nothing listens
and that refusals by a broker that is up still back off exponentially.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import broker.client
from broker.client import PROBE_INTERVAL_S, ConnectOptions, MqttClient
from devstack.stack import HOST, ManagedProcess, free_port, restart
from events.dispatcher import OutboxDispatcher
from events.sinks import MqttSink
from tests.events.test_event_sinks import FakeStore, clock_ms, raised
from tests.support.services import running_mosquitto

OUTAGE_S = 7.0


def _client(port: int, client_id: str, **kwargs: object) -> MqttClient:
    """A client with the hub's defaults (reconnect backoff 0.5 s .. 30 s)."""
    return MqttClient(
        HOST,
        port,
        ConnectOptions(client_id=client_id, clean_start=True, session_expiry_s=0),
        subscriptions=[],
        on_publish=lambda *_: None,
        **kwargs,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def _running(client: MqttClient) -> AsyncIterator[MqttClient]:
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _port_accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    # A connect to a free loopback port can reach itself (simultaneous open): not Mosquitto.
    itself = writer.get_extra_info("sockname") == writer.get_extra_info("peername")
    writer.close()
    return not itself


async def _first_accept(port: int) -> float:
    """The monotonic time at which the port first accepts (polled every 20 ms)."""
    while True:
        if await _port_accepts(port):
            return time.monotonic()
        await asyncio.sleep(0.02)


async def _first_refusal(port: int) -> None:
    """Until the port refuses connections (polled every 20 ms)."""
    while True:
        if not await _port_accepts(port):
            return
        await asyncio.sleep(0.02)


async def _when(predicate: object, within_s: float) -> float:
    deadline = time.monotonic() + within_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within_s} s")
        await asyncio.sleep(0.005)
    return time.monotonic()


@pytest.mark.integration
async def test_broker_back_after_an_outage_is_reconnected_within_a_second(
    mosquitto: ManagedProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's case: a connection that had been up, then 7 s without a broker. Both the
    client and the MQTT event sink (whose outbox item backs off meanwhile) are back
    within a second of the port accepting again."""
    monkeypatch.setattr(broker.client, "STABLE_AFTER_S", 0.5)  # "up for a long time"
    client = _client(mosquitto.port, "hub-reconnect")
    publisher = _client(mosquitto.port, "hub-reconnect-events")

    async def publish(topic: str, payload: bytes) -> None:
        await publisher.publish(topic, payload, qos=1)

    store = FakeStore()
    sink = MqttSink(publish, timeout_s=1.0, connected=publisher.connected.is_set)
    dispatcher = OutboxDispatcher(store, [sink], clock_ms=clock_ms)
    async with _running(client), _running(publisher):
        await asyncio.wait_for(client.connected.wait(), 10)
        await asyncio.wait_for(publisher.connected.wait(), 10)
        serving = asyncio.create_task(dispatcher.run())
        try:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(mosquitto.kill)
            down_at = time.monotonic()
            await _when(lambda: not client.connected.is_set(), 5)
            # Counted from when the port refuses: a killed broker's socket may still
            # accept for a moment on a loaded box, and a connect then fails for real.
            await _first_refusal(mosquitto.port)
            probes_before = client.counters.probes
            failures_before = client.counters.connect_failures
            store.add("mqtt", *raised("during-outage"))
            dispatcher.wake()
            await asyncio.sleep(OUTAGE_S - (time.monotonic() - down_at))
            probes_while_down = client.counters.probes - probes_before
            failures_while_down = client.counters.connect_failures - failures_before
            accepted = asyncio.create_task(_first_accept(mosquitto.port))
            await asyncio.to_thread(restart, mosquitto)
            port_up = await accepted
            connected = await _when(client.connected.is_set, 10)
            delivered = await _when(lambda: not store.items, 10)
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
    reconnect_s, delivery_s = connected - port_up, delivered - port_up
    down_s = port_up - down_at
    retries = dispatcher.stats()["mqtt"].retries
    print(
        f"\nbroker down {down_s:.1f} s: reconnected {reconnect_s:.2f} s after the port "
        f"accepted ({probes_while_down} probes, {failures_while_down} failed connects "
        f"while down); MQTT outbox delivered {delivery_s:.2f} s after ({retries} retries)"
    )
    assert reconnect_s <= 1.5
    assert delivery_s <= 3.0
    # Probing, not connecting: one probe per 0.25-0.5 s, one failed connect at most.
    assert probes_while_down <= OUTAGE_S / (PROBE_INTERVAL_S / 2) + 2
    assert failures_while_down <= 2
    assert client.counters.reconnects == 1


async def test_probe_rate_is_bounded_while_nothing_listens() -> None:
    """A broker that stays down costs one TCP connect per 0.25-0.5 s, and real connects
    are not even tried until the port accepts."""
    client = _client(free_port(), "nobody-home")
    async with _running(client):
        await asyncio.sleep(3.0)
    probes, failures = client.counters.probes, client.counters.connect_failures
    print(f"\n3 s with nothing listening: {probes} probes, {failures} connect attempts")
    assert 3 <= probes <= 3.0 / (PROBE_INTERVAL_S / 2) + 1
    assert failures == 1
    assert not client.connected.is_set()


async def _attempt_times(
    client: MqttClient, attempts: int, monkeypatch: pytest.MonkeyPatch, within_s: float
) -> list[float]:
    """Run the client until it made `attempts` connects; the waits between them, each
    from when an attempt failed to when the next began: the client's back-off, without
    the broker's time to refuse (a password check is slower on a loaded box: a first
    refusal that took 0.34 s once made attempt-to-attempt gaps 0.44, 0.20, 0.40 s)."""
    starts: list[float] = []
    ends: list[float] = []
    connect_once = client._connect_once

    async def timed(down_s: float | None = None) -> None:
        starts.append(time.monotonic())
        try:
            await connect_once(down_s)
        finally:
            ends.append(time.monotonic())

    monkeypatch.setattr(client, "_connect_once", timed)
    async with _running(client):
        await _when(lambda: len(starts) >= attempts, within_s)
    return [start - end for end, start in zip(ends, starts[1:], strict=False)]


def _assert_doubling(gaps: list[float]) -> None:
    print(f"\nwaits between attempts: {', '.join(f'{g:.2f}' for g in gaps)} s")
    for earlier, later in itertools.pairwise(gaps):
        assert later >= 1.6 * earlier


@pytest.mark.integration
async def test_bad_credentials_still_back_off_exponentially(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker is up and refuses (CONNACK: bad user name or password): probing its
    port would say "up" at once, so the client must back off instead."""
    passwords = tmp_path / "passwd"
    await asyncio.to_thread(
        subprocess.run,
        ["mosquitto_passwd", "-b", "-c", str(passwords), "hub", "s3cret-pass"],
        check=True,
    )
    passwords.chmod(0o644)
    conf = f"allow_anonymous false\npassword_file {passwords}\n"
    # The upper end of the jitter every time: delays of exactly 0.1, 0.2, 0.4, 0.8 s.
    monkeypatch.setattr(random, "uniform", lambda _low, high: high)
    with running_mosquitto(tmp_path / "mq", extra_conf=conf) as mq:
        client = MqttClient(
            HOST,
            mq.port,
            ConnectOptions(client_id="hub-bad-login", username="hub", password="wrong"),
            subscriptions=[],
            on_publish=lambda *_: None,
            reconnect_min_s=0.1,
        )
        waits = await _attempt_times(client, 5, monkeypatch, 10)
    assert len(waits) >= 4
    _assert_doubling(waits)
    assert client.counters.probes == 0
    assert not client.connected.is_set()


async def test_a_port_that_accepts_and_hangs_up_is_backed_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TCP connects but the peer closes before CONNACK (a broker at its connection limit,
    a proxy without a backend): the port "accepts", so this is backed off, not probed."""

    async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(random, "uniform", lambda _low, high: high)
    try:
        client = _client(port, "hung-up-on", reconnect_min_s=0.1)
        waits = await _attempt_times(client, 5, monkeypatch, 10)
    finally:
        server.close()
        await server.wait_closed()
    assert len(waits) >= 4
    _assert_doubling(waits)
    assert client.counters.probes == 0
