"""`gridwatch registry ...`: import and list the device registry, and broker logins.

Heavy modules are imported inside the commands so `gridwatch --help` stays fast.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from hub.cli.options import config_option, load

if TYPE_CHECKING:
    from broker.dynsec import BrokerAccounts, Credentials
    from hub.settings import Settings

_CONFIG = config_option(
    help="TOML settings file (the registry lives in [events] store_url's database)."
)


def _accounts(settings: Settings) -> BrokerAccounts:
    from hub.wiring import accounts_from_settings

    try:
        accounts = accounts_from_settings(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if accounts is None:
        raise click.ClickException(
            "registry.dynsec is off: turn it on and set registry.dynsec_password"
        )
    return accounts


def _print_credentials(creds: Credentials) -> None:
    click.echo(f"username  {creds.username}")
    click.echo(f"password  {creds.password}")
    if creds.client_id:
        click.echo(f"client id {creds.client_id}")
    click.echo(f"role      {creds.role}")
    click.echo("The password is shown this once; GridWatch does not keep it.", err=True)


@click.group("registry")
def registry() -> None:
    """The device registry: sites, cells, workers, profiles, devices; broker logins."""


@registry.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "site", "csv", "yaml"]),
    default="auto",
    show_default=True,
    help="auto: .csv is devices, a YAML with a top-level `site:` is a site file, "
    "any other YAML is a registry import file.",
)
@_CONFIG
def import_command(
    files: tuple[Path, ...], fmt: Literal["auto", "site", "csv", "yaml"], config_path: Path | None
) -> None:
    """Import files into the registry, each all or nothing (row-numbered errors)."""
    from hub.wiring import open_registry
    from registry import bulk
    from registry.errors import Invalid
    from registry.site_import import import_sites
    from sites.model import SiteError, load_site_ref

    settings = load(config_path)
    failed = False
    with (
        open_registry(settings) as store,
        click.progressbar(files, label="importing", file=sys.stderr) as bar,
    ):
        for path in bar:
            kind = fmt
            text = ""
            if kind != "site" and path.exists():
                text = path.read_text(encoding="utf-8")
            if kind == "auto":
                if path.suffix.lower() == ".csv":
                    kind = "csv"
                else:
                    # a site file has a top-level `site:` key; import files do not
                    kind = "site" if re.search(r"^site\s*:", text, re.MULTILINE) else "yaml"
            try:
                if kind == "site":
                    summary = import_sites(store, [load_site_ref(str(path))])
                else:
                    summary = bulk.import_text(store, text, kind, str(path))
            except (Invalid, SiteError) as exc:
                failed = True
                click.echo(f"\n{exc}", err=True)
                continue
            counts = ", ".join(
                f"{section} +{c['created']} ~{c['updated']}"
                for section, c in summary.counts().items()
                if c["created"] or c["updated"]
            )
            click.echo(f"\n{path}: {counts or 'nothing to change'}")
    if failed:
        raise click.ClickException("some files were refused (nothing of them was imported)")


@registry.command("devices")
@click.option("--site", default=None)
@click.option("--kind", default=None)
@click.option("--cell", default=None)
@click.option("--status", type=click.Choice(["active", "retired", "all"]), default="active")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_CONFIG
def devices_command(
    site: str | None,
    kind: str | None,
    cell: str | None,
    status: str,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """List registered devices."""
    from hub.wiring import open_registry
    from registry.model import Status

    with open_registry(load(config_path)) as store:
        offset = 0
        while True:
            page = store.list_devices(
                site=site, kind=kind, cell=cell, status=Status(status), limit=1000, offset=offset
            )
            for d in page.items:
                if as_json:
                    click.echo(
                        json.dumps(
                            {
                                "id": d.id,
                                "kind": d.kind,
                                "site": d.site,
                                "cell": d.cell,
                                "lon": d.location.lon,
                                "lat": d.location.lat,
                                "retired": d.retired,
                            }
                        )
                    )
                else:
                    flag = " (retired)" if d.retired else ""
                    click.echo(f"{d.id:<28} {d.kind:<8} {d.site:<16} {d.cell}{flag}")
            offset += len(page.items)
            if offset >= page.total or not page.items:
                break


@registry.command("broker-init")
@click.argument("config_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--admin", default="gridwatch-admin", show_default=True)
@click.password_option("--password", prompt="dynamic-security admin password")
def broker_init(config_file: Path, admin: str, password: str) -> None:
    """Write the broker's first dynamic-security file with its admin login, and print the
    mosquitto.conf lines that load it."""
    from broker.dynsec import DynsecError, broker_conf, init_config

    try:
        init_config(config_file, admin, password)
    except (FileExistsError, FileNotFoundError, DynsecError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(broker_conf(config_file.resolve()), nl=False)


@registry.command("login")
@click.argument("who", type=click.Choice(["hub", "simulator", "device"]))
@click.argument("username")
@click.option("--site", "sites", multiple=True, help="simulator: a site it speaks for")
@_CONFIG
def login_command(
    who: Literal["hub", "simulator", "device"],
    username: str,
    sites: tuple[str, ...],
    config_path: Path | None,
) -> None:
    """Create (or re-key) a broker login: the hub's, a simulator's, or a registered
    device's (USERNAME is its id). Prints the new password once."""
    from hub.wiring import open_registry

    settings = load(config_path)
    accounts = _accounts(settings)
    if who == "hub":
        creds = asyncio.run(accounts.register_hub(username))
    elif who == "simulator":
        if not sites:
            raise click.UsageError("a simulator needs --site (one or more)")
        creds = asyncio.run(accounts.register_simulator(username, list(sites)))
    else:
        with open_registry(settings) as store:
            device = store.get_device(username)
        if device.retired:
            raise click.ClickException(f"device {username} is retired")
        creds = asyncio.run(accounts.register_device(device.id, device.topic_root(accounts.prefix)))
    _print_credentials(creds)
