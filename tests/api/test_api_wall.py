"""The wall and the site's event stream: state, SSE resume with Last-Event-ID, and the
page in Debian's headless Chromium, updating live from events raised in the store."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from accounts.roles import Role
from api.routes import stream as stream_route
from api.routes.stream import StreamTiming, cursor_of, live_streams, open_versions
from api.server import api_server
from events.model import Action, Severity
from events.store import EventStore
from registry.site_import import import_sites
from sites.model import load_site_ref
from tests.support.api_fixtures import PASSWORD, ApiHarness, api_harness, serving
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

WALL_ARGS = [*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"]
STREAM = "/desk/yingyang/stream"
FRAME = re.compile(r"((?:[^\n]+\n)+)\n")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with api_harness(f"sqlite:///{tmp_path / 'events.db'}") as harness:
        registry = harness.deps.registry
        assert registry is not None
        import_sites(registry, [load_site_ref("yingyang")])
        yield harness


def fast(
    api: ApiHarness, *, lifetime_s: float = 0.6, heartbeat_s: float = 60.0, burst: int = 50
) -> None:
    """Short streams, so a TestClient (which reads a response to its end) gets them whole."""
    timing = StreamTiming(poll_s=0.05, heartbeat_s=heartbeat_s, lifetime_s=lifetime_s, burst=burst)
    live_streams(api.app).timing = timing


def frames(text: str) -> list[dict[str, str]]:
    """The stream's frames as field → value (comments under ':')."""
    out = []
    for block in FRAME.findall(text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        out.append(fields)
    return out


def stream(api: ApiHarness, last_id: str | None = None) -> str:
    """The whole stream (it ends after its short lifetime)."""
    headers = api.headers(Role.operator)
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    response = api.client.get(STREAM, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    text: str = response.text
    return text


def first_read_of_streams(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a stream has first read the open events: a test whose change must come
    after that read waits for it rather than guess how long a loaded machine takes."""
    first_read = threading.Event()

    def reading(store: EventStore, site: str) -> dict[str, int]:
        found = open_versions(store, site)
        first_read.set()
        return found

    monkeypatch.setattr(stream_route, "open_versions", reading)
    return first_read


def raise_later(
    api: ApiHarness, delay_s: float, *, key: str, cell: str, severity: Severity
) -> threading.Thread:
    """Raise an event while a stream is open (as the rules would, from another thread)."""

    def run() -> None:
        time.sleep(delay_s)
        api.raise_event(key=key, cell=cell, severity=severity)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_wall_state_has_cells_devices_workers_and_open_events(api: ApiHarness) -> None:
    fire = api.raise_event(
        rule="smoke_alarm", key="sm-market-kitchen", cell="yy-g03", severity=Severity.CRITICAL
    )
    low = api.raise_event(rule="low_battery", key="ac-flat-1-302", cell="yy-g01")
    api.clear_event(low)
    response = api.client.get("/desk/yingyang/wall/state.json", headers=api.headers(Role.operator))
    assert response.status_code == 200, response.text
    state = response.json()
    cells = {c["id"]: c for c in state["cells"]}
    assert len(cells) == 7 and len(state["devices"]) == 75
    assert (cells["yy-g03"]["severity"], cells["yy-g03"]["state"]) == ("critical", "alarm")
    assert cells["yy-g03"]["open"] == 1 and cells["yy-g03"]["worker"]["name"]
    assert len(cells["yy-g03"]["polygon"]) >= 3
    assert (cells["yy-g01"]["severity"], cells["yy-g01"]["state"]) == (None, "ok")  # returned
    devices = {d["id"]: d["state"] for d in state["devices"]}
    assert (devices["sm-market-kitchen"], devices["ac-flat-1-302"]) == ("alarm", "ok")
    assert {e["id"] for e in state["events"]} == {low.id, fire.id}
    assert {e["id"]: e["state"] for e in state["events"]}[low.id] == "returned_unacknowledged"
    unknown = api.client.get("/desk/nowhere/wall/state.json", headers=api.headers(Role.operator))
    assert unknown.status_code == 404


def test_wall_page_loads_nothing_from_elsewhere(api: ApiHarness) -> None:
    page = api.client.get("/desk/yingyang/wall", headers=api.headers(Role.operator))
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/static/wall.js"' in page.text and 'href="/static/wall.css"' in page.text
    assert "<script>" not in page.text and "style=" not in page.text  # nothing inline
    for asset in ("/static/wall.js", "/static/wall.css", "/desk/yingyang/wall"):
        text = api.client.get(asset, headers=api.headers(Role.operator)).text
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), asset
    desk = api.client.get("/desk/yingyang", headers=api.headers(Role.operator)).text
    assert 'href="/desk/yingyang/wall"' in desk


def test_a_fresh_stream_starts_with_a_sync_at_the_current_cursor(api: ApiHarness) -> None:
    fast(api)
    api.raise_event(key="door-1", cell="yy-g02")
    got = frames(stream(api))
    cursor = cursor_of(open_versions(api.deps.events, "yingyang"))
    assert got[0] == {"retry": "2000"}
    assert got[1]["event"] == "sync" and got[1]["id"] == cursor
    assert '"reason":"connect"' in got[1]["data"]


def test_resuming_at_the_current_cursor_sends_only_what_changes(api: ApiHarness) -> None:
    # The later raise must come after the stream's first look (a slow start would see it
    # already and rightly ask for a re-read): a second's margin, within the lifetime.
    fast(api, lifetime_s=3.0)
    api.raise_event(key="door-1", cell="yy-g02")
    cursor = cursor_of(open_versions(api.deps.events, "yingyang"))
    later = raise_later(api, 1.2, key="smoke-9", cell="yy-g04", severity=Severity.CRITICAL)
    got = frames(stream(api, cursor))
    later.join()
    assert not [f for f in got if f.get("event") == "sync"]  # nothing was missed
    changes = [f for f in got if f.get("event") == "change"]
    assert len(changes) == 1
    assert '"kind":"raised"' in changes[0]["data"] and '"severity":"critical"' in changes[0]["data"]
    assert changes[0]["id"] == cursor_of(open_versions(api.deps.events, "yingyang"))


def test_a_resume_after_missed_changes_asks_for_a_re_read(api: ApiHarness) -> None:
    """What the browser does after a hub restart: reconnect with Last-Event-ID."""
    fast(api)
    first = api.raise_event(key="door-1", cell="yy-g02")
    before = cursor_of(open_versions(api.deps.events, "yingyang"))
    api.deps.manager.act(first.id, Action.ACKNOWLEDGE, actor="op", at_ms=api.deps.clock_ms())
    got = frames(stream(api, before))
    (sync,) = [f for f in got if f.get("event") == "sync"]
    assert '"reason":"resume"' in sync["data"]
    assert sync["id"] == cursor_of(open_versions(api.deps.events, "yingyang")) != before
    garbled = frames(stream(api, "not a cursor; DROP"))
    assert [f["event"] for f in garbled if "event" in f] == ["sync"]


def test_a_closed_event_is_sent_and_silence_is_a_heartbeat(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = api.raise_event(key="door-1", cell="yy-g02")
    cursor = cursor_of(open_versions(api.deps.events, "yingyang"))
    fast(api, lifetime_s=1.0, heartbeat_s=0.2)
    # Closed after the stream's first read, else it is a resume that no longer holds the
    # event (a sync, not a change): wait for that read rather than guess how long a
    # loaded machine takes to open the stream.
    first_read = first_read_of_streams(monkeypatch)

    def close_it() -> None:
        assert first_read.wait(10)
        api.clear_event(event)
        at = api.deps.clock_ms()
        api.deps.manager.act(event.id, Action.CLOSE, actor="op", at_ms=at, note="done")

    thread = threading.Thread(target=close_it)
    thread.start()
    got = frames(stream(api, cursor))
    thread.join()
    kinds = re.findall(r'"kind":"(\w+)"', "".join(f.get("data", "") for f in got))
    assert kinds and kinds[-1] == "closed"
    assert any(f.get("") == "heartbeat" for f in got)


def test_a_burst_of_changes_is_one_re_read(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    cursor = cursor_of(open_versions(api.deps.events, "yingyang"))
    fast(api, lifetime_s=1.0, burst=2)
    # The changes must come after the stream's first read (else they are a resume, not a
    # burst): wait for that read rather than guess how long a loaded machine takes.
    first_read = first_read_of_streams(monkeypatch)

    def raise_three() -> None:
        assert first_read.wait(10)
        with api.deps.events.batch():  # one commit: one poll sees all three
            for i in range(3):
                api.raise_event(key=f"burst-{i}", cell="yy-g02")

    thread = threading.Thread(target=raise_three)
    thread.start()
    got = frames(stream(api, cursor))
    thread.join()
    assert [f for f in got if f.get("event") == "change"] == []
    (sync,) = [f for f in got if f.get("event") == "sync"]
    assert '"reason":"burst"' in sync["data"]


def test_a_closing_server_ends_its_streams(api: ApiHarness) -> None:
    live_streams(api.app).timing = StreamTiming(poll_s=0.05, lifetime_s=60.0)
    live_streams(api.app).close()  # what the server's shutdown does (api.server)
    started = time.monotonic()
    stream(api)
    assert time.monotonic() - started < 5


@pytest.mark.browser
def test_the_wall_shows_a_new_critical_event_live(api: ApiHarness, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is required for the browser test"
    live_streams(api.app).timing = StreamTiming(poll_s=0.25)
    t0 = api.deps.clock_ms()
    api.raise_event(rule="door_held_open", key="ac-b1-entrance", cell="yy-g01",
                    severity=Severity.MEDIUM, at_ms=t0 - 600_000)  # fmt: skip
    api.raise_event(rule="parking_overstay", key="pk-bay-p01", cell="yy-g06",
                    severity=Severity.LOW, at_ms=t0 - 300_000)  # fmt: skip
    api.raise_event(rule="door_forced", key="ac-service-exit", cell="yy-g05",
                    severity=Severity.HIGH, at_ms=t0 - 120_000)  # fmt: skip
    api.raise_event(rule="device_offline", key="sm-carpark-b1-east", cell="yy-g06",
                    severity=Severity.MEDIUM, at_ms=t0 - 900_000)  # fmt: skip
    api.raise_event(rule="low_battery", key="ac-flat-1-302", cell="yy-g01",
                    severity=Severity.LOW, at_ms=t0 - 1_200_000)  # fmt: skip
    api.user(Role.operator)
    with serving(api.app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=WALL_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/desk/yingyang/wall")
            assert "/desk/login" in page.url
            page.fill("#username", "operator-user")
            page.fill("#password", PASSWORD)
            page.click("#login")
            page.wait_for_url(f"{base}/desk/yingyang/wall")
            expect(page.locator("#link")).to_have_attribute("data-link", "live")
            cell = page.locator("#cell-yy-g03")
            expect(cell).to_have_attribute("data-severity", "none")
            expect(page.locator("#cell-yy-g05")).to_have_attribute("data-severity", "high")
            assert page.locator("#map circle.dev").count() == 75
            page.evaluate("window.sameDocument = true")

            fire = api.raise_event(
                rule="smoke_alarm",
                key="sm-market-kitchen",
                cell="yy-g03",
                severity=Severity.CRITICAL,
            )
            row = page.locator(f"#wall-event-{fire.id}")
            expect(row).to_be_visible(timeout=5000)
            expect(row).to_have_class(re.compile(r"\bflash\b"))
            expect(cell).to_have_attribute("data-severity", "critical")
            expect(cell).to_have_class(re.compile(r"\bflash\b"))
            assert page.evaluate("window.sameDocument") is True  # no reload
            assert int(page.locator("body").get_attribute("data-beeps") or 0) >= 1
            assert page.locator("#events li").first.get_attribute("id") == f"wall-event-{fire.id}"
            states = page.eval_on_selector_all(
                "#map circle.dev", "ns => ns.map(n => n.dataset.state)"
            )
            assert {"alarm", "offline", "low_battery", "ok"} <= set(states)
            shot = tmp_path / "wall.png"  # the wall with a few events, the new one flashing
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 20_000
            if target := os.environ.get("SCREENSHOT_DIR"):  # docs/figures, by hand
                shutil.copy(shot, Path(target) / "wall.png")

            cell.locator("polygon").click()
            panel = page.locator("#cell-panel")
            expect(panel).to_be_visible()
            expect(panel.locator("#cell-worker")).to_contain_text("Grid worker")
            expect(panel.locator(f"#cell-event-{fire.id}")).to_be_visible()
            page.keyboard.press("Escape")
            expect(panel).to_be_hidden()

            api.deps.manager.act(fire.id, Action.ACKNOWLEDGE, actor="op", at_ms=api.deps.clock_ms())
            expect(row).to_have_attribute("data-state", "active_acknowledged", timeout=5000)
            expect(row).not_to_have_class(re.compile(r"\bflash\b"))
            assert errors == []
        finally:
            browser.close()


@contextlib.contextmanager
def hub_api(app: FastAPI, port: int = 0) -> Iterator[int]:
    """The app as the hub serves it (api.server.api_server), in a thread; yields its port."""
    server = api_server(app, "127.0.0.1", port, embedded=False)
    thread = threading.Thread(target=server.run, name="wall-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    (sock,) = [s for srv in server.servers for s in srv.sockets]
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "open event streams kept the server from stopping"


@pytest.mark.browser
def test_the_wall_catches_up_after_a_hub_restart(api: ApiHarness) -> None:
    from playwright.sync_api import expect, sync_playwright

    live_streams(api.app).timing = StreamTiming(poll_s=0.25, retry_ms=500)
    api.user(Role.operator)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=WALL_ARGS)
        try:
            page = browser.new_page()
            with hub_api(api.app) as port:
                base = f"http://127.0.0.1:{port}"
                page.goto(f"{base}/desk/login?next=/desk/yingyang/wall")
                page.fill("#username", "operator-user")
                page.fill("#password", PASSWORD)
                page.click("#login")
                page.wait_for_url(f"{base}/desk/yingyang/wall")
                expect(page.locator("#link")).to_have_attribute("data-link", "live")
                page.evaluate("window.sameDocument = true")
            # The hub is down (its shutdown ended the stream): an event is raised meanwhile.
            expect(page.locator("#link")).not_to_have_attribute("data-link", "live")
            fire = api.raise_event(
                rule="smoke_alarm",
                key="sm-market-kitchen",
                cell="yy-g03",
                severity=Severity.CRITICAL,
            )
            with hub_api(api.app, port):
                row = page.locator(f"#wall-event-{fire.id}")
                expect(row).to_be_visible(timeout=15_000)
                expect(page.locator("#cell-yy-g03")).to_have_attribute("data-severity", "critical")
                expect(page.locator("#link")).to_have_attribute("data-link", "live")
                assert page.evaluate("window.sameDocument") is True
        finally:
            browser.close()
