"""`gridwatch run --demo`: the hub plus a steady trickle of simulated device traffic.

Lets a newcomer see data flow within a minute of `stack up`; the full site simulators
with scenarios and ground truth replace this publisher when they land.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time

from hub.runtime import Hub
from hub.settings import Settings
from ingest.mqtt_client import ConnectionLost, ConnectOptions, MqttClient
from simulators.traffic import make_fleet, message

log = logging.getLogger(__name__)


async def publish_demo(
    settings: Settings, rate: float, *, devices: int = 1000, seed: int = 7
) -> None:
    """Publish QoS 1 device messages at about `rate` per second until cancelled."""
    client = MqttClient(
        settings.mqtt.host,
        settings.mqtt.port,
        ConnectOptions(
            client_id="gridwatch-demo",
            clean_start=True,
            session_expiry_s=0,
            username=settings.mqtt.username,
            password=settings.mqtt.password.get_secret_value() if settings.mqtt.password else None,
        ),
        subscriptions=[],
        on_publish=lambda *_: None,
    )
    fleet = make_fleet(devices, site="demo", seed=seed)
    rng = random.Random(seed)
    runner = asyncio.create_task(client.run(), name="demo-mqtt")
    sent = 0
    try:
        while True:
            await client.connected.wait()
            topic, payload = message(
                fleet[rng.randrange(len(fleet))], rng, time.time_ns() // 1_000_000
            )
            with contextlib.suppress(ConnectionLost):
                await client.publish(topic, payload, qos=1)
                sent += 1
                if sent % 1000 == 0:
                    log.info("demo: %d messages published", sent)
            await asyncio.sleep(1.0 / rate)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def run_with_demo(settings: Settings, rate: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    hub = Hub(settings)
    demo = asyncio.create_task(publish_demo(settings, rate), name="demo")
    try:
        await hub.run(stop)
    finally:
        demo.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demo
