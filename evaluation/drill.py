"""`gridwatch drill alarm-path`: the live alarm path under faults, against itself and the harness.

One simulated stream (a site's background traffic with incident scenarios, the stream
`gridwatch simulate --scenario ...` publishes) is decided three times:

- **uninterrupted**: a private Mosquitto, the hub as a separate process (`python -m hub
  run --config FILE`, like `gridwatch bench ingest`) and the stream published into the
  broker at QoS 1 as fast as it takes it, nothing disturbed;
- **faulted**: the same, but the hub is SIGKILLed `kills` times at random points of its
  progress through the stream (and started again after a short random pause), the
  broker is SIGKILLed once and started again on the same port and persistence
  directory, and InfluxDB is stopped for `influx_outage_s`;
- **harness**: `evaluation.rules_eval.run_rules` on the same messages, in stream order,
  without ticks between messages (`tick_ms=None`: its model of a hub fed faster than
  real time, which is how the drill feeds the hubs), then the default anomaly scoring
  (`decide_anomaly`) on the same stream: the hubs run with default settings, so both.

Then the events are compared (id, rule, key, raise time, the audit trail's actions and
times, count), up to the last message's simulated time: after the stream ends a live hub
logs idle ticks that the harness never sees (and with a stream in the past they carry
event time up to the wall clock), so what anyone decides after that instant is left
out, and the report says so. InfluxDB's point counts per measurement and field are
compared too (nothing lost, nothing extra).

Diagnosis. After each live run the drill reads the hub's own log (the spool: the drill's
hubs keep it in one segment, so nothing is deleted), counts it against the stream
(readings lost, logged twice, foreign, late; ticks) and replays it through a fresh
`RulesService` and anomaly scoring: if the replay decides exactly what the hub stored,
the hub's events are a function of its log, and any difference between runs is a
difference between their logs, which the report shows.

Simulated time. The stream is placed in the FUTURE by default (the next Monday 00:00
UTC at least an hour away; `hub.max_future_s` is raised in the drill's hub config): the
hub logs clock ticks at wall clock minus 2 s whenever its input is idle (at start-up,
around a broker restart), and a tick ahead of an accelerated stream would move event
time hours ahead of the readings. A stream in the future keeps every tick behind the
readings, where it changes nothing. An explicit past `start` is allowed, and the report
then warns that ticks may interfere.

Broker restart. Mosquitto PUBACKs a publisher on receipt and saves its queues every
`autosave_interval` (30 s in devstack): a SIGKILL loses what it acked since then and has
not yet handed to the hub. That loss is the broker's, not the hub's, so the drill pauses
the publisher, waits until the hub has logged everything published so far, and only
then kills the broker; the hub's own crash paths (kills while the broker queues a
backlog, redeliveries of unacked messages) are exercised by the hub kills.

Disk full (`disk_full_s` > 0). The faulted run's spool lives on a small tmpfs of its
own (root only); once a random share of the stream is published, another writer keeps
the tmpfs full to the last byte (taking whatever the spool frees) for `disk_full_s`,
and then it is enlarged. The spool then starts new segments and frees old ones, so the
run's log is no longer whole and its analysis covers what is left. The hub must stay up,
stop acknowledging (the broker keeps the backlog), say so (`storage_error`, a health
event), and resume by itself; the run must still decide and store exactly what the
uninterrupted one did. The report gives the measured recovery times: the hub's
reconnect after the broker's return, its first InfluxDB write after InfluxDB's, and its
first acknowledged batch after the disk's enlargement.

Publisher. The messages are those of `simulators.scenarios.run_scenarios`, published by
the drill's own small publisher (`_Publisher`), not by `simulators.publish.Simulation`:
the drill must hold the stream around the broker restart, and publish exactly the
stream (Simulation adds closing statuses and, per device, re-announcements), and
Simulation's gateway mode livelocks when its broker dies under a full window (see
`_Link`). `gateways=1` (the default) publishes the whole site over one MQTT
connection, so the hub receives messages in the order the harness reads them (MQTT
orders messages per connection only). `gateways=0` is `gridwatch simulate`'s default,
one connection per device: the broker then interleaves the devices' connections as it
reads them, and the log shows how many readings arrived after a later one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy.exc import SQLAlchemyError

from anomaly.baselines import OnlineParams, OnlineScorer
from broker.client import MQTT_V5, MQTT_V311, ConnectionLost, ConnectOptions, MqttClient
from detection.anomaly_service import AnomalyService
from detection.rules_service import CHUNK, HUB_HEALTH_RULES, RulesService
from devstack.nats import start_nats
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
from devstack.tmpfs import SmallDisk
from evaluation.rules_eval import HASH_KEY, TICK_MS, run_rules
from events.manager import EventManager
from events.model import Action
from events.store import EventStore
from ingest.decode import Decoder
from ingest.influxql import InfluxQLError, QueryTarget, query
from ingest.records import Record, Tick
from ingest.spool import Cursor, Spool
from ingest.status import read_status
from rules.engine import Engine
from rules.schema import Rule, load_rules
from rules.site_directory import directory_from_sites
from sensors.base import HUB_STATS, SECURITY_EVENT, STATUS, DecodeContext, Reading, keyed_hash
from sensors.registry import KINDS
from simulators.engine import SimMessage
from simulators.publish import gateway_of
from simulators.scenarios import SCENARIOS, ScenarioError, run_scenarios
from sites.model import Site, load_site_ref

Say = Callable[[str], None]
Store = Literal["sqlite", "postgresql"]

HUB_CLIENT_ID: Final = "drill-hub"
STATUS_INTERVAL_S: Final = 0.1
"""The drill's hubs rewrite their status file this often (progress, kill points)."""
SETTLE_S: Final = 2.0
"""The hub counts as done once nothing moved for this long after the stream."""
DISK_BYTES: Final = 256 << 20
"""The faulted run's spool tmpfs (and what enlarging it adds): the drill keeps the whole
log in one segment, a few hundred bytes a message."""
STALL_S: Final = 180.0
"""A run fails when the hub's progress has not moved for this long."""
KILL_PAUSE_S: Final = (0.2, 2.0)
"""A killed hub starts again after a random pause in this range."""
BROKER_DOWN_S: Final = (0.5, 2.0)
"""The broker stays down for a random time in this range."""
NATS_ACK_WAIT_S: Final = 5.0
"""On NATS, what a killed hub received but never acknowledged comes back `ack_wait` after
it was first sent (30 s by default), not at the hub's reconnect: shorter here, so the
drill's settle wait stays short. The same redelivery, sooner."""
RESUME_MARGIN_S: Final = 1.0
"""`mqtt.resume_wait_s` on NATS is `ack_wait` and this: a hub is last seen in its status
file, written every `STATUS_INTERVAL_S`, before it dies (docs/scaling.md)."""
FUTURE_LEAD: Final = timedelta(hours=1)
_PLAIN: Final = (b"online", b"offline")
"""Status payloads as plain text (last wills): no device time."""
SHOWN: Final = 20
"""Differences listed per comparison in the text report (the JSON has them all)."""
COMPARED_ACTIONS: Final = frozenset({Action.RAISE, Action.REPEAT})
"""Audit actions that make up an event's count."""


class DrillError(Exception):
    """The drill could not run (a service or the hub failed, a run stalled)."""


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class DrillOptions:
    duration_s: float = 40 * 3600.0
    seed: int = 3
    kills: int = 5
    broker_restart: bool = True
    influx_outage_s: float = 60.0
    store: Store = "sqlite"
    site: str = "yingyang"
    scenarios: tuple[str, ...] = ()
    """Scenario names; empty: all of them."""
    gateways: int = 1
    """MQTT connections the publisher uses; 0: one per device (`gridwatch simulate`'s)."""
    start: datetime | None = None
    """Simulated start; None: the next Monday 00:00 UTC at least an hour away."""
    fault_seed: int | None = None
    """Seeds the fault times and pauses; None: `seed`."""
    disk_full_s: float = 0.0
    """Fill the faulted run's spool disk mid-stream for this long (0: no disk fault)."""
    broker: str = "mosquitto"
    """"mosquitto", or "nats" (NATS 2.9's MQTT 3.1.1 on JetStream, the second broker)."""
    workdir: Path | None = None
    """Kept after the run when given (logs, configs, spools, stores); else a temp dir."""


def default_start(now: datetime | None = None) -> datetime:
    """The next Monday 00:00 UTC at least `FUTURE_LEAD` from now: in the future (so the
    hub's idle ticks stay behind the stream), on the weekday and hour `gridwatch rules
    evaluate` starts on by default (so the same seed plays the same incidents)."""
    now = now or datetime.now(UTC)
    day = (now + FUTURE_LEAD).replace(hour=0, minute=0, second=0, microsecond=0)
    if day < now + FUTURE_LEAD:
        day += timedelta(days=1)
    return day + timedelta(days=(7 - day.weekday()) % 7)


# --------------------------------------------------------------------------- the stream


@dataclass(frozen=True, slots=True)
class Stream:
    site: Site
    messages: list[SimMessage]
    start: datetime
    duration_s: float
    scenarios: tuple[str, ...]
    labels: int

    @property
    def first_ms(self) -> int:
        return self.messages[0].sim_ms

    @property
    def cutoff_ms(self) -> int:
        """The last message's simulated time: events are compared up to here."""
        return max(m.sim_ms for m in self.messages)

    def untimed(self) -> list[SimMessage]:
        """Messages without a device time (plain-text `online`/`offline`, as wills are):
        the hub stamps these with its clock at receipt, the harness with simulated time."""
        return [m for m in self.messages if m.channel == STATUS and m.payload.strip() in _PLAIN]


def build_stream(options: DrillOptions, start: datetime) -> Stream:
    """The site's traffic with the scenarios applied (`simulators.scenarios`)."""
    site = load_site_ref(options.site)
    names = options.scenarios or tuple(SCENARIOS)
    try:
        messages, labels = run_scenarios(
            site, names, start=start, duration_s=options.duration_s, seed=options.seed
        )
    except ScenarioError as exc:
        raise DrillError(f"scenario: {exc}") from exc
    if not messages:
        raise DrillError("the scenarios produced no messages")
    return Stream(site, messages, start, options.duration_s, tuple(names), len(labels))


def expected_points(stream: Stream) -> Counter[str]:
    """Points per measurement the stream should leave in InfluxDB (the harness's decode)."""
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: keyed_hash(HASH_KEY, v)))
    out: Counter[str] = Counter()
    for message in stream.messages:
        decoded = decoder.decode(message.topic, message.payload, message.sim_ms * 1_000_000)
        if isinstance(decoded, Reading):
            out[decoded.measurement] += 1
    return out


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Decision:
    """What the alarm path decided about one event, up to the cutoff."""

    id: str
    rule_id: str
    key: str
    device: str | None
    raised_ms: int
    trail: tuple[tuple[str, int], ...]
    """(action, at_ms) of every audit record up to the cutoff, in order."""
    count: int
    """Raises and repeats up to the cutoff."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule_id": self.rule_id,
            "key": self.key,
            "device": self.device,
            "raised_ms": self.raised_ms,
            "trail": [list(t) for t in self.trail],
            "count": self.count,
        }

    def describe(self) -> str:
        trail = ", ".join(f"{action}@{_iso(at)}" for action, at in self.trail)
        return (
            f"{self.rule_id} key={self.key} raised {_iso(self.raised_ms)} "
            f"count {self.count} [{trail}] (id {self.id[:12]})"
        )


def read_decisions(store_url: str, cutoff_ms: int) -> dict[str, Decision]:
    """Every event raised up to the cutoff, with its audit trail up to the cutoff (the
    hub's health events aside: `read_health`)."""
    out: dict[str, Decision] = {}
    with EventStore(store_url) as store:
        for event in store.list_events(limit=1_000_000):
            if event.raised_ms > cutoff_ms or event.rule_id in HUB_HEALTH_RULES:
                continue
            trail = [r for r in store.audit_trail(event.id) if r.at_ms <= cutoff_ms]
            out[event.id] = Decision(
                event.id,
                event.rule_id,
                event.key,
                event.device,
                event.raised_ms,
                tuple((r.action.value, r.at_ms) for r in trail),
                sum(1 for r in trail if r.action in COMPARED_ACTIONS),
            )
    return out


def read_health(store_url: str) -> dict[str, list[str]]:
    """The hub's health events: `rule/site` -> the actions of its audit trail."""
    out: dict[str, list[str]] = {}
    with EventStore(store_url) as store:
        for event in store.list_events(limit=1_000_000):
            if event.rule_id in HUB_HEALTH_RULES:
                trail = store.audit_trail(event.id)
                out[f"{event.rule_id}/{event.site}"] = [r.action.value for r in trail]
    return out


@dataclass(frozen=True, slots=True)
class Difference:
    kind: Literal["only_left", "only_right", "differs"]
    left: Decision | None
    right: Decision | None

    @property
    def decision(self) -> Decision:
        found = self.left or self.right
        assert found is not None
        return found

    def describe(self, left_name: str, right_name: str) -> str:
        if self.kind == "only_left":
            return f"only in {left_name}: {self.decision.describe()}"
        if self.kind == "only_right":
            return f"only in {right_name}: {self.decision.describe()}"
        assert self.left is not None and self.right is not None
        return (
            f"differs: {left_name}: {self.left.describe()}\n"
            f"         {right_name}: {self.right.describe()}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "left": None if self.left is None else self.left.to_json(),
            "right": None if self.right is None else self.right.to_json(),
        }


def compare_decisions(left: dict[str, Decision], right: dict[str, Decision]) -> list[Difference]:
    """Events one side has and the other lacks, and events both have but decided otherwise."""
    out: list[Difference] = []
    for event_id in sorted(left.keys() | right.keys(), key=lambda i: _order(left, right, i)):
        a, b = left.get(event_id), right.get(event_id)
        if b is None:
            out.append(Difference("only_left", a, None))
        elif a is None:
            out.append(Difference("only_right", None, b))
        elif a != b:
            out.append(Difference("differs", a, b))
    return out


def _order(left: dict[str, Decision], right: dict[str, Decision], event_id: str) -> tuple[int, str]:
    found = left.get(event_id) or right[event_id]
    return found.raised_ms, found.rule_id


# --------------------------------------------------------------------------- InfluxDB


def point_counts(
    target: QueryTarget, events_until_ms: int | None = None
) -> dict[str, dict[str, int]]:
    """Per measurement (hub_stats left out), the count of each field over all time; the
    hub's health events (`read_health`) are left out of security_event, and so are its
    transitions after `events_until_ms` when given."""
    out: dict[str, dict[str, int]] = {}
    not_health = "".join(f" AND \"rule\" != '{rule}'" for rule in sorted(HUB_HEALTH_RULES))
    if events_until_ms is not None:
        not_health += f" AND time <= {int(events_until_ms) * 1_000_000}"
    for series in query(target, "SHOW MEASUREMENTS"):
        for (name,) in series.values:
            if name == HUB_STATS:
                continue
            where = "time > 0" + (not_health if name == SECURITY_EVENT else "")
            # Measurement names come from our own schema; quoted as identifiers.
            q = f'SELECT count(*) FROM "{name}" WHERE {where}'  # noqa: S608
            for found in query(target, q):
                row = found.records()[0]
                # A field the measurement's schema knows but no point in the range has
                # counts null (seen mid-run, while the first points were written).
                out[str(name)] = {
                    k.removeprefix("count_"): int(v)
                    for k, v in row.items()
                    if k != "time" and v is not None
                }
    return out


def points_of(counts: dict[str, int]) -> int:
    """Points of a measurement: its most frequent field's count (seq, online: in every point)."""
    return max(counts.values(), default=0)


# --------------------------------------------------------------------------- processes


WINDOW: Final = 500
"""Outstanding QoS 1 publishes per connection (as `simulators.publish` keeps)."""


class _Link:
    """One MQTT connection of the publisher and its window of publishes awaiting PUBACK.

    Like `simulators.publish._Link`, but a publish written to a connection that is
    already gone (its future failed at once) waits for the reconnect instead of being
    retried on the spot: that retry never yields to the event loop, so the client
    never learns it is disconnected (`docs/alarm-path.md`, findings)."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.pending: deque[tuple[asyncio.Future[None], str, bytes, bool]] = deque()
        self.resent = 0

    async def send(self, topic: str, payload: bytes, retain: bool) -> None:
        while len(self.pending) >= WINDOW:
            await self._settle_oldest()
        await self._publish(topic, payload, retain)

    async def drain(self) -> None:
        while self.pending:
            await self._settle_oldest()

    async def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        while True:
            await self.client.connected.wait()
            try:
                fut = self.client.publish_nowait(topic, payload, qos=1, retain=retain)
            except ConnectionLost:
                fut = None
            if fut is not None and not (fut.done() and fut.exception() is not None):
                self.pending.append((fut, topic, payload, retain))
                return
            await asyncio.sleep(0.01)  # the client's task notices the loss and reconnects

    async def _settle_oldest(self) -> None:
        fut, topic, payload, retain = self.pending.popleft()
        try:
            await fut
        except ConnectionLost:
            self.resent += 1
            await self._publish(topic, payload, retain)


class _Publisher:
    """The stream onto the broker at QoS 1, as fast as it takes it, on a thread and event
    loop of its own: over `gateways` connections (devices spread as `gridwatch simulate
    --gateways` spreads them) or one connection per device (`gateways=0`). Exactly the
    stream's messages, in its order per connection: no wills, no re-announcements, no
    closing statuses. `pause` holds it before the next message once every message so
    far is PUBACKed (so the broker has them all); `resume` lets it go on."""

    def __init__(self, stream: Stream, port: int, gateways: int, protocol: int = MQTT_V5) -> None:
        self._stream = stream
        self._port = port
        self._gateways = gateways
        self._protocol = protocol
        """MQTT version of its connections (NATS speaks only 3.1.1)."""
        self.released = 0
        self.last_sim_ms = 0
        self.resent = 0
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.finished_at = 0.0
        self._held = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hold: asyncio.Event | None = None
        self._go: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="drill-publisher", daemon=True)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 (re-raised by `join`)
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self.done.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._hold, self._go = asyncio.Event(), asyncio.Event()
        # The stream's devices, of however many sites it holds, in order of appearance.
        devices = list(dict.fromkeys(m.device_id for m in self._stream.messages))
        if self._gateways:
            names = [f"drill-pub-{i}" for i in range(self._gateways)]
            link_index = {d: gateway_of(d, self._gateways) for d in devices}
        else:
            names = devices
            link_index = {d: i for i, d in enumerate(devices)}
        links = [_Link(self._client(name)) for name in names]
        runners = [asyncio.create_task(link.client.run()) for link in links]
        try:
            async with asyncio.timeout(30):
                for link in links:
                    await link.client.connected.wait()
            for n, message in enumerate(self._stream.messages, start=1):
                if self._hold.is_set():
                    for link in links:
                        await link.drain()
                    self._held.set()
                    await self._go.wait()
                    self._go.clear()
                    self._held.clear()
                await links[link_index[message.device_id]].send(
                    message.topic, message.payload, message.retain
                )
                self.last_sim_ms, self.released = message.sim_ms, n
                if n % 256 == 0:
                    await asyncio.sleep(0)  # let PUBACKs and reconnects in
            for link in links:
                await link.drain()
        finally:
            self.resent = sum(link.resent for link in links)
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)

    def _client(self, client_id: str) -> MqttClient:
        return MqttClient(
            "127.0.0.1",
            self._port,
            ConnectOptions(
                client_id=client_id,
                clean_start=True,
                session_expiry_s=0,
                protocol=self._protocol,
            ),
            subscriptions=[],
            on_publish=lambda *_: None,
            reconnect_min_s=0.1,
            reconnect_max_s=1.0,
            log_connects=False,
        )

    def pause(self, timeout_s: float = 60.0) -> bool:
        """Hold before the next message, everything so far PUBACKed; False when the
        stream ran out first."""
        loop, hold = self._loop, self._hold
        if loop is None or hold is None:
            raise DrillError("the publisher is not running")
        loop.call_soon_threadsafe(hold.set)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._held.wait(0.05):
                return True
            if self.released >= len(self._stream.messages) or self.done.is_set():
                return False
        raise DrillError(f"the publisher did not pause within {timeout_s:.0f} s")

    def resume(self) -> None:
        loop, hold, go = self._loop, self._hold, self._go
        if loop is not None and hold is not None and go is not None:
            loop.call_soon_threadsafe(hold.clear)
            loop.call_soon_threadsafe(go.set)

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise DrillError(f"the publisher did not finish within {timeout_s:.0f} s")
        if self.error is not None:
            raise DrillError(f"the publisher failed: {self.error!r}") from self.error


class _Hub:
    """The hub as a separate process with the drill's config; SIGKILL and start again."""

    def __init__(self, config: Path, data_dir: Path, log: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.last_statuses: list[dict[str, Any]] = []
        """The last status each killed process wrote (its counters die with it)."""

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "hub", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.starts += 1

    @property
    def pid(self) -> int:
        return 0 if self.popen is None else self.popen.pid

    def status(self) -> dict[str, Any]:
        """This process's last status (empty until it wrote one)."""
        try:
            found = read_status(self.data_dir) or {}
        except (OSError, ValueError):
            return {}
        return found if found.get("pid") == self.pid else {}

    def check_alive(self) -> None:
        if self.popen is not None and (code := self.popen.poll()) is not None:
            raise DrillError(f"the hub exited with code {code}; log {self.log}:\n{self.tail()}")

    def wait_connected(self, timeout_s: float = 60.0, *, after_reconnects: int = -1) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            status = self.status()
            if status.get("connected") and int(status.get("reconnects", 0)) > after_reconnects:
                return
            if time.monotonic() > deadline:
                raise DrillError(
                    f"the hub did not connect within {timeout_s:.0f} s; log {self.log}:\n"
                    + self.tail()
                )
            time.sleep(0.02)

    def wait_started(self, timeout_s: float = 60.0) -> None:
        """Until this process has written its first status."""
        deadline = time.monotonic() + timeout_s
        while not self.status():
            self.check_alive()
            if time.monotonic() > deadline:
                raise DrillError(f"the hub did not start within {timeout_s:.0f} s; log {self.log}")
            time.sleep(0.01)

    def kill(self) -> None:
        assert self.popen is not None
        self.last_statuses.append(self.status())
        self.popen.kill()
        self.popen.wait()

    def stop(self) -> None:
        """SIGTERM (the hub persists, decides and flushes what it holds), SIGKILL after 60 s."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise DrillError(f"the hub ignored SIGTERM for 60 s; log {self.log}") from None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_count(self, pattern: str) -> int:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return 0
        return len(re.findall(pattern, text))


def hub_config(
    path: Path,
    *,
    mqtt_port: int,
    influx_port: int,
    database: str,
    run_dir: Path,
    store_url: str | None,
    stream: Stream,
    sites: Sequence[str] = (),
    extra: str = "",
    mqtt_protocol: str | None = None,
    mqtt_extra: str = "",
) -> Path:
    """The default settings but for ports, paths, a fast status file, the harness's
    credential-hash key (rule keys name card and plate hashes) and time limits wide
    enough for the simulated span (its readings are hours ahead of, or behind, the wall
    clock). The API is off: it decides nothing."""
    now_s = time.time()
    end_s = stream.start.timestamp() + stream.duration_s
    max_future_s = max(300.0, end_s - now_s + 86_400.0)
    max_age_s = max(30 * 86_400.0, now_s - stream.start.timestamp() + 86_400.0)
    text = (
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\nclient_id = "{HUB_CLIENT_ID}"\n'
        "reconnect_min_s = 0.1\nreconnect_max_s = 2.0\n"
        + (f'protocol = "{mqtt_protocol}"\n' if mqtt_protocol else "")
        + mqtt_extra
        + f'[influx]\nurl = "http://127.0.0.1:{influx_port}"\ndatabase = "{database}"\n'
        "flush_interval_s = 0.2\nretry_max_s = 2.0\n"
        f'[spool]\ndirectory = "{run_dir / "spool"}"\n'
        # One segment for the whole run: nothing is deleted, the drill reads the log after.
        f"segment_bytes = {1 << 30}\nmax_bytes = {2 << 30}\n"
        f'[deadletters]\ndirectory = "{run_dir / "dead"}"\n'
        f'[hub]\ndata_dir = "{run_dir / "data"}"\n'
        f"status_interval_s = {STATUS_INTERVAL_S}\n"
        'log_level = "INFO"\n'
        f'credential_hash_key = "{HASH_KEY.decode()}"\n'
        f"max_future_s = {max_future_s:.0f}\nmax_age_s = {max_age_s:.0f}\n"
        "[events]\n"
        + (f'store_url = "{store_url}"\n' if store_url else "")
        + (f"sites = {json.dumps(list(sites))}\n" if sites else "")
        + "[api]\nenabled = false\n"
        + extra
    )
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- PostgreSQL


# --------------------------------------------------------------------------- one live run


@dataclass(slots=True)
class LiveRun:
    name: str
    decisions: dict[str, Decision]
    points: dict[str, dict[str, int]]
    wall_s: float
    publish_s: float
    faults: list[str] = field(default_factory=list)
    hub_starts: int = 1
    duplicates: int = 0
    """Redelivered readings the hub recognised (summed over its processes' last statuses)."""
    restored: int = 0
    """Rules restarts that restored a committed engine state (log lines)."""
    redecided: int = 0
    """Rules restarts that decided the log again up to the committed position (log lines)."""
    resent: int = 0
    """Publishes the publisher sent again after its connection dropped."""
    untimed_points: int = 0
    """device_status points stamped with the hub's clock (outside the simulated span)."""
    log: LogAnalysis | None = None
    records: list[Record] = field(default_factory=list)
    """The hub's log, record by record."""
    recovery_s: dict[str, float] = field(default_factory=dict)
    """Measured recovery times by fault (`_Run.recovery_s`)."""
    health: dict[str, list[str]] = field(default_factory=dict)
    """The hub's own health events (storage, session): id -> its audit actions."""

    def summary(self) -> dict[str, Any]:
        return {
            "events": len(self.decisions),
            "wall_s": round(self.wall_s, 1),
            "publish_s": round(self.publish_s, 1),
            "hub_starts": self.hub_starts,
            "duplicates_recognised": self.duplicates,
            "rules_restored_state": self.restored,
            "rules_redecided_to_commit": self.redecided,
            "publisher_resent": self.resent,
            "faults": self.faults,
            "points": {m: points_of(c) for m, c in sorted(self.points.items())},
            "untimed_status_points": self.untimed_points,
            "log": None if self.log is None else self.log.to_json(),
            "recovery_s": {k: round(v, 3) for k, v in self.recovery_s.items()},
            "health_events": self.health,
        }


@dataclass(slots=True)
class Services:
    """What the runs share: a work directory, one InfluxDB, a PostgreSQL server (or
    None: SQLite stores), where progress goes, and a prefix that keeps the drill's
    databases apart from anyone else's on the same servers."""

    work: Path
    influx: ManagedProcess
    postgres_admin: str | None
    say: Say
    prefix: str = "drill"

    def influx_target(self, database: str) -> QueryTarget:
        return QueryTarget(f"http://127.0.0.1:{self.influx.port}", database)

    def database(self, name: str) -> str:
        return f"{self.prefix}_{name}"


@dataclass(slots=True)
class FaultPlan:
    kill_at_ms: list[int]
    """Kill the hub once its event time passes each of these."""
    broker_at: int | None
    """Restart the broker once this many messages were released."""
    influx_at: int | None
    """Stop InfluxDB once this many messages were released."""
    influx_outage_s: float
    rng: random.Random
    disk_full_at: int | None = None
    """Fill the spool's disk once this many messages were released ..."""
    disk_full_s: float = 0.0
    """... for this long, then enlarge it."""


def plan_faults(options: DrillOptions, stream: Stream) -> FaultPlan:
    rng = random.Random(options.seed if options.fault_seed is None else options.fault_seed)
    span = stream.cutoff_ms - stream.first_ms
    kills = sorted(
        stream.first_ms + round(rng.uniform(0.03, 0.97) * span) for _ in range(options.kills)
    )
    n = len(stream.messages)
    broker_at = round(rng.uniform(0.25, 0.75) * n) if options.broker_restart else None
    influx_at = round(rng.uniform(0.05, 0.5) * n) if options.influx_outage_s > 0 else None
    disk_at = round(rng.uniform(0.2, 0.6) * n) if options.disk_full_s > 0 else None
    return FaultPlan(
        kills, broker_at, influx_at, options.influx_outage_s, rng, disk_at, options.disk_full_s
    )


class _Run:
    """One live run: a fresh broker, the hub, the publisher (and, when faulted, the faults)."""

    def __init__(
        self,
        name: str,
        services: Services,
        stream: Stream,
        options: DrillOptions,
        faults: FaultPlan | None,
    ) -> None:
        self.name = name
        self.services = services
        self.stream = stream
        self.options = options
        self.plan = faults
        self.dir = services.work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.database = services.database(name)
        self.store_url: str
        if services.postgres_admin is not None:
            self.store_url = create_database(services.postgres_admin, self.database)
        else:
            self.store_url = f"sqlite:///{self.dir / 'data' / 'events.db'}"
        self.disk: SmallDisk | None = None
        if faults is not None and faults.disk_full_at is not None:
            self.disk = SmallDisk(self.dir / "spool", DISK_BYTES)
        self.nats = options.broker == "nats"
        self.broker = self._start_broker(free_port())
        config = hub_config(
            self.dir / "hub.toml",
            mqtt_port=self.broker.port,
            influx_port=services.influx.port,
            database=self.database,
            run_dir=self.dir,
            store_url=self.store_url if services.postgres_admin is not None else None,
            stream=stream,
            mqtt_protocol="3.1.1" if self.nats else None,
            # NATS re-sends what a killed hub left unacked only after ack_wait: the hub
            # connects once that has run out, so the re-sent come before newer messages.
            mqtt_extra=(
                f"resume_wait_s = {NATS_ACK_WAIT_S + RESUME_MARGIN_S}\n" if self.nats else ""
            ),
        )
        self.hub = _Hub(config, self.dir / "data", self.dir / "hub.log")
        self.faults: list[str] = []
        self.recovery_s: dict[str, float] = {}
        """Measured recovery times (s): `broker` (hub reconnected after the broker
        accepted again), `influx` (first write after InfluxDB was back), `disk` (first
        acknowledged batch after the disk was enlarged)."""
        self._influx_timer: threading.Thread | None = None
        self._disk_timer: threading.Thread | None = None
        self._t0 = time.monotonic()

    def _start_broker(self, port: int) -> ManagedProcess:
        """A broker on `port` with its persistence in the run's directory: a restart on
        the same directory recovers the sessions and queues it stored."""
        if self.nats:
            return start_nats(self.dir / "nats", port, ack_wait_s=NATS_ACK_WAIT_S)
        return start_mosquitto(self.dir / "mosquitto", port)

    def say(self, text: str) -> None:
        self.services.say(f"  [{self.name} +{time.monotonic() - self._t0:5.1f}s] {text}")

    def note(self, text: str) -> None:
        self.faults.append(f"+{time.monotonic() - self._t0:.1f}s {text}")
        self.say(text)

    def run(self) -> LiveRun:
        try:
            return self._run()
        finally:
            if self.disk is not None:
                self.disk.close()

    def _run(self) -> LiveRun:
        protocol = MQTT_V311 if self.nats else MQTT_V5
        publisher = _Publisher(self.stream, self.broker.port, self.options.gateways, protocol)
        try:
            self.hub.start()
            self.hub.wait_connected()
            self._t0 = time.monotonic()
            publisher.start()
            self.say(f"publishing {len(self.stream.messages):,} messages")
            self._drive(publisher)
            publisher.join(STALL_S)
            self.say(
                f"publisher done in {publisher.finished_at - publisher.started_at:.1f} s; "
                "waiting for the hub to decide and store everything"
            )
            self._wait_settled()
            for timer in (self._influx_timer, self._disk_timer):
                if timer is not None:
                    timer.join()
            self.hub.stop()
            wall_s = time.monotonic() - self._t0
        finally:
            if self.hub.popen is not None and self.hub.popen.poll() is None:
                self.hub.popen.kill()
                self.hub.popen.wait()
            self.broker.stop()
        points = self._settled_points()
        records, whole = read_log(self.dir / "spool")
        decisions = read_decisions(self.store_url, self.stream.cutoff_ms)
        analysis = analyse_log(self.stream, records, whole)
        if whole:
            self.say(
                f"replaying the hub's log ({len(records):,} records) through RulesService "
                "and the anomaly scoring"
            )
            url = self._store(f"{self.name}_replay")
            decide(self.stream.site, records, load_rules(()), url)
            everything = 1 << 62
            same = read_decisions(url, everything) == read_decisions(self.store_url, everything)
            analysis = replace(analysis, replay_identical=same)
        return LiveRun(
            name=self.name,
            decisions=decisions,
            points=points,
            wall_s=wall_s,
            publish_s=publisher.finished_at - publisher.started_at,
            faults=self.faults,
            hub_starts=self.hub.starts,
            duplicates=sum(int(s.get("duplicates", 0)) for s in self.hub.last_statuses)
            + int((read_status(self.hub.data_dir) or {}).get("duplicates", 0)),
            restored=self.hub.log_count(r"rules: resumed"),
            redecided=self.hub.log_count(r"rules: re-decided"),
            resent=publisher.resent,
            untimed_points=self._untimed_points(),
            log=analysis,
            records=records,
            recovery_s=self.recovery_s,
            health=read_health(self.store_url),
        )

    def _store(self, name: str) -> str:
        """A fresh event store for offline decisions of this run."""
        if self.services.postgres_admin is not None:
            return create_database(self.services.postgres_admin, self.services.database(name))
        (self.dir / name).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.dir / name / 'events.db'}"

    # -- the faults ----------------------------------------------------------------
    def _drive(self, publisher: _Publisher) -> None:
        """Until the stream is published: inject the faults when they fall due."""
        plan = self.plan
        last_report = 0.0
        progress, moved = (-1, -1), time.monotonic()
        while not publisher.done.is_set() or (plan is not None and plan.kill_at_ms):
            self.hub.check_alive()
            status = self.hub.status()
            watermark = int(status.get("rules_watermark_ms") or 0)
            if (publisher.released, watermark) != progress:
                progress, moved = (publisher.released, watermark), time.monotonic()
            elif time.monotonic() - moved > STALL_S:
                raise DrillError(
                    f"{self.name}: neither the publisher nor the hub moved for {STALL_S:.0f} s "
                    f"({publisher.released:,} released, hub at {_iso(watermark)}); "
                    f"log {self.hub.log}:\n{self.hub.tail()}"
                )
            if plan is not None:
                if plan.disk_full_at is not None and publisher.released >= plan.disk_full_at:
                    plan.disk_full_at = None
                    self._fill_disk(plan.disk_full_s)
                if plan.influx_at is not None and publisher.released >= plan.influx_at:
                    plan.influx_at = None
                    self._influx_outage(plan.influx_outage_s)
                if plan.broker_at is not None and publisher.released >= plan.broker_at:
                    plan.broker_at = None
                    self._restart_broker(publisher, plan.rng)
                elif plan.kill_at_ms and watermark >= plan.kill_at_ms[0]:
                    plan.kill_at_ms.pop(0)
                    self._kill_hub(plan.rng, watermark)
                    continue
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                self.say(
                    f"published {publisher.released:,}/{len(self.stream.messages):,}, hub at "
                    f"{_iso(watermark) if watermark else '-'} "
                    f"({self._fraction(watermark):.0%} of the stream)"
                )
            # Once the stream is out, kills still due happen while the hub catches up.
            time.sleep(0.02)

    def _fraction(self, watermark: int) -> float:
        span = max(1, self.stream.cutoff_ms - self.stream.first_ms)
        return max(0.0, min(1.0, (watermark - self.stream.first_ms) / span))

    def _kill_hub(self, rng: random.Random, watermark: int) -> None:
        pause_s = rng.uniform(*KILL_PAUSE_S)
        self.hub.kill()
        self.note(
            f"SIGKILL hub (event time {_iso(watermark)}, {self._fraction(watermark):.0%} of "
            f"the stream); restart in {pause_s:.1f} s"
        )
        time.sleep(pause_s)
        self.hub.start()
        # Not until connected: a restarted hub re-decides its log first and then drains
        # the backlog, and the next kill point may fall into either.
        self.hub.wait_started()

    def _restart_broker(self, publisher: _Publisher, rng: random.Random) -> None:
        if not publisher.pause():
            self.note("broker restart skipped: the stream ran out first")
            return
        caught_up = self._wait_caught_up(publisher.last_sim_ms)
        reconnects = int(self.hub.status().get("reconnects", 0))
        down_s = rng.uniform(*BROKER_DOWN_S)
        self.broker.kill()
        self.note(
            f"SIGKILL broker after {publisher.released:,} messages (publisher paused, hub "
            f"{'caught up' if caught_up else 'NOT caught up after 60 s'}); down {down_s:.1f} s"
        )
        time.sleep(down_s)
        self.broker = self._start_broker(self.broker.port)
        back = time.monotonic()
        self.hub.wait_connected(after_reconnects=reconnects)
        self.recovery_s["broker"] = time.monotonic() - back
        self.note(
            "broker back on the same port and persistence directory; hub reconnected "
            f"{self.recovery_s['broker']:.2f} s after it accepted connections"
        )
        publisher.resume()

    def _wait_caught_up(self, last_sim_ms: int, timeout_s: float = 60.0) -> bool:
        """Until the hub has logged and evaluated everything published so far."""
        deadline = time.monotonic() + timeout_s
        seen, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            self.hub.check_alive()
            status = self.hub.status()
            received = int(status.get("received", -1))
            if received != seen:
                seen, since = received, time.monotonic()
            elif (
                time.monotonic() - since >= 0.5
                and int(status.get("rules_watermark_ms") or 0) >= last_sim_ms
                and not status.get("rules_lag_records")
            ):
                return True
            time.sleep(0.02)
        return False

    def _influx_outage(self, outage_s: float) -> None:
        influx = self.services.influx
        influx.stop()
        self.note(f"InfluxDB stopped for {outage_s:.0f} s")

        def back() -> None:
            time.sleep(outage_s)
            stored = int(self.hub.status().get("stored", 0))
            self.services.influx = start_influxdb(influx.workdir, influx.port)
            up = time.monotonic()
            self.note("InfluxDB started again")
            waited = self._until(lambda s: int(s.get("stored", 0)) > stored, 60.0)
            if waited is not None:
                self.recovery_s["influx"] = time.monotonic() - up
                self.note(f"hub wrote to InfluxDB again {self.recovery_s['influx']:.2f} s later")

        self._influx_timer = threading.Thread(target=back, name="drill-influx", daemon=True)
        self._influx_timer.start()

    def _until(self, ready: Callable[[dict[str, Any]], bool], timeout_s: float) -> float | None:
        """Poll the hub's status until `ready` says so; the seconds it took, or None."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            status = self.hub.status()
            if status and ready(status):
                return time.monotonic() - started
            time.sleep(0.02)
        return None

    def _fill_disk(self, full_s: float) -> None:
        """Fill the spool's tmpfs; after `full_s`, enlarge it (on a thread)."""
        disk = self.disk
        assert disk is not None
        acked = int(self.hub.status().get("acked", 0))
        disk.hog()  # a runaway file takes whatever the spool frees, until stopped
        self.note(f"spool disk kept full by another writer for {full_s:.0f} s")
        if self._until(lambda s: bool(s.get("storage_error")), 30.0) is None:
            self.note("the hub did not report a storage error within 30 s")
        else:
            status = self.hub.status()
            self.note(
                f"hub stopped acknowledging at {status.get('acked'):,} (from {acked:,}): "
                f"{status.get('storage_error')}"
            )

        def enlarge() -> None:
            time.sleep(full_s)
            disk.stop_hog()
            disk.resize(disk.size + DISK_BYTES)
            grown = time.monotonic()
            self.note(f"spool disk enlarged to {disk.size >> 20} MiB")
            # Writes work again once a retried batch (messages, or a hub_stats point when
            # the stream is already out) is stored: the error clears then.
            waited = self._until(lambda s: not s.get("storage_error"), 60.0)
            if waited is None:
                self.note("the hub did not acknowledge again within 60 s")
            else:
                self.recovery_s["disk"] = time.monotonic() - grown
                self.note(f"hub acknowledging again {self.recovery_s['disk']:.2f} s later")

        self._disk_timer = threading.Thread(target=enlarge, name="drill-disk", daemon=True)
        self._disk_timer.start()

    # -- the end ---------------------------------------------------------------------
    def _wait_settled(self) -> None:
        """Until the hub has evaluated the whole log, stored every line and delivered every
        event transition (its outbox is empty), with nothing moving for `SETTLE_S` (and
        InfluxDB back, when an outage runs). The outbox retries on a backoff of its own
        (up to ~30 s after an outage), so this can take that long."""
        seen: tuple[Any, ...] = ()
        since = moved = time.monotonic()
        last_report = outbox_read = 0.0
        outbox = -1
        while True:
            self.hub.check_alive()
            status = self.hub.status()
            influx_down = any(
                t is not None and t.is_alive() for t in (self._influx_timer, self._disk_timer)
            )
            if time.monotonic() - outbox_read >= 1.0:
                outbox, outbox_read = self._outbox_pending(), time.monotonic()
            state = (
                status.get("received"),
                status.get("stored"),
                status.get("rules_watermark_ms"),
                status.get("rules_commits"),
                status.get("spool_lines"),
                outbox,
            )
            if state != seen:
                seen, since, moved = state, time.monotonic(), time.monotonic()
            done = (
                status.get("connected")
                and int(status.get("rules_watermark_ms") or 0) >= self.stream.cutoff_ms
                and not status.get("rules_lag_records")
                and not status.get("spool_lines")
                and outbox == 0
                and not influx_down
            )
            if done and time.monotonic() - since >= SETTLE_S:
                return
            if time.monotonic() - moved > STALL_S and not influx_down:
                raise DrillError(
                    f"{self.name}: the hub made no progress for {STALL_S:.0f} s "
                    f"(status {json.dumps({k: status.get(k) for k in _PROGRESS})}); "
                    f"log {self.hub.log}"
                )
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                self.say(
                    "hub: "
                    + ", ".join(f"{k} {status.get(k)}" for k in _PROGRESS)
                    + f", outbox {outbox}"
                    + (" (a fault is running)" if influx_down else "")
                )
            time.sleep(0.1)

    def _outbox_pending(self) -> int:
        """Event transitions the hub has not yet handed to its sinks (-1: unreadable)."""
        try:
            with EventStore(self.store_url) as store:
                return sum(store.outbox_pending().values())
        except SQLAlchemyError:
            return -1

    def _settled_points(self) -> dict[str, dict[str, int]]:
        """InfluxDB's counts once two reads a second apart agree."""
        target = self.services.influx_target(self.database)
        last: dict[str, dict[str, int]] | None = None
        deadline = time.monotonic() + 60
        while True:
            try:
                now = point_counts(target)
            except InfluxQLError as exc:
                if time.monotonic() > deadline:
                    raise DrillError(f"cannot count points in {self.database}: {exc}") from exc
                now = {}
            if now and now == last:
                return now
            if time.monotonic() > deadline:
                return now
            last = now
            time.sleep(1.0)

    def _untimed_points(self) -> int:
        """device_status points outside the simulated span: stamped by the hub's clock."""
        target = self.services.influx_target(self.database)
        start_ns = int(self.stream.start.timestamp()) * 1_000_000_000
        end_ns = start_ns + int(self.stream.duration_s * 1e9) + 1
        total = 0
        # InfluxQL takes no OR between time bounds: one query per side of the span.
        for where in (f"time > 0 AND time < {start_ns}", f"time > {end_ns}"):
            try:
                # Our own measurement and integer bounds: nothing from outside.
                q = f'SELECT count("online") FROM "device_status" WHERE {where}'  # noqa: S608
                found = query(target, q)
            except InfluxQLError:
                return -1
            total += int(found[0].values[0][1]) if found and found[0].values else 0
        return total


_PROGRESS: Final = (
    "received",
    "duplicates",
    "stored",
    "spool_lines",
    "rules_lag_records",
    "rules_watermark_ms",
)


def run_live(
    name: str,
    services: Services,
    stream: Stream,
    options: DrillOptions,
    faults: FaultPlan | None = None,
) -> LiveRun:
    """One live run on a fresh broker (`faults`: none, an uninterrupted run)."""
    return _Run(name, services, stream, options, faults).run()


def harness_decisions(
    stream: Stream, store_url: str, *, tick_ms: int | None = None
) -> tuple[dict[str, Decision], int, int]:
    """The harness on the stream (`evaluation.rules_eval.run_rules`, built-in rules):
    its decisions up to the cutoff, the message count and the rejected count.
    `tick_ms=None` (no tick between messages) is the harness's model of a hub fed faster
    than real time, which the drill's hubs are; `TICK_MS` its model of real time."""
    _events, count, rejected = run_rules(
        [stream.site], stream.messages, load_rules(()), store_url=store_url, tick_ms=tick_ms
    )
    decide_anomaly(stream.site, stream_records(stream), store_url)
    return read_decisions(store_url, stream.cutoff_ms), count, rejected


# --------------------------------------------------------------------------- the hub's log


def read_log(spool_dir: Path) -> tuple[list[Record], bool]:
    """Every record of a stopped hub's spool, in log order, and whether the log is whole
    (its first segment is still there: the drill's hubs keep one segment of 1 GiB)."""
    spool = Spool(spool_dir, max_bytes=1 << 40)
    spool.open()
    try:
        position = spool.start_of_log()
        whole = position == Cursor(0, 0)
        records: list[Record] = []
        while (batch := spool.read_records(position, 50_000)) is not None:
            records += batch.records
            position = batch.end
        return records, whole
    finally:
        spool.close()


def stream_records(stream: Stream) -> list[Record]:
    """The stream decoded as the harness decodes it (at the simulated time), in order."""
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: keyed_hash(HASH_KEY, v)))
    return [decoder.decode(m.topic, m.payload, m.sim_ms * 1_000_000) for m in stream.messages]


def decide(site: Site, records: Sequence[Record], rules: Sequence[Rule], store_url: str) -> None:
    """The hub's two detection consumers over records, committing every `CHUNK` (as
    the hub's loops would): `RulesService`, then the default anomaly scoring."""
    directory = directory_from_sites([site])
    with EventStore(store_url) as store:
        store.migrate()
        service = RulesService(Engine(rules, directory), store, EventManager(store, workers={}))
        service.manager.workers = directory.workers()
        for at in range(0, len(records), CHUNK):
            service.step(records[at : at + CHUNK], force=True)
        service.step([], force=True)
    decide_anomaly(site, records, store_url)


def decide_anomaly(site: Site, records: Sequence[Record], store_url: str) -> None:
    """The hub's default anomaly consumer (baselines learned online, `OnlineParams()`:
    the defaults of `[anomaly]`) over records, committing every `CHUNK`. Independent of
    the rules consumer: anomaly events are outside flood control (`events.manager`), so
    the order the two commit in changes nothing."""
    with EventStore(store_url) as store:
        store.migrate()
        manager = EventManager(store, workers=directory_from_sites([site]).workers())
        service = AnomalyService(OnlineScorer(OnlineParams()), manager)
        service.restore()
        for at in range(0, len(records), CHUNK):
            service.step(records[at : at + CHUNK])


ReadingKey = tuple[str, str, int, int | None]
"""(device, channel, ts_ns, seq): one reading, as InfluxDB's point and the dedup see it."""


def _key(reading: Reading) -> ReadingKey:
    return reading.device, reading.channel, reading.ts_ns, reading.seq


@dataclass(frozen=True, slots=True)
class LogAnalysis:
    """A hub's log against the stream it was fed."""

    whole: bool
    records: int
    readings: int
    rejections: int
    ticks: int
    ticks_ahead: int
    """Ticks that moved event time past every reading so far (and past the stream's start)."""
    missing: int
    """Readings of the stream (with a device time) the log lacks: lost."""
    repeated: int
    """Readings logged more than once (same device, channel, time and seq)."""
    extra: tuple[str, ...]
    """Readings not in the stream, as `<device> <channel> <state> (<time>) x<count>`."""
    late: int
    """Readings with a device time logged after a reading with a later one ..."""
    stream_late: int
    """... and as many in the stream's own order (the harness's)."""
    replay_identical: bool | None
    """Replaying the log decides exactly what the hub stored (None: not checked)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "whole": self.whole,
            "records": self.records,
            "readings": self.readings,
            "rejections": self.rejections,
            "ticks": self.ticks,
            "ticks_ahead_of_readings": self.ticks_ahead,
            "stream_readings_missing": self.missing,
            "readings_logged_twice": self.repeated,
            "readings_not_in_stream": list(self.extra),
            "late_readings": self.late,
            "late_readings_in_stream_order": self.stream_late,
            "replay_decides_what_the_hub_stored": self.replay_identical,
        }

    def describe(self) -> str:
        replay = {True: "yes", False: "NO", None: "not checked"}[self.replay_identical]
        return (
            f"{self.records:,} records{'' if self.whole else ' (NOT the whole log)'}: "
            f"{self.readings:,} readings, {self.rejections} rejections, {self.ticks} ticks "
            f"({self.ticks_ahead} ahead of the readings); stream readings missing "
            f"{self.missing}, logged twice {self.repeated}, not in the stream "
            f"{sum(int(e.rsplit('x', 1)[1]) for e in self.extra)}, late {self.late} (in the "
            f"stream's order: {self.stream_late}); replaying the log decides what the hub "
            f"stored: {replay}"
        )


def analyse_log(stream: Stream, records: Sequence[Record], whole: bool) -> LogAnalysis:
    """Count what the log holds against the stream: lost, repeated and foreign readings,
    ticks, and readings logged after a later one (against the stream's own order)."""
    streamed = [r for r in stream_records(stream) if isinstance(r, Reading)]
    expected = Counter(_key(r) for r in streamed)
    untimed = {(m.device_id, m.channel) for m in stream.untimed()}
    seen: Counter[ReadingKey] = Counter()
    extra: Counter[str] = Counter()
    rejections = ticks = ahead = 0
    newest = stream.first_ms
    logged: list[Reading] = []
    for record in records:
        if isinstance(record, Tick):
            ticks += 1
            ahead += record.at_ms > newest
            newest = max(newest, record.at_ms)
        elif isinstance(record, Reading):
            key = _key(record)
            seen[key] += 1
            if key not in expected:
                state = record.fields.get("state", "")
                what = "device time" if record.ts_from_device else "no device time"
                extra[f"{record.device} {record.channel} {state} ({what})".replace("  ", " ")] += 1
            if (record.device, record.channel) not in untimed:
                logged.append(record)
                newest = max(newest, record.ts_ns // 1_000_000)
        else:
            rejections += 1
    timed = {k: n for k, n in expected.items() if (k[0], k[1]) not in untimed}
    return LogAnalysis(
        whole=whole,
        records=len(records),
        readings=sum(seen.values()),
        rejections=rejections,
        ticks=ticks,
        ticks_ahead=ahead,
        missing=sum(max(0, n - seen.get(k, 0)) for k, n in timed.items()),
        repeated=sum(n - 1 for n in seen.values() if n > 1),
        extra=tuple(f"{what} x{n}" for what, n in sorted(extra.items())),
        late=_late(logged),
        stream_late=_late(r for r in streamed if (r.device, r.channel) not in untimed),
        replay_identical=None,
    )


def _late(readings: Iterable[Reading]) -> int:
    """Readings that come after one with a later device time (evaluated late)."""
    late = newest = 0
    for reading in readings:
        late += reading.ts_ns < newest
        newest = max(newest, reading.ts_ns)
    return late


# --------------------------------------------------------------------------- the drill


@dataclass(slots=True)
class Comparison:
    left: str
    right: str
    differences: list[Difference]

    def to_json(self) -> dict[str, Any]:
        return {
            "left": self.left,
            "right": self.right,
            "identical": not self.differences,
            "differences": [d.to_json() for d in self.differences],
        }


@dataclass(slots=True)
class DrillReport:
    options: dict[str, Any]
    stream: dict[str, Any]
    runs: dict[str, dict[str, Any]]
    comparisons: list[Comparison]
    points: dict[str, Any]
    diagnosis: list[str]
    notes: list[str]

    @property
    def passed(self) -> bool:
        return not any(c.differences for c in self.comparisons) and self.points["identical"]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "options": self.options,
            "stream": self.stream,
            "runs": self.runs,
            "comparisons": [c.to_json() for c in self.comparisons],
            "points": self.points,
            "diagnosis": self.diagnosis,
            "notes": self.notes,
        }


def run_drill(options: DrillOptions, say: Say = lambda _text: None) -> DrillReport:
    """Harness, uninterrupted run, faulted run; compare; the report."""
    if options.broker not in ("mosquitto", "nats"):
        raise DrillError(f"unknown broker {options.broker!r}: mosquitto or nats")
    ensure_installed({**MOSQUITTO_PACKAGES, **INFLUXDB_PACKAGES})
    start = options.start or default_start()
    say(
        f"stream: {options.site}, scenarios {','.join(options.scenarios) or 'all'}, "
        f"{options.duration_s / 3600:g} h from {start.isoformat()} (seed {options.seed})"
    )
    stream = build_stream(options, start)
    work = options.workdir or Path(tempfile.mkdtemp(prefix="gridwatch-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    say(f"workdir {work}")
    try:
        with contextlib.ExitStack() as stack:
            admin = None
            if options.store == "postgresql":
                pg_dir = _pg_dir(work)
                if not pg_dir.is_relative_to(work):
                    stack.callback(shutil.rmtree, pg_dir, ignore_errors=True)
                try:
                    admin = stack.enter_context(running_postgres(pg_dir))
                except RuntimeError as exc:  # not installed, or it would not start
                    raise DrillError(str(exc)) from exc
            influx = start_influxdb(work / "influxdb", free_port())
            services = Services(work, influx, admin, say)
            # A lambda: an outage replaces services.influx, and the one running at the end stops.
            stack.callback(lambda: services.influx.stop())  # noqa: PLW0108
            report = _drill(options, stream, services, say)
    finally:
        if options.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if options.workdir is not None:
        (work / "report.json").write_text(json.dumps(report.to_json(), indent=2, sort_keys=True))
    return report


def _pg_dir(work: Path) -> Path:
    """PostgreSQL's directory: under the system temp dir when we are root (the server
    runs as `postgres`, which cannot enter a 0700 directory of root's)."""
    if os.geteuid() == 0:
        return Path(tempfile.mkdtemp(prefix="gridwatch-drill-pg-"))
    return work / "postgres"


def _drill(options: DrillOptions, stream: Stream, services: Services, say: Say) -> DrillReport:
    rules = load_rules(())
    cutoff = stream.cutoff_ms
    untimed = stream.untimed()
    say(
        f"harness: {len(stream.messages):,} messages through RulesService "
        f"(evaluation.rules_eval.run_rules)"
    )
    started = time.monotonic()
    harness, count, rejected = harness_decisions(stream, offline_store(services, "harness"))
    harness_s = time.monotonic() - started
    say(f"harness: {len(harness)} events up to {_iso(cutoff)} in {harness_s:.1f} s")

    say("uninterrupted run")
    calm = run_live("uninterrupted", services, stream, options)
    say(f"uninterrupted: {len(calm.decisions)} events in {calm.wall_s:.1f} s")

    plan = plan_faults(options, stream)
    say(
        f"faulted run: {options.kills} hub kill(s) at event times "
        f"{', '.join(_iso(t) for t in plan.kill_at_ms) or '-'}; broker restart "
        f"{'after ' + format(plan.broker_at, ',') + ' messages' if plan.broker_at else 'off'}; "
        f"InfluxDB outage "
        + (
            f"{options.influx_outage_s:.0f} s after {plan.influx_at:,} messages"
            if plan.influx_at is not None
            else "off"
        )
    )
    faulted = run_live("faulted", services, stream, options, plan)
    say(f"faulted: {len(faulted.decisions)} events in {faulted.wall_s:.1f} s")

    comparisons = [
        Comparison("uninterrupted", "harness", compare_decisions(calm.decisions, harness)),
        Comparison(
            "faulted", "uninterrupted", compare_decisions(faulted.decisions, calm.decisions)
        ),
        Comparison("faulted", "harness", compare_decisions(faulted.decisions, harness)),
    ]
    expected = expected_points(stream)
    points = _compare_points(expected, calm, faulted)
    diagnosis = _diagnose(stream, rules, services, calm, faulted, comparisons, say)
    notes = [
        f"events compared up to the last message's simulated time, {_iso(cutoff)}: after "
        "it a live hub logs idle ticks the harness never sees; what anyone decided later "
        "is left out",
        "each run had its own broker (fresh persistence) and InfluxDB database; one "
        f"InfluxDB server; event store {options.store}",
        f"publisher: {_connections(options.gateways)}, QoS 1, as fast as the broker takes it; "
        "harness: run_rules(tick_ms=None), no tick between messages, as such a hub logs none",
    ]
    if stream.start.timestamp() < time.time() + 60:
        notes.append(
            "the stream starts in the PAST: idle ticks (wall clock - 2 s) and messages "
            "without a device time may move event time ahead of the readings"
        )
    reporting_gaps = [
        d.decision.describe()
        for d in comparisons[1].differences
        if d.kind != "only_right" and d.decision.rule_id == "reporting_gap"
    ]
    runs = {
        "harness": {
            "events": len(harness),
            "wall_s": round(harness_s, 1),
            "messages": count,
            "rejected": rejected,
        },
        "uninterrupted": calm.summary(),
        "faulted": {**faulted.summary(), "reporting_gap_not_in_uninterrupted": reporting_gaps},
    }
    return DrillReport(
        options={
            "duration_s": options.duration_s,
            "seed": options.seed,
            "kills": options.kills,
            "broker_restart": options.broker_restart,
            "influx_outage_s": options.influx_outage_s,
            "store": options.store,
            "site": options.site,
            "gateways": options.gateways,
            "fault_seed": options.seed if options.fault_seed is None else options.fault_seed,
            "broker": options.broker,
        },
        stream={
            "site": stream.site.site,
            "devices": len(stream.site.devices),
            "scenarios": list(stream.scenarios),
            "labels": stream.labels,
            "messages": len(stream.messages),
            "start": stream.start.isoformat(),
            "cutoff": _iso(cutoff),
            "untimed_messages": [
                f"{_iso(m.sim_ms)} {m.topic} {m.payload.decode(errors='replace')}" for m in untimed
            ],
        },
        runs=runs,
        comparisons=comparisons,
        points=points,
        diagnosis=diagnosis,
        notes=notes,
    )


def _connections(gateways: int) -> str:
    return "one connection per device" if gateways == 0 else f"{gateways} connection(s) (gateways)"


def _compare_points(expected: Counter[str], calm: LiveRun, faulted: LiveRun) -> dict[str, Any]:
    """Per measurement: points expected from the stream, and in each run's database."""
    table: dict[str, dict[str, int | None]] = {}
    differences: list[str] = []
    for name in sorted(set(expected) | set(calm.points) | set(faulted.points)):
        row = {
            "expected": expected.get(name) if name in expected else None,
            "uninterrupted": points_of(calm.points.get(name, {})),
            "faulted": points_of(faulted.points.get(name, {})),
        }
        table[name] = row
        if calm.points.get(name) != faulted.points.get(name):
            differences.append(
                f"{name}: faulted {faulted.points.get(name)} vs uninterrupted "
                f"{calm.points.get(name)} (field counts)"
            )
    for name, want in expected.items():
        for run in (calm, faulted):
            got = points_of(run.points.get(name, {}))
            if got < want:
                differences.append(f"{name}: {run.name} stored {got}, the stream has {want}: "
                                   f"{want - got} lost")  # fmt: skip
    return {"table": table, "differences": differences, "identical": not differences}


def _diagnose(
    stream: Stream,
    rules: Sequence[Rule],
    services: Services,
    calm: LiveRun,
    faulted: LiveRun,
    comparisons: list[Comparison],
    say: Say,
) -> list[str]:
    """What the drill can tell about the causes of the differences: the hubs' logs
    against the stream, replays of those logs, and the harness's input without ticks."""
    out: list[str] = []
    for run in (calm, faulted):
        if run.log is not None:
            out.append(f"{run.name} hub's log: {run.log.describe()}")
    live_vs_harness = comparisons[0].differences
    if calm.log is not None and calm.log.late > calm.log.stream_late:
        out.append(
            f"arrival order: the uninterrupted hub logged {calm.log.late:,} readings after a "
            f"reading with a later device time (the stream's own order has "
            f"{calm.log.stream_late}); such a reading is evaluated late, at the watermark "
            "(RulesService.consume: now = max(ts, clock)), after timers the watermark "
            "already passed (held-open, windows) have fired. MQTT orders messages per "
            "connection only, and the broker interleaves the publisher's connections as "
            "it reads them"
            + (
                "; replaying the hub's own log reproduces its events exactly, so these "
                "differences are the order, not the hub"
                if calm.log.replay_identical
                else ""
            )
        )
    untimed = stream.untimed()
    untimed_devices = {m.device_id for m in untimed}
    involved = [d for d in live_vs_harness if d.decision.device in untimed_devices]
    if involved:
        out.append(
            f"{len(untimed)} message(s) of the stream carry no device time (plain-text "
            f"online/offline, as a last will is), on {', '.join(sorted(untimed_devices))}, "
            f"and {len(involved)} of the {len(live_vs_harness)} uninterrupted/harness "
            "difference(s) are events of those devices: the decoder stamps such a "
            "message with its receive time (the hub's wall clock, the harness's simulated "
            "time), so the two see it at different times unless the rules date it by "
            "the log (RulesService.consume)"
        )
    if calm.untimed_points != faulted.untimed_points:
        out.append(
            "device_status points stamped with the hub's clock (outside the simulated "
            f"span): uninterrupted {calm.untimed_points}, faulted {faulted.untimed_points}. "
            "A status without a device time stored again: a retained one re-sent on a "
            "resubscription should have been skipped (`retained_skipped`)"
        )
    say("diagnosis: the harness again, with a tick every simulated second")
    ticked, _count, _rejected = harness_decisions(
        stream, offline_store(services, "harness_ticks"), tick_ms=TICK_MS
    )
    by_ticks = compare_decisions(calm.decisions, ticked)
    if by_ticks:
        rules_hit = Counter(d.decision.rule_id for d in by_ticks)
        out.append(
            "not compared, for information: the harness with its real-time model, a tick "
            f"every simulated second between messages (run_rules tick_ms={TICK_MS}), "
            f"differs from the uninterrupted hub in {len(by_ticks)} event(s) ("
            + ", ".join(f"{rule} {n}" for rule, n in sorted(rules_hit.items()))
            + "): what carries no event time (a rejection, a status without a device "
            "time) is evaluated at the watermark, and the ticks move the watermark to the "
            "whole second before it, where a hub fed faster than real time has only the "
            "last reading's time"
        )
    faulted_vs_calm = comparisons[1].differences
    if calm.log is not None and faulted.log is not None and calm.log.extra != faulted.log.extra:
        out.append(
            "readings not in the stream: uninterrupted log "
            f"[{'; '.join(calm.log.extra) or '-'}], faulted log "
            f"[{'; '.join(faulted.log.extra) or '-'}]. A reading without a device time "
            "has no sequence number either, so the intake's duplicate check "
            "(device, seq, ts) cannot recognise it: each redelivery (unacked at the "
            "kill) and each retained copy the broker re-sends on resubscription is "
            "logged again, with a new receive time"
        )
    if faulted_vs_calm:
        devices = sorted({d.decision.device or d.decision.key for d in faulted_vs_calm})
        out.append(
            f"faulted vs uninterrupted: {len(faulted_vs_calm)} difference(s), on "
            f"{', '.join(devices)}, after {faulted.hub_starts - 1} hub restart(s)"
        )
    return out


def offline_store(services: Services, name: str) -> str:
    """A fresh event store for decisions made offline (harness, replays)."""
    if services.postgres_admin is not None:
        return create_database(services.postgres_admin, services.database(name))
    (services.work / name).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{services.work / name / 'events.db'}"


# --------------------------------------------------------------------------- output


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def format_report(report: DrillReport) -> str:
    """The report for people: what ran, what was compared, every difference."""
    s, runs = report.stream, report.runs
    lines = [
        f"alarm-path drill: {s['site']} ({s['devices']} devices), {len(s['scenarios'])} "
        f"scenario(s), {s['messages']:,} messages from {s['start']}, broker "
        f"{report.options.get('broker', 'mosquitto')}",
        f"  compared up to the last message's time {s['cutoff']}",
    ]
    for name in ("harness", "uninterrupted", "faulted"):
        run = runs[name]
        extra = ""
        if name != "harness":
            extra = (
                f", published in {run['publish_s']} s, {run['hub_starts']} hub process(es), "
                f"rules restarts: {run['rules_restored_state']} restored a committed state, "
                f"{run['rules_redecided_to_commit']} re-decided the log up to the commit; "
                f"{run['duplicates_recognised']} redelivery(ies) recognised, "
                f"{run['publisher_resent']} publish(es) resent"
            )
        lines.append(f"  {name:<13} {run['events']:>4} events, {run['wall_s']} s{extra}")
        for fault in run.get("faults", []):
            lines.append(f"{'':18}{fault}")
        if run.get("recovery_s"):
            lines.append(
                f"{'':18}recovery: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(run["recovery_s"].items()))
            )
        for event, actions in sorted(run.get("health_events", {}).items()):
            lines.append(f"{'':18}health event {event}: {' → '.join(actions)}")
    lines.append("events:")
    for comparison in report.comparisons:
        verdict = (
            "IDENTICAL"
            if not comparison.differences
            else f"{len(comparison.differences)} DIFFERENCE(S)"
        )
        lines.append(f"  {comparison.left} vs {comparison.right}: {verdict}")
        for difference in comparison.differences[:SHOWN]:
            text = difference.describe(comparison.left, comparison.right)
            lines += [
                f"    - {part}" if i == 0 else f"    {part}"
                for i, part in enumerate(text.splitlines())
            ]
        if len(comparison.differences) > SHOWN:
            lines.append(f"    ... {len(comparison.differences) - SHOWN} more (--json lists all)")
    gaps = runs["faulted"]["reporting_gap_not_in_uninterrupted"]
    lines.append(
        f"  reporting_gap events in faulted but not uninterrupted: {len(gaps)}"
        + "".join(f"\n    - {g}" for g in gaps)
    )
    points = report.points
    lines.append(
        "InfluxDB points: " + ("IDENTICAL, none lost" if points["identical"] else "DIFFERENCES")
    )
    lines.append(f"  {'measurement':<16} {'expected':>9} {'uninterr.':>9} {'faulted':>9}")
    for name, row in points["table"].items():
        want = "-" if row["expected"] is None else f"{row['expected']:,}"
        lines.append(f"  {name:<16} {want:>9} {row['uninterrupted']:>9,} {row['faulted']:>9,}")
    for difference in points["differences"]:
        lines.append(f"    - {difference}")
    if report.diagnosis:
        lines.append("diagnosis:")
        lines += [f"  - {d}" for d in report.diagnosis]
    lines.append("notes:")
    lines += [f"  - {n}" for n in report.notes]
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines)
