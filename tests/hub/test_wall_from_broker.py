"""The wall, end to end: a `door_forced` message published on a real Mosquitto reaches the
running hub, its rules raise the event, and the wall open in Debian's Chromium (served by
the hub's own embedded API) shows it live, without a reload."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from accounts.roles import Role
from devstack.stack import ManagedProcess, free_port
from events.store import EventFilter, EventStore
from hub.settings import ApiSettings, EventsSettings
from hub.wiring import open_registry, store_url
from registry.site_import import import_sites
from sites.model import load_site_ref
from tests.support.api_fixtures import PASSWORD
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, HAVE_CHROMIUM
from tests.support.hub import make_settings, running_hub
from tests.support.publishers import Publisher, until

pytestmark = [pytest.mark.integration, pytest.mark.browser]

DOOR = "ac-gate-south"  # in cell yy-g07 of the yingyang site
TOPIC = f"gw/v1/yingyang/access/{DOOR}/event"


async def test_a_door_forced_on_the_broker_appears_on_the_wall(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    from playwright.async_api import async_playwright, expect

    assert HAVE_CHROMIUM, "Debian's chromium is required for the browser test"
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        database,
        events=EventsSettings(snapshot_interval_s=0.5, detection="process"),
        api=ApiSettings(enabled=True, port=free_port()),
    )
    # The wall draws the registry's cells: import the site before the hub starts.
    registry = open_registry(settings)
    try:
        import_sites(registry, [load_site_ref("yingyang")])
    finally:
        registry.close()
    publisher = Publisher(mosquitto.port, "door-controller")
    try:
        async with running_hub(settings) as hub, async_playwright() as pw:
            api = hub.api
            assert api is not None
            api.deps.users.add_user("operator-user", PASSWORD, Role.operator)
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1600, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{api.url}/desk/login?next=/desk/yingyang/wall")
                await page.fill("#username", "operator-user")
                await page.fill("#password", PASSWORD)
                await page.click("#login")
                await page.wait_for_url(f"{api.url}/desk/yingyang/wall")
                await expect(page.locator("#link")).to_have_attribute("data-link", "live")
                cell = page.locator("#cell-yy-g07")
                await expect(cell).to_have_attribute("data-severity", "none")
                await page.evaluate("window.sameDocument = true")

                body = {"ts": int(time.time() * 1000), "seq": 1, "event": "door_forced"}
                publisher.publish(TOPIC, json.dumps(body).encode())
                publisher.wait()

                def raised() -> list[str]:
                    with EventStore(store_url(settings)) as store:
                        return [e.id for e in store.list_events(EventFilter(site="yingyang"))]

                await until(lambda: len(raised()) == 1, 20, "the hub's rules raising the event")
                (event_id,) = raised()
                row = page.locator(f"#wall-event-{event_id}")
                await expect(row).to_be_visible(timeout=10_000)
                await expect(row).to_have_class(re.compile(r"\bflash\b"))
                await expect(cell).not_to_have_attribute("data-severity", "none")
                assert await page.evaluate("window.sameDocument") is True  # live, no reload
                assert errors == []
            finally:
                await browser.close()
    finally:
        publisher.close()
