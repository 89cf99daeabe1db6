"""`gridwatch run --demo`: the hub plus the demo site's devices (`simulators.demo`),
which publish on the hub's broker as the hub (or as the simulator login of
`stack up --dynsec`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

from hub.runtime import Hub
from hub.settings import Settings
from hub.wiring import broker_options, open_registry
from registry.site_import import import_sites
from simulators.demo import DEMO_SITE, demo_simulation, demo_site
from simulators.publish import Simulation, SimulationError

if TYPE_CHECKING:
    from devstack.dynsec import Login

log = logging.getLogger(__name__)


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
    demo = asyncio.create_task(_demo(hub, demo_simulation(broker, speed)), name="demo")
    try:
        await hub.run(stop)
    finally:
        # Devices say offline (retained) and disconnect before the broker goes away.
        demo.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demo
