"""Composition root: build the ingest pipeline from settings and run it in one TaskGroup.

MQTT client ──on_publish──► Intake ──fsync──► Spool (the log) ──► SpoolWriter ──► InfluxDB
     ▲                        │  └──────► dead letters    ├──────► RulesService ──► events
     └──────── PUBACK ◄───────┘ (after fsync)             └──────► AnomalyService ─► events
+ hub_stats every stats_interval_s (through the spool) and a status file every second.

Each consumer of the log reads at its own position and commits it with its output, so
a PUBACK promises the reading is stored and will be evaluated once by every consumer.
Events are published on a connection of their own (`<client_id>-events`): the device
connection stops reading under back-pressure, and with it would stop our PUBACKs.

Event time: the rules run on the readings' timestamps. While the whole input is idle
(connected, reading, and nothing received for `IDLE_AFTER_S`), the hub logs a `Tick`
at wall clock minus `TICK_LAG_MS` once a second, so timers of silent devices (held
open, offline) still fire; a reading delayed in transit by more than that bound may
arrive after its time has passed, and is then evaluated as a late reading. During a
backlog, an outage or a pause nothing is ticked: event time follows the readings.

Faults of the spine are reported, not fatal: when the spool's disk refuses writes the
intake stops acknowledging and retries (see `ingest.intake`), and the hub raises a
health event on every site, shows `storage_error` in `gridwatch status` and `/readyz`,
and sends `hub_stats` straight to InfluxDB until the disk takes writes again. When the
broker answers a reconnect without the session it should have kept (`ingest.session`),
that is a warning, counted (`sessions_lost`), and a `SessionLost` record in the log: the
rules raise a health event and mark the sequence gaps it explains.

The MQTT client, the intake and the spool writer are the pipeline: when one fails the
hub stops, loudly. Every other long-lived task (rules, the registry's refreshes, the
event sinks, anomaly scoring, stats and status) runs under `Supervisor`: a failure is
logged with its traceback, counted, shown in the status file and `/readyz`, and the
task restarts after a capped exponential backoff; it never ends the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from broker.client import MQTT_V5, MQTT_V311, ConnectionLost, ConnectOptions, MqttClient, Will
from detection.rules_service import STORAGE_FAILING_RULE
from events.model import Severity
from hub.settings import Settings
from hub.supervision import Supervisor, tune_gc
from hub.wiring import (
    EventsSide,
    build_anomaly,
    build_events,
    build_writer,
    credential_key,
    detection_tasks,
    events_publisher,
    migrate_event_store,
    registry_gate,
    tls_context,
)
from hub.worker import WorkerHandle
from ingest.deadletter import DeadLetterStore
from ingest.decode import DecodeLimits, Decoder
from ingest.influx import InfluxV1Writer, WatchedWriter, WriteError
from ingest.intake import Intake
from ingest.line_protocol import encode_point
from ingest.session import SessionMemory
from ingest.spool import CACHE_RECORDS, Spool
from ingest.stats import IngestStats
from ingest.status import read_status, write_status
from ingest.writer import SpoolWriter
from sensors.base import HUB_STATS, DecodeContext, keyed_hash
from sensors.registry import KINDS
from sensors.topics import hub_presence_head, hub_presence_topic, site_filter, subscription

if TYPE_CHECKING:
    from api.probes import IngestionView
    from api.server import EmbeddedApi

log = logging.getLogger(__name__)

READY_PAUSE_GRACE_S: Final = 30.0
"""`/readyz`: the intake may stop reading (back-pressure) this long before it counts."""
READY_WRITER_GRACE_S: Final = 60.0
"""`/readyz`: InfluxDB may refuse writes this long (the spool holds them) before it counts."""
IDLE_AFTER_S: Final = 2.0
"""The input counts as idle after this long without a message (see the module doc)."""
TICK_LAG_MS: Final = 2_000
"""A tick is this far behind the wall clock: the transit delay a reading may have and
still be evaluated before its time has passed."""


def subscription_filters(settings: Settings) -> list[str]:
    """`gw/v1/#`, or `$share/<group>/gw/v1/#` so several hubs split the load; a
    partition's hub (cluster mode) `gw/v1/<site>/#` for each of its sites, except the
    catch-all partition's, which reads `gw/v1/#` and skips the other partitions' sites."""
    prefix = settings.mqtt.topic_prefix
    cluster = settings.cluster
    if cluster.partition is not None and cluster.foreign_sites is None:
        return [site_filter(prefix, site) for site in cluster.partition_sites]
    return [subscription(prefix, settings.mqtt.shared_group)]


def hub_status_topic(settings: Settings) -> str:
    """`gw/v1/_hub/<client id>/status`: our retained online/offline (and will)."""
    return hub_presence_topic(settings.mqtt.topic_prefix, settings.mqtt.client_id)


class Hub:
    """The running ingest hub; `run()` until cancelled or signalled."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = IngestStats()
        self.spool = Spool(
            settings.spool.directory,
            max_bytes=settings.spool.max_bytes,
            segment_bytes=settings.spool.segment_bytes,
            # The records' copies in memory serve consumers in this process only.
            cache_records=CACHE_RECORDS if settings.events.detection == "thread" else 0,
        )
        self.dead_letters = DeadLetterStore(
            settings.deadletters.directory,
            max_bytes=settings.deadletters.max_bytes,
            keep=settings.deadletters.keep,
        )
        key = credential_key(settings)
        self.registry_gate = registry_gate(settings)  # None unless registry.enforce
        self.decoder = Decoder(
            KINDS,
            DecodeContext(hash_identifier=lambda value: keyed_hash(key, value)),
            topic_prefix=settings.mqtt.topic_prefix,
            limits=DecodeLimits(
                settings.hub.max_payload_bytes, settings.hub.max_future_s, settings.hub.max_age_s
            ),
            allow_device=self.registry_gate.allowlist if self.registry_gate else None,
        )
        self.sink = build_writer(settings)
        mqtt = settings.mqtt
        self.client = MqttClient(
            mqtt.host,
            mqtt.port,
            ConnectOptions(
                client_id=mqtt.client_id,
                protocol=MQTT_V5 if mqtt.protocol == "5" else MQTT_V311,
                clean_start=False,
                session_expiry_s=mqtt.session_expiry_s,
                keepalive_s=mqtt.keepalive_s,
                receive_maximum=mqtt.receive_maximum,
                username=mqtt.username,
                password=mqtt.password.get_secret_value() if mqtt.password else None,
                will=Will(hub_status_topic(settings), b"offline"),
                # Oversize payloads up to 4x the limit still arrive, to be counted and
                # dead-lettered; beyond that the broker drops them for us.
                maximum_packet_size=4 * settings.hub.max_payload_bytes + 1024,
            ),
            subscriptions=[(f, 1) for f in subscription_filters(settings)],
            on_publish=self._on_publish,
            tls=tls_context(settings),
            on_connected=self._on_connected,
            on_oversize=self._on_oversize,
            reconnect_min_s=mqtt.reconnect_min_s,
            reconnect_max_s=mqtt.reconnect_max_s,
        )
        # Detection (rules, anomaly, event sinks) runs in a worker process by default
        # (`hub.worker`), or here, on threads of this process ("thread").
        in_process = settings.events.enabled and settings.events.detection == "thread"
        self.publisher = (
            events_publisher(settings) if in_process and settings.events.publish_mqtt else None
        )
        self.events = build_events(settings, self.publisher, self.sink) if in_process else None
        self.anomaly = (
            build_anomaly(settings, self.events.service.manager, self.events.dispatcher.wake)
            if self.events is not None
            else None
        )
        self.supervisor = Supervisor()
        self._reading_paused_since: float | None = None
        self._connect_at = 0.0
        """Wall clock before which the hub does not connect (`_resume_at`)."""
        self.intake = Intake(
            self.decoder,
            self.spool,
            self.dead_letters,
            self.stats,
            ack=self.client.ack,
            generation=lambda: self.client.generation,
            set_reading=self._set_reading,
            batch_max=settings.spool.fsync_batch,
            linger_s=settings.spool.fsync_linger_ms / 1000,
            high_water=max(settings.mqtt.receive_maximum * 2, settings.spool.fsync_batch * 4),
            records=settings.events.enabled,
            on_persisted=self._wake_consumers,
            on_storage=self._storage_changed,
            dup=lambda: self.client.dispatching_dup,
        )
        self.session = SessionMemory(
            settings.hub.data_dir,
            f"{mqtt.host}:{mqtt.port}",
            mqtt.client_id,
            mqtt.session_expiry_s if mqtt.protocol == "5" else None,
        )
        self.watched_sink = WatchedWriter(self.sink)
        self.writer = SpoolWriter(
            self.spool,
            self.watched_sink,
            self.dead_letters,
            self.stats,
            batch_size=settings.influx.batch_size,
            flush_interval_s=settings.influx.flush_interval_s,
            retry_max_s=settings.influx.retry_max_s,
            on_commit=self.intake.space_freed,
        )
        self._own_status_topic = hub_status_topic(settings)
        self._presence_head = hub_presence_head(settings.mqtt.topic_prefix)
        self._site_head = settings.mqtt.topic_prefix + "/"
        self._foreign = frozenset(settings.cluster.foreign_sites or ())
        """Sites another partition's hub reads (the catch-all partition's hub only)."""
        self._worker_cpu_at_first: float | None = None
        """The worker's CPU when the first message arrived (`first_received_cpu_s`)."""
        self.worker: WorkerHandle | None = None
        """The detection worker (`events.detection = "process"`), else None."""
        if settings.events.enabled and self.events is None:
            migrate_event_store(settings)  # before anyone reads it: the worker starts later
            self.worker = WorkerHandle(settings, self.spool)
        self.api: EmbeddedApi | None = None
        if settings.api.enabled:
            # Imported only when served: FastAPI costs a hub without its API (a cluster
            # partition's) half a second of start-up and its memory.
            from hub.serving import embedded_api

            self.api = embedded_api(settings, self.events, self.ingestion_view())

    def ingestion_view(self) -> IngestionView:
        """What `/readyz` checks about ingestion, read live from this hub."""
        from api.probes import IngestionView

        return IngestionView(
            connected=self.client.connected.is_set,
            reading_paused_s=self.reading_paused_s,
            spool_full=lambda: self.spool.full,
            writer_failing_s=self.watched_sink.failing_s,
            task_problems=self.task_problems,
            storage_error=lambda: self.stats.storage_error,
            connect_in_s=lambda: max(0.0, self._connect_at - time.time()),
            pause_grace_s=READY_PAUSE_GRACE_S,
            writer_grace_s=READY_WRITER_GRACE_S,
        )

    def _wake_consumers(self) -> None:
        if self.events is not None:
            self.events.service.wake()
        if self.anomaly is not None:
            self.anomaly.wake()

    def _storage_changed(self, error: str | None) -> None:
        """The spool's disk started refusing writes (`error`) or takes them again."""
        if not self.settings.events.enabled:
            return
        hub = self.settings.mqtt.client_id
        if error is not None:
            title = "Hub cannot store sensor data"
            message = (
                f"Hub {hub}: the spool's disk refuses writes ({error}). Sensor messages are "
                "not acknowledged and wait in the broker; alarms are delayed until the disk "
                "takes writes again (free space on it)"
            )
        else:
            title, message = "Hub stores sensor data again", f"Hub {hub}: spool writes resumed"
        detection = self.worker if self.worker is not None else self.events
        if isinstance(detection, EventsSide):
            condition = detection.service.hub_condition
        else:
            assert detection is not None
            condition = detection.hub_condition
        condition(
            STORAGE_FAILING_RULE,
            error is not None,
            hub=hub,
            severity=Severity.HIGH,
            title=title,
            message=message,
            values={"hub": hub, "error": error or ""},
        )

    def _hold_log(self) -> None:
        """Before anything commits: keep the log from each consumer's restored position
        (the writer could otherwise delete segments a consumer has not read)."""
        if self.worker is not None:
            self.worker.hold_log()
        if self.events is not None:
            service = self.events.service
            service.position = self.spool.hold(service.NAME, service.position)
        if self.anomaly is not None:
            self.anomaly.restore()
            self.anomaly.position = self.spool.hold(self.anomaly.NAME, self.anomaly.position)

    def _set_reading(self, enabled: bool) -> None:
        """The intake pauses and resumes reading through here: note since when it paused."""
        if enabled:
            self._reading_paused_since = None
        elif self._reading_paused_since is None:
            self._reading_paused_since = time.monotonic()
        self.client.set_reading(enabled)

    def reading_paused_s(self) -> float:
        since = self._reading_paused_since
        return 0.0 if since is None else time.monotonic() - since

    def _on_publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, packet_id: int
    ) -> None:
        # Not device data: under `_hub/` hubs (ours and peers in a shared group) publish
        # their presence, dropped; anything else there is a `reserved_topic` rejection.
        # The security events we publish lie outside our subscription (sensors.topics).
        # Neither call raises for a message (each is a message boundary).
        if topic.startswith(self._presence_head):
            self.intake.on_reserved(topic, payload, qos, retain, packet_id)
            return
        if self._foreign and self._site_of(topic) in self._foreign:
            self.intake.skip_foreign(qos, packet_id)  # its partition's hub logs it
            return
        if retain and self.client.session_present:
            # Sent because we (re)subscribed, not because a device published: with our
            # session kept, everything published meanwhile reached us as it was sent,
            # this one included. Stored again, an arrival-stamped status would be a new
            # point after every reconnect. (Without a session, it is state we missed.)
            self.intake.skip_retained(qos, packet_id)
            return
        self.intake.on_publish(topic, payload, qos, retain, packet_id)

    def _site_of(self, topic: str) -> str | None:
        head = self._site_head
        if not topic.startswith(head):
            return None
        end = topic.find("/", len(head))
        return topic[len(head) : end] if end > 0 else None

    def _on_oversize(self, topic: str, size: int, qos: int, packet_id: int) -> None:
        # Beyond what even the decoder's oversize check reads (a broker that does not
        # enforce our maximum packet size sent it): dead-lettered without its payload.
        self.intake.on_oversize(topic, size, self.client.opts.maximum_packet_size, qos, packet_id)

    def _on_connected(self, client: MqttClient, session_present: bool) -> None:
        now = time.time()
        if not session_present and self.session.expected(now):
            self.stats.sessions_lost += 1
            log.warning(
                "the broker %s:%d lost our session (session present: 0 on reconnect, %d so "
                "far): messages it had queued for the hub are lost; sequence-gap alarms that "
                "follow are marked as such",
                client.host,
                client.port,
                self.stats.sessions_lost,
            )
            self.intake.add_session_lost(int(now * 1000), self.settings.mqtt.client_id)
        self.session.alive(now)
        if self._reading_paused_since is not None:
            # A new connection reads from the start (the handshake needs it); the
            # intake's back-pressure still holds, so the cap holds across reconnects.
            client.set_reading(False)
        self.stats.connected = True
        self.stats.reconnects = client.counters.reconnects
        client.publish_nowait(self._own_status_topic, b"online", qos=0, retain=True)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run every task in one TaskGroup; return after a graceful stop."""
        stop = stop or asyncio.Event()
        self.spool.open()
        # The log is ours now: its last writer is gone. Its status says when it was
        # last seen (before the spool is used, its status file is not ours yet).
        self._connect_at = self._resume_at()
        self._hold_log()
        # Redeliveries of what the log already holds (the broker saw no PUBACK for it).
        self.intake.dedup.remember(self.spool.tail_records(self.intake.dedup.capacity))
        self.dead_letters.open()
        try:
            await self._prepare_influx()
            async with asyncio.TaskGroup() as tasks:
                # The pipeline: a failure here ends the hub (loudly, through the TaskGroup).
                runners = [
                    tasks.create_task(self._connect(), name="mqtt"),
                    tasks.create_task(self.intake.run(), name="intake"),
                    tasks.create_task(self.writer.run(), name="writer"),
                ]
                if self.publisher is not None:  # stopped with the runners, after the sinks
                    runners.append(tasks.create_task(self.publisher.run(), name="mqtt-events"))
                # Everything else is supervised: restarted on failure, never fatal.
                for name, factory in self.background_tasks().items():
                    supervised = self.supervisor.run(name, factory)
                    runners.append(tasks.create_task(supervised, name=name))
                if self.api is not None:
                    tasks.create_task(self.api.run(), name="api")
                await stop.wait()
                if self.api is not None:
                    await self.api.stop()  # finish requests in flight; no new actions
                log.info("stopping: persisting what was received, then disconnecting")
                await self._graceful_stop(runners)
        finally:
            if self.api is not None:
                self.api.close()
            if self.events is not None:
                for webhook in self.events.webhooks:
                    await webhook.aclose()
                self.events.store.close()
            await self.sink.aclose()
            self.dead_letters.close()
            self._refresh_gauges()
            self.spool.close()
            self._write_status(running=False)

    def background_tasks(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        """The supervised tasks by name, each a factory of a fresh coroutine (a restart
        needs a new one)."""
        found: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "stats": self._stats_loop,
            "status": self._status_loop,
        }
        if (gate := self.registry_gate) is not None:
            found["registry-allowlist"] = lambda: gate.run(self.decoder.forget_routes)
        if self.settings.events.enabled:
            found["clock"] = self._clock_loop
        if (events := self.events) is not None:
            found.update(detection_tasks(self.settings, events, self.anomaly, self.spool))
        if (worker := self.worker) is not None:
            found["detection"] = worker.run
        return found

    async def _clock_loop(self) -> None:
        """Log a tick once a second while the whole input is idle (module doc)."""
        seen, quiet_since, last_tick = -1, time.monotonic(), 0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self.stats.received != seen:
                seen, quiet_since = self.stats.received, now
                continue
            # Not while messages wait unacked (a full spool, a refusing disk): the broker
            # then holds more behind them, so the input is stalled, not idle.
            idle = (
                self.client.connected.is_set()
                and self._reading_paused_since is None
                and not self.intake.backlogged
                and now - quiet_since >= IDLE_AFTER_S
            )
            tick = time.time_ns() // 1_000_000 - TICK_LAG_MS
            if idle and tick > last_tick:
                self.intake.add_tick(tick)
                last_tick = tick

    def _resume_at(self) -> float:
        """When the hub may connect (`mqtt.resume_wait_s` after the previous run was last
        seen); 0 when at once."""
        wait = self.settings.mqtt.resume_wait_s
        if wait <= 0:
            return 0.0
        try:
            last = read_status(self.settings.hub.data_dir)
        except (OSError, ValueError) as exc:
            log.warning("previous status unreadable (%s): waiting the whole %.0f s", exc, wait)
            return time.time() + wait
        if last is None:
            return 0.0  # never ran here: the broker holds nothing sent to us
        seen = float(last.get("written_at") or 0.0)
        connect_at = min(seen, time.time()) + wait
        if connect_at > time.time():
            log.info(
                "the previous run was last seen %.1f s ago: connecting in %.1f s, once the "
                "broker has queued again what it sent that run unacknowledged "
                "(mqtt.resume_wait_s)",
                time.time() - seen,
                connect_at - time.time(),
            )
        return connect_at

    async def _connect(self) -> None:
        """The MQTT client, after the resume wait (`_resume_at`)."""
        delay = self._connect_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await self.client.run()

    async def _graceful_stop(self, runners: list[asyncio.Task[None]]) -> None:
        mqtt_task, intake_task = runners[0], runners[1]
        self.client.set_reading(False)  # what is still in the socket the broker re-sends later
        self.intake.stop()
        await intake_task
        await self.intake.drain()  # persist + ack what was received: nothing redelivered
        with contextlib.suppress(ConnectionLost):
            self.client.publish_nowait(self._own_status_topic, b"offline", qos=0, retain=True)
        if self.worker is not None:
            await self.worker.stop()  # the same, in the worker (it has a broker connection)
        if self.events is not None:
            # Decide on what the log holds, then hand events to the sinks while the
            # broker connection is still up (what is left stays in the outbox).
            await self.events.service.stop()
            if self.anomaly is not None:
                await self.anomaly.stop()
            await self.events.dispatcher.drain(5.0)
        mqtt_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mqtt_task

        # Give the writer a moment to empty the spool; what remains is sent next start.
        deadline = time.monotonic() + 5.0
        while self.spool.pending_lines and time.monotonic() < deadline:  # noqa: ASYNC110 (bounded)
            await asyncio.sleep(0.05)
        for task in runners:
            task.cancel()

    async def _prepare_influx(self) -> None:
        """Create the v1 database when asked; an unreachable InfluxDB is not fatal (spool)."""
        if self.settings.influx.api == "v1" and self.settings.influx.create_database:
            assert isinstance(self.sink, InfluxV1Writer)
            try:
                await self.sink.ensure_database()
            except WriteError as exc:
                log.warning(
                    "could not create InfluxDB database yet (%s); spooling until it is up", exc
                )

    async def _stats_loop(self) -> None:
        hub_tags = {"hub": self.settings.mqtt.client_id}
        while True:
            await asyncio.sleep(self.settings.hub.stats_interval_s)
            self._refresh_gauges()
            fields = self.stats.fields()
            # InfluxDB has no null: a percentile not known yet is left out.
            fields.update(
                (k, v)
                for k, v in self.detection_status().items()
                if v is not None and not isinstance(v, dict)  # `anomaly` has its own
            )
            line = encode_point(HUB_STATS, hub_tags, fields, time.time_ns())
            if self.stats.storage_error is None:
                self.intake.add_point(line)
            else:  # the spool refuses it: straight to InfluxDB, so dashboards show why
                try:
                    await self.sink.write(line)
                except WriteError as exc:
                    log.debug("hub_stats not written while the spool refuses writes: %s", exc)
            if self.stats.connected:
                self.session.alive()

    async def _status_loop(self) -> None:
        while True:
            if self.worker is not None:
                self.worker.pressure()
                if self.stats.first_received_ns and self._worker_cpu_at_first is None:
                    self._worker_cpu_at_first = float(self.worker.status.get("worker_cpu_s", 0))
            self._refresh_gauges()
            self._write_status(running=True)
            await asyncio.sleep(self.settings.hub.status_interval_s)

    def task_problems(self) -> dict[str, str]:
        """The supervised tasks that are not running, the detection worker's included."""
        found = self.supervisor.problems()
        if self.worker is not None:
            for name, health in self.worker.tasks.items():
                if isinstance(health, dict) and health.get("state") == "restarting":
                    failures, error = health.get("failures"), health.get("last_error")
                    found[f"detection/{name}"] = f"failed {failures}x, restarting (last: {error})"
        return found

    def detection_status(self) -> dict[str, Any]:
        """The rules consumer's counters (and `anomaly`'s), from this process or the
        worker's last report."""
        if self.worker is not None:
            return self.worker.current_status()
        found: dict[str, Any] = {}
        if self.events is not None:
            found.update(self.events.service.status())
        if self.anomaly is not None:
            found["anomaly"] = self.anomaly.status()
        return found

    def _refresh_gauges(self) -> None:
        stats = self.stats
        stats.spool_bytes = self.spool.pending_bytes
        stats.spool_lines = self.spool.pending_lines
        oldest = self.spool.oldest_pending_ms()
        stats.lag_s = max(0.0, time.time() - oldest / 1000) if oldest else 0.0
        stats.connected = self.client.connected.is_set()
        stats.reconnects = self.client.counters.reconnects

    def _write_status(self, *, running: bool) -> None:
        snapshot = self.stats.snapshot()
        snapshot.update(
            running=running,
            pid=os.getpid(),
            client_id=self.settings.mqtt.client_id,
            subscription=" ".join(subscription_filters(self.settings)),
            influx=f"{self.settings.influx.api} {self.settings.influx.url}",
        )
        if (left := self._connect_at - time.time()) > 0:
            snapshot["connect_in_s"] = round(left, 1)  # the resume wait (`_resume_at`)
        snapshot.update(self.detection_status())
        if self._worker_cpu_at_first is not None:  # CPU of the hub's processes, both
            snapshot["first_received_cpu_s"] += self._worker_cpu_at_first
        snapshot["tasks"] = self.supervisor.status()
        if self.worker is not None:
            snapshot["tasks"].update(
                {f"detection/{name}": health for name, health in self.worker.tasks.items()}
            )
        write_status(self.settings.hub.data_dir, snapshot)


async def run_hub(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then stop gracefully; SIGHUP reloads the rule files."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    hub = Hub(settings)
    if hub.events is not None:
        loop.add_signal_handler(signal.SIGHUP, hub.events.service.reload_on_signal)
    elif hub.worker is not None:
        loop.add_signal_handler(signal.SIGHUP, hub.worker.reload)
    tune_gc()
    log.info(
        "hub %s: %s → %s InfluxDB at %s (spool %s)",
        settings.mqtt.client_id,
        " ".join(subscription_filters(settings)),
        settings.influx.api,
        settings.influx.url,
        settings.spool.directory,
    )
    await hub.run(stop)
