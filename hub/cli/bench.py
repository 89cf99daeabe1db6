"""`gridwatch bench ingest|detection|anomaly|broker|cluster`: benchmarks (separate commands, not
timed tests)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hub.cli.options import BENCH_DETECTOR_NAMES


@click.group("bench")
def bench() -> None:
    """Benchmarks (separate commands, not timed tests)."""


@bench.command("ingest")
@click.option("--messages", "n_messages", default=100_000, show_default=True)
@click.option("--devices", default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--rate", type=float, default=None, help="Pace the live publisher (msg/s); default flat out."
)
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--ingest-only",
    is_flag=True,
    help="Measure a part: the hub with events off (no rules, no events, no alarm probes). "
    "Default: the hub's default pipeline.",
)
@click.option(
    "--probe-interval-ms",
    type=click.FloatRange(min=10.0),
    default=100.0,
    show_default=True,
    help="One alarm probe (door_forced) every this many ms, live and in the backlog.",
)
@click.option(
    "--costs/--no-costs",
    default=True,
    show_default=True,
    help="Also measure the per-stage costs in-process (a part; ~10 s).",
)
@click.option(
    "--detection",
    type=click.Choice(["process", "thread"]),
    default=None,
    help="Override events.detection, to compare (NOT the default configuration; the "
    "output says so). Default: the hub's own default.",
)
@click.option(
    "--broker-autosave-changes",
    type=click.IntRange(min=1),
    default=None,
    help="Run the bench's Mosquitto saving its database every N changes instead of the "
    "local stack's setting, to see what the saves cost (NOT the default configuration: "
    "no target judged; docs/broker-durability.md).",
)
def ingest(
    n_messages: int,
    devices: int,
    as_json: bool,
    rate: float | None,
    workdir: Path | None,
    ingest_only: bool,
    probe_interval_ms: float,
    costs: bool,
    detection: str | None,
    broker_autosave_changes: int | None,
) -> None:
    """Publish N realistic messages and measure the hub's default pipeline, live and
    backlog: throughput against the broker's limit, and alarm latency with probes."""
    from evaluation.ingest_bench import format_result, run_ingest_bench

    result = run_ingest_bench(
        n_messages,
        devices,
        workdir,
        progress=not as_json,
        rate=rate,
        ingest_only=ingest_only,
        probe_interval_ms=probe_interval_ms,
        costs=costs,
        detection=detection,
        broker_autosave_changes=broker_autosave_changes,
    )
    click.echo(json.dumps(result, sort_keys=True) if as_json else format_result(result))


@bench.command("detection")
@click.option("--messages", "n_messages", default=100_000, show_default=True)
@click.option("--devices", default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def detection(n_messages: int, devices: int, as_json: bool) -> None:
    """A PART: the detection worker's CPU per log record, by stage (rules, event store,
    outbox, sinks), replaying the ingest benchmark's stream from a prepared log."""
    from evaluation.detection_bench import detection_bench_json, format_detection_bench
    from hub.detection_bench import run_detection_bench

    def progress(text: str) -> None:
        if not as_json:
            click.echo(text, err=True)

    result = run_detection_bench(n_messages, devices, progress=progress)
    click.echo(detection_bench_json(result) if as_json else format_detection_bench(result))


@bench.command("anomaly")
@click.option(
    "--train-days",
    default=2.0,
    show_default=True,
    help="Days of background: a trained detector's history, or `online`'s warm-up days.",
)
@click.option("--hours", default=6.0, show_default=True, help="Simulated hours to score.")
@click.option(
    "--detector",
    type=click.Choice(BENCH_DETECTOR_NAMES),
    default="median_mad",
    show_default=True,
    help="A trained model's detector, or online: the hub's default without a trained model "
    "(per-device baselines learned online).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="online: readings per worker turn (default: the harnesses' 512).",
)
@click.option("--json", "as_json", is_flag=True)
def anomaly(
    train_days: float, hours: float, detector: str, batch: int | None, as_json: bool
) -> None:
    """Cost per reading of online anomaly scoring (intake hook, scoring, events)."""
    from evaluation.anomaly_bench import (
        format_bench,
        format_online_bench,
        run_anomaly_bench,
        run_online_bench,
    )

    if detector == "online":
        if batch is None:
            result = run_online_bench(warm_days=train_days, hours=hours)
        else:
            result = run_online_bench(warm_days=train_days, hours=hours, batch=batch)
        text = format_online_bench(result)
    else:
        if batch is not None:
            raise click.UsageError("--batch goes with --detector online")
        result = run_anomaly_bench(train_days=train_days, hours=hours, detector=detector)
        text = format_bench(result)
    click.echo(json.dumps(result, sort_keys=True) if as_json else text)


@bench.command("broker")
@click.option("--messages", "n_messages", default=20_000, show_default=True)
@click.option(
    "--candidate",
    "candidates",
    multiple=True,
    help="A persistence setting to compare: none, interval:<seconds>, changes:<count> "
    "(repeat; the stack's own setting is always measured). "
    "Default: none, interval:30, interval:1, changes:1, changes:10, changes:100, changes:1000.",
)
@click.option(
    "--scenario",
    "scenarios",
    type=click.Choice(["live", "slow", "offline"]),
    multiple=True,
    help="Subscriber: live (acks at once), slow (acks at --slow-ack-rate), offline "
    "(disconnected session). Default: all three.",
)
@click.option("--trials", default=1, show_default=True, help="Crash runs per setting and shape.")
@click.option(
    "--rate", type=float, default=None, help="Pace the publisher (msg/s); default flat out."
)
@click.option("--slow-ack-rate", type=float, default=5_000.0, show_default=True)
@click.option(
    "--queue-size",
    "queue_sizes",
    type=int,
    multiple=True,
    help="Time one save with this many queued messages (repeat). Default: 10,000 and 100,000.",
)
@click.option(
    "--max-seconds",
    type=float,
    default=20.0,
    show_default=True,
    help="Cap on one publish phase (a setting that saves on every message is slow).",
)
@click.option("--seed", default=1, show_default=True, help="Where the crashes fall.")
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def broker(
    n_messages: int,
    candidates: tuple[str, ...],
    scenarios: tuple[str, ...],
    trials: int,
    rate: float | None,
    slow_ack_rate: float,
    queue_sizes: tuple[int, ...],
    max_seconds: float,
    seed: int,
    workdir: Path | None,
    as_json: bool,
) -> None:
    """What a Mosquitto SIGKILL loses under each persistence setting, and what the
    setting costs (docs/broker-durability.md)."""
    from evaluation.broker_durability import (
        DEFAULT_CANDIDATES,
        SCENARIOS,
        candidate,
        format_bench,
        run_broker_bench,
    )

    for spec in candidates:
        try:
            candidate(spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--candidate") from exc
    result = run_broker_bench(
        messages=n_messages,
        candidates=candidates or DEFAULT_CANDIDATES,
        scenarios=scenarios or SCENARIOS,
        trials=trials,
        rate=rate,
        slow_ack_rate=slow_ack_rate,
        queue_sizes=queue_sizes or (10_000, 100_000),
        max_s=max_seconds,
        seed=seed,
        workdir=workdir,
        progress=not as_json,
    )
    click.echo(json.dumps(result.to_json(), sort_keys=True) if as_json else format_bench(result))


@bench.command("cluster")
@click.option("--messages", "n_messages", type=click.IntRange(min=1000), default=300_000)
@click.option("--devices", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--sites", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--partitions", type=click.IntRange(min=1, max=64), default=8, show_default=True)
@click.option(
    "--detection",
    type=click.Choice(["process", "thread"]),
    default=None,
    help="events.detection for every hub (default: the setting's default, a worker process).",
)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cluster(
    n_messages: int,
    devices: int,
    sites: int,
    partitions: int,
    detection: str | None,
    workdir: Path | None,
    as_json: bool,
) -> None:
    """Backlog drain of one hub, one cluster node and two, default pipeline, in one run
    (docs/scaling.md); peak RSS per node and per partition hub."""
    from evaluation.cluster_bench import (
        ClusterBenchOptions,
        format_cluster_bench,
        run_cluster_bench,
    )

    options = ClusterBenchOptions(
        messages=n_messages,
        devices=devices,
        sites=sites,
        partitions=partitions,
        detection=detection,
        workdir=workdir,
    )
    result = run_cluster_bench(options, lambda text: click.echo(text, err=True))
    click.echo(json.dumps(result, indent=2) if as_json else format_cluster_bench(result))
