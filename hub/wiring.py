"""Settings → the long-lived objects the hub runs: clients, stores, services.

Everything that reads `Settings` to build something lives here (the packages below take
plain values), so `hub.runtime` composes and `hub.cli` and the API server reuse the same
builders.
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from anomaly.baselines import OnlineParams, OnlineScorer
from anomaly.model_files import has_model
from broker.client import MQTT_V5, MQTT_V311, ConnectOptions, MqttClient
from broker.dynsec import AdminLogin, BrokerAccounts, DynsecClient
from broker.tls import client_tls
from cluster.leases import FencedOut, fence_holds
from cluster.partitions import partition_name
from detection.anomaly_service import AnomalyService, Scorer
from detection.directory_source import DirectorySource
from detection.rules_service import RulesService
from devstack.dynsec import Login, logins_path, read_logins, uses_dynsec
from devstack.stack import HOST, LocalStack, StackError
from events.dispatcher import OutboxDispatcher
from events.email_sink import EmailSink, SmtpConfig
from events.escalation import Delays, EscalationPolicy, Escalator
from events.manager import EventManager
from events.model import Severity
from events.sinks import InfluxSink, MqttSink, Sink, SinkRejected, WebhookSink
from events.store import EventStore, StoreScope
from hub.settings import EmailSettings, EscalationSettings, Settings
from ingest.influx import (
    Failure,
    InfluxV1Writer,
    InfluxV2Writer,
    InfluxWriter,
    V1Target,
    V2Target,
    WriteError,
    answers_ping,
)
from ingest.influxql import QueryTarget
from ingest.spool import LogReader
from registry.allowlist import RegistryGate
from registry.store import RegistryStore
from rules.engine import Engine
from rules.schema import Rule, load_rules
from rules.site_directory import directory_from_sites
from simulators.publish import BrokerOptions
from sites.model import load_site_ref

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- broker


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The MQTT clients' TLS context (`mqtt.tls`), or None for plain TCP."""
    mqtt = settings.mqtt
    if not mqtt.tls:
        return None
    return client_tls(mqtt.tls_ca_file, mqtt.tls_cert_file, mqtt.tls_key_file)


def broker_options(settings: Settings) -> BrokerOptions:
    """Publish where (and as) the hub listens: same broker, credentials, TLS, topic prefix."""
    mqtt = settings.mqtt
    return BrokerOptions(
        broker_host=mqtt.host,
        broker_port=mqtt.port,
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password else None,
        tls=tls_context(settings),
        topic_prefix=mqtt.topic_prefix,
    )


def accounts_from_settings(settings: Settings) -> BrokerAccounts | None:
    """The hub's broker accounts when `registry.dynsec` is on (else None)."""
    reg = settings.registry
    if not reg.dynsec:
        return None
    if reg.dynsec_password is None:
        raise ValueError("registry.dynsec is on: set registry.dynsec_password")
    login = AdminLogin(
        host=settings.mqtt.host,
        port=settings.mqtt.port,
        username=reg.dynsec_username,
        password=reg.dynsec_password.get_secret_value(),
        tls=tls_context(settings),
        timeout_s=reg.dynsec_timeout_s,
    )
    return BrokerAccounts(DynsecClient(login), topic_prefix=settings.mqtt.topic_prefix)


def stack_logins(settings: Settings) -> tuple[Settings, Login | None]:
    """For `gridwatch run`: when the local stack (default directory) runs its broker
    with dynamic security on `mqtt.url`, the settings with its logins filled in, and the
    demo simulator's login. Otherwise the settings as they are and None."""
    stack = LocalStack(settings.hub.data_dir / "stack", settings.mqtt.port)
    path = logins_path(stack.root)
    if not path.exists():
        return settings, None  # the usual case: no dynsec stack here, nothing to read
    try:
        mosquitto = stack.status()["mosquitto"]
    except StackError as exc:
        log.warning("not using %s: %s", path, exc)
        return settings, None
    ours = settings.mqtt.host == HOST and mosquitto["port"] == settings.mqtt.port
    if not (ours and mosquitto["running"] and uses_dynsec(stack)):
        return settings, None
    logins = read_logins(path)
    if not logins.hub.username:
        raise StackError(f"{path} has no hub login yet: run `gridwatch stack up --dynsec`")
    mqtt, registry = settings.mqtt, settings.registry
    if mqtt.username is None:
        mqtt = mqtt.model_copy(
            update={"username": logins.hub.username, "password": SecretStr(logins.hub.password)}
        )
    if not registry.dynsec:
        registry = registry.model_copy(
            update={
                "dynsec": True,
                "dynsec_username": logins.admin.username,
                "dynsec_password": SecretStr(logins.admin.password),
            }
        )
    log.info("using the local stack's broker logins from %s", path)
    return settings.model_copy(update={"mqtt": mqtt, "registry": registry}), logins.simulator


# ---------------------------------------------------------------------- InfluxDB and ingest


def credential_key(settings: Settings) -> bytes:
    """The configured key, or one generated once into data_dir (0600) and reused."""
    if settings.hub.credential_hash_key is not None:
        return settings.hub.credential_hash_key.get_secret_value().encode()
    path = settings.hub.data_dir / "credential-hash.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under a private name, then linked into place: cluster nodes
        # starting together on one data_dir agree on the first key and never read half.
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
            log.warning(
                "generated a credential-hash key in %s; set hub.credential_hash_key to share it",
                path,
            )
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


def build_writer(settings: Settings) -> InfluxWriter:
    influx = settings.influx
    if influx.api == "v2":
        assert influx.org and influx.bucket and influx.token
        return InfluxV2Writer(
            V2Target(
                influx.url,
                influx.org,
                influx.bucket,
                influx.token.get_secret_value(),
                influx.timeout_s,
            )
        )
    return InfluxV1Writer(
        V1Target(
            influx.url,
            influx.database,
            influx.retention_policy,
            influx.username,
            influx.password.get_secret_value() if influx.password else None,
            influx.timeout_s,
            create_database=influx.create_database,
        )
    )


def query_target(settings: Settings) -> QueryTarget:
    """InfluxQL target for readers (benchmarks, anomaly training, dashboards' checks)."""
    influx = settings.influx
    return QueryTarget(
        url=influx.url,
        database=influx.database if influx.api == "v1" else (influx.bucket or influx.database),
        retention_policy=influx.retention_policy,
        username=influx.username,
        password=influx.password.get_secret_value() if influx.password else None,
        token=influx.token.get_secret_value() if influx.token else None,
    )


# ---------------------------------------------------------------------- stores


def store_url(settings: Settings) -> str:
    url = settings.events.store_url
    if url:
        return url
    return f"sqlite:///{Path(settings.hub.data_dir).resolve() / 'events.db'}"


def migrate_event_store(settings: Settings) -> None:
    """Create or upgrade the event store now (a bad URL or a newer schema is an error at
    start, in the process that was asked to run)."""
    if settings.events.store_url is None:  # the default SQLite file under data_dir
        Path(settings.hub.data_dir).mkdir(parents=True, exist_ok=True)
    with EventStore(store_url(settings)) as store:
        store.migrate()


def open_registry(settings: Settings) -> RegistryStore:
    """The registry in the event store's database, migrated."""
    url = store_url(settings)
    if settings.events.store_url is None:  # the default SQLite file under data_dir
        Path(settings.hub.data_dir).mkdir(parents=True, exist_ok=True)
    store = RegistryStore(url)
    store.migrate()
    return store


def registry_gate(settings: Settings) -> RegistryGate | None:
    """The gate when `registry.enforce` is on, else None (every device is accepted)."""
    if not settings.registry.enforce:
        return None
    return RegistryGate(open_registry(settings), settings.registry.refresh_s)


# ---------------------------------------------------------------------- rules, events, anomaly


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
    escalator: Escalator | None = None
    """Reminds and escalates unacknowledged events (`escalation`; run it as a task)."""


def detection_tasks(
    settings: Settings, events: EventsSide, anomaly: AnomalyService | None, log: LogReader
) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
    """The detection side's background tasks by name (factories: a restart needs a fresh
    coroutine), over the log as `log` reads it: in the hub's process (`Hub`) or in the
    detection worker's (`hub.worker`)."""
    found: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
        "rules": lambda: events.service.run(log)
    }
    if (directory := events.directory) is not None:  # the registry's devices, fresh
        refresh_s = settings.registry.refresh_s
        found["rules-directory"] = lambda: directory.run(events.service, refresh_s)
    found["event-sinks"] = events.dispatcher.run
    if (escalator := events.escalator) is not None:
        found["escalation"] = escalator.run
    if anomaly is not None:
        found["anomaly"] = lambda: anomaly.run(log, rules_behind=lambda: events.service.behind)
    return found


def events_publisher(settings: Settings) -> MqttClient:
    """The connection the hub publishes events on, apart from the one it reads devices
    on (client id `<client_id>-events`, no subscriptions, no session: the outbox, not
    the broker, keeps what is undelivered)."""
    mqtt = settings.mqtt
    return MqttClient(
        mqtt.host,
        mqtt.port,
        ConnectOptions(
            client_id=f"{mqtt.client_id}-events"[:64],
            protocol=MQTT_V5 if mqtt.protocol == "5" else MQTT_V311,
            clean_start=True,
            session_expiry_s=0,
            keepalive_s=mqtt.keepalive_s,
            username=mqtt.username,
            password=mqtt.password.get_secret_value() if mqtt.password else None,
        ),
        subscriptions=[],
        on_publish=lambda *_args: None,
        tls=tls_context(settings),
        reconnect_min_s=mqtt.reconnect_min_s,
        reconnect_max_s=mqtt.reconnect_max_s,
    )


def build_events(
    settings: Settings, publisher: MqttClient | None, influx: InfluxWriter
) -> EventsSide:
    """Open (and migrate) the store, compile the rules, wire the sinks. `publisher` is
    the MQTT connection events are published on (`events_publisher`), never the one the
    hub reads devices on: back-pressure there stops reading, PUBACKs included."""
    cfg = settings.events
    sinks: list[Sink] = []
    if cfg.write_influx:
        sinks.append(InfluxSink(influx_write(influx), ping=lambda: answers_ping(influx)))
    if cfg.publish_mqtt and publisher is not None:

        async def publish(topic: str, payload: bytes) -> None:
            await publisher.publish(topic, payload, qos=1)

        sinks.append(
            MqttSink(publish, settings.mqtt.topic_prefix, connected=publisher.connected.is_set)
        )
    webhooks = [
        WebhookSink(url, secret=cfg.webhook_secret, name=f"webhook-{i}")
        for i, url in enumerate(cfg.webhooks)
    ]
    sinks += webhooks
    if settings.email.enabled:
        sinks.append(EmailSink(smtp_config(settings.email)))
    Path(settings.hub.data_dir).mkdir(parents=True, exist_ok=True)
    store = EventStore(store_url(settings), scope=store_scope(settings))
    store.migrate()

    rules = load_rules(cfg.rules)
    source = directory_source(settings, rules)  # the registry's sites, else the site files
    directory = source.current
    manager = EventManager(
        store,
        workers=directory.workers(),
        sinks=[s.name for s in sinks],
        flood_exempt=cfg.flood_exempt,
    )
    dispatcher = OutboxDispatcher(store, sinks, clock_ms=_now_ms)
    service = RulesService(
        Engine(rules, directory, lateness_ms=round(cfg.allowed_lateness_s * 1000)),
        store,
        manager,
        rule_paths=cfg.rules,
        snapshot_interval_s=cfg.snapshot_interval_s,
        on_events=dispatcher.wake,
    )
    service.restore()
    escalator = None
    if settings.escalation.active:
        escalator = Escalator(
            manager,
            escalation_policy(settings.escalation),
            clock_ms=_now_ms,
            interval_s=settings.escalation.interval_s,
            on_saved=dispatcher.wake,
        )
    return EventsSide(store, service, dispatcher, webhooks, source, escalator)


def escalation_policy(cfg: EscalationSettings) -> EscalationPolicy:
    """`[escalation]` as the escalator's policy (seconds to ms; 0 means never)."""

    def ms(seconds: float) -> int | None:
        return round(seconds * 1000) if seconds > 0 else None

    delays = {
        Severity.CRITICAL: Delays(ms(cfg.notify_critical_s), ms(cfg.escalate_critical_s)),
        Severity.HIGH: Delays(ms(cfg.notify_high_s), ms(cfg.escalate_high_s)),
        Severity.MEDIUM: Delays(ms(cfg.notify_medium_s), ms(cfg.escalate_medium_s)),
        Severity.LOW: Delays(ms(cfg.notify_low_s), ms(cfg.escalate_low_s)),
    }
    return EscalationPolicy(
        delays=delays,
        contacts={k: tuple(v) for k, v in cfg.contacts.items()},
        supervisors={k: tuple(v) for k, v in cfg.supervisors.items()},
        rate_limit=cfg.rate_limit,
        rate_window_ms=round(cfg.rate_window_s * 1000),
    )


def smtp_config(cfg: EmailSettings) -> SmtpConfig:
    """`[email]` as the e-mail sink's SMTP settings."""
    return SmtpConfig(
        host=cfg.host,
        port=cfg.port,
        sender=cfg.sender,
        security=cfg.security,
        username=cfg.username,
        password=cfg.password.get_secret_value() if cfg.password else None,
        timeout_s=cfg.timeout_s,
        ca_file=cfg.ca_file,
        subject_prefix=cfg.subject_prefix,
        desk_url=cfg.desk_url,
    )


def directory_source(settings: Settings, rules: Sequence[Rule] = ()) -> DirectorySource:
    """Site files of `events.sites` as the fallback, the registry in the event store; a
    partition's hub (cluster mode) keeps to its own sites."""
    files = directory_from_sites([load_site_ref(ref) for ref in settings.events.sites])
    try:
        store: RegistryStore | None = open_registry(settings)
    except SQLAlchemyError as exc:
        log.warning("registry unavailable, rules use the site files only: %s", exc)
        store = None
    cluster = settings.cluster
    only = cluster.partition_sites if cluster.partition is not None else None
    return DirectorySource(store, files, rules, only_sites=only)


def store_scope(settings: Settings) -> StoreScope | None:
    """A partition's hub sees its own sites' events and keeps its own state names in the
    shared store, and its writes are fenced by its lease (docs/scaling.md)."""
    cluster = settings.cluster
    if cluster.partition is None or cluster.lease_token is None:
        return None
    partition, token = cluster.partition, cluster.lease_token

    def fence(conn: Connection) -> None:
        if not fence_holds(conn, partition, token):
            raise FencedOut(partition, token)

    foreign = None if cluster.foreign_sites is None else frozenset(cluster.foreign_sites)
    return StoreScope(partition_name(partition), frozenset(cluster.partition_sites), fence, foreign)


def model_dir(settings: Settings) -> Path:
    """`anomaly.model_dir`, or `<hub.data_dir>/anomaly`."""
    configured = settings.anomaly.model_dir
    return configured if configured is not None else Path(settings.hub.data_dir) / "anomaly"


def build_anomaly(
    settings: Settings, manager: EventManager, on_events: Callable[[], None]
) -> AnomalyService | None:
    """The service, or None (logged) when scoring is off.

    With a trained model in `model_dir`, the service scores with it; without one, with
    per-device baselines learned online (`anomaly.online`, the default) or not at all.
    A model that exists but does not fit this code (schema, versions, digest) is an
    error: the hub must not run believing it detects anomalies when it cannot."""
    cfg = settings.anomaly
    if not cfg.enabled:
        return None
    directory = model_dir(settings)
    scorer: Scorer
    if not has_model(directory):
        if not cfg.online:
            log.warning(
                "anomaly: no model in %s and anomaly.online is off; scoring is off until "
                "`gridwatch anomaly train` saves one",
                directory,
            )
            return None
        params = OnlineParams(
            warmup_ms=round(cfg.warmup_s * 1000),
            repeat_after_ms=round(cfg.repeat_after_s * 1000),
            clear_after_ms=round(cfg.clear_after_s * 1000),
        )
        scorer = OnlineScorer(params)
        log.info(
            "anomaly: no model in %s; learning per-device baselines online (%s; each device "
            "quiet for its first %s s)",
            directory,
            "; ".join(
                f"{kind}: {', '.join(f.name for f in fields)}"
                for kind, fields in sorted(scorer.fields.items())
            ),
            f"{cfg.warmup_s:g}",
        )
    else:
        # Imported here: numpy and the detectors, about 11 MB in each process that
        # imports them, only for a trained model (the online baselines are pure Python).
        from anomaly.model_store import ModelMismatch, load_model
        from anomaly.online import AnomalyScorer, ScoringPolicy

        try:
            model = load_model(directory)
        except ModelMismatch as exc:
            raise ModelMismatch(f"anomaly model in {directory}: {exc}") from exc
        policy = ScoringPolicy(
            repeat_after_ms=round(cfg.repeat_after_s * 1000),
            clear_after_ms=round(cfg.clear_after_s * 1000),
        )
        log.info(
            "anomaly: scoring %s with the model in %s (thresholds %s)",
            ", ".join(sorted(model.kinds)),
            directory,
            ", ".join(f"{k} {m.threshold.value:.3g}" for k, m in sorted(model.kinds.items())),
        )
        scorer = AnomalyScorer(model, policy)
    return AnomalyService(
        scorer,
        manager,
        batch_interval_s=cfg.batch_interval_s,
        yield_lag_records=cfg.yield_lag_records,
        on_events=on_events,
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
