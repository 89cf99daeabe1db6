"""The hub's default anomaly scoring (online baselines, no trained model) on real data.

Data: ../shared/data/smoke/smoke_detection_iot_first10080_allcols.csv (Kaggle "Smoke
Detection Dataset", first 10,080 rows, via YogaNovvaindra/EcoGuardian-ml @75909c0) and
../shared/data/occupancy (UCI Occupancy Detection, Candanedo & Feldheim 2016, via
LuisM78/Occupancy-detection-data @ba2b1d7). See ../shared/data/README.md.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pytest
from click.testing import CliRunner

from anomaly.baselines import OnlineParams, OnlineScorer
from evaluation.occupancy_eval import (
    OccupancyOnlineReport,
    evaluate_occupancy_online,
    format_occupancy_online,
    load_occupancy,
    occupancy_readings,
)
from evaluation.smoke_eval import (
    ONLINE_SHORT_WARMUP_S,
    SmokeOnlineReport,
    evaluate_smoke_online,
    format_smoke_online,
    run_online,
)
from hub.cli import main
from hub.cli.options import BENCH_DETECTOR_NAMES, DETECTOR_NAMES

DATA: Final = Path(__file__).resolve().parents[3] / "shared" / "data"
SMOKE: Final = DATA / "smoke" / "smoke_detection_iot_first10080_allcols.csv"
OCCUPANCY: Final = DATA / "occupancy"
SHORT: Final = OnlineParams(warmup_ms=round(ONLINE_SHORT_WARMUP_S * 1000))


@pytest.fixture(scope="module")
def smoke_default() -> SmokeOnlineReport:
    return evaluate_smoke_online(SMOKE)


@pytest.fixture(scope="module")
def smoke_short() -> SmokeOnlineReport:
    return evaluate_smoke_online(SMOKE, SHORT)


@pytest.fixture(scope="module")
def office() -> OccupancyOnlineReport:
    return evaluate_occupancy_online(OCCUPANCY)


def test_the_default_is_the_hubs_default() -> None:
    # What hub.wiring.build_anomaly builds from the default settings.
    from hub.settings import Settings

    cfg = Settings().anomaly
    assert OnlineParams().warmup_ms == round(cfg.warmup_s * 1000)
    assert OnlineParams().repeat_after_ms == round(cfg.repeat_after_s * 1000)
    assert OnlineParams().clear_after_ms == round(cfg.clear_after_s * 1000)


def test_smoke_run_is_shorter_than_the_default_warmup(smoke_default: SmokeOnlineReport) -> None:
    j = smoke_default.to_json()
    assert j["rows"] == 10081 and j["transition_s"] == 3178.0
    assert j["duration_s"] == 10080.0 and j["warmup_s"] == 86400.0
    assert smoke_default.shorter_than_warmup
    # No device alarms during its warm-up: the whole run is learned, nothing is raised.
    assert not any(flagged for _score, flagged in smoke_default.run.scores.values())
    assert smoke_default.run.detections == ()
    assert j["delay_s"] is None and j["false_alarms_before"] == 0
    assert "shorter than the device warm-up" in format_smoke_online(smoke_default)


def test_smoke_with_a_shorter_warmup_times_the_fire(smoke_short: SmokeOnlineReport) -> None:
    j = smoke_short.to_json()
    assert not smoke_short.shorter_than_warmup and j["warmup_s"] == ONLINE_SHORT_WARMUP_S
    start = smoke_short.start_ms
    # Nothing flagged or raised inside the warm-up.
    assert all(
        ts - start >= SHORT.warmup_ms for ts, (_s, flag) in smoke_short.run.scores.items() if flag
    )
    assert all(d.at_ms - start >= SHORT.warmup_ms for d in smoke_short.run.detections)
    # The first alarm is a raised detection at or after the label's rise, and it is the
    # earliest one there.
    assert smoke_short.transition_ms is not None and smoke_short.first_alarm_ms is not None
    assert smoke_short.first_alarm_ms >= smoke_short.transition_ms
    assert j["delay_s"] == (smoke_short.first_alarm_ms - smoke_short.transition_ms) / 1000
    raised_after = [
        d.at_ms
        for d in smoke_short.run.detections
        if d.raised and d.at_ms >= smoke_short.transition_ms
    ]
    assert smoke_short.first_alarm_ms == min(raised_after)
    opened = smoke_short.run.opened_ms()
    assert j["false_alarms_before"] == sum(t < smoke_short.transition_ms for t in opened)
    assert j["conditions_opened"] == len(opened) >= 1


def test_online_run_matches_the_scorer_unbatched(smoke_short: SmokeOnlineReport) -> None:
    """The service in batches decides as one scorer over the whole run does."""
    from evaluation.anomaly_scenarios import decoded
    from simulators.replay import replay_smoke
    from sites.model import load_site_ref

    replay = replay_smoke(load_site_ref("yingyang"), SMOKE, start=datetime(2026, 3, 2, tzinfo=UTC))
    readings = decoded(replay.messages)
    scorer = OnlineScorer(SHORT)
    detections, _ = scorer.score_batch(readings)
    detections += scorer.tick(readings[-1].ts_ns // 1_000_000)
    assert [(d.at_ms, d.raised) for d in detections] == [
        (d.at_ms, d.raised) for d in smoke_short.run.detections
    ]
    again = run_online(readings[:600], SHORT)
    assert again.readings == 600 and len(again.scores) == 600


def test_occupancy_default_warmup_and_episodes(office: OccupancyOnlineReport) -> None:
    j = office.to_json()
    assert j["rows"] == 10808 and j["skipped_rows"] == 0 and j["warmup_s"] == 86400.0
    readings = occupancy_readings(load_occupancy(OCCUPANCY))
    assert len(readings) == 10808
    assert {"temperature", "humidity", "eco2"} <= set(readings[0].fields)
    first = readings[0].ts_ns // 1_000_000
    warm = office.warmup_end_row
    assert readings[warm].ts_ns // 1_000_000 - first >= 86_400_000
    assert readings[warm - 1].ts_ns // 1_000_000 - first < 86_400_000
    # No alarm in the warm-up; every condition opened is inside or outside an episode.
    flagged_ts = [ts for ts, (_s, flag) in office.run.scores.items() if flag]
    assert all(ts - first >= 86_400_000 for ts in flagged_ts)
    assert office.flagged_inside + office.flagged_outside == len(flagged_ts)
    assert office.opened_inside + office.opened_outside == len(office.run.opened_ms())
    assert 0 < office.scored_spans < len(office.spans) == j["episodes"]
    assert office.caught <= office.scored_spans
    assert len(office.delays_min) == office.caught == j["episodes_caught"]
    assert all(d >= 0 for d in office.delays_min)
    assert "occupied episodes after the warm-up caught" in format_occupancy_online(office)


def test_cli_evaluates_the_online_default(smoke_short: SmokeOnlineReport) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["anomaly", "evaluate", "--method", "online", "--smoke", str(SMOKE), "--warmup", "30m"],
    )
    assert result.exit_code == 0, result.output
    assert "device warm-up 1800 s" in result.output
    result = runner.invoke(
        main,
        ["anomaly", "evaluate", "--method", "online", "--smoke", str(SMOKE), "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["detector"] == "online" and report["shorter_than_warmup"] is True
    result = runner.invoke(
        main,
        ["anomaly", "evaluate", "--method", "online", "--occupancy", str(OCCUPANCY), "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["episodes"] > 10


@pytest.mark.parametrize(
    "args",
    [
        ["--smoke", str(SMOKE), "--warmup", "30m"],
        ["--method", "online", "--smoke", str(SMOKE), "--threshold", "0.4"],
        ["--method", "online", "--smoke", str(SMOKE), "--plot", "x.png"],
        ["--method", "online", "--nab", str(DATA / "nab")],
        ["--method", "online", "--smoke", str(SMOKE), "--warmup", "soon"],
    ],
)
def test_cli_online_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["anomaly", "evaluate", *args])
    assert result.exit_code == 2, result.output


def test_bench_anomaly_online_prints_its_figures() -> None:
    assert (*DETECTOR_NAMES, "online") == BENCH_DETECTOR_NAMES
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "anomaly",
            "--detector",
            "online",
            "--train-days",
            "0.1",
            "--hours",
            "0.5",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["detector"] == "online" and figures["warm_days"] == 0.1
    assert figures["readings"] > 0 and figures["devices"] > 0 and figures["batch"] == 512
    assert figures["process_cpu_us_per_reading"] > 0
    assert figures["score_cpu_us_per_reading"] > 0
    text = CliRunner().invoke(
        main, ["bench", "anomaly", "--detector", "median_mad", "--batch", "64"]
    )
    assert text.exit_code == 2 and "--batch goes with --detector online" in text.output
