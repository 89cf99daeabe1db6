"""One settings model: defaults < TOML file (`--config`) < `GRIDWATCH_<SECTION>__<KEY>` env.

Strict for operators: unknown keys (in the file or as GRIDWATCH_ variables) are errors,
secrets are `SecretStr` and placeholder secrets are refused. Built once at start-up and
passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from events.escalation_notice import check_contact
from events.model import Severity
from sensors import topics

ENV_PREFIX = "GRIDWATCH_"
_PLACEHOLDERS = frozenset(
    {"changethis", "changeme", "change-me", "secret", "password", "xxx", "todo"}
)

Positive = Annotated[float, Field(gt=0)]


class SettingsError(Exception):
    """Settings could not be loaded; the message says which key and why."""


def _refuse_placeholder(value: SecretStr | None, name: str) -> SecretStr | None:
    if value is not None and value.get_secret_value().strip().lower() in _PLACEHOLDERS | {""}:
        raise ValueError(f"{name} is a placeholder or empty: set a real secret")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Section):
    url: str = "mqtt://127.0.0.1:18830"
    """`mqtt://host:port` or `mqtts://host:port` (TLS)."""
    client_id: str = Field(default="gridwatch-hub", min_length=1, max_length=64)
    """Fixed, so the broker keeps our persistent session (and queue) while we are away."""
    username: str | None = None
    password: SecretStr | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    topic_prefix: str = topics.DEFAULT_PREFIX
    """Device topics are `<prefix>/<site>/<kind>/<device>/<channel>` (outer slashes are
    dropped); security events go to `<events root>/<site>`, e.g. `gw/events/v1/<site>`."""
    shared_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    """MQTT 5 shared subscription group: hubs with the same group split the load."""
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    receive_maximum: int = Field(default=4096, ge=1, le=65535)
    """Unacked messages the broker may send us (MQTT 5): the back-pressure window."""
    session_expiry_s: int = Field(default=7 * 86400, ge=0)
    """How long the broker keeps our queue while the hub is down."""
    reconnect_min_s: Positive = 0.5
    reconnect_max_s: Positive = 30.0
    resume_wait_s: float = Field(default=0.0, ge=0.0, le=600.0)
    """At start, the hub connects only this long after its previous run was last seen
    (its status file's last write), so that a broker which sends unacknowledged messages
    again only when an ack timeout runs out has queued them before newer ones. NATS: its
    MQTT `ack_wait` (30 s by default) plus 1 s; else new messages come first and events
    can differ from an uninterrupted run. 0 for Mosquitto, which re-sends them in order
    at the reconnect (README, "Supported brokers")."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://host:1883 or mqtts://host:8883")
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        return _refuse_placeholder(value, "mqtt.password")

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        return topics.normalise_prefix(value)

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if not topics.is_topic_level(value):  # it names the hub's presence topic
            raise ValueError("must not contain '/', '+', '#' or NUL")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


class InfluxSettings(_Section):
    url: str = "http://127.0.0.1:18086"
    api: Literal["v1", "v2"] = "v1"
    database: str = "gridwatch"
    """v1: database (and optional retention policy)."""
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    create_database: bool = True
    """v1: run CREATE DATABASE at start-up (idempotent)."""
    org: str | None = None
    """v2: organisation, bucket and token."""
    bucket: str | None = None
    token: SecretStr | None = None
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    flush_interval_s: Positive = 1.0
    timeout_s: Positive = 10.0
    retry_max_s: Positive = 30.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("password", "token")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        return _refuse_placeholder(value, "influx secret")

    @model_validator(mode="after")
    def _v2_needs(self) -> Self:
        if self.api == "v2":
            missing = [k for k in ("org", "bucket", "token") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"api = 'v2' needs {', '.join(missing)}")
        return self


class SpoolSettings(_Section):
    directory: Path = Path(".gridwatch/spool")
    max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    """When this much waits for InfluxDB, the hub stops acking and the broker queues."""
    segment_bytes: int = Field(default=64 << 20, ge=1 << 16)
    fsync_batch: int = Field(default=2000, ge=1)
    """Messages per fsync at most."""
    fsync_linger_ms: float = Field(default=5.0, ge=0)
    """How long the first message of a batch waits for company before the fsync."""


class DeadLetterSettings(_Section):
    directory: Path = Path(".gridwatch/deadletters")
    max_bytes: int = Field(default=256 << 20, ge=1 << 16)
    keep: int = Field(default=5, ge=1, le=100)
    """Rotated files kept; the oldest is dropped."""


class HubSettings(_Section):
    data_dir: Path = Path(".gridwatch")
    """Status file and the generated credential-hash key live here."""
    stats_interval_s: Positive = 10.0
    status_interval_s: Positive = 1.0
    credential_hash_key: SecretStr | None = None
    """Key for hashing card numbers and plates; generated into data_dir when unset.
    Set it explicitly when several hubs must produce the same hashes."""
    max_payload_bytes: int = Field(default=16 * 1024, ge=256)
    max_future_s: Positive = 300.0
    max_age_s: Positive = 30 * 86400.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("credential_hash_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        value = _refuse_placeholder(value, "hub.credential_hash_key")
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("hub.credential_hash_key needs at least 16 characters")
        return value


class EventsSettings(_Section):
    """Rules, the event store and where events go."""

    enabled: bool = True
    store_url: str | None = None
    """SQLAlchemy URL: sqlite:///path (default: <hub.data_dir>/events.db) or
    postgresql://user@host:port/db."""
    rules: list[Path] = Field(default_factory=list)
    """Rule files; empty: the built-in pack."""
    sites: list[str] = Field(default_factory=lambda: ["yingyang"])
    """Site files (or demo site names) that tell rules where devices are."""
    publish_mqtt: bool = True
    """Publish every transition on `<events root>/<site>` (QoS 1): `gw/events/v1/<site>`
    for the default prefix, outside the device topics the hub subscribes to."""
    write_influx: bool = True
    """Write every transition as a point in security_event."""
    webhooks: list[str] = Field(default_factory=list)
    webhook_secret: SecretStr | None = None
    snapshot_interval_s: Positive = 10.0
    allowed_lateness_s: float = Field(default=0.0, ge=0.0, le=3600.0)
    """How late (in device time) a reading may reach the rules, behind another device's,
    and still be decided as if it had come in order: rule timers (held open, silence,
    windows) fire this long after their time. 0: as soon as any device's time passes
    them. Raise it when devices reach the broker through paths that delay some of them
    (gateways that store and forward); timer alarms come that much later.
    `rules_late_readings` in `gridwatch status` counts readings later than this."""
    detection: Literal["process", "thread"] = "process"
    """Where rules, anomaly scoring and the event sinks run: "process", a worker process
    of the hub's own (`hub.worker`: the hub's second core, so alarms are decided while
    the intake stores and acknowledges); "thread", inside the hub's process, sharing one
    core with the intake (for embedding and tests that reach into the services)."""
    flood_exempt: list[Severity] = Field(default_factory=lambda: [Severity.CRITICAL])
    """Severities that always annunciate on their own, even during an alarm flood (never
    grouped under the storm parent nor suppressed); e.g. ["critical", "high"]."""


class ApiSettings(_Section):
    """The HTTP API (`gridwatch serve`, and alongside `gridwatch run`)."""

    enabled: bool = True
    """Serve the API inside `gridwatch run`."""
    host: str = "127.0.0.1"
    port: int = Field(default=18080, ge=1, le=65535)
    jwt_secret: SecretStr | None = None
    """Signs bearer tokens; generated into data_dir when unset. Set it explicitly when
    several API processes must accept each other's tokens."""
    token_lifetime_s: int = Field(default=3600, ge=60, le=7 * 86400)
    bootstrap_admin: str | None = None
    """Username of an admin created on start when no user exists yet; its password is
    generated and printed once on stderr (or use `gridwatch users add`)."""
    login_attempts: int = Field(default=5, ge=1)
    """Failed logins per username and client within login_window_s before 429."""
    login_window_s: Positive = 60.0
    login_account_failures: int = Field(default=10, ge=1)
    """Failed logins on one account, from any address, before its backoff starts
    (1 s, doubling per further failure, at most login_backoff_max_s)."""
    login_backoff_max_s: float = Field(default=900.0, ge=1, le=86400)
    """The account backoff's ceiling; addresses the owner logged in from are exempt."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Largest request body (413 beyond it, refused before it is read)."""
    max_import_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    """Largest body of the registry's bulk import (`POST /api/v1/registry/import`)."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """IPs or CIDRs of reverse proxies whose X-Forwarded-For/-Proto are believed: the
    client address the login limits key on, and https for the desk's Secure cookie."""

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"api.trusted_proxies: {entry!r} is no IP or CIDR") from exc
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _jwt(cls, value: SecretStr | None) -> SecretStr | None:
        value = _refuse_placeholder(value, "api.jwt_secret")
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("api.jwt_secret needs at least 32 characters")
        return value


class RegistrySettings(_Section):
    """The device registry (in the event store's database) and broker credentials."""

    enforce: bool = False
    """Refuse messages of devices the registry does not list as active (reason
    `unknown_device`: counted, dead-lettered, and an `unregistered_device` event)."""
    refresh_s: Positive = 10.0
    """How often the hub re-reads the registry's active devices when `enforce` is on."""
    dynsec: bool = False
    """Manage MQTT logins through Mosquitto's dynamic-security plugin."""
    dynsec_username: str = "gridwatch-admin"
    """The plugin's admin login (created by `mosquitto_ctrl dynsec init`)."""
    dynsec_password: SecretStr | None = None
    dynsec_timeout_s: Positive = 5.0

    @field_validator("dynsec_password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        return _refuse_placeholder(value, "registry.dynsec_password")


class FieldSettings(_Section):
    """The grid worker's and the residents' pages: photo uploads and the public report
    form's abuse limits (docs/field-loop.md)."""

    directory: Path | None = None
    """Where photos are stored (named by their SHA-256); default <hub.data_dir>/attachments."""
    max_photo_bytes: int = Field(default=8 * 1024 * 1024, ge=16 * 1024, le=32 * 1024 * 1024)
    """Largest photo (413 beyond it); JPEG, PNG and WebP only (415 otherwise)."""
    max_worker_photos: int = Field(default=4, ge=1, le=10)
    """Photos a grid worker may send with one note or resolution."""
    max_report_photos: int = Field(default=1, ge=0, le=4)
    """Photos a resident may send with one report (0: none)."""
    public_reports: int = Field(default=10, ge=1)
    """Reports one client address may file (or try to) on the public page per window."""
    public_reports_total: int = Field(default=300, ge=1)
    """Reports all clients together may file on the public page per window."""
    public_report_window_s: Positive = 3600.0


class AnomalySettings(_Section):
    """Anomaly scoring in the hub: per-device baselines learned online (the default), or
    the model `gridwatch anomaly train` saves when one exists (docs/anomaly-hub.md)."""

    enabled: bool = True
    """Score readings: with the model in model_dir when there is one, else (`online`)
    with baselines each device teaches from its first reading."""
    online: bool = True
    """Without a trained model, learn per-device baselines online (false: scoring stays
    off until `gridwatch anomaly train` saves a model)."""
    warmup_s: float = Field(default=86_400.0, ge=0)
    """Online baselines: a device raises nothing for this long of event time after its
    first reading (it learns; a day takes in the daily cycle)."""
    model_dir: Path | None = None
    """Where models are saved and loaded; default <hub.data_dir>/anomaly."""
    batch_interval_s: Positive = 0.5
    """How often queued readings are scored (as one batch, on a worker thread)."""
    yield_lag_records: int = Field(default=200_000, ge=0)
    """Alarms first: while the rules consumer has more of the log waiting, scoring waits
    (the two share the detection worker's CPU), until the anomaly consumer is itself this
    many records behind (0: never wait). Under load anomaly events come later, alarms
    sooner; what either decides does not change."""
    repeat_after_s: Positive = 600.0
    """The per-device rate limit: while a device stays anomalous, at most one anomaly
    detection per this many seconds (it bumps the open event; the flags held in between
    are counted in its `held` value)."""
    clear_after_s: Positive = 900.0
    """A device's anomaly clears after this long without a flagged reading."""
    detector: Literal["median_mad", "isolation_forest", "pca", "lof"] = "median_mad"
    """Detector `gridwatch anomaly train` fits per kind (and per device with history)."""
    false_alarms_per_device_day: Positive = 0.5
    """Training target: flagged readings per device and day on held-out normal history."""


class EscalationSettings(_Section):
    """Unacknowledged events: a reminder to the assignee, then the site's supervisor
    (docs/escalation.md). Delays are per severity in seconds of wall-clock time; 0 means
    never. Contacts are URIs: `mailto:` reaches the e-mail sink ([email]); every step also
    goes to the webhooks and MQTT like any transition."""

    enabled: Literal["auto"] | bool = "auto"
    """auto: on when `contacts` or `supervisors` names someone; true: on regardless (steps
    reach webhooks and MQTT only); false: off."""
    notify_critical_s: float = Field(default=120.0, ge=0)
    """Unacknowledged this long: remind the assignee (0: critical events never escalate)."""
    notify_high_s: float = Field(default=300.0, ge=0)
    notify_medium_s: float = Field(default=900.0, ge=0)
    notify_low_s: float = Field(default=0.0, ge=0)
    escalate_critical_s: float = Field(default=180.0, ge=0)
    """Still unacknowledged this long after the reminder: the site's supervisor (0: never)."""
    escalate_high_s: float = Field(default=600.0, ge=0)
    escalate_medium_s: float = Field(default=1800.0, ge=0)
    escalate_low_s: float = Field(default=0.0, ge=0)
    contacts: dict[str, list[str]] = Field(default_factory=dict)
    """Grid worker id -> contact URI(s) for reminders; "*": everyone not listed (and the
    desk, for events without an assignee)."""
    supervisors: dict[str, list[str]] = Field(default_factory=dict)
    """Site -> the supervisor's contact URI(s); "*": every site not listed."""
    rate_limit: int = Field(default=5, ge=1)
    """Steps one addressee (a worker, a site's supervisor) gets per rate_window_s; the
    rest are held and sent as the window frees, most severe first."""
    rate_window_s: Positive = 60.0
    interval_s: Positive = 5.0
    """How often unacknowledged events are checked."""

    @field_validator("contacts", "supervisors", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        if isinstance(value, Mapping):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("contacts", "supervisors")
    @classmethod
    def _uris(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for uris in value.values():
            for uri in uris:
                check_contact(uri)
        return value

    @property
    def active(self) -> bool:
        if self.enabled == "auto":
            return any(self.contacts.values()) or any(self.supervisors.values())
        return bool(self.enabled)


class EmailSettings(_Section):
    """Escalation steps as e-mail through an SMTP relay (docs/escalation.md)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    sender: str = "gridwatch@localhost"
    """The From address."""
    security: Literal["none", "starttls", "tls"] = "starttls"
    """starttls (port 587 usually), tls (SMTPS, port 465) or none (a relay on this host)."""
    username: str | None = None
    password: SecretStr | None = None
    timeout_s: Positive = 10.0
    ca_file: Path | None = None
    """CA bundle for the relay's certificate; default: the system's."""
    subject_prefix: str = "[GridWatch]"
    desk_url: str | None = None
    """The hub's public base URL (https://hub.example.org): mail links to the event."""

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        return _refuse_placeholder(value, "email.password")

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return check_contact(f"mailto:{value}")[len("mailto:") :]

    @model_validator(mode="after")
    def _login_needs_tls(self) -> Self:
        loopback = self.host in ("localhost", "::1") or self.host.startswith("127.")
        if self.username and self.security == "none" and not loopback:
            raise ValueError("an SMTP login off loopback needs security 'starttls' or 'tls'")
        return self


class ClusterSettings(_Section):
    """Site-partitioned hubs (docs/scaling.md): sites map to `partitions` fixed
    partitions, each owned by one live hub at a time through a lease in PostgreSQL (the
    event store's database); the owner runs the partition as a hub of its own, with its
    own MQTT session, log and committed consumer state, so a successor resumes it."""

    enabled: bool = False
    partitions: int = Field(default=8, ge=1, le=1024)
    """Fixed for the life of the cluster: a site's partition is crc32(site) mod this."""
    node_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """This hub's name in the lease table; default `<hostname>-<pid>`."""
    lease_ttl_s: float = Field(default=6.0, ge=1.0, le=300.0)
    """A lease not renewed for this long may be taken by another hub: a dead hub's
    partitions are owned again within about this long plus two renewal periods (a
    third of it each)."""
    sites: list[str] = Field(default_factory=list)
    """Site ids to partition besides those the rules' directory knows (the registry's and
    `events.sites`): sites with no site file or registry entry, e.g. ingest-only ones."""
    partition: int | None = Field(default=None, ge=0)
    """Set by the cluster node for the hub it runs for one partition, never by hand."""
    partition_sites: list[str] = Field(default_factory=list)
    """The partition's sites (set by the node with `partition`)."""
    foreign_sites: list[str] | None = None
    """Set by the node for the catch-all partition's hub only (`cluster.partitions.
    CATCH_ALL`): it reads every site but these, the other partitions' sites, so a site
    no partition knows yet is logged rather than dropped by the broker."""
    lease_token: int | None = Field(default=None, ge=1)
    """The partition's lease token the node holds: the event store refuses writes once
    another hub has taken the lease (fencing)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    mqtt: MqttSettings = MqttSettings()
    influx: InfluxSettings = InfluxSettings()
    spool: SpoolSettings = SpoolSettings()
    deadletters: DeadLetterSettings = DeadLetterSettings()
    hub: HubSettings = HubSettings()
    events: EventsSettings = EventsSettings()
    api: ApiSettings = ApiSettings()
    registry: RegistrySettings = RegistrySettings()
    anomaly: AnomalySettings = AnomalySettings()
    field: FieldSettings = FieldSettings()
    escalation: EscalationSettings = EscalationSettings()
    email: EmailSettings = EmailSettings()
    cluster: ClusterSettings = ClusterSettings()

    @model_validator(mode="after")
    def _one_consumer_per_site(self) -> Self:
        # A shared subscription hands each message to any one hub of the group: one
        # door's opened and closed land on different hubs, each with its own rules state.
        if self.cluster.enabled:
            if self.mqtt.shared_group is not None:
                raise ValueError(
                    "cluster.enabled partitions the sites between hubs: leave "
                    "mqtt.shared_group unset"
                )
            url = self.events.store_url or ""
            if not url.startswith(("postgresql", "postgres")):
                raise ValueError(
                    "cluster.enabled needs events.store_url on PostgreSQL: the hubs share "
                    "the event store, and their partition leases live in it"
                )
        if self.cluster.partition is not None and self.cluster.lease_token is None:
            raise ValueError("cluster.partition is set by the cluster node with its lease")
        if self.mqtt.shared_group is not None and self.events.enabled:
            raise ValueError(
                "mqtt.shared_group splits each device's messages across hubs, so rules "
                "would see half of a door's events each and raise false alarms: use it "
                "only with events.enabled = false (ingest-only hubs) until site-partitioned "
                "hubs exist"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


SECTIONS = tuple(Settings.model_fields)


def load_settings(path: Path | None = None) -> Settings:
    """Build the settings once; raise SettingsError naming the offending key."""
    _check_env_names(os.environ)
    if path is not None and not path.is_file():
        raise SettingsError(f"config file {path} does not exist")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    try:
        return _FromFile()
    except ValueError as exc:  # pydantic ValidationError and TOML decode errors
        raise SettingsError(_explain(exc, path)) from exc


def _check_env_names(env: Mapping[str, str]) -> None:
    """GRIDWATCH_ variables must name a section and key: a typo is an error, not a no-op."""
    for name in env:
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, sep, key = rest.partition("__")
        if section not in SECTIONS or not sep:
            raise SettingsError(
                f"environment variable {name}: expected {ENV_PREFIX}<SECTION>__<KEY> "
                f"with SECTION in {', '.join(s.upper() for s in SECTIONS)}"
            )
        model = Settings.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        if key not in model.model_fields:
            raise SettingsError(
                f"environment variable {name}: section [{section}] has no key {key!r}"
            )


def _explain(exc: ValueError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return f"invalid settings{where}: {exc}"
    lines = [f"invalid settings{where}:"]
    for err in errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)
