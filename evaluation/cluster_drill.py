"""The cluster drill: site-partitioned hubs against one hub, with a node SIGKILLed.

`gridwatch drill cluster` (docs/scaling.md). One stream of several sites' scenario
traffic (the demo sites and generated districts) is decided twice, each time from a
fresh broker, event store and InfluxDB database:

1. **Single hub**: `gridwatch run` with every site.
2. **Cluster**: `nodes` hub nodes (`cluster.enabled`) sharing the sites over
   `partitions` leases in PostgreSQL. Once `kill_at` of the stream is published, the node
   owning the most sites is SIGKILLed (`fault`: or stalled past its leases, or stopped
   with SIGTERM so that it hands its partitions over); the drill measures how long until
   every one of its partitions is owned again (a live lease of another node) and read
   again (that partition's new hub connected). The node then rejoins (`rejoin`), so
   partitions are also handed over gracefully while the stream flows.

It then compares the events (ids, rules, keys, raise times, audit trails, counts) and
InfluxDB's counts per measurement and field, and exits 1 on any difference.

Events are compared up to the earliest of the sites' last readings: a partition's event
time moves with its own sites' readings only, so a timer due after a site's last
reading fires in the single hub (whose event time the other sites move on) but not in
the partition that holds the site. That is the partitioning's one documented difference.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from broker.client import MQTT_V5, MQTT_V311
from cluster.leases import LeaseTable
from cluster.partitions import partition_name, partition_of
from devstack.nats import start_nats
from devstack.postgres import create_database, running_postgres
from devstack.stack import (
    INFLUXDB_PACKAGES,
    MOSQUITTO_PACKAGES,
    ensure_installed,
    free_port,
    start_influxdb,
    start_mosquitto,
)
from evaluation.drill import (
    NATS_ACK_WAIT_S,
    RESUME_MARGIN_S,
    SETTLE_S,
    STALL_S,
    Decision,
    DrillError,
    Say,
    Services,
    Stream,
    _Hub,
    _Publisher,
    compare_decisions,
    default_start,
    expected_points,
    hub_config,
    point_counts,
    points_of,
    read_decisions,
    read_health,
)
from events.store import EventStore
from ingest.status import read_status
from simulators.engine import SimMessage
from simulators.scenarios import SCENARIOS, ScenarioError, run_scenarios
from sites.generate import generate_site
from sites.model import Site, dump_site, load_site_ref, parse_site

DEMO_SITES: Final = ("yingyang", "melbourne_bays")
RECOVERY_TARGET_S: Final = 10.0
"""A killed node's partitions must be owned again within this long (the issue's bound)."""


@dataclass(frozen=True, slots=True)
class ClusterDrillOptions:
    duration_s: float = 6 * 3600.0
    seed: int = 3
    districts: int = 4
    """Generated sites besides the two demo sites."""
    nodes: int = 3
    partitions: int = 8
    lease_ttl_s: float = 3.0
    kill_at: float | None = 0.4
    """Fraction of the stream published when the fault strikes; None: no fault."""
    fault: str = "kill"
    """"kill": SIGKILL the node (its partitions' hubs die with it). "stall": SIGSTOP the
    node process alone for `stall_s`, its hubs running on: its leases expire, other
    nodes take its partitions while its hubs still hold them (the fencing path).
    "leave": SIGTERM the node: its hubs stop and commit and it releases its leases, so
    its partitions change hands gracefully mid-stream (and again when it rejoins)."""
    stall_s: float | None = None
    """How long a stall lasts; None: twice the lease time to live."""
    rejoin: bool = True
    """Start the killed node again once its partitions were taken over."""
    scenarios: tuple[str, ...] = ()
    workdir: Path | None = None
    broker: str = "mosquitto"
    """"mosquitto", or "nats" (NATS 2.9's MQTT 3.1.1, the second broker)."""


OWNERSHIP_LINE: Final = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) +\w+ +hub\.cluster: "
    r"(?P<what>(partition p\d+: (owned|given up|our lease|its hub exited|\S+'s lease)|"
    r"cluster node |cluster: ).*)$"
)
"""A node's log line about a partition changing hands (`hub.cluster`'s wording)."""


@dataclass(slots=True)
class ClusterRun:
    name: str
    decisions: dict[str, Decision]
    points: dict[str, dict[str, int]]
    wall_s: float
    health: dict[str, list[str]]
    faults: list[str] = field(default_factory=list)
    owned_again_s: float | None = None
    """Kill to every one of the node's partitions leased by another node."""
    read_again_s: float | None = None
    """Kill to every one of those partitions' new hubs connected."""
    node_statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    ownership: list[str] = field(default_factory=list)
    """What the nodes logged of partitions changing hands (from their logs): the first
    thing to read when the cluster's events differ from one hub's."""


@dataclass(slots=True)
class ClusterDrillReport:
    messages: int
    sites: dict[str, int]
    """Site -> its partition."""
    cutoff_ms: int
    single: ClusterRun
    cluster: ClusterRun
    differences: list[str]
    expected_points: int
    broker: str = "mosquitto"

    @property
    def passed(self) -> bool:
        recovered = self.cluster.owned_again_s is None or (
            self.cluster.owned_again_s <= RECOVERY_TARGET_S
        )
        return not self.differences and recovered

    def to_json(self) -> dict[str, Any]:
        def run(r: ClusterRun) -> dict[str, Any]:
            return {
                "events": len(r.decisions),
                "points": {m: points_of(c) for m, c in sorted(r.points.items())},
                "wall_s": round(r.wall_s, 1),
                "health_events": r.health,
                "faults": r.faults,
                "owned_again_s": r.owned_again_s,
                "read_again_s": r.read_again_s,
                "ownership": r.ownership,
            }

        return {
            "passed": self.passed,
            "broker": self.broker,
            "messages": self.messages,
            "sites": self.sites,
            "cutoff_ms": self.cutoff_ms,
            "expected_points": self.expected_points,
            "single": run(self.single),
            "cluster": run(self.cluster),
            "differences": self.differences,
        }


# --------------------------------------------------------------------------- the stream


def district(index: int, seed: int) -> Site:
    """A generated site whose device, cell and worker ids are its own (generated sites
    all number theirs from 1; the rules' directory keys devices by id)."""
    letter = chr(ord("a") + index)
    site = generate_site(6, 40, seed + index, site_id=f"district-{letter}")
    text = dump_site(site)
    text = re.sub(r"\b(ac|sm|pk)-(\d+)\b", rf"{letter}\1-\2", text)
    text = re.sub(r"\b(w-)?c(\d{3})\b", rf"\1{letter}c\2", text)
    return parse_site(text, f"district-{letter}")


def build_sites(options: ClusterDrillOptions, work: Path) -> tuple[list[Site], list[str]]:
    """The sites and the references the hubs' `events.sites` names them by."""
    sites = [load_site_ref(name) for name in DEMO_SITES]
    refs = list(DEMO_SITES)
    folder = work / "sites"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(options.districts):
        site = district(i, options.seed)
        path = folder / f"{site.site}.yaml"
        path.write_text(dump_site(site))
        sites.append(site)
        refs.append(str(path))
    return sites, refs


def build_stream(options: ClusterDrillOptions, sites: list[Site]) -> tuple[Stream, int]:
    """Every site's scenario traffic in simulated-time order (stable: a site's own order
    is kept), and the cutoff: the earliest of the sites' last readings."""
    start = default_start()
    names = options.scenarios or fitting_scenarios(sites, start, options.duration_s)
    messages: list[SimMessage] = []
    last: list[int] = []
    for i, site in enumerate(sites):
        own, _labels = run_scenarios(
            site, names, start=start, duration_s=options.duration_s, seed=options.seed + i
        )
        messages += own
        last.append(max(m.sim_ms for m in own))
    messages.sort(key=lambda m: m.sim_ms)
    stream = Stream(sites[0], messages, start, options.duration_s, tuple(names), 0)
    return stream, min(last)


def fitting_scenarios(sites: list[Site], start: datetime, duration_s: float) -> tuple[str, ...]:
    """The scenarios every site can play within the duration (some need a day or more)."""
    start_ms = round(start.timestamp() * 1000)
    end_ms = start_ms + round(duration_s * 1000)
    fitting = []
    for name, scenario in SCENARIOS.items():
        try:
            for site in sites:
                scenario.plan(site, random.Random(0), start_ms, end_ms)
        except ScenarioError:
            continue
        fitting.append(name)
    return tuple(fitting)


# --------------------------------------------------------------------------- the drill


def run_cluster_drill(
    options: ClusterDrillOptions, say: Say = lambda _text: None
) -> ClusterDrillReport:
    ensure_installed({**MOSQUITTO_PACKAGES, **INFLUXDB_PACKAGES})
    work = options.workdir or Path(tempfile.mkdtemp(prefix="gridwatch-cluster-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    try:
        sites, refs = build_sites(options, work)
        stream, cutoff = build_stream(options, sites)
        placed = {s.site: partition_of(s.site, options.partitions) for s in sites}
        say(
            f"stream: {len(stream.messages):,} messages of {len(sites)} sites, "
            f"{options.duration_s / 3600:g} h; partitions "
            + ", ".join(f"{k}→{partition_name(v)}" for k, v in placed.items())
        )
        with contextlib.ExitStack() as stack:
            pg_dir = Path(tempfile.mkdtemp(prefix="gridwatch-cluster-pg-"))
            stack.callback(shutil.rmtree, pg_dir, ignore_errors=True)
            admin = stack.enter_context(running_postgres(pg_dir))
            influx = start_influxdb(work / "influxdb", free_port())
            stack.callback(influx.stop)
            services = Services(work, influx, admin, say, prefix="cluster_drill")
            single = _LiveCluster(
                "single", services, stream, refs, options, nodes=0, cutoff_ms=cutoff
            ).run()
            say(f"single hub: {len(single.decisions)} events in {single.wall_s:.1f} s")
            clustered = _LiveCluster(
                "cluster", services, stream, refs, options, nodes=options.nodes, cutoff_ms=cutoff
            ).run()
            say(f"cluster: {len(clustered.decisions)} events in {clustered.wall_s:.1f} s")
        differences = [
            f"{d.kind}: {(d.left or d.right).describe()}"  # type: ignore[union-attr]
            for d in compare_decisions(single.decisions, clustered.decisions)
        ]
        if single.points != clustered.points:
            differences.append(f"points: single {single.points} cluster {clustered.points}")
        report = ClusterDrillReport(
            len(stream.messages),
            placed,
            cutoff,
            single,
            clustered,
            differences,
            sum(expected_points(stream).values()),
            options.broker,
        )
    finally:
        if options.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if options.workdir is not None:
        (work / "report.json").write_text(json.dumps(report.to_json(), indent=2, sort_keys=True))
    return report


class _LiveCluster:
    """One live run: a fresh broker; one hub (`nodes=0`) or `nodes` cluster nodes."""

    def __init__(
        self,
        name: str,
        services: Services,
        stream: Stream,
        refs: list[str],
        options: ClusterDrillOptions,
        *,
        nodes: int,
        cutoff_ms: int,
    ) -> None:
        self.name = name
        self.cutoff_ms = cutoff_ms
        self.services = services
        self.stream = stream
        self.options = options
        self.dir = services.work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.database = services.database(name)
        assert services.postgres_admin is not None
        self.store_url = create_database(services.postgres_admin, self.database)
        if options.broker == "nats":
            self.broker = start_nats(self.dir / "nats", free_port(), ack_wait_s=NATS_ACK_WAIT_S)
        else:
            self.broker = start_mosquitto(self.dir / "mosquitto", free_port())
        self.faults: list[str] = []
        self._t0 = time.monotonic()
        self._t0_wall = time.time()
        # The sites' last readings, per partition: when each partition's hub is done.
        self.partition_last: dict[int, int] = {}
        for m in stream.messages:
            p = partition_of(m.topic.split("/")[2], options.partitions)
            self.partition_last[p] = max(self.partition_last.get(p, 0), m.sim_ms)
        self.hubs: dict[str, _Hub] = {}
        names = [f"node-{chr(ord('a') + i)}" for i in range(nodes)] or ["hub"]
        for node in names:
            extra = ""
            data_dir = self.dir / "data"
            if nodes:
                extra = (
                    f'[cluster]\nenabled = true\nnode_id = "{node}"\n'
                    f"partitions = {options.partitions}\nlease_ttl_s = {options.lease_ttl_s}\n"
                )
                data_dir = data_dir / "nodes" / node
            config = hub_config(
                self.dir / f"{node}.toml",
                mqtt_port=self.broker.port,
                influx_port=services.influx.port,
                database=self.database,
                run_dir=self.dir,
                store_url=self.store_url,
                stream=stream,
                sites=refs,
                extra=extra,
                mqtt_protocol="3.1.1" if options.broker == "nats" else None,
                # NATS re-sends what a dead hub left unacked only after ack_wait: a hub
                # connects once that has run out since its partition's last hub was seen.
                mqtt_extra=(
                    f"resume_wait_s = {NATS_ACK_WAIT_S + RESUME_MARGIN_S}\n"
                    if options.broker == "nats"
                    else ""
                ),
            )
            self.hubs[node] = _Hub(config, data_dir, self.dir / f"{node}.log")
        self.clustered = nodes > 0

    def say(self, text: str) -> None:
        self.services.say(f"  [{self.name} +{time.monotonic() - self._t0:5.1f}s] {text}")

    def run(self) -> ClusterRun:
        protocol = MQTT_V311 if self.options.broker == "nats" else MQTT_V5
        publisher = _Publisher(self.stream, self.broker.port, 1, protocol)
        run = ClusterRun(self.name, {}, {}, 0.0, {})
        try:
            for hub in self.hubs.values():
                hub.start()
            self._wait_reading()
            self._t0, self._t0_wall = time.monotonic(), time.time()
            publisher.start()
            self.say(f"publishing {len(self.stream.messages):,} messages")
            if self.clustered and self.options.kill_at is not None:
                if self.options.fault == "stall":
                    self._stall_one(publisher, run)
                else:
                    self._kill_one(publisher, run)
            publisher.join(STALL_S)
            self.say("publisher done; waiting for every partition to decide and store")
            self._wait_settled()
            run.node_statuses = {n: h.status() for n, h in self.hubs.items()}
            # All at once: one by one, each stopping node's partitions would move to the
            # nodes still running, only to stop there too.
            for hub in self.hubs.values():
                if hub.popen is not None and hub.popen.poll() is None:
                    hub.popen.send_signal(signal.SIGTERM)
            for hub in self.hubs.values():
                hub.stop()
            run.wall_s = time.monotonic() - self._t0
        finally:
            for hub in self.hubs.values():
                if hub.popen is not None and hub.popen.poll() is None:
                    hub.popen.kill()
                    hub.popen.wait()
            self.broker.stop()
        run.decisions = read_decisions(self.store_url, self.cutoff_ms)
        run.points = self._points()
        run.health = read_health(self.store_url)
        run.faults = self.faults
        run.ownership = self._ownership()
        return run

    # ------------------------------------------------------------------ progress

    def _partition_statuses(self) -> dict[int, dict[str, Any]]:
        """Each partition's hub's last status (the single hub's as partition -1)."""
        if not self.clustered:
            return {-1: read_status(self.dir / "data") or {}}
        found: dict[int, dict[str, Any]] = {}
        for p in self.partition_last:
            with contextlib.suppress(OSError, ValueError):
                found[p] = read_status(self.dir / "data" / "partitions" / partition_name(p)) or {}
        return found

    def _wait_reading(self, timeout_s: float = 90.0) -> None:
        """Until every partition with sites has a hub connected to the broker."""
        deadline = time.monotonic() + timeout_s
        while True:
            for hub in self.hubs.values():
                hub.check_alive()
            statuses = self._partition_statuses()
            if all(s.get("alive") and s.get("connected") for s in statuses.values()):
                return
            if time.monotonic() > deadline:
                raise DrillError(f"{self.name}: not every partition was read within {timeout_s} s")
            time.sleep(0.05)

    def _wait_settled(self) -> None:
        seen: tuple[Any, ...] = ()
        since = moved = time.monotonic()
        with EventStore(self.store_url) as store:
            while True:
                for hub in self.hubs.values():
                    hub.check_alive()
                statuses = self._partition_statuses()
                outbox = sum(store.outbox_pending().values())
                state = (
                    outbox,
                    *(
                        (s.get("received"), s.get("rules_watermark_ms"), s.get("spool_lines"))
                        for s in statuses.values()
                    ),
                )
                if state != seen:
                    seen, since, moved = state, time.monotonic(), time.monotonic()
                last = self.partition_last
                done = outbox == 0 and all(
                    s.get("alive")
                    and int(s.get("rules_watermark_ms") or 0)
                    >= (self.stream.cutoff_ms if p < 0 else last[p])
                    and not s.get("rules_lag_records")
                    and not s.get("spool_lines")
                    for p, s in statuses.items()
                )
                if done and time.monotonic() - since >= SETTLE_S:
                    return
                if time.monotonic() - moved > STALL_S:
                    raise DrillError(f"{self.name}: no progress for {STALL_S:.0f} s: {statuses}")
                time.sleep(0.1)

    # ------------------------------------------------------------------ the fault

    def _victim(self, publisher: _Publisher) -> tuple[str, list[int]]:
        """Once `kill_at` of the stream is out: the node owning the most partitions with
        sites, and those partitions."""
        assert self.options.kill_at is not None
        target = round(self.options.kill_at * len(self.stream.messages))
        while publisher.released < target and not publisher.done.is_set():
            time.sleep(0.01)
        owners = self._owners()
        victim = max(self.hubs, key=lambda n: (len(owners.get(n, [])), n))
        return victim, owners.get(victim, [])

    def _stall_one(self, publisher: _Publisher, run: ClusterRun) -> None:
        """Freeze the node process (not its hubs) past its leases, then let it go on: it
        must find its leases taken and stop its hubs, whose writes meanwhile the fence
        refused."""
        victim, lost = self._victim(publisher)
        stall_s = self.options.stall_s or 2 * self.options.lease_ttl_s
        pid = self.hubs[victim].pid
        # Their hubs now: "read again" is a hub of another pid reading.
        before = {p: s.get("pid") for p, s in self._partition_statuses().items() if p in lost}
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        self._note(
            f"SIGSTOP {victim} for {stall_s:g} s (partitions "
            f"{', '.join(map(partition_name, lost))}; its hubs run on)"
        )
        try:
            self._wait_taken_over(victim, lost, stopped_at, run, until_s=stall_s, old=before)
        finally:
            os.kill(pid, signal.SIGCONT)
        self._note(f"SIGCONT {victim}")
        if run.owned_again_s is not None:
            self._wait_taken_over(victim, lost, stopped_at, run, old=before)

    def _kill_one(self, publisher: _Publisher, run: ClusterRun) -> None:
        """SIGKILL the victim node, or with `fault = "leave"` SIGTERM it (a graceful hand-
        over of each partition: the hub stops and commits, then the lease is released)."""
        victim, lost = self._victim(publisher)
        names = ", ".join(map(partition_name, lost))
        killed_at = time.monotonic()
        if self.options.fault == "leave":
            self.hubs[victim].stop()
            self._note(f"SIGTERM {victim}: it handed over partitions {names} and left")
        else:
            self.hubs[victim].kill()
            self._note(f"SIGKILL {victim} (partitions {names})")
        self._wait_taken_over(victim, lost, killed_at, run)
        if self.options.rejoin:
            self.hubs[victim].start()
            self._note(f"{victim} started again (the others hand partitions back)")

    def _wait_taken_over(
        self,
        victim: str,
        lost: list[int],
        since: float,
        run: ClusterRun,
        until_s: float | None = None,
        old: dict[int, Any] | None = None,
    ) -> None:
        """Until `lost` are owned by other nodes and their hubs there read (timed from
        `since` into `run`); or until `until_s` after `since`, whichever comes first.
        `old`: partition -> the pid of its hub before the fault, which may run on (a
        stall) and does not count as reading again."""
        old = old or {}
        table = LeaseTable(self.store_url)
        try:
            while run.owned_again_s is None or run.read_again_s is None:
                now = time.monotonic()
                if until_s is not None and now - since >= until_s:
                    return
                leases = {x.partition: x for x in table.table()}
                if run.owned_again_s is None and all(
                    leases[p].live and leases[p].owner != victim for p in lost
                ):
                    run.owned_again_s = now - since
                    self._note(f"its partitions owned again after {run.owned_again_s:.1f} s")
                statuses = self._partition_statuses()
                if run.owned_again_s is not None and all(
                    statuses.get(p, {}).get("alive")
                    and statuses[p].get("connected")
                    and (old.get(p) is None or statuses[p].get("pid") != old[p])
                    for p in lost
                ):
                    run.read_again_s = now - since
                    self._note(f"and read again after {run.read_again_s:.1f} s")
                if now - since > 60:
                    raise DrillError(f"{self.name}: {victim}'s partitions not taken over in 60 s")
                time.sleep(0.05)
        finally:
            table.close()

    def _owners(self) -> dict[str, list[int]]:
        """Node -> the partitions with sites it holds now."""
        table = LeaseTable(self.store_url)
        try:
            leases = table.table()
        finally:
            table.close()
        owners: dict[str, list[int]] = {}
        for lease in leases:
            if lease.live and lease.owner and lease.partition in self.partition_last:
                owners.setdefault(lease.owner, []).append(lease.partition)
        return owners

    def _ownership(self) -> list[str]:
        """The nodes' log lines about partitions changing hands, in time order, timed
        from the start of publishing."""
        if not self.clustered:
            return []
        found: list[tuple[float, str]] = []
        for node, hub in self.hubs.items():
            with contextlib.suppress(OSError):
                for line in hub.log.read_text(errors="replace").splitlines():
                    moved = OWNERSHIP_LINE.match(line)
                    if moved is None:
                        continue
                    at = datetime.strptime(moved["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    found.append((at - self._t0_wall, f"{node}: {moved['what']}"))
        return [f"{at:+.1f}s {what}" for at, what in sorted(found)]

    def _note(self, text: str) -> None:
        self.faults.append(f"+{time.monotonic() - self._t0:.1f}s {text}")
        self.say(text)

    def _points(self) -> dict[str, dict[str, int]]:
        target = self.services.influx_target(self.database)
        last: dict[str, dict[str, int]] | None = None
        deadline = time.monotonic() + 60
        while True:
            # Transitions after the cutoff differ by design (the module doc).
            now = point_counts(target, events_until_ms=self.cutoff_ms)
            if (now and now == last) or time.monotonic() > deadline:
                return now
            last = now
            time.sleep(1.0)


def format_cluster_report(report: ClusterDrillReport) -> str:
    c, s = report.cluster, report.single
    lines = [
        f"cluster drill: {'PASS' if report.passed else 'FAIL'}",
        f"  {report.messages:,} messages from {len(report.sites)} sites "
        f"(expected points {report.expected_points:,}), broker {report.broker}",
        f"  single hub   {len(s.decisions)} events, "
        f"{sum(points_of(x) for x in s.points.values()):,} points, {s.wall_s:.1f} s",
        f"  cluster      {len(c.decisions)} events, "
        f"{sum(points_of(x) for x in c.points.values()):,} points, {c.wall_s:.1f} s",
    ]
    lines += [f"  fault        {f}" for f in c.faults]
    if c.owned_again_s is not None:
        lines.append(
            f"  takeover     owned again {c.owned_again_s:.1f} s (target ≤ "
            f"{RECOVERY_TARGET_S:.0f} s), read again {c.read_again_s or 0:.1f} s"
        )
    if report.differences:  # who owned what when: where to look for the cause
        lines += [f"  ownership    {line}" for line in c.ownership]
    lines += [f"  DIFFERENCE   {d}" for d in report.differences[:50]]
    return "\n".join(lines)
