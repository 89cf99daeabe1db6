"""`gridwatch simulate`: a site's devices on the broker, each under its own MQTT identity."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hub.cli.inputs import load_site, replays, scenario_names
from hub.cli.options import REPLAY_NAMES, config_option, duration, load
from hub.settings import MqttSettings, Settings
from hub.supervision import setup_logging

if TYPE_CHECKING:
    from simulators.engine import SimMessage
    from simulators.labels import Label
    from simulators.publish import SimProgress, SimSummary
    from sites.model import Site


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


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 time with an offset."""
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


@click.command("simulate")
@config_option()
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
    callback=duration,
    default=None,
    help="90s, 10m, 2h, 1d (required unless --list).",
)
@click.option(
    "--scenario",
    "scenario_list",
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
    "replay_names",
    type=click.Choice(REPLAY_NAMES),
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
    scenario_list: str | None,
    list_scenarios: bool,
    start: datetime | None,
    broker: str | None,
    gateways: int | None,
    replay_names: tuple[str, ...],
    data_dir: Path,
    labels_path: Path | None,
) -> None:
    """Simulate a site's devices on the broker, each under its own MQTT identity."""
    from simulators.publish import now_utc_second
    from simulators.scenarios import ScenarioError, run_scenarios

    if list_scenarios:
        _list_scenarios()
        return
    if site_ref is None or duration_s is None:
        raise click.UsageError("--site and --duration are required (unless --list)")
    names = scenario_names(scenario_list)
    if names and replay_names:
        raise click.UsageError("--scenario and --replay cannot be combined yet")
    settings = load(config_path)
    setup_logging("WARNING")
    settings = _with_broker(settings, broker)
    loaded = load_site(site_ref)
    start = start or now_utc_second()
    end_s = start.timestamp() + duration_s
    extra, labels = replays(loaded, replay_names, data_dir, start, end_s)
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
    _warn_if_ahead(settings, speed, end_s)
    summary = _run(
        settings,
        loaded,
        speed=speed,
        duration_s=duration_s,
        seed=seed,
        start=start,
        gateways=gateways,
        extra=extra,
        source=source,
    )
    _print_summary(summary, labels)


def _list_scenarios() -> None:
    from simulators.scenarios import SCENARIOS

    for name, scenario in SCENARIOS.items():
        click.echo(f"{name:<24} {scenario.kind.value:<24} {scenario.description}")


def _with_broker(settings: Settings, broker: str | None) -> Settings:
    """The settings with `--broker` as mqtt.url, if given."""
    if broker is None:
        return settings
    try:
        mqtt = MqttSettings.model_validate({**settings.mqtt.model_dump(), "url": broker})
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--broker") from exc
    return settings.model_copy(update={"mqtt": mqtt})


def _warn_if_ahead(settings: Settings, speed: float | None, end_s: float) -> None:
    """An accelerated run into the future is refused by a hub beyond hub.max_future_s."""
    ahead_s = end_s - time.time()
    if speed != 1 and ahead_s > settings.hub.max_future_s:
        click.echo(
            f"note: simulated time runs up to {ahead_s / 3600:.1f} h past now; a hub refuses "
            f"readings more than {settings.hub.max_future_s:.0f} s ahead of its clock "
            "(choose --start in the past for accelerated runs)",
            err=True,
        )


def _run(
    settings: Settings,
    site: Site,
    *,
    speed: float | None,
    duration_s: float,
    seed: int,
    start: datetime,
    gateways: int | None,
    extra: list[SimMessage],
    source: list[SimMessage] | None,
) -> SimSummary:
    """Run the simulation with a progress bar on stderr."""
    from hub.wiring import broker_options
    from simulators.publish import Simulation, SimulationError

    with click.progressbar(
        length=1000, label=f"simulating {site.site}", file=sys.stderr, show_eta=True
    ) as bar:
        done = 0

        def on_progress(progress: SimProgress) -> None:
            nonlocal done
            reached = round(progress.fraction * 1000)
            if reached > done:
                bar.update(reached - done)
                done = reached

        try:
            simulation = Simulation(
                site,
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
            return asyncio.run(simulation.run())
        except (OSError, SimulationError) as exc:
            raise click.ClickException(f"simulation failed: {exc}") from exc


def _print_summary(summary: SimSummary, labels: list[Label]) -> None:
    from simulators.publish import format_summary

    click.echo(format_summary(summary))
    if labels:
        injected = Counter(label.kind for label in labels)
        click.echo(f"incidents {len(labels)}")
        for kind, count in sorted(injected.items()):
            click.echo(f"  {kind:<24} {count}")
