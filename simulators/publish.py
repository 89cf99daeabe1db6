"""`gridwatch simulate`: a site's simulated devices on a real broker, each as itself.

The engine (`simulators.engine`) decides what every device sends and when; this module
puts it on the wire. Two identities:

- **per device** (default): one MQTT connection per device, client id = device id,
  clean start, and a last will `offline` (plain text, retained, QoS 1) on the device's
  status topic, as a real controller would have. The engine's first message of each
  device is its retained `online` status; at the end every device publishes a retained
  `offline` JSON status and disconnects cleanly (so no will fires).
- **gateway** (`gateways=N`): devices share N connections (`gw-sim-{site}-{i}`, device
  to gateway by a stable hash), for fleets whose sockets would exhaust the machine
  (about 5,000 devices and up). There are no per-device wills then, and the gateways
  set no will of their own: a dropped gateway leaves its devices' statuses as they were.

Every message is QoS 1 and awaited: each connection keeps a bounded window of
outstanding PUBACKs, so memory stays bounded and a message lost with a dropped
connection is sent again after the reconnect (at least once, never fire-and-forget).

Time on the wire: payload `ts` is always simulated time, so a fixed start and seed give
the same bytes at any speed. `speed=None` sends as fast as possible; otherwise messages
are released by `engine.pace` (1 = real time, 60 = a minute per second). A hub refuses
timestamps too far ahead of its clock; `max_lead_s` holds messages back until the wall
clock is at most that far behind them (the demo replays the last hour quickly, then
continues in real time).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import math
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, TypedDict

from broker.client import ConnectionLost, ConnectOptions, MqttClient, MqttError, Will
from sensors.base import STATUS
from sensors.topics import DEFAULT_PREFIX, device_topic, normalise_prefix
from simulators.behaviour import Emission
from simulators.engine import SimMessage, encode_payload, epoch_ms, pace, simulate
from sites.model import Site

log = logging.getLogger(__name__)

CONNECT_CONCURRENCY: Final = 200
"""Connections opened at once: a 1,000-device site connects in well under a second."""
WINDOW: Final = 500
"""Outstanding QoS 1 publishes per connection before the sender waits for PUBACKs."""
PROGRESS_INTERVAL_S: Final = 0.1
FOREVER_S: Final = 100 * 365 * 86400.0
"""Simulated span of an open-ended run (`duration_s=None`): ends when cancelled."""
GOODBYE_TIMEOUT_S: Final = 10.0


class SimulationError(Exception):
    """The simulation could not run (e.g. devices could not connect)."""


@dataclass(frozen=True, slots=True)
class SimProgress:
    """How far a run has come: simulated time reached and messages sent so far."""

    sim_ms: int
    """Simulated epoch ms of the newest message released."""
    start_ms: int
    end_ms: int
    messages: int

    @property
    def fraction(self) -> float:
        span = self.end_ms - self.start_ms
        return 1.0 if span <= 0 else min(1.0, max(0.0, (self.sim_ms - self.start_ms) / span))


@dataclass(frozen=True, slots=True)
class SimSummary:
    """What a run sent. Counts are the engine's messages; the closing statuses are apart."""

    site: str
    mode: Literal["device", "gateway"]
    devices: int
    connections: int
    messages: int
    by_kind: dict[str, int]
    by_channel: dict[str, int]
    sim_start: datetime
    sim_span_s: float
    """From the start to the newest message released (the whole span when it ran out)."""
    wall_s: float
    offline_statuses: int
    """Retained `offline` statuses published at the end (one per device)."""
    resent: int
    """Messages sent again after a dropped connection."""
    refused: int
    """Publishes the broker refused (negative PUBACK, e.g. not authorised)."""

    @property
    def rate(self) -> float:
        """Messages per wall-clock second."""
        return self.messages / self.wall_s if self.wall_s > 0 else 0.0


def format_summary(summary: SimSummary) -> str:
    """A few lines for people: totals, per kind, per channel, rate."""
    span = timedelta(seconds=round(summary.sim_span_s))
    lines = [
        f"site {summary.site}: {summary.devices} devices over {summary.connections} "
        f"connection(s) ({'one per device' if summary.mode == 'device' else 'gateways'})",
        f"simulated {span} from {summary.sim_start.isoformat()} in {summary.wall_s:.2f} s "
        f"wall ({summary.sim_span_s / summary.wall_s if summary.wall_s else 0:.0f}x)",
        f"messages  {summary.messages}  ({summary.rate:,.0f} msg/s)"
        f" + {summary.offline_statuses} closing offline statuses",
    ]
    for title, counts in (("per kind", summary.by_kind), ("per channel", summary.by_channel)):
        lines.append(f"{title}:")
        lines += [f"  {name:<10} {count}" for name, count in sorted(counts.items())]
    if summary.resent or summary.refused:
        lines.append(
            f"resent after reconnect {summary.resent}, refused by broker {summary.refused}"
        )
    return "\n".join(lines)


def gateway_of(device_id: str, gateways: int) -> int:
    """Stable device -> gateway index (blake2b: Python's hash() is salted per process)."""
    digest = hashlib.blake2b(device_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % gateways


def status_topic(site: Site, kind: str, device_id: str, topic_prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(topic_prefix, site.site, kind, device_id, STATUS)


def status_payload(state: Literal["online", "offline"], ts_ms: int, cell: str) -> bytes:
    """The JSON status the engine sends (`{"ts":..,"status":..}`), for any state."""
    return encode_payload(Emission(STATUS, {"status": state}, True, ts_ms), cell)


@dataclass(slots=True)
class _Counts:
    sent: int = 0
    resent: int = 0
    refused: int = 0


@dataclass(slots=True)
class _Link:
    """One MQTT connection and its window of publishes awaiting PUBACK."""

    client: MqttClient
    counts: _Counts
    window: int
    devices: list[str] = field(default_factory=list)
    pending: deque[tuple[asyncio.Future[None], str, bytes, bool]] = field(default_factory=deque)

    async def send(self, topic: str, payload: bytes, retain: bool) -> None:
        while len(self.pending) >= self.window:
            await self._settle_oldest()
        await self._publish(topic, payload, retain)

    async def drain(self) -> None:
        while self.pending:
            await self._settle_oldest()

    async def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        client = self.client
        while True:
            if not client.connected.is_set():
                await client.connected.wait()
            try:
                fut = client.publish_nowait(topic, payload, qos=1, retain=retain)
            except ConnectionLost:
                await asyncio.sleep(0.01)  # between a drop and `connected` being cleared
                continue
            assert fut is not None
            self.pending.append((fut, topic, payload, retain))
            return

    async def _settle_oldest(self) -> None:
        fut, topic, payload, retain = self.pending.popleft()
        try:
            await fut
        except ConnectionLost:
            self.counts.resent += 1
            await self._publish(topic, payload, retain)
        except MqttError as exc:  # negative PUBACK: the broker will not take it
            self.counts.refused += 1
            if self.counts.refused == 1:
                log.warning("broker refused a publish on %s: %s (counting the rest)", topic, exc)


class Simulation:
    """One run of a site on a broker; `run()` once. `drop_connection` injects a fault."""

    def __init__(
        self,
        site: Site,
        *,
        broker_host: str,
        broker_port: int,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        speed: float | None,
        duration_s: float | None,
        seed: int,
        start: datetime,
        gateways: int | None = None,
        progress: Callable[[SimProgress], None] | None = None,
        max_lead_s: float | None = None,
        topic_prefix: str = DEFAULT_PREFIX,
        window: int = WINDOW,
        reconnect_min_s: float = 0.2,
        connect_timeout_s: float = 15.0,
        extra: Sequence[SimMessage] = (),
        source: Iterable[SimMessage] | None = None,
    ) -> None:
        """`extra`: messages from elsewhere (dataset replays), merged in by simulated time;
        their devices produce no background traffic. `source`: the whole stream to publish
        instead of the site's background (incident scenarios already applied)."""
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be positive or None (as fast as possible), not {speed}")
        if duration_s is not None and not duration_s > 0:
            raise ValueError(f"duration must be positive, not {duration_s}")
        if gateways is not None and gateways < 1:
            raise ValueError(f"gateways must be at least 1, not {gateways}")
        self.site = site
        self.speed = speed
        self._open_ended = duration_s is None
        self.duration_s = FOREVER_S if duration_s is None else duration_s
        self.seed = seed
        self.start = start
        self.start_ms = epoch_ms(start)
        self.end_ms = self.start_ms + round(self.duration_s * 1000)
        self.progress = progress
        self.max_lead_s = max_lead_s
        self.topic_prefix = normalise_prefix(topic_prefix)
        self._extra = sorted(extra, key=lambda m: m.sim_ms)
        self._source = source
        self.mode: Literal["device", "gateway"] = "device" if gateways is None else "gateway"
        self.connected = asyncio.Event()
        """Set once every connection is up (before the first message is sent)."""
        self._counts = _Counts()
        self._connect_timeout_s = connect_timeout_s
        self._link_of: dict[str, _Link] = {}
        self._links: list[_Link] = []
        self._sim_ms = self.start_ms
        self._ran = False

        def client(client_id: str, will: Will | None) -> MqttClient:
            return MqttClient(
                broker_host,
                broker_port,
                ConnectOptions(
                    client_id=client_id,
                    clean_start=True,
                    session_expiry_s=0,
                    username=username,
                    password=password,
                    will=will,
                ),
                subscriptions=[],
                on_publish=lambda *_: None,
                tls=tls,
                on_connected=self._on_connected,
                reconnect_min_s=reconnect_min_s,
                reconnect_max_s=max(reconnect_min_s, 5.0),
                connect_timeout_s=connect_timeout_s,
                log_connects=False,
            )

        if gateways is None:
            for device in site.devices:
                offline = status_topic(site, device.kind, device.id, self.topic_prefix)
                will = Will(offline, b"offline")
                link = _Link(client(device.id, will), self._counts, window, [device.id])
                self._links.append(link)
                self._link_of[device.id] = link
        else:
            self._links = [
                _Link(client(f"gw-sim-{site.site}-{i}", None), self._counts, window)
                for i in range(gateways)
            ]
            for device in site.devices:
                link = self._links[gateway_of(device.id, gateways)]
                link.devices.append(device.id)
                self._link_of[device.id] = link
        self._link_by_client = {id(link.client): link for link in self._links}

    # -- fault injection ------------------------------------------------------------
    def drop_connection(self, device_id: str) -> None:
        """Abort the connection carrying this device without DISCONNECT (its will fires).

        The client reconnects on its own and the device announces itself online again.
        """
        if not self._link_of[device_id].client.drop():
            raise SimulationError(f"{device_id} is not connected")

    # -- running --------------------------------------------------------------------
    def _on_connected(self, client: MqttClient, session_present: bool) -> None:
        """On a reconnect, a device re-announces itself (its will said offline)."""
        if client.counters.connects <= 1 or self.mode != "device":
            return
        link = self._link_by_client[id(client)]
        device = self.site.device(link.devices[0])
        topic = status_topic(self.site, device.kind, device.id, self.topic_prefix)
        payload = status_payload("online", self._sim_ms, device.cell)
        fut = client.publish_nowait(topic, payload, qos=1, retain=True)
        if fut is not None:  # settled (and resent if need be) with the rest of the window
            link.pending.append((fut, topic, payload, True))

    async def run(self) -> SimSummary:
        """Connect, stream the engine's messages, say offline, disconnect; the summary."""
        if self._ran:
            raise SimulationError("a Simulation runs once; make a new one")
        self._ran = True
        wall_start = time.perf_counter()
        by_kind: Counter[str] = Counter()
        by_channel: Counter[str] = Counter()
        try:
            offline = await self._run(by_kind, by_channel)
        except BaseExceptionGroup as group:
            # The TaskGroup wraps our own errors (e.g. SimulationError): hand a lone one over.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        wall_s = time.perf_counter() - wall_start
        self._report_progress()
        return SimSummary(
            site=self.site.site,
            mode=self.mode,
            devices=len(self.site.devices),
            connections=len(self._links),
            messages=self._counts.sent,
            by_kind=dict(by_kind),
            by_channel=dict(by_channel),
            sim_start=self.start,
            sim_span_s=(self._sim_ms - self.start_ms) / 1000,
            wall_s=wall_s,
            offline_statuses=offline,
            resent=self._counts.resent,
            refused=self._counts.refused,
        )

    async def _run(self, by_kind: Counter[str], by_channel: Counter[str]) -> int:
        """Every client in one TaskGroup; the number of closing offline statuses sent."""
        offline = 0
        async with asyncio.TaskGroup() as tasks:
            runners = [
                tasks.create_task(link.client.run(), name=f"sim-mqtt-{link.client.opts.client_id}")
                for link in self._links
            ]
            try:
                await self._connect_all()
                self.connected.set()
                await self._stream(by_kind, by_channel)
            finally:
                # Also when cancelled (the demo stops with the hub): leave truthful statuses.
                try:
                    offline = await asyncio.wait_for(self._goodbye(), GOODBYE_TIMEOUT_S)
                except (TimeoutError, MqttError) as exc:
                    log.warning("simulated devices could not all say offline: %r", exc)
                for runner in runners:
                    runner.cancel()  # graceful DISCONNECT: the broker discards the wills
        return offline

    async def _connect_all(self) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect(link: _Link) -> None:
            async with gate:
                try:
                    await asyncio.wait_for(link.client.connected.wait(), self._connect_timeout_s)
                except TimeoutError:
                    raise SimulationError(
                        f"{link.client.opts.client_id} could not connect to "
                        f"{link.client.host}:{link.client.port} within "
                        f"{self._connect_timeout_s:.0f} s (see the log for why)"
                    ) from None

        # The runner tasks dial at once; the gate bounds how many we wait on, and the
        # broker's accept queue absorbs the rest.
        async with asyncio.TaskGroup() as connecting:
            for link in self._links:
                connecting.create_task(connect(link))

    def _messages(self) -> Iterator[SimMessage]:
        background = (
            iter(self._source)
            if self._source is not None
            else simulate(
                self.site,
                start=self.start,
                duration_s=self.duration_s,
                seed=self.seed,
                topic_prefix=self.topic_prefix,
                exclude={m.device_id for m in self._extra},
            )
        )
        if not self._extra:
            return background
        replayed = (m for m in self._extra if self.start_ms <= m.sim_ms < self.end_ms)
        return heapq.merge(background, replayed, key=lambda m: m.sim_ms)

    async def _stream(self, by_kind: Counter[str], by_channel: Counter[str]) -> None:
        loop = asyncio.get_running_loop()
        next_report = loop.time()
        link_of = self._link_of
        counts = self._counts
        max_lead_ms = None if self.max_lead_s is None else self.max_lead_s * 1000
        source: Iterable[SimMessage] = self._messages()
        async for message in pace(source, speed=self.speed, start_sim_ms=self.start_ms):
            if max_lead_ms is not None:
                ahead_ms = message.sim_ms - time.time() * 1000 - max_lead_ms
                if ahead_ms > 0:
                    await asyncio.sleep(ahead_ms / 1000)
            self._sim_ms = message.sim_ms
            await link_of[message.device_id].send(message.topic, message.payload, message.retain)
            counts.sent += 1
            by_kind[message.kind] += 1
            by_channel[message.channel] += 1
            if counts.sent & 0x3FF == 0:
                await asyncio.sleep(0)  # at full speed, let acks and other tasks in
            if self.progress is not None and loop.time() >= next_report:
                next_report = loop.time() + PROGRESS_INTERVAL_S
                self._report_progress()
        if not self._open_ended:
            self._sim_ms = self.end_ms  # the whole span ran (not cancelled)
        for link in self._links:
            await link.drain()

    def _report_progress(self) -> None:
        if self.progress is not None:
            self.progress(SimProgress(self._sim_ms, self.start_ms, self.end_ms, self._counts.sent))

    async def _goodbye(self) -> int:
        """Every device publishes a retained `offline` status; wait for the PUBACKs."""
        ts_ms = self._sim_ms
        sent = 0
        for link in self._links:
            for device_id in link.devices:
                device = self.site.device(device_id)
                await link.send(
                    status_topic(self.site, device.kind, device_id, self.topic_prefix),
                    status_payload("offline", ts_ms, device.cell),
                    True,
                )
                sent += 1
        for link in self._links:
            await link.drain()
        return sent


class BrokerOptions(TypedDict):
    """The connection keywords of `Simulation`, as the hub's settings give them."""

    broker_host: str
    broker_port: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None
    topic_prefix: str


def now_utc_second() -> datetime:
    """Now, UTC, truncated to the second: the default start of a run."""
    return datetime.now(UTC).replace(microsecond=0)


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `2h`, `1d` (or plain seconds) -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    scale = units.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like 90s, 10m, 2h or 1d") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be positive and finite, not {text!r}")
    return seconds
