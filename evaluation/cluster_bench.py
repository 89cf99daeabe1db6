"""The cluster benchmark: backlog drain of one hub against 1 and 2 cluster nodes.

`gridwatch bench cluster` (docs/scaling.md). Each configuration runs the default
pipeline (rules, anomaly, events) on its own broker session(s), InfluxDB database and
PostgreSQL event store, in one run of this command (the machine's noise is shared):

- `hub`: one `gridwatch run` (a hub process and its detection worker);
- `nodes=1`, `nodes=2`: cluster nodes (`cluster.enabled`) over `partitions` partitions,
  each partition a hub process and its worker.

For each: start it so the broker knows every session and subscription, stop it, queue
`messages` readings of `devices` devices spread over `sites` sites at the broker, start
it again and time until InfluxDB holds every reading and every partition's rules have
evaluated them all. Peak RSS is summed over each node's process tree (the node, its
partitions' hubs and their workers) and also given per partition hub.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil

from cluster.partitions import partition_name, partition_of
from devstack.postgres import create_database, running_postgres
from devstack.stack import (
    INFLUXDB_PACKAGES,
    MOSQUITTO_PACKAGES,
    ManagedProcess,
    ensure_installed,
    free_port,
    start_influxdb,
    start_mosquitto,
)
from evaluation.bench_costs import BENCH_HASH_KEY
from evaluation.ingest_bench import _count, _HubProcess, _PublisherProcess, busy_share
from ingest.influxql import QueryTarget
from ingest.status import read_status

Say = Any
STALL_S: Final = 60.0
ALL_POINTS: Final = "time > 0"


@dataclass(frozen=True, slots=True)
class ClusterBenchOptions:
    messages: int = 300_000
    devices: int = 10_000
    sites: int = 8
    partitions: int = 8
    nodes: tuple[int, ...] = (1, 2)
    lease_ttl_s: float = 3.0
    detection: str | None = None
    """`events.detection` for every hub (None: the default, a worker process each)."""
    workdir: Path | None = None


@dataclass(slots=True)
class Drain:
    name: str
    seconds: float = 0.0
    """From the start of the processes to every reading stored and evaluated."""
    msg_per_s: float = 0.0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    """Per node (its whole process tree)."""
    partition_rss_mb: dict[str, float] = field(default_factory=dict)
    """Per partition hub (its process and its detection worker)."""
    stored: int = 0
    box_busy: float = 0.0
    """Share of the whole box's CPU (every core) busy during the drain."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds of the drain: each node's process tree, the broker, InfluxDB."""

    def to_json(self) -> dict[str, Any]:
        return {
            "box_cpu_busy": round(self.box_busy, 3),
            "cpu_s": {k: round(v, 2) for k, v in self.cpu_s.items()},
            "seconds": round(self.seconds, 2),
            "msg_per_s": round(self.msg_per_s),
            "peak_rss_mb": {k: round(v, 1) for k, v in self.peak_rss_mb.items()},
            "partition_rss_mb": {k: round(v, 1) for k, v in self.partition_rss_mb.items()},
            "stored": self.stored,
        }


def bench_sites(count: int, partitions: int) -> tuple[str, ...]:
    """`count` site ids spread over the partitions as evenly as can be (a site is taken
    only into a partition that holds no more sites than any other), so the partitions
    share the load."""
    chosen: list[str] = []
    used = dict.fromkeys(range(partitions), 0)
    i = 0
    while len(chosen) < count:
        name = f"bench-{i:03d}"
        p = partition_of(name, partitions)
        if used[p] == min(used.values()):
            chosen.append(name)
            used[p] += 1
        i += 1
    return tuple(chosen)


def run_cluster_bench(options: ClusterBenchOptions, say: Say = lambda _t: None) -> dict[str, Any]:
    ensure_installed({**MOSQUITTO_PACKAGES, **INFLUXDB_PACKAGES})
    work = options.workdir or Path(tempfile.mkdtemp(prefix="gridwatch-cluster-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    sites = bench_sites(options.sites, options.partitions)
    results: dict[str, Drain] = {}
    try:
        with contextlib.ExitStack() as stack:
            pg_dir = Path(tempfile.mkdtemp(prefix="gridwatch-cluster-bench-pg-"))
            stack.callback(shutil.rmtree, pg_dir, ignore_errors=True)
            admin = stack.enter_context(running_postgres(pg_dir))
            influx = start_influxdb(work / "influxdb", free_port())
            stack.callback(influx.stop)
            for nodes in (0, *options.nodes):
                name = "hub" if nodes == 0 else f"nodes={nodes}"
                say(f"{name}: backlog of {options.messages:,} messages")
                run = _BenchRun(name, work, admin, influx, options, sites, nodes)
                run.postmaster = _postmaster(pg_dir)
                results[name] = run.drain(say)
                say(
                    f"{name}: {results[name].msg_per_s:,.0f} msg/s "
                    f"({results[name].seconds:.1f} s), peak RSS "
                    + ", ".join(f"{k} {v:.0f} MB" for k, v in results[name].peak_rss_mb.items())
                )
    finally:
        if options.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    base = results["hub"].msg_per_s
    return {
        "messages": options.messages,
        "devices": options.devices,
        "sites": {s: partition_name(partition_of(s, options.partitions)) for s in sites},
        "partitions": options.partitions,
        "detection": options.detection or "process (default)",
        "runs": {k: v.to_json() for k, v in results.items()},
        "ratio_to_one_hub": {k: round(v.msg_per_s / base, 3) for k, v in results.items()},
        "two_nodes_over_one": (
            round(results["nodes=2"].msg_per_s / results["nodes=1"].msg_per_s, 3)
            if "nodes=2" in results and "nodes=1" in results
            else None
        ),
    }


class _BenchRun:
    def __init__(
        self,
        name: str,
        work: Path,
        admin: str,
        influx: ManagedProcess,
        options: ClusterBenchOptions,
        sites: tuple[str, ...],
        nodes: int,
    ) -> None:
        self.name = name
        influx_port, self.influx_pid = influx.port, influx.pid
        self.postmaster: int | None = None
        self.options = options
        self.sites = sites
        self.nodes = nodes
        slug = name.replace("=", "")
        self.dir = work / slug
        self.dir.mkdir(parents=True, exist_ok=True)
        self.database = f"cluster_bench_{slug}"
        self.store_url = create_database(admin, self.database)
        self.influx = QueryTarget(f"http://127.0.0.1:{influx_port}", self.database)
        self.mosquitto = start_mosquitto(self.dir / "mosquitto", free_port())
        self.configs: dict[str, Path] = {}
        names = [f"node-{chr(ord('a') + i)}" for i in range(nodes)] or ["hub"]
        for node in names:
            text = (
                f'[mqtt]\nurl = "mqtt://127.0.0.1:{self.mosquitto.port}"\n'
                'client_id = "bench-hub"\n'
                f'[influx]\nurl = "http://127.0.0.1:{influx_port}"\n'
                f'database = "{self.database}"\n'
                f'[spool]\ndirectory = "{self.dir}/spool"\n'
                f'[deadletters]\ndirectory = "{self.dir}/dead"\n'
                f'[hub]\ndata_dir = "{self.dir}/data"\nstatus_interval_s = 0.1\n'
                f'log_level = "WARNING"\ncredential_hash_key = "{BENCH_HASH_KEY.decode()}"\n'
                f'[events]\nstore_url = "{self.store_url}"\n'
                + (f'detection = "{options.detection}"\n' if options.detection else "")
                + "[api]\nenabled = false\n"
            )
            if nodes:
                text += (
                    f'[cluster]\nenabled = true\nnode_id = "{node}"\n'
                    f"partitions = {options.partitions}\nlease_ttl_s = {options.lease_ttl_s}\n"
                    f"sites = {list(sites)!r}\n".replace("'", '"')
                )
            path = self.dir / f"{node}.toml"
            path.write_text(text)
            self.configs[node] = path
        self.partitions = sorted({partition_of(s, options.partitions) for s in sites})

    def _start(self) -> dict[str, _HubProcess]:
        out = {}
        for node, config in self.configs.items():
            data = (
                self.dir / "data" / ("nodes" if self.nodes else "") / (node if self.nodes else "")
            )
            out[node] = _HubProcess(config, data, self.dir / f"{node}.log")
        return out

    def _partition_statuses(self) -> dict[str, dict[str, Any]]:
        if not self.nodes:
            return {"hub": _read(self.dir / "data")}
        return {
            partition_name(p): _read(self.dir / "data" / "partitions" / partition_name(p))
            for p in self.partitions
        }

    def _wait(self, hubs: dict[str, _HubProcess], done: Any, what: str) -> None:
        moved = time.monotonic()
        seen: Any = None
        while True:
            for hub in hubs.values():
                hub.check_alive()
            statuses = self._partition_statuses()
            if done(statuses):
                return
            state = [(s.get("received"), s.get("rules_watermark_ms")) for s in statuses.values()]
            if state != seen:
                seen, moved = state, time.monotonic()
            if time.monotonic() - moved > STALL_S:
                raise RuntimeError(f"{self.name}: no progress for {STALL_S:.0f} s ({what})")
            time.sleep(0.05)

    def drain(self, say: Say) -> Drain:
        result = Drain(self.name)
        try:
            hubs = self._start()
            self._wait(hubs, _all_connected, "connecting")
            for hub in hubs.values():
                hub.stop()
            publisher = _PublisherProcess(
                self.mosquitto.port,
                self.options.messages,
                self.options.devices,
                seed=2,
                sites=self.sites,
            )
            publisher.go()
            published = publisher.result()
            say(f"  {self.name}: queued {int(published['published']):,} messages")
            box0 = psutil.cpu_times()
            services0 = _cpu_s(self.mosquitto.pid), _cpu_s(self.influx_pid)
            started = time.monotonic()
            hubs = self._start()
            tree_cpu: dict[str, dict[int, float]] = {node: {} for node in hubs}
            postgres: dict[int, float] = {}
            if self.postmaster is not None:
                _tree_cpu_s(self.postmaster, postgres)
                postgres0 = sum(postgres.values())
            peaks: dict[str, float] = {}
            parts: dict[str, float] = {}
            n = self.options.messages
            while True:
                for node, hub in hubs.items():
                    hub.check_alive()
                    peaks[node] = max(peaks.get(node, 0.0), _tree_rss_mb(hub.popen.pid))
                    _tree_cpu_s(hub.popen.pid, tree_cpu[node])
                if self.postmaster is not None:
                    _tree_cpu_s(self.postmaster, postgres)
                if self.nodes:
                    _partition_rss(hubs, parts)
                # Counters are per process (a partition handed over restarts them): done
                # is InfluxDB holding every reading, and every partition's hub, alive,
                # with nothing left to write or evaluate.
                statuses = self._partition_statuses()
                caught_up = all(
                    s.get("alive") and not s.get("rules_lag_records") and not s.get("spool_lines")
                    for s in statuses.values()
                )
                if caught_up and _count(self.influx, ALL_POINTS) >= n:
                    break
                if time.monotonic() - started > 600:
                    raise RuntimeError(f"{self.name}: backlog not drained in 600 s")
                time.sleep(0.1)
            result.seconds = time.monotonic() - started
            result.box_busy = busy_share(box0, psutil.cpu_times())
            result.cpu_s = {node: sum(seen.values()) for node, seen in tree_cpu.items()}
            result.cpu_s["mosquitto"] = _cpu_s(self.mosquitto.pid) - services0[0]
            result.cpu_s["influxd"] = _cpu_s(self.influx_pid) - services0[1]
            if self.postmaster is not None:
                result.cpu_s["postgres"] = sum(postgres.values()) - postgres0
            result.msg_per_s = n / result.seconds
            result.stored = _count(self.influx, ALL_POINTS)
            result.peak_rss_mb = peaks
            result.partition_rss_mb = parts
            for hub in hubs.values():
                hub.stop()
        finally:
            self.mosquitto.stop()
        return result


def _read(data_dir: Path) -> dict[str, Any]:
    try:
        return read_status(data_dir) or {}
    except (OSError, ValueError):
        return {}


def _all_connected(statuses: dict[str, dict[str, Any]]) -> bool:
    return all(s.get("alive") and s.get("connected") for s in statuses.values())


def _tree_rss_mb(pid: int) -> float:
    """The current RSS of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / (1 << 20)


def _postmaster(data_dir: Path) -> int | None:
    """The pid of the PostgreSQL server whose data directory is under `data_dir`."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "postgres" and str(data_dir) in cmdline and " -D " in cmdline:
            return int(proc.pid)
    return None


def _cpu_s(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def _tree_cpu_s(pid: int, seen: dict[int, float]) -> None:
    """The CPU seconds of a process tree started for the drain, kept per pid, so that a
    partition's hub that exits (a hand-over) still counts what it used until last seen."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            seen[proc.pid] = _cpu_s(proc.pid)


def _partition_rss(hubs: dict[str, _HubProcess], peaks: dict[str, float]) -> None:
    """Per partition hub (a node's direct child) and its worker: the peak seen so far."""
    for hub in hubs.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(hub.popen.pid).children():
                name = f"{child.pid}"
                peaks[name] = max(peaks.get(name, 0.0), _tree_rss_mb(child.pid))


def format_cluster_bench(result: dict[str, Any]) -> str:
    lines = [
        f"cluster bench: {result['messages']:,} messages backlog, {result['devices']:,} devices, "
        f"{len(result['sites'])} sites over {result['partitions']} partitions (default pipeline"
        f", detection {result['detection']})"
    ]
    for name, run in result["runs"].items():
        rss = ", ".join(f"{k} {v:.0f} MB" for k, v in run["peak_rss_mb"].items())
        part = run["partition_rss_mb"]
        per = f"; per partition hub max {max(part.values()):.0f} MB" if part else ""
        lines.append(
            f"  {name:<8} {run['msg_per_s']:>8,} msg/s  {run['seconds']:>6.1f} s  "
            f"x{result['ratio_to_one_hub'][name]:.2f} of one hub   peak RSS {rss}{per}"
        )
        cores = ", ".join(f"{k} {v / run['seconds']:.2f}" for k, v in run["cpu_s"].items())
        lines.append(
            f"           box CPU busy {run['box_cpu_busy']:.0%} of {psutil.cpu_count()} cores; "
            f"cores used: {cores}"
        )
    if result.get("two_nodes_over_one") is not None:
        lines.append(f"  2 nodes / 1 node: x{result['two_nodes_over_one']:.2f} (target ≥ 1.6)")
    return "\n".join(lines)
