"""Training, model files and online scoring: round trip, refusals, detections, and the
scoring service as a consumer of the log (nothing dropped, commits with its position)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anomaly.baselines import OnlineScorer
from anomaly.model_files import ARRAYS_NAME, META_NAME
from anomaly.model_store import ModelMismatch, load_model, save_model
from anomaly.online import AnomalyScorer, ScoringPolicy
from anomaly.training import AnomalyModel, TrainConfig, TrainingError, train
from detection.anomaly_service import AnomalyService
from events.manager import EventManager
from events.model import Source
from events.store import EventStore
from hub.settings import AnomalySettings, HubSettings, Settings
from hub.wiring import build_anomaly
from ingest.decode import Rejected, RejectReason
from ingest.records import Tick
from ingest.spool import Cursor
from sensors.base import Reading
from sensors.topics import Route
from tests.support.anomaly_fixtures import MS_PER_MIN, SITE, smoke_history, smoke_reading

T0 = 1_772_409_600_000  # 2026-03-02T00:00:00Z
DEVICES = ["sm-a", "sm-b", "sm-c"]
DAY_MIN = 1440


@pytest.fixture(scope="module")
def history() -> list[Reading]:
    return smoke_history(DEVICES, T0, DAY_MIN)


@pytest.fixture(scope="module", params=["median_mad", "isolation_forest"])
def model(request: pytest.FixtureRequest, history: list[Reading]) -> AnomalyModel:
    config = TrainConfig(detector=request.param, min_device_rows=200, window=512)
    return train(lambda: history, config, meta={"site": "yingyang"})


def test_training_reports_each_kind(model: AnomalyModel) -> None:
    assert set(model.kinds) == {"smoke"}  # access/parking: no history, no model
    smoke = model.kinds["smoke"]
    assert smoke.report["devices"] == 3
    assert smoke.report["own_detectors"] == 3
    assert int(smoke.report["held_out_rows"]) > 0
    assert np.isfinite(smoke.threshold.value)
    assert "access" in str(model.meta["skipped_kinds"])


def test_too_little_history_is_refused() -> None:
    with pytest.raises(TrainingError, match="no kind has"):
        train(lambda: smoke_history(["x"], T0, 20), TrainConfig())


def test_save_load_round_trip_scores_identically(
    model: AnomalyModel, history: list[Reading], tmp_path: Path
) -> None:
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    assert again.kinds["smoke"].threshold == model.kinds["smoke"].threshold
    assert again.kinds["smoke"].schema == model.kinds["smoke"].schema
    assert again.profiles == model.profiles
    assert again.meta["site"] == "yingyang"
    tail = history[-120:]
    first, _ = AnomalyScorer(model).score_batch(tail)
    second, _ = AnomalyScorer(again).score_batch(tail)
    scores = [s.score for s in AnomalyScorer(model).score_batch(tail)[1]]
    reloaded = [s.score for s in AnomalyScorer(again).score_batch(tail)[1]]
    assert scores == reloaded  # bit for bit
    assert first == second
    # the arrays file holds plain floats only
    with np.load(tmp_path / ARRAYS_NAME, allow_pickle=False) as npz:
        assert all(npz[name].dtype == np.float64 for name in npz.files)


def _edit_meta(directory: Path, edit: object) -> None:
    path = directory / META_NAME
    meta = json.loads(path.read_text())
    assert callable(edit)
    edit(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda m: m["kinds"]["smoke"]["schema"].reverse(), "feature schema"),
        (lambda m: m["versions"].update({"scikit-learn": "0.24.2"}), "scikit-learn 0.24.2"),
        (lambda m: m["versions"].update({"numpy": "1.0.0"}), "numpy 1.0.0"),
        (lambda m: m.update(format_version=99), "model format 99"),
        (lambda m: m["kinds"]["smoke"]["pooled"].update(version=7), "version 7"),
        (lambda m: m["kinds"].update(water=m["kinds"]["smoke"]), "kind 'water'"),
        (lambda m: m.update(format="something-else"), "not a GridWatch anomaly model"),
        (lambda m: m["kinds"]["smoke"].pop("threshold"), "malformed model"),
    ],
)
def test_mismatched_models_are_refused(
    model: AnomalyModel, tmp_path: Path, edit: object, why: str
) -> None:
    save_model(model, tmp_path)
    _edit_meta(tmp_path, edit)
    with pytest.raises(ModelMismatch, match=why):
        load_model(tmp_path)


def test_tampered_arrays_are_refused(model: AnomalyModel, tmp_path: Path) -> None:
    save_model(model, tmp_path)
    blob = bytearray((tmp_path / ARRAYS_NAME).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / ARRAYS_NAME).write_bytes(bytes(blob))
    with pytest.raises(ModelMismatch, match="sha256"):
        load_model(tmp_path)


def test_pickled_arrays_are_never_loaded(model: AnomalyModel, tmp_path: Path) -> None:
    """Even with a matching digest, an object array (a pickle) is refused, not run."""
    import hashlib
    import io

    save_model(model, tmp_path)
    buffer = io.BytesIO()
    np.savez(buffer, evil=np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / ARRAYS_NAME).write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    _edit_meta(tmp_path, lambda m: m.update(arrays_sha256=digest))
    with pytest.raises(ModelMismatch, match="malformed"):
        load_model(tmp_path)


def test_scorer_raises_repeats_and_clears(model: AnomalyModel) -> None:
    scorer = AnomalyScorer(
        model, ScoringPolicy(repeat_after_ms=5 * MS_PER_MIN, clear_after_ms=10 * MS_PER_MIN)
    )
    normal = smoke_history(["sm-a"], T0, 5, seed=9, first_minute=DAY_MIN)
    assert scorer.score_batch(normal)[0] == []
    hot = [
        smoke_reading("sm-a", T0 + i * MS_PER_MIN, i + 1, 95.0, 2500.0)
        for i in range(DAY_MIN + 5, DAY_MIN + 13)
    ]
    detections, scored = scorer.score_batch(hot)
    assert all(s.flagged for s in scored)
    raised = [d for d in detections if d.raised]
    assert len(raised) == 2  # the raise, then one repeat 5 min later
    first = raised[0]
    assert first.source is Source.ANOMALY and first.rule_id == "anomaly.smoke"
    assert first.key == "sm-a" and first.device == "sm-a" and first.site == "yingyang"
    assert first.at_ms == hot[0].ts_ns // 1_000_000
    assert float(first.values["score"]) >= float(first.values["threshold"])
    drivers = [k for k in first.values if k.endswith("_z")]
    assert len(drivers) == 3 and any(k.startswith(("temperature", "eco2")) for k in drivers)
    assert "temperature" in first.message
    later = smoke_history(["sm-a"], T0, 40, seed=4, first_minute=DAY_MIN + 13)
    after, _ = scorer.score_batch(later)
    assert [d.raised for d in after if not d.raised] == [False]
    assert not after[-1].raised  # back to usual, and nothing raised after the clear


def test_service_scores_log_records_and_commits_them_with_the_position(
    model: AnomalyModel, tmp_path: Path
) -> None:
    """Every reading of a batch is scored (none dropped, whatever the batch's size);
    rejections are skipped; readings and ticks move the watermark; the detections and
    the position after the batch are committed together, and a restart resumes there."""
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        service = AnomalyService(AnomalyScorer(model), EventManager(store, workers={}))
        readings = smoke_history(["sm-b"], T0, 150, first_minute=DAY_MIN)
        t = readings[-1].ts_ns // 1_000_000
        hot = smoke_reading("sm-b", t + MS_PER_MIN, 999, 99.0, 3000.0)
        topic = f"gw/v1/{SITE}/smoke/sm-b/telemetry"
        route = Route(SITE, "smoke", "sm-b", "telemetry")
        bad = Rejected(RejectReason.BAD_JSON, "x", topic, b"{", T0 * 1_000_000, route)
        position = Cursor(3, 1_234)
        detections = service.process([*readings, bad, hot, Tick(t + 2 * MS_PER_MIN)], position)
        assert service.counters.readings == 151
        assert service.counters.scored == 147  # 150 + 1 hot, less 4 before a full window
        assert service.watermark_ms == t + 2 * MS_PER_MIN
        assert [d.raised for d in detections] == [True]
        events = store.list_events()
        assert [(e.source, e.device, e.rule_id) for e in events] == [
            (Source.ANOMALY, "sm-b", "anomaly.smoke")
        ]
        restarted = AnomalyService(AnomalyScorer(model), EventManager(store, workers={}))
        restarted.restore()
        assert restarted.position == position
        assert restarted.watermark_ms == t + 2 * MS_PER_MIN


def test_a_failed_anomaly_commit_writes_nothing(
    model: AnomalyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        service = AnomalyService(AnomalyScorer(model), EventManager(store, workers={}))
        readings = smoke_history(["sm-b"], T0, 10, first_minute=DAY_MIN)
        t = readings[-1].ts_ns // 1_000_000
        hot = smoke_reading("sm-b", t + MS_PER_MIN, 999, 99.0, 3000.0)

        def broken(name: str, data: bytes, at_ms: int) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(store, "put_snapshot", broken)
        with pytest.raises(OSError, match="disk full"):
            service.process([*readings, hot], Cursor(0, 99))
        assert store.list_events() == []  # the event went with the failed snapshot
        monkeypatch.undo()
        assert store.get_snapshot("anomaly-consumer") is None
        retried = AnomalyService(AnomalyScorer(model), EventManager(store, workers={}))
        assert len(retried.process([*readings, hot], Cursor(0, 99))) == 1  # it was one
        assert len(store.list_events()) == 1


def test_hub_without_a_model_learns_online_unless_told_not_to(tmp_path: Path) -> None:
    settings = Settings(hub=HubSettings(data_dir=tmp_path), anomaly=AnomalySettings())
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        manager = EventManager(store, workers={})
        service = build_anomaly(settings, manager, lambda: None)
        assert service is not None and isinstance(service.scorer, OnlineScorer)
        assert service.scorer.params.warmup_ms == 86_400_000  # anomaly.warmup_s, a day
        for cfg in (AnomalySettings(online=False), AnomalySettings(enabled=False)):
            off = Settings(hub=HubSettings(data_dir=tmp_path), anomaly=cfg)
            assert build_anomaly(off, manager, lambda: None) is None


def test_hub_refuses_a_mismatched_model(model: AnomalyModel, tmp_path: Path) -> None:
    directory = tmp_path / "anomaly"
    save_model(model, directory)
    _edit_meta(directory, lambda m: m["kinds"]["smoke"]["schema"].pop())
    settings = Settings(hub=HubSettings(data_dir=tmp_path))
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        with pytest.raises(ModelMismatch, match="feature schema"):
            build_anomaly(settings, EventManager(store, workers={}), lambda: None)


def test_unknown_features_score_as_usual(model: AnomalyModel, history: list[Reading]) -> None:
    smoke = model.kinds["smoke"]
    row = np.array([history[-1].fields["temperature"]] * len(smoke.schema), dtype=np.float64)
    gap = smoke.schema.index("gap_log_s")
    unknown = row.copy()
    unknown[gap] = np.nan
    usual = row.copy()
    usual[gap] = smoke.device_scalers["sm-a"].center[gap]
    assert (
        smoke.score("sm-a", unknown[None, :]).tolist()
        == smoke.score("sm-a", usual[None, :]).tolist()
    )
    _, value, _ = next(
        d for d in smoke.explain("sm-a", unknown, top=len(smoke.schema)) if d[0] == "gap_log_s"
    )
    assert value == usual[gap]  # explanations never carry NaN into an event


def test_a_reading_the_scorer_cannot_take_is_skipped_not_retried(
    model: AnomalyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose scoring raises is scored reading by reading: the reading that raises
    is counted and skipped (it would raise again after a restart and hold the log)."""
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        scorer = AnomalyScorer(model)
        service = AnomalyService(scorer, EventManager(store, workers={}))
        readings = smoke_history(["sm-a", "sm-b"], T0, 20, first_minute=DAY_MIN)
        score_batch = scorer.score_batch

        def poisoned(batch):  # type: ignore[no-untyped-def]
            if any(r.device == "sm-b" for r in batch):
                raise ValueError("a reading this scorer cannot take")
            return score_batch(batch)

        monkeypatch.setattr(scorer, "score_batch", poisoned)
        service.process(readings, Cursor(0, 100))
        poison = sum(1 for r in readings if r.device == "sm-b")
        assert poison and service.counters.errors == poison
        assert service.counters.readings == len(readings)
        assert service.counters.scored > 0  # sm-a's readings were scored
