"""`gridwatch anomaly ...`: evaluate the streaming detectors on labelled real data."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from anomaly.streaming import StreamConfig
    from evaluation.plots import Panel


@click.group()
def anomaly() -> None:
    """Anomaly detectors: training, evaluation on real labelled data, scenarios."""


def _config(
    detector: str | None,
    features: str | None,
    window: int | None,
    threshold: float | None,
    refractory: int | None,
    trigger: str | None,
    refresh_every: int | None,
    raw: bool,
    seed: int,
) -> StreamConfig:
    from anomaly.streaming import default_config

    config = default_config()
    if detector is not None:
        config = replace(config, detector=detector)
    if features is not None:
        from anomaly.streaming import FEATURE_SETS

        chosen = tuple(part.strip() for part in features.split(",") if part.strip())
        unknown = [part for part in chosen if part not in FEATURE_SETS]
        if unknown or not chosen:
            raise click.BadParameter(
                f"choose a comma-separated list of {', '.join(FEATURE_SETS)}",
                param_hint="--features",
            )
        config = replace(config, features=chosen)
    if window is not None:
        config = replace(config, window=window)
    if raw:
        config = replace(config, likelihood=False)
    if threshold is not None:
        config = replace(config, threshold=threshold)
    if refractory is not None:
        config = replace(config, refractory=refractory)
    if trigger is not None:
        config = replace(config, trigger=trigger)
    if refresh_every is not None:
        config = replace(config, refresh_every=refresh_every)
    return replace(config, seed=seed)


@anomaly.command()
@click.option("--nab", "nab_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="A directory in the NAB layout: data/<category>/<name>.csv and "
              "labels/combined_windows.json (config/profiles.json is used if present).")
@click.option("--smoke", "smoke_file", type=click.Path(path_type=Path, dir_okay=False,
              exists=True), help="The smoke-detector CSV (shared/data/smoke/...).")
@click.option("--occupancy", "occupancy_dir", type=click.Path(path_type=Path, file_okay=False,
              exists=True), help="The UCI Occupancy directory (datatest.txt, datatraining.txt).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--plot", "plot_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Draw series, scores, labelled spans and alarms into this PNG.")
@click.option("--detector", type=click.Choice(
    ["median_mad", "isolation_forest", "pca", "lof"]), default=None,
    help="Override the default configuration's detector.")
@click.option("--features", default=None,
              help="Override the channels: comma-separated feature sets out of value, delta, "
              "lags, value+lags (each channel gets its own detector and likelihood).")
@click.option("--window", type=click.IntRange(min=16), default=None,
              help="Override the detector's training window (rows).")
@click.option("--threshold", type=float, default=None, help="Override the alarm threshold.")
@click.option("--refractory", type=click.IntRange(min=0), default=None,
              help="Override the rows kept quiet after an alarm.")
@click.option("--trigger", type=click.Choice(["edge", "level"]), default=None,
              help="Alarm when the score crosses the threshold (edge) or on every row above.")
@click.option("--refresh-every", type=click.IntRange(min=1), default=None,
              help="median_mad: recompute median and MAD every N learned rows (1 = exact).")
@click.option("--raw", is_flag=True, help="Threshold the detector's raw score (no likelihood).")
@click.option("--seed", type=int, default=0, show_default=True)
def evaluate(
    nab_dir: Path | None,
    smoke_file: Path | None,
    occupancy_dir: Path | None,
    as_json: bool,
    plot_file: Path | None,
    detector: str | None,
    features: str | None,
    window: int | None,
    threshold: float | None,
    refractory: int | None,
    trigger: str | None,
    refresh_every: int | None,
    raw: bool,
    seed: int,
) -> None:
    """Stream ONE detector configuration over real labelled data and score it.

    --nab scores with NAB's method (standard, reward_low_FP_rate, reward_low_FN_rate);
    --smoke times the first alarm after the Fire Alarm label turns on; --occupancy scores
    alarms against the occupancy label. Give exactly one of them.
    """
    targets = [t for t in (nab_dir, smoke_file, occupancy_dir) if t is not None]
    if len(targets) != 1:
        raise click.UsageError("give exactly one of --nab, --smoke, --occupancy")
    config = _config(
        detector, features, window, threshold, refractory, trigger, refresh_every, raw, seed
    )
    if nab_dir is not None:
        _evaluate_nab(nab_dir, config, as_json, plot_file)
    elif smoke_file is not None:
        _evaluate_smoke(smoke_file, config, as_json, plot_file)
    elif occupancy_dir is not None:
        _evaluate_occupancy(occupancy_dir, config, as_json, plot_file)


def _print_report(as_json_form: object, as_text: str, as_json: bool) -> None:
    """Print an evaluation report as JSON (--json) or as text."""
    click.echo(json.dumps(as_json_form, indent=2, sort_keys=True) if as_json else as_text)


def _save_plot(panels: list[Panel], plot: Path) -> None:
    from evaluation.plots import plot_panels

    plot_panels(panels, plot)
    click.echo(f"plot written to {plot}", err=True)


def _evaluate_nab(root: Path, config: StreamConfig, as_json: bool, plot: Path | None) -> None:
    from evaluation.nab import NabFormatError, NabSeries, load_nab_dir, probationary_length
    from evaluation.nab_eval import evaluate_nab, format_nab

    try:
        series = load_nab_dir(root)
        length = sum(len(one.timestamps) for one in series)
        with click.progressbar(length=length, label="scoring NAB series", file=sys.stderr) as bar:

            def announce(one: NabSeries) -> None:
                click.echo(f" {one.name}: {len(one.timestamps)} rows", err=True)

            report = evaluate_nab(
                root, config, on_series=announce, on_progress=bar.update, series=series
            )
    except NabFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_report(report.to_json(), format_nab(report), as_json)
    if plot is not None:
        from evaluation.plots import Panel

        panels = [
            Panel(
                title=f"{run.series.name}: standard raw {run.scores['standard'].raw:.2f}, "
                f"{run.scores['standard'].detected_windows}/{run.scores['standard'].windows}"
                f" windows, {run.scores['standard'].fp} FP",
                values=run.series.values,
                score=run.result.score,
                alarms=run.result.alarms,
                spans=[(w.left, w.right) for w in run.series.windows],
                threshold=config.threshold,
                marker=probationary_length(len(run.series.timestamps)),
                marker_label="end of probation",
            )
            for run in report.runs
        ]
        _save_plot(panels, plot)


def _evaluate_smoke(path: Path, config: StreamConfig, as_json: bool, plot: Path | None) -> None:
    from evaluation.smoke_eval import SmokeFormatError, evaluate_smoke, format_smoke, load_smoke

    try:
        rows = load_smoke(path).readings.shape[0]
        with click.progressbar(length=rows, label="scoring smoke run", file=sys.stderr) as bar:
            report = evaluate_smoke(path, config, bar.update)
    except SmokeFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_report(report.to_json(), format_smoke(report), as_json)
    if plot is not None:
        from evaluation.plots import Panel
        from evaluation.smoke_eval import SMOKE_CHANNELS

        spans = [] if report.transition_row is None else [
            (report.transition_row, report.data.readings.shape[0] - 1)]
        channel = SMOKE_CHANNELS.index("TVOC[ppb]")
        _save_plot([Panel(
            title=f"smoke run, TVOC[ppb] shown; first alarm after fire label: "
            f"{report.delay_s} s; false alarms before: {report.false_alarms_before}",
            values=report.data.readings[:, channel],
            score=report.result.score,
            alarms=report.result.alarms,
            spans=spans,
            threshold=config.threshold,
            span_label="Fire Alarm = 1",
        )], plot)


def _evaluate_occupancy(
    directory: Path, config: StreamConfig, as_json: bool, plot: Path | None
) -> None:
    from evaluation.occupancy_eval import (
        OCCUPANCY_CHANNELS,
        OccupancyFormatError,
        evaluate_occupancy,
        format_occupancy,
        load_occupancy,
    )

    try:
        rows = load_occupancy(directory).readings.shape[0]
        with click.progressbar(length=rows, label="scoring occupancy", file=sys.stderr) as bar:
            report = evaluate_occupancy(directory, config, bar.update)
    except OccupancyFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_report(report.to_json(), format_occupancy(report), as_json)
    if plot is not None:
        from evaluation.plots import Panel

        channel = OCCUPANCY_CHANNELS.index("CO2")
        _save_plot([Panel(
            title=f"UCI occupancy, CO2 shown: {report.caught}/{len(report.spans)} episodes "
            f"caught, {report.alarms_outside} alarms outside, ROC AUC {report.roc_auc:.3f}",
            values=report.data.readings[:, channel],
            score=report.result.score,
            alarms=report.result.alarms,
            spans=[(w.left, w.right) for w in report.spans],
            threshold=config.threshold,
            span_label="occupied",
        )], plot)
