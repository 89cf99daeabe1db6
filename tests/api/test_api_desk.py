"""The event desk pages: server-rendered, driven by a real headless Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from accounts.roles import Role
from api.routes.desk import desk_order
from events.model import Action, Severity
from tests.support.api_fixtures import PASSWORD, ApiHarness, api_harness, serving
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with api_harness(f"sqlite:///{tmp_path / 'events.db'}") as harness:
        yield harness


def test_site_page_lists_open_events_most_severe_then_newest(api: ApiHarness) -> None:
    low_new = api.raise_event(key="a", severity=Severity.LOW, at_ms=3_000_000_000_000)
    crit_old = api.raise_event(key="b", severity=Severity.CRITICAL, at_ms=1_000_000_000_000)
    crit_new = api.raise_event(key="c", severity=Severity.CRITICAL, at_ms=2_000_000_000_000)
    closed = api.raise_event(key="d", severity=Severity.CRITICAL)
    api.clear_event(closed)
    api.deps.manager.act(closed.id, Action.CLOSE, actor="t", at_ms=api.deps.clock_ms(), note="done")
    api.raise_event(key="e", site="elsewhere")
    page = api.client.get("/desk/yingyang", headers=api.headers(Role.operator))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    order = re.findall(r'<tr id="event-([0-9a-f]+)"', page.text)
    assert order == [crit_new.id, crit_old.id, low_new.id]
    events = [api.deps.events.get(i) for i in order]
    assert desk_order([e for e in events if e]) == events


def test_desk_forms_need_the_session_csrf_token(api: ApiHarness) -> None:
    event = api.raise_event(key="f")
    forged = api.client.post(
        f"/desk/events/{event.id}/acknowledge",
        data={"csrf": "0" * 32},
        headers=api.headers(Role.operator),
        follow_redirects=False,
    )
    assert forged.status_code == 403
    assert api.deps.events.get(event.id).acknowledged is False  # type: ignore[union-attr]  # it exists


def test_login_redirects_only_to_desk_pages(api: ApiHarness) -> None:
    api.user(Role.operator)
    response = api.client.post(
        "/desk/login",
        data={"username": "operator-user", "password": PASSWORD, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/desk/"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/desk" in cookie


@pytest.mark.browser
def test_operator_logs_in_acknowledges_and_sees_the_state_change(api: ApiHarness) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is required for the browser test"
    event = api.raise_event(key="door-7", cell="yy-g03", severity=Severity.HIGH)
    api.user(Role.operator)
    with serving(api.app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{base}/desk/yingyang")
            assert "/desk/login" in page.url  # no session yet: sent to the login form
            page.fill("#username", "operator-user")
            page.fill("#password", PASSWORD)
            page.click("#login")
            page.wait_for_url(f"{base}/desk/yingyang")
            row = page.locator(f"#event-{event.id}")
            assert row.locator(".state").get_attribute("data-state") == "active_unacknowledged"
            row.locator("button.ack").click()
            page.wait_for_load_state()
            row = page.locator(f"#event-{event.id}")
            assert row.locator(".state").get_attribute("data-state") == "active_acknowledged"
            assert row.locator("button.ack").count() == 0
            row.get_by_role("link").click()
            page.wait_for_url(f"{base}/desk/events/{event.id}")
            assert "operator-user" in page.locator("table.audit").inner_text()
        finally:
            browser.close()
    stored = api.deps.events.get(event.id)
    assert stored is not None and stored.acknowledged
    trail = api.deps.events.audit_trail(event.id)
    assert (trail[-1].actor, trail[-1].action.value) == ("operator-user", "acknowledge")


def test_a_refused_desk_action_comes_back_as_a_message(api: ApiHarness) -> None:
    event = api.raise_event(key="g")
    h = api.headers(Role.operator)
    page = api.client.get(f"/desk/events/{event.id}", headers=h).text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert csrf is not None
    refused = api.client.post(
        f"/desk/events/{event.id}/resolve",
        data={"csrf": csrf.group(1), "note": "done", "back": f"/desk/events/{event.id}"},
        headers=h,
    )
    assert refused.status_code == 200 and refused.url.path == f"/desk/events/{event.id}"
    assert 'role="alert"' in refused.text and "still active" in refused.text
    done = api.client.post(
        f"/desk/events/{event.id}/assign",
        data={"csrf": csrf.group(1), "assignee": "w-yy-g05", "back": "/desk/yingyang"},
        headers=h,
    )
    assert done.url.path == "/desk/yingyang" and "w-yy-g05" in done.text
    assert 'role="alert"' not in done.text
    # Only the site's grid workers (tests/api/test_api_desk_live.py has the rest).
    refused = api.client.post(
        f"/desk/events/{event.id}/assign",
        data={"csrf": csrf.group(1), "assignee": "w-night", "back": "/desk/yingyang"},
        headers=h,
    )
    assert "not a grid worker of yingyang" in refused.text
