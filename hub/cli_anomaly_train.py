"""`gridwatch anomaly train|scenarios` and `gridwatch bench anomaly`: the hub side of detection.

Registered into the `anomaly` group (hub/cli_anomaly.py) and the `bench` group from the
end of hub/cli.py. Heavy modules are imported inside the commands.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

DETECTOR_NAMES = ("median_mad", "isolation_forest", "pca", "lof")
_CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Settings file (TOML).",
)


def _seconds(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    from simulators.publish import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _load_settings(config_path: Path | None) -> Any:
    from hub.settings import SettingsError, load_settings

    try:
        return load_settings(config_path)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("train")
@_CONFIG
@click.option(
    "--since",
    "since_s",
    default="14d",
    callback=_seconds,
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
def train_command(
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
    from anomaly.training import TrainConfig, TrainingError, train
    from hub.wiring import model_dir, query_target
    from ingest.influxql import InfluxQLError
    from sensors.registry import KINDS

    settings = _load_settings(config_path)
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

        def history() -> Any:
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
            model = train(history, config, meta=meta)
        except InfluxQLError as exc:
            raise click.ClickException(f"reading history: {exc}") from exc
        except TrainingError as exc:
            raise click.ClickException(str(exc)) from exc
    path = save_model(model, directory)
    report = {
        "model": str(path),
        "readings_read": {k: v // 2 for k, v in stats.readings.items()},
        "rows_skipped": {k: v // 2 for k, v in stats.skipped.items()},
        "kinds": {k: m.report for k, m in sorted(model.kinds.items())},
        "skipped_kinds": model.meta.get("skipped_kinds"),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
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


@click.command("scenarios")
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
@click.option("--duration", "duration_s", default="24h", callback=_seconds, show_default=True)
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
def scenarios_command(
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
    from sites.model import SiteError, load_site_ref

    try:
        site = load_site_ref(site_ref)
    except SiteError as exc:
        raise click.ClickException(str(exc)) from exc
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


@click.command("anomaly")
@click.option("--train-days", default=2.0, show_default=True)
@click.option("--hours", default=6.0, show_default=True, help="Simulated hours to score.")
@click.option(
    "--detector", type=click.Choice(DETECTOR_NAMES), default="median_mad", show_default=True
)
@click.option("--json", "as_json", is_flag=True)
def bench_anomaly_command(train_days: float, hours: float, detector: str, as_json: bool) -> None:
    """Cost per reading of online anomaly scoring (intake hook, scoring, events)."""
    from evaluation.anomaly_bench import format_bench, run_anomaly_bench

    result = run_anomaly_bench(train_days=train_days, hours=hours, detector=detector)
    click.echo(json.dumps(result, sort_keys=True) if as_json else format_bench(result))
