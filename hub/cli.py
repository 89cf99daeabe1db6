"""`gridwatch` command line: run, config, status, stack, deadletters, bench."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
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
    "--demo", is_flag=True, help="Also publish demo traffic from 1,000 simulated devices."
)
@click.option("--demo-rate", default=50.0, show_default=True, help="Demo messages per second.")
def run(config_path: Path | None, demo: bool, demo_rate: float) -> None:
    """Run the hub until Ctrl-C / SIGTERM."""
    from hub.runtime import run_hub

    settings = _settings(config_path)
    _setup_logging(settings.hub.log_level)
    if demo:
        from hub.demo import run_with_demo

        asyncio.run(run_with_demo(settings, demo_rate))
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
    from hub.status import read_status

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
    from hub.stack import LocalStack

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
def stack_up(config_path: Path | None, root: Path | None) -> None:
    """Install if missing and start Mosquitto and InfluxDB on 127.0.0.1."""
    from hub.stack import StackError

    settings = _settings(config_path)
    try:
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
def bench_ingest(
    n_messages: int, devices: int, as_json: bool, rate: float | None, workdir: Path | None
) -> None:
    """Publish N realistic messages and measure the full pipeline, live and backlog."""
    from hub.bench import run_ingest_bench

    result = run_ingest_bench(n_messages, devices, workdir, progress=not as_json, rate=rate)
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
    else:
        from hub.bench import format_result

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
    from simulators.site import dump_site
    from simulators.site_generate import generate_site

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
    from simulators.site import SiteError, load_site

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
