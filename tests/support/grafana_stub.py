"""A stand-in for Grafana's HTTP API on 127.0.0.1, checking requests against its docs.

Grafana cannot be installed here, so this is the one fake the dashboards tests use. It
serves the endpoints `gridwatch dashboards push` needs, as documented in Grafana's HTTP
API reference (folder, data source and dashboard APIs), and records every request. A
request the docs do not describe (path, method, missing auth, non-JSON body, missing
required field) is answered 400/404 and recorded in `violations`, which tests assert
empty. Semantics kept: bearer-token auth (401 unknown token, 403 Viewer writing),
404 for missing objects, dashboard versions with 412 `version-mismatch` unless
`overwrite`, as Grafana does.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKENS = {"admin-token": "Admin", "viewer-token": "Viewer"}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class GrafanaState:
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    """uid → {"dashboard": model, "folderUid": ...}"""
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    edit_after_read: set[str] = field(default_factory=set)
    """Dashboard uids someone edits in Grafana right after the push read them."""
    next_id: int = 1

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method != "GET"]


_ROUTES = [
    ("GET", re.compile(r"^/api/folders/(?P<uid>[^/]+)$"), "get_folder"),
    ("POST", re.compile(r"^/api/folders$"), "create_folder"),
    ("PUT", re.compile(r"^/api/folders/(?P<uid>[^/]+)$"), "update_folder"),
    ("GET", re.compile(r"^/api/datasources/uid/(?P<uid>[^/]+)$"), "get_datasource"),
    ("POST", re.compile(r"^/api/datasources$"), "create_datasource"),
    ("PUT", re.compile(r"^/api/datasources/uid/(?P<uid>[^/]+)$"), "update_datasource"),
    ("GET", re.compile(r"^/api/dashboards/uid/(?P<uid>[^/]+)$"), "get_dashboard"),
    ("POST", re.compile(r"^/api/dashboards/db$"), "post_dashboard"),
]


class _Handler(BaseHTTPRequestHandler):
    state: GrafanaState
    lock: threading.Lock

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _violation(self, why: str) -> None:
        self.state.violations.append(f"{self.command} {self.path}: {why}")
        self._reply(400, {"message": why})

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            if not self.headers.get("Content-Type", "").startswith("application/json"):
                with self.lock:
                    self._violation("body without Content-Type: application/json")
                return
            body = json.loads(raw)
        with self.lock:
            self.state.requests.append(
                Recorded(self.command, self.path, dict(self.headers.items()), body)
            )
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                self._reply(401, {"message": "Unauthorized"})
                return
            role = TOKENS.get(auth.removeprefix("Bearer "))
            if role is None:
                self._reply(401, {"message": "invalid API key"})
                return
            for method, pattern, name in _ROUTES:
                match = pattern.match(self.path)
                if match and method == self.command:
                    if method != "GET" and role != "Admin":
                        self._reply(403, {"message": "Access denied"})
                        return
                    if method != "GET" and not isinstance(body, dict):
                        self._violation("a JSON object body is required")
                        return
                    getattr(self, name)(body, **match.groupdict())
                    return
            self.state.violations.append(f"{self.command} {self.path}: not in Grafana's API")
            self._reply(404, {"message": "Not found"})

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    # --- folders: /api/folders -----------------------------------------------------

    def get_folder(self, body: Any, uid: str) -> None:
        folder = self.state.folders.get(uid)
        self._reply(200, folder) if folder else self._reply(404, {"message": "folder not found"})

    def create_folder(self, body: dict[str, Any]) -> None:
        if not isinstance(body.get("title"), str):
            self._violation("folder needs a title")
            return
        uid = body.get("uid") or f"f{self.state.next_id}"
        if uid in self.state.folders:
            self._reply(409, {"message": "a folder with the same uid already exists"})
            return
        folder = {"id": self.state.next_id, "uid": uid, "title": body["title"], "version": 1}
        self.state.next_id += 1
        self.state.folders[uid] = folder
        self._reply(200, folder)

    def update_folder(self, body: dict[str, Any], uid: str) -> None:
        folder = self.state.folders.get(uid)
        if folder is None:
            self._reply(404, {"message": "folder not found"})
            return
        if not body.get("overwrite") and body.get("version") != folder["version"]:
            self._reply(
                412,
                {
                    "message": "the folder has been changed by someone else",
                    "status": "version-mismatch",
                },
            )
            return
        folder.update(title=body["title"], version=folder["version"] + 1)
        self._reply(200, folder)

    # --- data sources: /api/datasources ---------------------------------------------

    def get_datasource(self, body: Any, uid: str) -> None:
        ds = self.state.datasources.get(uid)
        if ds is None:
            self._reply(404, {"message": "Data source not found"})
            return
        public = {k: v for k, v in ds.items() if k != "secureJsonData"}
        self._reply(200, public)

    def _check_datasource(self, body: dict[str, Any]) -> bool:
        missing = [k for k in ("name", "type", "access", "url") if not isinstance(body.get(k), str)]
        if missing:
            self._violation(f"data source without {missing}")
            return False
        return True

    def create_datasource(self, body: dict[str, Any]) -> None:
        if not self._check_datasource(body):
            return
        if any(ds["name"] == body["name"] for ds in self.state.datasources.values()):
            self._reply(409, {"message": "data source with the same name already exists"})
            return
        ds = {**body, "id": self.state.next_id, "version": 1}
        self.state.next_id += 1
        self.state.datasources[body.get("uid") or str(ds["id"])] = ds
        self._reply(
            200,
            {"datasource": ds, "id": ds["id"], "message": "Datasource added", "name": ds["name"]},
        )

    def update_datasource(self, body: dict[str, Any], uid: str) -> None:
        ds = self.state.datasources.get(uid)
        if ds is None:
            self._reply(404, {"message": "Data source not found"})
            return
        if not self._check_datasource(body):
            return
        if body.get("version") is not None and body["version"] != ds["version"]:
            self._reply(409, {"message": "Datasource has already been updated by someone else"})
            return
        ds.update(body)
        ds["version"] += 1
        self._reply(
            200,
            {"datasource": ds, "id": ds["id"], "message": "Datasource updated", "name": ds["name"]},
        )

    # --- dashboards: /api/dashboards ------------------------------------------------

    def get_dashboard(self, body: Any, uid: str) -> None:
        stored = self.state.dashboards.get(uid)
        if stored is None:
            self._reply(404, {"message": "Dashboard not found"})
            return
        self._reply(
            200,
            {
                "dashboard": stored["dashboard"],
                "meta": {
                    "folderUid": stored["folderUid"],
                    "version": stored["dashboard"]["version"],
                },
            },
        )
        if uid in self.state.edit_after_read:
            self.state.edit_after_read.discard(uid)
            stored["dashboard"] = {
                **stored["dashboard"],
                "title": "edited by hand",
                "version": stored["dashboard"]["version"] + 1,
            }

    def post_dashboard(self, body: dict[str, Any]) -> None:
        model = body.get("dashboard")
        if not isinstance(model, dict) or not isinstance(model.get("title"), str):
            self._violation("dashboard with a title is required")
            return
        if "folderUid" in body and not isinstance(body["folderUid"], str):
            self._violation("folderUid must be a string")
            return
        if not isinstance(body.get("overwrite", False), bool):
            self._violation("overwrite must be a boolean")
            return
        if body.get("folderUid") and body["folderUid"] not in self.state.folders:
            self._reply(400, {"message": "folder not found"})
            return
        uid = model.get("uid")
        stored = self.state.dashboards.get(uid) if uid else None
        if stored is None:
            if model.get("id") is not None:
                self._reply(404, {"message": "Dashboard not found"})
                return
            version, dashboard_id = 1, self.state.next_id
            self.state.next_id += 1
        else:
            current = stored["dashboard"]["version"]
            if not body.get("overwrite") and model.get("version") != current:
                self._reply(
                    412,
                    {
                        "message": "The dashboard has been changed by someone else",
                        "status": "version-mismatch",
                    },
                )
                return
            version, dashboard_id = current + 1, stored["dashboard"]["id"]
        saved = {**model, "id": dashboard_id, "version": version}
        self.state.dashboards[saved["uid"]] = {
            "dashboard": saved,
            "folderUid": body.get("folderUid", ""),
        }
        self._reply(
            200,
            {
                "id": dashboard_id,
                "uid": saved["uid"],
                "url": f"/d/{saved['uid']}",
                "status": "success",
                "version": version,
                "slug": saved["uid"],
            },
        )


@contextmanager
def grafana_stub() -> Iterator[tuple[str, GrafanaState]]:
    """A stub Grafana on a free 127.0.0.1 port; yields its URL and state."""
    state = GrafanaState()
    handler = type("Handler", (_Handler,), {"state": state, "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
