"""The rules' `Directory` as the running hub keeps it: the registry where it holds a
site, the site files (`events.sites`) for the rest, kept in step with the registry
without a restart.

A device registered through the API (or an import, a retirement, a profile's changed
threshold overrides) reaches the rules at the next refresh, every `registry.refresh_s`
seconds: the engine is rebuilt over the new directory with the same rules, so open
conditions carry on (`RulesService.set_directory`). When the registry cannot be read,
the last directory stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence

from sqlalchemy.exc import SQLAlchemyError

from detection.rules_service import RulesService
from registry.model import Device, ScheduleRule
from registry.model import Site as RegistrySite
from registry.store import RegistryStore
from rules.directory import DeviceInfo, Directory, OpeningHours, SiteInfo
from rules.overrides import compile_overrides
from rules.schema import Rule
from rules.site_directory import opening_hours
from sites.model import Schedule, known_zone

log = logging.getLogger(__name__)


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
        {s.id: SiteInfo(s.id, _zone(s), workers[s.id]) for s in sites.values()}, devices
    )


def _zone(site: RegistrySite) -> str:
    """The site's zone; UTC (logged) for a name an older database accepted but the tz
    database does not hold: a stored bad value must never stop the rules."""
    try:
        return known_zone(site.timezone)
    except ValueError as exc:
        log.warning("site %s: %s; its schedules use UTC", site.id, exc)
        return "UTC"


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


def merge(registry: Directory, files: Directory) -> Directory:
    """The registry's sites as it says; the site files' only for sites it does not hold."""
    sites = {k: v for k, v in files.sites.items() if k not in registry.sites}
    devices = {k: v for k, v in files.devices.items() if v.site in sites}
    sites.update(registry.sites)
    devices.update(registry.devices)
    return Directory(sites, devices)


class DirectorySource:
    """Builds the merged directory; `run` keeps a rules service on the newest one."""

    def __init__(
        self,
        store: RegistryStore | None,
        files: Directory,
        rules: Sequence[Rule] = (),
        *,
        only_sites: Collection[str] | None = None,
    ) -> None:
        """`only_sites`: a partition's hub (docs/scaling.md) knows its own sites only, so
        it never times out the devices of sites another hub reads."""
        self.store = store
        self.only_sites = None if only_sites is None else frozenset(only_sites)
        self.files = self._restricted(files)
        self._rules = tuple(rules)
        self.registry_sites = 0
        """Sites the registry holds (the rest come from the site files)."""
        self.current = self._build_or_files()
        self._report(self.current, compile_overrides(self._rules, self.current)[1])

    def build(self) -> Directory:
        """Read the registry now (raises SQLAlchemyError when it cannot be read)."""
        if self.store is None:
            return self.files
        registry = self._restricted(directory_from_registry(self.store))
        self.registry_sites = len(registry.sites)
        return merge(registry, self.files)

    def _restricted(self, directory: Directory) -> Directory:
        if self.only_sites is None:
            return directory
        sites = {k: v for k, v in directory.sites.items() if k in self.only_sites}
        devices = {k: v for k, v in directory.devices.items() if v.site in sites}
        return Directory(sites, devices)

    def _build_or_files(self) -> Directory:
        try:
            return self.build()
        except SQLAlchemyError as exc:
            log.warning("registry unreachable, rules use the site files only: %s", exc)
            return self.files
        except (ValueError, TypeError) as exc:  # a stored record this code cannot read
            log.exception("registry unreadable, rules use the site files only: %s", exc)
            return self.files

    def _report(self, directory: Directory, problems: Sequence[str]) -> None:
        log.info(
            "rules directory: %d sites (%d from the registry), %d devices",
            len(directory.sites),
            self.registry_sites,
            len(directory.devices),
        )
        for problem in problems:
            log.warning("%s (the rule's own value applies)", problem)

    def refresh(self, service: RulesService) -> bool:
        """Re-read the registry; on change, hand the service the new directory."""
        fresh = self.build()
        if fresh == self.current:
            return False
        self.current = fresh
        service.set_directory(fresh)
        self._report(fresh, service.engine.override_problems)
        return True

    async def run(self, service: RulesService, interval_s: float) -> None:
        """Refresh every `interval_s` (on a worker thread: SQL) until cancelled."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await asyncio.to_thread(self.refresh, service)
                except SQLAlchemyError as exc:
                    log.warning("registry unreachable, rules keep the last directory: %s", exc)
                except (ValueError, TypeError) as exc:  # a stored record this code cannot read
                    log.exception("registry unreadable, rules keep the last directory: %s", exc)
        finally:
            if self.store is not None:
                self.store.close()
