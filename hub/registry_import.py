"""Bridges between the registry and the shapes around it, which only the hub may know.

- simulator site files (`simulators.site.Site`) → a registry `Bundle`, so the demo sites
  and any hand-written site file import as they are;
- the registry → the rules' `Directory`, the same view `hub.directory` builds from site
  files (a site imported here gives an equal directory);
- the registry → ingest's device allowlist (`registry.enforce`): messages of devices that
  are not registered, or retired, are rejected as `unknown_device`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from hub.directory import opening_hours
from hub.events_wiring import store_url
from hub.settings import Settings
from ingest.decode import Decoder
from registry.model import Device, ScheduleRule
from registry.model import Site as RegistrySite
from registry.schema import Bundle, WorkerSpec
from registry.store import ImportSummary, RegistryStore
from rules.directory import DeviceInfo, Directory, OpeningHours, SiteInfo
from simulators.site import Schedule, Site

log = logging.getLogger(__name__)


def open_registry(settings: Settings) -> RegistryStore:
    """The registry in the event store's database, migrated."""
    url = store_url(settings)
    if settings.events.store_url is None:  # the default SQLite file under data_dir
        Path(settings.hub.data_dir).mkdir(parents=True, exist_ok=True)
    store = RegistryStore(url)
    store.migrate()
    return store


def bundle_from_site(site: Site) -> Bundle:
    """One site file as registry records: the site, its workers, cells and devices."""
    workers: dict[str, dict[str, object]] = {}
    for cell in site.cells:
        workers.setdefault(cell.worker.id, cell.worker.model_dump())
    return Bundle.model_validate(
        {
            "sites": [
                {
                    "id": site.site,
                    "name": site.name,
                    "timezone": site.timezone,
                    "description": site.description,
                    "schedules": {
                        name: [rule.model_dump() for rule in schedule.rules]
                        for name, schedule in site.schedules.items()
                    },
                }
            ],
            "workers": list(workers.values()),
            "cells": [
                {
                    "id": cell.id,
                    "site": site.site,
                    "name": cell.name,
                    "worker": cell.worker.id,
                    "polygon": [list(p) for p in cell.polygon],
                }
                for cell in site.cells
            ],
            "devices": [
                {
                    "id": device.id,
                    "kind": device.kind,
                    "site": site.site,
                    "cell": device.cell,
                    "location": device.location.model_dump(),
                    "attributes": device.attributes.model_dump(),
                }
                for device in site.devices
            ],
        }
    )


def import_sites(store: RegistryStore, sites: Iterable[Site]) -> ImportSummary:
    """Create or update the registry from site files, all sites in one transaction."""
    parts = [bundle_from_site(site) for site in sites]
    merged = Bundle(
        sites=[s for b in parts for s in b.sites],
        workers=_unique([w for b in parts for w in b.workers]),
        cells=[c for b in parts for c in b.cells],
        devices=[d for b in parts for d in b.devices],
    )
    return store.import_bundle(merged, source="site files")


def _unique(workers: list[WorkerSpec]) -> list[WorkerSpec]:
    """A worker who looks after cells of two sites is one record."""
    return list({w.id: w for w in reversed(workers)}.values())[::-1]


def _hours(rules: tuple[ScheduleRule, ...]) -> OpeningHours | None:
    """Opening hours of a door, None when the schedule covers the whole week."""
    schedule = Schedule.model_validate(
        {"rules": [{"days": list(r.days), "open": r.open, "close": r.close} for r in rules]}
    )
    return None if schedule.is_always_open() else opening_hours(schedule)


def directory_from_registry(store: RegistryStore) -> Directory:
    """The rules' view of active devices and sites, from the registry; each device
    carries its profile's threshold overrides (`rules.overrides`)."""
    sites = {s.id: s for s in store.all_sites() if s.retired_ms is None}
    workers: dict[str, dict[str, str]] = {site: {} for site in sites}
    for cell in store.all_cells():
        if cell.site in workers and cell.worker is not None:
            workers[cell.site][cell.id] = cell.worker
    thresholds = {p.id: p.thresholds for p in store.all_profiles() if p.thresholds}
    devices = {
        d.id: _device_info(d, sites, thresholds) for d in store.all_devices() if d.site in sites
    }
    return Directory(
        {s.id: SiteInfo(s.id, s.timezone, workers[s.id]) for s in sites.values()}, devices
    )


def _device_info(
    device: Device, sites: dict[str, RegistrySite], thresholds: Mapping[str, Mapping[str, float]]
) -> DeviceInfo:
    hours = None
    schedule = device.attributes.get("schedule")
    if device.kind == "access" and isinstance(schedule, str):
        rules = sites[device.site].schedules.get(schedule)
        if rules:
            hours = _hours(rules)
    return DeviceInfo(
        id=device.id,
        kind=device.kind,
        site=device.site,
        cell=device.cell,
        lon=device.location.lon,
        lat=device.location.lat,
        attributes=dict(device.attributes),
        hours=hours,
        thresholds=dict(thresholds.get(device.profile or "", {})),
    )


class DeviceAllowlist:
    """Active devices as (site, kind, device): the decoder's O(1) `allow_device` hook."""

    def __init__(self, devices: Iterable[Device] = ()) -> None:
        self._active = frozenset((d.site, d.kind, d.id) for d in devices if not d.retired)

    def __call__(self, site: str, kind: str, device: str) -> bool:
        return (site, kind, device) in self._active

    def __len__(self) -> int:
        return len(self._active)

    def refresh(self, store: RegistryStore) -> bool:
        """Re-read the registry (on a worker thread); whether anything changed."""
        fresh = DeviceAllowlist(store.all_devices())._active
        changed = fresh != self._active
        self._active = fresh  # one reference swap: the event loop sees old or new, whole
        return changed


class RegistryGate:
    """Keeps the allowlist in step with the registry while the hub runs."""

    def __init__(self, store: RegistryStore, interval_s: float) -> None:
        self.store = store
        self.interval_s = interval_s
        self.allowlist = DeviceAllowlist(store.all_devices())
        if not len(self.allowlist):
            log.warning(
                "registry.enforce is on and the registry has no active device: every device "
                "message will be rejected as unknown_device (import a site first)"
            )

    async def run(self, decoder: Decoder) -> None:
        """Refresh every `interval_s`; on change, make the decoder re-check cached routes."""
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    changed = await asyncio.to_thread(self.allowlist.refresh, self.store)
                except SQLAlchemyError as exc:
                    log.warning("registry unreachable, keeping the last device list: %s", exc)
                    continue
                if changed:
                    decoder.forget_routes()
                    log.info("registry: %d active devices", len(self.allowlist))
        finally:
            self.store.close()


def registry_gate(settings: Settings) -> RegistryGate | None:
    """The gate when `registry.enforce` is on, else None (every device is accepted)."""
    if not settings.registry.enforce:
        return None
    return RegistryGate(open_registry(settings), settings.registry.refresh_s)
