"""The grid worker's page: a worker logs in, sees the events assigned to them nearest
first, accepts one and resolves it with a note and photos, which operators then see on
the event's page; the limits refuse without losing anything. The last test drives it all
in Debian's headless Chromium on a phone-sized screen."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from accounts.roles import Role
from events.attachments import AttachmentStore
from events.model import Action, Detection, SecurityEvent, Severity, State
from registry.site_import import import_sites
from sites.model import load_site_ref
from tests.support.api_fixtures import PASSWORD, ApiHarness, api_harness, serving
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, wait_until_loaded

PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
WORKER = "w-yy-g01"
"""The grid worker of cell yy-g01 (Chen Xiaoyan in the demo site)."""
AT_BLOCK_4 = (113.3888629, 22.5177771)
"""(lon, lat) of ac-b4-entrance, in yy-g01."""
NEAR_BLOCK_4 = (113.3886, 22.5177)
"""About 28 m from ac-b4-entrance, 68 m from ac-flat-3-501, 110 m from sm-b1-stairwell."""
SMALL_LIMITS = {"max_photo_bytes": 64 * 1024, "max_worker_photos": 2}


def make_png(size: tuple[int, int] = (160, 120), colour: str = "teal") -> bytes:
    """A real PNG (Pillow), with a stripe so it is not a flat fill."""
    image = Image.new("RGB", size, colour)
    for x in range(size[0]):
        for y in range(size[1] // 3, size[1] // 2):
            image.putpixel((x, y), (255, 200, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def make_jpeg(size: tuple[int, int] = (200, 150), colour: str = "firebrick") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG", quality=85)
    return out.getvalue()


def noise_png(size: tuple[int, int]) -> bytes:
    """A real PNG that does not compress (random pixels): a large upload."""
    image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def field_api(tmp_path: Path, **config: Any) -> Iterator[ApiHarness]:
    """The app over SQLite with the demo site in the registry and a photo store."""
    with api_harness(f"sqlite:///{tmp_path / 'events.db'}", config=config) as api:
        registry = api.deps.registry
        assert registry is not None
        import_sites(registry, [load_site_ref("yingyang")])
        store = AttachmentStore(api.url, tmp_path / "photos")
        store.migrate()
        api.deps.attachments = store
        try:
            yield api
        finally:
            store.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with field_api(tmp_path, **SMALL_LIMITS) as harness:
        harness.deps.users.add_user(WORKER, PASSWORD, Role.worker)
        yield harness


@pytest.fixture
def hub_defaults(tmp_path: Path) -> Iterator[ApiHarness]:
    """The same with the hub's default limits (what the screenshots show)."""
    with field_api(tmp_path) as harness:
        harness.deps.users.add_user(WORKER, PASSWORD, Role.worker)
        yield harness


def desk_session(api: ApiHarness, username: str, next_url: str = "/desk/worker/") -> TestClient:
    """A browser-like client logged in through the desk's login form."""
    client = TestClient(api.app, follow_redirects=False)
    answer = client.post(
        "/desk/login", data={"username": username, "password": PASSWORD, "next": next_url}
    )
    assert answer.status_code == 303 and answer.headers["location"] == next_url, answer.text
    return client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, page[:2000]
    return found.group(1)


def jobs_of(page: str) -> list[str]:
    return re.findall(r'<li id="job-([0-9a-f]+)"', page)


def raise_on(
    api: ApiHarness, rule: str, device: str, cell: str, severity: Severity, title: str, text: str
) -> SecurityEvent:
    """An event as a rule raises it on a device (titled like the rule pack's)."""
    now = api.deps.clock_ms()
    detection = Detection(
        rule_id=rule,
        key=device,
        raised=True,
        at_ms=now,
        site="yingyang",
        cell=cell,
        device=device,
        severity=severity,
        title=title,
        message=text,
        incident=rule,
    )
    return api.deps.manager.handle(detection, now)[0]


def assigned_events(api: ApiHarness) -> dict[str, SecurityEvent]:
    """A: a forced door that has cleared (resolvable), B: a critical smoke alarm still
    active, C: a low battery; and one in another worker's cell."""
    forced = raise_on(
        api, "door_forced", "ac-b4-entrance", "yy-g01", Severity.HIGH,
        "Door forced open: Block 4 entrance", "Opened without a valid card at 02:14.",
    )  # fmt: skip
    api.clear_event(forced)
    smoke = raise_on(
        api, "smoke_alarm", "sm-b1-stairwell", "yy-g01", Severity.CRITICAL,
        "Smoke alarm: Block 1 stairwell", "Obscuration 12 %/m and rising.",
    )  # fmt: skip
    battery = raise_on(
        api, "low_battery", "ac-flat-3-501", "yy-g01", Severity.LOW,
        "Low battery: Flat 3-501 door", "Battery at 8 %.",
    )  # fmt: skip
    other = raise_on(
        api, "door_forced", "ac-b6-exit", "yy-g02", Severity.HIGH,
        "Door forced open: Block 6 emergency exit", "Opened from outside.",
    )  # fmt: skip
    found = {
        "A": api.deps.events.get(forced.id),
        "B": smoke,
        "C": battery,
        "other": other,
    }
    assert all(e is not None for e in found.values())
    assert {e.assignee for k, e in found.items() if k != "other" and e} == {WORKER}
    return {k: e for k, e in found.items() if e is not None}


# ---------------------------------------------------------------------- who sees what


def test_a_worker_sees_only_their_events_most_severe_first_or_nearest_first(
    api: ApiHarness,
) -> None:
    events = assigned_events(api)
    me = desk_session(api, WORKER)
    page = me.get("/desk/worker/")
    assert page.status_code == 200 and "Chen Xiaoyan" in page.text
    assert jobs_of(page.text) == [events[k].id for k in "BAC"]  # no position: severity
    lon, lat = AT_BLOCK_4
    near = me.get(f"/desk/worker/?lat={lat}&lon={lon}")
    assert jobs_of(near.text) == [events[k].id for k in "ACB"]  # 0 m, ~95 m, ~135 m
    assert 'data-located="yes"' in near.text and "Nearest first" in near.text
    assert events["other"].id not in near.text
    assert me.get(f"/desk/worker/events/{events['other'].id}").status_code == 404


def test_an_account_that_is_no_registry_worker_is_refused(api: ApiHarness) -> None:
    api.deps.users.add_user("not-a-worker", PASSWORD, Role.worker)
    session = desk_session(api, "not-a-worker")
    page = session.get("/desk/worker/")
    assert page.status_code == 404 and "registry Worker id" in page.text
    assert 'id="error"' in page.text and "job-" not in page.text
    event = api.raise_event(key="door-9", cell="yy-g01")
    assert session.get(f"/desk/worker/events/{event.id}").status_code == 404


def test_operators_and_workers_keep_to_their_own_pages(api: ApiHarness) -> None:
    api.user(Role.operator)
    operator = desk_session(api, "operator-user", "/desk/")
    assert operator.get("/desk/worker/").status_code == 403
    worker = desk_session(api, WORKER)
    assert worker.get("/desk/yingyang").status_code == 403
    assert worker.get("/desk/").status_code == 403
    anonymous = TestClient(api.app, follow_redirects=False)
    for path in ("/worker", "/desk/worker"):
        assert anonymous.get(path).headers["location"] == "/desk/worker/"
    login = anonymous.get("/desk/worker/")
    assert login.status_code == 303
    assert login.headers["location"] == "/desk/login?next=%2Fdesk%2Fworker%2F"


def test_the_page_loads_nothing_from_elsewhere(api: ApiHarness) -> None:
    events = assigned_events(api)
    me = desk_session(api, WORKER)
    for path in ("/desk/worker/", f"/desk/worker/events/{events['A'].id}"):
        page = me.get(path)
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert "<script>" not in page.text and "style=" not in page.text
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page.text), path
    for asset in ("/static/worker.js", "/static/field.css"):
        text = me.get(asset).text
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), asset


def test_the_event_page_draws_the_cell_and_where_it_is(api: ApiHarness) -> None:
    events = assigned_events(api)
    lon, lat = AT_BLOCK_4
    page = desk_session(api, WORKER).get(
        f"/desk/worker/events/{events['C'].id}?lat={lat}&lon={lon}"
    )
    assert page.status_code == 200
    svg = re.search(r"<svg id=\"cell-map\".*?</svg>", page.text, re.S)
    assert svg is not None
    assert re.search(r'class="cell focus" data-cell="yy-g01"', svg.group(0))
    assert svg.group(0).count("<polygon") == 7  # the neighbours too, for orientation
    assert 'class="target"' in svg.group(0) and 'class="me"' in svg.group(0)
    assert "22.51783, 113.38795" in page.text  # the device's place from the registry
    assert re.search(r'id="distance">(9\d) m from you', page.text)


# ---------------------------------------------------------------------- accept and resolve


def test_accept_is_the_workers_own_assignment_and_acknowledges(api: ApiHarness) -> None:
    events = assigned_events(api)
    me = desk_session(api, WORKER)
    url = f"/desk/worker/events/{events['B'].id}"
    done = me.post(f"{url}/accept", data={"csrf": csrf_of(me.get(url).text)})
    assert done.status_code == 303 and done.headers["location"].endswith("done=accepted")
    trail = api.deps.events.audit_trail(events["B"].id)
    assert [(a.actor, a.action) for a in trail[-2:]] == [
        (WORKER, Action.ASSIGN),
        (WORKER, Action.ACKNOWLEDGE),
    ]
    page = me.get(url).text
    assert 'id="accepted"' in page and 'id="accept"' not in page
    event = api.deps.events.get(events["B"].id)
    assert event is not None and event.state is State.ACTIVE_ACKNOWLEDGED
    # An event the operator acknowledged already is accepted all the same.
    api.deps.manager.act(events["C"].id, Action.ACKNOWLEDGE, actor="op", at_ms=api.deps.clock_ms())
    url_c = f"/desk/worker/events/{events['C'].id}"
    again = me.post(f"{url_c}/accept", data={"csrf": csrf_of(me.get(url_c).text)})
    assert again.status_code == 303
    assert api.deps.events.audit_trail(events["C"].id)[-1].action is Action.ASSIGN


def test_forms_need_the_session_csrf_token(api: ApiHarness) -> None:
    events = assigned_events(api)
    me = desk_session(api, WORKER)
    url = f"/desk/worker/events/{events['A'].id}"
    for action in ("accept", "resolve", "note"):
        refused = me.post(f"{url}/{action}", data={"csrf": "0" * 32, "note": "x"})
        assert refused.status_code == 403, action
    assert api.deps.events.audit_trail(events["A"].id)[-1].actor == "system"


def test_resolving_with_photos_stores_them_and_operators_see_them(api: ApiHarness) -> None:
    events = assigned_events(api)
    me = desk_session(api, WORKER)
    url = f"/desk/worker/events/{events['A'].id}"
    png, jpeg = make_png(), make_jpeg()
    done = me.post(
        f"{url}/resolve",
        data={"csrf": csrf_of(me.get(url).text), "note": "Door shut and latched; no entry."},
        files=[
            ("photos", ("door.png", png, "application/octet-stream")),  # the type is sniffed
            ("photos", ("latch.jpg", jpeg, "image/png")),  # a wrong claim changes nothing
        ],
    )
    assert done.status_code == 303 and done.headers["location"].endswith("done=resolved")
    event = api.deps.events.get(events["A"].id)
    assert event is not None and event.closed and event.resolution.startswith("Door shut")
    last = api.deps.events.audit_trail(event.id)[-1]
    assert (last.actor, last.action) == (WORKER, Action.CLOSE)
    store = api.deps.attachments
    assert store is not None
    photos = store.of_event(event.id)
    assert [(p.media_type.value, p.sha256, p.uploader) for p in photos] == [
        ("image/png", sha256(png), WORKER),
        ("image/jpeg", sha256(jpeg), WORKER),
    ]
    # The operator's event page shows them; each is served with its sniffed type.
    page = api.client.get(f"/desk/events/{event.id}", headers=api.headers(Role.operator))
    assert page.status_code == 200
    assert re.findall(r'data-sha256="([0-9a-f]{64})"', page.text) == [sha256(png), sha256(jpeg)]
    for stored, data in zip(photos, (png, jpeg), strict=True):
        served = api.client.get(f"/desk/photos/{stored.id}", headers=api.headers(Role.operator))
        assert served.status_code == 200 and served.content == data
        assert served.headers["content-type"] == stored.media_type.value
        assert served.headers["x-content-type-options"] == "nosniff"
        assert served.headers["cache-control"] == "no-store"
        assert served.headers["repr-digest"].startswith("sha-256=:")
        assert "inline" in served.headers["content-disposition"]
    # The worker sees their own event's photos, not after it goes to someone else.
    assert me.get(f"/desk/photos/{photos[0].id}").status_code == 200


def test_photos_of_others_events_are_not_served(api: ApiHarness) -> None:
    events = assigned_events(api)
    store = api.deps.attachments
    assert store is not None
    theirs = store.add(
        events["other"].id, make_png(), uploader="w-yy-g02", source="worker", max_bytes=1 << 20
    )
    me = desk_session(api, WORKER)
    assert me.get(f"/desk/photos/{theirs.id}").status_code == 404
    assert me.get("/desk/photos/" + "0" * 32).status_code == 404
    assert me.get("/desk/photos/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert me.get("/desk/photos/" + "a" * 31 + "Z").status_code == 422
    resident = api.client.get(f"/desk/photos/{theirs.id}", headers=api.headers(Role.resident))
    assert resident.status_code == 403
    anonymous = TestClient(api.app, follow_redirects=False).get(f"/desk/photos/{theirs.id}")
    assert anonymous.status_code == 303  # to the login page


def test_an_active_event_takes_a_note_and_photos_but_is_not_resolved(api: ApiHarness) -> None:
    events = assigned_events(api)
    me = desk_session(api, WORKER)
    url = f"/desk/worker/events/{events['B'].id}"
    page = me.get(url).text
    assert 'id="note-form"' in page and 'id="resolve-form"' not in page
    refused = me.post(
        f"{url}/resolve",
        data={"csrf": csrf_of(page), "note": "Smoke from cooking, vented."},
        files=[("photos", ("p.png", make_png(), "image/png"))],
    )
    assert refused.status_code == 409 and "still active" in refused.text
    assert "Smoke from cooking, vented." in refused.text  # what was typed is kept
    store = api.deps.attachments
    assert store is not None and store.of_event(events["B"].id) == []  # nothing orphaned
    noted = me.post(
        f"{url}/note",
        data={"csrf": csrf_of(page), "note": ""},
        files=[("photos", ("p.png", make_png(), "image/png"))],
    )
    assert noted.status_code == 303
    last = api.deps.events.audit_trail(events["B"].id)[-1]
    assert (last.action, last.note) == (Action.COMMENT, "1 photo(s) from the grid worker")
    assert len(store.of_event(events["B"].id)) == 1


def test_upload_limits_refuse_clearly_and_lose_nothing(api: ApiHarness) -> None:
    events = assigned_events(api)
    me = desk_session(api, WORKER)
    url = f"/desk/worker/events/{events['A'].id}"
    csrf = csrf_of(me.get(url).text)
    note = "Checked the door; photos attached."
    big = noise_png((160, 160))  # ~77 kB of random pixels, over the 64 kB limit
    assert len(big) > SMALL_LIMITS["max_photo_bytes"]
    cases = [
        ([("photos", ("big.png", big, "image/png"))], 413, "big.png is larger than 64 kB"),
        (
            [("photos", ("fake.jpg", b"<svg onload=alert(1)>" * 20, "image/jpeg"))],
            415,
            "fake.jpg is not a JPEG, PNG or WebP photo",
        ),
        ([("photos", ("empty.png", b"", "image/png"))], 415, "empty.png is empty"),
        (
            [("photos", (f"{i}.png", make_png(), "image/png")) for i in range(3)],
            422,
            "3 photos sent; at most 2",
        ),
        (
            [("photos", ("ok.png", make_png(), "image/png")),
             ("photos", ("bad.gif", b"GIF89a" + b"\0" * 40, "image/gif"))],
            415,
            "bad.gif is not a JPEG, PNG or WebP photo",
        ),
    ]  # fmt: skip
    for files, status, message in cases:
        refused = me.post(f"{url}/resolve", data={"csrf": csrf, "note": note}, files=files)
        assert refused.status_code == status, (message, refused.text[:500])
        assert message in refused.text and note in refused.text
    store = api.deps.attachments
    assert store is not None
    assert store.of_event(events["A"].id) == [] and list(store.files()) == []
    event = api.deps.events.get(events["A"].id)
    assert event is not None and not event.closed
    # The same form, within the limits, then goes through.
    ok = me.post(
        f"{url}/resolve",
        data={"csrf": csrf, "note": note},
        files=[("photos", ("ok.png", make_png(), "image/png"))],
    )
    assert ok.status_code == 303
    assert len(store.of_event(events["A"].id)) == 1


def test_a_body_over_the_routes_limit_is_refused_before_it_is_read(api: ApiHarness) -> None:
    events = assigned_events(api)
    me = desk_session(api, WORKER)
    url = f"/desk/worker/events/{events['A'].id}"
    limit = api.deps.config.max_body_bytes  # small photo limits: the default body limit rules
    refused = me.post(
        f"{url}/resolve",
        data={"csrf": csrf_of(me.get(url).text), "note": "x"},
        files=[("photos", ("huge.png", b"\x89PNG\r\n\x1a\n" + b"\0" * limit, "image/png"))],
    )
    assert refused.status_code == 413
    assert refused.json()["limit_bytes"] == limit
    assert "larger than" in refused.json()["detail"]


# ---------------------------------------------------------------------- in a browser


@pytest.mark.browser
def test_a_worker_accepts_and_resolves_with_a_photo_on_a_phone(
    hub_defaults: ApiHarness, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is required for the browser test"
    api = hub_defaults
    events = assigned_events(api)
    api.user(Role.operator)
    png = make_png((320, 240))
    photo_file = tmp_path / "door.png"
    photo_file.write_bytes(png)
    lon, lat = NEAR_BLOCK_4
    with serving(api.app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            phone = browser.new_context(
                **PHONE,
                geolocation={"latitude": lat, "longitude": lon, "accuracy": 10},
                permissions=["geolocation"],
            )
            page = phone.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/worker")
            assert "/desk/login" in page.url
            page.fill("#username", WORKER)
            page.fill("#password", PASSWORD)
            page.click("#login")
            # The page asks the phone where it is and sorts nearest first.
            expect(page.locator("#order")).to_have_attribute("data-located", "yes")
            ids = page.eval_on_selector_all("#jobs li", "ns => ns.map(n => n.id)")
            assert ids == [f"job-{events[k].id}" for k in "ACB"]
            assert page.evaluate("document.documentElement.scrollWidth") <= 390  # fits

            page.click(f"#job-{events['A'].id} a")
            expect(page.locator("#event-title")).to_contain_text("Door forced open")
            expect(page.locator("#cell-map polygon.focus")).to_have_count(1)
            expect(page.locator("#cell-map circle.target")).to_have_count(1)
            expect(page.locator("#cell-map circle.me")).to_have_count(1)
            page.click("#accept")
            expect(page.locator("#notice")).to_contain_text("Accepted")
            expect(page.locator("#accepted")).to_be_visible()
            page.fill("#note", "Door was shut by the wind; latch fixed, no entry.")
            page.set_input_files("#photos", str(photo_file))
            expect(page.locator("#photo-check")).to_contain_text("1 photo(s) chosen")
            page.evaluate("window.scrollTo(0, 0)")  # the sticky bar at the top
            shot = tmp_path / "worker.png"  # the whole page, at the phone's width
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
            if target := os.environ.get("SCREENSHOT_DIR"):  # docs/figures, by hand
                shutil.copy(shot, Path(target) / "worker.png")
            page.click("#resolve")
            expect(page.locator("#notice")).to_contain_text("Resolved")
            expect(page.locator("#state")).to_have_attribute("data-state", "closed")
            expect(page.locator("#photos-list img")).to_have_count(1)
            assert errors == []

            # The operator's event page shows the photo, byte for byte.
            desk = browser.new_context(viewport={"width": 1280, "height": 900})
            op = desk.new_page()
            op.goto(f"{base}/desk/login?next=/desk/events/{events['A'].id}")
            op.fill("#username", "operator-user")
            op.fill("#password", PASSWORD)
            op.click("#login")
            image = op.locator("#photos img")
            expect(image).to_have_count(1)
            assert image.get_attribute("data-sha256") == sha256(png)
            wait_until_loaded(image)
            assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [320, 240]
            served = op.request.get(f"{base}{image.locator('..').get_attribute('href')}")
            assert served.status == 200 and served.headers["content-type"] == "image/png"
            assert sha256(served.body()) == sha256(png)
            desk.close()
            phone.close()
        finally:
            browser.close()
