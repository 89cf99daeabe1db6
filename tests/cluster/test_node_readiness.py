"""What a node's `/readyz` says of a partition whose hub runs but waits to connect
(`mqtt.resume_wait_s`, e.g. on NATS after the partition's last owner died): that it
connects in N seconds and why, read from the hub's own status file; a status left by
another process (the partition's previous hub) does not count."""

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
