"""What a Mosquitto crash loses under each persistence setting, and what the setting costs.

For every candidate config a private Mosquitto (the stack's own `mosquitto_conf`, with
the candidate's persistence lines) gets the hub's kind of session: MQTT 5, a fixed client
id, no clean start, a week's session expiry, QoS 1. Three shapes of traffic:

- `live`: the client is connected and acks at once (a hub keeping up): nothing queues;
- `offline`: the session exists but its client is away (a hub outage): every message is
  queued for it, so the broker's database grows by every message;
- `slow`: the client is connected but acks slower than devices publish (a hub behind):
  up to its Receive Maximum in flight, the rest queued.

A QoS 1 publisher sends N messages (pipelined, each waiting for its PUBACK), the broker is
SIGKILLed when a random number of them (a quarter to three quarters of N) has been
acknowledged, restarted on the same directory, and the subscriber reconnects with the
same client id. *Lost* counts messages the broker PUBACKed to the publisher that never
reached the subscriber (before the crash or after it): the device believes them
delivered, so it will not send them again. The same input without the crash gives the
cost: publish throughput, broker CPU, database saves and size. A last part times one
save against the queue's size (SIGUSR1 forces one), because Mosquitto rewrites its whole
database on every save.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil

from broker.client import ConnectionLost, ConnectOptions, MqttClient
from devstack.stack import (
    BROKER_PERSISTENCE,
    MOSQUITTO_BIN,
    ManagedProcess,
    free_port,
    start_mosquitto,
)

TOPIC_PREFIX: Final = "bench/durability"
SESSION_ID: Final = "bench-durability-hub"
PAYLOAD_BYTES: Final = 200
"""About one device reading of the hub's JSON (readings are 120-300 bytes)."""
SESSION_EXPIRY_S: Final = 7 * 86400
RECEIVE_MAXIMUM: Final = 4096
"""The hub's default Receive Maximum."""
WINDOW: Final = 1000
"""Publishes in flight at once (a fleet of devices, each waiting for its PUBACK)."""
SAVE_LINE: Final = b"Saving in-memory database"
DRAIN_IDLE_S: Final = 1.5
DRAIN_MAX_S: Final = 60.0
SCENARIOS: Final = ("live", "slow", "offline")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One persistence setting: the lines it puts in mosquitto.conf."""

    name: str
    persistence: tuple[str, ...]


def stack_candidate() -> Candidate:
    """The local stack's own setting (`devstack.stack.BROKER_PERSISTENCE`)."""
    return Candidate("stack: " + _short(BROKER_PERSISTENCE), tuple(BROKER_PERSISTENCE))


def _short(lines: Sequence[str]) -> str:
    """`autosave_on_changes 100`, `autosave_interval 30 s`, `persistence false`."""
    values = dict(line.split(maxsplit=1) for line in lines)
    if values.get("persistence") != "true":
        return "persistence false"
    interval = values.get("autosave_interval", "1800")
    if values.get("autosave_on_changes") == "true":
        return f"autosave_on_changes {interval}"
    return f"autosave_interval {interval} s"


def candidate(spec: str) -> Candidate:
    """`none`, `interval:30` (seconds) or `changes:100` (changes) as a Candidate."""
    kind, _, value = spec.partition(":")
    if kind == "none":
        lines: tuple[str, ...] = ("persistence false",)
    elif kind == "interval" and value.isdigit():
        lines = ("persistence true", "autosave_on_changes false", f"autosave_interval {value}")
    elif kind == "changes" and value.isdigit():
        lines = ("persistence true", "autosave_on_changes true", f"autosave_interval {value}")
    else:
        raise ValueError(f"bad candidate {spec!r}: none, interval:<seconds> or changes:<count>")
    return Candidate(_short(lines), lines)


DEFAULT_CANDIDATES: Final = (
    "none",
    "interval:30",
    "interval:1",
    "changes:1",
    "changes:10",
    "changes:100",
    "changes:1000",
)


@dataclass(slots=True)
class RunResult:
    """One run: a candidate, a traffic shape, with or without the crash."""

    candidate: str
    scenario: str
    crashed: bool
    sent: int = 0
    acked: int = 0
    """PUBACKs the publisher got: messages the devices consider delivered."""
    delivered: int = 0
    """Distinct messages the subscriber got (before and after the crash)."""
    delivered_before_crash: int = 0
    lost: int = 0
    """Acked but never delivered."""
    unacked_delivered: int = 0
    """Delivered although the publisher never saw the PUBACK (harmless: at least once)."""
    session_present: bool | None = None
    """What the broker said on the subscriber's reconnect (False: the session was lost)."""
    kill_at: int | None = None
    publish_s: float = 0.0
    rate: float = 0.0
    """PUBACKs per second during the publish phase."""
    broker_cpu_s: float = 0.0
    saves: int = 0
    db_bytes: int = 0
    restart_s: float | None = None
    capped: bool = False
    """The publish phase hit the time limit before sending everything."""

    @property
    def busy_pct(self) -> float:
        """The broker's CPU time as a share of the publish phase's wall time."""
        return 100.0 * self.broker_cpu_s / self.publish_s if self.publish_s else 0.0

    @property
    def lost_pct(self) -> float:
        return 100.0 * self.lost / self.acked if self.acked else 0.0


@dataclass(slots=True)
class SaveCost:
    """How long one save takes with `queued` messages in the database."""

    queued: int
    db_bytes: int
    save_ms: float


@dataclass(slots=True)
class BrokerBench:
    """Everything `gridwatch bench broker` measured."""

    messages: int
    rate: float | None
    slow_ack_rate: float
    seed: int
    runs: list[RunResult] = field(default_factory=list)
    save_costs: list[SaveCost] = field(default_factory=list)
    mosquitto: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for run, rec in zip(self.runs, data["runs"], strict=True):
            rec["lost_pct"] = round(run.lost_pct, 3)
        return data


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _payload(seq: int) -> bytes:
    head = b'{"seq":%d,"pad":"' % seq
    return head + b"x" * max(0, PAYLOAD_BYTES - len(head) - 2) + b'"}'


def _seq(payload: bytes) -> int:
    return int(payload[7 : payload.index(b",", 7)])


def _log_size(proc: ManagedProcess) -> int:
    try:
        return proc.log.stat().st_size
    except OSError:
        return 0


def _saves_since(proc: ManagedProcess, offset: int) -> int:
    with proc.log.open("rb") as fh:
        fh.seek(offset)
        return fh.read().count(SAVE_LINE)


def _cpu_s(proc: ManagedProcess) -> float:
    try:
        times = psutil.Process(proc.pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _db_bytes(workdir: Path) -> int:
    try:
        return (workdir / "data" / "mosquitto.db").stat().st_size
    except OSError:
        return 0


# -- clients -------------------------------------------------------------------------------


class _Subscriber:
    """The hub's session: records which messages arrived, acks them at `ack_rate`
    (None: at once), like a hub that has fsynced what it received."""

    def __init__(self, port: int, ack_rate: float | None) -> None:
        self.seen: set[int] = set()
        self.received = 0
        self.last_at = time.monotonic()
        self._ack_rate = ack_rate
        self._pending: deque[tuple[int, int]] = deque()
        self._flush_scheduled = False
        self.client = MqttClient(
            "127.0.0.1",
            port,
            ConnectOptions(
                client_id=SESSION_ID,
                clean_start=False,
                session_expiry_s=SESSION_EXPIRY_S,
                receive_maximum=RECEIVE_MAXIMUM,
            ),
            subscriptions=[(f"{TOPIC_PREFIX}/#", 1)],
            on_publish=self._on_publish,
            log_connects=False,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _on_publish(
        self, _topic: str, payload: bytes, qos: int, _retain: bool, packet_id: int
    ) -> None:
        self.seen.add(_seq(payload))
        self.received += 1
        self.last_at = time.monotonic()
        if qos:
            self._pending.append((self.client.generation, packet_id))
            if self._ack_rate is None and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush, None)

    def _flush(self, limit: int | None) -> None:
        self._flush_scheduled = False
        ids: list[int] = []
        while self._pending and (limit is None or len(ids) < limit):
            generation, packet_id = self._pending.popleft()
            if generation == self.client.generation:
                ids.append(packet_id)
        self.client.ack(self.client.generation, ids)

    async def _ack_slowly(self, rate: float) -> None:
        tick = 0.01
        credit = 0.0
        while self._ack_rate is not None:
            await asyncio.sleep(tick)
            credit = min(credit + rate * tick, float(RECEIVE_MAXIMUM))
            whole = int(credit)
            if whole:
                credit -= whole
                self._flush(whole)

    def catch_up(self) -> None:
        """Ack everything received and from now on at once (the hub has caught up)."""
        self._ack_rate = None
        self._flush(None)

    async def connect(self) -> bool:
        """Connect (session kept from before if the broker has it); session present?"""
        self._tasks.append(asyncio.create_task(self.client.run()))
        if self._ack_rate is not None:
            self._tasks.append(asyncio.create_task(self._ack_slowly(self._ack_rate)))
        await asyncio.wait_for(self.client.connected.wait(), 15)
        return self.client.session_present

    async def close(self) -> None:
        """DISCONNECT cleanly (the broker keeps the session)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def drain(self, expected: set[int]) -> None:
        """Wait until every expected message arrived, or none came for a while."""
        deadline = time.monotonic() + DRAIN_MAX_S
        while time.monotonic() < deadline:
            if expected <= self.seen:
                await asyncio.sleep(0.1)  # stragglers (duplicates, unacked extras)
                return
            if time.monotonic() - self.last_at > DRAIN_IDLE_S:
                return
            await asyncio.sleep(0.05)


@dataclass(slots=True)
class _Published:
    sent: int = 0
    acked: set[int] = field(default_factory=set)
    seconds: float = 0.0
    kill_at: int | None = None
    capped: bool = False
    broker_cpu_s: float = 0.0
    """The broker's CPU time when the phase ended (just before the kill)."""


def _on_ack(acked: set[int], seq: int, fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        acked.add(seq)


async def _publish(
    port: int,
    n: int,
    *,
    rate: float | None,
    kill_at: int | None,
    broker: ManagedProcess,
    max_s: float,
    progress: bool,
    label: str,
) -> _Published:
    """Send n QoS 1 messages; SIGKILL the broker once `kill_at` are acknowledged."""
    client = MqttClient(
        "127.0.0.1",
        port,
        ConnectOptions(
            client_id=f"bench-durability-pub-{os.getpid()}", clean_start=True, session_expiry_s=0
        ),
        subscriptions=[],
        on_publish=lambda *_: None,
        log_connects=False,
    )
    runner = asyncio.create_task(client.run())
    await asyncio.wait_for(client.connected.wait(), 15)
    out = _Published()
    pending: deque[asyncio.Future[None]] = deque()
    start = time.perf_counter()
    next_report = start + 5.0
    try:
        for seq in range(n):
            now = time.perf_counter()
            if rate and seq % 10 == 0:
                ahead = start + seq / rate - now
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if now - start > max_s:
                out.capped = True
                break
            if now > next_report:
                _log(progress, f"    {label}: {len(out.acked):,}/{n:,} acked")
                next_report = now + 5.0
            if kill_at is not None and len(out.acked) >= kill_at:
                break
            topic = f"{TOPIC_PREFIX}/d{seq % 100}/telemetry"
            fut = client.publish_nowait(topic, _payload(seq), qos=1)
            assert fut is not None
            fut.add_done_callback(functools.partial(_on_ack, out.acked, seq))
            out.sent += 1
            pending.append(fut)
            while len(pending) >= WINDOW or (pending and pending[0].done()):
                await pending.popleft()
        if kill_at is not None:
            out.seconds = time.perf_counter() - start
            out.kill_at = len(out.acked)
            out.broker_cpu_s = _cpu_s(broker)
            broker.kill()
            await asyncio.sleep(0.3)  # PUBACKs already in our socket buffer still count
        else:
            while pending:
                await pending.popleft()
            out.seconds = time.perf_counter() - start
            out.broker_cpu_s = _cpu_s(broker)
    except ConnectionLost as exc:
        raise RuntimeError(f"{label}: the broker dropped the publisher: {exc}") from exc
    finally:
        out.seconds = out.seconds or time.perf_counter() - start
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    return out


# -- one run -------------------------------------------------------------------------------


async def _run(
    cand: Candidate,
    scenario: str,
    crash: bool,
    *,
    n: int,
    rate: float | None,
    slow_ack_rate: float,
    rng: random.Random,
    workdir: Path,
    max_s: float,
    progress: bool,
) -> RunResult:
    label = f"{cand.name} / {scenario} / {'crash' if crash else 'no crash'}"
    _log(progress, f"  {label}")
    result = RunResult(cand.name, scenario, crash)
    port = free_port()
    broker = await asyncio.to_thread(start_mosquitto, workdir, port, persistence=cand.persistence)
    try:
        sub = _Subscriber(port, slow_ack_rate if scenario == "slow" else None)
        await sub.connect()
        if scenario == "offline":
            await sub.close()
        log_at, cpu_at = _log_size(broker), _cpu_s(broker)
        kill_at = rng.randint(n // 4, 3 * n // 4) if crash else None
        pub = await _publish(
            port,
            n,
            rate=rate,
            kill_at=kill_at,
            broker=broker,
            max_s=max_s,
            progress=progress,
            label=label,
        )
        result.sent, result.acked = pub.sent, len(pub.acked)
        result.kill_at, result.capped = pub.kill_at, pub.capped
        result.publish_s = pub.seconds
        result.rate = len(pub.acked) / pub.seconds if pub.seconds else 0.0
        result.broker_cpu_s = pub.broker_cpu_s - cpu_at
        if crash:
            result.saves = _saves_since(broker, log_at)
            result.db_bytes = _db_bytes(workdir)
            result.delivered_before_crash = len(sub.seen)
            await sub.close()
            began = time.perf_counter()
            broker = await asyncio.to_thread(
                start_mosquitto, workdir, port, persistence=cand.persistence
            )
            result.restart_s = time.perf_counter() - began
            after = _Subscriber(port, None)
            after.seen = sub.seen
            result.session_present = await after.connect()
            await after.drain(pub.acked)
            await after.close()
            seen = after.seen
        else:
            result.saves = _saves_since(broker, log_at)
            result.db_bytes = _db_bytes(workdir)
            if scenario == "offline":
                sub = _Subscriber(port, None)
                result.session_present = await sub.connect()
            else:
                sub.catch_up()
            await sub.drain(pub.acked)
            await sub.close()
            seen = sub.seen
        result.delivered = len(seen)
        result.lost = len(pub.acked - seen)
        result.unacked_delivered = len(seen - pub.acked)
    finally:
        await asyncio.to_thread(broker.stop)
    _log(
        progress,
        f"    {result.acked:,} acked at {result.rate:,.0f} msg/s, {result.saves:,} saves, "
        f"{result.lost:,} lost, session kept: {result.session_present}",
    )
    return result


async def _save_cost(queued: int, workdir: Path, progress: bool) -> SaveCost:
    """Queue `queued` messages for an offline session, then time forced saves (SIGUSR1):
    from the signal to the rename of the new database over the old one. The broker serves
    nobody meanwhile (one thread)."""
    _log(progress, f"  save cost with {queued:,} queued messages")
    port = free_port()
    broker = await asyncio.to_thread(
        start_mosquitto, workdir, port, persistence=("persistence true", "autosave_interval 0")
    )
    db = workdir / "data" / "mosquitto.db"
    try:
        sub = _Subscriber(port, None)
        await sub.connect()
        await sub.close()
        await _publish(
            port,
            queued,
            rate=None,
            kill_at=None,
            broker=broker,
            max_s=600.0,
            progress=progress,
            label=f"queueing {queued:,}",
        )
        samples: list[float] = []
        for _ in range(3):
            # the broker clears its flag after the rename: a signal sent at once is lost
            await asyncio.sleep(0.2)
            samples.append(_time_save(broker, db))
        return SaveCost(queued, _db_bytes(workdir), 1000 * statistics.median(samples))
    finally:
        await asyncio.to_thread(broker.stop)


def _time_save(broker: ManagedProcess, db: Path) -> float:
    """Seconds from the new database file's creation to its rename over the old one.

    The broker may notice SIGUSR1 only when its poll times out (up to 100 ms later), so
    the clock starts when `mosquitto.db.new` appears, not at the signal (busy polling)."""
    new = db.with_name(db.name + ".new")
    before = _inode(db)
    os.kill(broker.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 120
    began: float | None = None
    while True:
        now = time.perf_counter()
        if began is None and new.exists():
            began = now
        if _inode(db) != before:
            return now - (began if began is not None else now)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no save within 120 s of SIGUSR1; log {broker.log}")


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return 0


# -- the bench ------------------------------------------------------------------------------


def run_once(
    workdir: Path,
    *,
    crash: bool,
    persistence: Sequence[str] = BROKER_PERSISTENCE,
    scenario: str = "offline",
    messages: int = 20_000,
    slow_ack_rate: float = 5_000.0,
    seed: int = 1,
    max_s: float = 20.0,
) -> RunResult:
    """One run of one setting (by default the stack's own) and traffic shape, flat out."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario {scenario!r} is not one of {SCENARIOS}")
    cand = Candidate(_short(persistence), tuple(persistence))
    return asyncio.run(
        _run(
            cand,
            scenario,
            crash,
            n=messages,
            rate=None,
            slow_ack_rate=slow_ack_rate,
            rng=random.Random(seed),
            workdir=workdir,
            max_s=max_s,
            progress=False,
        )
    )


def run_broker_bench(
    *,
    messages: int = 20_000,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    scenarios: Sequence[str] = SCENARIOS,
    trials: int = 1,
    rate: float | None = None,
    slow_ack_rate: float = 5_000.0,
    queue_sizes: Sequence[int] = (10_000, 100_000),
    max_s: float = 20.0,
    seed: int = 1,
    workdir: Path | None = None,
    progress: bool = True,
) -> BrokerBench:
    """Crash and cost runs for every candidate and scenario, then save time vs queue."""
    cands = [stack_candidate(), *(candidate(spec) for spec in candidates)]
    seen_lines: set[tuple[str, ...]] = set()
    unique = []
    for cand in cands:
        if cand.persistence not in seen_lines:
            seen_lines.add(cand.persistence)
            unique.append(cand)
    bench = BrokerBench(messages, rate, slow_ack_rate, seed, mosquitto=_mosquitto_version())
    rng = random.Random(seed)
    with contextlib.ExitStack() as stack:
        root = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gw-bb-")))
        counter = 0
        for cand in unique:
            for scenario in scenarios:
                for crash in (False, *([True] * trials)):
                    counter += 1
                    bench.runs.append(
                        asyncio.run(
                            _run(
                                cand,
                                scenario,
                                crash,
                                n=messages,
                                rate=rate,
                                slow_ack_rate=slow_ack_rate,
                                rng=rng,
                                workdir=root / f"run-{counter:03d}",
                                max_s=max_s,
                                progress=progress,
                            )
                        )
                    )
        for i, queued in enumerate(queue_sizes):
            bench.save_costs.append(asyncio.run(_save_cost(queued, root / f"save-{i}", progress)))
    return bench


def _mosquitto_version() -> str:
    try:
        out = subprocess.run(
            [MOSQUITTO_BIN, "-h"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "?"


def format_bench(bench: BrokerBench) -> str:
    """The tables for a terminal (and for docs/broker-durability.md)."""
    pace = f"paced at {bench.rate:,.0f} msg/s" if bench.rate else "flat out"
    lines = [
        f"{bench.mosquitto}; {bench.messages:,} QoS 1 messages of {PAYLOAD_BYTES} B, {pace}; "
        f"slow subscriber acks {bench.slow_ack_rate:,.0f} msg/s; seed {bench.seed}",
        "",
        "Cost (no crash): publish throughput, broker CPU, saves, database size; every "
        "message delivered?",
        "",
        "| setting | session | msg/s | broker CPU s (busy %) | saves | db MB | delivered |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for run in bench.runs:
        if run.crashed:
            continue
        cap = " (time cap)" if run.capped else ""
        lines.append(
            f"| {run.candidate} | {run.scenario} | {run.rate:,.0f}{cap} | "
            f"{run.broker_cpu_s:.2f} ({run.busy_pct:.0f} %) | {run.saves:,} | "
            f"{run.db_bytes / 1e6:.1f} | "
            f"{run.delivered:,}/{run.acked:,} ({run.lost} lost) |"
        )
    if not any(run.crashed for run in bench.runs):
        lines.append("")
        lines.append("(no crash runs: --trials 0)")
    else:
        lines += _crash_table(bench)
    if bench.save_costs:
        lines += [
            "",
            "One save (SIGUSR1) against the queue it rewrites",
            "",
            "| queued messages | db MB | save ms |",
            "|---:|---:|---:|",
        ]
        lines += [
            f"| {c.queued:,} | {c.db_bytes / 1e6:.1f} | {c.save_ms:,.1f} |"
            for c in bench.save_costs
        ]
    return "\n".join(lines)


def _crash_table(bench: BrokerBench) -> list[str]:
    lines = [
        "",
        "SIGKILL mid-stream, restart on the same directory: acked by the broker but never "
        "delivered",
        "",
        "| setting | session | killed after (acked) | session kept | lost | lost % | "
        "delivered | saves before kill | restart s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for run in bench.runs:
        if not run.crashed:
            continue
        lines.append(
            f"| {run.candidate} | {run.scenario} | {run.acked:,} | "
            f"{'yes' if run.session_present else 'NO'} | {run.lost:,} | {run.lost_pct:.1f} | "
            f"{run.delivered:,} | {run.saves:,} | {run.restart_s or 0.0:.2f} |"
        )
    return lines
