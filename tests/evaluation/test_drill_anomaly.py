"""The drill's offline side scores anomalies as the hub does by default, so the drill's
hubs (default settings) and its harness can be compared event for event."""

from __future__ import annotations

from pathlib import Path

from anomaly.baselines import OnlineParams, OnlineScorer
from events.manager import EventManager
from events.store import EventStore
from hub.settings import Settings
from hub.wiring import build_anomaly


def test_the_drill_harness_scores_with_the_hubs_default_anomaly_settings(tmp_path: Path) -> None:
    settings = Settings.model_validate({"hub": {"data_dir": str(tmp_path / "data")}})
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        service = build_anomaly(settings, EventManager(store, workers={}), lambda: None)
        assert service is not None, "anomaly scoring is on by default"
        assert isinstance(service.scorer, OnlineScorer)
        # `evaluation.drill.decide_anomaly` builds `OnlineScorer(OnlineParams())`.
        assert service.scorer.params == OnlineParams()
