"""`gridwatch run`: the hub itself (and, with --demo, the Yingyang demo site beside it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from hub.cli.options import config_option, load
from hub.supervision import setup_logging, tune_malloc


@click.command("run")
@config_option()
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

    settings = load(config_path)
    setup_logging(settings.hub.log_level)
    tune_malloc()
    try:  # `stack up --dynsec`: its broker wants logins, which it wrote for us
        settings, simulator = stack_logins(settings)
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    if settings.cluster.enabled:
        if demo:
            raise click.ClickException("--demo runs beside a single hub, not a cluster node")
        from hub.cluster import run_cluster_node

        asyncio.run(run_cluster_node(settings))
    elif demo:
        from hub.demo import run_with_demo

        asyncio.run(run_with_demo(settings, demo_speed, simulator))
    else:
        asyncio.run(run_hub(settings))
