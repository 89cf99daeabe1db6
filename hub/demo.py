"""`gridwatch run --demo`: the hub plus the Yingyang demo site, simulated live.

Every device of the site connects as itself (client id = device id, a last will on its
status topic) and publishes what the simulators' engine says, so a newcomer sees real
device behaviour within a minute of `stack up`.

Time: the hub refuses readings more than `hub.max_future_s` ahead of its clock, so the
demo cannot run ahead of the wall clock for long. It starts `DEMO_HISTORY_S` in the past,
replays that at `speed` x real time, and from then on keeps to real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import timedelta
from typing import TYPE_CHECKING, Final

from hub.runtime import Hub
from hub.settings import Settings
from hub.wiring import broker_options
from simulators.publish import SimProgress, Simulation, SimulationError, now_utc_second
from sites.model import demo_site_path, load_site

if TYPE_CHECKING:
    from devstack.dynsec import Login

log = logging.getLogger(__name__)

DEMO_SITE: Final = "yingyang"
DEMO_SEED: Final = 7
DEMO_HISTORY_S: Final = 3600.0
"""How far back the demo starts: an hour of data in 6-7 minutes at 10x, then live."""
LOG_EVERY: Final = 1000


def demo_simulation(settings: Settings, speed: float, login: Login | None = None) -> Simulation:
    """The demo site on the hub's broker, open-ended, never ahead of the wall clock;
    as `login` when given (a simulator login of `stack up --dynsec`), else as the hub."""
    broker = broker_options(settings)
    if login is not None:
        broker["username"], broker["password"] = login.username, login.password
    logged = 0

    def progress(report: SimProgress) -> None:
        nonlocal logged
        if report.messages - logged >= LOG_EVERY:
            logged = report.messages
            log.info("demo: %d messages published", report.messages)

    return Simulation(
        load_site(demo_site_path(DEMO_SITE)),
        **broker,
        speed=speed,
        duration_s=None,
        seed=DEMO_SEED,
        start=now_utc_second() - timedelta(seconds=DEMO_HISTORY_S),
        progress=progress,
        max_lead_s=0.0,
    )


async def _demo(hub: Hub, simulation: Simulation) -> None:
    """Start once the hub is subscribed (a first run's session would miss earlier data)."""
    await hub.client.connected.wait()
    try:
        await simulation.run()
    except (SimulationError, OSError) as exc:
        log.error("demo traffic stopped (the hub keeps running): %s", exc)


def register_demo_site(settings: Settings) -> None:
    """Put the demo site in the registry (idempotent), so the map layers and the desk know it."""
    from hub.wiring import open_registry
    from registry.site_import import import_sites

    store = open_registry(settings)
    try:
        summary = import_sites(store, [load_site(demo_site_path(DEMO_SITE))])
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
    demo = asyncio.create_task(_demo(hub, demo_simulation(settings, speed, login)), name="demo")
    try:
        await hub.run(stop)
    finally:
        # Devices say offline (retained) and disconnect before the broker goes away.
        demo.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demo
