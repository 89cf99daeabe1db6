"""`gridwatch stack up|down|status`: a local Mosquitto + InfluxDB 1.x for the hub."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

from hub.cli.options import config_option, load

if TYPE_CHECKING:
    from devstack.stack import LocalStack
    from hub.settings import Settings

stack_dir_option = click.option(
    "--dir",
    "root",
    type=click.Path(path_type=Path),
    default=None,
    help="Where configs, data and logs live (default: <hub.data_dir>/stack).",
)


@click.group("stack")
def stack() -> None:
    """Local Mosquitto + InfluxDB 1.x for the hub (installed from Debian if missing)."""


def _local_stack(settings: Settings, root: Path | None, postgres: bool = False) -> LocalStack:
    """The stack under `root` (default <hub.data_dir>/stack), on the settings' ports;
    with PostgreSQL when asked for or when `stack up --postgres` started one there."""
    from devstack.stack import STACK_POSTGRES_PORT, LocalStack

    influx_port = urlsplit(settings.influx.url).port or 8086
    folder = root or settings.hub.data_dir / "stack"
    with_postgres = postgres or (folder / "postgres").is_dir()
    return LocalStack(
        folder,
        settings.mqtt.port,
        influx_port,
        postgres_port=STACK_POSTGRES_PORT if with_postgres else None,
    )


@stack.command("up")
@config_option()
@stack_dir_option
@click.option(
    "--dynsec",
    is_flag=True,
    help="Broker with the dynamic-security plugin (no anonymous clients); provision the "
    "hub's and the demo's logins for `gridwatch run` (docs/registry.md).",
)
@click.option(
    "--postgres",
    is_flag=True,
    help="Also PostgreSQL on 127.0.0.1:15432 (database gridwatch): the event store and "
    "lease table that cluster nodes on this box share (docs/scaling.md).",
)
def up(config_path: Path | None, root: Path | None, dynsec: bool, postgres: bool) -> None:
    """Install if missing and start Mosquitto and InfluxDB (and PostgreSQL) on 127.0.0.1."""
    from devstack.stack import StackError

    settings = load(config_path)
    local = _local_stack(settings, root, postgres)
    try:
        if dynsec:
            from devstack.dynsec import dynsec_up

            started = dynsec_up(local, settings.mqtt.topic_prefix)
        else:
            started = local.up()
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    for name, info in started.items():
        click.echo(f"{name}: {info}")


@stack.command("down")
@config_option()
@stack_dir_option
def down(config_path: Path | None, root: Path | None) -> None:
    """Stop exactly the services `stack up` started."""
    stopped = _local_stack(load(config_path), root).down()
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack.command("status")
@config_option()
@stack_dir_option
def status(config_path: Path | None, root: Path | None) -> None:
    """Show the local services and whether they run."""
    for name, info in _local_stack(load(config_path), root).status().items():
        click.echo(f"{name}: " + ", ".join(f"{k}={v}" for k, v in info.items()))
