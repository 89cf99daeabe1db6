"""`gridwatch dashboards build|push`: Grafana dashboards as code, provisioned or pushed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

from hub.cli.options import config_option, load

if TYPE_CHECKING:
    from dashboards.common import BuildConfig
    from dashboards.provisioning import InfluxTarget
    from hub.settings import Settings

_CONFIG = config_option(help="TOML settings file: the datasource points at its [influx] section.")
_HUB_URL = click.option(
    "--hub-url",
    default=None,
    help="Hub API base URL as operators' browsers reach it (event desk links, map layers). "
    "Default: http://<api.host>:<api.port> from the settings.",
)
_MAP_SITE = click.option(
    "--map-site",
    default="yingyang",
    show_default=True,
    help="Site whose cells and devices the Grid map loads from the hub API.",
)
_MAP_KEY = click.option(
    "--map-api-key-param",
    is_flag=True,
    help="Append ?api_key=${map_api_key} (a hidden dashboard variable) to the map layer URLs.",
)


def _influx(settings: Settings) -> InfluxTarget:
    from dashboards.provisioning import InfluxTarget

    influx = settings.influx
    return InfluxTarget(
        url=influx.url,
        database=influx.database if influx.api == "v1" else (influx.bucket or influx.database),
        api=influx.api,
        retention_policy=influx.retention_policy,
        username=influx.username,
        password=influx.password.get_secret_value() if influx.password else None,
        token=influx.token.get_secret_value() if influx.token else None,
    )


def _build_config(
    settings: Settings, hub_url: str | None, map_site: str, map_key: bool
) -> BuildConfig:
    from dashboards.common import BuildConfig

    url = hub_url or f"http://{settings.api.host}:{settings.api.port}"
    return BuildConfig(hub_url=url, map_site=map_site, map_api_key_param=map_key)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL with a host")
    return value


@click.group("dashboards")
def dashboards() -> None:
    """Grafana dashboards as code: provisioning files, or a push over Grafana's HTTP API."""


@dashboards.command("build")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for the provisioning tree (created; only our files are written).",
)
@click.option(
    "--dashboards-path",
    default=None,
    help="Where Grafana will find the dashboard JSON files (the provider's options.path). "
    "Default: /var/lib/grafana/dashboards/gridwatch.",
)
@_CONFIG
@_HUB_URL
@_MAP_SITE
@_MAP_KEY
def build_command(
    out: Path,
    dashboards_path: str | None,
    config_path: Path | None,
    hub_url: str | None,
    map_site: str,
    map_api_key_param: bool,
) -> None:
    """Write Grafana's file-provisioning tree: datasource, provider, one JSON per dashboard."""
    from dashboards.provisioning import DEFAULT_DASHBOARDS_PATH, tree, write_tree

    settings = load(config_path)
    files = tree(
        _influx(settings),
        _build_config(settings, hub_url, map_site, map_api_key_param),
        dashboards_path or DEFAULT_DASHBOARDS_PATH,
    )
    for path in write_tree(out, files):
        click.echo(str(path))


@dashboards.command("push")
@click.option(
    "--url",
    required=True,
    callback=lambda _ctx, _param, value: _http_url(value),
    help="Grafana base URL, e.g. http://grafana:3000.",
)
@click.option(
    "--token",
    required=True,
    envvar="GRAFANA_TOKEN",
    help="Grafana service-account token (or set GRAFANA_TOKEN).",
)
@click.option("--overwrite", is_flag=True, help="Replace dashboards changed in Grafana.")
@click.option(
    "--client-venv",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The isolated venv holding grafana-client (created on first use). "
    "Default: <this venv>-grafana.",
)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@_CONFIG
@_HUB_URL
@_MAP_SITE
@_MAP_KEY
def push_command(
    url: str,
    token: str,
    overwrite: bool,
    client_venv: Path | None,
    timeout: float,
    config_path: Path | None,
    hub_url: str | None,
    map_site: str,
    map_api_key_param: bool,
) -> None:
    """Create or update the GridWatch folder, datasource and dashboards in Grafana."""
    from dashboards.catalog import BOARDS, dashboard_json
    from dashboards.provisioning import datasource_model
    from dashboards.push import (
        PushError,
        PushPlan,
        Step,
        default_env_dir,
        ensure_client_env,
        run_push,
    )

    settings = load(config_path)
    config = _build_config(settings, hub_url, map_site, map_api_key_param)
    plan = PushPlan(
        url=url,
        datasource=datasource_model(_influx(settings), secrets="inline"),
        dashboards=[dashboard_json(board, config) for board in BOARDS],
        overwrite=overwrite,
        timeout_s=timeout,
    )
    counts: dict[str, int] = {}
    try:
        python = ensure_client_env(
            client_venv or default_env_dir(), lambda m: click.echo(m, err=True)
        )
        with click.progressbar(
            length=2 + len(BOARDS), label="pushing to Grafana", file=sys.stderr
        ) as bar:

            def on_step(step: Step) -> None:
                counts[step.result] = counts.get(step.result, 0) + 1
                click.echo(f"  {step.kind} {step.name}: {step.result}", err=True)
                bar.update(1)

            run_push(plan, token, python, on_step)
    except PushError as exc:
        raise click.ClickException(str(exc)) from exc
    summary = ", ".join(f"{n} {result}" for result, n in sorted(counts.items()))
    click.echo(f"pushed to {url}: {summary}")
