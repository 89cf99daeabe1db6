"""A node's view of its partitions' hubs: what its `/readyz` says of a hub that runs but
waits to connect (`mqtt.resume_wait_s`), read from the hub's own status file (a status left
by another process does not count); and its lease keeper, which stops a hub whose lease
another node took, but not one it handed over itself."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from hub.cluster import ClusterNode, Owned, partition_dir
from hub.settings import ClusterSettings, EventsSettings, HubSettings, Settings
from ingest.status import write_status


async def test_a_waiting_hub_is_named_with_its_wait(tmp_path: Path) -> None:
    settings = Settings(
        events=EventsSettings(store_url="postgresql+psycopg://nobody@127.0.0.1:1/none"),
        hub=HubSettings(data_dir=tmp_path / "data"),
        cluster=ClusterSettings(enabled=True, node_id="n1", partitions=2),
    )
    node = ClusterNode(settings)  # the lease table connects only when used
    hub = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)")
    try:
        node.owned[0] = Owned(0, 5, ("yingyang",), ())
        node.owned[0].process = hub
        write_status(partition_dir(settings, 0), {"running": True, "pid": hub.pid + 1})
        assert node._hub_problems() == {}  # the previous hub's status: not this one's
        write_status(
            partition_dir(settings, 0), {"running": True, "pid": hub.pid, "connect_in_s": 4.2}
        )
        problem = node._hub_problems()["partition p000"]
        assert "its hub connects in 4 s" in problem and "mqtt.resume_wait_s" in problem
        write_status(partition_dir(settings, 0), {"running": True, "pid": hub.pid})
        assert node._hub_problems() == {}  # connected: the node's other checks apply
    finally:
        hub.kill()
        await hub.wait()
    assert "its hub is not running" in node._hub_problems()["partition p000"]


def test_a_refused_renewal_stops_the_hub_unless_the_partition_was_handed_over_meanwhile(
    tmp_path: Path,
) -> None:
    """The lease keeper's renewals run while hand-overs finish: a renewal refused because
    our own hand-over released the lease meanwhile is no loss (it once raised KeyError
    and ended the node); one refused for a partition still ours stops its hub."""
    settings = Settings(
        events=EventsSettings(store_url="postgresql+psycopg://nobody@127.0.0.1:1/none"),
        hub=HubSettings(data_dir=tmp_path / "data"),
        cluster=ClusterSettings(enabled=True, node_id="n1", partitions=3),
    )
    node = ClusterNode(settings)
    killed: list[int] = []
    node._kill = lambda owned: killed.append(owned.partition)  # type: ignore[method-assign]
    released, kept, leaving = (
        Owned(1, 4, ("a",), None),
        Owned(2, 5, ("b",), None),
        Owned(0, 3, (), ()),
    )
    node.owned[2] = kept
    node.handing_over[0] = leaving
    node._lost(released)  # handed over and released before the refusal came back
    assert killed == [] and set(node.owned) == {2} and set(node.handing_over) == {0}
    node.owned[1] = Owned(1, 6, ("a",), None)  # taken again since, with a new token
    node._lost(released)
    assert killed == [] and set(node.owned) == {1, 2}
    node._lost(kept)
    node._lost(leaving)
    assert killed == [2, 0] and set(node.owned) == {1} and node.handing_over == {}
