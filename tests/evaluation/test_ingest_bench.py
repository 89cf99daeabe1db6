"""`gridwatch bench ingest`: end to end on real services (small), and its verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from devstack.stack import BROKER_PERSISTENCE
from evaluation import ingest_bench
from evaluation.ingest_bench import _rfc3339_ms, format_result, judge, run_ingest_bench
from events.render import rfc3339_ms
from hub.cli import main

MODE_KEYS = {
    "msgs_per_s", "loss", "p50_ms", "p99_ms", "cpu_s", "cpu_us_per_msg", "rss_mb", "ratio",
    "mosquitto_cpu_s", "influxdb_cpu_s",
}  # fmt: skip


def _phase(p99_ms: float | None, lost: int = 0, published: int = 10) -> dict[str, Any]:
    return {
        "published": published,
        "with_event": published - lost,
        "lost": lost,
        "p50_ms": None if p99_ms is None else p99_ms / 2,
        "p99_ms": p99_ms,
        "max_ms": p99_ms,
        "lost_devices": [f"probe-x-{i:05d}" for i in range(min(lost, 5))],
    }


def _mode(
    msgs_per_s: float, phases: dict[str, dict[str, Any]] | None, *, rss_mb: float = 190.0
) -> dict[str, Any]:
    mode: dict[str, Any] = {
        "msgs_per_s": msgs_per_s,
        "loss": 0,
        "p50_ms": 300.0,
        "p99_ms": 700.0,
        "cpu_s": 1.0,
        "cpu_us_per_msg": 12.0,
        "rss_mb": rss_mb,
        "ratio": round(msgs_per_s / 100_000, 3),
        "mosquitto_cpu_s": 0.1,
        "influxdb_cpu_s": 0.2,
        "last_stored_ns": 1,
    }
    if phases is not None:
        mode["probes"] = {
            "phases": phases,
            "publish_failures": 0,
            "event_transitions": {"raise": 3},
            "events_raised_by_rule": {"door_forced": 3},
            "foreign_probe_events": 0,
            "stored": 3,
        }
        mode["cpu_us_per_msg_with_events"] = 20.0
    return mode


def _fake_result(
    *,
    pipeline: str = "default",
    rate: float | None = None,
    live_p99: float | None = 100.0,
    drain_p99: float | None = 100.0,
    probe_lost: int = 0,
) -> dict[str, Any]:
    default = pipeline == "default"
    live = _mode(40_000.0, {"live": _phase(live_p99, probe_lost)} if default else None)
    backlog = _mode(
        50_000.0,
        {"queued": _phase(3000.0), "drain": _phase(drain_p99)} if default else None,
        rss_mb=310.0 if default else 190.0,
    )
    if not default:
        live["publish_msgs_per_s"], live["catch_up_s"] = 41_000.0, 0.1
    consumers = {"rules": default, "event_sinks": default, "anomaly": False, "tasks": ["stats"]}
    result: dict[str, Any] = {
        "pipeline": pipeline,
        "messages": 1000,
        "devices": 100,
        "live_rate": rate,
        "probe_interval_ms": 100.0 if default else None,
        "limit_msgs_per_s": 100_000.0,
        pipeline: {"live": live, "backlog": backlog, "ratio": 0.5, "consumers": consumers},
    }
    if default:
        result["targets"] = judge(result)
    return result


def _verdicts(result: dict[str, Any]) -> dict[str, bool]:
    return {t["name"]: t["pass"] for t in result["targets"]}


def test_flat_out_live_is_judged_against_two_seconds() -> None:
    result = _fake_result(live_p99=1500.0, drain_p99=2500.0)
    verdicts = _verdicts(result)
    assert verdicts["live publish→event p99 (flat out)"] is True
    assert verdicts["backlog drain publish→event p99 (flat out)"] is False
    assert verdicts["backlog ratio (default pipeline)"] is True
    assert verdicts["hub peak RSS"] is False  # 310 MB in the backlog
    assert verdicts["loss: probes without an event"] is True


def test_paced_live_is_judged_against_250_ms() -> None:
    verdicts = _verdicts(_fake_result(rate=20_000.0, live_p99=300.0))
    assert verdicts["live publish→event p99 (paced at 20,000 msg/s)"] is False
    verdicts = _verdicts(_fake_result(rate=5_000.0, live_p99=200.0))
    assert verdicts["live publish→event p99 (paced at 5,000 msg/s)"] is True


def test_lost_probes_and_missing_latencies_fail() -> None:
    result = _fake_result(live_p99=None, probe_lost=10)
    verdicts = _verdicts(result)
    assert verdicts["loss: probes without an event"] is False
    assert verdicts["live publish→event p99 (flat out)"] is False
    text = format_result(result)
    assert "probe loss 10 (no event: probe-x-00000" in text
    assert "[FAIL] loss: probes without an event: 10" in text


def test_the_part_is_labelled_and_never_stands_for_the_default() -> None:
    result = _fake_result(pipeline="ingest_only")
    assert "default" not in result and "targets" not in result
    text = format_result(result)
    assert "PART, ingest only" in text
    assert "NOT the default pipeline" in text
    assert "targets" not in text and "publish→event" not in text


def test_default_output_names_what_was_measured() -> None:
    text = format_result(_fake_result())
    assert "the hub's DEFAULT pipeline" in text
    assert "rules on, event sinks on, anomaly scoring off" in text
    assert "publish→event live: p50 50 ms, p99 100 ms" in text
    assert "publish→event drain:" in text and "publish→event queued" in text
    assert "[PASS] backlog ratio (default pipeline): 0.5 (target >= 0.4)" in text
    assert "needs --rate 20000" in text


def test_another_broker_setting_is_labelled_and_not_judged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--broker-autosave-changes` measures the hub's default pipeline behind a broker that
    is not the local stack's: figures to compare, never a verdict on the targets."""
    seen: dict[str, Any] = {}

    def fake_end_to_end(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        result = _fake_result()
        del result["targets"]
        return {**result, "broker_autosave_changes": 100_000, "broker_default": False}

    monkeypatch.setattr(ingest_bench, "_run_end_to_end", fake_end_to_end)
    result = run_ingest_bench(1000, 100, None, progress=False, costs=False,
                              broker_autosave_changes=100_000)  # fmt: skip
    assert seen["broker_autosave_changes"] == 100_000
    assert "targets" not in result
    text = format_result(result)
    assert "saves its database every 100,000 changes, NOT the local stack's 1,000" in text
    assert "[PASS]" not in text and "[FAIL]" not in text
    assert ingest_bench.broker_persistence(None) == tuple(BROKER_PERSISTENCE)
    assert "autosave_interval 100000" in ingest_bench.broker_persistence(100_000)


def test_event_times_are_read_to_the_millisecond() -> None:
    """A probe is matched only by an event raised at or after its own `ts`: a float
    round trip that lost a millisecond would drop every match."""
    for ms in (0, 1_796_191_263_440, 1_796_191_263_999, 1_700_000_000_001):
        assert _rfc3339_ms(rfc3339_ms(ms)) == ms
    assert _rfc3339_ms("2026-12-02T06:01:03.440") is None  # no zone: not ours
    assert _rfc3339_ms(None) is None


def test_cli_takes_ingest_only_and_the_probe_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(n: int, devices: int, workdir: Path | None, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs, n=n, devices=devices)
        return _fake_result(pipeline="ingest_only")

    monkeypatch.setattr(ingest_bench, "run_ingest_bench", fake_run)
    args = ["bench", "ingest", "--messages", "10", "--ingest-only", "--probe-interval-ms", "50"]
    out = CliRunner().invoke(main, [*args, "--no-costs", "--json"])
    assert out.exit_code == 0, out.output
    assert seen == {
        "n": 10,
        "devices": 1000,
        "progress": False,
        "rate": None,
        "ingest_only": True,
        "probe_interval_ms": 50.0,
        "costs": False,
        "detection": None,  # the hub's own default unless --detection overrides it
        "broker_autosave_changes": None,  # the local stack's broker unless it is asked for
    }
    assert json.loads(out.output)["pipeline"] == "ingest_only"
    assert CliRunner().invoke(main, ["bench", "ingest", "--rules"]).exit_code == 2


@pytest.mark.integration
def test_default_pipeline_end_to_end_with_probes(tmp_path: Path) -> None:
    """Small and paced: every probe must raise its event; the figures are all there."""
    result = run_ingest_bench(
        2000, 200, tmp_path / "bench", progress=False, rate=1000.0, costs=False
    )
    assert result["pipeline"] == "default"
    assert "ingest_only" not in result and "costs" not in result
    figures = result["default"]
    assert figures["consumers"]["rules"] is True
    assert figures["consumers"]["event_sinks"] is True
    assert figures["consumers"]["anomaly"] is True  # no model trained: online baselines
    assert result["limit_msgs_per_s"] > 0
    for mode, phases in (("live", {"live"}), ("backlog", {"queued", "drain"})):
        got = figures[mode]
        assert got.keys() >= MODE_KEYS, mode
        assert got["loss"] == 0, mode
        assert got["msgs_per_s"] > 0, mode
        probes = got["probes"]
        assert set(probes["phases"]) == phases, mode
        for name, phase in probes["phases"].items():
            assert phase["published"] >= 1, (mode, name)
            assert phase["lost"] == 0, (mode, name, phase)
            assert 0 < phase["p50_ms"] <= phase["p99_ms"] <= phase["max_ms"], (mode, name)
        published = sum(p["published"] for p in probes["phases"].values())
        assert probes["stored"] == published, mode
        assert probes["foreign_probe_events"] == 0, mode  # no mode sees another's probes
        assert probes["events_raised_by_rule"]["door_forced"] >= published, mode
        assert got["cpu_us_per_msg_with_events"] is not None, mode
    assert figures["live"]["publish_msgs_per_s"] > 0
    verdicts = _verdicts(result)
    assert verdicts["loss: bench messages not stored"] is True
    assert verdicts["loss: probes without an event"] is True
    text = format_result(result)
    assert "the hub's DEFAULT pipeline" in text
    assert "[PASS] loss: probes without an event: 0" in text
