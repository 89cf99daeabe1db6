"""`gridwatch bench ingest`: the hub's default pipeline and its alarm latency, measured
against the broker's own limit.

Starts a private Mosquitto + InfluxDB 1.x, runs the hub as a separate process with its
default settings (validation, spool with fsync, batched writes, and the default
detection: rules and events on, anomaly scoring as the defaults have it, i.e. per-device
baselines learned online, as no model is trained), and publishes N realistic QoS 1
messages from 1,000 devices of the three kinds from another process:

- live: the hub runs while the publisher publishes (flat out, or paced at `rate`);
- backlog: the hub is down while N messages queue for its persistent session, then it
  starts and drains them;
- limit: the same backlog drained by `mosquitto_sub -q 1` (C client, prints to /dev/null).

Alarm probes: in both modes a third process publishes a `door_forced` access event
every `probe_interval_ms` and subscribes to the hub's event feed (`gw/events/v1/+`).
Each probe is a door of its own, at a site of its own: the `door_forced` rule keys on
the device with a 5 min cooldown, so a fresh device always raises a new event, and
flood control groups more than 10 new events in 10 min per site, so probes at one site
would make an incident storm of their own. A probe's latency is the arrival of its
event's first transition at that subscriber minus its publish, both on the probe
process's clock; a probe whose event has not come once no event has come for
`PROBE_IDLE_S` is lost. Backlog probes are of two phases: *queued* (published while the
hub was down or starting: their latency holds the downtime) and *drain* (published
while the hub drains the backlog: an alarm must not wait for the backlog).

The bench talks to the hub as an operator would: its config file, its status file,
MQTT and InfluxDB, never its internals. Rates run from the first message received to
the last bench point stored, read from the hub's status file (see `_wait_stored` for
how probes are told apart); loss is N minus the distinct bench points counted in
InfluxDB.

`ingest_only=True` measures a part instead: the hub with `events.enabled = false` (no
rules, no events, no probes). Its figures go under `ingest_only`, never under
`default`, and no target is judged on them. The in-process costs per stage
(`bench_costs`) are parts too, and labelled so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, Final

import psutil

from broker.client import ConnectionLost, ConnectOptions, MqttClient
from devstack.stack import (
    BROKER_AUTOSAVE_CHANGES,
    BROKER_PERSISTENCE,
    CLIENT_PACKAGES,
    INFLUXDB_PACKAGES,
    MOSQUITTO_PACKAGES,
    ManagedProcess,
    ensure_installed,
    free_port,
    start_influxdb,
    start_mosquitto,
)
from evaluation.bench_costs import (
    BENCH_HASH_KEY,
    bench_messages,
    bench_readings,
    decode_encode_cost,
    rules_cost,
)
from ingest.influxql import InfluxQLError, QueryTarget, query
from ingest.status import read_status
from sensors import topics
from simulators.traffic import make_fleet, message

KIND_MEASUREMENTS = ("access", "smoke", "parking")
HUB_CLIENT_ID = "bench-hub"
BENCH_SITE: Final = "bench"
_TS_MARK = b'"ts":0,'

PROBE_RULE: Final = "door_forced"
"""The default pack's instant rule the probes raise (`rules/packs/default.yaml`)."""
PROBE_DEVICE_PREFIX: Final = "probe-"
"""Probe devices are `probe-<mode>-<n>`: one per probe, so no cooldown swallows one."""
PROBE_IDLE_S: Final = 30.0
"""After a mode ends, its missing probe events are waited for until none has come for
this long (the hub's MQTT sink gives up a publish after 10 s and retries): the rest
count as lost."""
PROBE_WAIT_MAX_S: Final = 600.0
"""...and never longer than this after the mode's end."""
MIN_QUEUED_PROBES: Final = 5
"""The backlog hub starts only once this many probes are queued for it."""

LIVE_DB: Final = "bench_live"
BACKLOG_DB: Final = "bench_backlog"
STATUS_INTERVAL_S: Final = 0.05
"""The hub's status file period in the bench: the span's end is read from it."""
STALL_S: Final = 30.0
"""A mode gives up when the bench's stored count has not moved for this long."""

# Targets, judged on the default pipeline only.
TARGET_RATIO: Final = 0.4
TARGET_PACED_RATE: Final = 20_000.0
TARGET_PACED_P99_MS: Final = 250.0
TARGET_FLAT_OUT_P99_MS: Final = 2000.0
TARGET_RSS_MB: Final = 300.0


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest rank (p99 of up to 100 samples is the largest)."""
    if not sorted_values:
        return None
    return sorted_values[max(1, math.ceil(q * len(sorted_values))) - 1]


# -- publisher (separate process) ----------------------------------------------------------
def _templates(
    n: int, devices: int, seed: int, sites: tuple[str, ...] = (BENCH_SITE,)
) -> list[tuple[str, int, bytes, bytes]]:
    """(topic, device index, payload before ts, payload after ts): ts is filled at send
    time. The devices are split evenly over `sites`."""
    share = math.ceil(devices / len(sites))
    fleet = []
    for site in sites:
        for device in make_fleet(share, site=site, seed=seed):
            if len(sites) > 1:  # device ids are unique across sites
                device.device = f"{site}-{device.device}"
            fleet.append(device)
    fleet = fleet[:devices]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        idx = rng.randrange(len(fleet))
        topic, payload = message(fleet[idx], rng, 0)
        body = json.loads(payload)
        body["ts"] = 0
        raw = json.dumps(body, separators=(",", ":")).encode()
        head, _, tail = raw.partition(_TS_MARK)
        out.append((topic, idx, head + b'"ts":', b"," + tail))
    return out


async def _publish(
    port: int, templates: list[tuple[str, int, bytes, bytes]], window: int, rate: float | None
) -> dict[str, float]:
    client = MqttClient(
        "127.0.0.1",
        port,
        ConnectOptions(client_id=f"bench-pub-{os.getpid()}", clean_start=True, session_expiry_s=0),
        subscriptions=[],
        on_publish=lambda *_: None,
    )
    runner = asyncio.create_task(client.run())
    await client.connected.wait()
    last_ts: dict[int, int] = {}
    pending: deque[asyncio.Future[None]] = deque()
    start = time.perf_counter()
    for i, (topic, idx, head, tail) in enumerate(templates):
        if rate and i % 100 == 0:  # paced: keep to the schedule in steps of 100 messages
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
        now_ms = max(time.time_ns() // 1_000_000, last_ts.get(idx, 0) + 1)
        last_ts[idx] = now_ms
        fut = client.publish_nowait(topic, head + str(now_ms).encode() + tail, qos=1)
        assert fut is not None
        pending.append(fut)
        if len(pending) >= window:
            await pending.popleft()
    while pending:
        await pending.popleft()
    elapsed = time.perf_counter() - start
    runner.cancel()
    return {"published": len(templates), "seconds": elapsed, "end_ns": time.time_ns()}


def _publisher_main(
    port: int,
    n: int,
    devices: int,
    seed: int,
    rate: float | None,
    out: Any,
    sites: tuple[str, ...] = (BENCH_SITE,),
) -> None:
    templates = _templates(n, devices, seed, sites)
    out.send("ready")
    out.recv()  # go
    out.send(asyncio.run(_publish(port, templates, 2000, rate)))


class _PublisherProcess:
    """Payloads are generated before `go()`, so generation cost is not in the timing."""

    def __init__(
        self,
        port: int,
        n: int,
        devices: int,
        seed: int,
        rate: float | None = None,
        sites: tuple[str, ...] = (BENCH_SITE,),
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_publisher_main,
            args=(port, n, devices, seed, rate, child, sites),
            daemon=True,
        )
        self._proc.start()
        if not self._conn.poll(120) or self._conn.recv() != "ready":
            self._proc.kill()
            raise RuntimeError("publisher failed to start")

    def go(self) -> None:
        self._conn.send("go")

    def result(self, timeout_s: float = 600.0) -> dict[str, float]:
        if not self._conn.poll(timeout_s):
            self._proc.kill()
            raise RuntimeError(f"publisher did not finish within {timeout_s:.0f} s")
        data: dict[str, float] = self._conn.recv()
        self._proc.join(10)
        return data


# -- alarm probes (separate process) -------------------------------------------------------


@dataclass(slots=True)
class _Probe:
    device: str
    phase: str
    ts_ms: int
    sent_ns: int
    """`time.monotonic_ns()` just before the PUBLISH was written."""
    event_ns: int | None = None
    """`time.monotonic_ns()` when the first transition of its event arrived."""


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _rfc3339_ms(text: object) -> int | None:
    """Epoch ms of an event's RFC 3339 time, exactly (no float rounding)."""
    if not isinstance(text, str):
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return (at - _EPOCH) // timedelta(milliseconds=1)


def _probe_payload(ts_ms: int) -> bytes:
    body = {"seq": 0, "ts": ts_ms, "door": "d1", "event": PROBE_RULE}
    return json.dumps(body, separators=(",", ":")).encode()


def _phase_figures(probes: list[_Probe]) -> dict[str, Any]:
    latencies = sorted((p.event_ns - p.sent_ns) / 1e6 for p in probes if p.event_ns is not None)
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    return {
        "published": len(probes),
        "with_event": len(latencies),
        "lost": len(probes) - len(latencies),
        "p50_ms": None if p50 is None else round(p50, 1),
        "p99_ms": None if p99 is None else round(p99, 1),
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "lost_devices": [p.device for p in probes if p.event_ns is None][:5],
        # Each probe in the order sent: (seconds after the phase's first, ms to its
        # event or None). Shows where latency builds up (a burst, a stall, a drift).
        "timeline": [
            (
                round((p.sent_ns - probes[0].sent_ns) / 1e9, 3),
                None if p.event_ns is None else round((p.event_ns - p.sent_ns) / 1e6, 1),
            )
            for p in probes
        ],
    }


class _Prober:
    """Publishes probes on a schedule and matches the hub's events to them (in the child)."""

    def __init__(
        self, port: int, prefix: str, mode: str, interval_s: float, published: Synchronized[int]
    ) -> None:
        self.prefix = prefix
        self.mode = mode
        self.interval_s = interval_s
        self.published = published
        self.phase: str | None = None
        self.phase_changed = asyncio.Event()
        self.probes: dict[str, _Probe] = {}
        self.order: list[_Probe] = []
        self.unmatched = 0
        self.all_matched = asyncio.Event()
        self.last_match_ns = 0
        self.transitions: Counter[str] = Counter()
        self.raised: Counter[str] = Counter()
        self.publish_failures = 0
        self.foreign_probe_events = 0
        self.pending_acks: set[asyncio.Future[None]] = set()
        pid = os.getpid()
        self.sub = MqttClient(
            "127.0.0.1",
            port,
            ConnectOptions(client_id=f"bench-events-{pid}", clean_start=True, session_expiry_s=0),
            subscriptions=[(topics.events_filter(prefix), 1)],
            on_publish=self._on_event,
        )
        self.pub = MqttClient(
            "127.0.0.1",
            port,
            ConnectOptions(client_id=f"bench-probes-{pid}", clean_start=True, session_expiry_s=0),
            subscriptions=[],
            on_publish=lambda *_: None,
        )

    def _on_event(
        self, _topic: str, payload: bytes, qos: int, _retain: bool, packet_id: int
    ) -> None:
        arrived = time.monotonic_ns()
        if qos:
            self.sub.ack(self.sub.generation, [packet_id])
        try:
            body = json.loads(payload)
        except ValueError:
            self.transitions["unreadable"] += 1
            return
        if not isinstance(body, dict):
            self.transitions["unreadable"] += 1
            return
        transition = body.get("transition")
        action = transition.get("action") if isinstance(transition, dict) else None
        self.transitions[str(action)] += 1
        rule = str(body.get("rule_id"))
        if action == "raise":
            self.raised[rule] += 1
        device = str(body.get("device"))
        probe = self.probes.get(device)
        if probe is None and device.startswith(PROBE_DEVICE_PREFIX):
            self.foreign_probe_events += 1  # another mode's probe: a replay, say so
        if probe is None or probe.event_ns is not None or rule != PROBE_RULE:
            return
        raised_ms = _rfc3339_ms(body.get("raised_at"))
        if raised_ms is not None and raised_ms < probe.ts_ms:
            return  # an older event of the same device: not this probe's
        probe.event_ns = self.last_match_ns = arrived
        self.unmatched -= 1
        if self.unmatched == 0:
            self.all_matched.set()

    def set_phase(self, phase: str | None) -> None:
        """A new phase starts with a probe at once: even a short drain gets one."""
        self.phase = phase
        self.phase_changed.set()

    def _send_one(self, phase: str) -> None:
        device = f"{PROBE_DEVICE_PREFIX}{self.mode}-{len(self.order):05d}"
        topic = topics.device_topic(self.prefix, device, "access", device, topics.EVENT)
        ts_ms = time.time_ns() // 1_000_000
        probe = _Probe(device, phase, ts_ms, time.monotonic_ns())
        try:
            fut = self.pub.publish_nowait(topic, _probe_payload(ts_ms), qos=1)
        except ConnectionLost:
            self.publish_failures += 1
            return
        self.probes[device] = probe
        self.order.append(probe)
        self.unmatched += 1
        self.all_matched.clear()
        with self.published.get_lock():
            self.published.value += 1
        if fut is not None:
            self.pending_acks.add(fut)
            fut.add_done_callback(self._acked)

    def _acked(self, fut: asyncio.Future[None]) -> None:
        self.pending_acks.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            self.publish_failures += 1

    async def publish_loop(self) -> None:
        """One probe per interval while a phase is set; late ticks are skipped, not bunched."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            delay = None if self.phase is None else next_at - loop.time()
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.phase_changed.wait()
            if self.phase_changed.is_set():
                self.phase_changed.clear()
                next_at = loop.time()
            if self.phase is None or loop.time() < next_at:
                continue
            self._send_one(self.phase)
            next_at += self.interval_s
            if next_at < loop.time():
                next_at = loop.time() + self.interval_s

    async def finish(self, idle_s: float, max_s: float) -> dict[str, Any]:
        """Stop publishing; wait for the missing events while they keep coming (until
        none for `idle_s`, at most `max_s`); sum up."""
        self.set_phase(None)
        now = time.monotonic_ns()
        deadline = now + int(max_s * 1e9)
        self.last_match_ns = max(self.last_match_ns, now)
        while self.unmatched:
            until = min(self.last_match_ns + int(idle_s * 1e9), deadline)
            if until <= time.monotonic_ns():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout((until - time.monotonic_ns()) / 1e9):
                    await self.all_matched.wait()
        phases: dict[str, list[_Probe]] = {}
        for probe in self.order:
            phases.setdefault(probe.phase, []).append(probe)
        return {
            "phases": {name: _phase_figures(probes) for name, probes in phases.items()},
            "publish_failures": self.publish_failures + len(self.pending_acks),
            "event_transitions": dict(self.transitions),
            "events_raised_by_rule": dict(self.raised),
            "foreign_probe_events": self.foreign_probe_events,
        }


async def _prober_run(
    conn: Connection,
    port: int,
    prefix: str,
    mode: str,
    interval_s: float,
    published: Synchronized[int],
) -> None:
    loop = asyncio.get_running_loop()
    prober = _Prober(port, prefix, mode, interval_s, published)
    commands: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def read_commands() -> None:  # the pipe blocks: read it on a thread
        while True:
            try:
                command = conn.recv()
            except EOFError:
                command = ("finish", (0.0, 0.0))
            loop.call_soon_threadsafe(commands.put_nowait, command)
            if command[0] == "finish":
                return

    async with asyncio.TaskGroup() as group:
        sub_task = group.create_task(prober.sub.run())
        pub_task = group.create_task(prober.pub.run())
        async with asyncio.timeout(30):
            await prober.sub.connected.wait()
            await prober.pub.connected.wait()
        publisher = group.create_task(prober.publish_loop())
        threading.Thread(target=read_commands, daemon=True).start()
        conn.send("ready")
        while True:
            verb, arg = await commands.get()
            if verb == "phase":
                prober.set_phase(arg)
            elif verb == "finish":
                result = await prober.finish(*arg)
                break
        for task in (publisher, sub_task, pub_task):
            task.cancel()
    conn.send(result)


def _prober_main(
    conn: Connection,
    port: int,
    prefix: str,
    mode: str,
    interval_s: float,
    published: Synchronized[int],
) -> None:
    asyncio.run(_prober_run(conn, port, prefix, mode, interval_s, published))


class _ProberProcess:
    """The probe publisher and event subscriber, driven by phase names."""

    def __init__(self, port: int, mode: str, interval_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._published: Synchronized[int] = ctx.Value("q", 0)
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_prober_main,
            args=(child, port, topics.DEFAULT_PREFIX, mode, interval_s, self._published),
            daemon=True,
        )
        self._proc.start()
        if not self._conn.poll(60) or self._conn.recv() != "ready":
            self.kill()
            raise RuntimeError("probe process failed to connect")

    @property
    def published(self) -> int:
        return int(self._published.value)

    def phase(self, name: str | None) -> None:
        self._conn.send(("phase", name))

    def wait_published(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.published < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def finish(
        self,
        on_wait: Callable[[float], None],
        idle_s: float = PROBE_IDLE_S,
        max_s: float = PROBE_WAIT_MAX_S,
    ) -> dict[str, Any]:
        self._conn.send(("finish", (idle_s, max_s)))
        started = time.monotonic()
        while not self._conn.poll(5.0):
            waited = time.monotonic() - started
            if waited > max_s + 30:
                self.kill()
                raise RuntimeError("probe process did not report")
            on_wait(waited)
        data: dict[str, Any] = self._conn.recv()
        self._proc.join(10)
        return data

    def kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


# -- hub process ---------------------------------------------------------------------------
def _hub_config(
    work: Path,
    mqtt_port: int,
    influx_port: int,
    database: str,
    *,
    ingest_only: bool,
    detection: str | None = None,
) -> Path:
    """The default settings but for ports, paths, a quiet log and a fast status file;
    `ingest_only` turns events (rules, sinks, anomaly) off. Each mode has a hub of its
    own: data, spool and dead letters apart (the rules replay what a spool holds), one
    client id (its persistent session is what queues the backlog)."""
    path = work / f"hub-{database}.toml"
    text = (
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\nclient_id = "{HUB_CLIENT_ID}"\n'
        f'[influx]\nurl = "http://127.0.0.1:{influx_port}"\ndatabase = "{database}"\n'
        f'[spool]\ndirectory = "{work}/spool-{database}"\n'
        f'[deadletters]\ndirectory = "{work}/dead-{database}"\n'
        f'[hub]\ndata_dir = "{work}/data-{database}"\n'
        f"status_interval_s = {STATUS_INTERVAL_S}\n"
        f'log_level = "WARNING"\n'
        f'credential_hash_key = "{BENCH_HASH_KEY.decode()}"\n'
        f"[api]\nport = {free_port()}\n"
    )
    if ingest_only:
        text += "[events]\nenabled = false\n"
    elif detection is not None:  # not the default: the result says so
        text += f'[events]\ndetection = "{detection}"\n'
    path.write_text(text)
    return path


class _HubProcess:
    def __init__(self, config: Path, data_dir: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
        self.data_dir = data_dir
        self.log = log
        with log.open("ab") as out:  # the child has its own copy
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "hub", "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.ps = psutil.Process(self.popen.pid)

    def status(self) -> dict[str, Any]:
        try:
            return read_status(self.data_dir) or {}
        except (OSError, ValueError):
            return {}

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"the hub exited with code {code}; see {self.log}")

    def wait_connected(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.status().get("connected"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"hub did not connect within {timeout:.0f} s; see {self.log}")
            time.sleep(0.02)

    def _processes(self) -> list[psutil.Process]:
        """The hub's process and its detection worker (`events.detection = "process"`)."""
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [self.ps]

    def cpu_seconds(self) -> float:
        """CPU of the hub's processes (the hub and its detection worker) so far."""
        total = 0.0
        for process in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += float(times.user + times.system)
        return total

    def peak_rss_mb(self) -> float:
        """The sum of the hub's processes' peaks (each one's VmHWM)."""
        return sum(self.peak_rss_by_process_mb())

    def peak_rss_by_process_mb(self) -> list[float]:
        """Each of the hub's processes' peak (VmHWM): the hub's first, then its worker."""
        peaks: list[float] = []
        for process in self._processes():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) / 1024)
        return peaks

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def consumers(status: dict[str, Any]) -> dict[str, Any]:
    """Which consumers of readings the hub ran, as its status file says (its supervised
    tasks, and the counters each consumer adds)."""
    tasks = status.get("tasks")
    names = sorted(tasks) if isinstance(tasks, dict) else []
    # The detection worker's tasks are listed as detection/<name>.
    bare = {name.removeprefix("detection/") for name in names}
    return {
        "rules": "rules" in bare or "rules_evaluated" in status,
        "event_sinks": "event-sinks" in bare,
        "anomaly": "anomaly" in bare or "anomaly" in status,
        "worker": "detection" in bare,
        "tasks": names,
    }


def _count(target: QueryTarget, where: str) -> int:
    try:
        # Measurement names and the filter are our own constants, not input.
        series = query(
            target,
            "SELECT count(seq) FROM " + ",".join(KIND_MEASUREMENTS) + " WHERE " + where,  # noqa: S608
        )
    except InfluxQLError:
        return 0
    return sum(int(s.values[0][1]) for s in series)


_BENCH_POINTS: Final = f"device !~ /^{PROBE_DEVICE_PREFIX}/"
_PROBE_POINTS: Final = f"device =~ /^{PROBE_DEVICE_PREFIX}/"


@dataclass(frozen=True, slots=True)
class _Stored:
    count: int
    """Bench points in InfluxDB (probes left out)."""
    status: dict[str, Any]
    """The first status that showed every bench message stored (else the last one)."""
    cpu_s: float
    """The hub's CPU seconds when that status was read."""
    box: Any = None
    """`psutil.cpu_times()` of the whole box then."""


def _wait_stored(
    hub: _HubProcess,
    target: QueryTarget,
    n: int,
    progress: bool,
    label: str,
    probes_ahead: int = 0,
    probes_published: Callable[[], int] = lambda: 0,
) -> _Stored:
    """Until InfluxDB holds the n bench points, or nothing moved for `STALL_S`.

    The hub's `stored` counts probes too. The bench is done at the first status with
    `stored >= n + probes_ahead`, the probes published before the bench publisher's
    last message: the hub stores in the order it receives, and the broker hands on in
    the order it got (other points, hub_stats every 10 s, move it by a handful).
    `stored - probes published so far` is at most the bench points stored: progress
    and stalls are judged on that."""
    last_change = time.monotonic()
    seen = -1
    last_print = 0.0
    done: tuple[dict[str, Any], float, Any] | None = None
    last_status: dict[str, Any] = {}
    while True:
        hub.check_alive()
        status = hub.status()
        if status:
            last_status = status
        stored = int(status.get("stored", 0))
        moved = stored - probes_published()
        if done is None and stored - probes_ahead >= n:
            done = (status, hub.cpu_seconds(), psutil.cpu_times())
        if done is not None:
            count = _count(target, _BENCH_POINTS)
            if count >= n:
                return _Stored(count, done[0], done[1], done[2])
            moved = count
        if moved > seen:
            seen, last_change = moved, time.monotonic()
        if time.monotonic() - last_print > 2:
            _log(progress, f"  {label}: {min(max(moved, 0), n):,}/{n:,} stored")
            last_print = time.monotonic()
        if time.monotonic() - last_change > STALL_S:
            _log(progress, f"  {label}: nothing stored for {STALL_S:.0f} s, giving up")
            status, cpu_s, box = done or (last_status, hub.cpu_seconds(), psutil.cpu_times())
            return _Stored(_count(target, _BENCH_POINTS), status, cpu_s, box)
        time.sleep(0.2 if done is not None else STATUS_INTERVAL_S)


def _service_cpu(services: list[ManagedProcess]) -> dict[str, float]:
    """CPU seconds used so far by each service (the box has 2 cores for all of them)."""
    out = {}
    for svc in services:
        times = psutil.Process(svc.pid).cpu_times()
        out[svc.name] = float(times.user + times.system)
    return out


def busy_share(before: Any, after: Any) -> float:
    """Of all the CPU time the box's cores had between two `psutil.cpu_times()`, the
    share not idle (and not waiting for I/O)."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (after.iowait - before.iowait)
    return (total - idle) / total if total > 0 else 0.0


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {f"{name}_cpu_s": round(after[name] - before[name], 2) for name in after}


def _mode_result(hub: _HubProcess, n: int, stored: _Stored, cpu0: float) -> dict[str, Any]:
    at_end = stored.status
    final = hub.status() or at_end
    first_ns = int(at_end.get("first_received_ns") or 0)
    span_s = max((int(at_end.get("last_stored_ns") or 0) - first_ns) / 1e9, 1e-9)
    first_cpu = float(at_end.get("first_received_cpu_s") or 0.0)
    out: dict[str, Any] = {
        "msgs_per_s": round(n / span_s, 1) if first_ns else 0.0,
        "loss": n - stored.count,
        "p50_ms": round(final.get("latency_p50_ms") or 0.0, 1),
        "p99_ms": round(final.get("latency_p99_ms") or 0.0, 1),
        "cpu_s": round(stored.cpu_s - cpu0, 2),
        # From the first message on: the hub's own cost per message, whatever the box's
        # load does to the rates (cpu_s of the backlog also holds the hub's start-up).
        "cpu_us_per_msg": round((stored.cpu_s - first_cpu) / n * 1e6, 2),
        "rss_mb": round(hub.peak_rss_mb(), 1),
        "rss_mb_by_process": [round(mb, 1) for mb in hub.peak_rss_by_process_mb()],
        "last_stored_ns": int(at_end.get("last_stored_ns") or 0),
    }
    for key in ("rules_evaluated", "rules_detections", "rules_queue_waits"):
        if key in final:
            out[key] = final[key]
    return out


def _rss_parts(result: dict[str, Any]) -> str:
    """` (hub 170.1 + worker 160.2)`: which process holds the peak, when there are two."""
    parts = result.get("rss_mb_by_process") or []
    if len(parts) < 2:
        return ""
    children = ["worker"] if len(parts) == 2 else [f"child {i}" for i in range(1, len(parts))]
    names = ["hub", *children]
    return " (" + " + ".join(f"{name} {mb}" for name, mb in zip(names, parts, strict=True)) + ")"


def broker_persistence(autosave_changes: int | None) -> tuple[str, ...]:
    """The broker's persistence lines: the local stack's (None), or a save every
    `autosave_changes` changes, to see what the broker's saves cost the box (each rewrites
    every queued message: docs/broker-durability.md). Not the default configuration."""
    if autosave_changes is None:
        return tuple(BROKER_PERSISTENCE)
    return ("persistence true", "autosave_on_changes true", f"autosave_interval {autosave_changes}")


def _sub_argv(mqtt_port: int, client_id: str, *extra: str) -> list[str]:
    """mosquitto_sub with a persistent session (-c, fixed id) at QoS 1 on all telemetry."""
    return [
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(mqtt_port),
        "-c", "-i", client_id, "-q", "1", "-t", topics.subscription(topics.DEFAULT_PREFIX), *extra,
    ]  # fmt: skip


def _register_session(client_id: str, mqtt_port: int) -> None:
    """A subscriber connects once so the broker queues for it while it is away."""
    subprocess.run(_sub_argv(mqtt_port, client_id, "-W", "1"), check=False, capture_output=True)


def _mosquitto_sub_limit(mqtt_port: int, n: int, devices: int, progress: bool) -> float:
    _register_session("bench-limit", mqtt_port)
    pub = _PublisherProcess(mqtt_port, n, devices, seed=3)
    pub.go()
    pub.result()
    _log(progress, f"limit: {n:,} queued; draining with mosquitto_sub -q 1")
    start = time.perf_counter()
    subprocess.run(
        _sub_argv(mqtt_port, "bench-limit", "-C", str(n)),
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=600,
    )
    return n / (time.perf_counter() - start)


# -- the run -------------------------------------------------------------------------------
def run_ingest_bench(
    n: int,
    devices: int,
    workdir: Path | None,
    *,
    progress: bool,
    rate: float | None = None,
    ingest_only: bool = False,
    probe_interval_ms: float = 100.0,
    costs: bool = True,
    detection: str | None = None,
    broker_autosave_changes: int | None = None,
) -> dict[str, Any]:
    """The per-stage costs in-process (a part: the hub is not involved; first, so that a
    broken stage fails before minutes of end-to-end work), then both modes and the limit
    end to end, and the targets."""
    part_costs: dict[str, float] | None = None
    if costs:
        _log(progress, "costs (part, in-process): decode, line protocol, rules, anomaly scoring")
        messages = bench_messages(_templates(n, devices, seed=2))
        part_costs = {
            **decode_encode_cost(messages),
            "rules_us_per_reading": rules_cost(bench_readings(messages)),
            **anomaly_cost(),
        }
    result = _run_end_to_end(
        n,
        devices,
        workdir,
        progress=progress,
        rate=rate,
        ingest_only=ingest_only,
        probe_interval_s=probe_interval_ms / 1000,
        detection=detection,
        broker_autosave_changes=broker_autosave_changes,
    )
    if result["pipeline"] == "default" and broker_autosave_changes is None:
        # targets are the default configuration's (the local stack's broker included)
        result["targets"] = judge(result)
    if part_costs is not None:
        result["costs"] = part_costs
    return result


def anomaly_cost() -> dict[str, float]:
    """Anomaly scoring per reading at the default settings (no trained model: per-device
    baselines learned online): the log records the intake writes for the detection
    consumers (ingest's path) and the worker step (scoring, the changed devices' state
    rows, events; on a thread), CPU time over 6 simulated hours of the Yingyang site
    after 2 days taught every device (`evaluation.anomaly_bench.run_online_bench`)."""
    from evaluation.anomaly_bench import run_online_bench

    figures = run_online_bench(warm_days=2.0, hours=6.0)
    return {
        "detection_records_us_per_reading": figures["records_us_per_reading"],
        "anomaly_us_per_reading": figures["process_cpu_us_per_reading"],
        "anomaly_score_us_per_reading": figures["score_cpu_us_per_reading"],
        "anomaly_warmup_us_per_reading": figures["warmup_process_cpu_us_per_reading"],
    }


@dataclass(frozen=True, slots=True)
class _Bench:
    work: Path
    mqtt_port: int
    influx_port: int
    n: int
    devices: int
    ingest_only: bool
    probe_interval_s: float
    progress: bool
    services: list[ManagedProcess]
    detection: str | None = None

    def hub(self, database: str) -> _HubProcess:
        config = _hub_config(
            self.work,
            self.mqtt_port,
            self.influx_port,
            database,
            ingest_only=self.ingest_only,
            detection=self.detection,
        )
        return _HubProcess(config, self.work / f"data-{database}", self.work / "hub.log")

    def target(self, database: str) -> QueryTarget:
        return QueryTarget(f"http://127.0.0.1:{self.influx_port}", database)

    def prober(self, mode: str) -> _ProberProcess | None:
        if self.ingest_only:
            return None
        return _ProberProcess(self.mqtt_port, mode, self.probe_interval_s)


def _probe_count(prober: _ProberProcess | None) -> Callable[[], int]:
    return (lambda: prober.published) if prober is not None else (lambda: 0)


def _close_mode(
    bench: _Bench,
    hub: _HubProcess,
    stored: _Stored,
    prober: _ProberProcess | None,
    target: QueryTarget,
    *,
    cpu0: float,
    services0: dict[str, float],
    box0: Any,
    label: str,
) -> dict[str, Any]:
    """The mode's figures once its probes' events are in (or given up on)."""
    probes: dict[str, Any] | None = None
    cpu_events: float | None = None
    if prober is not None:
        _log(
            bench.progress,
            f"  {label}: waiting for the probes' events (until none for {PROBE_IDLE_S:.0f} s)",
        )
        probes = prober.finish(
            lambda waited: _log(bench.progress, f"  {label}: still waiting ({waited:.0f} s)")
        )
        if not any(p["lost"] for p in probes["phases"].values()):
            cpu_events = hub.cpu_seconds()  # the alarm side has caught up: the whole cost
        probes["stored"] = _count(target, _PROBE_POINTS)
    out = _mode_result(hub, bench.n, stored, cpu0)
    out.update(_cpu_delta(services0, _service_cpu(bench.services)))
    # Busy share of the box until every message was stored: near 1 means the box, not
    # the hub's design, sets the pace.
    out["box_cpu_busy"] = round(busy_share(box0, stored.box), 3)
    if probes is not None:
        out["probes"] = probes
        first_cpu = float(stored.status.get("first_received_cpu_s") or 0.0)
        out["cpu_us_per_msg_with_events"] = (
            None if cpu_events is None else round((cpu_events - first_cpu) / bench.n * 1e6, 2)
        )
    return out


def _live(bench: _Bench, rate: float | None, figures: dict[str, Any]) -> dict[str, Any]:
    n, devices = bench.n, bench.devices
    paced = f" at {rate:,.0f} msg/s" if rate else " flat out"
    _log(bench.progress, f"live: hub running, publishing {n:,} messages{paced}")
    target = bench.target(LIVE_DB)
    hub = bench.hub(LIVE_DB)
    prober: _ProberProcess | None = None
    try:
        pub = _PublisherProcess(bench.mqtt_port, n, devices, seed=1, rate=rate)
        prober = bench.prober("l")
        hub.wait_connected()
        cpu0 = hub.cpu_seconds()
        svc0, box0 = _service_cpu(bench.services), psutil.cpu_times()
        if prober is not None:
            prober.phase("live")
        pub.go()
        published = pub.result()
        ahead = _probe_count(prober)()
        stored = _wait_stored(hub, target, n, bench.progress, "live", ahead, _probe_count(prober))
        out = _close_mode(
            bench, hub, stored, prober, target, cpu0=cpu0, services0=svc0, box0=box0, label="live"
        )
        prober = None
        out["publish_msgs_per_s"] = round(n / published["seconds"], 1)
        # Keeping up: how long after the publisher's last message the last point was stored.
        out["catch_up_s"] = round((out["last_stored_ns"] - published["end_ns"]) / 1e9, 2)
        figures["consumers"] = consumers(hub.status())
        return out
    finally:
        if prober is not None:
            prober.kill()
        hub.stop()


def _backlog(bench: _Bench) -> dict[str, Any]:
    n, devices = bench.n, bench.devices
    _log(bench.progress, f"backlog: hub down, queueing {n:,} messages for its session")
    target = bench.target(BACKLOG_DB)
    prober = bench.prober("b")
    hub: _HubProcess | None = None
    try:
        pub = _PublisherProcess(bench.mqtt_port, n, devices, seed=2)
        if prober is not None:
            prober.phase("queued")
        pub.go()
        pub.result()
        ahead = _probe_count(prober)()
        if prober is not None:
            prober.wait_published(MIN_QUEUED_PROBES, 30.0)
        svc0, box0 = _service_cpu(bench.services), psutil.cpu_times()
        hub = bench.hub(BACKLOG_DB)
        if prober is not None:
            # Probes sent before the hub is connected wait in the backlog with the rest.
            hub.wait_connected()
            prober.phase("drain")
        cpu0 = 0.0  # the process starts with the drain
        stored = _wait_stored(
            hub, target, n, bench.progress, "backlog", ahead, _probe_count(prober)
        )
        out = _close_mode(
            bench,
            hub,
            stored,
            prober,
            target,
            cpu0=cpu0,
            services0=svc0,
            box0=box0,
            label="backlog",
        )
        prober = None
        return out
    finally:
        if prober is not None:
            prober.kill()
        if hub is not None:
            hub.stop()


def _run_end_to_end(
    n: int,
    devices: int,
    workdir: Path | None,
    *,
    progress: bool,
    rate: float | None,
    ingest_only: bool,
    probe_interval_s: float,
    detection: str | None = None,
    broker_autosave_changes: int | None = None,
) -> dict[str, Any]:
    ensure_installed({**MOSQUITTO_PACKAGES, **INFLUXDB_PACKAGES, **CLIENT_PACKAGES})
    work = Path(tempfile.mkdtemp(prefix="gridwatch-bench-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    services: list[ManagedProcess] = []
    try:
        mosq = start_mosquitto(
            work / "mosquitto", free_port(), persistence=broker_persistence(broker_autosave_changes)
        )
        services.append(mosq)
        influx = start_influxdb(work / "influxdb", free_port())
        services.append(influx)
        bench = _Bench(
            work, mosq.port, influx.port, n, devices, ingest_only, probe_interval_s, progress,
            services, detection,
        )  # fmt: skip
        if ingest_only:
            pipeline = "ingest_only"
        else:
            pipeline = "default" if detection is None else f"detection_{detection}"
        result: dict[str, Any] = {
            "pipeline": pipeline,
            "messages": n,
            "devices": devices,
            "live_rate": rate,
            "probe_interval_ms": None if ingest_only else round(probe_interval_s * 1000, 3),
            "broker_autosave_changes": broker_autosave_changes or BROKER_AUTOSAVE_CHANGES,
            "broker_default": broker_autosave_changes is None,
        }
        figures: dict[str, Any] = {}
        figures["live"] = _live(bench, rate, figures)
        figures["backlog"] = _backlog(bench)
        limit = _mosquitto_sub_limit(mosq.port, n, devices, progress)
        result["limit_msgs_per_s"] = round(limit, 1)
        for mode in ("live", "backlog"):
            figures[mode]["ratio"] = round(figures[mode]["msgs_per_s"] / limit, 3)
        figures["ratio"] = figures["backlog"]["ratio"]
        # The part's figures never stand where the default's are read.
        result[pipeline] = figures
        return result
    finally:
        for svc in reversed(services):
            svc.stop()
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)


# -- targets and output --------------------------------------------------------------------
def _probe_phase(mode: dict[str, Any], phase: str) -> dict[str, Any] | None:
    probes = mode.get("probes")
    if not isinstance(probes, dict):
        return None
    found = probes.get("phases", {}).get(phase)
    return found if isinstance(found, dict) else None


def _p99_target(name: str, phase: dict[str, Any] | None, limit_ms: float) -> dict[str, Any]:
    p99 = None if phase is None else phase.get("p99_ms")
    return {
        "name": name,
        "target": f"<= {limit_ms:,.0f} ms",
        "value": p99,
        "unit": "ms",
        "pass": p99 is not None and p99 <= limit_ms,
    }


def judge(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, each with its value and pass/fail (default pipeline only)."""
    figures = result["default"]
    live, backlog = figures["live"], figures["backlog"]
    rate = result.get("live_rate")
    paced = rate is not None and rate <= TARGET_PACED_RATE
    live_phase = _probe_phase(live, "live")
    drain_phase = _probe_phase(backlog, "drain")
    stored_loss = int(live["loss"]) + int(backlog["loss"])
    probe_loss = sum(
        int(p["lost"]) for p in (live_phase, drain_phase, _probe_phase(backlog, "queued")) if p
    )
    no_probes = live_phase is None or drain_phase is None
    rss = max(float(live["rss_mb"]), float(backlog["rss_mb"]))
    return [
        {
            "name": "backlog ratio (default pipeline)",
            "target": f">= {TARGET_RATIO}",
            "value": figures["ratio"],
            "unit": "",
            "pass": figures["ratio"] >= TARGET_RATIO,
        },
        _p99_target(
            f"live publish→event p99 (paced at {rate:,.0f} msg/s)"
            if paced and rate is not None
            else "live publish→event p99 (flat out"
            + (f", paced above {TARGET_PACED_RATE:,.0f} msg/s)" if rate else ")"),
            live_phase,
            TARGET_PACED_P99_MS if paced else TARGET_FLAT_OUT_P99_MS,
        ),
        _p99_target(
            "backlog drain publish→event p99 (flat out)", drain_phase, TARGET_FLAT_OUT_P99_MS
        ),
        {
            "name": "loss: bench messages not stored",
            "target": "0",
            "value": stored_loss,
            "unit": "",
            "pass": stored_loss == 0,
        },
        {
            "name": "loss: probes without an event",
            "target": "0",
            "value": probe_loss,
            "unit": "",
            "pass": probe_loss == 0 and not no_probes,
        },
        {
            "name": "hub peak RSS",
            "target": f"<= {TARGET_RSS_MB:,.0f} MB",
            "value": rss,
            "unit": "MB",
            "pass": rss <= TARGET_RSS_MB,
        },
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _probe_line(label: str, phase: dict[str, Any] | None) -> str:
    if phase is None:
        return f"{'':11}publish→event {label}: no probes published"
    lost = ""
    if phase["lost"]:
        more = ", ..." if phase["lost"] > len(phase["lost_devices"]) else ""
        lost = f" (no event: {', '.join(phase['lost_devices'])}{more})"
    return (
        f"{'':11}publish→event {label}: p50 {_ms(phase['p50_ms'])}, p99 {_ms(phase['p99_ms'])}, "
        f"max {_ms(phase['max_ms'])}; {phase['with_event']}/{phase['published']} probes "
        f"with an event, probe loss {phase['lost']}{lost}"
    )


def _consumers_line(found: dict[str, Any] | None) -> str:
    if not found:
        return "hub consumers: unknown (no status file)"

    def on(flag: object) -> str:
        return "on" if flag else "off"

    anomaly = on(found["anomaly"])
    if found["anomaly"]:
        anomaly += " (online baselines: the default without a trained model)"
    tasks = ", ".join(found["tasks"]) or "-"
    where = " in its detection worker process" if found.get("worker") else ""
    return (
        f"hub consumers (its status file){where}: rules {on(found['rules'])}, event sinks "
        f"{on(found['event_sinks'])}, anomaly scoring {anomaly}; tasks: {tasks}"
    )


def format_result(result: dict[str, Any]) -> str:
    pipeline = result["pipeline"]
    figures = result[pipeline]
    rate = result.get("live_rate")
    pace = f"at {rate:,.0f} msg/s" if rate else "flat out"
    lines = [
        f"gridwatch ingest benchmark: {result['messages']:,} messages, "
        f"{result['devices']:,} devices, live {pace}",
    ]
    if pipeline == "default":
        lines.append(
            "measured: the hub's DEFAULT pipeline (default detection settings), with alarm "
            f"probes every {result['probe_interval_ms']:g} ms"
        )
    elif pipeline.startswith("detection_"):
        lines.append(
            f"measured: the default pipeline but events.detection = "
            f"{pipeline.removeprefix('detection_')!r}: NOT the default configuration, for "
            f"comparison (alarm probes every {result['probe_interval_ms']:g} ms)"
        )
    else:
        lines.append(
            "measured: a PART, ingest only (events.enabled = false: no rules, no events, no "
            "probes); NOT the default pipeline, no target judged"
        )
    if not result.get("broker_default", True):
        lines.append(
            f"broker: Mosquitto saves its database every {result['broker_autosave_changes']:,} "
            f"changes, NOT the local stack's {BROKER_AUTOSAVE_CHANGES:,}: for comparison, no "
            "target judged"
        )
    lines.append(_consumers_line(figures.get("consumers")))
    for mode in ("live", "backlog"):
        r = figures[mode]
        extra = (
            f"; publisher {r['publish_msgs_per_s']:,.0f} msg/s, stored {r['catch_up_s']} s "
            "after it finished"
            if "publish_msgs_per_s" in r
            else ""
        )
        lines.append(
            f"  {mode:<8} {r['msgs_per_s']:>9,.0f} msg/s stored ({r['ratio']:.3f} of the limit), "
            f"loss {r['loss']}{extra}"
        )
        lines.append(f"{'':11}publish→stored: p50 {_ms(r['p50_ms'])}, p99 {_ms(r['p99_ms'])}")
        if "probes" in r:
            if mode == "live":
                lines.append(_probe_line("live", _probe_phase(r, "live")))
            else:
                lines.append(_probe_line("drain", _probe_phase(r, "drain")))
                lines.append(
                    _probe_line(
                        "queued (sent while the hub was down or starting)",
                        _probe_phase(r, "queued"),
                    )
                )
            raised = r["probes"].get("events_raised_by_rule", {})
            if raised:
                ranked = sorted(raised.items(), key=lambda kv: (-kv[1], kv[0]))
                top = ", ".join(f"{rule} {count:,}" for rule, count in ranked)
                lines.append(f"{'':11}events raised on MQTT: {top}")
        queue = (
            f", rules queue full {r['rules_queue_waits']} times"
            if r.get("rules_queue_waits")
            else ""
        )
        with_events = ""
        if "cpu_us_per_msg_with_events" in r:
            value = r["cpu_us_per_msg_with_events"]
            with_events = (
                f", {value} µs/msg until the last probe's event"
                if value is not None
                else ", (no figure until the last probe's event: probes were lost)"
            )
        lines.append(
            f"{'':11}hub CPU {r['cpu_s']} s until stored ({r['cpu_us_per_msg']} µs/msg)"
            f"{with_events}; peak RSS {r['rss_mb']} MB{_rss_parts(r)}{queue}"
        )
        probes = r.get("probes", {})
        notes = ""
        if probes.get("publish_failures"):
            notes += f"; {probes['publish_failures']} probe publishes failed"
        if probes.get("foreign_probe_events"):
            notes += f"; {probes['foreign_probe_events']} events of another mode's probes"
        lines.append(
            f"{'':11}service CPU: mosquitto {r.get('mosquitto_cpu_s')} s, influxdb "
            f"{r.get('influxdb_cpu_s')} s; box CPU busy "
            f"{r.get('box_cpu_busy', 0.0):.0%} of {psutil.cpu_count()} cores until stored{notes}"
        )
    lines.append(
        f"  limit    {result['limit_msgs_per_s']:>9,.0f} msg/s (mosquitto_sub -q 1 backlog drain)"
    )
    lines.append(f"  ratio    {figures['ratio']:.3f} (backlog / limit)")
    if "targets" in result:
        lines.append("targets (default pipeline):")
        for t in result["targets"]:
            value = "-" if t["value"] is None else f"{t['value']:,}"
            unit = f" {t['unit']}" if t["unit"] and t["value"] is not None else ""
            mark = "PASS" if t["pass"] else "FAIL"
            lines.append(f"  [{mark}] {t['name']}: {value}{unit} (target {t['target']})")
        if rate is None or rate > TARGET_PACED_RATE:
            lines.append(
                f"  (the paced target, live p99 <= {TARGET_PACED_P99_MS:.0f} ms, needs "
                f"--rate {TARGET_PACED_RATE:.0f})"
            )
        else:
            lines.append(
                f"  (the flat-out live target, p99 <= {TARGET_FLAT_OUT_P99_MS:,.0f} ms, "
                "needs a run without --rate)"
            )
    if "costs" in result:
        costs = result["costs"]
        lines.append(
            f"  costs (part, in-process: CPU per stage in the bench's own process, not the "
            f"hub's): decode {costs['decode_us_per_msg']} µs/msg, decode + line protocol "
            f"{costs['decode_encode_us_per_msg']} µs/msg, default rule pack "
            f"{costs['rules_us_per_reading']} µs/reading, anomaly scoring "
            f"{costs['anomaly_us_per_reading']} µs/reading on its worker thread "
            f"(ingest's path: +{costs['detection_records_us_per_reading']} µs/reading of log "
            "records for the detection consumers)"
        )
        if "anomaly_score_us_per_reading" in costs:
            lines.append(
                f"  anomaly (default: online baselines, CPU, learned devices): scoring "
                f"{costs['anomaly_score_us_per_reading']} µs/reading, worker step with state "
                f"and events {costs['anomaly_us_per_reading']} µs/reading; over the 2 "
                f"background days before (the first one learning) "
                f"{costs['anomaly_warmup_us_per_reading']} µs/reading"
            )
    return "\n".join(lines)
