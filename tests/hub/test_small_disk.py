"""The issue-14 reproduction: the spool on an 8 MiB tmpfs with InfluxDB up. The hub
used to exit on ENOSPC after ~33 k messages, having acknowledged a half-written frame.
Now what the consumers have passed is freed, the hub never stops, and every message
is stored exactly once."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import ManagedProcess
from devstack.tmpfs import MountError, SmallDisk
from hub.settings import EventsSettings, SpoolSettings
from simulators.traffic import make_fleet, message
from tests.support.hub import make_settings, running_hub, target
from tests.support.publishers import Publisher, count_points, until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    try:
        disk = SmallDisk(tmp_path / "disk", 8 << 20)
    except MountError as exc:
        pytest.skip(f"{exc}: this test needs a tmpfs mount (root)")
    with disk:
        yield disk


def _traffic(n: int) -> list[tuple[str, bytes]]:
    fleet = [d for d in make_fleet(60, site="sd", seed=5) if d.kind == "smoke"]
    rng = random.Random(17)
    start = time.time_ns() // 1_000_000 - 600_000
    return [message(fleet[i % len(fleet)], rng, start + i) for i in range(n)]


@pytest.mark.parametrize(
    ("max_bytes", "rules"),
    [(1 << 30, True), (6 << 20, False)],
    ids=["default-max-with-rules", "max-fits-disk"],
)
async def test_a_small_spool_disk_suffices_while_influxdb_is_up(
    tmp_path: Path,
    small_disk: SmallDisk,
    mosquitto: ManagedProcess,
    influxdb: ManagedProcess,
    max_bytes: int,
    rules: bool,
) -> None:
    n = 60_000  # ~20 MB of spool frames: more than twice the disk
    database = f"smalldisk{max_bytes}"
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        database,
        events=EventsSettings(enabled=rules, detection="process"),
        spool=SpoolSettings(directory=small_disk.path / "spool", max_bytes=max_bytes),
    )
    async with running_hub(settings) as hub:
        publisher = Publisher(mosquitto.port, f"pub-{database}")
        try:
            await asyncio.to_thread(publisher.publish_all, _traffic(n))
            await asyncio.to_thread(publisher.wait, 120)
        finally:
            publisher.close()
        tgt = target(influxdb, database)
        await until(lambda: count_points(tgt, "smoke") == n, 120, f"{n} points")
        if rules:  # in the detection worker, holding the log from another process
            await until(lambda: hub.detection_status().get("rules_lag_records") == 0, 60, "rules")
            assert int(hub.detection_status()["rules_evaluated"]) >= n
        assert hub.stats.storage_error is None
        print(f"max_bytes {max_bytes}: {hub.stats.storage_failures} refused writes retried")
        if max_bytes <= small_disk.size:
            assert hub.stats.storage_failures == 0  # segments of max/8 never fill it
