"""Grafana's file-provisioning tree and the datasource model the push sends.

`write_tree` lays out what a Grafana server reads at start-up
(`<out>/provisioning/datasources/`, `<out>/provisioning/dashboards/` and one JSON per
dashboard under `<out>/dashboards/`). Same inputs, same bytes: keys sorted, files
written in a fixed order. Secrets never go into files: the datasource YAML names
environment variables that Grafana expands when it reads the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import yaml

from dashboards.catalog import BOARDS, dashboard_bytes, dashboard_json
from dashboards.common import (
    DATASOURCE_NAME,
    DATASOURCE_UID,
    FOLDER_TITLE,
    FOLDER_UID,
    BuildConfig,
)
from dashboards.influxql import PLUGIN_TYPE

DEFAULT_DASHBOARDS_PATH: Final = "/var/lib/grafana/dashboards/gridwatch"
PASSWORD_ENV: Final = "GRIDWATCH_INFLUX__PASSWORD"  # noqa: S105 (a variable name)
TOKEN_ENV: Final = "GRIDWATCH_INFLUX__TOKEN"  # noqa: S105 (a variable name)


@dataclass(frozen=True, slots=True)
class InfluxTarget:
    """The InfluxDB Grafana should query (from the hub's `[influx]` settings)."""

    url: str
    database: str
    api: Literal["v1", "v2"] = "v1"
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    """v2/v3 through the v1-compatibility `/query`: sent as `Authorization: Token …`."""


def datasource_model(
    influx: InfluxTarget, *, secrets: Literal["env", "inline"]
) -> dict[str, object]:
    """Grafana's datasource object: InfluxDB plugin, InfluxQL mode, POST queries.

    `secrets="env"` writes `${VAR}` references (provisioning files); `"inline"` the values
    themselves (the HTTP API push, which stores them encrypted in Grafana)."""
    json_data: dict[str, object] = {
        "dbName": influx.database,
        "httpMode": "POST",
        "version": "InfluxQL",
    }
    if influx.retention_policy:
        json_data["retentionPolicy"] = influx.retention_policy
    secure: dict[str, str] = {}
    if influx.username and influx.password is not None:
        secure["password"] = influx.password if secrets == "inline" else f"${{{PASSWORD_ENV}}}"
    if influx.token is not None or influx.api == "v2":
        json_data["httpHeaderName1"] = "Authorization"
        token = influx.token if secrets == "inline" and influx.token else f"${{{TOKEN_ENV}}}"
        secure["httpHeaderValue1"] = f"Token {token}"
    model: dict[str, object] = {
        "name": DATASOURCE_NAME,
        "uid": DATASOURCE_UID,
        "type": PLUGIN_TYPE,
        "access": "proxy",
        "url": influx.url,
        "isDefault": False,
        "jsonData": json_data,
    }
    if influx.username:
        model["user"] = influx.username
    if secure:
        model["secureJsonData"] = secure
    return model


def _yaml(document: dict[str, object]) -> bytes:
    return yaml.safe_dump(
        document, sort_keys=True, default_flow_style=False, allow_unicode=True
    ).encode()


def datasource_yaml(influx: InfluxTarget) -> bytes:
    model = datasource_model(influx, secrets="env")
    model["editable"] = False
    model["orgId"] = 1
    return _yaml({"apiVersion": 1, "datasources": [model]})


def provider_yaml(dashboards_path: str) -> bytes:
    provider = {
        "name": "gridwatch",
        "orgId": 1,
        "type": "file",
        "folder": FOLDER_TITLE,
        "folderUid": FOLDER_UID,
        "disableDeletion": True,
        "allowUiUpdates": False,
        "updateIntervalSeconds": 60,
        "options": {"path": dashboards_path, "foldersFromFilesStructure": False},
    }
    return _yaml({"apiVersion": 1, "providers": [provider]})


def tree(
    influx: InfluxTarget, config: BuildConfig, dashboards_path: str = DEFAULT_DASHBOARDS_PATH
) -> dict[str, bytes]:
    """Relative path → bytes of every file of the provisioning tree, sorted by path."""
    files = {
        "provisioning/datasources/gridwatch.yaml": datasource_yaml(influx),
        "provisioning/dashboards/gridwatch.yaml": provider_yaml(dashboards_path),
    }
    for board in BOARDS:
        files[f"dashboards/{board.filename}"] = dashboard_bytes(dashboard_json(board, config))
    return dict(sorted(files.items()))


def write_tree(out: Path, files: dict[str, bytes]) -> list[Path]:
    """Write the files under `out` (only those; nothing else is touched)."""
    written = []
    for relative, content in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written
