"""`gridwatch` command line: run, config, status, stack, deadletters, bench, site, simulate."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from pydantic import SecretStr

from hub.settings import Settings, SettingsError, load_settings

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML settings file (environment GRIDWATCH_<SECTION>__<KEY> overrides it).",
)


def _settings(config_path: Path | None) -> Settings:
    try:
        return load_settings(config_path)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    # One line per HTTP request would drown the hub's own messages.
    for noisy in ("httpx", "httpcore", "influxdb_client"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


@click.group()
def main() -> None:
    """GridWatch: IoT smart-security sensing hub (MQTT → validated readings → InfluxDB)."""


@main.command()
@CONFIG_OPTION
@click.option(
    "--demo",
    is_flag=True,
    help="Also run the Yingyang demo site: its devices publish as themselves (one MQTT "
    "connection each).",
)
@click.option(
    "--demo-speed",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Simulated seconds per real second for the demo's catch-up on the last hour; "
    "then it keeps to real time (the hub refuses timestamps from the future).",
)
def run(config_path: Path | None, demo: bool, demo_speed: float) -> None:
    """Run the hub until Ctrl-C / SIGTERM."""
    from devstack.stack import StackError
    from hub.runtime import run_hub
    from hub.wiring import stack_logins

    settings = _settings(config_path)
    _setup_logging(settings.hub.log_level)
    try:  # `stack up --dynsec`: its broker wants logins, which it wrote for us
        settings, simulator = stack_logins(settings)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    if demo:
        from hub.demo import run_with_demo

        asyncio.run(run_with_demo(settings, demo_speed, simulator))
    else:
        asyncio.run(run_hub(settings))


# -- config ----------------------------------------------------------------------------
@main.group()
def config() -> None:
    """Inspect settings."""


def _masked(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


@config.command("show")
@CONFIG_OPTION
def config_show(config_path: Path | None) -> None:
    """Print the effective settings (file + environment), secrets masked."""
    settings = _settings(config_path)
    for section, values in settings.model_dump().items():
        click.echo(f"[{section}]")
        for key, value in _masked(values).items():
            if value is None:
                click.echo(f"# {key} = (unset)")
            else:
                click.echo(f"{key} = {_toml_value(value)}")
        click.echo()


@config.command("example")
def config_example() -> None:
    """Print a documented example settings file."""
    click.echo((Path(__file__).parent / "example.toml").read_text(), nl=False)


# -- status ----------------------------------------------------------------------------
@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Print the running hub's counters (from its status file)."""
    from ingest.status import read_status

    settings = _settings(config_path)
    data = read_status(settings.hub.data_dir)
    if data is None:
        raise click.ClickException(f"no hub has run with data_dir {settings.hub.data_dir}")
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    state = "running" if data["alive"] else "NOT RUNNING (last figures below)"
    click.echo(f"hub {data.get('client_id')} pid {data.get('pid')}: {state}")
    click.echo(f"  subscription  {data.get('subscription')}   InfluxDB {data.get('influx')}")
    click.echo(f"  connected     {data.get('connected')}   reconnects {data.get('reconnects')}")
    for key in ("received", "acked", "stored", "rejected", "dead_lettered", "write_failures"):
        click.echo(f"  {key:<13} {data.get(key)}")
    for reason, count in sorted(data.get("rejected_by_reason", {}).items()):
        click.echo(f"    rejected {reason:<20} {count}")
    click.echo(f"  spool         {data.get('spool_lines')} lines, {data.get('spool_bytes')} bytes")
    click.echo(f"  lag           {data.get('lag_s', 0):.1f} s")
    p50, p99 = data.get("latency_p50_ms"), data.get("latency_p99_ms")
    if p50 is not None:
        click.echo(f"  latency       p50 {p50:.1f} ms, p99 {p99:.1f} ms (publish→stored)")


# -- dead letters ----------------------------------------------------------------------
@main.command()
@CONFIG_OPTION
@click.option("--limit", default=20, show_default=True)
def deadletters(config_path: Path | None, limit: int) -> None:
    """Print the newest dead letters (JSON lines, newest first)."""
    from ingest.deadletter import read_dead_letters

    settings = _settings(config_path)
    for record in read_dead_letters(
        settings.deadletters.directory, keep=settings.deadletters.keep, limit=limit
    ):
        click.echo(json.dumps(record, ensure_ascii=False))


# -- local stack -----------------------------------------------------------------------
@main.group()
def stack() -> None:
    """Local Mosquitto + InfluxDB 1.x for the hub (installed from Debian if missing)."""


def _local_stack(settings: Settings, root: Path | None) -> Any:
    from devstack.stack import LocalStack

    influx_port = urlsplit(settings.influx.url).port or 8086
    return LocalStack(root or settings.hub.data_dir / "stack", settings.mqtt.port, influx_port)


STACK_DIR = click.option(
    "--dir",
    "root",
    type=click.Path(path_type=Path),
    default=None,
    help="Where configs, data and logs live (default: <hub.data_dir>/stack).",
)


@stack.command("up")
@CONFIG_OPTION
@STACK_DIR
@click.option(
    "--dynsec",
    is_flag=True,
    help="Broker with the dynamic-security plugin (no anonymous clients); provision the "
    "hub's and the demo's logins for `gridwatch run` (docs/registry.md).",
)
def stack_up(config_path: Path | None, root: Path | None, dynsec: bool) -> None:
    """Install if missing and start Mosquitto and InfluxDB on 127.0.0.1."""
    from devstack.stack import StackError

    settings = _settings(config_path)
    try:
        if dynsec:
            from devstack.dynsec import dynsec_up

            prefix = settings.mqtt.topic_prefix.strip("/")
            started = dynsec_up(_local_stack(settings, root), prefix)
        else:
            started = _local_stack(settings, root).up()
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    for name, info in started.items():
        click.echo(f"{name}: {info}")


@stack.command("down")
@CONFIG_OPTION
@STACK_DIR
def stack_down(config_path: Path | None, root: Path | None) -> None:
    """Stop exactly the services `stack up` started."""
    stopped = _local_stack(_settings(config_path), root).down()
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack.command("status")
@CONFIG_OPTION
@STACK_DIR
def stack_status(config_path: Path | None, root: Path | None) -> None:
    """Show the local services and whether they run."""
    for name, info in _local_stack(_settings(config_path), root).status().items():
        click.echo(f"{name}: " + ", ".join(f"{k}={v}" for k, v in info.items()))


# -- benchmarks ------------------------------------------------------------------------
@main.group()
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
    "--rules/--no-rules",
    default=False,
    help="Evaluate the rules in the hub too (default: off; their cost is measured apart).",
)
def bench_ingest(
    n_messages: int,
    devices: int,
    as_json: bool,
    rate: float | None,
    workdir: Path | None,
    rules: bool,
) -> None:
    """Publish N realistic messages and measure the full pipeline, live and backlog."""
    from evaluation.ingest_bench import run_ingest_bench

    result = run_ingest_bench(
        n_messages, devices, workdir, progress=not as_json, rate=rate, rules=rules
    )
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
    else:
        from evaluation.ingest_bench import format_result

        click.echo(format_result(result))


# -- sites -----------------------------------------------------------------------------
@main.group()
def site() -> None:
    """Site files: a community's grid cells, workers, devices and schedules."""


@site.command("generate")
@click.option("--cells", type=click.IntRange(min=1), required=True)
@click.option("--devices", type=click.IntRange(min=1), required=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--site-id", default="synthetic", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write here instead of stdout.",
)
def site_generate(cells: int, devices: int, seed: int, site_id: str, out: Path | None) -> None:
    """Make a synthetic site of any size (same seed, same bytes)."""
    from sites.generate import generate_site
    from sites.model import dump_site

    text = dump_site(generate_site(cells, devices, seed, site_id=site_id))
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out} ({cells} cells, {devices} devices, seed {seed})", err=True)


@site.command("validate")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
def site_validate(path: Path) -> None:
    """Check a site file strictly; errors name the key and the line."""
    from sites.model import SiteError, load_site

    try:
        loaded = load_site(path)
    except SiteError as exc:
        raise click.ClickException(str(exc)) from exc
    kinds = {
        "access": len(loaded.devices_of("access")),
        "smoke": len(loaded.devices_of("smoke")),
        "parking": len(loaded.devices_of("parking")),
    }
    click.echo(f"{path}: site {loaded.site}, {len(loaded.cells)} cells, devices {kinds}")


# -- simulate --------------------------------------------------------------------------
def _speed(_ctx: click.Context, _param: click.Parameter, value: str) -> float | None:
    """A positive factor of real time, or `max` (None: as fast as the broker takes it)."""
    text = value.strip().lower()
    if text == "max":
        return None
    try:
        speed = float(text.removesuffix("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a number nor 'max'") from None
    if not 0 < speed < float("inf"):
        raise click.BadParameter(f"speed must be positive, not {value!r}")
    return speed


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    from simulators.publish import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    from datetime import datetime

    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time like 2026-01-05T08:00:00Z"
        ) from None
    if instant.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no offset: add Z or +08:00")
    return instant


@main.command()
@CONFIG_OPTION
@click.option(
    "--site",
    "site_ref",
    default=None,
    help="A site file, or a demo site: yingyang, melbourne_bays (required unless --list).",
)
@click.option(
    "--speed",
    callback=_speed,
    default="1",
    show_default=True,
    help="Simulated seconds per real second (1 real time, 60 a minute per second), or max.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--duration",
    "duration_s",
    callback=_duration,
    default=None,
    help="90s, 10m, 2h, 1d (required unless --list).",
)
@click.option(
    "--scenario",
    "scenario_names",
    default=None,
    help="Incident scenarios to inject: NAME[,NAME...] or all (see --list); labels via --labels.",
)
@click.option("--list", "list_scenarios", is_flag=True, help="Describe every scenario and exit.")
@click.option(
    "--start",
    callback=_instant,
    default=None,
    help="Simulated start (default: now, UTC, to the second). Fixed start + seed = same bytes.",
)
@click.option("--broker", default=None, help="mqtt://host:port (default: the settings' mqtt.url).")
@click.option(
    "--gateways",
    type=click.IntRange(min=1),
    default=None,
    help="Multiplex devices over N connections (no per-device wills); for ~5,000+ devices.",
)
@click.option(
    "--replay",
    "replays",
    type=click.Choice(["smoke", "parking", "doors"]),
    multiple=True,
    help="Replay a real dataset onto the site's devices (repeatable); see --labels.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("../shared/data"),
    show_default=True,
    help="Where the datasets live.",
)
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the replays' ground truth here (JSON lines).",
)
def simulate(
    config_path: Path | None,
    site_ref: str | None,
    speed: float | None,
    seed: int,
    duration_s: float | None,
    scenario_names: str | None,
    list_scenarios: bool,
    start: Any,
    broker: str | None,
    gateways: int | None,
    replays: tuple[str, ...],
    data_dir: Path,
    labels_path: Path | None,
) -> None:
    """Simulate a site's devices on the broker, each under its own MQTT identity."""
    from hub.settings import MqttSettings
    from hub.wiring import broker_options
    from simulators.publish import Simulation, SimulationError, format_summary, now_utc_second
    from simulators.scenarios import SCENARIOS, ScenarioError, run_scenarios

    if list_scenarios:
        for name, scenario in SCENARIOS.items():
            click.echo(f"{name:<24} {scenario.kind.value:<24} {scenario.description}")
        return
    if site_ref is None or duration_s is None:
        raise click.UsageError("--site and --duration are required (unless --list)")
    names = _scenario_names(scenario_names)
    if names and replays:
        raise click.UsageError("--scenario and --replay cannot be combined yet")
    settings = _settings(config_path)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if broker is not None:
        try:
            mqtt = MqttSettings.model_validate({**settings.mqtt.model_dump(), "url": broker})
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--broker") from exc
        settings = settings.model_copy(update={"mqtt": mqtt})
    loaded = _site(site_ref)
    start = start or now_utc_second()
    extra, labels = _replays(loaded, replays, data_dir, start, start.timestamp() + duration_s)
    source = None
    if names:
        try:
            source, scenario_labels = run_scenarios(
                loaded, names, start=start, duration_s=duration_s, seed=seed
            )
        except ScenarioError as exc:
            raise click.ClickException(f"scenario: {exc}") from exc
        labels.extend(scenario_labels)
    if labels_path is not None:
        from simulators.labels import write_labels

        write_labels(labels_path, labels)
        click.echo(f"wrote {len(labels)} labels to {labels_path}", err=True)
    ahead_s = (start.timestamp() + duration_s) - time.time()
    if speed != 1 and ahead_s > settings.hub.max_future_s:
        click.echo(
            f"note: simulated time runs up to {ahead_s / 3600:.1f} h past now; a hub refuses "
            f"readings more than {settings.hub.max_future_s:.0f} s ahead of its clock "
            "(choose --start in the past for accelerated runs)",
            err=True,
        )
    with click.progressbar(
        length=1000, label=f"simulating {loaded.site}", file=sys.stderr, show_eta=True
    ) as bar:
        done = 0

        def on_progress(progress: Any) -> None:
            nonlocal done
            reached = round(progress.fraction * 1000)
            if reached > done:
                bar.update(reached - done)
                done = reached

        try:
            simulation = Simulation(
                loaded,
                **broker_options(settings),
                speed=speed,
                duration_s=duration_s,
                seed=seed,
                start=start,
                gateways=gateways,
                progress=on_progress,
                extra=extra,
                source=source,
            )
            summary = asyncio.run(simulation.run())
        except (OSError, SimulationError) as exc:
            raise click.ClickException(f"simulation failed: {exc}") from exc
    click.echo(format_summary(summary))
    if labels:
        injected = Counter(label.kind for label in labels)
        click.echo(f"incidents {len(labels)}")
        for kind, count in sorted(injected.items()):
            click.echo(f"  {kind:<24} {count}")


def _scenario_names(text: str | None) -> list[str]:
    """`--scenario NAME[,NAME...]|all` as scenario names, each checked."""
    from simulators.scenarios import SCENARIOS

    if not text:
        return []
    names = list(SCENARIOS) if text == "all" else text.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise click.BadParameter(
            f"unknown scenario(s) {unknown}; see gridwatch simulate --list",
            param_hint="--scenario",
        )
    return names


def _site(ref: str) -> Any:
    """`--site`: a site file or a demo site name; problems listed with their lines."""
    from sites.model import SiteError, load_site_ref

    try:
        return load_site_ref(ref)
    except SiteError as exc:
        raise click.ClickException(str(exc)) from exc


def _replays(
    site: Any, names: tuple[str, ...], data_dir: Path, start: Any, end_s: float
) -> tuple[list[Any], list[Any]]:
    """Messages and the labels within the run of each requested dataset replay."""
    from simulators.replay import replay_doors, replay_parking, replay_smoke

    if names and not data_dir.is_dir():
        raise click.BadParameter(f"{data_dir} is not a directory", param_hint="--data-dir")
    messages: list[Any] = []
    labels: list[Any] = []
    for name in names:
        if name == "smoke":
            replay = replay_smoke(
                site, data_dir / "smoke" / "smoke_detection_iot_first10080_allcols.csv", start=start
            )
        elif name == "parking":
            replay = replay_parking(
                site, data_dir / "parking" / "birmingham_parking.csv", start=start
            )
        else:
            replay = replay_doors(site, data_dir / "doors", start=start)
        messages.extend(replay.messages)
        # Only incidents that begin within the simulated span can be detected.
        labels.extend(label for label in replay.labels if label.start_ms < end_s * 1000)
        for note in replay.notes:
            click.echo(f"replay {name}: {note}", err=True)
    return messages, labels


@main.group()
def rules() -> None:
    """Rule files: check them, and score them against simulated ground truth."""


@rules.command("check")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
def rules_check(paths: tuple[Path, ...]) -> None:
    """Validate rule files (default: the built-in pack); errors name their line."""
    from rules.schema import RuleError, load_rules

    try:
        loaded = load_rules(paths)
    except RuleError as exc:
        raise click.ClickException(str(exc)) from exc
    for rule in loaded:
        click.echo(f"{rule.id:<24} {rule.severity.value:<8} {rule.condition.type:<12} {rule.title}")
    click.echo(f"{len(loaded)} rules OK", err=True)


@rules.command("evaluate")
@click.option("--site", "site_ref", required=True, help="Site file or demo site name.")
@click.option("--scenario", "scenario_names", default=None, help="NAME[,NAME...] or all.")
@click.option(
    "--replay",
    "replays",
    multiple=True,
    type=click.Choice(["smoke", "parking", "doors"]),
    help="Real-data replay(s) with their ground truth (instead of scenarios).",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--duration",
    "duration_s",
    callback=_duration,
    default=None,
    help="90s, 10m, 2h, 1d (default: what the scenarios need).",
)
@click.option(
    "--start", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]), default=None
)
@click.option(
    "--rules",
    "rule_paths",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Rule files (default: built-in pack).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("../shared/data"),
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
@click.option("--show-misses", is_flag=True, help="List missed labels and false alarms.")
def rules_evaluate(
    site_ref: str,
    scenario_names: str | None,
    replays: tuple[str, ...],
    seed: int,
    duration_s: float | None,
    start: Any,
    rule_paths: tuple[Path, ...],
    data_dir: Path,
    as_json: bool,
    show_misses: bool,
) -> None:
    """Run scenarios (or replays) through decode → rules → events in simulated time and
    print precision, recall, detection delay and false alarms per incident kind."""
    from datetime import UTC, datetime

    from evaluation.alarm_quality import Targets, format_table, misses, unmatched
    from evaluation.rules_eval import GRACE_MS, evaluate, wait_s
    from rules.schema import RuleError, load_rules
    from simulators.scenarios import ScenarioError, background_labels, run_scenarios

    if not scenario_names and not replays:
        raise click.UsageError("give --scenario NAME[,...]|all and/or --replay")
    if scenario_names and replays:
        raise click.UsageError("--scenario and --replay cannot be combined yet")
    names = _scenario_names(scenario_names)
    try:
        rule_list = load_rules(rule_paths)
    except RuleError as exc:
        raise click.ClickException(str(exc)) from exc
    loaded = _site(site_ref)
    if duration_s is not None:
        span_s = duration_s
    elif "welfare_check" in names:
        span_s = 40 * 3600.0
    elif "parking_overstay" in names:
        span_s = 28 * 3600.0
    else:
        span_s = 7 * 24 * 3600.0 if replays else 6 * 3600.0
    begin = start or datetime(2026, 3, 2, tzinfo=UTC)
    if begin.tzinfo is None:
        begin = begin.replace(tzinfo=UTC)
    click.echo(f"simulating {loaded.site} for {span_s / 3600:.1f} h (seed {seed})", err=True)
    if replays:
        messages, labels = _replays(loaded, replays, data_dir, begin, begin.timestamp() + span_s)
        messages.sort(key=lambda m: m.sim_ms)
    else:
        try:
            messages, labels = run_scenarios(
                loaded, names, start=begin, duration_s=span_s, seed=seed
            )
        except ScenarioError as exc:
            raise click.ClickException(f"scenario: {exc}") from exc
        labels += background_labels(loaded, messages, labels)
    with click.progressbar(length=len(messages), label="rules", file=sys.stderr) as bar:
        done = [0]

        def progress(count: int) -> None:
            bar.update(count - done[0])
            done[0] = count

        run = evaluate(
            [loaded],
            messages,
            labels,
            rule_list,
            span_ms=round(span_s * 1000),
            on_progress=progress,
        )
        bar.update(len(messages) - done[0])
    targets = Targets(wait_s=wait_s(rule_list))
    if as_json:
        click.echo(json.dumps(run.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(format_table(run.report, targets=targets))
        click.echo(
            f"{run.messages} messages ({run.rejected} rejected), {len(run.labels)} labels, "
            f"{len(run.events)} events, {run.elapsed_s:.1f} s"
        )
        if run.doors is not None:
            click.echo(run.doors.describe())
        for line in misses(run.report, targets):
            click.echo(f"target missed: {line}")
    if show_misses:
        missed, false_alarms = unmatched(run.labels, run.events, grace_ms=GRACE_MS)
        for label in missed:
            click.echo(
                f"missed  {label.kind.value} {','.join(label.devices[:3])} {label.id}", err=True
            )
        for event in false_alarms:
            click.echo(f"false   {event.incident} {event.device} {event.message}", err=True)


from hub.cli_dashboards import dashboards as _dashboards  # noqa: E402

main.add_command(_dashboards)

from hub.cli_anomaly import anomaly as _anomaly  # noqa: E402

main.add_command(_anomaly)

from hub.cli_registry import registry_group as _registry  # noqa: E402

main.add_command(_registry)

from hub.cli_anomaly_train import bench_anomaly_command, scenarios_command, train_command  # noqa: E402

_anomaly.add_command(train_command)
_anomaly.add_command(scenarios_command)
bench.add_command(bench_anomaly_command)

from hub.cli_api import serve as _serve  # noqa: E402
from hub.cli_api import users as _users  # noqa: E402

main.add_command(_serve)
main.add_command(_users)
