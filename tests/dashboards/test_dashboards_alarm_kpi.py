"""The Alarm KPIs dashboard (`dashboards/alarm_kpi.py`): its JSON against Grafana's model
(EEMUA 191 levels as thresholds, units, the link to the desk), its constants against the
hub's, and every figure it shows, run on a real InfluxDB 1.6.7, against the hub's own
(`events.kpi.read_report`) for the same history.

History (site yingyang, T0 = 2025-11-29T00:00Z, range [T0, T0 + 6 h)), made by the real
event manager and written as the event sinks write it (`events.render.event_point`):
- 0:20: 12 door_held_open alarms on 12 doors, 20 s apart: a flood (the 11th opens a
  flood parent, which is no alarm), all in one 10-minute period;
- 2:00: door_forced on ch-1 raised, returned, raised, returned, raised within 30 s:
  3 alarms of one point in a minute (chattering), left active;
- 3:00: smoke_alarm s-1, acknowledged at 3:02, returned at 3:10, closed at 3:20;
- 4:00: low_battery b-1, shelved at 4:01; 5:00: device_fault f-1, out of service at 5:05;
- 5:30: parking_overstay p-1, left active.
The 12 doors are unsuppressed when the flood is over (at the next raise, 2:00), so 14
events stand at the end, 1 is shelved and 1 out of service.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from dashboards import alarm_kpi
from dashboards.catalog import BOARDS, dashboard_json
from dashboards.common import BuildConfig
from devstack.stack import ManagedProcess
from events.kpi import EEMUA_191, HOUR_MS, KpiReport, read_report
from events.manager import FLOOD_RULE, EventManager
from events.model import Action, Detection, Severity
from events.render import event_point
from events.store import EventStore
from ingest.influxql import QueryTarget, Series, query
from tests.support.grafana_macros import ALL, TimeRange, expand

T0: Final = 1_764_374_400_000  # 2025-11-29T00:00:00Z: a UTC day, so InfluxDB's periods align
MIN: Final = 60_000
SPAN: Final = 6 * HOUR_MS
DATABASE: Final = "gw_alarm_kpi"
BOARD = next(b for b in BOARDS if b.uid == alarm_kpi.UID)
WORKERS: Final = {f"yy-g0{i}": f"w-yy-g0{i}" for i in range(1, 8)}


def _model() -> dict[str, Any]:
    return dashboard_json(BOARD, BuildConfig(hub_url="https://hub.example.org/"))


def _panel(model: dict[str, Any], title: str) -> dict[str, Any]:
    panels: list[dict[str, Any]] = model["panels"]
    (panel,) = [p for p in panels if p["title"] == title]
    return panel


def _steps(panel: dict[str, Any]) -> list[tuple[float | None, str]]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [(s["value"], s["color"]) for s in steps]


# ---------------------------------------------------------------------- the model


def test_the_constants_are_the_hubs() -> None:
    assert alarm_kpi.FLOOD_RULE == FLOOD_RULE
    assert (EEMUA_191.flood_alarms, EEMUA_191.top_n) == (alarm_kpi.FLOOD_ALARMS, alarm_kpi.TOP_N)
    levels = {r.period_ms: (r.acceptable, r.manageable) for r in EEMUA_191.rates}
    hub = {"10m": levels[10 * MIN], "1h": levels[HOUR_MS], "1d": levels[24 * HOUR_MS]}
    assert hub == alarm_kpi.LEVELS


def test_rates_are_bars_against_the_eemua_levels() -> None:
    model = _model()
    for title, (acceptable, manageable), flood in (
        ("Alarms per 10 minutes", (1, 2), True),
        ("Alarms per hour", (6, 12), False),
        ("Alarms per day", (150, 300), False),
    ):
        panel = _panel(model, title)
        custom = panel["fieldConfig"]["defaults"]["custom"]
        assert (panel["type"], custom["drawStyle"]) == ("timeseries", "bars")
        assert custom["thresholdsStyle"] == {"mode": "dashed"}  # the levels drawn as lines
        expected = [(None, "green"), (acceptable, "#EAB839"), (manageable, "red")]
        assert _steps(panel) == expected + ([(10, "dark-red")] if flood else [])
        assert panel["fieldConfig"]["defaults"]["thresholds"]["mode"] == "absolute"
        (target,) = panel["targets"]
        assert target["alias"] == "$tag_site"
        assert f"{acceptable}" in panel["description"] and f"{manageable}" in panel["description"]
    for title, levels in (
        ("Average per 10 minutes", [1, 2]),
        ("Average per hour", [6, 12]),
        ("Average per day", [150, 300]),
    ):
        assert [v for v, _ in _steps(_panel(model, title))][1:] == levels


def test_flood_share_and_states_are_stats_with_their_targets() -> None:
    model = _model()
    flood = _panel(model, "Time in flood")
    assert flood["fieldConfig"]["defaults"]["unit"] == "percent"
    assert _steps(flood) == [(None, "green"), (1, "red")]  # ISA-18.2: under 1 % of the time
    assert flood["fieldConfig"]["defaults"]["noValue"] == "0"
    share = _panel(model, "Top-10 share")
    assert share["fieldConfig"]["defaults"]["unit"] == "percent"
    assert _steps(share) == [(None, "green"), (5, "red")]
    states = _panel(model, "Standing, shelved, suppressed, out of service")
    assert [t["refId"] for t in states["targets"]] == ["A", "B", "C", "D"]
    top = _panel(model, "Top 10 alarm points")
    assert top["options"]["sortBy"] == [{"displayName": "alarms", "desc": True}]


def test_every_query_leaves_out_flood_parents_and_reports() -> None:
    for panel in _model()["panels"]:
        for target in panel["targets"]:
            text = target["query"]
            assert "\"rule\" != 'flood_control'" in text, panel["title"]
            assert "\"source\" != 'report'" in text, panel["title"]
            assert '"site" =~ /^$site$/' in text, panel["title"]


def test_the_dashboard_links_to_the_desks_kpi_page() -> None:
    (link,) = _model()["links"]
    assert link["url"] == "https://hub.example.org/desk/${site}/kpi"
    assert link["targetBlank"] is True and link["type"] == "link"


def test_every_panel_fits_the_grid() -> None:
    for panel in _model()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


# ---------------------------------------------------------------------- the figures


def _detect(rule: str, key: str, cell: str, at: int, *, raised: bool = True) -> Detection:
    return Detection(
        rule_id=rule,
        key=key,
        raised=raised,
        at_ms=at,
        site="yingyang",
        cell=cell,
        device=key,
        severity=Severity.MEDIUM,
        title=f"{rule} at {key}",
        message="made by the test",
        incident=rule,
    )


def _history(store: EventStore) -> None:
    manager = EventManager(store, workers=WORKERS)
    for i in range(12):
        manager.handle(_detect("door_held_open", f"d-{i:02d}", f"yy-g0{1 + i % 7}",
                               T0 + 20 * MIN + i * 20_000), 0)  # fmt: skip
    chatter = T0 + 120 * MIN
    for offset, raised in ((0, True), (5, False), (15, True), (20, False), (30, True)):
        manager.handle(_detect("door_forced", "ch-1", "yy-g05", chatter + offset * 1000,
                               raised=raised), 0)  # fmt: skip
    (smoke,) = manager.handle(_detect("smoke_alarm", "s-1", "yy-g03", T0 + 180 * MIN), 0)
    manager.act(smoke.id, Action.ACKNOWLEDGE, actor="op", at_ms=T0 + 182 * MIN)
    manager.handle(_detect("smoke_alarm", "s-1", "yy-g03", T0 + 190 * MIN, raised=False), 0)
    manager.act(smoke.id, Action.CLOSE, actor="op", at_ms=T0 + 200 * MIN, note="toast")
    (battery,) = manager.handle(_detect("low_battery", "b-1", "yy-g01", T0 + 240 * MIN), 0)
    manager.act(battery.id, Action.SHELVE, actor="op", at_ms=T0 + 241 * MIN,
                until_ms=T0 + 7 * HOUR_MS)  # fmt: skip
    (fault,) = manager.handle(_detect("device_fault", "f-1", "yy-g04", T0 + 300 * MIN), 0)
    manager.act(fault.id, Action.REMOVE_FROM_SERVICE, actor="op", at_ms=T0 + 305 * MIN)
    manager.handle(_detect("parking_overstay", "p-1", "yy-g06", T0 + 330 * MIN), 0)


def _lines(store: EventStore) -> bytes:
    """Every transition as the InfluxDB sink writes it."""
    lines = []
    for event in store.list_events(limit=1000):
        for audit in store.audit_trail(event.id):
            lines.append(event_point(event, audit))
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True)
class Loaded:
    target: QueryTarget
    report: KpiReport


@pytest.fixture(scope="module")
def loaded(influxdb: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    url = f"http://127.0.0.1:{influxdb.port}"
    path: Path = tmp_path_factory.mktemp("alarm-kpi") / "events.db"
    with EventStore(f"sqlite:///{path}") as store:
        store.migrate()
        _history(store)
        report = read_report(store, site="yingyang", since_ms=T0, until_ms=T0 + SPAN)
        body = _lines(store)
    with httpx.Client(timeout=30, trust_env=False) as client:
        client.post(
            f"{url}/query", params={"q": f'CREATE DATABASE "{DATABASE}"'}
        ).raise_for_status()
        written = client.post(f"{url}/write", params={"db": DATABASE}, content=body)
        assert written.status_code == 204, written.text
    target = QueryTarget(url=url, database=DATABASE)
    yield Loaded(target, report)
    query(target, f'DROP DATABASE "{DATABASE}"')


def _run(loaded: Loaded, title: str, ref: str = "A") -> list[Series]:
    """The panel's target as Grafana sends it, the picker on the history's range."""
    model = _model()
    (target,) = [t for t in _panel(model, title)["targets"] if t["refId"] == ref]
    variables = {"site": ["yingyang"], "kind": [ALL], "cell": [ALL], "device": [ALL]}
    all_values = {v["name"]: v.get("allValue", ".*") for v in model["templating"]["list"]}
    # Grafana's range is inclusive at both ends: end 1 ms before the next period.
    text = expand(target["query"], TimeRange(T0, T0 + SPAN - 1), variables, all_values)
    return query(loaded.target, text, epoch="ms")


def _column(series: list[Series], name: str) -> list[Any]:
    return [row[s.columns.index(name)] for s in series for row in s.values]


def _one(series: list[Series], name: str) -> Any:
    (value,) = _column(series, name)
    return value


@pytest.mark.integration
def test_alarms_per_period_are_the_hubs(loaded: Loaded) -> None:
    k = loaded.report.kpis
    assert k.alarms == 12 + 3 + 4  # the flood parent is no alarm
    per_10min = _run(loaded, "Alarms per 10 minutes")
    assert [s.tags for s in per_10min] == [{"site": "yingyang"}]
    assert _column(per_10min, "alarms") == list(k.per_10min)
    hourly = [sum(k.per_10min[i : i + 6]) for i in range(0, len(k.per_10min), 6)]
    assert _column(_run(loaded, "Alarms per hour"), "alarms") == hourly
    assert _column(_run(loaded, "Alarms per day"), "alarms") == [k.alarms]


@pytest.mark.integration
def test_average_rates_peak_and_flood_match_the_hub(loaded: Loaded) -> None:
    k = loaded.report.kpis
    rates = {r.period: r for r in k.rates}
    assert math.isclose(_one(_run(loaded, "Average per 10 minutes"), "per 10 minutes"),
                        rates["10min"].average)  # fmt: skip
    assert math.isclose(_one(_run(loaded, "Average per hour"), "per hour"), rates["hour"].average)
    # Per day over 6 hours: Grafana's mean of the one (partial) UTC day is that day's
    # count, where the hub extrapolates to a day's rate (documented approximation).
    assert _one(_run(loaded, "Average per day"), "per day") == k.alarms
    assert rates["day"].average == k.alarms * 4
    assert _one(_run(loaded, "Peak 10 minutes"), "peak") == k.peak_10min == 12
    # Time in flood: Grafana counts the flooded clock-aligned periods (1 of 36), the hub
    # the time its sliding window held more than 10; both over the 1 % target.
    in_flood = _one(_run(loaded, "Time in flood"), "in flood")
    assert math.isclose(in_flood, 100 / 36)
    assert k.flood_fraction >= EEMUA_191.flood_time_fraction and k.floods == 1


@pytest.mark.integration
def test_top_points_share_and_chattering_match_the_hub(loaded: Loaded) -> None:
    k = loaded.report.kpis
    share = _one(_run(loaded, "Top-10 share"), "top share")
    assert math.isclose(share, 100 * k.top_share) and math.isclose(share, 100 * 12 / 19)
    top = _run(loaded, "Top 10 alarm points")
    rows = sorted(zip(_column(top, "rule"), _column(top, "device"), _column(top, "alarms"),
                      strict=True), key=lambda r: -r[2])  # fmt: skip
    assert len(rows) == len(k.top) == 10
    assert rows[0] == ("door_forced", "ch-1", 3) == (k.top[0].rule_id, k.top[0].key, 3)
    assert sorted(r[2] for r in rows) == sorted(p.alarms for p in k.top)
    chattering = _run(loaded, "Chattering alarm points")
    assert (
        [(s.tags["rule"], s.tags["device"]) for s in chattering]
        == [(p.rule_id, p.key) for p in k.chattering]
        == [("door_forced", "ch-1")]
    )
    assert _column(chattering, "most in 1 min") == [3]


@pytest.mark.integration
def test_standing_shelved_out_of_service_and_the_flows_match_the_hub(loaded: Loaded) -> None:
    k = loaded.report.kpis
    title = "Standing, shelved, suppressed, out of service"
    assert _one(_run(loaded, title, "A"), "standing") == len(k.standing) == 14
    assert _one(_run(loaded, title, "B"), "shelved") == len(k.shelved) == 1
    assert _run(loaded, title, "C") == [] and k.suppressed == ()  # the panel shows 0
    assert _one(_run(loaded, title, "D"), "out of service") == len(k.out_of_service) == 1
    waiting = _one(_run(loaded, "Waiting for acknowledgement"), "unacknowledged")
    assert waiting == 14  # the standing ones: nobody acknowledged them
    flows = "Alarms, acknowledgements and resolutions per hour"
    assert sum(_column(_run(loaded, flows, "A"), "alarms")) == k.alarms
    assert sum(_column(_run(loaded, flows, "B"), "acknowledged")) == 1
    assert sum(_column(_run(loaded, flows, "C"), "resolved")) == 1
    assert k.time_to_acknowledge.count == 1 and k.time_to_resolve.count == 1
