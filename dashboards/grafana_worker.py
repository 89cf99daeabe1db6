"""Runs inside the isolated grafana-client venv: applies one push plan to Grafana.

Started by `dashboards.push` as `<venv>/bin/python -I grafana_worker.py`, plan on stdin
(JSON), token in the environment (`GW_GRAFANA_PUSH_TOKEN`, never on the command line).
It imports only the standard library and grafana-client: the hub's environment never
loads grafana-client's `urllib3-future`, whose .pth rewrites `urllib3` in whichever
environment it is installed into. Writes one JSON line per step on stdout and a final
`{"error": …}` line on failure (exit 1).

Idempotent: objects that already match are left alone; a dashboard changed in Grafana
since it was read is refused by Grafana with 412 (the version we send is the one we
read), unless the plan says overwrite.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

TOKEN_ENV = "GW_GRAFANA_PUSH_TOKEN"  # noqa: S105 (a variable name, not a secret)


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()


def _not_found(errors: Any, exc: BaseException) -> bool:
    return isinstance(exc, errors.GrafanaClientError) and exc.status_code == 404


def _folder(api: Any, errors: Any, plan: dict[str, Any]) -> str:
    uid, title = plan["folder"]["uid"], plan["folder"]["title"]
    try:
        existing = api.folder.get_folder(uid)
    except errors.GrafanaClientError as exc:
        if not _not_found(errors, exc):
            raise
        api.folder.create_folder(title, uid=uid)
        return "created"
    if existing.get("title") == title:
        return "unchanged"
    api.folder.update_folder(uid, title=title, version=existing.get("version"))
    return "updated"


_DATASOURCE_COMPARED = ("name", "type", "access", "url", "user", "jsonData", "isDefault")


def _datasource(api: Any, errors: Any, plan: dict[str, Any]) -> str:
    model = plan["datasource"]
    try:
        existing = api.datasource.get_datasource_by_uid(model["uid"])
    except errors.GrafanaClientError as exc:
        if not _not_found(errors, exc):
            raise
        api.datasource.create_datasource(model)
        return "created"
    same = all(existing.get(k) == model.get(k) for k in _DATASOURCE_COMPARED if k in model)
    # Secrets cannot be read back: when the plan carries any, they are sent again.
    if same and "secureJsonData" not in model:
        return "unchanged"
    api.datasource.update_datasource_by_uid(
        model["uid"], {**model, "version": existing.get("version")}
    )
    return "updated"


def _dashboard(api: Any, errors: Any, plan: dict[str, Any], model: dict[str, Any]) -> str:
    folder_uid = plan["folder"]["uid"]
    body: dict[str, Any] = {
        "folderUid": folder_uid,
        "overwrite": bool(plan["overwrite"]),
        "message": plan["message"],
    }
    try:
        existing = api.dashboard.get_dashboard(model["uid"])
    except errors.GrafanaClientError as exc:
        if not _not_found(errors, exc):
            raise
        api.dashboard.update_dashboard({**body, "dashboard": {**model, "id": None}})
        return "created"
    stored = existing.get("dashboard", {})
    in_folder = existing.get("meta", {}).get("folderUid") == folder_uid
    if in_folder and all(stored.get(k) == v for k, v in model.items()):
        return "unchanged"
    dashboard = {**model, "id": stored.get("id"), "version": stored.get("version")}
    api.dashboard.update_dashboard({**body, "dashboard": dashboard})
    return "updated"


def _error(errors: Any, exc: BaseException) -> dict[str, Any]:
    status = getattr(exc, "status_code", 0) or 0
    message = str(getattr(exc, "message", "") or exc)
    if isinstance(exc, errors.GrafanaTimeoutError) or status == 0:
        kind = "network"
    elif status in (401, 403):
        kind = "auth"
    elif status in (409, 412):
        kind = "version"
    else:
        kind = "http"
    return {"error": {"kind": kind, "status": status, "message": message}}


def main() -> int:
    plan: dict[str, Any] = json.load(sys.stdin)
    token = os.environ.get(TOKEN_ENV, "")
    grafana_client = importlib.import_module("grafana_client")
    errors = importlib.import_module("grafana_client.client")
    # grafana-client wraps timeouts and HTTP errors, but a refused connection or a DNS
    # failure comes through as the HTTP library's own exception.
    transport = importlib.import_module("niquests.exceptions")
    api = grafana_client.GrafanaApi.from_url(
        plan["url"], credential=errors.TokenAuth(token), timeout=plan["timeout_s"]
    )
    step = "folder"
    try:
        _emit({"step": step, "name": plan["folder"]["title"], "result": _folder(api, errors, plan)})
        step = "datasource"
        _emit(
            {
                "step": step,
                "name": plan["datasource"]["name"],
                "result": _datasource(api, errors, plan),
            }
        )
        for model in plan["dashboards"]:
            step = f"dashboard {model['uid']}"
            result = _dashboard(api, errors, plan, model)
            _emit({"step": "dashboard", "name": model["uid"], "result": result})
    except (errors.GrafanaException, transport.RequestException) as exc:
        record = _error(errors, exc)
        record["error"]["step"] = step
        _emit(record)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
