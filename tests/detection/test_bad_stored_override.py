"""A bad threshold override already in the database (written below the API, as an older
release could) never stops the hub: it is logged, skipped, and the rule's own value
applies; the profile's good overrides still work."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from devstack.stack import ManagedProcess
from events.store import EventFilter, EventStore
from hub.settings import EventsSettings, RegistrySettings, Settings
from hub.wiring import open_registry, store_url
from registry.schema import DeviceSpec, LocationSpec, ProfileSpec
from registry.site_import import import_sites
from sites.model import load_site_ref
from tests.support.hub import make_settings, running_hub
from tests.support.publishers import Publisher, until

RULES = """
rules:
  - id: device_offline
    title: Device offline
    severity: medium
    condition: {type: offline, after: 60s}
    message: "{device} offline"
  - id: low_battery
    title: Low battery
    severity: low
    condition:
      type: latch
      raise_when: [{channel: telemetry, field: battery, below: 15}]
      clear_when: [{channel: telemetry, field: battery, above: 30}]
    message: "{device} battery low"
"""


def _store_thresholds(settings: Settings, thresholds: str) -> None:
    """What an older release (or a hand edit) left in the profile's row."""
    engine = sa.create_engine(store_url(settings))
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE registry_profiles SET thresholds_json = :t WHERE id = 'lab'"),
                {"t": thresholds},
            )
    finally:
        engine.dispose()


def _low_battery_events(settings: Settings) -> list[str | None]:
    with EventStore(store_url(settings)) as store:
        return [e.device for e in store.list_events(EventFilter(rule_id="low_battery"))]


async def test_a_stored_bad_override_is_skipped_and_the_hub_runs_on(
    tmp_path: Path,
    mosquitto: ManagedProcess,
    influxdb: ManagedProcess,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        database,
        # In this process, so the test can look into the engine.
        events=EventsSettings(snapshot_interval_s=0.5, sites=[], rules=[rules], detection="thread"),
        registry=RegistrySettings(refresh_s=0.2),
    )
    site = load_site_ref("yingyang")
    twin = site.devices_of("smoke")[0]
    with open_registry(settings) as store:
        import_sites(store, [site])
        store.create_profile(ProfileSpec(id="lab", kind="smoke", interval_s=60))
        store.create_device(
            DeviceSpec(
                id="sm-lab", kind="smoke", site=site.site, cell=twin.cell, profile="lab",
                location=LocationSpec(lon=twin.location.lon, lat=twin.location.lat),
            )
        )  # fmt: skip
    # The value: 1e308 s overflowed into milliseconds and killed the hub.
    _store_thresholds(settings, json.dumps({"device_offline.after": 1e308,
                                            "low_battery.below": 25}))  # fmt: skip
    publisher = Publisher(mosquitto.port, "bad-override-publisher")
    topic = "gw/v1/yingyang/smoke/sm-lab/telemetry"
    try:
        with caplog.at_level(logging.WARNING):
            async with running_hub(settings) as hub:
                assert hub.events is not None
                engine = hub.events.service.engine
                assert any("device_offline.after" in p for p in engine.override_problems)
                offline = next(c for c in engine.rules if c.rule.id == "device_offline")
                assert engine._logic(offline, "sm-lab") is offline.logic  # the rule's own 60 s
                low = next(c for c in engine.rules if c.rule.id == "low_battery")
                assert engine._logic(low, "sm-lab") is not low.logic  # the good one applies

                # A bad value arriving while the hub runs (the registry refresh).
                _store_thresholds(settings, '{"device_offline.after": NaN, '
                                            '"low_battery.below": 25}')  # fmt: skip
                await until(
                    lambda: (
                        any("nan" in p for p in hub.events.service.engine.override_problems)
                        if hub.events
                        else False
                    ),
                    10,
                    "the refresh to see the stored NaN",
                )
                publisher.publish(topic, json.dumps({"seq": 1, "battery": 20.0}).encode())
                publisher.wait()
                await until(lambda: _low_battery_events(settings) == ["sm-lab"], 20, "low_battery")
                assert hub.supervisor.problems() == {}
                assert all(h.failures == 0 for h in hub.supervisor.tasks.values())
        logged = [r.getMessage() for r in caplog.records if "threshold override" in r.getMessage()]
        assert any("device_offline.after" in m and "rule's own value" in m for m in logged)
    finally:
        publisher.close()
