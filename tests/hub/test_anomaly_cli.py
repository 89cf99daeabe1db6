"""`gridwatch anomaly evaluate` end to end on real data laid out as NAB expects.

The fixture builds a NAB-layout directory (data/realKnownCause/*.csv,
labels/combined_windows.json) in a temporary directory from ../shared/data/nab
(numenta/NAB @ea702d7); smoke and occupancy runs read ../shared/data directly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Final

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.streaming import default_config
from evaluation.nab import load_nab_dir, nab_default_profiles, normalised, score_detections
from evaluation.nab_eval import evaluate_nab
from hub.cli import main

DATA: Final = Path(__file__).resolve().parents[3] / "shared" / "data"
SERIES: Final = ("machine_temperature_system_failure.csv", "ambient_temperature_system_failure.csv")


@pytest.fixture(scope="module")
def nab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nab")
    (root / "data" / "realKnownCause").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in SERIES:
        shutil.copyfile(DATA / "nab" / name, root / "data" / "realKnownCause" / name)
    shutil.copyfile(DATA / "nab" / "windows.json", root / "labels" / "combined_windows.json")
    return root


@pytest.fixture(scope="module")
def nab_json(nab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    plot = tmp_path_factory.mktemp("plots") / "nab.png"
    result = CliRunner().invoke(
        main, ["anomaly", "evaluate", "--nab", str(nab_dir), "--json", "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_nab_json_has_series_and_the_three_profiles(nab_json: dict[str, object]) -> None:
    series = nab_json["series"]
    overall = nab_json["overall"]
    assert isinstance(series, dict) and isinstance(overall, dict)
    assert set(series) == {f"realKnownCause/{name}" for name in SERIES}
    assert set(overall) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    machine = series["realKnownCause/machine_temperature_system_failure.csv"]
    assert machine["rows"] == 22695 and machine["windows"] == 4
    standard = machine["profiles"]["standard"]
    assert standard["tp"] + standard["fn"] + standard["fp"] + standard["tn"] == 22695 - 750


def test_nab_overall_is_the_normalised_sum_and_meets_the_target(
    nab_json: dict[str, object], nab_dir: Path
) -> None:
    overall = nab_json["overall"]
    assert isinstance(overall, dict)
    report = evaluate_nab(nab_dir, default_config())
    assert report.overall == pytest.approx(overall)
    by_hand = normalised(
        [
            score_detections(
                run.result.alarms, run.series.windows, nab_default_profiles()["standard"]
            )
            for run in report.runs
        ]
    )
    assert overall["standard"] == pytest.approx(by_hand)
    # Regression guard for the figure in docs/anomaly.md (two series only: see there).
    assert overall["standard"] >= 70.0


def test_nab_layout_is_read_as_nab_reads_it(nab_dir: Path) -> None:
    series = load_nab_dir(nab_dir)
    assert [s.name for s in series] == [f"realKnownCause/{n}" for n in sorted(SERIES)]
    assert all(np.all(np.isfinite(s.values)) for s in series)


def test_text_output_and_usage_errors(nab_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["anomaly", "evaluate"])
    assert result.exit_code == 2 and "exactly one" in result.output
    result = runner.invoke(main, ["anomaly", "evaluate", "--nab", str(tmp_path)])
    assert result.exit_code == 1 and "no data/" in result.output
    result = runner.invoke(
        main, ["anomaly", "evaluate", "--nab", str(nab_dir), "--features", "value,nope"]
    )
    assert result.exit_code == 2 and "--features" in result.output


def test_smoke_run_reports_delay_and_false_alarms(tmp_path: Path) -> None:
    smoke = DATA / "smoke" / "smoke_detection_iot_first10080_allcols.csv"
    plot = tmp_path / "smoke.png"
    result = CliRunner().invoke(
        main, ["anomaly", "evaluate", "--smoke", str(smoke), "--json", "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == 10081 and report["transition_row"] == 3178
    assert report["skipped_rows"] == 0
    assert report["delay_s"] is not None and report["delay_s"] >= 0
    assert plot.is_file()


def test_occupancy_run_scores_against_the_label(tmp_path: Path) -> None:
    plot = tmp_path / "occupancy.png"
    result = CliRunner().invoke(
        main,
        [
            "anomaly",
            "evaluate",
            "--occupancy",
            str(DATA / "occupancy"),
            "--json",
            "--plot",
            str(plot),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == 10808 and report["episodes"] > 10
    assert report["roc_auc"] > 0.5  # better than chance, threshold-free
    assert plot.is_file()


def test_malformed_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    smoke = DATA / "smoke" / "smoke_detection_iot_first10080_allcols.csv"
    lines = smoke.read_text().splitlines()
    broken = tmp_path / "smoke.csv"
    bad = lines[5].split(",")
    bad[3] = "n/a"
    broken.write_text("\n".join([*lines[:5], ",".join(bad), *lines[6:1500]]) + "\n")
    from evaluation.smoke_eval import load_smoke

    data = load_smoke(broken)
    assert data.skipped == 1 and data.readings.shape[0] == 1498
