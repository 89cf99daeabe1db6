"""`gridwatch dashboards push` against a stub of Grafana's HTTP API on 127.0.0.1.

The push runs for real: the CLI builds the plan, the grafana-client worker runs in its
isolated venv (created on first use), and every request it sends is checked by
tests/grafana_stub.py against Grafana's documented API.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dashboards.catalog import BOARDS
from dashboards.common import DATASOURCE_UID, FOLDER_UID
from dashboards.push import client_python, default_env_dir, ensure_client_env
from hub.cli import main
from tests.support.grafana_stub import GrafanaState, grafana_stub

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def client_env() -> Path:
    """The isolated grafana-client venv (created once; kept next to .venv)."""
    ensure_client_env(default_env_dir(), lambda message: None)
    return default_env_dir()


@pytest.fixture
def grafana() -> Iterator[tuple[str, GrafanaState]]:
    with grafana_stub() as stub:
        yield stub


def _push(url: str, client_env: Path, *extra: str, token: str = "admin-token") -> Result:
    return CliRunner().invoke(
        main,
        [
            "dashboards",
            "push",
            "--url",
            url,
            "--token",
            token,
            "--client-venv",
            str(client_env),
            *extra,
        ],
    )


def test_push_creates_folder_datasource_and_dashboards(
    grafana: tuple[str, GrafanaState], client_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state = grafana
    monkeypatch.setenv("GRIDWATCH_INFLUX__USERNAME", "grafana")
    monkeypatch.setenv("GRIDWATCH_INFLUX__PASSWORD", "influx-reader-pw")
    result = _push(url, client_env)
    assert result.exit_code == 0, result.output
    assert state.violations == []
    assert all(r.headers["Authorization"] == "Bearer admin-token" for r in state.requests)
    assert [(r.method, r.path) for r in state.writes()] == [
        ("POST", "/api/folders"),
        ("POST", "/api/datasources"),
        *[("POST", "/api/dashboards/db")] * len(BOARDS),
    ]
    assert state.folders[FOLDER_UID]["title"] == "GridWatch"
    ds = state.datasources[DATASOURCE_UID]
    assert ds["type"] == "influxdb" and ds["jsonData"]["version"] == "InfluxQL"
    assert ds["user"] == "grafana"
    assert ds["secureJsonData"] == {"password": "influx-reader-pw"}  # stored encrypted by Grafana
    assert sorted(state.dashboards) == sorted(b.uid for b in BOARDS)
    for request in state.writes()[2:]:
        assert request.body["folderUid"] == FOLDER_UID
        assert request.body["overwrite"] is False
        assert request.body["dashboard"]["id"] is None
    assert f"{len(BOARDS) + 2} created" in result.output  # folder, datasource, dashboards


def test_second_push_changes_nothing(grafana: tuple[str, GrafanaState], client_env: Path) -> None:
    url, state = grafana
    assert _push(url, client_env).exit_code == 0
    before = len(state.writes())
    result = _push(url, client_env)
    assert result.exit_code == 0, result.output
    assert len(state.writes()) == before
    assert f"{len(BOARDS) + 2} unchanged" in result.output
    assert state.violations == []


def test_changed_dashboard_is_updated_with_the_version_it_was_read_at(
    grafana: tuple[str, GrafanaState], client_env: Path
) -> None:
    url, state = grafana
    assert _push(url, client_env).exit_code == 0
    uid = BOARDS[0].uid
    stored = state.dashboards[uid]["dashboard"]
    state.dashboards[uid]["dashboard"] = {**stored, "title": "renamed in the UI", "version": 2}
    result = _push(url, client_env)
    assert result.exit_code == 0, result.output
    (post,) = [r for r in state.writes() if r.body.get("dashboard", {}).get("uid") == uid][1:]
    assert post.body["dashboard"]["version"] == 2
    assert state.dashboards[uid]["dashboard"]["version"] == 3
    assert state.dashboards[uid]["dashboard"]["title"] == BOARDS[0].title
    assert "1 updated" in result.output


def test_a_dashboard_edited_meanwhile_is_refused_with_412(
    grafana: tuple[str, GrafanaState], client_env: Path
) -> None:
    url, state = grafana
    assert _push(url, client_env).exit_code == 0
    uid = BOARDS[1].uid
    state.dashboards[uid]["dashboard"]["title"] = "edited"
    state.edit_after_read.add(uid)
    result = _push(url, client_env)
    assert result.exit_code == 1
    assert "412" in result.output and "changed in Grafana since it was read" in result.output
    assert f"dashboard {uid}" in result.output
    assert state.dashboards[uid]["dashboard"]["title"] == "edited by hand"
    state.edit_after_read.add(uid)
    forced = _push(url, client_env, "--overwrite")
    assert forced.exit_code == 0, forced.output
    assert state.dashboards[uid]["dashboard"]["title"] == BOARDS[1].title
    assert state.violations == []


def test_wrong_token_is_a_clear_401(grafana: tuple[str, GrafanaState], client_env: Path) -> None:
    url, state = grafana
    result = _push(url, client_env, token="not-a-token")
    assert result.exit_code == 1
    assert "401" in result.output and "token was refused" in result.output
    assert state.writes() == []


def test_viewer_token_is_a_clear_403(grafana: tuple[str, GrafanaState], client_env: Path) -> None:
    url, _state = grafana
    result = _push(url, client_env, token="viewer-token")
    assert result.exit_code == 1
    assert "403" in result.output and "lacks permission" in result.output


def test_unreachable_grafana_is_a_network_error(client_env: Path) -> None:
    with socket.socket() as sock:  # a free loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _push(f"http://127.0.0.1:{port}", client_env, "--timeout", "2")
    assert result.exit_code == 1
    assert f"cannot reach Grafana at http://127.0.0.1:{port}" in result.output


def test_grafana_client_stays_out_of_the_hub_environment(client_env: Path) -> None:
    """urllib3-future lives only in the push venv; the hub's urllib3 is the real one."""
    assert importlib.util.find_spec("grafana_client") is None
    assert importlib.util.find_spec("urllib3_future") is None
    import urllib3

    assert not Path(urllib3.__file__).is_relative_to(client_env)
    probe = subprocess.run(
        [
            str(client_python(client_env)),
            "-I",
            "-c",
            "import urllib3, json; print(json.dumps([urllib3.__version__, urllib3.__file__]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    version, location = json.loads(probe.stdout)
    assert location.startswith(str(client_env))
    # the worker's urllib3 is urllib3-future's copy, not the hub's urllib3
    assert version != metadata.version("urllib3")


def test_a_url_that_is_not_http_is_refused_before_anything_runs(client_env: Path) -> None:
    result = _push("grafana.example.org:3000", client_env)
    assert result.exit_code == 2
    assert "is not an http:// or https:// URL" in result.output
