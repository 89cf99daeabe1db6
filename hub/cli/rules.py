"""`gridwatch rules check|evaluate`: rule files, and their score against simulated ground truth."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hub.cli.inputs import load_site, replays, scenario_names
from hub.cli.options import REPLAY_NAMES, duration

if TYPE_CHECKING:
    from evaluation.rules_eval import EvalRun
    from rules.schema import Rule
    from simulators.engine import SimMessage
    from simulators.labels import Label
    from sites.model import Site

DEFAULT_START = datetime(2026, 3, 2, tzinfo=UTC)


@click.group("rules")
def rules() -> None:
    """Rule files: check them, and score them against simulated ground truth."""


def _load_rules(paths: Sequence[Path]) -> list[Rule]:
    from rules.schema import RuleError, load_rules

    try:
        return load_rules(paths)
    except RuleError as exc:
        raise click.ClickException(str(exc)) from exc


@rules.command("check")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
def check(paths: tuple[Path, ...]) -> None:
    """Validate rule files (default: the built-in pack); errors name their line."""
    loaded = _load_rules(paths)
    for rule in loaded:
        click.echo(f"{rule.id:<24} {rule.severity.value:<8} {rule.condition.type:<12} {rule.title}")
    click.echo(f"{len(loaded)} rules OK", err=True)


@rules.command("evaluate")
@click.option("--site", "site_ref", required=True, help="Site file or demo site name.")
@click.option("--scenario", "scenario_list", default=None, help="NAME[,NAME...] or all.")
@click.option(
    "--replay",
    "replay_names",
    multiple=True,
    type=click.Choice(REPLAY_NAMES),
    help="Real-data replay(s) with their ground truth (instead of scenarios).",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--duration",
    "duration_s",
    callback=duration,
    default=None,
    help="90s, 10m, 2h, 1d (default: what the scenarios need).",
)
@click.option(
    "--start", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]), default=None
)
@click.option(
    "--rules",
    "rule_paths",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Rule files (default: built-in pack).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("../shared/data"),
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
@click.option("--show-misses", is_flag=True, help="List missed labels and false alarms.")
def evaluate(
    site_ref: str,
    scenario_list: str | None,
    replay_names: tuple[str, ...],
    seed: int,
    duration_s: float | None,
    start: datetime | None,
    rule_paths: tuple[Path, ...],
    data_dir: Path,
    as_json: bool,
    show_misses: bool,
) -> None:
    """Run scenarios (or replays) through decode → rules → events in simulated time and
    print precision, recall, detection delay and false alarms per incident kind."""
    if not scenario_list and not replay_names:
        raise click.UsageError("give --scenario NAME[,...]|all and/or --replay")
    if scenario_list and replay_names:
        raise click.UsageError("--scenario and --replay cannot be combined yet")
    names = scenario_names(scenario_list)
    rule_list = _load_rules(rule_paths)
    loaded = load_site(site_ref)
    span_s = duration_s if duration_s is not None else _default_span_s(names, replay_names)
    begin = start or DEFAULT_START
    if begin.tzinfo is None:
        begin = begin.replace(tzinfo=UTC)
    click.echo(f"simulating {loaded.site} for {span_s / 3600:.1f} h (seed {seed})", err=True)
    if replay_names:
        messages, labels = replays(
            loaded, replay_names, data_dir, begin, begin.timestamp() + span_s
        )
        messages.sort(key=lambda m: m.sim_ms)
    else:
        messages, labels = _scenarios(loaded, names, begin, span_s, seed)
    run = _evaluate(loaded, messages, labels, rule_list, span_s)
    _print_run(run, rule_list, as_json)
    if show_misses:
        _print_misses(run)


def _default_span_s(names: Sequence[str], replay_names: Sequence[str]) -> float:
    """Simulated seconds long enough for the slowest incident asked for."""
    if "welfare_check" in names:
        return 40 * 3600.0
    if "parking_overstay" in names:
        return 28 * 3600.0
    return 7 * 24 * 3600.0 if replay_names else 6 * 3600.0


def _scenarios(
    site: Site, names: list[str], begin: datetime, span_s: float, seed: int
) -> tuple[list[SimMessage], list[Label]]:
    """The scenarios' messages and labels, plus the labels of what background traffic holds."""
    from simulators.scenarios import ScenarioError, background_labels, run_scenarios

    try:
        messages, labels = run_scenarios(site, names, start=begin, duration_s=span_s, seed=seed)
    except ScenarioError as exc:
        raise click.ClickException(f"scenario: {exc}") from exc
    labels += background_labels(site, messages, labels)
    return messages, labels


def _evaluate(
    site: Site,
    messages: list[SimMessage],
    labels: list[Label],
    rule_list: list[Rule],
    span_s: float,
) -> EvalRun:
    """Run the rules over the messages with a progress bar on stderr."""
    from evaluation.rules_eval import evaluate as evaluate_rules

    with click.progressbar(length=len(messages), label="rules", file=sys.stderr) as bar:
        done = [0]

        def progress(count: int) -> None:
            bar.update(count - done[0])
            done[0] = count

        run = evaluate_rules(
            [site],
            messages,
            labels,
            rule_list,
            span_ms=round(span_s * 1000),
            on_progress=progress,
        )
        bar.update(len(messages) - done[0])
    return run


def _print_run(run: EvalRun, rule_list: list[Rule], as_json: bool) -> None:
    from evaluation.alarm_quality import Targets, format_table, misses
    from evaluation.rules_eval import wait_s

    if as_json:
        click.echo(json.dumps(run.to_json(), indent=2, sort_keys=True))
        return
    targets = Targets(wait_s=wait_s(rule_list))
    click.echo(format_table(run.report, targets=targets))
    click.echo(
        f"{run.messages} messages ({run.rejected} rejected), {len(run.labels)} labels, "
        f"{len(run.events)} events, {run.elapsed_s:.1f} s"
    )
    if run.doors is not None:
        click.echo(run.doors.describe())
    for line in misses(run.report, targets):
        click.echo(f"target missed: {line}")


def _print_misses(run: EvalRun) -> None:
    """Missed labels and false alarms, on stderr."""
    from evaluation.alarm_quality import unmatched
    from evaluation.rules_eval import GRACE_MS

    missed, false_alarms = unmatched(run.labels, run.events, grace_ms=GRACE_MS)
    for label in missed:
        click.echo(f"missed  {label.kind.value} {','.join(label.devices[:3])} {label.id}", err=True)
    for event in false_alarms:
        click.echo(f"false   {event.incident} {event.device} {event.message}", err=True)
