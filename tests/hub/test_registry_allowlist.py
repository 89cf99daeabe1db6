"""Unknown and retired devices are refused by ingest (`unknown_device`), counted,
dead-lettered, and raise an `unregistered_device` event."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devstack.stack import ManagedProcess
from events.store import EventFilter, EventStore
from hub.settings import EventsSettings, RegistrySettings, Settings
from hub.wiring import open_registry, store_url
from ingest.deadletter import read_dead_letters
from ingest.decode import Decoder, Rejected, RejectReason
from registry.allowlist import DeviceAllowlist
from registry.site_import import import_sites
from registry.store import RegistryStore
from sensors.base import DecodeContext, Reading
from sensors.registry import KINDS
from sites.model import load_site_ref
from tests.support.hub import make_settings, running_hub
from tests.support.publishers import Publisher, until

SMOKE = "gw/v1/yingyang/smoke/{}/telemetry"


def _payload(seq: int = 1) -> bytes:
    return json.dumps({"ts": int(time.time() * 1000), "seq": seq, "obscuration": 0.1}).encode()


def test_decoder_refuses_unregistered_and_retired_devices(tmp_path: Path) -> None:
    with RegistryStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        store.migrate()
        site = load_site_ref("yingyang")
        import_sites(store, [site])
        known = site.devices_of("smoke")[0].id
        allowlist = DeviceAllowlist(store.all_devices())
        decoder = Decoder(KINDS, DecodeContext(lambda v: v), allow_device=allowlist)
        now = time.time_ns()

        assert isinstance(decoder.decode(SMOKE.format(known), _payload(), now), Reading)
        stranger = decoder.decode(SMOKE.format("sm-stranger"), _payload(), now)
        assert isinstance(stranger, Rejected)
        assert stranger.reason is RejectReason.UNKNOWN_DEVICE
        # same id under another kind is not the registered device either
        wrong_kind = decoder.decode(f"gw/v1/yingyang/parking/{known}/telemetry", b"{}", now)
        assert isinstance(wrong_kind, Rejected)
        assert wrong_kind.reason is RejectReason.UNKNOWN_DEVICE

        store.retire_device(known)
        assert allowlist.refresh(store) is True
        # the route is cached: still accepted until the decoder forgets its routes
        assert isinstance(decoder.decode(SMOKE.format(known), _payload(2), now), Reading)
        decoder.forget_routes()
        retired = decoder.decode(SMOKE.format(known), _payload(3), now)
        assert isinstance(retired, Rejected) and retired.reason is RejectReason.UNKNOWN_DEVICE
        assert allowlist.refresh(store) is False


@pytest.mark.integration
async def test_hub_counts_dead_letters_and_raises_an_event(
    tmp_path: Path, mosquitto: ManagedProcess, influxdb: ManagedProcess, database: str
) -> None:
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influxdb.port,
        database,
        events=EventsSettings(snapshot_interval_s=0.5),
        registry=RegistrySettings(enforce=True, refresh_s=0.2),
    )
    site = load_site_ref("yingyang")
    with open_registry(settings) as store:
        import_sites(store, [site])
    known = site.devices_of("smoke")[0].id
    publisher = Publisher(mosquitto.port, "mixed-publisher")
    try:
        async with running_hub(settings) as hub:
            publisher.publish(SMOKE.format(known), _payload())
            publisher.publish(SMOKE.format("sm-intruder"), _payload())
            publisher.wait()
            await until(lambda: hub.stats.rejected.get("unknown_device") == 1, 20, "the count")
            await until(
                lambda: _events(settings, "unregistered_device") == ["sm-intruder"],
                20,
                "the unregistered_device event",
            )
            # retire the registered device while the hub runs: it is refused from then on
            with open_registry(settings) as store:
                store.retire_device(known)
            await until(
                lambda: (
                    not hub.registry_gate
                    or not hub.registry_gate.allowlist("yingyang", "smoke", known)
                ),
                10,
                "the refreshed allowlist",
            )
            publisher.publish(SMOKE.format(known), _payload(2))
            publisher.wait()
            await until(lambda: hub.stats.rejected.get("unknown_device") == 2, 20, "2nd count")
            assert hub.stats.rejected.get("unknown_device") == 2
        letters = list(read_dead_letters(tmp_path / "dead", keep=3))
        reasons = sorted((d["reason"], d["topic"]) for d in letters)
        assert reasons == sorted(
            [
                ("unknown_device", SMOKE.format(known)),
                ("unknown_device", SMOKE.format("sm-intruder")),
            ]
        )
    finally:
        publisher.close()


def _events(settings: Settings, rule: str) -> list[str | None]:
    with EventStore(store_url(settings)) as store:
        return [e.device for e in store.list_events(EventFilter(rule_id=rule))]
