"""The scenario harness: label matching by hand, and a short real run (stuck sensor)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from anomaly.training import TrainConfig
from evaluation.anomaly_scenarios import (
    GRACE_MS,
    evaluate_scenarios,
    format_report,
    match,
    plot_labels,
    train_on_background,
)
from events.model import Detection
from simulators.labels import IncidentKind, Label
from simulators.scenarios import run_scenarios
from sites.model import load_site_ref

H = 3_600_000


def _label(kind: IncidentKind, devices: tuple[str, ...], start: int, end: int) -> Label:
    return Label(f"l-{kind.value}", kind, "s", "c", devices, start, end)


def _det(device: str, at: int, raised: bool = True) -> Detection:
    return Detection("anomaly.smoke", device, raised, at, "s", device=device)


def test_match_counts_detections_delays_and_false_alarms() -> None:
    labels = [
        _label(IncidentKind.STUCK_SENSOR, ("a",), 10 * H, 12 * H),
        _label(IncidentKind.CLONED_CARD, ("b", "c"), 20 * H, 20 * H + 60_000),
    ]
    detections = [
        _det("x", 1 * H),  # nobody's label: a false alarm
        _det("a", 10 * H + 300_000),  # stuck, 5 min in
        _det("a", 10 * H + 900_000),  # repeat of the open condition: not a new event
        _det("a", 11 * H, raised=False),
        _det("c", 20 * H + 60_000 + GRACE_MS + 1),  # after the grace: missed, false alarm
    ]
    results, events, false_alarms, device_days = match(
        labels, detections, device_count=10, span_ms=24 * H
    )
    assert [(r.label.kind, r.detected, r.delay_s) for r in results] == [
        (IncidentKind.STUCK_SENSOR, True, 300.0),
        (IncidentKind.CLONED_CARD, False, None),
    ]
    assert (events, false_alarms, device_days) == (3, 2, 10.0)


def test_a_stuck_sensor_is_found_in_simulated_traffic(tmp_path: Path) -> None:
    site = load_site_ref("yingyang")
    start = datetime(2026, 3, 2, 6, tzinfo=UTC)
    model, n_train = train_on_background(
        site, end=start, days=1.0, seed=3, config=TrainConfig(false_alarms_per_device_day=0.5)
    )
    assert n_train > 40_000 and set(model.kinds) == {"access", "smoke", "parking"}
    messages, labels = run_scenarios(
        site, ["stuck_sensor"], start=start, duration_s=2 * H / 1000, seed=3
    )
    report = evaluate_scenarios(site, model, messages, labels, span_ms=2 * H)
    (result,) = report.results
    assert result.detected, format_report(report)
    assert result.delay_s is not None and result.delay_s <= 15 * 60
    assert "stuck_sensor" in format_report(report)
    plot_labels(report, model, tmp_path / "labels.png")
    assert (tmp_path / "labels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
