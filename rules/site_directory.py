"""The rules' view of devices (`rules.directory`), built from site files.

The registry feeds the same `Directory` (`detection.directory_source`); a site imported
into the registry gives an equal directory.
"""

from __future__ import annotations

from collections.abc import Iterable

from rules.directory import DeviceInfo, Directory, OpeningHours, SiteInfo
from sites.model import WEEKDAYS, AccessDevice, Schedule, Site


def opening_hours(schedule: Schedule) -> OpeningHours:
    intervals: dict[int, list[tuple[int, int]]] = {}
    for rule in schedule.rules:
        for day in rule.days:
            intervals.setdefault(WEEKDAYS.index(day), []).append(rule.minutes)
    return OpeningHours({day: tuple(sorted(spans)) for day, spans in intervals.items()})


def directory_from_sites(sites: Iterable[Site]) -> Directory:
    site_infos: dict[str, SiteInfo] = {}
    devices: dict[str, DeviceInfo] = {}
    for site in sites:
        site_infos[site.site] = SiteInfo(
            site.site, site.timezone, {cell.id: cell.worker.id for cell in site.cells}
        )
        for device in site.devices:
            hours = None
            if isinstance(device, AccessDevice):
                schedule = site.schedule_of(device)
                if schedule is not None and not schedule.is_always_open():
                    hours = opening_hours(schedule)
            devices[device.id] = DeviceInfo(
                id=device.id,
                kind=device.kind,
                site=site.site,
                cell=device.cell,
                lon=device.location.lon,
                lat=device.location.lat,
                attributes=device.attributes.model_dump(),
                hours=hours,
            )
    return Directory(site_infos, devices)
