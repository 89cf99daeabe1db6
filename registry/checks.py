"""Cross-record checks shared by single writes and bulk import.

Each check reads referenced records through a `Lookup`, so bulk import can check a row
against the store *and* the other rows of the same file before anything is written.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from registry.model import Cell, Profile, Site, Worker
from registry.schema import CellSpec, DeviceSpec
from sites.geometry import point_in_polygon

Found = list[tuple[str, str]]
"""(field path, message) pairs."""


class Lookup(Protocol):
    def site(self, ident: str) -> Site | None: ...
    def worker(self, ident: str) -> Worker | None: ...
    def cell(self, ident: str) -> Cell | None: ...
    def profile(self, ident: str) -> Profile | None: ...


def cell_problems(spec: CellSpec, look: Lookup) -> Found:
    found: Found = []
    site = look.site(spec.site)
    if site is None:
        found.append(("site", f"unknown site {spec.site!r}"))
    elif site.retired_ms is not None:
        found.append(("site", f"site {spec.site!r} is retired"))
    if spec.worker is not None:
        worker = look.worker(spec.worker)
        if worker is None:
            found.append(("worker", f"unknown worker {spec.worker!r}"))
        elif worker.retired_ms is not None:
            found.append(("worker", f"worker {spec.worker!r} is retired"))
    return found


def device_problems(spec: DeviceSpec, look: Lookup, kinds: Collection[str]) -> Found:
    found: Found = []
    if spec.kind not in kinds:
        found.append(("kind", f"unknown kind {spec.kind!r}; known: {', '.join(sorted(kinds))}"))
    site = look.site(spec.site)
    if site is None:
        found.append(("site", f"unknown site {spec.site!r}"))
    elif site.retired_ms is not None:
        found.append(("site", f"site {spec.site!r} is retired"))
    cell = look.cell(spec.cell)
    if cell is None:
        found.append(("cell", f"unknown cell {spec.cell!r}"))
    elif cell.retired_ms is not None:
        found.append(("cell", f"cell {spec.cell!r} is retired"))
    elif cell.site != spec.site:
        found.append(("cell", f"cell {spec.cell!r} belongs to site {cell.site!r}"))
    elif not point_in_polygon((spec.location.lon, spec.location.lat), cell.polygon):
        found.append(
            (
                "location",
                f"({spec.location.lon}, {spec.location.lat}) is not inside cell {cell.id!r}",
            )
        )
    if spec.profile is not None:
        profile = look.profile(spec.profile)
        if profile is None:
            found.append(("profile", f"unknown profile {spec.profile!r}"))
        elif profile.retired_ms is not None:
            found.append(("profile", f"profile {spec.profile!r} is retired"))
        elif profile.kind != spec.kind:
            found.append(
                (
                    "profile",
                    f"profile {spec.profile!r} is for kind {profile.kind!r}, not {spec.kind!r}",
                )
            )
    schedule = spec.attributes.get("schedule")
    if schedule is not None and site is not None and schedule not in site.schedules:
        found.append(("attributes.schedule", f"unknown schedule {schedule!r} of site {site.id!r}"))
    return found
