"""The running hub's rules `Directory`: the registry where it holds a site, the site
files (`events.sites`) for the rest, kept in step with the registry without a restart.

A device registered through the API (or an import, a retirement, a profile's changed
threshold overrides) reaches the rules at the next refresh, every `registry.refresh_s`
seconds: the engine is rebuilt over the new directory with the same rules, so open
conditions carry on (`RulesService.set_directory`). When the registry cannot be read,
the last directory stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from hub.directory import directory_from_sites
from hub.registry_import import directory_from_registry, open_registry
from hub.rules_service import RulesService
from hub.settings import Settings
from registry.store import RegistryStore
from rules.directory import Directory
from rules.overrides import compile_overrides
from rules.schema import Rule
from simulators.site import load_site_ref

log = logging.getLogger(__name__)


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
        self, store: RegistryStore | None, files: Directory, rules: Sequence[Rule] = ()
    ) -> None:
        self.store = store
        self.files = files
        self._rules = tuple(rules)
        self.registry_sites = 0
        """Sites the registry holds (the rest come from the site files)."""
        self.current = self._build_or_files()
        self._report(self.current, compile_overrides(self._rules, self.current)[1])

    def build(self) -> Directory:
        """Read the registry now (raises SQLAlchemyError when it cannot be read)."""
        if self.store is None:
            return self.files
        registry = directory_from_registry(self.store)
        self.registry_sites = len(registry.sites)
        return merge(registry, self.files)

    def _build_or_files(self) -> Directory:
        try:
            return self.build()
        except SQLAlchemyError as exc:
            log.warning("registry unreachable, rules use the site files only: %s", exc)
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
        finally:
            if self.store is not None:
                self.store.close()


def directory_source(settings: Settings, rules: Sequence[Rule] = ()) -> DirectorySource:
    """Site files of `events.sites` as the fallback, the registry in the event store."""
    files = directory_from_sites([load_site_ref(ref) for ref in settings.events.sites])
    try:
        store: RegistryStore | None = open_registry(settings)
    except SQLAlchemyError as exc:
        log.warning("registry unavailable, rules use the site files only: %s", exc)
        store = None
    return DirectorySource(store, files, rules)
