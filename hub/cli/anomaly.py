"""`gridwatch anomaly evaluate|train|scenarios`: the streaming detectors on labelled real
data, training the hub's model from InfluxDB history, and scoring simulated incidents."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hub.cli.inputs import load_site
from hub.cli.options import DETECTOR_NAMES, config_option, duration, load

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anomaly.history import HistoryStats
    from anomaly.streaming import StreamConfig
    from anomaly.training import AnomalyModel
    from evaluation.plots import Panel
    from sensors.base import Reading


@click.group("anomaly")
def anomaly() -> None:
    """Anomaly detectors: training, evaluation on real labelled data, scenarios."""


# -- evaluate --------------------------------------------------------------------------
def _stream_config(
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
    """The default streaming configuration with the command line's overrides."""
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


@anomaly.command("evaluate")
@click.option(
    "--nab",
    "nab_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="A directory in the NAB layout: data/<category>/<name>.csv and "
    "labels/combined_windows.json (config/profiles.json is used if present).",
)
@click.option(
    "--smoke",
    "smoke_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The smoke-detector CSV (shared/data/smoke/...).",
)
@click.option(
    "--occupancy",
    "occupancy_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="The UCI Occupancy directory (datatest.txt, datatraining.txt).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Draw series, scores, labelled spans and alarms into this PNG.",
)
@click.option(
    "--detector",
    type=click.Choice(DETECTOR_NAMES),
    default=None,
    help="Override the default configuration's detector.",
)
@click.option(
    "--features",
    default=None,
    help="Override the channels: comma-separated feature sets out of value, delta, "
    "lags, value+lags (each channel gets its own detector and likelihood).",
)
@click.option(
    "--window",
    type=click.IntRange(min=16),
    default=None,
    help="Override the detector's training window (rows).",
)
@click.option("--threshold", type=float, default=None, help="Override the alarm threshold.")
@click.option(
    "--refractory",
    type=click.IntRange(min=0),
    default=None,
    help="Override the rows kept quiet after an alarm.",
)
@click.option(
    "--trigger",
    type=click.Choice(["edge", "level"]),
    default=None,
    help="Alarm when the score crosses the threshold (edge) or on every row above.",
)
@click.option(
    "--refresh-every",
    type=click.IntRange(min=1),
    default=None,
    help="median_mad: recompute median and MAD every N learned rows (1 = exact).",
)
@click.option("--raw", is_flag=True, help="Threshold the detector's raw score (no likelihood).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--method",
    type=click.Choice(["stream", "context", "online"]),
    default="stream",
    show_default=True,
    help="stream: the streaming configuration above. context: the context-novelty detector "
    "(anomaly/context.py) with the fixed tuning/held-out split, beside NAB's published "
    "detectors, with its CPU cost per reading (--nab only; docs/anomaly-nab.md). online: "
    "the hub's default without a trained model, per-device baselines learned online "
    "(--smoke or --occupancy; docs/anomaly-hub.md).",
)
@click.option(
    "--warmup",
    "warmup_s",
    default=None,
    callback=duration,
    help="--method online: the device warm-up (90s, 30m, 1d; default: the hub's, a day). "
    "A run shorter than the warm-up flags nothing.",
)
@click.option(
    "--context-views",
    default=None,
    help="--method context: comma-separated views out of linear, compressed (default: both).",
)
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
    method: str,
    context_views: str | None,
    warmup_s: float | None,
) -> None:
    """Stream ONE detector configuration over real labelled data and score it.

    --nab scores with NAB's method (standard, reward_low_FP_rate, reward_low_FN_rate);
    --smoke times the first alarm after the Fire Alarm label turns on; --occupancy scores
    alarms against the occupancy label. Give exactly one of them. --method context runs
    the context-novelty detector on a NAB corpus instead (docs/anomaly-nab.md); --method
    online runs the hub's online baselines on --smoke or --occupancy.
    """
    targets = [t for t in (nab_dir, smoke_file, occupancy_dir) if t is not None]
    if len(targets) != 1:
        raise click.UsageError("give exactly one of --nab, --smoke, --occupancy")
    if warmup_s is not None and method != "online":
        raise click.UsageError("--warmup goes with --method online")
    if method == "online":
        stream_options = (detector, features, window, threshold, refractory, trigger)
        if any(o is not None for o in stream_options) or refresh_every is not None or raw:
            raise click.UsageError("--method online takes no streaming options but --warmup")
        if plot_file is not None:
            raise click.UsageError("--plot goes with --method stream or context")
        if nab_dir is not None:
            raise click.UsageError("--method online evaluates --smoke or --occupancy")
        _evaluate_online(smoke_file, occupancy_dir, warmup_s, as_json)
        return
    if method == "context":
        if nab_dir is None:
            raise click.UsageError("--method context evaluates a NAB corpus: give --nab")
        _evaluate_context_nab(nab_dir, context_views, as_json, plot_file)
        return
    if context_views is not None:
        raise click.UsageError("--context-views goes with --method context")
    config = _stream_config(
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
    from evaluation.nab import NabFormatError, NabSeries, load_nab_dir
    from evaluation.nab_eval import evaluate_nab, format_nab, nab_panels

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
        _save_plot(nab_panels(report, config.threshold), plot)


def _evaluate_context_nab(root: Path, views: str | None, as_json: bool, plot: Path | None) -> None:
    from anomaly.context import VIEWS, ContextParams
    from evaluation.nab import NabFormatError
    from evaluation.nab_eval import context_nab_figure, evaluate_context_nab, format_context_nab

    params = ContextParams()
    if views is not None:
        chosen = tuple(part.strip() for part in views.split(",") if part.strip())
        if not chosen or any(part not in VIEWS for part in chosen):
            raise click.BadParameter(
                f"choose a comma-separated list of {', '.join(VIEWS)}",
                param_hint="--context-views",
            )
        params = replace(params, views=chosen)
    click.echo(f"scoring the context-novelty detector on {root}", err=True)
    try:
        report = evaluate_context_nab(root, params)
    except NabFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_report(report.to_json(), format_context_nab(report), as_json)
    if plot is not None:
        context_nab_figure(report, plot)
        click.echo(f"plot written to {plot}", err=True)


def _evaluate_smoke(path: Path, config: StreamConfig, as_json: bool, plot: Path | None) -> None:
    from evaluation.smoke_eval import (
        SmokeFormatError,
        evaluate_smoke,
        format_smoke,
        load_smoke,
        smoke_panel,
    )

    try:
        rows = load_smoke(path).readings.shape[0]
        with click.progressbar(length=rows, label="scoring smoke run", file=sys.stderr) as bar:
            report = evaluate_smoke(path, config, bar.update)
    except SmokeFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_report(report.to_json(), format_smoke(report), as_json)
    if plot is not None:
        _save_plot([smoke_panel(report, config.threshold)], plot)


def _evaluate_occupancy(
    directory: Path, config: StreamConfig, as_json: bool, plot: Path | None
) -> None:
    from evaluation.occupancy_eval import (
        OccupancyFormatError,
        evaluate_occupancy,
        format_occupancy,
        load_occupancy,
        occupancy_panel,
    )

    try:
        rows = load_occupancy(directory).readings.shape[0]
        with click.progressbar(length=rows, label="scoring occupancy", file=sys.stderr) as bar:
            report = evaluate_occupancy(directory, config, bar.update)
    except OccupancyFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_report(report.to_json(), format_occupancy(report), as_json)
    if plot is not None:
        _save_plot([occupancy_panel(report, config.threshold)], plot)


def _evaluate_online(
    smoke_file: Path | None, occupancy_dir: Path | None, warmup_s: float | None, as_json: bool
) -> None:
    from anomaly.baselines import OnlineParams
    from evaluation.occupancy_eval import (
        OccupancyFormatError,
        evaluate_occupancy_online,
        format_occupancy_online,
    )
    from evaluation.smoke_eval import (
        SmokeFormatError,
        evaluate_smoke_online,
        format_smoke_online,
    )

    params = OnlineParams() if warmup_s is None else OnlineParams(warmup_ms=round(warmup_s * 1000))
    try:
        if smoke_file is not None:
            smoke = evaluate_smoke_online(smoke_file, params)
            _print_report(smoke.to_json(), format_smoke_online(smoke), as_json)
        elif occupancy_dir is not None:
            office = evaluate_occupancy_online(occupancy_dir, params)
            _print_report(office.to_json(), format_occupancy_online(office), as_json)
    except (SmokeFormatError, OccupancyFormatError) as exc:
        raise click.ClickException(str(exc)) from exc


# -- train -----------------------------------------------------------------------------
@anomaly.command("train")
@config_option(help="Settings file (TOML).")
@click.option(
    "--since",
    "since_s",
    default="14d",
    callback=duration,
    show_default=True,
    help="How much history to learn from, back from now: 90m, 36h, 14d.",
)
@click.option("--site", default=None, help="Only this site's devices (default: every site).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Model directory (default: anomaly.model_dir, else <hub.data_dir>/anomaly).",
)
@click.option(
    "--detector",
    type=click.Choice(DETECTOR_NAMES),
    default=None,
    help="Detector per kind and device (default: anomaly.detector).",
)
@click.option(
    "--false-alarms-per-device-day",
    "fa_rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Threshold target on held-out history.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the training report as JSON.")
def train(
    config_path: Path | None,
    since_s: float,
    site: str | None,
    out_dir: Path | None,
    detector: str | None,
    fa_rate: float | None,
    as_json: bool,
) -> None:
    """Learn each kind's normal from InfluxDB history and save the model for the hub."""
    from anomaly.history import HistoryStats, chunks, read_history
    from anomaly.model_store import save_model
    from anomaly.training import TrainConfig, TrainingError
    from anomaly.training import train as train_model
    from hub.wiring import model_dir, query_target
    from ingest.influxql import InfluxQLError
    from sensors.registry import KINDS

    settings = load(config_path)
    config = TrainConfig(
        detector=detector or settings.anomaly.detector,
        false_alarms_per_device_day=fa_rate or settings.anomaly.false_alarms_per_device_day,
    )
    end = datetime.now(UTC)
    start = end - timedelta(seconds=since_s)
    start_ns, end_ns = int(start.timestamp() * 1e9), int(end.timestamp() * 1e9)
    target = query_target(settings)
    kinds = list(KINDS.values())
    stats = HistoryStats()
    n_chunks = len(chunks(start_ns, end_ns))
    directory = out_dir or model_dir(settings)
    meta: dict[str, str | int | float | None] = {
        "site": site,
        "since": start.isoformat(),
        "until": end.isoformat(),
        "influx": settings.influx.url,
    }
    with click.progressbar(
        length=2 * n_chunks, label="reading history (2 passes)", file=sys.stderr
    ) as bar:

        def history() -> Iterator[Reading]:
            return read_history(
                target,
                kinds,
                start_ns,
                end_ns,
                site=site,
                stats=stats,
                on_chunk=lambda _rows: bar.update(1),
            )

        try:
            model = train_model(history, config, meta=meta)
        except InfluxQLError as exc:
            raise click.ClickException(f"reading history: {exc}") from exc
        except TrainingError as exc:
            raise click.ClickException(str(exc)) from exc
    path = save_model(model, directory)
    if as_json:
        click.echo(json.dumps(_training_report(model, stats, path), indent=2, sort_keys=True))
    else:
        _print_training(model, stats, path)


def _training_report(model: AnomalyModel, stats: HistoryStats, path: Path) -> dict[str, object]:
    """`train --json`; history was read twice, so its counts are halved."""
    return {
        "model": str(path),
        "readings_read": {k: v // 2 for k, v in stats.readings.items()},
        "rows_skipped": {k: v // 2 for k, v in stats.skipped.items()},
        "kinds": {k: m.report for k, m in sorted(model.kinds.items())},
        "skipped_kinds": model.meta.get("skipped_kinds"),
    }


def _print_training(model: AnomalyModel, stats: HistoryStats, path: Path) -> None:
    click.echo(f"model saved: {path}")
    for kind, km in sorted(model.kinds.items()):
        r = km.report
        click.echo(
            f"  {kind:<8} {r['vectors']:>8} vectors, {r['devices']} devices "
            f"({r['own_detectors']} with their own {km.detector}), threshold "
            f"{km.threshold.value:.4g}, {r['flagged_in_training']} flagged rows left out"
        )
    if model.meta.get("skipped_kinds"):
        click.echo(f"  no model (too little history): {model.meta['skipped_kinds']}")
    if stats.skipped:
        click.echo(f"  rows skipped: {sum(stats.skipped.values()) // 2} ({stats.skipped})")


# -- scenarios -------------------------------------------------------------------------
@anomaly.command("scenarios")
@click.option(
    "--site", "site_ref", default="yingyang", show_default=True, help="Site file or demo site name."
)
@click.option(
    "--scenario",
    "names",
    default="stuck_sensor,cloned_card,after_hours_access",
    show_default=True,
    help="Scenario names (comma-separated) or `all`.",
)
@click.option("--seed", default=3, show_default=True)
@click.option(
    "--train-days",
    default=7.0,
    show_default=True,
    help="Days of clean background (same devices, no incidents) to train on, before the run.",
)
@click.option("--duration", "duration_s", default="24h", callback=duration, show_default=True)
@click.option(
    "--detector", type=click.Choice(DETECTOR_NAMES), default="median_mad", show_default=True
)
@click.option("--false-alarms-per-device-day", "fa_rate", default=0.5, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Draw each label's device: score, threshold, labelled span, flags (PNG).",
)
def scenarios(
    site_ref: str,
    names: str,
    seed: int,
    train_days: float,
    duration_s: float,
    detector: str,
    fa_rate: float,
    as_json: bool,
    plot_file: Path | None,
) -> None:
    """Train on clean simulated days, then report detection per labelled incident."""
    from anomaly.training import TrainConfig
    from evaluation.anomaly_scenarios import (
        evaluate_scenarios,
        format_report,
        plot_labels,
        train_on_background,
    )
    from simulators.scenarios import SCENARIOS, ScenarioError, run_scenarios

    site = load_site(site_ref)
    chosen = list(SCENARIOS) if names == "all" else [n.strip() for n in names.split(",") if n]
    start = datetime(2026, 3, 2, tzinfo=UTC)
    config = TrainConfig(detector=detector, false_alarms_per_device_day=fa_rate)
    click.echo(f"training on {train_days:g} clean days of {site.site}…", err=True)
    started = time.perf_counter()
    model, n_train = train_on_background(site, end=start, days=train_days, seed=seed, config=config)
    train_s = time.perf_counter() - started
    click.echo(f"simulating {duration_s / 3600:g} h with {', '.join(chosen)}…", err=True)
    try:
        messages, labels = run_scenarios(
            site, chosen, start=start, duration_s=duration_s, seed=seed
        )
    except ScenarioError as exc:
        raise click.ClickException(str(exc)) from exc
    with click.progressbar(length=len(messages), label="scoring", file=sys.stderr) as bar:
        report = evaluate_scenarios(
            site,
            model,
            messages,
            labels,
            span_ms=round(duration_s * 1000),
            on_progress=bar.update,
        )
    if plot_file is not None:
        plot_labels(report, model, plot_file)
        click.echo(f"plot: {plot_file}", err=True)
    if as_json:
        out = report.to_json()
        out.update(
            train_readings=n_train,
            train_s=round(train_s, 1),
            detector=detector,
            thresholds={k: m.threshold.value for k, m in model.kinds.items()},
        )
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    click.echo(format_report(report))
    click.echo(f"trained on {n_train} readings in {train_s:.1f} s ({detector})")
