"""The registry as ingest's device allowlist (`registry.enforce`): messages of devices
that are not registered, or retired, are rejected as `unknown_device`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from sqlalchemy.exc import SQLAlchemyError

from registry.model import Device
from registry.store import RegistryStore

log = logging.getLogger(__name__)


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

    async def run(self, on_change: Callable[[], None]) -> None:
        """Refresh every `interval_s`; call `on_change` (ingest re-checks its cached
        routes) when the device list changed."""
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    changed = await asyncio.to_thread(self.allowlist.refresh, self.store)
                except SQLAlchemyError as exc:
                    log.warning("registry unreachable, keeping the last device list: %s", exc)
                    continue
                if changed:
                    on_change()
                    log.info("registry: %d active devices", len(self.allowlist))
        finally:
            self.store.close()
