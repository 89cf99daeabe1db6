"""`gridwatch report kpi`: the table, the JSON (the API's shape) and the PNG, read from a
real SQLite event store.

History (T0 + minutes), site s1, cell c1 (worker w-1):
- door_forced/d1 raised at 0, 1, 2 min (returning 30 s after each: 3 alarms, not
  chattering: the third is 2 min after the first), acknowledged at 3:00, closed at 4:00;
- 11 repeated_denials r01..r11 at 30:00 + 10 s * i: a flood from 31:40 (the 11th) to
  40:00 (30:00 leaves the window), 8 min 20 s. Nothing ticks the manager afterwards, so
  the trail never says the flood went quiet: they stay suppressed to the end.
Range [T0, T0 + 2 h): 14 alarms, 7 per hour (manageable), 6.9 % in flood (overloaded).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from events.manager import EventManager
from events.model import Action, Detection
from events.store import EventStore
from hub.cli import main

T0 = 1_772_409_600_000  # 2026-03-02T00:00:00Z
MIN = 60_000


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    with EventStore(url) as store:
        store.migrate()
        manager = EventManager(store, workers={"c1": "w-1"})

        def detect(rule: str, key: str, at_ms: int, *, raised: bool = True) -> None:
            detection = Detection(
                rule_id=rule, key=key, raised=raised, at_ms=at_ms, site="s1", cell="c1"
            )
            manager.handle(detection, at_ms)

        for n in range(3):
            detect("door_forced", "d1", T0 + n * MIN)
            detect("door_forced", "d1", T0 + n * MIN + 30_000, raised=False)
        door = store.open_event("door_forced", "d1")
        assert door is not None
        manager.act(door.id, Action.ACKNOWLEDGE, actor="op", at_ms=T0 + 3 * MIN)
        manager.act(door.id, Action.CLOSE, actor="op", at_ms=T0 + 4 * MIN, note="shut")
        for i in range(11):
            detect("repeated_denials", f"r{i + 1:02d}", T0 + 30 * MIN + i * 10_000)
    return url


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["report", "kpi", *args])
    return result.exit_code, result.output


def test_table_and_png(store_url: str, tmp_path: Path) -> None:
    png = tmp_path / "fig" / "kpi.png"
    code, out = run(
        "--store", store_url, "--site", "s1",
        "--since", when(T0), "--until", when(T0 + 120 * MIN), "--png", str(png),
    )  # fmt: skip
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("alarm KPIs  s1  2026-03-02T00:00Z .. 2026-03-02T02:00Z (2.0 h)")
    assert lines[0].endswith("verdict: OVERLOADED")
    rows = {line[:26].strip(): line[26:].split() for line in lines[2:] if line[:26].strip()}
    assert rows["alarms"] == ["14"]
    assert rows["per hour (average)"] == ["7.00", "6", "12", "manageable"]
    assert rows["peak 10 min (sliding)"][0] == "11"
    # 8 min 20 s of 120 min in flood.
    assert rows["time in flood"][:4] == ["6.94%", "8m20s", "in", "1"]
    assert rows["chattering points"] == ["0"]
    assert rows["standing"] == ["0"]
    assert rows["suppressed"] == ["11", "longest", "1h28m"]  # 31:40 to 2:00
    assert rows["time to acknowledge"][0] == "1m00s"  # the third alarm, acked a minute later
    assert rows["time to resolve"][0] == "4m00s"
    assert "     3  door_forced/d1" in lines
    position = next(line for line in lines if line.startswith("w-1 "))
    assert position.split()[1] == "14" and position.endswith("overloaded")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_is_the_apis_shape(store_url: str) -> None:
    code, out = run(
        "--store", store_url, "--since", when(T0), "--until", when(T0 + 120 * MIN), "--json"
    )  # fmt: skip
    assert code == 0, out
    body = json.loads(out)
    assert body["site"] is None and list(body["sites"]) == ["s1"]
    assert body["kpis"]["alarms"] == 14 and body["verdict"] == "overloaded"
    assert body["kpis"]["flood_ms"] == 8 * MIN + 20_000
    assert body["thresholds"]["rates"][1] == {
        "period": "hour",
        "period_ms": 3_600_000,
        "acceptable": 6,
        "manageable": 12,
    }


def test_refusals(store_url: str, tmp_path: Path) -> None:
    code, out = run("--store", store_url, "--since", when(T0), "--until", when(T0))
    assert code == 2 and "--since must be before --until" in out
    empty = tmp_path / "empty.db"
    empty.touch()
    code, out = run("--store", f"sqlite:///{empty}", "--since", when(T0))
    assert code == 1 and "cannot read the event store" in out
