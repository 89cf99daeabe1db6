"""The running hub's rules directory comes from the registry where it holds the site
(site files otherwise) and follows registry changes without a restart: new devices,
their cells and their profiles' threshold overrides, with condition state kept."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from detection.directory_source import DirectorySource, directory_from_registry, merge
from detection.rules_service import RulesService
from devstack.stack import ManagedProcess
from events.manager import EventManager
from events.store import EventFilter, EventStore
from hub.settings import EventsSettings, RegistrySettings, Settings
from hub.wiring import open_registry, store_url
from registry.schema import DeviceSpec, LocationSpec, ProfilePatch, ProfileSpec
from registry.site_import import import_sites
from registry.store import RegistryStore
from rules.engine import Engine, open_conditions
from rules.schema import load_rules
from rules.site_directory import directory_from_sites
from sensors.base import Reading
from sites.model import Site, load_site_ref
from tests.support.hub import make_settings, running_hub
from tests.support.publishers import Publisher, until
from tests.support.rules import event, reading


@pytest.fixture
def store(event_db_url: str) -> Iterator[RegistryStore]:
    with RegistryStore(event_db_url) as reg:
        reg.migrate()
        yield reg


def _new_smoke(site: Site, device_id: str, profile: str | None) -> DeviceSpec:
    """A device next to the site's first smoke detector (so inside the same cell)."""
    twin = site.devices_of("smoke")[0]
    location = LocationSpec(lon=twin.location.lon, lat=twin.location.lat, label="new")
    return DeviceSpec(
        id=device_id, kind="smoke", site=site.site, cell=twin.cell, location=location,
        profile=profile, attributes={"room": "lab"},
    )  # fmt: skip


def battery(device: str, t: float, level: float) -> Reading:
    return reading("smoke", device, t, {"battery": level}, cell=None, site="yingyang")


def test_registry_sites_win_and_site_files_fill_in(store: RegistryStore) -> None:
    yingyang, bays = load_site_ref("yingyang"), load_site_ref("melbourne_bays")
    files = directory_from_sites([yingyang, bays])
    import_sites(store, [yingyang])
    store.create_device(_new_smoke(yingyang, "sm-new-1", None))
    directory = DirectorySource(store, files).current
    assert set(directory.sites) == {"yingyang", "melbourne_bays"}
    assert "sm-new-1" in directory.devices  # only the registry knows it
    bay_ids = {d.id for d in bays.devices}
    assert bay_ids <= set(directory.devices)  # the site the registry lacks: its file
    assert directory == merge(directory_from_registry(store), files)
    # An empty registry changes nothing: the files as they are.
    assert (
        merge(directory_from_registry(store), files).sites["melbourne_bays"]
        == (files.sites["melbourne_bays"])
    )


def test_refresh_swaps_the_directory_and_keeps_condition_state(
    store: RegistryStore, tmp_path: Path
) -> None:
    site = load_site_ref("yingyang")
    import_sites(store, [site])
    source = DirectorySource(store, directory_from_sites([]))
    rules = [r for r in load_rules() if r.id in ("low_battery", "repeated_denials")]
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as events:
        events.migrate()
        service = RulesService(
            Engine(rules, source.current),
            events,
            EventManager(events, workers=source.current.workers()),
        )
        door = site.devices_of("access")[0].id
        # 3 of the 4 denials repeated_denials needs
        denials = [event("access", door, t, "access_denied") for t in (0, 1, 2)]
        service.step([*denials, battery("sm-new-2", 10, 20.0)], force=True)
        slots_before = dict(service.state.slots)
        assert list(open_conditions(service.state)) == []
        assert source.refresh(service) is False  # nothing changed

        store.create_profile(
            ProfileSpec(
                id="weak", kind="smoke", interval_s=60, thresholds={"low_battery.below": 25}
            )
        )
        store.create_device(_new_smoke(site, "sm-new-2", "weak"))
        assert source.refresh(service) is True
        assert service.engine.directory.device("sm-new-2") is not None
        assert service.state.slots == slots_before  # the same rules: state carries on
        # The 4th denial completes the window begun before the swap; the new device's
        # profile raises its battery alarm at 20 % (the pack's limit is 15 %).
        service.step(
            [event("access", door, 3, "access_denied"), battery("sm-new-2", 11, 20.0)],
            force=True,
        )
        raised = {(e.rule_id, e.device, e.cell) for e in events.list_events(EventFilter())}
        # The reading names no cell: the event's cell is the registry's.
        twin_cell = site.devices_of("smoke")[0].cell
        assert raised == {("repeated_denials", door, "c1"), ("low_battery", "sm-new-2", twin_cell)}

        # A profile change reaches the rules too.
        store.update_profile("weak", ProfilePatch(thresholds={"low_battery.below": 5}))
        assert source.refresh(service) is True
        info = service.engine.directory.device("sm-new-2")
        assert info is not None and info.thresholds == {"low_battery.below": 5}


def _payload(seq: int, battery: float) -> bytes:
    body = {"ts": int(time.time() * 1000), "seq": seq, "obscuration": 0.1, "battery": battery}
    return json.dumps(body).encode()


@pytest.mark.integration
async def test_running_hub_knows_a_device_registered_while_it_runs(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        database,
        # In this process, so the test can look into the engine's directory.
        events=EventsSettings(
            snapshot_interval_s=0.5, sites=["melbourne_bays"], detection="thread"
        ),
        registry=RegistrySettings(refresh_s=0.2),
    )
    site = load_site_ref("yingyang")
    with open_registry(settings) as store:
        import_sites(store, [site])
    publisher = Publisher(mosquitto.port, "registry-directory-publisher")
    topic = "gw/v1/yingyang/smoke/sm-late/telemetry"
    try:
        async with running_hub(settings) as hub:
            assert hub.events is not None
            rules = hub.events.service
            assert "melbourne_bays" in rules.engine.directory.sites  # the file fallback
            assert "yingyang" in rules.engine.directory.sites  # the registry
            assert rules.engine.directory.device("sm-late") is None
            with open_registry(settings) as store:
                store.create_profile(
                    ProfileSpec(
                        id="lab", kind="smoke", interval_s=60, thresholds={"low_battery.below": 25}
                    )
                )
                store.create_device(_new_smoke(site, "sm-late", "lab"))
            await until(
                lambda: rules.engine.directory.device("sm-late") is not None, 10, "the refresh"
            )
            publisher.publish(topic, _payload(1, 20.0))
            publisher.wait()
            await until(lambda: _events(settings) != [], 20, "the low_battery event")
            [(device, cell, location)] = _events(settings)
            twin = site.devices_of("smoke")[0]
            assert (device, cell) == ("sm-late", twin.cell)  # cell from the registry
            assert location == (twin.location.lon, twin.location.lat)
    finally:
        publisher.close()


def _events(settings: Settings) -> list[tuple[str | None, str | None, tuple[float, float] | None]]:
    with EventStore(store_url(settings)) as store:
        return [
            (e.device, e.cell, (e.location.lon, e.location.lat) if e.location else None)
            for e in store.list_events(EventFilter(rule_id="low_battery"))
        ]
