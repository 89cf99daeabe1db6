"""What every `gridwatch` command shares: the `--config` option, the settings loader,
logging, and option values parsed the same way everywhere.

Only light modules are imported here: this runs on every `gridwatch --help`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

import click

from hub.settings import Settings, SettingsError, load_settings

_F = TypeVar("_F", bound=Callable[..., object])

CONFIG_HELP: Final = "TOML settings file (environment GRIDWATCH_<SECTION>__<KEY> overrides it)."

# The same names as anomaly.streaming.DETECTOR_NAMES, which is not imported here: it
# brings numpy and scikit-learn into `gridwatch --help`.
DETECTOR_NAMES: Final = ("median_mad", "isolation_forest", "pca", "lof")
BENCH_DETECTOR_NAMES: Final = (*DETECTOR_NAMES, "online")
"""`bench anomaly`: a trained model's detector, or `online` (the hub's default without a
trained model: per-device baselines learned online, `anomaly.baselines`)."""
REPLAY_NAMES: Final = ("smoke", "parking", "doors")
"""Real datasets `simulate` and `rules evaluate` can replay onto a site (see cli.inputs)."""


def config_option(help: str = CONFIG_HELP) -> Callable[[_F], _F]:
    """`--config FILE`, passed to the command as `config_path` (None: defaults + environment).

    `help` names what the command reads from the file, when that is worth saying.
    """
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help=help,
    )


def load(config_path: Path | None) -> Settings:
    """The settings from `--config` and the environment; a problem ends the command."""
    try:
        return load_settings(config_path)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """Option callback: 90s, 10m, 2h, 1d as seconds (simulators.publish.parse_duration)."""
    from simulators.publish import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
