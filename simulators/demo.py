"""The demo site's traffic for `gridwatch run --demo`: the Yingyang site, simulated live.

Every device of the site connects as itself (client id = device id, a last will on its
status topic) and publishes what the simulators' engine says, so a newcomer sees real
device behaviour within a minute of `stack up`.

Time: the hub refuses readings more than `hub.max_future_s` ahead of its clock, so the
demo cannot run ahead of the wall clock for long. It starts `DEMO_HISTORY_S` in the past,
replays that at `speed` x real time, and from then on keeps to real time.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Final

from simulators.publish import BrokerOptions, SimProgress, Simulation, now_utc_second
from sites.model import Site, demo_site_path, load_site

log = logging.getLogger(__name__)

DEMO_SITE: Final = "yingyang"
DEMO_SEED: Final = 7
DEMO_HISTORY_S: Final = 3600.0
"""How far back the demo starts: an hour of data in 6-7 minutes at 10x, then live."""
LOG_EVERY: Final = 1000


def demo_site() -> Site:
    return load_site(demo_site_path(DEMO_SITE))


def demo_simulation(broker: BrokerOptions, speed: float) -> Simulation:
    """The demo site on `broker`, open-ended, never ahead of the wall clock."""
    logged = 0

    def progress(report: SimProgress) -> None:
        nonlocal logged
        if report.messages - logged >= LOG_EVERY:
            logged = report.messages
            log.info("demo: %d messages published", report.messages)

    return Simulation(
        demo_site(),
        **broker,
        speed=speed,
        duration_s=None,
        seed=DEMO_SEED,
        start=now_utc_second() - timedelta(seconds=DEMO_HISTORY_S),
        progress=progress,
        max_lead_s=0.0,
    )
