"""A site registered while a cluster node runs moves into its partition: the node sees
it at its next registry refresh and restarts that partition's hub subscribed to it.
Until then (and for sites never registered) the catch-all partition's hub reads it, so
the broker drops nothing. A real node process, Mosquitto, InfluxDB and PostgreSQL."""

from __future__ import annotations

import random
import time
from pathlib import Path

from cluster.partitions import CATCH_ALL, partition_of
from devstack.stack import ManagedProcess
from registry.schema import SiteSpec
from registry.store import RegistryStore
from simulators.traffic import make_fleet, message
from tests.cluster.nodes import PARTITIONS, partition_status, start_node, stop_node, wait_for
from tests.support.hub import target
from tests.support.publishers import Publisher, count_points


def publish_smoke(port: int, site: str, n: int) -> None:
    """n smoke readings of one (unregistered) device of `site`, 1 ms apart."""
    device = next(d for d in make_fleet(20, site=site, seed=5) if d.kind == "smoke")
    rng = random.Random(5)
    start = time.time_ns() // 1_000_000 - 60_000
    pub = Publisher(port, f"pub-{site}")
    for i in range(n):
        topic, payload = message(device, rng, start + i)
        pub.publish(topic, payload)
    pub.wait(30)
    pub.close()


def test_a_newly_registered_site_is_read_by_its_partitions_hub(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, postgres_db: str
) -> None:
    new_site = "eastgate"
    assert partition_of(new_site, PARTITIONS) != partition_of("yingyang", PARTITIONS)
    assert partition_of("yingyang", PARTITIONS) == CATCH_ALL
    data = tmp_path / "data"
    node, log = start_node(
        tmp_path,
        mosquitto,
        influxdb,
        postgres_db,
        "refresh",
        "[api]\nenabled = false\n[registry]\nrefresh_s = 1.0\n",
    )
    try:
        wait_for(
            "yingyang's hub connected",
            lambda: partition_status(data, "yingyang").get("connected"),
            log,
        )
        assert not partition_status(data, new_site)  # an empty partition runs no hub
        # The catch-all reads everything but other partitions' sites: a site nobody has
        # registered yet is logged there, not dropped by the broker.
        assert partition_status(data, "yingyang")["subscription"] == "gw/v1/#"
        stored = target(influxdb, "refresh")
        publish_smoke(mosquitto.port, new_site, 5)
        wait_for(
            "the unregistered site's readings stored",
            lambda: count_points(stored, "smoke", f"WHERE site = '{new_site}'") == 5,
            log,
        )
        catch_all_pid = partition_status(data, "yingyang")["pid"]
        with RegistryStore(postgres_db) as registry:
            registry.migrate()
            registry.create_site(SiteSpec(id=new_site, name="East Gate", timezone="Asia/Shanghai"))
        wanted = f"gw/v1/{new_site}/#"
        status = wait_for(
            "the new site's partition hub subscribed to it",
            lambda: (
                (s := partition_status(data, new_site)).get("connected")
                and wanted in str(s.get("subscription"))
                and s
            ),
            log,
        )
        assert status["subscription"] == wanted
        assert "sites now eastgate" in log.read_text()
        # Registered: its own partition's hub reads it, and the catch-all skips it.
        wait_for(
            "the catch-all restarted without the new site",
            lambda: (
                (s := partition_status(data, "yingyang")).get("connected")
                and s.get("pid") != catch_all_pid
            ),
            log,
        )
        publish_smoke(mosquitto.port, new_site, 5)
        wait_for(
            "the registered site's readings stored by its own hub",
            lambda: partition_status(data, new_site).get("stored", 0) >= 5,
            log,
        )
        assert count_points(stored, "smoke", f"WHERE site = '{new_site}'") == 10
        wait_for(
            "the catch-all skipped them",
            lambda: partition_status(data, "yingyang").get("foreign_skipped") == 5,
            log,
        )
        # A site joining a partition whose hub runs: the hub restarts with both.
        assert partition_of("newtown", PARTITIONS) == partition_of("yingyang", PARTITIONS)
        before = partition_status(data, "yingyang")["pid"]
        with RegistryStore(postgres_db) as registry:
            registry.create_site(SiteSpec(id="newtown", name="New Town", timezone="Asia/Shanghai"))
        status = wait_for(
            "yingyang's hub restarted with both sites",
            lambda: (
                (s := partition_status(data, "yingyang")).get("connected")
                and s.get("pid") != before
                and s
            ),
            log,
        )
        assert status["subscription"] == "gw/v1/#"
        assert "sites now newtown, yingyang" in log.read_text()
        assert "exited with status" not in log.read_text()  # a restart, not a failure
    finally:
        stop_node(node)
