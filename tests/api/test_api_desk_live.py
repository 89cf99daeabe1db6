"""The live desk (issue 16, item 3): the event list and an event's page kept current from
the site's event stream, assignment from the site's grid workers, and bulk acknowledge of
a flood's children. Browser tests drive Debian's headless Chromium through Playwright;
one runs the whole path (a door_forced message on a real Mosquitto, the hub's rules, the
desk in the browser)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from accounts.roles import Role
from api.routes.stream import StreamTiming, live_streams
from devstack.stack import ManagedProcess, free_port
from events.manager import FLOOD_RULE
from events.model import Action, SecurityEvent, Severity, State
from events.store import EventFilter
from hub.settings import ApiSettings, EventsSettings
from registry.schema import CellPatch
from registry.site_import import import_sites
from sites.model import load_site_ref
from tests.support.api_fixtures import PASSWORD, ApiHarness, api_harness, serving
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.hub import make_settings, running_hub
from tests.support.publishers import Publisher, until

T0 = 1_764_400_200_000  # 2025-11-29T07:10:00Z
MIN = 60_000
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
SEEN = re.compile(r'name="seen" value="([^"]*)"')


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with api_harness(f"sqlite:///{tmp_path / 'events.db'}") as harness:
        registry = harness.deps.registry
        assert registry is not None
        import_sites(registry, [load_site_ref("yingyang"), load_site_ref("melbourne_bays")])
        yield harness


def page_text(api: ApiHarness, path: str) -> str:
    response = api.client.get(path, headers=api.headers(Role.operator))
    assert response.status_code == 200, response.text
    text: str = response.text
    return text


def csrf_of(text: str) -> str:
    found = CSRF.search(text)
    assert found is not None
    return found.group(1)


def options(text: str, event_id: str) -> list[tuple[str, bool]]:
    """The assignment picker of one event: (worker id, marked as the cell's own)."""
    form = re.search(rf'action="/desk/events/{event_id}/assign".*?</select>', text, flags=re.DOTALL)
    assert form is not None, "no assignment picker"
    return [
        (value, bool(own))
        for value, own in re.findall(r'<option value="([^"]+)"[^>]*?( data-own="true")?>', form[0])
    ]


def flood(
    api: ApiHarness, n: int = 11, at_ms: int = T0, doors: str = "ac-door"
) -> tuple[SecurityEvent, list[SecurityEvent]]:
    """`n` door events at the site within a minute: more than 10 open a flood group."""
    for i in range(n):
        api.raise_event(
            rule="door_held_open",
            key=f"{doors}-{i:02d}",
            cell=f"yy-g0{1 + i % 7}",
            severity=Severity.MEDIUM,
            at_ms=at_ms + i * 1000,
        )
    parent = api.deps.events.open_event(FLOOD_RULE, "yingyang")
    assert parent is not None
    return parent, api.deps.events.children(parent.id)


# ---------------------------------------------------------------------- assignment


def test_the_picker_offers_the_sites_grid_workers_the_cells_first(api: ApiHarness) -> None:
    event = api.raise_event(key="sm-market-kitchen", cell="yy-g03")
    for text in (page_text(api, "/desk/yingyang"), page_text(api, f"/desk/events/{event.id}")):
        offered = options(text, event.id)
        assert offered[0] == ("w-yy-g03", True)  # the cell's worker, first and marked
        assert {w for w, _ in offered} == {f"w-yy-g0{i}" for i in range(1, 8)}
        assert [own for _, own in offered].count(True) == 1
        assert "w-cbd-nw" not in {w for w, _ in offered}  # another site's worker
        assert re.search(r'<option value="w-yy-g03" selected data-own="true">He Meiling', text)
        assert 'name="assignee" size=' not in text  # no free-text box any more


def test_the_server_refuses_a_worker_from_outside_the_site(api: ApiHarness) -> None:
    event = api.raise_event(key="sm-market-kitchen", cell="yy-g03")
    h = api.headers(Role.operator)
    csrf = csrf_of(page_text(api, f"/desk/events/{event.id}"))
    url = f"/desk/events/{event.id}/assign"
    for foreign in ("w-cbd-nw", "mallory", ""):
        refused = api.client.post(url, data={"csrf": csrf, "assignee": foreign}, headers=h)
        assert refused.url.path == f"/desk/events/{event.id}", foreign
        assert 'role="alert"' in refused.text and "not a grid worker of yingyang" in refused.text
        stored = api.deps.events.get(event.id)
        assert stored is not None and stored.assignee == "w-yy-g03", foreign
    done = api.client.post(url, data={"csrf": csrf, "assignee": "w-yy-g05"}, headers=h)
    assert done.status_code == 200 and 'role="alert"' not in done.text
    stored = api.deps.events.get(event.id)
    assert stored is not None and stored.assignee == "w-yy-g05"
    last = api.deps.events.audit_trail(event.id)[-1]
    assert (last.action, last.actor) == (Action.ASSIGN, "operator-user")
    # The picker now shows the new assignee as chosen, the cell's worker still first.
    text = page_text(api, f"/desk/events/{event.id}")
    assert options(text, event.id)[0] == ("w-yy-g03", True)
    assert re.search(r'<option value="w-yy-g05" selected>', text)


def test_a_retired_worker_is_not_offered(api: ApiHarness) -> None:
    registry = api.deps.registry
    assert registry is not None
    registry.update_cell("yy-g02", CellPatch(worker="w-yy-g01"))  # g01's worker covers g02
    registry.retire_worker("w-yy-g02")
    event = api.raise_event(key="ac-block-6", cell="yy-g02")
    offered = options(page_text(api, "/desk/yingyang"), event.id)
    assert offered[0] == ("w-yy-g01", True)
    assert "w-yy-g02" not in {w for w, _ in offered}


# ---------------------------------------------------------------------- bulk acknowledge


def bulk(api: ApiHarness, parent_id: str) -> tuple[Any, dict[str, list[str]]]:
    """Post the parent page's bulk-acknowledge form as it is; the redirect's query."""
    text = page_text(api, f"/desk/events/{parent_id}")
    seen = SEEN.search(text)
    assert seen is not None
    response = api.client.post(
        f"/desk/events/{parent_id}/children/acknowledge",
        data={"csrf": csrf_of(text), "seen": seen.group(1)},
        headers=api.headers(Role.operator),
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return response, parse_qs(urlsplit(response.headers["location"]).query)


def test_bulk_acknowledge_during_the_flood_skips_the_suppressed(api: ApiHarness) -> None:
    parent, children = flood(api)
    assert len(children) == 11 and all(c.state is State.SUPPRESSED for c in children)
    text = page_text(api, f"/desk/events/{parent.id}")
    assert "ack-children" not in text and "11 of them suppressed" in text
    _, query = bulk(api, parent.id)
    assert query == {"acked": ["0"], "skipped": ["suppressed:11"]}
    assert not any(c.acknowledged for c in api.deps.events.children(parent.id))


def test_bulk_acknowledge_acknowledges_each_child_and_says_what_it_skipped(
    api: ApiHarness,
) -> None:
    parent, children = flood(api)
    api.deps.manager.tick(T0 + 20 * MIN)  # the flood is over: the children are back
    children = api.deps.events.children(parent.id)
    assert all(c.state is State.ACTIVE_UNACKNOWLEDGED for c in children)
    text = page_text(api, f"/desk/events/{parent.id}")
    assert re.search(r'class="ack-children">Acknowledge 11 grouped events<', text)
    seen = SEEN.search(text)
    assert seen is not None
    # Meanwhile (after the page was read): one repeats, one is shelved, one acknowledged.
    changed, shelved, acked = children[0], children[1], children[2]
    api.raise_event(rule="door_held_open", key=changed.key, cell=changed.cell,
                    severity=Severity.MEDIUM, at_ms=T0 + 21 * MIN)  # fmt: skip
    now = api.deps.clock_ms()
    api.deps.manager.act(
        shelved.id, Action.SHELVE, actor="op2", at_ms=now, until_ms=now + 3_600_000
    )
    api.deps.manager.act(acked.id, Action.ACKNOWLEDGE, actor="op2", at_ms=now)
    response = api.client.post(
        f"/desk/events/{parent.id}/children/acknowledge",
        data={"csrf": csrf_of(text), "seen": seen.group(1)},
        headers=api.headers(Role.operator),
    )
    assert response.status_code == 200 and response.url.path == f"/desk/events/{parent.id}"
    result = re.search(r'<div id="bulk-result"[^>]*>(.*?)</div>', response.text, re.DOTALL)
    assert result is not None
    lines = re.findall(r"<p>(.*?)</p>", result.group(1))
    assert lines == [
        "Acknowledged 8 grouped events.",
        "Not acknowledged: 1 already acknowledged.",
        "Not acknowledged: 1 shelved.",
        "Not acknowledged: 1 changed since the page was read.",
    ]
    after = {c.id: c for c in api.deps.events.children(parent.id)}
    assert not after[changed.id].acknowledged and not after[shelved.id].acknowledged
    for child in children[3:]:
        assert after[child.id].acknowledged
        last = api.deps.events.audit_trail(child.id)[-1]
        assert (last.action, last.actor) == (Action.ACKNOWLEDGE, "operator-user")
        assert parent.id in last.note
    # The page reads well afterwards: nothing left but the changed child.
    again = page_text(api, f"/desk/events/{parent.id}")
    assert re.search(r'class="ack-children">Acknowledge 1 grouped event<', again)


def test_bulk_acknowledge_leaves_children_that_joined_after_the_page(api: ApiHarness) -> None:
    parent, _ = flood(api, 11)
    api.deps.manager.tick(T0 + 20 * MIN)
    text = page_text(api, f"/desk/events/{parent.id}")
    # A new flood at the site reopens the parent: new children join it.
    flood(api, 11, at_ms=T0 + 30 * MIN, doors="ac-other-door")
    seen = SEEN.search(text)
    assert seen is not None
    response = api.client.post(
        f"/desk/events/{parent.id}/children/acknowledge",
        data={"csrf": csrf_of(text), "seen": seen.group(1)},
        headers=api.headers(Role.operator),
        follow_redirects=False,
    )
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query == {"acked": ["11"], "skipped": ["new:11"]}


def test_bulk_acknowledge_needs_the_csrf_token_and_a_clean_list(api: ApiHarness) -> None:
    parent, children = flood(api)
    h = api.headers(Role.operator)
    url = f"/desk/events/{parent.id}/children/acknowledge"
    forged = api.client.post(url, data={"csrf": "0" * 32, "seen": f"{children[0].id}:4"}, headers=h)
    assert forged.status_code == 403
    csrf = csrf_of(page_text(api, f"/desk/events/{parent.id}"))
    garbled = api.client.post(url, data={"csrf": csrf, "seen": "nonsense"}, headers=h)
    assert 'role="alert"' in garbled.text and "garbled" in garbled.text
    unknown = api.client.post("/desk/events/" + "0" * 32 + "/children/acknowledge",
                              data={"csrf": csrf, "seen": ""}, headers=h)  # fmt: skip
    assert unknown.status_code == 404  # as for any action on an unknown event


# ---------------------------------------------------------------------- in the browser


def login(page: Any, base: str, path: str) -> None:
    page.goto(f"{base}{path}")
    assert "/desk/login" in page.url
    page.fill("#username", "operator-user")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(f"{base}{path}")


def csp_errors(messages: list[str]) -> list[str]:
    return [m for m in messages if "Content Security Policy" in m or "Refused to" in m]


@pytest.mark.browser
def test_the_event_list_and_the_event_page_update_live(api: ApiHarness, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is required for the browser test"
    live_streams(api.app).timing = StreamTiming(poll_s=0.25)
    t0 = api.deps.clock_ms()
    api.raise_event(rule="door_held_open", key="ac-b1-entrance", cell="yy-g01",
                    severity=Severity.MEDIUM, at_ms=t0 - 600_000)  # fmt: skip
    api.raise_event(rule="low_battery", key="ac-flat-1-302", cell="yy-g01",
                    severity=Severity.LOW, at_ms=t0 - 1_200_000)  # fmt: skip
    forced = api.raise_event(rule="door_forced", key="ac-service-exit", cell="yy-g05",
                             severity=Severity.HIGH, at_ms=t0 - 120_000)  # fmt: skip
    api.user(Role.operator)
    with serving(api.app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            console: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: console.append(msg.text))
            login(page, base, "/desk/yingyang")
            expect(page.locator("#live")).to_have_attribute("data-link", "live")
            page.evaluate("window.sameDocument = true")
            # The battery event returns: its row gets a resolve form, live.
            low = api.deps.events.open_event("low_battery", "ac-flat-1-302")
            assert low is not None
            api.clear_event(low)
            low_row = page.locator(f"#event-{low.id}")
            note = low_row.locator("input[name=note]")
            expect(note).to_be_visible(timeout=5000)
            # An operator types a resolution note; the row changes under it meanwhile.
            note.fill("battery swapped")
            at = api.deps.clock_ms()
            api.deps.manager.act(low.id, Action.COMMENT, actor="op2", at_ms=at, note="on it")
            fire = api.raise_event(
                rule="smoke_alarm",
                key="sm-market-kitchen",
                cell="yy-g03",
                severity=Severity.CRITICAL,
            )
            row = page.locator(f"#event-{fire.id}")
            expect(row).to_be_visible(timeout=5000)
            expect(row).to_have_class(re.compile(r"\bfresh\b"))
            assert page.locator("#event-rows tr").first.get_attribute("id") == f"event-{fire.id}"
            expect(page.locator("#open-total")).to_have_text("(4)")
            expect(row.locator("select.assignee option").first).to_have_attribute(
                "value", "w-yy-g03"
            )
            assert page.evaluate("window.sameDocument") is True  # no reload
            # The row being typed in was left alone; the note is still there.
            assert note.input_value() == "battery swapped"
            assert page.locator("body").get_attribute("data-deferred") == "true"
            shot = tmp_path / "desk_live.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            if target := os.environ.get("SCREENSHOT_DIR"):  # docs/figures, by hand
                shutil.copy(shot, Path(target) / "desk_live.png")

            api.deps.manager.act(
                forced.id, Action.ACKNOWLEDGE, actor="op2", at_ms=api.deps.clock_ms()
            )
            forced_row = page.locator(f"#event-{forced.id}")
            expect(forced_row.locator(".state")).to_have_attribute(
                "data-state", "active_acknowledged", timeout=5000
            )
            expect(forced_row.locator("button.ack")).to_have_count(0)

            # The event's own page follows its event (and nothing else's).
            row.get_by_role("link").first.click()
            page.wait_for_url(f"{base}/desk/events/{fire.id}")
            expect(page.locator("#live")).to_have_attribute("data-link", "live")
            page.evaluate("window.sameDocument = true")
            updates = int(page.locator("body").get_attribute("data-live-updates") or 0)
            api.deps.manager.act(
                fire.id, Action.ACKNOWLEDGE, actor="op2", at_ms=api.deps.clock_ms()
            )
            expect(page.locator("#facts .state")).to_have_attribute(
                "data-state", "active_acknowledged", timeout=5000
            )
            expect(page.locator("#audit")).to_contain_text("op2")
            expect(page.locator("button.ack")).to_have_count(0)
            assert page.evaluate("window.sameDocument") is True
            after = int(page.locator("body").get_attribute("data-live-updates") or 0)
            api.raise_event(key="unrelated", cell="yy-g06", severity=Severity.LOW)
            time.sleep(1.5)  # a change of another event: no re-read of this page
            assert int(page.locator("body").get_attribute("data-live-updates") or 0) == after
            assert after > updates
            assert errors == [] and csp_errors(console) == []
        finally:
            browser.close()


@pytest.mark.browser
def test_assigning_from_the_picker_and_a_forged_choice_in_the_browser(api: ApiHarness) -> None:
    from playwright.sync_api import expect, sync_playwright

    event = api.raise_event(key="sm-market-kitchen", cell="yy-g03", severity=Severity.HIGH)
    api.user(Role.operator)
    with serving(api.app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            login(page, base, f"/desk/events/{event.id}")
            picker = page.locator("select.assignee")
            assert picker.locator("option").first.inner_text().startswith("He Meiling")
            assert picker.locator("option").count() == 7
            picker.select_option("w-yy-g06")
            page.locator("form.assign button").click()
            page.wait_for_load_state()
            expect(page.locator("#facts")).to_contain_text("w-yy-g06")
            # A forged option (another site's worker) is refused by the server.
            page.evaluate(
                """() => {
                  const o = new Option("Sam Nguyen", "w-cbd-nw", true, true);
                  document.querySelector("select.assignee").add(o);
                }"""
            )
            page.locator("form.assign button").click()
            page.wait_for_load_state()
            expect(page.get_by_role("alert")).to_contain_text("not a grid worker of yingyang")
            expect(page.locator("#facts")).to_contain_text("w-yy-g06")
        finally:
            browser.close()
    stored = api.deps.events.get(event.id)
    assert stored is not None and stored.assignee == "w-yy-g06"


@pytest.mark.browser
def test_bulk_acknowledge_in_the_browser(api: ApiHarness) -> None:
    from playwright.sync_api import expect, sync_playwright

    parent, children = flood(api)
    api.deps.manager.tick(T0 + 20 * MIN)
    api.user(Role.operator)
    with serving(api.app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            login(page, base, f"/desk/events/{parent.id}")
            button = page.locator("button.ack-children")
            expect(button).to_have_text("Acknowledge 11 grouped events")
            button.click()
            page.wait_for_load_state()
            expect(page.locator("#bulk-result")).to_contain_text("Acknowledged 11 grouped events.")
            states = page.eval_on_selector_all(
                "#children tr[id^=child-] .state", "ns => ns.map(n => n.dataset.state)"
            )
            assert states == ["active_acknowledged"] * 11
            expect(page.locator("button.ack-children")).to_have_count(0)
        finally:
            browser.close()
    for child in children:
        trail = api.deps.events.audit_trail(child.id)
        assert [(a.action, a.actor) for a in trail].count(
            (Action.ACKNOWLEDGE, "operator-user")
        ) == 1


# ---------------------------------------------------------------------- the whole path


@pytest.mark.integration
@pytest.mark.browser
async def test_a_forced_door_published_on_the_broker_appears_on_the_desk_live(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    """door_forced on Mosquitto → the hub's intake, rules and event store → the desk's
    stream → the open page in Chromium, without a reload."""
    from playwright.async_api import async_playwright, expect

    port = free_port()
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        database,
        events=EventsSettings(snapshot_interval_s=0.5, publish_mqtt=False, write_influx=False),
        api=ApiSettings(enabled=True, port=port),
    )
    door = "ac-gate-south"
    publisher = Publisher(mosquitto.port, "door-controller")
    try:
        async with running_hub(settings) as hub, async_playwright() as pw:
            assert hub.api is not None
            hub.api.deps.users.add_user("operator-user", PASSWORD, Role.operator)
            base = f"http://127.0.0.1:{port}"
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(f"{base}/desk/yingyang")
                await page.fill("#username", "operator-user")
                await page.fill("#password", PASSWORD)
                await page.click("#login")
                await page.wait_for_url(f"{base}/desk/yingyang")
                await expect(page.locator("#live")).to_have_attribute("data-link", "live")
                assert await page.locator("#event-rows tr[id^=event-]").count() == 0
                await page.evaluate("window.sameDocument = true")

                body = {"ts": int(time.time() * 1000), "seq": 1, "door": "gate",
                        "event": "door_forced"}  # fmt: skip
                publisher.publish(f"gw/v1/yingyang/access/{door}/event", json.dumps(body).encode())
                publisher.wait()
                store = hub.api.deps.events

                def raised() -> bool:
                    return bool(
                        store.list_events(EventFilter(site="yingyang", rule_id="door_forced"))
                    )

                await until(raised, 20, "the hub's rules to raise door_forced")
                (event,) = store.list_events(EventFilter(site="yingyang"))
                assert event.rule_id == "door_forced" and event.device == door
                row = page.locator(f"#event-{event.id}")
                await expect(row).to_be_visible(timeout=10_000)
                await expect(row.locator(".state")).to_have_attribute(
                    "data-state", "active_unacknowledged"
                )
                await expect(row).to_have_class(re.compile(r"\bfresh\b"))
                assert await page.evaluate("window.sameDocument") is True
                picker = row.locator("select.assignee option").first
                await expect(picker).to_have_attribute("value", event.assignee or "?")
            finally:
                await browser.close()
    finally:
        publisher.close()
