"""Dashboards as code: golden JSON, stable bytes, and names that match their writers.

The golden tree under tests/golden/dashboards/ is what `gridwatch dashboards build`
writes with default settings. After an intended change, regenerate it with
`UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_dashboards_build.py` and review the diff.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dashboards import schema
from dashboards.catalog import BOARDS, dashboard_json
from dashboards.common import CELL, DATASOURCE_UID, DEVICE, KIND, SITE, BuildConfig
from dashboards.grid_map import DEVICE_STATE_COLOURS, layer_url
from dashboards.provisioning import InfluxTarget, datasource_model, tree
from dashboards.push import CLIENT_REQUIREMENT
from detection.rules_service import RulesService
from events.manager import EventManager
from events.store import EventStore
from hub.cli import main
from ingest.decode import Decoder
from ingest.stats import IngestStats
from rules.engine import Engine
from rules.schema import load_rules
from sensors.base import COMMON_TAGS, DecodeContext, Reading
from sensors.registry import KINDS

GOLDEN = Path(__file__).parents[1] / "golden" / "dashboards"
ROOT = Path(__file__).parents[2]
DEFAULT_INFLUX = InfluxTarget(url="http://127.0.0.1:18086", database="gridwatch")


def _default_tree() -> dict[str, bytes]:
    return tree(DEFAULT_INFLUX, BuildConfig())


def _diff(name: str, expected: bytes, actual: bytes) -> str:
    return "".join(
        difflib.unified_diff(
            expected.decode().splitlines(keepends=True),
            actual.decode().splitlines(keepends=True),
            f"golden/{name}",
            f"built/{name}",
        )
    )


def test_building_twice_gives_identical_bytes() -> None:
    assert _default_tree() == _default_tree()


def test_build_matches_the_golden_tree() -> None:
    built = _default_tree()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        for relative, content in built.items():
            (GOLDEN / relative).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / relative).write_bytes(content)
    on_disk = {
        p.relative_to(GOLDEN).as_posix(): p.read_bytes() for p in GOLDEN.rglob("*") if p.is_file()
    }
    assert sorted(on_disk) == sorted(built), "files added or removed: regenerate the golden tree"
    diffs = [_diff(n, on_disk[n], built[n]) for n in built if on_disk[n] != built[n]]
    assert not diffs, "dashboards changed; review and regenerate:\n" + "\n".join(diffs)


def test_cli_build_writes_the_golden_tree(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["dashboards", "build", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = {
        p.relative_to(tmp_path).as_posix(): p.read_bytes()
        for p in tmp_path.rglob("*")
        if p.is_file()
    }
    assert written == _default_tree()
    assert len(result.output.splitlines()) == len(written)


def test_secrets_never_reach_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDWATCH_INFLUX__USERNAME", "grafana")
    monkeypatch.setenv("GRIDWATCH_INFLUX__PASSWORD", "s3cret-influx-password")
    result = CliRunner().invoke(main, ["dashboards", "build", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"s3cret-influx-password" not in path.read_bytes(), path
    ds = yaml.safe_load((tmp_path / "provisioning/datasources/gridwatch.yaml").read_text())
    (model,) = ds["datasources"]
    assert model["user"] == "grafana"
    assert model["secureJsonData"] == {"password": "${GRIDWATCH_INFLUX__PASSWORD}"}
    assert model["jsonData"]["version"] == "InfluxQL"
    assert model["type"] == "influxdb" and model["uid"] == DATASOURCE_UID


def test_v2_datasource_sends_the_token_header() -> None:
    v2 = InfluxTarget(url="http://db:8086", database="bucket", api="v2", token="tok-123")
    in_file = datasource_model(v2, secrets="env")
    assert in_file["jsonData"] == {
        "dbName": "bucket",
        "httpMode": "POST",
        "version": "InfluxQL",
        "httpHeaderName1": "Authorization",
    }
    assert in_file["secureJsonData"] == {"httpHeaderValue1": "Token ${GRIDWATCH_INFLUX__TOKEN}"}
    pushed = datasource_model(v2, secrets="inline")
    assert pushed["secureJsonData"] == {"httpHeaderValue1": "Token tok-123"}


def test_provider_points_at_the_dashboard_files(tmp_path: Path) -> None:
    path = "/srv/grafana/gridwatch"
    result = CliRunner().invoke(
        main, ["dashboards", "build", "--out", str(tmp_path), "--dashboards-path", path]
    )
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load((tmp_path / "provisioning/dashboards/gridwatch.yaml").read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == path
    assert provider["folderUid"] == "gridwatch"


def _panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    return list(model["panels"])


@pytest.mark.parametrize("board", BOARDS, ids=lambda b: b.uid)
def test_every_panel_queries_influxql_on_the_gridwatch_datasource(board: Any) -> None:
    model = dashboard_json(board, BuildConfig())
    assert model["uid"] == board.uid and model["title"] == board.title
    assert model["schemaVersion"] == 41  # Grafana 11.6
    ids = [p["id"] for p in _panels(model)]
    assert len(ids) == len(set(ids))
    for panel in _panels(model):
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "influxdb", "uid": DATASOURCE_UID}
            assert target["rawQuery"] is True
            assert target["query"].startswith(("SELECT", "SHOW"))
    names = {v["name"] for v in model["templating"]["list"]}
    assert {"site", "kind", "cell", "device"} <= names
    (annotation,) = model["annotations"]["list"]
    assert annotation["target"]["query"].startswith('SELECT "title", "message"')
    assert annotation["enable"] is True


def test_newest_events_link_to_the_event_desk() -> None:
    config = BuildConfig(hub_url="https://hub.example.org/")
    model = dashboard_json(BOARDS[0], config)
    (newest,) = [p for p in _panels(model) if p["title"] == "Newest events"]
    (link,) = newest["fieldConfig"]["defaults"]["links"]
    assert link["url"] == "https://hub.example.org/desk/events/${__data.fields.event_id}"


def test_grid_map_loads_cells_and_devices_from_the_hub_api() -> None:
    config = BuildConfig(hub_url="http://hub:18080", map_site="melbourne_bays")
    model = dashboard_json(next(b for b in BOARDS if b.uid == "gridwatch-grid-map"), config)
    (geomap,) = [p for p in _panels(model) if p["type"] == "geomap"]
    layers = {layer["name"]: layer for layer in geomap["options"]["layers"]}
    assert layers["Grid cells"]["config"]["src"] == (
        "http://hub:18080/api/v1/sites/melbourne_bays/cells.geojson"
    )
    devices = layers["Devices"]["config"]
    assert devices["src"] == layer_url(config, "devices")
    styled = {rule["check"]["value"]: rule["style"]["color"]["fixed"] for rule in devices["rules"]}
    assert styled == DEVICE_STATE_COLOURS
    assert set(styled) == {"ok", "alarm", "offline", "low_battery", "out_of_service", "shelved"}
    assert layers["Open events"]["location"] == {
        "mode": "coords",
        "latitude": "lat",
        "longitude": "lon",
    }
    keyed = dashboard_json(
        next(b for b in BOARDS if b.uid == "gridwatch-grid-map"),
        BuildConfig(map_api_key_param=True),
    )
    assert "?api_key=${map_api_key}" in json.dumps(keyed)


# --- the names dashboards declare must be the names the writers write ---------------


def test_kind_measurements_come_from_the_sensor_plugins() -> None:
    for measurement in (schema.ACCESS, schema.SMOKE, schema.PARKING):
        kind = KINDS[measurement.name]
        assert measurement.fields == tuple(spec.name for spec in kind.fields)
        assert set(kind.tags) <= set(measurement.tags)
    with pytest.raises(KeyError):
        schema.SMOKE.field("smoke_level")


def test_variables_are_the_common_tags() -> None:
    assert {SITE, KIND, CELL, DEVICE} <= set(COMMON_TAGS)


def test_security_event_names_come_from_the_renderer() -> None:
    ev = schema.security_event()
    assert {"site", "cell", "device", "rule", "severity", "state", "action", "incident"} <= set(
        ev.tags
    )
    assert {"event_id", "title", "message", "lat", "lon", "assignee"} <= set(ev.fields)


def test_hub_stats_fields_are_what_ingest_writes() -> None:
    written = set(IngestStats().fields())
    assert set(schema.HUB_STATS_FIELDS) == written


def test_rules_stats_fields_are_what_the_rules_service_reports(tmp_path: Path) -> None:
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        service = RulesService(Engine([]), store, EventManager(store, workers={}))
        status = service.status()
        # A dict is for the status file only: `hub_stats` leaves it out (no such field).
        assert set(schema.RULES_STATS_FIELDS) == {
            k for k, v in status.items() if not isinstance(v, dict)
        }


def test_device_status_fields_are_what_ingest_writes() -> None:
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: v))
    reading = decoder.decode("gw/v1/s/smoke/d1/status", b"offline", 1_700_000_000_000_000_000)
    assert isinstance(reading, Reading)
    assert reading.measurement == schema.DEVICE_STATUS_M.name
    assert tuple(reading.fields) == schema.DEVICE_STATUS_FIELDS


def test_parking_incidents_are_incidents_of_the_default_rule_pack() -> None:
    incidents = {rule.incident_kind for rule in load_rules()}
    assert set(schema.PARKING_INCIDENTS) <= incidents


def test_the_push_venv_requirement_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["optional-dependencies"]["grafana-push"] == [CLIENT_REQUIREMENT]
    pinned = [d for d in project["project"]["dependencies"] if d.startswith("grafana-foundation")]
    assert pinned == ["grafana-foundation-sdk==1769699379!11.6.0"]


def test_a_change_shows_as_a_readable_line_diff() -> None:
    built = _default_tree()
    name = "dashboards/gridwatch-fire.json"
    changed = built[name].replace(b'"title": "Temperature per detector"', b'"title": "Temp"')
    diff = _diff(name, built[name], changed)
    assert '-      "title": "Temperature per detector",' in diff.splitlines()
    assert '+      "title": "Temp",' in diff.splitlines()
    changes = [
        line
        for line in diff.splitlines()
        if line[:1] in ("+", "-") and not line.startswith(("+++", "---"))
    ]
    assert len(changes) == 2  # one line out, one line in: nothing else moves
