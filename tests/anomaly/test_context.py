"""The context-novelty detector (anomaly/context.py): protocol, warm-up, determinism, state
round trip, and detections on synthetic spikes, steps and a stuck signal."""

from __future__ import annotations

import io
import json
import math
import pickle

import numpy as np
import numpy.typing as npt
import pytest

from anomaly.context import (
    DEFAULT_REFRACTORY,
    DEFAULT_THRESHOLD,
    AlarmGate,
    ContextNovelty,
    ContextParams,
    alarm_flags,
)
from anomaly.protocol import Detector, DetectorState, FeatureMismatch, StateMismatch

N = 3000
SPIKE_AT = 2000


def daily(seed: int = 7, n: int = N) -> npt.NDArray[np.float64]:
    """A noisy daily cycle (288 readings a day), like a 5-minute sensor."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50.0 + 10.0 * np.sin(2 * np.pi * t / 288) + rng.normal(0.0, 1.0, n)


def square(seed: int = 7, n: int = N) -> npt.NDArray[np.float64]:
    """A signal switching between two levels every 100 readings."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.where((t // 100) % 2 == 0, 80.0, 20.0) + rng.normal(0.0, 0.5, n)


def scores(values: npt.NDArray[np.float64], params: ContextParams | None = None) -> np.ndarray:
    return ContextNovelty(params).process_many(values.tolist())


def state_roundtrip(state: DetectorState) -> DetectorState:
    """Through the model-file form: params as JSON, arrays through npz without pickles."""
    params = json.loads(json.dumps(state.params))
    arrays = {}
    for name, array in state.arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        buffer.seek(0)
        arrays[name] = np.asarray(np.load(buffer, allow_pickle=False), dtype=np.float64)
    return DetectorState(state.kind, state.version, state.n_features, params, arrays)


# --- the protocol ------------------------------------------------------------------------
def test_follows_the_detector_protocol() -> None:
    detector = ContextNovelty()
    assert isinstance(detector, Detector)
    assert detector.batch_equals_stream
    out = scores(daily())
    assert np.all(np.isfinite(out))
    assert np.all((out >= 0.0) & (out <= 1.0))


def test_score_one_does_not_change_the_model_and_process_one_is_score_then_learn() -> None:
    values = daily(n=800).tolist()
    a, b = ContextNovelty(), ContextNovelty()
    for x in values:
        before = a.get_state()
        first = a.score_one(x)
        assert a.score_one(x) == first  # scoring twice: same answer
        after = a.get_state()
        assert before.params == after.params
        assert all(np.array_equal(before.arrays[k], after.arrays[k]) for k in before.arrays)
        a.learn_one(x)
        assert b.process_one(x) == first


def test_batch_forms_equal_the_stream() -> None:
    values = daily(n=900)
    streamed = ContextNovelty()
    for x in values[:700]:
        streamed.learn_one(x)
    batched = ContextNovelty()
    batched.learn_many(values[:700].reshape(-1, 1))
    rows = values[700:].reshape(-1, 1)
    expected = [streamed.score_one(row) for row in rows]
    assert batched.score_many(rows).tolist() == expected


def test_refuses_rows_of_another_width() -> None:
    detector = ContextNovelty()
    with pytest.raises(FeatureMismatch):
        detector.learn_one([1.0, 2.0])
    with pytest.raises(FeatureMismatch):
        detector.score_many(np.ones((3, 2)))


def test_non_finite_readings_score_zero_and_are_not_learned() -> None:
    detector = ContextNovelty()
    for x in daily(n=400):
        detector.learn_one(x)
    seen = detector.readings_seen
    assert detector.process_one(math.nan) == 0.0
    assert detector.process_one(math.inf) == 0.0
    assert detector.readings_seen == seen


# --- warm-up ------------------------------------------------------------------------------
def test_no_score_and_no_alarm_during_the_warm_up() -> None:
    params = ContextParams()
    wild = np.random.default_rng(3).normal(0.0, 1.0, params.warmup) * np.logspace(0, 6, 150)
    detector = ContextNovelty(params)
    out = detector.process_many(wild.tolist())
    assert not detector.warmed_up or detector.readings_seen == params.warmup
    assert np.all(out == 0.0)
    assert not alarm_flags(out, threshold=1e-12).any()
    gate = AlarmGate(threshold=1e-12)
    assert not any(gate.update(s) for s in out)
    assert detector.warmed_up


def test_learns_from_the_first_reading_and_alarms_right_after_the_warm_up() -> None:
    params = ContextParams(warmup=20)
    values = [10.0 + (i % 3) for i in range(20)] + [500.0]
    out = ContextNovelty(params).process_many(values)
    assert out[:20].tolist() == [0.0] * 20
    assert out[20] == 1.0  # far beyond the range learned in the warm-up


def test_a_flat_stream_scores_nothing_until_it_moves() -> None:
    out = scores(np.full(600, 45.0))
    assert not out.any()
    moved = scores(np.concatenate([np.full(600, 45.0), [46.0]]))
    assert moved[-1] == 1.0


# --- determinism and state ------------------------------------------------------------------
def test_same_stream_same_scores_bit_for_bit() -> None:
    values = daily()
    values[SPIKE_AT] += 40.0
    assert scores(values).tobytes() == scores(values.copy()).tobytes()


@pytest.mark.parametrize("cut", [0, 75, 150, 151, 1999, 2000, 2001, 2500])
def test_state_round_trip_resumes_the_learned_baseline(cut: int) -> None:
    values = daily()
    values[SPIKE_AT] += 40.0  # a range break after the cut for most cuts, before for some
    values[2400:] += 25.0
    whole = scores(values)
    first = ContextNovelty()
    head = first.process_many(values[:cut].tolist())
    resumed = ContextNovelty.from_state(state_roundtrip(first.get_state()))
    tail = resumed.process_many(values[cut:].tolist())
    assert np.concatenate([head, tail]).tobytes() == whole.tobytes()
    assert resumed.readings_seen == len(values)


def test_pickle_round_trip_resumes_too() -> None:
    values = daily()
    first = ContextNovelty()
    first.process_many(values[:1200].tolist())
    again = pickle.loads(pickle.dumps(first))
    assert again.process_many(values[1200:].tolist()).tobytes() == (
        first.process_many(values[1200:].tolist()).tobytes()
    )


def test_state_of_another_kind_or_version_is_refused() -> None:
    state = ContextNovelty().get_state()
    with pytest.raises(StateMismatch):
        ContextNovelty.from_state(
            DetectorState("median_mad", state.version, 1, state.params, state.arrays)
        )
    with pytest.raises(StateMismatch):
        ContextNovelty.from_state(DetectorState(state.kind, 99, 1, state.params, state.arrays))


def test_params_round_trip_and_validation() -> None:
    params = ContextParams(views=("linear",), resolutions=(8, 12), compress_scale=3.0)
    assert ContextParams.from_json(json.loads(json.dumps(params.to_json()))) == params
    with pytest.raises(ValueError, match="views"):
        ContextParams(views=("log",))
    with pytest.raises(ValueError, match="warmup"):
        ContextParams(warmup=1)


# --- detections -----------------------------------------------------------------------------
def test_detects_a_spike() -> None:
    values = daily()
    values[SPIKE_AT] += 40.0
    out = scores(values)
    flags = alarm_flags(out)
    assert out[SPIKE_AT] == 1.0
    assert flags[SPIKE_AT]
    assert not flags[600:SPIKE_AT].any()  # the learned daily cycle raises nothing


def test_detects_a_step_at_once() -> None:
    values = daily()
    values[SPIKE_AT:] += 25.0
    flags = alarm_flags(scores(values))
    assert flags[SPIKE_AT]
    assert not flags[600:SPIKE_AT].any()


def test_detects_a_signal_stuck_where_it_only_passes_through() -> None:
    values = square()
    values[2050:2650] = 80.0 + np.random.default_rng(1).normal(0.0, 0.5, 600)
    flags = alarm_flags(scores(values))
    normal = alarm_flags(scores(square()))
    assert not normal[600:].any()
    stuck = np.flatnonzero(flags[2050:2650])
    assert stuck.size == 1
    # the high phase began at 2000; the run fires once it is twice the longest seen (100)
    assert 2190 <= 2050 + int(stuck[0]) <= 2210


def test_each_view_alone_also_catches_the_spike() -> None:
    values = daily()
    values[SPIKE_AT] += 40.0
    for view in ("linear", "compressed"):
        assert scores(values, ContextParams(views=(view,)))[SPIKE_AT] == 1.0


# --- the decision -----------------------------------------------------------------------------
def test_alarm_flags_keep_quiet_for_the_refractory_period() -> None:
    out = np.zeros(100)
    out[[10, 15, 31, 32, 60]] = 1.0
    assert np.flatnonzero(alarm_flags(out, 0.5, refractory=20)).tolist() == [10, 31, 60]
    assert np.flatnonzero(alarm_flags(out, 0.5, refractory=0)).tolist() == [10, 15, 31, 32, 60]
    assert DEFAULT_REFRACTORY == 20
    assert 0.0 < DEFAULT_THRESHOLD < 1.0


def test_alarm_gate_equals_alarm_flags() -> None:
    values = daily()
    values[SPIKE_AT] += 40.0
    values[2400:] += 25.0
    out = scores(values)
    gate = AlarmGate()
    assert [gate.update(s) for s in out] == alarm_flags(out).tolist()
