"""Contract suite over every detector of anomaly.detectors (the protocol in anomaly.protocol),
plus thresholds, the flagged-rows-stay-out guard, the likelihood and streaming runs."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from anomaly.detectors import (
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    PCAReconstruction,
    PerKey,
    RollingMedianMAD,
    detector_from_state,
)
from anomaly.likelihood import AnomalyLikelihood, log_tail_score, tail_probability
from anomaly.protocol import (
    Detector,
    DetectorState,
    FeatureMismatch,
    Guarded,
    StateMismatch,
    Threshold,
    calibrate_threshold,
    rate_per_reading,
)
from anomaly.streaming import StreamConfig, default_config, feature_rows, run_stream

FACTORIES: dict[str, Callable[[int], Detector]] = {
    "median_mad": lambda seed: RollingMedianMAD(window=64, min_periods=8),
    "median_mad/refresh": lambda seed: RollingMedianMAD(window=64, min_periods=8, refresh_every=16),
    "isolation_forest": lambda seed: IsolationForestDetector(
        n_estimators=25, window=256, refit_every=64, min_samples=32, seed=seed
    ),
    "pca": lambda seed: PCAReconstruction(window=256, refit_every=64, min_samples=32, seed=seed),
    "lof": lambda seed: LocalOutlierFactorDetector(
        n_neighbors=10, window=256, refit_every=64, min_samples=32, seed=seed
    ),
}


def _normal_rows(n: int = 300, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1))
    # three correlated features, so PCA has a subspace to learn
    return np.hstack([base, 2 * base + rng.normal(0, 0.1, (n, 1)), rng.normal(size=(n, 1))])


@pytest.fixture(params=sorted(FACTORIES))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_follows_the_protocol(name: str) -> None:
    detector = FACTORIES[name](0)
    assert isinstance(detector, Detector)
    assert detector.kind == name.split("/", maxsplit=1)[0]


def test_same_seed_same_scores(name: str) -> None:
    rows = _normal_rows()
    first, second = FACTORIES[name](3), FACTORIES[name](3)
    for row in rows[:200]:
        first.learn_one(row)
        second.learn_one(row)
    assert np.array_equal(first.score_many(rows[200:]), second.score_many(rows[200:]))


def test_scores_are_finite_non_negative_and_rank_an_outlier_high(name: str) -> None:
    detector = FACTORIES[name](0)
    rows = _normal_rows()
    assert detector.score_one(rows[0]) == 0.0  # nothing learned: no evidence
    detector.learn_many(rows[:250])
    scores = detector.score_many(rows[250:])
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0.0)
    outlier = detector.score_one([8.0, -16.0, 8.0])
    assert outlier > np.quantile(scores, 0.95)
    assert math.isfinite(detector.score_one([1e12, 1e12, 1e12]))


def test_score_many_equals_score_one_and_scoring_does_not_learn(name: str) -> None:
    detector = FACTORIES[name](0)
    rows = _normal_rows()
    detector.learn_many(rows[:200])
    batch = detector.score_many(rows[200:])
    again = detector.score_many(rows[200:])
    one_by_one = np.array([detector.score_one(row) for row in rows[200:]])
    assert np.array_equal(batch, again)
    assert np.allclose(batch, one_by_one, rtol=1e-12, atol=1e-12)


def test_batch_learning_equals_streaming_where_promised(name: str) -> None:
    rows = _normal_rows()
    streamed, batched = FACTORIES[name](0), FACTORIES[name](0)
    for row in rows[:160]:
        streamed.learn_one(row)
    batched.learn_many(rows[:160])
    same = np.array_equal(streamed.score_many(rows[160:]), batched.score_many(rows[160:]))
    if streamed.batch_equals_stream:
        assert same
    # 160 rows: streaming fits at 32, 96 and 160, so its last fit saw the same 160 rows.
    assert same
    if not streamed.batch_equals_stream:
        streamed.learn_one(rows[160])
        batched.learn_many(rows[160:161])  # a batch always refits at its end
        assert not np.array_equal(streamed.score_many(rows[161:]), batched.score_many(rows[161:]))


def test_state_round_trip_scores_identically_and_keeps_learning(name: str) -> None:
    detector = FACTORIES[name](5)
    rows = _normal_rows()
    for row in rows[:150]:
        detector.learn_one(row)
    state = detector.get_state()
    # Plain data only: params are JSON, arrays survive savez without pickles.
    params = json.loads(json.dumps(dict(state.params)))
    arrays = {}
    for key, array in state.arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        buffer.seek(0)
        arrays[key] = np.load(buffer, allow_pickle=False)
    restored = detector_from_state(
        DetectorState(state.kind, state.version, state.n_features, params, arrays)
    )
    assert np.array_equal(detector.score_many(rows[150:]), restored.score_many(rows[150:]))
    for row in rows[150:]:
        detector.learn_one(row)
        restored.learn_one(row)
    assert np.array_equal(detector.score_many(rows[:20]), restored.score_many(rows[:20]))


def test_mismatched_state_and_width_are_refused(name: str) -> None:
    detector = FACTORIES[name](0)
    detector.learn_many(_normal_rows()[:100])
    state = detector.get_state()
    with pytest.raises(StateMismatch):
        detector_from_state(replace(state, version=state.version + 1))
    with pytest.raises(StateMismatch):
        detector_from_state(replace(state, kind="no_such_detector"))
    with pytest.raises(StateMismatch):
        if name == "pca":
            LocalOutlierFactorDetector.from_state(state)
        else:
            PCAReconstruction.from_state(state)
    with pytest.raises(FeatureMismatch):
        detector.score_one([1.0, 2.0])
    with pytest.raises(FeatureMismatch):
        detector.learn_one([1.0, 2.0, 3.0, 4.0])


def test_threshold_is_apart_from_scores_and_calibrates_to_the_rate() -> None:
    rng = np.random.default_rng(1)
    scores = rng.exponential(size=10_000)
    threshold = calibrate_threshold(scores, 0.01)
    assert isinstance(threshold, Threshold)
    assert threshold.flags(scores).mean() == pytest.approx(0.01, abs=1e-4)
    assert threshold.is_anomalous(threshold.value)  # NAB's convention: >= flags
    assert Threshold.from_json(threshold.to_json()) == threshold
    ties = calibrate_threshold([1.0] * 99 + [5.0], 0.05)
    assert ties.flags([1.0] * 99 + [5.0]).sum() <= 5
    assert calibrate_threshold([1.0, 2.0], 0.1).value > 2.0  # too few rows: no alarms
    assert rate_per_reading(2.0, 1440.0) == pytest.approx(2 / 1440)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        calibrate_threshold(scores, 0.0)


def test_flagged_rows_stay_out_of_training() -> None:
    rows = _normal_rows()
    guarded = Guarded(RollingMedianMAD(window=400, min_periods=8), Threshold(6.0))
    guarded.process_many(rows[:100])
    spikes = np.full((30, 3), 50.0)
    _, flags = guarded.process_many(spikes)
    assert flags.all()
    history = guarded.detector.get_state().arrays["history"]
    assert history.shape[0] == 100 and history.max() < 50.0
    learning = Guarded(
        RollingMedianMAD(window=400, min_periods=8), Threshold(6.0), learn_flagged=True
    )
    learning.process_many(rows[:100])
    learning.process_many(spikes)
    assert learning.detector.get_state().arrays["history"].shape[0] == 130


def test_per_key_falls_back_to_the_pooled_detector() -> None:
    rows = _normal_rows()
    per_key = PerKey(
        lambda: RollingMedianMAD(window=64, min_periods=8),
        RollingMedianMAD(window=64, min_periods=8),
        min_history=50,
    )
    for row in rows[:40]:
        per_key.learn_one("door-1", row)
    assert not per_key.uses_own("door-1")
    assert per_key.score_one("door-1", rows[41]) == per_key.pooled.score_one(rows[41])
    for row in rows[40:60]:
        per_key.learn_one("door-1", row + 10.0)
    assert per_key.uses_own("door-1")


def test_likelihood_tail_scale() -> None:
    assert tail_probability(0.0, 0.0, 1.0) == pytest.approx(0.5)
    assert log_tail_score(1e-5) == pytest.approx(0.5, abs=1e-5)
    assert log_tail_score(1.0) == pytest.approx(0.0, abs=1e-9)
    likelihood = AnomalyLikelihood(short_window=1, learning_period=50, history=500)
    rng = np.random.default_rng(0)
    quiet = [likelihood.update(float(v)) for v in rng.normal(1.0, 0.1, 400)]
    assert max(quiet[:50]) == 0.0 and max(quiet) < 0.5
    assert likelihood.update(3.0) > 0.9


def test_stream_is_deterministic_and_batched_scoring_matches_row_by_row() -> None:
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(0, 1, 900), rng.normal(9, 1, 30), rng.normal(0, 1, 300)])
    config = StreamConfig(
        detector="pca",
        features=("value", "lags"),
        window=256,
        threshold=0.5,
        learning_period=100,
        seed=4,
    )
    first, second = run_stream(values, config), run_stream(values, config)
    assert np.array_equal(first.score, second.score)
    assert first.alarms[900:935].any()
    # Row-by-row reference: score, decide, learn unless flagged.
    rows = [feature_rows(values, f, config.lags) for f in config.features]
    dets = [PCAReconstruction(window=256, refit_every=64, min_samples=32, seed=4) for _ in rows]
    likes = [AnomalyLikelihood(learning_period=100) for _ in rows]
    reference = []
    for i in range(values.size):
        final = max(
            like.update(det.score_one(r[i])) for det, like, r in zip(dets, likes, rows, strict=True)
        )
        reference.append(final)
        if final < config.threshold:
            for det, r in zip(dets, rows, strict=True):
                det.learn_one(r[i])
    assert np.allclose(first.score, reference, rtol=0, atol=1e-12)


def test_default_config_is_the_documented_one() -> None:
    config = default_config()
    assert config.features == ("value", "lags") and config.detector == "median_mad"
    assert config.threshold == 0.5 and config.trigger == "edge"


@pytest.mark.parametrize(("width", "max_features"), [(1, 1.0), (4, 1.0), (4, 0.5)])
def test_flat_forest_equals_sklearn_bit_for_bit(width: int, max_features: float) -> None:
    from sklearn.ensemble import IsolationForest

    from anomaly.fast_forest import FlatForest

    rng = np.random.default_rng(width)
    train = rng.normal(size=(600, width))
    model = IsolationForest(
        n_estimators=40, max_samples=256, max_features=max_features, random_state=2
    ).fit(train)
    probe = np.vstack([rng.normal(size=(200, width)) * 4, train[:20]])
    assert np.array_equal(
        FlatForest.from_sklearn(model).score_samples(probe), model.score_samples(probe)
    )
