"""The context-novelty NAB harness (evaluation/nab_eval.py): the fixed split, the scores it
reports on real NAB files (recomputed here with the scorer), the published detectors'
normalisation, the CPU timing and the `anomaly evaluate --method context` command.

Data: ../shared/data/nab/corpus (numenta/NAB @ea702d7: data/, labels/combined_windows.json,
results/published_scores.csv).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Final

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.context import DEFAULT_REFRACTORY, DEFAULT_THRESHOLD, ContextNovelty, alarm_flags
from evaluation.nab import (
    load_nab_dir,
    nab_default_profiles,
    normalised,
    score_detections,
)
from evaluation.nab_eval import (
    CONTEXT_SPLIT_SEED,
    context_scores,
    cpu_per_reading,
    evaluate_context_nab,
    format_context_nab,
    load_published,
    published_part_score,
    split_corpus,
    threshold_candidates,
    tune_threshold,
)
from hub.cli import main

CORPUS: Final = Path(__file__).resolve().parents[3] / "shared" / "data" / "nab" / "corpus"
SMALL: Final = (
    "realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
    "realAdExchange/exchange-2_cpc_results.csv",
    "realAdExchange/exchange-3_cpm_results.csv",
)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three short corpus files in NAB's layout, with their labels and published scores."""
    root = tmp_path_factory.mktemp("nab")
    labels = json.loads((CORPUS / "labels" / "combined_windows.json").read_text())
    for name in SMALL:
        target = root / "data" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CORPUS / "data" / name, target)
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(
        json.dumps({name: labels[name] for name in SMALL})
    )
    (root / "results").mkdir()
    shutil.copyfile(
        CORPUS / "results" / "published_scores.csv", root / "results" / "published_scores.csv"
    )
    return root


def test_split_is_fixed_stratified_and_even() -> None:
    series = load_nab_dir(CORPUS)
    tuning, held_out = split_corpus(series)
    assert (tuning, held_out) == split_corpus(series, CONTEXT_SPLIT_SEED)
    assert len(tuning) == len(held_out) == 23
    assert not set(tuning) & set(held_out)
    assert set(tuning) | set(held_out) == {one.name for one in series}
    categories = {name.split("/")[0] for name in tuning + held_out}
    for category in categories:
        a = sum(name.startswith(category + "/") for name in tuning)
        b = sum(name.startswith(category + "/") for name in held_out)
        assert abs(a - b) <= 1
    assert split_corpus(series, seed=1) != (tuning, held_out)


def test_harness_reports_what_the_scorer_computes(small_corpus: Path) -> None:
    report = evaluate_context_nab(small_corpus)
    series = load_nab_dir(small_corpus)
    profiles = nab_default_profiles()
    for one in series:
        scores = ContextNovelty(report.params).process_many(one.values.tolist())
        for profile, cost in profiles.items():
            flags = alarm_flags(scores, report.thresholds[profile], DEFAULT_REFRACTORY)
            expected = score_detections(flags, one.windows, cost)
            assert report.per_file[one.name][profile] == expected
    for part, names in report.parts().items():
        for profile in profiles:
            expected_score = normalised([report.per_file[n][profile] for n in names])
            assert report.ours[part][profile] == pytest.approx(expected_score, abs=1e-12)
    assert set(report.tuning) | set(report.held_out) == set(SMALL)
    assert 0.0 < report.cpu_us_per_reading < 1000.0
    assert report.readings == sum(len(one.values) for one in series)
    text = format_context_nab(report)
    assert "held-out" in text and "ARTime" in text


def test_thresholds_are_the_best_on_the_tuning_part_only(small_corpus: Path) -> None:
    report = evaluate_context_nab(small_corpus)
    series = load_nab_dir(small_corpus)
    scores, _ = context_scores(series, report.params)
    windows = {one.name: one.windows for one in series}
    cost = nab_default_profiles()["standard"]
    chosen = report.thresholds["standard"]
    assert chosen in threshold_candidates(scores, report.tuning)
    best = max(
        normalised(
            [
                score_detections(alarm_flags(scores[n], t, DEFAULT_REFRACTORY), windows[n], cost)
                for n in report.tuning
            ]
        )
        for t in threshold_candidates(scores, report.tuning)
    )
    assert tune_threshold(scores, windows, report.tuning, cost, DEFAULT_REFRACTORY)[1] == best
    assert report.ours["tuning"]["standard"] == pytest.approx(best, abs=1e-12)


def test_default_threshold_flags_the_same_rows_as_the_tuned_one(small_corpus: Path) -> None:
    series = load_nab_dir(small_corpus)
    scores, _ = context_scores(series)
    levels = sorted({round(float(v), 9) for s in scores.values() for v in np.unique(s)})
    # the default sits strictly between two achievable score levels
    assert not any(math.isclose(DEFAULT_THRESHOLD, v, abs_tol=1e-6) for v in levels)


def test_published_scores_normalise_as_nab_does() -> None:
    series = load_nab_dir(CORPUS)
    raw = load_published(CORPUS / "results" / "published_scores.csv")
    cost = nab_default_profiles()["standard"]
    empty = {
        one.name: score_detections(np.zeros(len(one.values), dtype=bool), one.windows, cost)
        for one in series
    }
    null_perfect = {name: (s.null, s.perfect) for name, s in empty.items()}
    names = sorted(null_perfect)
    # the figures in ../shared/data/README.md for these 46 files
    for detector, expected in (("ARTime", 76.0), ("contextOSE", 70.9), ("numenta", 70.3)):
        value = published_part_score(raw[detector]["standard"], null_perfect, names)
        assert value is not None
        assert round(value, 1) == expected
    assert published_part_score({}, null_perfect, names) is None


def test_cpu_per_reading_is_measured() -> None:
    values = load_nab_dir(CORPUS)[0].values.tolist()[:2000]
    micros = cpu_per_reading(values, repeats=1)
    assert math.isfinite(micros)
    assert micros > 0.0
    with pytest.raises(ValueError, match="at least one"):
        cpu_per_reading([])


def test_evaluate_command_with_the_context_method(small_corpus: Path, tmp_path: Path) -> None:
    figure = tmp_path / "nab_scores.png"
    args = ["anomaly", "evaluate", "--nab", str(small_corpus), "--method", "context"]
    result = CliRunner().invoke(main, [*args, "--json", "--plot", str(figure)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["detector"] == "context_novelty"
    assert set(report["ours"]) == {"whole", "tuning", "held-out"}
    assert set(report["thresholds"]) == set(nab_default_profiles())
    assert report["cpu_us_per_reading"] > 0.0
    assert figure.stat().st_size > 0
    linear = CliRunner().invoke(main, [*args, "--context-views", "linear"])
    assert linear.exit_code == 0, linear.output
    assert "| **context novelty (ours)** |" in linear.stdout
    bad = CliRunner().invoke(main, [*args, "--context-views", "log"])
    assert bad.exit_code == 2
    smoke = CliRunner().invoke(
        main, ["anomaly", "evaluate", "--smoke", str(figure), "--method", "context"]
    )
    assert smoke.exit_code == 2
