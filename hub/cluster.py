"""Cluster mode: a hub node owns site partitions by lease and runs a hub for each.

`gridwatch run` with `cluster.enabled` starts a node instead of a hub (docs/scaling.md):

- **Sites to partitions.** The sites the rules know (the registry's, else the site files
  of `events.sites`, plus `cluster.sites`) map to `cluster.partitions` fixed partitions;
  they are read again every `registry.refresh_s`, and a partition whose sites changed
  has its hub restarted with the new subscriptions.
- **Leases.** Every `lease_ttl_s / 3` a task of its own says the node is alive and renews
  its leases in PostgreSQL (nothing else the node does may delay a renewal). On the same
  period the node evens out the work: it owns at most its fair share (partitions over
  live nodes, rounded up; busy and empty partitions counted apart), hands the rest over
  gracefully (its hub stops and commits, then the lease is released) and takes free or
  expired partitions up to its share. A starting node waits two periods first, so nodes
  started together share the partitions out at once.
- **One hub per owned partition**, as a child process (`python -m hub.cluster`), with
  the node's settings narrowed to the partition: its MQTT session (`<client_id>-p003`,
  so the broker keeps a dead owner's queue for the next one), subscriptions to its sites
  only, its own log directory and status file, and a scoped view of the shared event
  store whose writes are fenced by the lease token. The new owner of a partition resumes
  the committed consumer state and positions exactly as a restarted hub does.
- **Sites no partition knows** (a device of an unregistered site) are read by the hub
  of the catch-all partition (`cluster.partitions.CATCH_ALL`): it subscribes to
  everything and skips the other partitions' sites, so the broker never drops such a
  message; it is logged and flagged as a single hub would.
- **Losing the lease kills the hub at once.** A renewal refused (another node took the
  partition after our lease expired) SIGKILLs the partition's hub; so does losing the
  database for half the lease time, so that the hub has stopped before anyone else may
  take over. Writes that slip through are refused by the fence. Children die with the
  node (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError

from cluster.leases import Lease, LeaseTable
from cluster.partitions import (
    CATCH_ALL,
    fair_share,
    foreign_sites,
    partition_name,
    sites_by_partition,
)
from hub.runtime import run_hub
from hub.settings import Settings
from hub.supervision import setup_logging, tune_malloc
from hub.wiring import credential_key, directory_source, model_dir
from hub.worker import die_with, read_settings, settings_blob
from ingest.status import read_status, write_status

if TYPE_CHECKING:
    from api.probes import IngestionView
    from api.server import EmbeddedApi

log = logging.getLogger(__name__)

STOP_TIMEOUT_S: Final = 60.0
"""How long a partition's hub may take to stop and commit when it is given up."""
START_GRACE_PERIODS: Final = 2
"""Lease periods a starting node only says it is alive before it takes partitions."""
RESTART_AFTER_S: Final = 1.0
"""A partition's hub that exited on its own is started again after this long."""


@dataclass(slots=True)
class Owned:
    """A partition this node holds the lease of, and the hub it runs for it."""

    partition: int
    token: int
    sites: tuple[str, ...]
    foreign: tuple[str, ...] | None
    """The catch-all partition's: the other partitions' sites, which its hub skips."""
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    exited_at: float | None = None
    acquired_at: float = field(default_factory=time.time)
    restarting: bool = False
    """Its hub was told to stop because its sites changed: start it again at once."""


def partition_settings(
    settings: Settings,
    partition: int,
    token: int,
    sites: tuple[str, ...],
    key: bytes,
    foreign: tuple[str, ...] | None = None,
) -> Settings:
    """The node's settings narrowed to one partition's hub (see the module doc);
    `foreign` for the catch-all partition's (`cluster.partitions.CATCH_ALL`)."""
    name = partition_name(partition)
    updates: dict[str, Any] = {
        "mqtt": settings.mqtt.model_copy(
            update={"client_id": f"{settings.mqtt.client_id[: 64 - len(name) - 1]}-{name}"}
        ),
        "spool": settings.spool.model_copy(update={"directory": settings.spool.directory / name}),
        "deadletters": settings.deadletters.model_copy(
            update={"directory": settings.deadletters.directory / name}
        ),
        "hub": settings.hub.model_copy(
            update={
                "data_dir": partition_dir(settings, partition),
                "credential_hash_key": SecretStr(key.decode()),
            }
        ),
        "anomaly": settings.anomaly.model_copy(update={"model_dir": model_dir(settings)}),
        "api": settings.api.model_copy(update={"enabled": False}),  # the node serves it
        "cluster": settings.cluster.model_copy(
            update={
                "enabled": False,
                "partition": partition,
                "partition_sites": list(sites),
                "foreign_sites": None if foreign is None else list(foreign),
                "lease_token": token,
            }
        ),
    }
    fields = {name: getattr(settings, name) for name in Settings.model_fields}
    return Settings.model_construct(**{**fields, **updates})


def partition_dir(settings: Settings, partition: int) -> Path:
    """Where a partition's hub keeps its status file (and other data). Like the log
    directories, under a directory every node of the cluster reaches (docs/scaling.md)."""
    return Path(settings.hub.data_dir) / "partitions" / partition_name(partition)


def node_dir(settings: Settings, node_id: str) -> Path:
    """Where a node writes its status file (`gridwatch status` reads them all)."""
    return Path(settings.hub.data_dir) / "nodes" / node_id


class ClusterNode:
    """One hub node of a cluster; `run(stop)` until stopped."""

    def __init__(self, settings: Settings) -> None:
        cfg = settings.cluster
        assert settings.events.store_url is not None  # checked by the settings
        self.settings = settings
        self.node_id = cfg.node_id or f"{socket.gethostname()}-{os.getpid()}"
        self.partitions = cfg.partitions
        self.ttl_s = cfg.lease_ttl_s
        self.period_s = cfg.lease_ttl_s / 3
        self.leases = LeaseTable(settings.events.store_url)
        self.key = credential_key(settings)  # one key for every partition's hashes
        self.owned: dict[int, Owned] = {}
        self.handing_over: dict[int, Owned] = {}
        """Partitions given up whose hubs are still stopping (their leases still ours)."""
        self._leaving: dict[int, asyncio.Task[None]] = {}
        self._renewed = asyncio.Event()
        self._sites_read_at = time.monotonic()
        self.sites: dict[int, tuple[str, ...]] = {}
        self.share = 0
        self.live_nodes: list[str] = []
        self.table: list[Lease] = []
        self._db_ok_at = time.monotonic()
        self.api_url: str | None = None
        """Where this node serves the API (`api.enabled`), for `gridwatch status`."""
        # Where this node starts looking for partitions: nodes starting together then
        # try different ones first instead of all racing for partition 0.
        self._first = zlib.crc32(self.node_id.encode()) % self.partitions

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        # The API (`api.enabled`) is the node's, not a partition hub's: it serves every
        # partition's events from the shared store, and its actions reach each event's
        # partition through the store's outbox. Bound first: a port in use is an error
        # before the node takes any lease.
        api = await asyncio.to_thread(self._api)
        serving = asyncio.create_task(api.run(), name="api") if api is not None else None
        self.api_url = api.url if api is not None else None
        try:
            await self._run(stop)
        finally:
            if api is not None and serving is not None:
                await api.stop()
                await serving
                api.close()

    def _api(self) -> EmbeddedApi | None:
        from hub.serving import embedded_api  # the web stack only when serving

        return embedded_api(self.settings, None, self.ingestion_view())

    def ingestion_view(self) -> IngestionView:
        """What `/readyz` checks about ingestion on a node: the hubs of the partitions
        it owns (their status files), every one connected and running."""
        from api.probes import IngestionView

        return IngestionView(
            connected=lambda: all(s.get("connected") for s in self._hub_statuses().values()),
            reading_paused_s=lambda: 0.0,
            spool_full=lambda: False,  # a hub's status file does not say; its lag does
            writer_failing_s=lambda: 0.0,
            task_problems=self._hub_problems,
            storage_error=self._storage_error,
        )

    def _hub_statuses(self) -> dict[str, dict[str, Any]]:
        """The last status of each owned partition's running hub."""
        found: dict[str, dict[str, Any]] = {}
        for partition, owned in sorted(self.owned.items()):
            if owned.process is not None and owned.process.returncode is None:
                with contextlib.suppress(OSError, ValueError):
                    found[partition_name(partition)] = (
                        read_status(partition_dir(self.settings, partition)) or {}
                    )
        return found

    def _hub_problems(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for partition, owned in sorted(self.owned.items()):
            if not owned.sites and owned.foreign is None:
                continue  # nothing to read: no hub to run
            process = owned.process
            name = f"partition {partition_name(partition)}"
            if process is None or process.returncode is not None:
                why = "" if process is None else f" (it exited with status {process.returncode})"
                found[name] = f"its hub is not running{why}"
                continue
            with contextlib.suppress(OSError, ValueError):
                status = read_status(partition_dir(self.settings, partition)) or {}
                if status.get("pid") == process.pid and status.get("connect_in_s"):
                    found[name] = (
                        f"its hub connects in {status['connect_in_s']:.0f} s, once the broker "
                        "has queued again what the partition's last hub left unacknowledged "
                        "(mqtt.resume_wait_s)"
                    )
        return found

    def _storage_error(self) -> str | None:
        for name, status in self._hub_statuses().items():
            if error := status.get("storage_error"):
                return f"partition {name}: {error}"
        return None

    async def _run(self, stop: asyncio.Event) -> None:
        await asyncio.to_thread(self.leases.prepare, self.partitions)
        found: list[str] | None = await asyncio.to_thread(self._site_ids)
        self.sites = sites_by_partition(found or [], self.partitions)
        log.info(
            "cluster node %s: %d partitions over %d sites, lease %.1f s",
            self.node_id,
            self.partitions,
            sum(len(s) for s in self.sites.values()),
            self.ttl_s,
        )
        # Leases are renewed by a task of their own: giving a partition up waits for its
        # hub to stop and commit, and starting hubs under load takes seconds, neither of
        # which may delay a renewal past the lease time.
        keeper = asyncio.create_task(self._keep_leases(), name="leases")
        try:
            await self._renewed.wait()
            # Nodes (re)started together see each other before anyone takes partitions,
            # rather than one taking all and handing most over a moment later.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), START_GRACE_PERIODS * self.period_s)
            while not stop.is_set():
                await self._balance()
                self._write_status(running=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.period_s)
        finally:
            for partition in list(self.owned):
                self._give_up(partition)
            await asyncio.gather(*self._leaving.values(), return_exceptions=True)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(SQLAlchemyError):
                await asyncio.to_thread(self.leases.leave, self.node_id)
            self._write_status(running=False)
            self.leases.close()

    def _site_ids(self, *, strict: bool = False) -> list[str] | None:
        """The sites to partition; `strict`: None when the registry cannot be read (a
        refresh then keeps what it has, rather than fall back to the site files)."""
        source = directory_source(self.settings)
        try:
            known = source.build().sites if strict else source.current.sites
        except SQLAlchemyError as exc:
            log.warning("cluster: registry unreadable, partitions keep their sites: %s", exc)
            return None
        finally:
            if source.store is not None:
                source.store.close()
        return sorted({*known, *self.settings.cluster.sites})

    async def _refresh_sites(self) -> None:
        """Sites added to (or removed from) the registry move into their partitions: an
        owned partition whose sites changed has its hub restarted with the new ones."""
        self._sites_read_at = time.monotonic()
        found = await asyncio.to_thread(self._site_ids, strict=True)
        if found is None:
            return
        fresh = sites_by_partition(found, self.partitions)
        for owned in self.owned.values():
            sites = fresh.get(owned.partition, ())
            foreign = foreign_sites(owned.partition, fresh)
            if sites == owned.sites and foreign == owned.foreign:
                continue
            log.info(
                "partition %s: sites now %s (were %s); restarting its hub",
                partition_name(owned.partition),
                ", ".join(sites) or "none",
                ", ".join(owned.sites) or "none",
            )
            owned.sites, owned.foreign = sites, foreign
            if owned.process is not None and owned.process.returncode is None:
                owned.restarting = True
                owned.process.send_signal(signal.SIGTERM)  # it commits, then restarts
        self.sites = fresh

    # ------------------------------------------------------------------ leases

    async def _keep_leases(self) -> None:
        """Every period: say we are alive, renew every lease we hold (partitions being
        given up included, until their hubs have stopped), read the table."""
        while True:
            try:
                await asyncio.to_thread(self.leases.beat, self.node_id, self.ttl_s)
                held = {**self.handing_over, **self.owned}
                refused = [o for p, o in held.items() if not await self._renew(p, o.token)]
                self.live_nodes = await asyncio.to_thread(self.leases.live_nodes)
                self.table = await asyncio.to_thread(self.leases.table)
            except SQLAlchemyError as exc:
                self._database_unreachable(exc)
            else:
                self._db_ok_at = time.monotonic()
                for owned in refused:
                    self._lost(owned)
                self._renewed.set()
            await asyncio.sleep(self.period_s)

    def _lost(self, owned: Owned) -> None:
        """A renewal of `owned` was refused: another node took the partition, so its hub
        stops now. Unless it is no longer ours anyway: a hand-over that finished while
        the renewal was on its way released the lease itself (the refusal is ours)."""
        partition = owned.partition
        if self.owned.get(partition) is owned:
            del self.owned[partition]
        elif self.handing_over.get(partition) is owned:
            del self.handing_over[partition]
        else:
            return
        log.error(
            "partition %s: our lease was taken by another node; stopping its hub now",
            partition_name(partition),
        )
        self._kill(owned)

    async def _renew(self, partition: int, token: int) -> bool:
        return await asyncio.to_thread(
            self.leases.renew, self.node_id, partition, token, self.ttl_s
        )

    def _database_unreachable(self, exc: Exception) -> None:
        silent_s = time.monotonic() - self._db_ok_at
        log.warning("cluster: lease database unreachable for %.1f s: %s", silent_s, exc)
        held = [*self.owned.values(), *self.handing_over.values()]
        if silent_s > self.ttl_s / 2 and held:
            # Our leases may expire before we can renew them: stop writing first.
            log.error("cluster: stopping the hubs of %d partitions (leases unsure)", len(held))
            for owned in held:
                self._kill(owned)
            self.owned.clear()

    # ------------------------------------------------------------------ the work

    async def _balance(self) -> None:
        """Give up what is more than our share, take what is less, keep hubs running.
        Partitions with sites and empty ones are shared out separately, so that the work
        (not just the count) is spread: a node holding two empty partitions does not
        keep another from its share of the busy ones."""
        if time.monotonic() - self._sites_read_at >= self.settings.registry.refresh_s:
            await self._refresh_sites()
        nodes = len(self.live_nodes)
        self.share = 0
        for group in self._groups():
            share = fair_share(len(group), nodes)
            self.share += share
            mine = sorted(p for p in self.owned if p in group)
            for partition in mine[share:]:
                self._give_up(partition)
            if len(mine) < share:
                await self._take(share - len(mine), group)
        for owned in list(self.owned.values()):
            await self._keep_running(owned)

    def _groups(self) -> list[set[int]]:
        """The partitions with sites (and the catch-all), then the empty ones."""
        busy = {p for p, sites in self.sites.items() if sites} | {CATCH_ALL}
        return [busy, set(range(self.partitions)) - busy]

    async def _take(self, wanted: int, group: set[int]) -> None:
        order = [(self._first + i) % self.partitions for i in range(self.partitions)]
        leases = {lease.partition: lease for lease in self.table if not lease.live}
        for partition in order:
            if wanted == 0:
                return
            if partition in self.owned or partition not in leases or partition not in group:
                continue
            if partition in self.handing_over:
                continue
            token = await asyncio.to_thread(
                self.leases.acquire, self.node_id, partition, self.ttl_s
            )
            if token is None:
                continue
            log.info("partition %s: owned (token %d)", partition_name(partition), token)
            self.owned[partition] = Owned(
                partition,
                token,
                self.sites.get(partition, ()),
                foreign_sites(partition, self.sites),
            )
            wanted -= 1

    def _give_up(self, partition: int) -> None:
        """Hand the partition over: its hub stops and commits (its lease still renewed
        meanwhile), then the lease is released for another node."""
        owned = self.owned.pop(partition, None)
        if owned is None:
            return
        self.handing_over[partition] = owned
        self._leaving[partition] = asyncio.create_task(self._hand_over(owned))

    async def _hand_over(self, owned: Owned) -> None:
        name = partition_name(owned.partition)
        try:
            process = owned.process
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    log.error("partition %s: its hub ignored SIGTERM", name)
                    self._kill(owned)
                    return  # let the lease expire rather than hand over a half-stopped hub
            if self.handing_over.get(owned.partition) is owned:  # not lost meanwhile
                with contextlib.suppress(SQLAlchemyError):
                    await asyncio.to_thread(
                        self.leases.release, self.node_id, owned.partition, owned.token
                    )
                log.info("partition %s: given up", name)
        finally:
            self.handing_over.pop(owned.partition, None)
            self._leaving.pop(owned.partition, None)

    def _kill(self, owned: Owned) -> None:
        if owned.process is not None and owned.process.returncode is None:
            owned.process.kill()

    async def _keep_running(self, owned: Owned) -> None:
        if not owned.sites and owned.foreign is None:
            return  # nothing to read: the lease alone keeps the partition placed
        process = owned.process
        if process is not None and process.returncode is None:
            return
        now = time.monotonic()
        if process is not None and not owned.restarting:
            if owned.exited_at is None:
                owned.exited_at = now
                log.error(
                    "partition %s: its hub exited with status %s",
                    partition_name(owned.partition),
                    process.returncode,
                )
            if now - owned.exited_at < RESTART_AFTER_S:
                return
        owned.exited_at, owned.restarting = None, False
        owned.process = await self._start(owned)

    async def _start(self, owned: Owned) -> asyncio.subprocess.Process:
        settings = partition_settings(
            self.settings, owned.partition, owned.token, owned.sites, self.key, owned.foreign
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub.cluster",
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None
        process.stdin.write(settings_blob(settings))
        await process.stdin.drain()
        process.stdin.close()
        owned.starts += 1
        log.info(
            "partition %s: hub started (pid %d) for %s",
            partition_name(owned.partition),
            process.pid,
            ", ".join(owned.sites) + ("" if owned.foreign is None else " and unknown sites"),
        )
        return process

    # ------------------------------------------------------------------ status

    def _write_status(self, *, running: bool) -> None:
        partitions: dict[str, Any] = {}
        for partition, owned in sorted(self.owned.items()):
            hub = _hub_status(partition_dir(self.settings, partition))
            partitions[partition_name(partition)] = {
                "token": owned.token,
                "sites": list(owned.sites),
                "catch_all": owned.foreign is not None,
                "pid": owned.process.pid if owned.process else None,
                "starts": owned.starts,
                "owned_s": round(time.time() - owned.acquired_at, 1),
                "hub": hub,
            }
        write_status(
            node_dir(self.settings, self.node_id),
            {
                "cluster": {
                    "node": self.node_id,
                    "share": self.share,
                    "live_nodes": self.live_nodes,
                    "partitions": partitions,
                    "leases": [
                        {
                            "partition": partition_name(lease.partition),
                            "owner": lease.owner,
                            "token": lease.token,
                            "expires_in_s": round(lease.expires_in_s, 1),
                            "sites": list(self.sites.get(lease.partition, ())),
                        }
                        for lease in self.table
                    ],
                },
                "running": running,
                "pid": os.getpid(),
                "client_id": self.node_id,
                "api": self.api_url,
            },
        )


def _hub_status(data_dir: Path) -> dict[str, Any]:
    """The counters a partition's hub last wrote (empty until it wrote some)."""
    try:
        found = read_status(data_dir) or {}
    except (OSError, ValueError):
        return {}
    keep = ("alive", "connected", "received", "acked", "stored", "duplicates", "lag_s")
    return {k: found[k] for k in keep if k in found}


async def run_cluster_node(settings: Settings) -> None:
    """Run a node until SIGINT/SIGTERM; then its partitions' hubs stop and commit, and
    their leases are released for the other nodes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await ClusterNode(settings).run(stop)


def main() -> None:
    """`python -m hub.cluster <node pid>`: one partition's hub; settings pickled on stdin."""
    die_with(int(sys.argv[1]))
    settings = read_settings()
    setup_logging(settings.hub.log_level)
    tune_malloc()
    asyncio.run(run_hub(settings))


if __name__ == "__main__":
    main()
