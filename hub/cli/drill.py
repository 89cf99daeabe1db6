"""`gridwatch drill alarm-path`: the live alarm path under faults, compared with itself
uninterrupted and with the offline harness (`evaluation.drill`); `gridwatch drill cluster`:
site-partitioned hubs against one hub, with a node killed (`evaluation.cluster_drill`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import click
from click.decorators import FC

from hub.cli.options import duration
from hub.supervision import setup_logging


@click.group("drill")
def drill() -> None:
    """Fault drills against real services (long-running; progress on stderr)."""


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from None
    if instant.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no offset: add Z or +08:00")
    return instant


def _broker_option(more: str = "") -> Callable[[FC], FC]:
    """`--broker`: the broker every live run of a drill uses."""
    return click.option(
        "--broker",
        type=click.Choice(["mosquitto", "nats"]),
        default="mosquitto",
        show_default=True,
        help="The broker both runs use (nats: NATS 2.9's MQTT 3.1.1, the second broker"
        + (f"; {more})." if more else ")."),
    )


@drill.command("alarm-path")
@click.option("--duration", "duration_s", callback=duration, default="40h", show_default=True)
@click.option("--seed", type=int, default=3, show_default=True, help="The stream's seed.")
@click.option("--kills", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--broker-restart/--no-broker-restart", default=True, show_default=True)
@click.option("--influx-outage-s", type=click.FloatRange(min=0), default=60.0, show_default=True)
@click.option(
    "--disk-full-s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Fill the faulted hub's spool disk (a tmpfs: root only) mid-stream for this long, "
    "then enlarge it.",
)
@click.option(
    "--store", type=click.Choice(["sqlite", "postgresql"]), default="sqlite", show_default=True
)
@click.option("--site", default="yingyang", show_default=True, help="Site file or demo site.")
@click.option(
    "--scenario", "scenario_list", default="all", show_default=True, help="NAME[,NAME...] or all."
)
@click.option(
    "--gateways",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="MQTT connections the publisher uses; 0: one per device (gridwatch simulate's "
    "default, which the broker interleaves: see the report's arrival order).",
)
@click.option(
    "--start",
    callback=_instant,
    default=None,
    help="Simulated start (default: next Monday 00:00 UTC, at least an hour ahead).",
)
@click.option(
    "--fault-seed", type=int, default=None, help="Seeds the fault times (default: --seed)."
)
@_broker_option("its restart is a SIGKILL too, recovered from its JetStream store")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Keep configs, logs, spools and stores here (default: a temp dir, removed).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def alarm_path(
    duration_s: float,
    seed: int,
    kills: int,
    broker_restart: bool,
    influx_outage_s: float,
    disk_full_s: float,
    store: str,
    site: str,
    scenario_list: str,
    gateways: int,
    start: datetime | None,
    fault_seed: int | None,
    broker: str,
    workdir: Path | None,
    as_json: bool,
) -> None:
    """Run a scenario stream through the live hub uninterrupted, again with SIGKILLed hubs,
    a broker restart, an InfluxDB outage (and, asked, a full spool disk), and through the
    harness; exit 1 unless the events and InfluxDB's points are identical. Prints the
    measured recovery times."""
    from evaluation.drill import DrillOptions, format_report, run_drill
    from hub.cli.inputs import scenario_names

    setup_logging("WARNING")
    # The drill's own publisher and observer lose their broker on purpose: not news.
    logging.getLogger("broker.client").setLevel(logging.ERROR)
    options = DrillOptions(
        duration_s=duration_s,
        seed=seed,
        kills=kills,
        broker_restart=broker_restart,
        influx_outage_s=influx_outage_s,
        disk_full_s=disk_full_s,
        store="postgresql" if store == "postgresql" else "sqlite",
        site=site,
        scenarios=tuple(scenario_names(scenario_list)),
        gateways=gateways,
        start=start,
        fault_seed=fault_seed,
        broker=broker,
        workdir=workdir,
    )
    _run_and_report(lambda: run_drill(options, _say), format_report, as_json)


@drill.command("cluster")
@click.option("--duration", "duration_s", callback=duration, default="6h", show_default=True)
@click.option("--seed", type=int, default=3, show_default=True, help="The stream's seed.")
@click.option(
    "--districts",
    type=click.IntRange(min=0, max=20),
    default=4,
    show_default=True,
    help="Generated sites besides the two demo sites.",
)
@click.option("--nodes", type=click.IntRange(min=1, max=8), default=3, show_default=True)
@click.option("--partitions", type=click.IntRange(min=1, max=64), default=8, show_default=True)
@click.option("--lease-ttl-s", type=click.FloatRange(min=1), default=3.0, show_default=True)
@click.option(
    "--kill-at",
    type=click.FloatRange(min=0, max=1),
    default=0.4,
    show_default=True,
    help="The fault strikes the node owning the most sites once this share of the stream is out.",
)
@click.option("--no-kill", is_flag=True, help="No fault: no node is killed or stalled.")
@click.option(
    "--fault",
    type=click.Choice(["kill", "stall", "leave"]),
    default="kill",
    show_default=True,
    help="kill: SIGKILL the node and its hubs. stall: SIGSTOP the node process alone "
    "(its hubs run on) past its leases, then SIGCONT: the fencing path. leave: SIGTERM the "
    "node: its partitions change hands gracefully mid-stream (and again as it rejoins).",
)
@click.option(
    "--stall-s",
    type=click.FloatRange(min=0.1),
    default=None,
    help="How long a stall lasts [default: twice --lease-ttl-s].",
)
@click.option("--rejoin/--no-rejoin", default=True, show_default=True)
@_broker_option()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cluster(
    duration_s: float,
    seed: int,
    districts: int,
    nodes: int,
    partitions: int,
    lease_ttl_s: float,
    kill_at: float,
    no_kill: bool,
    fault: str,
    stall_s: float | None,
    rejoin: bool,
    broker: str,
    workdir: Path | None,
    as_json: bool,
) -> None:
    """Site-partitioned hubs (`cluster.enabled`) against one hub on the same multi-site
    stream, with a node SIGKILLed (or stalled past its leases, or stopped so that it hands
    its partitions over) mid-stream; exits 1 unless the events and stored points are
    identical and its partitions were owned again within 10 s (docs/scaling.md)."""
    from evaluation.cluster_drill import (
        ClusterDrillOptions,
        format_cluster_report,
        run_cluster_drill,
    )

    setup_logging("WARNING")
    logging.getLogger("broker.client").setLevel(logging.ERROR)
    options = ClusterDrillOptions(
        duration_s=duration_s,
        seed=seed,
        districts=districts,
        nodes=nodes,
        partitions=partitions,
        lease_ttl_s=lease_ttl_s,
        kill_at=None if no_kill else kill_at,
        fault=fault,
        stall_s=stall_s,
        rejoin=rejoin,
        workdir=workdir,
        broker=broker,
    )
    _run_and_report(lambda: run_cluster_drill(options, _say), format_cluster_report, as_json)


class _Report(Protocol):
    @property
    def passed(self) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=_Report)


def _say(text: str) -> None:
    click.echo(text, err=True)


def _run_and_report(run: Callable[[], R], text: Callable[[R], str], as_json: bool) -> None:
    """Run a drill (progress on stderr), print its report, exit 1 unless it passed."""
    from evaluation.drill import DrillError

    try:
        report = run()
    except DrillError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True) if as_json else text(report))
    if not report.passed:
        raise SystemExit(1)
