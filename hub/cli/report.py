"""`gridwatch report kpi`: alarm KPIs (ISA-18.2 / EEMUA 191) from the event store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from hub.cli.options import config_option, load

_WHEN = click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"])


@click.group("report")
def report() -> None:
    """Reports over the event store."""


@report.command("kpi")
@config_option(help="TOML settings file (the store is [events] store_url).")
@click.option("--store", "store_url", default=None, help="Event store URL (overrides the config).")
@click.option("--site", default=None, help="Site id (default: every site, and per site).")
@click.option(
    "--since", type=_WHEN, default=None, help="Start, UTC unless given (default: until - 1 day)."
)
@click.option(
    "--until", type=_WHEN, default=None, help="End, excluded, UTC unless given (default: now)."
)
@click.option("--png", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also draw alarms per 10 min and the top-10 points into this PNG.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The API's JSON instead of the table.")
def kpi(
    config_path: Path | None,
    store_url: str | None,
    site: str | None,
    since: datetime | None,
    until: datetime | None,
    png: Path | None,
    as_json: bool,
) -> None:
    """Alarm rates against EEMUA 191's levels, floods, top-10 share, chattering, stale,
    standing, shelved and out-of-service alarms, times to acknowledge and resolve; per
    site and per position (definitions: docs/rules-events.md)."""
    import sqlalchemy.exc

    from api.schemas.kpi import KpiReportOut
    from evaluation.kpi_report import format_table, plot_report
    from events.kpi import read_report
    from events.store import EventStore, StoreError

    if store_url is None:
        from hub.wiring import store_url as configured_store_url

        store_url = configured_store_url(load(config_path))
    end = _utc(until) if until is not None else datetime.now(UTC)
    start = _utc(since) if since is not None else end - timedelta(days=1)
    if start >= end:
        raise click.BadParameter("--since must be before --until", param_hint="--since")
    try:
        with EventStore(store_url) as store:
            result = read_report(
                store,
                site=site,
                since_ms=round(start.timestamp() * 1000),
                until_ms=round(end.timestamp() * 1000),
            )
    except (StoreError, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise click.ClickException(f"cannot read the event store: {exc}") from exc
    if as_json:
        click.echo(KpiReportOut.of(result).model_dump_json(indent=2))
    else:
        click.echo(format_table(result))
    if png is not None:
        plot_report(result, png)
        click.echo(f"wrote {png}", err=True)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
