"""NAB scorer: reproduces NAB's published per-file results, and hand-computed cases.

Data: ../shared/data/nab (numenta/NAB @ea702d7: data/realKnownCause, labels, config,
results for the `numenta` and `windowedGaussian` detectors).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Final

import numpy as np
import pytest

from evaluation.nab import (
    CostMatrix,
    NabFormatError,
    Window,
    load_nab_dir,
    load_profiles,
    load_windows,
    nab_default_profiles,
    normalised,
    parse_time,
    probationary_length,
    scaled_sigmoid,
    score_detections,
    threshold_detections,
    windows_to_indices,
)

NAB: Final = Path(__file__).resolve().parents[3] / "shared" / "data" / "nab"
STANDARD: Final = CostMatrix(tp=1.0, fp=0.11, fn=1.0)


def _published() -> list[tuple[str, str, str]]:
    rows = []
    for detector in ("numenta", "windowedGaussian"):
        with (NAB / "results" / f"{detector}_scores.csv").open() as handle:
            rows += [(detector, r["Profile"], r["File"]) for r in csv.DictReader(handle)]
    return rows


@pytest.mark.parametrize(("detector", "profile", "file"), _published())
def test_reproduces_nab_published_scores(detector: str, profile: str, file: str) -> None:
    with (NAB / "results" / f"{detector}_scores.csv").open() as handle:
        expected = next(
            r for r in csv.DictReader(handle) if r["Profile"] == profile and r["File"] == file
        )
    name = file.split("/", 1)[1]
    with (NAB / "results" / f"{detector}_{name}").open() as handle:
        rows = list(csv.DictReader(handle))
    stamps = [parse_time(r["timestamp"]) for r in rows]
    scores = np.array([float(r["anomaly_score"]) for r in rows])
    windows = windows_to_indices(stamps, load_windows(NAB / "windows.json")[file])
    threshold = json.loads((NAB / "thresholds.json").read_text())[detector][profile]["threshold"]
    assert threshold == pytest.approx(float(expected["Threshold"]), abs=1e-9)
    cost = load_profiles(NAB / "profiles.json")[profile]
    result = score_detections(threshold_detections(scores, threshold), windows, cost)
    assert result.raw == pytest.approx(float(expected["Score"]), abs=1e-6)
    counts = (result.tp, result.tn, result.fp, result.fn, result.total)
    assert counts == tuple(int(expected[k]) for k in ("TP", "TN", "FP", "FN", "Total_Count"))


def test_profiles_file_matches_the_built_in_profiles() -> None:
    assert load_profiles(NAB / "profiles.json") == nab_default_profiles()


def test_probationary_period_is_15_percent_capped_at_750_rows() -> None:
    assert probationary_length(1000) == 150
    assert probationary_length(7267) == 750  # min(floor(1090.05), 750)
    assert probationary_length(3) == 0


def test_hand_computed_detection_scores() -> None:
    # 100 rows -> 15 probationary; one window of 10 rows at 50..59.
    window = [Window(50, 59)]
    max_tp = 2 / (1 + math.exp(-5)) - 1  # S(-1) = 2 * sigmoid(5) - 1
    flags = np.zeros(100, dtype=bool)

    def score(*rows: int) -> float:
        marked = flags.copy()
        marked[list(rows)] = True
        return score_detections(marked, window, STANDARD).raw

    assert score() == pytest.approx(-1.0)  # a missed window costs fnWeight
    assert score(50) == pytest.approx(1.0)  # its first row earns tpWeight exactly
    middle = (2 / (1 + math.exp(-2.5)) - 1) / max_tp  # p = -(59-55+1)/10 = -0.5
    assert score(55) == pytest.approx(middle)
    assert score(55, 50, 57) == pytest.approx(1.0)  # only the best (first) one counts
    assert score(20) == pytest.approx(-1.0 - 0.11)  # FP before any window: -fpWeight
    assert score(5) == pytest.approx(-1.0)  # probationary rows are not scored
    after = (2 / (1 + math.exp(5 / 9)) - 1) * 0.11  # p = |59-60| / (10-1)
    assert score(60) == pytest.approx(-1.0 + after)
    assert score(95) == pytest.approx(-1.0 - 0.11)  # > 3 widths after: the full cost
    detail = score_detections(np.isin(np.arange(100), [20, 50, 51]), window, STANDARD)
    assert (detail.tp, detail.fp, detail.fn, detail.tn) == (2, 1, 8, 74)
    assert scaled_sigmoid(3.5) == -1.0


def test_normalisation_between_null_and_perfect() -> None:
    window = [Window(50, 59)]
    null = score_detections(np.zeros(100, dtype=bool), window, STANDARD)
    perfect = score_detections(np.arange(100) == 50, window, STANDARD)
    assert normalised([null]) == pytest.approx(0.0)
    assert normalised([perfect]) == pytest.approx(100.0)
    low_fn = CostMatrix(tp=1.0, fp=0.11, fn=2.0)
    half = score_detections(np.arange(100) == 50, window, low_fn)
    missed = score_detections(np.zeros(100, dtype=bool), [Window(80, 89)], low_fn)
    # corpus: raw 1 + (-2), null -2 + -2, perfect 1 + 1 -> 100 * 3 / 6
    assert normalised([half, missed]) == pytest.approx(50.0)


def test_a_window_inside_the_probation_is_not_scored() -> None:
    result = score_detections(np.zeros(100, dtype=bool), [Window(2, 5)], STANDARD)
    assert (result.raw, result.null, result.perfect, result.windows) == (0.0, 0.0, 0.0, 0)


def test_layout_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(NabFormatError, match="no data/"):
        load_nab_dir(tmp_path)
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "combined_windows.json").write_text("{}")
    (tmp_path / "data" / "cat" / "x.csv").write_text("timestamp,value\n2020-01-01 00:00:00,1\n")
    with pytest.raises(NabFormatError, match="no entry"):
        load_nab_dir(tmp_path)
    (tmp_path / "labels" / "combined_windows.json").write_text(
        json.dumps({"cat/x.csv": [["2020-01-02 00:00:00", "2020-01-03 00:00:00"]]})
    )
    with pytest.raises(NabFormatError, match="not rows"):
        load_nab_dir(tmp_path)
    (tmp_path / "data" / "cat" / "x.csv").write_text("timestamp,value\n2020-01-01,abc\n")
    with pytest.raises(NabFormatError, match=r"x\.csv:2"):
        load_nab_dir(tmp_path)
