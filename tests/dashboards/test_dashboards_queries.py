"""Every dashboard query, expanded as Grafana expands it, against a real InfluxDB 1.6.7.

The database holds a simulated scenario (tests/dashboards_fixtures.py): two hours of the
Yingyang site with labelled incidents, decoded and encoded by the hub's own code, the
events the default rules raised, and hub_stats. Each panel target, template variable
and the events annotation must run, return the columns (and group-by tags) the panel is
built around, and return data where the scenario produced some.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import pytest

from dashboards.catalog import BOARDS, dashboard_json
from dashboards.common import BuildConfig
from devstack.stack import ManagedProcess
from ingest.influxql import QueryTarget, Series, query
from sensors.access import NAME as ACCESS
from sensors.smoke import NAME as SMOKE
from tests.support.dashboards_fixtures import HUB_NAME, LoadedScenario, load_scenario
from tests.support.grafana_macros import ALL, TimeRange, apply_regex, expand

pytestmark = pytest.mark.integration

DATABASE: Final = "gw_dashboards"


@dataclass(frozen=True)
class Loaded:
    target: QueryTarget
    scenario: LoadedScenario
    time_range: TimeRange


@pytest.fixture(scope="module")
def loaded(influxdb: ManagedProcess) -> Iterator[Loaded]:
    url = f"http://127.0.0.1:{influxdb.port}"
    scenario = load_scenario(url, DATABASE)
    # The time picker set around the scenario's window, as an operator would.
    from_ms = int((scenario.start - timedelta(hours=1)).timestamp() * 1000)
    to_ms = int((scenario.end + timedelta(hours=1)).timestamp() * 1000)
    yield Loaded(QueryTarget(url=url, database=DATABASE), scenario, TimeRange(from_ms, to_ms))
    query(QueryTarget(url=url, database=DATABASE), f'DROP DATABASE "{DATABASE}"')


def _all_variables(site: str) -> dict[str, list[str]]:
    return {
        "site": [site],
        "kind": [ALL],
        "cell": [ALL],
        "device": [ALL],
        "hub": [ALL],
        "map_api_key": ["k"],
    }


def _all_values(model: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v.get("allValue", ".*") for v in model["templating"]["list"]}


@dataclass(frozen=True)
class Expect:
    columns: tuple[str, ...]
    tags: tuple[str, ...] = ()
    data: bool = True
    """The scenario produced data this target must show."""


EXPECTED: Final[dict[tuple[str, str, str], Expect]] = {
    ("gridwatch-operations", "Active events by severity and state", "A"): Expect(
        ("time", "event_id", "state", "severity", "rule")
    ),
    ("gridwatch-operations", "Ingest health", "A"): Expect(("time", "received/s", "rejected/s")),
    ("gridwatch-operations", "Ingest health", "B"): Expect(("time", "spool")),
    ("gridwatch-operations", "Ingest health", "C"): Expect(("time", "lag")),
    ("gridwatch-operations", "Newest events", "A"): Expect(
        ("time", "event_id", "title", "severity", "rule", "cell", "device", "assignee")
    ),
    ("gridwatch-operations", "Events per hour", "A"): Expect(("time", "count"), ("severity",)),
    ("gridwatch-grid-map", "Grid map", "A"): Expect(
        ("time", "event_id", "lat", "lon", "title", "state", "severity")
    ),
    ("gridwatch-grid-map", "Open events on the map", "A"): Expect(
        ("time", "event_id", "lat", "lon", "title", "state", "severity")
    ),
    ("gridwatch-access", "Door events", "A"): Expect(("time", "door_opened")),
    ("gridwatch-access", "Door events", "B"): Expect(("time", "access_granted")),
    ("gridwatch-access", "Door events", "C"): Expect(("time", "access_denied")),
    ("gridwatch-access", "Door events", "D"): Expect(("time", "door_forced")),
    ("gridwatch-access", "Door events", "E"): Expect(("time", "door_held")),
    ("gridwatch-access", "Denials per door", "A"): Expect(
        ("time", "denials"), ("cell", "device", "door")
    ),
    ("gridwatch-access", "Forced and held-open doors", "A"): Expect(
        ("time", "events"), ("cell", "device", "door")
    ),
    ("gridwatch-access", "Door state now", "A"): Expect(
        ("time", "open"), ("cell", "device", "door")
    ),
    ("gridwatch-fire", "Obscuration per detector", "A"): Expect(("time", "mean"), ("device",)),
    ("gridwatch-fire", "Temperature per detector", "A"): Expect(("time", "mean"), ("device",)),
    ("gridwatch-fire", "eCO2 per detector", "A"): Expect(("time", "mean"), ("device",)),
    ("gridwatch-fire", "Worst obscuration per cell", "A"): Expect(("time", "max"), ("cell",)),
    ("gridwatch-fire", "Alarms and faults per detector", "A"): Expect(
        ("time", "alarm"), ("cell", "device")
    ),
    ("gridwatch-fire", "Alarms and faults per detector", "B"): Expect(
        ("time", "fault"), ("cell", "device")
    ),
    ("gridwatch-fire", "Detectors in alarm now", "A"): Expect(
        ("time", "alarm"), ("cell", "device")
    ),
    ("gridwatch-parking", "Lot occupancy against capacity", "A"): Expect(
        ("time", "occupancy", "capacity"), ("lot",)
    ),
    ("gridwatch-parking", "Bays occupied now, per zone", "A"): Expect(
        ("time", "occupied"), ("bay_id", "cell", "zone")
    ),
    ("gridwatch-parking", "Overstays, fire-lane and bay violations", "A"): Expect(
        ("time", "event_id", "title", "incident", "severity", "cell", "device")
    ),
    ("gridwatch-parking", "Parking incidents per hour", "A"): Expect(
        ("time", "count"), ("incident",)
    ),
    ("gridwatch-device-health", "Last seen", "A"): Expect(
        ("time", "seq"), ("cell", "device", "kind")
    ),
    ("gridwatch-device-health", "Online / offline", "A"): Expect(
        ("time", "state"), ("device", "kind")
    ),
    ("gridwatch-device-health", "Battery", "A"): Expect(("time", "last"), ("device",)),
    ("gridwatch-device-health", "Faults and tamper", "A"): Expect(
        ("time", "fault"), ("device", "kind")
    ),
    ("gridwatch-device-health", "Faults and tamper", "B"): Expect(
        ("time", "tamper"), ("device", "kind")
    ),
    ("gridwatch-device-health", "Messages per device", "A"): Expect(("time", "count"), ("device",)),
    ("gridwatch-device-health", "Lost messages (sequence gaps)", "A"): Expect(
        ("time", "max"), ("device",)
    ),
    ("gridwatch-hub-health", "Messages per second", "A"): Expect(
        ("time", "received", "stored", "rejected"), ("hub",)
    ),
    ("gridwatch-hub-health", "Dead letters and write failures per second", "A"): Expect(
        ("time", "dead_lettered", "write_failures", "backpressure_waits"), ("hub",)
    ),
    ("gridwatch-hub-health", "Spool backlog", "A"): Expect(("time", "spool_bytes"), ("hub",)),
    ("gridwatch-hub-health", "Writer lag", "A"): Expect(("time", "lag_s"), ("hub",)),
    # The scenario's hub_stats are ingest's counters only (the harness runs the rules);
    # the field names are checked against `RulesService.status()` in the build tests.
    ("gridwatch-hub-health", "Detection lag", "A"): Expect(
        ("time", "rules_lag_s"), ("hub",), data=False
    ),
    ("gridwatch-hub-health", "Time to event (p99)", "A"): Expect(
        ("time", "rules_event_latency_p99_ms"), ("hub",), data=False
    ),
    ("gridwatch-hub-health", "Late readings", "A"): Expect(
        ("time", "rules_late_readings", "readings_ahead"), ("hub",)
    ),
    ("gridwatch-hub-health", "Storage refusing writes", "A"): Expect(
        ("time", "storage_blocked_s"), ("hub",)
    ),
    ("gridwatch-hub-health", "Broker sessions lost", "A"): Expect(
        ("time", "sessions_lost"), ("hub",)
    ),
    ("gridwatch-hub-health", "Broker reconnects", "A"): Expect(("time", "reconnects"), ("hub",)),
    ("gridwatch-hub-health", "Connected / uptime", "A"): Expect(
        ("time", "connected", "uptime"), ("hub",)
    ),
    # Alarm KPIs: the scenario is calm (no flood, no chattering, nobody acknowledges);
    # tests/dashboards/test_dashboards_alarm_kpi.py checks every figure on a history made
    # for it, against the hub's own (events.kpi).
    ("gridwatch-alarm-kpi", "Alarms per 10 minutes", "A"): Expect(("time", "alarms"), ("site",)),
    ("gridwatch-alarm-kpi", "Alarms per hour", "A"): Expect(("time", "alarms"), ("site",)),
    ("gridwatch-alarm-kpi", "Alarms per day", "A"): Expect(("time", "alarms"), ("site",)),
    ("gridwatch-alarm-kpi", "Average per 10 minutes", "A"): Expect(("time", "per 10 minutes")),
    ("gridwatch-alarm-kpi", "Average per hour", "A"): Expect(("time", "per hour")),
    ("gridwatch-alarm-kpi", "Average per day", "A"): Expect(("time", "per day")),
    ("gridwatch-alarm-kpi", "Peak 10 minutes", "A"): Expect(("time", "peak")),
    ("gridwatch-alarm-kpi", "Time in flood", "A"): Expect(("time", "in flood")),
    ("gridwatch-alarm-kpi", "Top-10 share", "A"): Expect(("time", "top share")),
    ("gridwatch-alarm-kpi", "Standing, shelved, suppressed, out of service", "A"): Expect(
        ("time", "standing")
    ),
    ("gridwatch-alarm-kpi", "Standing, shelved, suppressed, out of service", "B"): Expect(
        ("time", "shelved"), data=False
    ),
    ("gridwatch-alarm-kpi", "Standing, shelved, suppressed, out of service", "C"): Expect(
        ("time", "suppressed"), data=False
    ),
    ("gridwatch-alarm-kpi", "Standing, shelved, suppressed, out of service", "D"): Expect(
        ("time", "out of service"), data=False
    ),
    ("gridwatch-alarm-kpi", "Waiting for acknowledgement", "A"): Expect(("time", "unacknowledged")),
    ("gridwatch-alarm-kpi", "Alarms, acknowledgements and resolutions per hour", "A"): Expect(
        ("time", "alarms")
    ),
    ("gridwatch-alarm-kpi", "Alarms, acknowledgements and resolutions per hour", "B"): Expect(
        ("time", "acknowledged"), data=False
    ),
    ("gridwatch-alarm-kpi", "Alarms, acknowledgements and resolutions per hour", "C"): Expect(
        ("time", "resolved"), data=False
    ),
    ("gridwatch-alarm-kpi", "Top 10 alarm points", "A"): Expect(
        ("time", "alarms", "rule", "device")
    ),
    ("gridwatch-alarm-kpi", "Chattering alarm points", "A"): Expect(
        ("time", "most in 1 min"), ("device", "rule"), data=False
    ),
}


def _targets() -> list[tuple[str, str, str, str]]:
    out = []
    for board in BOARDS:
        model = dashboard_json(board, BuildConfig())
        for panel in model["panels"]:
            for target in panel["targets"]:
                out.append((board.uid, panel["title"], target["refId"], target["query"]))
    return out


def _run(loaded: Loaded, uid: str, text: str, variables: dict[str, list[str]]) -> list[Series]:
    model = dashboard_json(next(b for b in BOARDS if b.uid == uid), BuildConfig())
    return query(
        loaded.target, expand(text, loaded.time_range, variables, _all_values(model)), epoch="ms"
    )


def test_every_target_has_an_expectation() -> None:
    assert sorted((u, t, r) for u, t, r, _ in _targets()) == sorted(EXPECTED)


@pytest.mark.parametrize(("uid", "title", "ref", "text"), _targets(), ids=lambda v: str(v)[:40])
def test_panel_query_returns_the_expected_series(
    loaded: Loaded, uid: str, title: str, ref: str, text: str
) -> None:
    expect = EXPECTED[uid, title, ref]
    series = _run(loaded, uid, text, _all_variables(loaded.scenario.site.site))
    assert bool(series) == expect.data, f"{uid} / {title} / {ref}: {len(series)} series"
    for s in series:
        assert tuple(s.columns) == expect.columns
        assert tuple(sorted(s.tags)) == expect.tags
        assert s.values


def _total(series: list[Series], column: str) -> float:
    return sum(row[s.columns.index(column)] or 0 for s in series for row in s.values)


def test_counts_match_what_the_scenario_wrote(loaded: Loaded) -> None:
    """Not just non-empty: door event counts and event counts add up to what was written."""
    site = loaded.scenario.site.site
    written = loaded.scenario.device_events
    by_key = {(u, t, r): q for u, t, r, q in _targets()}
    for ref, name in zip(
        "ABCDE",
        ("door_opened", "access_granted", "access_denied", "door_forced", "door_held"),
        strict=True,
    ):
        series = _run(
            loaded,
            "gridwatch-access",
            by_key["gridwatch-access", "Door events", ref],
            _all_variables(site),
        )
        assert _total(series, name) == written[ACCESS, name], name
    assert written[ACCESS, "door_forced"] > 0 and written[ACCESS, "access_denied"] > 0
    series = _run(
        loaded,
        "gridwatch-fire",
        by_key["gridwatch-fire", "Alarms and faults per detector", "A"],
        _all_variables(site),
    )
    assert _total(series, "alarm") == written[SMOKE, "alarm"] > 0
    per_hour = _run(
        loaded,
        "gridwatch-operations",
        by_key["gridwatch-operations", "Events per hour", "A"],
        _all_variables(site),
    )
    assert _total(per_hour, "count") == loaded.scenario.events > 0
    active = _run(
        loaded,
        "gridwatch-operations",
        by_key["gridwatch-operations", "Active events by severity and state", "A"],
        _all_variables(site),
    )
    assert sum(len(s.values) for s in active) == loaded.scenario.open_events
    gaps = _run(
        loaded,
        "gridwatch-device-health",
        by_key["gridwatch-device-health", "Lost messages (sequence gaps)", "A"],
        _all_variables(site),
    )
    assert {s.tags["device"] for s in gaps} == {loaded.scenario.lost_device}
    hub = _run(
        loaded,
        "gridwatch-hub-health",
        by_key["gridwatch-hub-health", "Messages per second", "A"],
        _all_variables(site),
    )
    assert {s.tags["hub"] for s in hub} == {HUB_NAME}
    assert _total(hub, "received") > 0


def test_variables_narrow_the_panels(loaded: Loaded) -> None:
    """A chosen cell and two devices (a multi-value regex) restrict every tagged series."""
    site = loaded.scenario.site.site
    smoke = sorted(d.id for d in loaded.scenario.site.devices if d.kind == SMOKE)
    cell = next(d.cell for d in loaded.scenario.site.devices if d.id == smoke[0])
    chosen = [
        d for d in smoke if next(x.cell for x in loaded.scenario.site.devices if x.id == d) == cell
    ][:2]
    variables = {**_all_variables(site), "cell": [cell], "device": chosen}
    by_key = {(u, t, r): q for u, t, r, q in _targets()}
    series = _run(
        loaded,
        "gridwatch-fire",
        by_key["gridwatch-fire", "Temperature per detector", "A"],
        variables,
    )
    assert {s.tags["device"] for s in series} == set(chosen)
    cells = _run(
        loaded,
        "gridwatch-fire",
        by_key["gridwatch-fire", "Worst obscuration per cell", "A"],
        variables,
    )
    assert {s.tags["cell"] for s in cells} == {cell}


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b.uid)
def test_template_variables_list_the_scenario_values(loaded: Loaded, board: Any) -> None:
    model = dashboard_json(board, BuildConfig())
    site = loaded.scenario.site
    expected = {
        "site": {site.site},
        "kind": {"access", "smoke", "parking"},
        "cell": {d.cell for d in site.devices},
        "device": {d.id for d in site.devices},
        "hub": {HUB_NAME},
    }
    for variable in model["templating"]["list"]:
        if variable["type"] != "query":
            continue
        text = expand(
            variable["query"], loaded.time_range, _all_variables(site.site), _all_values(model)
        )
        series = query(loaded.target, text)
        assert all(s.columns == ["key", "value"] for s in series)
        values = apply_regex(
            sorted({row[1] for s in series for row in s.values}), variable.get("regex")
        )
        assert set(values) == expected[variable["name"]], variable["name"]


def test_events_annotation_returns_title_text_and_tags(loaded: Loaded) -> None:
    model = dashboard_json(BOARDS[0], BuildConfig())
    (annotation,) = model["annotations"]["list"]
    target = annotation["target"]
    series = _run(loaded, BOARDS[0].uid, target["query"], _all_variables(loaded.scenario.site.site))
    (s,) = series
    wanted = {target["titleColumn"], target["textColumn"], *target["tagsColumn"].split(",")}
    assert wanted <= set(s.columns)
    assert len(s.values) == loaded.scenario.events
