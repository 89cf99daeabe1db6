"""`gridwatch config show|example`: the effective settings, and a documented example file."""

from __future__ import annotations

import json
from pathlib import Path

import click
from pydantic import SecretStr

from hub.cli.options import config_option, load

EXAMPLE: Path = Path(__file__).parents[1] / "example.toml"
MASK = "**********"


@click.group("config")
def config() -> None:
    """Inspect settings."""


def _masked(value: object) -> object:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


@config.command("show")
@config_option()
def show(config_path: Path | None) -> None:
    """Print the effective settings (file + environment), secrets masked."""
    settings = load(config_path)
    for section, values in settings.model_dump().items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            shown = _masked(value)
            if shown is None:
                click.echo(f"# {key} = (unset)")
            else:
                click.echo(f"{key} = {_toml_value(shown)}")
        click.echo()


@config.command("example")
def example() -> None:
    """Print a documented example settings file."""
    click.echo(EXAMPLE.read_text(), nl=False)
