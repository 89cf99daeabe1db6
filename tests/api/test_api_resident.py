"""The residents' pages: a report from a phone without an account becomes an event on
the desk and the wall, with its photo; its private status link shows that report and
nothing else; the abuse limits refuse (413, 415, 429) without losing anything. The last
test files a report in Debian's headless Chromium on a phone-sized screen."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from accounts.roles import Role
from api.problems import Forbidden, TooManyRequests
from api.routes.resident import PUBLIC_REPORTER, ReportLimiter, check_ticket, ticket
from events import attachments as att
from events.model import Action, SecurityEvent, Source
from sites.geometry import point_in_polygon
from sites.model import load_site_ref
from storage.engine import create_engine
from tests.api.test_api_worker import (
    PHONE,
    csrf_of,
    desk_session,
    field_api,
    make_jpeg,
    make_png,
    noise_png,
)
from tests.support.api_fixtures import PASSWORD, ApiHarness, serving
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, wait_until_loaded

LIMITS: dict[str, Any] = {
    "max_photo_bytes": 64 * 1024,
    "public_reports": 4,
    "public_reports_total": 100,
    "public_report_window_s": 600.0,
}
IN_YY_G05 = (113.3904, 22.5160)
"""(lon, lat) inside cell yy-g05 (community service centre)."""


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with field_api(tmp_path, **LIMITS) as harness:
        yield harness


@pytest.fixture
def hub_defaults(tmp_path: Path) -> Iterator[ApiHarness]:
    """With the hub's default limits (what the screenshot shows)."""
    with field_api(tmp_path) as harness:
        yield harness


def public(api: ApiHarness) -> TestClient:
    return TestClient(api.app, follow_redirects=False)


def ticket_of(page: str) -> str:
    found = re.search(r'name="ticket" value="([0-9]+\.[0-9a-f]+)"', page)
    assert found, page[:2000]
    return found.group(1)


def file_report(
    client: TestClient,
    *,
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
    **fields: Any,
) -> httpx.Response:
    form = client.get("/resident/yingyang")
    assert form.status_code == 200
    data = {"ticket": ticket_of(form.text), "category": "blocked_fire_lane"}
    data |= {"description": "A van blocks the fire lane behind block 6."} | fields
    answer: httpx.Response = client.post("/resident/yingyang", data=data, files=files or [])
    return answer


def token_of(answer: httpx.Response) -> str:
    assert answer.status_code == 303, answer.text[:1000]
    found = re.fullmatch(r"/resident/status/([A-Za-z0-9_-]{32})", answer.headers["location"])
    assert found, answer.headers["location"]
    return found.group(1)


def event_of(api: ApiHarness, token: str) -> SecurityEvent:
    store = api.deps.attachments
    assert store is not None
    report_id = store.report_of_token(token)
    assert report_id is not None
    link = api.deps.users.get_report(report_id)
    assert link is not None
    event = api.deps.events.get(link.event_id)
    assert event is not None
    return event


def report_events(api: ApiHarness) -> list[SecurityEvent]:
    return [e for e in api.deps.events.list_events(limit=1000) if e.source is Source.REPORT]


# ---------------------------------------------------------------------- the form


def test_the_form_is_public_and_shows_no_one_else(api: ApiHarness) -> None:
    client = public(api)
    landing = client.get("/resident/")
    assert landing.status_code == 303 and landing.headers["location"] == "/resident/yingyang"
    page = client.get("/resident/yingyang")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text and "style=" not in page.text
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page.text)
    assert not re.search(r"https?://", client.get("/static/resident.js").text.replace(
        "http://www.w3.org/2000/svg", ""))  # fmt: skip
    assert len(re.findall(r'<option value="yy-g0\d"', page.text)) == 7
    assert page.text.count("<polygon") == 7
    site = load_site_ref("yingyang")
    for cell in site.cells:  # the cells' names, never their workers or their phones
        assert cell.worker.name not in page.text and cell.worker.id not in page.text
    api.raise_event(key="door-1", cell="yy-g01")
    assert "door-1" not in client.get("/resident/yingyang").text
    assert client.get("/resident/atlantis").status_code == 404


def test_a_report_with_a_photo_reaches_the_desk_and_the_wall(api: ApiHarness) -> None:
    jpeg = make_jpeg()
    answer = file_report(
        public(api), cell="yy-g06", files=[("photo", ("van.jpg", jpeg, "image/jpeg"))]
    )
    token = token_of(answer)
    assert answer.headers["cache-control"] == "no-store"
    event = event_of(api, token)
    assert (event.source, event.cell, event.assignee) == (Source.REPORT, "yy-g06", "w-yy-g06")
    assert event.values["reporter"] == PUBLIC_REPORTER
    store = api.deps.attachments
    assert store is not None
    (photo,) = store.of_event(event.id)
    assert (photo.sha256, photo.media_type.value, photo.source) == (
        hashlib.sha256(jpeg).hexdigest(),
        "image/jpeg",
        "resident",
    )
    operator = api.headers(Role.operator)
    desk = api.client.get("/desk/yingyang", headers=operator).text
    assert f'id="event-{event.id}"' in desk and "Resident report: blocked fire lane" in desk
    wall = api.client.get("/desk/yingyang/wall/state.json", headers=operator).json()
    assert event.id in {e["id"] for e in wall["events"]}
    page = api.client.get(f"/desk/events/{event.id}", headers=operator).text
    assert f'data-sha256="{photo.sha256}"' in page
    served = api.client.get(f"/desk/photos/{photo.id}", headers=operator)
    assert served.content == jpeg and served.headers["content-type"] == "image/jpeg"
    # No resident account ever lists the public page's reports.
    mine = api.client.get("/api/v1/reports", headers=api.headers(Role.resident)).json()
    assert mine["total"] == 0


def test_a_point_on_the_map_places_the_report_in_its_cell(api: ApiHarness) -> None:
    lon, lat = IN_YY_G05
    event = event_of(api, token_of(file_report(public(api), lon=lon, lat=lat)))
    assert event.cell == "yy-g05" and event.location is not None
    assert (event.location.lon, event.location.lat) == (lon, lat)
    outside = file_report(public(api), lon=0.5, lat=0.5, description="Somewhere else entirely")
    assert outside.status_code == 422
    assert "in no grid cell" in outside.text and "Somewhere else entirely" in outside.text
    nowhere = file_report(public(api), description="No place given")
    assert nowhere.status_code == 422 and "give a cell or a location" in nowhere.text
    assert "No place given" in nowhere.text  # the resident's words are kept
    assert len(report_events(api)) == 1


def test_the_status_link_follows_the_report_and_shows_nothing_else(api: ApiHarness) -> None:
    client = public(api)
    token = token_of(file_report(client, cell="yy-g01", description="Broken lock, block 2"))
    other = token_of(file_report(client, cell="yy-g01", description="Someone else's worry"))
    event = event_of(api, token)
    url = f"/resident/status/{token}"

    def status() -> str:
        page = client.get(url)
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        assert "Someone else's worry" not in page.text  # only this report
        assert "w-yy-g01" not in page.text and "Chen Xiaoyan" not in page.text
        found = re.search(r'id="status" data-status="(\w+)"', page.text)
        assert found
        return found.group(1)

    assert status() == "received"
    api.deps.manager.act(event.id, Action.ACKNOWLEDGE, actor="op", at_ms=api.deps.clock_ms())
    assert status() == "seen"
    api.deps.users.add_user("w-yy-g01", PASSWORD, Role.worker)
    worker = desk_session(api, "w-yy-g01")
    page = f"/desk/worker/events/{event.id}"
    assert worker.post(f"{page}/accept", data={"csrf": csrf_of(worker.get(page).text)}).is_redirect
    assert status() == "in_hand"
    resolved = worker.post(
        f"{page}/resolve",
        data={"csrf": csrf_of(worker.get(page).text), "note": "Lock replaced; Mr Li in 2-301"},
    )
    assert resolved.is_redirect
    assert status() == "resolved"
    assert "Mr Li" not in client.get(url).text  # the worker's note is for the control room
    assert event_of(api, other).id != event.id
    unknown = client.get("/resident/status/" + "A" * 32)
    assert unknown.status_code == 404 and "No such report" in unknown.text
    assert client.get("/resident/status/../../etc/passwd").status_code == 404
    assert client.get("/resident/status/short").status_code == 422
    engine = create_engine(api.url)
    try:
        with engine.connect() as conn:
            kept = conn.execute(sa.select(att.report_tokens.c.token_sha256)).scalars().all()
    finally:
        engine.dispose()
    assert token not in kept and hashlib.sha256(token.encode()).hexdigest() in kept


# ---------------------------------------------------------------------- abuse limits


def test_limits_refuse_clearly_and_lose_nothing(api: ApiHarness) -> None:
    client = public(api)
    first = token_of(
        file_report(client, cell="yy-g02", files=[("photo", ("a.png", make_png(), "image/png"))])
    )
    big = file_report(
        client,
        cell="yy-g02",
        description="Van on the fire lane, photo attached",
        files=[("photo", ("van.png", noise_png((160, 160)), "image/png"))],
    )
    assert big.status_code == 413
    assert "van.png is larger than 64 kB" in big.text
    assert "Van on the fire lane, photo attached" in big.text  # the form keeps the words
    fake = file_report(
        client,
        cell="yy-g02",
        files=[("photo", ("van.jpg", b"<html><script>x</script>", "image/jpeg"))],
    )
    assert fake.status_code == 415 and "van.jpg is not a JPEG, PNG or WebP photo" in fake.text
    two = file_report(
        client,
        cell="yy-g02",
        files=[("photo", (f"{i}.png", make_png(), "image/png")) for i in range(2)],
    )
    assert two.status_code == 422 and "at most 1" in two.text
    # Four tries in the window (three refused, one filed): the fifth is one too many.
    too_many = file_report(client, cell="yy-g02", description="one more")
    assert too_many.status_code == 429
    assert "too many reports from your address" in too_many.text
    assert int(too_many.headers["retry-after"]) > 0
    assert "one more" in too_many.text
    # Nothing else lost: the first report, its event and its one photo are all there,
    # and the refused tries left no event and no file behind.
    assert [e.id for e in report_events(api)] == [event_of(api, first).id]
    store = api.deps.attachments
    assert store is not None and len(list(store.files())) == 1
    assert client.get(f"/resident/status/{first}").status_code == 200
    operator = api.client.get("/api/v1/events", headers=api.headers(Role.operator))
    assert operator.status_code == 200  # the hub goes on serving everyone else


def test_a_body_over_the_limit_is_refused_before_it_is_read(api: ApiHarness) -> None:
    client = public(api)
    limit = api.deps.config.max_body_bytes
    refused = client.post(
        "/resident/yingyang",
        data={"ticket": ticket_of(client.get("/resident/yingyang").text), "category": "noise"},
        files=[("photo", ("x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * limit, "image/png"))],
    )
    assert refused.status_code == 413 and refused.json()["limit_bytes"] == limit
    assert report_events(api) == []


def test_a_form_from_elsewhere_is_refused(api: ApiHarness) -> None:
    client = public(api)
    now = int(time.time())
    for forged in (
        ticket(api.deps, "203.0.113.9", now),  # minted for another address
        ticket(api.deps, "testclient", now - 7 * 3600),  # stale
        f"{now}.{'0' * 32}",
        "nonsense",
    ):
        answer = client.post(
            "/resident/yingyang",
            data={"ticket": forged, "category": "noise", "cell": "yy-g01", "description": "x"},
        )
        assert answer.status_code == 403 and "stale or from elsewhere" in answer.text
        assert ticket_of(answer.text)  # a fresh form to send again
    assert report_events(api) == []


def test_the_ticket_is_bound_to_the_address_and_expires(api: ApiHarness) -> None:
    value = ticket(api.deps, "198.51.100.1", 1_000_000)
    check_ticket(api.deps, "198.51.100.1", value, 1_000_000 + 3600)
    with pytest.raises(Forbidden):
        check_ticket(api.deps, "198.51.100.2", value, 1_000_000)
    with pytest.raises(Forbidden):
        check_ticket(api.deps, "198.51.100.1", value, 1_000_000 + 7 * 3600)
    with pytest.raises(Forbidden):
        check_ticket(api.deps, "198.51.100.1", value, 999_000)  # from the future


def test_the_limiter_counts_per_address_and_in_all_within_the_window() -> None:
    limiter = ReportLimiter(per_client=2, total=3, window_s=60.0)
    limiter.check("a", 0.0)
    limiter.check("a", 1.0)
    with pytest.raises(TooManyRequests) as caught:
        limiter.check("a", 2.0)
    assert caught.value.extra["retry_after_s"] == 59
    limiter.check("b", 2.0)  # another address has its own count
    with pytest.raises(TooManyRequests, match="busy"):
        limiter.check("c", 3.0)  # but all together are limited too
    limiter.check("a", 61.0)  # the window slid past the first try
    many = ReportLimiter(per_client=1, total=10**9, window_s=60.0)
    for i in range(25_000):  # a spray of addresses does not grow the table without bound
        many.check(f"10.0.{i // 256}.{i % 256}", float(i) / 1000)
    assert len(many._clients) <= 10_000


# ---------------------------------------------------------------------- in a browser


@pytest.mark.browser
def test_a_resident_reports_with_a_photo_and_it_arrives_on_the_wall(
    hub_defaults: ApiHarness, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is required for the browser test"
    api = hub_defaults
    api.user(Role.operator)
    jpeg = make_jpeg((400, 300))
    photo_file = tmp_path / "van.jpg"
    photo_file.write_bytes(jpeg)
    lon, lat = IN_YY_G05
    cells = {c.id: c.polygon for c in load_site_ref("yingyang").cells}
    with serving(api.app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            phone = browser.new_context(
                **PHONE,
                geolocation={"latitude": lat, "longitude": lon, "accuracy": 15},
                permissions=["geolocation"],
            )
            page = phone.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/resident/")
            assert page.url == f"{base}/resident/yingyang"
            page.select_option("#category", "blocked_fire_lane")
            page.fill("#description", "A white van has blocked the fire lane behind block 6.")
            page.click("#here")  # the phone's position: the hub finds its cell
            expect(page.locator("#point-text")).to_contain_text("Your position")
            assert page.input_value("#cell") == ""
            assert abs(float(page.input_value("#lat")) - lat) < 1e-5
            # A tap on the map says where instead, and picks the cell under it.
            page.locator('#site-map polygon[data-cell="yy-g02"]').click()
            assert page.input_value("#cell") == "yy-g02"
            tapped = (float(page.input_value("#lon")), float(page.input_value("#lat")))
            assert point_in_polygon(tapped, cells["yy-g02"]), tapped
            expect(page.locator("#pin")).to_have_count(1)
            page.set_input_files("#photo", str(photo_file))
            assert page.evaluate("document.documentElement.scrollWidth") <= 390  # fits
            page.evaluate("window.scrollTo(0, 0)")  # the sticky bar at the top
            shot = tmp_path / "resident.png"  # the whole form, at the phone's width
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            if target := os.environ.get("SCREENSHOT_DIR"):  # docs/figures, by hand
                shutil.copy(shot, Path(target) / "resident.png")
            page.click("#send")
            page.wait_for_url(re.compile(r"/resident/status/[A-Za-z0-9_-]{32}$"))
            expect(page.locator("#status")).to_have_attribute("data-status", "received")
            expect(page.locator("#photo-count")).to_contain_text("1 received")
            token = page.url.rsplit("/", 1)[1]
            assert errors == []

            event = event_of(api, token)
            assert event.cell == "yy-g02" and event.location is not None
            assert point_in_polygon((event.location.lon, event.location.lat), cells["yy-g02"])
            # The report is on the wall and the desk, with its photo.
            desk = browser.new_context(viewport={"width": 1600, "height": 900})
            op = desk.new_page()
            op.goto(f"{base}/desk/login?next=/desk/yingyang/wall")
            op.fill("#username", "operator-user")
            op.fill("#password", PASSWORD)
            op.click("#login")
            op.wait_for_url(f"{base}/desk/yingyang/wall")
            expect(op.locator(f"#wall-event-{event.id}")).to_be_visible(timeout=10_000)
            op.goto(f"{base}/desk/yingyang")
            expect(op.locator(f"#event-{event.id}")).to_contain_text("Resident report")
            op.goto(f"{base}/desk/events/{event.id}")
            image = op.locator("#photos img")
            expect(image).to_have_count(1)
            assert image.get_attribute("data-sha256") == hashlib.sha256(jpeg).hexdigest()
            wait_until_loaded(image)
            assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [400, 300]
            desk.close()
            phone.close()
        finally:
            browser.close()
