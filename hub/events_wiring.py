"""Build the hub's rules and events side from settings: store, engine, manager, sinks.

Separate from runtime.py so the ingest composition stays readable; everything here is
optional (events.enabled) and only the hub knows how ingest's clients feed the sinks.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from events.dispatcher import OutboxDispatcher
from events.manager import EventManager
from events.sinks import InfluxSink, MqttSink, Sink, SinkRejected, WebhookSink
from events.store import EventStore
from hub.rules_service import RulesService
from hub.settings import Settings
from ingest.influx import Failure, InfluxWriter, WriteError
from ingest.mqtt_client import MqttClient
from rules.engine import Engine
from rules.schema import load_rules

if TYPE_CHECKING:
    from hub.rules_directory import DirectorySource


def store_url(settings: Settings) -> str:
    url = settings.events.store_url
    if url:
        return url
    return f"sqlite:///{Path(settings.hub.data_dir).resolve() / 'events.db'}"


def influx_write(writer: InfluxWriter) -> Callable[[Sequence[str]], Awaitable[None]]:
    """Event points through the hub's InfluxDB writer; refused data is not retried."""

    async def write(lines: Sequence[str]) -> None:
        try:
            await writer.write(("\n".join(lines) + "\n").encode())
        except WriteError as exc:
            if exc.failure is Failure.REJECTED:
                raise SinkRejected(exc.detail) from exc
            raise

    return write


@dataclass
class EventsSide:
    store: EventStore
    service: RulesService
    dispatcher: OutboxDispatcher
    webhooks: list[WebhookSink]
    directory: DirectorySource | None = None
    """Keeps the rules' directory in step with the registry (run it as a task)."""


def build_events(settings: Settings, client: MqttClient, influx: InfluxWriter) -> EventsSide:
    """Open (and migrate) the store, compile the rules, wire the sinks."""
    cfg = settings.events
    sinks: list[Sink] = []
    if cfg.write_influx:
        sinks.append(InfluxSink(influx_write(influx)))
    if cfg.publish_mqtt:

        async def publish(topic: str, payload: bytes) -> None:
            await client.publish(topic, payload, qos=1)

        sinks.append(MqttSink(publish, settings.mqtt.topic_prefix.strip("/")))
    webhooks = [
        WebhookSink(url, secret=cfg.webhook_secret, name=f"webhook-{i}")
        for i, url in enumerate(cfg.webhooks)
    ]
    sinks += webhooks
    Path(settings.hub.data_dir).mkdir(parents=True, exist_ok=True)
    store = EventStore(store_url(settings))
    store.migrate()
    from hub.rules_directory import directory_source  # imports registry_import (uses us)

    rules = load_rules(cfg.rules)
    source = directory_source(settings, rules)  # the registry's sites, else the site files
    directory = source.current
    manager = EventManager(store, workers=directory.workers(), sinks=[s.name for s in sinks])
    dispatcher = OutboxDispatcher(store, sinks, clock_ms=_now_ms)
    service = RulesService(
        Engine(rules, directory),
        store,
        manager,
        topic_prefix=settings.mqtt.topic_prefix,
        rule_paths=cfg.rules,
        snapshot_interval_s=cfg.snapshot_interval_s,
        on_events=dispatcher.wake,
    )
    service.restore()
    return EventsSide(store, service, dispatcher, webhooks, source)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
