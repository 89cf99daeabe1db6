"""What `simulate`, `rules evaluate` and `anomaly scenarios` play: a site, scenarios by name,
real-data replays. Each problem becomes the command's error message.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from simulators.engine import SimMessage
    from simulators.labels import Label
    from simulators.replay import Replay
    from sites.model import Site

SMOKE_CSV = Path("smoke") / "smoke_detection_iot_first10080_allcols.csv"
PARKING_CSV = Path("parking") / "birmingham_parking.csv"
DOORS_DIR = Path("doors")


def load_site(ref: str) -> Site:
    """`--site`: a site file or a demo site name; problems listed with their lines."""
    from sites.model import SiteError, load_site_ref

    try:
        return load_site_ref(ref)
    except SiteError as exc:
        raise click.ClickException(str(exc)) from exc


def scenario_names(text: str | None) -> list[str]:
    """`--scenario NAME[,NAME...]|all` as scenario names, each checked."""
    from simulators.scenarios import SCENARIOS

    if not text:
        return []
    names = list(SCENARIOS) if text == "all" else text.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise click.BadParameter(
            f"unknown scenario(s) {unknown}; see gridwatch simulate --list",
            param_hint="--scenario",
        )
    return names


def _replay(site: Site, name: str, data_dir: Path, start: datetime) -> Replay:
    from simulators.replay import replay_doors, replay_parking, replay_smoke

    if name == "smoke":
        return replay_smoke(site, data_dir / SMOKE_CSV, start=start)
    if name == "parking":
        return replay_parking(site, data_dir / PARKING_CSV, start=start)
    return replay_doors(site, data_dir / DOORS_DIR, start=start)


def replays(
    site: Site, names: Iterable[str], data_dir: Path, start: datetime, end_s: float
) -> tuple[list[SimMessage], list[Label]]:
    """Messages and the labels within the run of each requested dataset replay (`--replay`,
    files under `--data-dir`); the replays' notes go to stderr."""
    names = tuple(names)
    if names and not data_dir.is_dir():
        raise click.BadParameter(f"{data_dir} is not a directory", param_hint="--data-dir")
    messages: list[SimMessage] = []
    labels: list[Label] = []
    for name in names:
        replay = _replay(site, name, data_dir, start)
        messages.extend(replay.messages)
        # Only incidents that begin within the simulated span can be detected.
        labels.extend(label for label in replay.labels if label.start_ms < end_s * 1000)
        for note in replay.notes:
            click.echo(f"replay {name}: {note}", err=True)
    return messages, labels
