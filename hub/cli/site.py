"""`gridwatch site generate|validate`: site files (cells, workers, devices, schedules)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("site")
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
def generate(cells: int, devices: int, seed: int, site_id: str, out: Path | None) -> None:
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
def validate(path: Path) -> None:
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
