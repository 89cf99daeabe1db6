"""Three hub nodes over PostgreSQL leases against one hub, on a multi-site scenario
stream through a real Mosquitto, InfluxDB and PostgreSQL, with the busiest node
SIGKILLed mid-stream and started again: the same events and points, and the dead node's
partitions owned again within 10 s (the short version of `gridwatch drill cluster`), on
Mosquitto and on NATS."""

from __future__ import annotations

from pathlib import Path

from evaluation.cluster_drill import ClusterDrillOptions, format_cluster_report, run_cluster_drill
from hub.cli.status import format_cluster_status


def test_three_nodes_decide_as_one_hub_through_a_node_kill(tmp_path: Path) -> None:
    said: list[str] = []
    options = ClusterDrillOptions(
        duration_s=3600.0, districts=2, nodes=3, partitions=4, workdir=tmp_path / "drill"
    )
    report = run_cluster_drill(options, said.append)
    text = format_cluster_report(report)
    assert report.passed, text + "\n" + "\n".join(said)
    assert len(report.single.decisions) > 20  # the scenarios raised something to compare
    assert report.cluster.decisions.keys() == report.single.decisions.keys()
    assert report.cluster.owned_again_s is not None and report.cluster.owned_again_s <= 10
    assert any("SIGKILL" in fault for fault in report.cluster.faults)
    assert any("started again" in fault for fault in report.cluster.faults)
    # What `gridwatch status` shows of each node: the partitions it owns, and the leases.
    live = [s for s in report.cluster.node_statuses.values() if s]
    assert live
    shown = format_cluster_status({**live[0], "alive": True})
    assert "cluster node node-" in shown and "leases" in shown and "p00" in shown
    assert (tmp_path / "drill" / "report.json").exists()


def test_on_nats_two_nodes_decide_as_one_hub_through_a_node_kill(tmp_path: Path) -> None:
    """The second broker (NATS 2.9, MQTT 3.1.1) in cluster mode, with the busier node
    SIGKILLed and started again: the same events and points as one hub on NATS. NATS
    re-sends what the dead node's hubs left unacknowledged only after its `ack_wait`, so
    the drill's hubs wait that long (`mqtt.resume_wait_s`) before they read a partition
    again (docs/scaling.md)."""
    said: list[str] = []
    options = ClusterDrillOptions(
        duration_s=3600.0, districts=2, nodes=2, partitions=4, broker="nats"
    )
    report = run_cluster_drill(options, said.append)
    assert report.passed, format_cluster_report(report) + "\n" + "\n".join(said)
    assert report.broker == "nats"
    assert len(report.single.decisions) > 20
    assert report.cluster.decisions.keys() == report.single.decisions.keys()
    assert report.cluster.owned_again_s is not None and report.cluster.owned_again_s <= 10
    assert any("SIGKILL" in fault for fault in report.cluster.faults)
    assert any("started again" in fault for fault in report.cluster.faults)
