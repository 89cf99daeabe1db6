"""`cluster.takeover_wait_s`: a partition taken from a dead owner (its lease expired)
gets its hub only that long after the expiry, so a broker that re-sends unacknowledged
messages on an ack timeout (NATS) sends them before newer ones; a released partition
starts at once. (The end-to-end check on NATS is in test_cluster_drill.py.)"""

from __future__ import annotations

import time
from pathlib import Path

from cluster.leases import Lease
from hub.cluster import ClusterNode
from hub.settings import ClusterSettings, EventsSettings, Settings


def node(tmp_path: Path, wait_s: float) -> ClusterNode:
    settings = Settings(
        events=EventsSettings(store_url="postgresql+psycopg://nobody@127.0.0.1:1/none"),
        cluster=ClusterSettings(enabled=True, node_id="n1", partitions=2, takeover_wait_s=wait_s),
    )
    found = ClusterNode(settings)  # the lease table connects only when used
    found.leases.acquire = lambda node, partition, ttl_s: 5 + partition  # type: ignore[method-assign]
    return found


async def test_a_dead_owners_partition_waits_a_released_one_does_not(tmp_path: Path) -> None:
    taker = node(tmp_path, 6.0)
    taker.table = [Lease(0, "dead", 4, -1.0), Lease(1, None, 2, 0.0)]  # expired 1 s ago; free
    taker._table_read_at = read_at = time.monotonic()
    await taker._take(2, {0, 1})
    assert set(taker.owned) == {0, 1}
    assert abs(taker.owned[0].start_at - (read_at - 1.0 + 6.0)) < 1e-6
    assert taker.owned[1].start_at == 0.0  # released: its hub starts at once
    await taker._keep_running(taker.owned[0])
    assert taker.owned[0].process is None  # not yet
    problems = taker._hub_problems()
    assert "its hub connects in 5 s" in problems["partition p000"]
    assert "takeover_wait_s" in problems["partition p000"]


async def test_no_wait_by_default(tmp_path: Path) -> None:
    taker = node(tmp_path, 0.0)
    taker.table = [Lease(0, "dead", 4, -1.0)]
    await taker._take(1, {0})
    assert taker.owned[0].start_at == 0.0
