"""Site files (`sites.model.Site`) as registry records, so the demo sites and any
hand-written site file import as they are."""

from __future__ import annotations

from collections.abc import Iterable

from registry.schema import Bundle, WorkerSpec
from registry.store import ImportSummary, RegistryStore
from sites.model import Site


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
