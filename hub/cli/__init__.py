"""`gridwatch`: the hub's command line, one module per command group.

Each module defines its commands on its own; `main` gathers them here. Modules import
only click and light helpers at the top and everything heavy inside the commands, so
`gridwatch --help` starts fast. Shared options and the settings loader: `hub.cli.options`.
"""

from __future__ import annotations

import click

from hub.cli import (
    anomaly,
    api,
    bench,
    config,
    dashboards,
    drill,
    registry,
    report,
    rules,
    run,
    simulate,
    site,
    stack,
    status,
)

__all__ = ["main"]


@click.group()
def main() -> None:
    """GridWatch: IoT smart-security sensing hub (MQTT → validated readings → InfluxDB)."""


for _command in (
    run.run,
    config.config,
    status.status,
    status.deadletters,
    stack.stack,
    bench.bench,
    site.site,
    simulate.simulate,
    rules.rules,
    anomaly.anomaly,
    dashboards.dashboards,
    drill.drill,
    registry.registry,
    report.report,
    api.serve,
    api.users,
):
    main.add_command(_command)
