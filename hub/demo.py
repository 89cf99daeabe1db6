"""`gridwatch run --demo`: the hub plus the demo site's devices (`simulators.demo`),
which publish on the hub's broker as the hub (or as the simulator login of
`stack up --dynsec`).

A restart on the same data dir must not replay time the hub has already seen: its rules
then run on an event clock ahead of the replayed readings, every replayed door opening
looks held open, and flood control opens an incident storm. The demo therefore starts
no earlier than `RESUME_GAP_S` after the rules' restored event time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from detection.rules_service import committed_watermark_ms
from events.store import EventStore
from hub.runtime import Hub
from hub.settings import Settings
from hub.wiring import broker_options, open_registry, store_url
from registry.site_import import import_sites
from simulators.demo import DEMO_HISTORY_S, DEMO_SITE, demo_simulation, demo_site
from simulators.publish import Simulation, SimulationError, now_utc_second

if TYPE_CHECKING:
    from devstack.dynsec import Login

log = logging.getLogger(__name__)

RESUME_GAP_S: Final = 300.0
"""After a restart, the demo starts this long after the restored event time: the rules'
snapshot (every 10 s of wall time, 100 s of a 10x replay) may trail what the log holds."""


def demo_start(watermark_ms: int, now: datetime | None = None) -> datetime:
    """`DEMO_HISTORY_S` ago, or later when the hub's rules have seen later readings."""
    now = now or now_utc_second()
    start = now - timedelta(seconds=DEMO_HISTORY_S)
    if watermark_ms:
        resume = datetime.fromtimestamp(watermark_ms / 1000, UTC) + timedelta(seconds=RESUME_GAP_S)
        start = max(start, min(now, resume.replace(microsecond=0)))
    return start


async def _demo(hub: Hub, simulation: Simulation) -> None:
    """Start once the hub is subscribed (a first run's session would miss earlier data)."""
    await hub.client.connected.wait()
    try:
        await simulation.run()
    except (SimulationError, OSError) as exc:
        log.error("demo traffic stopped (the hub keeps running): %s", exc)


def register_demo_site(settings: Settings) -> None:
    """Put the demo site in the registry (idempotent), so the map layers and the desk know it."""
    store = open_registry(settings)
    try:
        summary = import_sites(store, [demo_site()])
    finally:
        store.close()
    log.info("demo site %s in the registry: %s", DEMO_SITE, summary.counts())


async def run_with_demo(settings: Settings, speed: float, login: Login | None = None) -> None:
    """The hub until SIGINT/SIGTERM, with the demo site publishing alongside."""
    register_demo_site(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    hub = Hub(settings)
    broker = broker_options(settings)
    if login is not None:
        broker["username"], broker["password"] = login.username, login.password
    with EventStore(store_url(settings)) as store:  # Hub() has migrated it
        start = demo_start(committed_watermark_ms(store))
    if start > now_utc_second() - timedelta(seconds=DEMO_HISTORY_S):
        log.info("demo: resuming after what the hub has seen, from %s", start.isoformat())
    simulation = demo_simulation(broker, speed, start)
    demo = asyncio.create_task(_demo(hub, simulation), name="demo")
    try:
        await hub.run(stop)
    finally:
        # Devices say offline (retained) and disconnect before the broker goes away.
        demo.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demo
