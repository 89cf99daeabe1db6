"""decode(topic, payload) -> Reading | Rejected: the only door from the wire into the hub.

Never raises on input: every failure becomes a `Rejected` with a reason from a small
fixed vocabulary (counted per reason in `hub_stats`) and the raw bytes (dead letters).
Hostile input included: numbers of any size (no arithmetic on a device's number may
overflow), duplicate keys (refused: parsers disagree on which one wins), values outside
a kind's physical bounds (the kind's model refuses them). Should a bug raise anyway, the
intake catches it at the message boundary (`internal_error`): no message stops the hub.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Literal

from pydantic import ValidationError

from sensors.base import (
    DEVICE_STATUS,
    STATUS,
    DecodeContext,
    Envelope,
    Point,
    Reading,
    SensorKind,
    new_reading,
)
from sensors.topics import (
    DEFAULT_PREFIX,
    Route,
    TopicError,
    hub_presence_client,
    hub_presence_head,
    normalise_prefix,
    parse,
)

log = logging.getLogger(__name__)

_MAX_CACHED_ROUTES: Final = 200_000
_NS_PER_MS: Final = 1_000_000
_NS_PER_S: Final = 1_000_000_000
_MAX_SHOWN_S: Final = 10**12
"""A time difference beyond this (~31 700 years) is shown as "more than"."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_JSON_WHITESPACE: Final = b" \t\r\n"
_HUB_PRESENCE: Final = (b"online", b"offline")


class RejectReason(StrEnum):
    OVERSIZE = "oversize"
    BAD_TOPIC = "bad_topic"
    UNKNOWN_KIND = "unknown_kind"
    UNKNOWN_CHANNEL = "unknown_channel"
    BAD_JSON = "bad_json"
    INVALID_PAYLOAD = "invalid_payload"
    IDENTITY_MISMATCH = "identity_mismatch"
    TIMESTAMP_FUTURE = "timestamp_future"
    TIMESTAMP_PAST = "timestamp_past"
    UNKNOWN_DEVICE = "unknown_device"
    """Not in the registry, or retired (only with an `allow_device` hook)."""
    DUPLICATE_KEY = "duplicate_key"
    """The payload names a key of its model twice: which one counts is the parser's choice
    (keys the model ignores may repeat, as they may be anything)."""
    RESERVED_TOPIC = "reserved_topic"
    """Published under `<prefix>/_hub/`, where only hubs publish their presence."""
    INTERNAL_ERROR = "internal_error"
    """Handling the message raised (a bug): kept with the exception type, acked, counted."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message the hub will not store, with everything needed to look at it later."""

    reason: RejectReason
    detail: str
    topic: str
    payload: bytes
    received_ns: int
    route: Route | None
    """Site, kind, device and channel as the topic names them (the kind or channel may
    be unknown, the device unregistered); None when the topic is no device topic."""
    digest: int = 0
    """CRC-32 of the payload where the payload is not kept (the log's copy); see
    `payload_digest`."""

    @property
    def payload_digest(self) -> int:
        return zlib.crc32(self.payload) if self.payload else self.digest


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_payload_bytes: int = 16 * 1024
    max_future_s: float = 300.0
    """Device clocks run fast; beyond this the timestamp is not trusted."""
    max_age_s: float = 30 * 86400.0
    """Older than this is a broken clock or a replay, not a late delivery."""


@dataclass(frozen=True, slots=True)
class _Route:
    """What a valid topic says: who sent it, of which kind, on which channel; with the
    kind's validator and mapping at hand (this is looked up for every message)."""

    site: str
    kind_name: str
    device: str
    channel: str
    kind: SensorKind
    validate: Callable[[bytes], Envelope] | None
    """The channel model's validator (pydantic-core, no Python frame); None for status."""
    to_point: Callable[[str, Envelope, DecodeContext], Point]
    route: Route
    """The same four names, as rejections carry them."""


class Decoder:
    """Turns (topic, payload) into a validated Reading using a registry of sensor kinds."""

    def __init__(
        self,
        kinds: Mapping[str, SensorKind],
        context: DecodeContext,
        *,
        topic_prefix: str = DEFAULT_PREFIX,
        limits: DecodeLimits | None = None,
        allow_device: Callable[[str, str, str], bool] | None = None,
    ) -> None:
        self._kinds = kinds
        self._context = context
        self._prefix = normalise_prefix(topic_prefix)
        self._limits = limits = limits or DecodeLimits()
        self._max_payload = limits.max_payload_bytes
        self._max_future_ns = int(limits.max_future_s * _NS_PER_S)
        self._max_age_ns = int(limits.max_age_s * _NS_PER_S)
        self._routes: dict[str, _Route] = {}
        self._presence_head = hub_presence_head(self._prefix)
        # (site, kind, device) -> registered and active? Asked only when a topic's route
        # is built (cold path): cached routes skip it, so call `forget_routes` on change.
        self._allow_device = allow_device

    def forget_routes(self) -> None:
        """Drop cached topic routes, e.g. after a device was retired (re-checks it)."""
        self._routes.clear()

    def decode_reserved(self, topic: str, payload: bytes, received_ns: int) -> Rejected | None:
        """A message under `<prefix>/_hub/` (`sensors.topics.is_hub_presence`): None for a
        hub's presence flag, what hubs and their wills publish (`online` or `offline` on
        `<prefix>/_hub/<client id>/status`), to be dropped; anything else is a device (or
        a tool) writing where only hubs write: a `reserved_topic` rejection."""
        if payload in _HUB_PRESENCE and hub_presence_client(self._prefix, topic) is not None:
            return None
        return Rejected(
            RejectReason.RESERVED_TOPIC,
            f"{self._presence_head}... is reserved for hub presence "
            f"(online/offline on {self._presence_head}<client id>/status)",
            topic,
            payload,
            received_ns,
            None,
        )

    def internal_error(
        self, topic: str, payload: bytes, received_ns: int, exc: BaseException, stage: str
    ) -> Rejected:
        """The rejection for a message whose handling raised: the exception type and the
        stage in the detail (not its text, which may quote the input). Never raises."""
        route: Route | None = None
        with contextlib.suppress(Exception):
            cached = self._routes.get(topic)
            parsed = cached.route if cached is not None else parse(self._prefix, topic)
            route = parsed if isinstance(parsed, Route) else None
        return Rejected(
            RejectReason.INTERNAL_ERROR,
            f"{stage} raised {type(exc).__name__}",
            topic,
            payload,
            received_ns,
            route,
        )

    def oversize(self, topic: str, size: int, limit: int, received_ns: int) -> Rejected:
        """The rejection of a PUBLISH the MQTT client discarded unread as larger than our
        maximum packet size `limit` (a broker that does not enforce it sent it anyway):
        no payload to keep, only where it came from and how large it was."""
        return Rejected(
            RejectReason.OVERSIZE,
            f"{size}-byte packet > the hub's maximum packet size {limit} (discarded unread)",
            topic,
            b"",
            received_ns,
            self._route_named(topic),
        )

    def _route_named(self, topic: str) -> Route | None:
        """What the topic names (the cached route's, or parsed), without any check."""
        cached = self._routes.get(topic)
        parsed = cached.route if cached is not None else parse(self._prefix, topic)
        return parsed if isinstance(parsed, Route) else None

    def decode(self, topic: str, payload: bytes, received_ns: int) -> Reading | Rejected:
        """Validate one message; the received time stands in for a missing device time.

        The hot path of the hub (every message, on the event loop): checks that need no
        Python (size, cached route, the validator in pydantic-core) come first, and the
        usual case costs no extra calls. Per-topic checks (the device allowlist) run when
        a route is built, so a cached route has passed them all.
        """
        if len(payload) > self._max_payload:
            return Rejected(
                RejectReason.OVERSIZE,
                f"{len(payload)} bytes > limit {self._max_payload}",
                topic,
                payload,
                received_ns,
                self._route_named(topic),
            )
        route = self._routes.get(topic)
        if route is None:
            found = self._route(topic)
            if not isinstance(found, _Route):
                return Rejected(found[0], found[1], topic, payload, received_ns, found[2])
            route = found
        validate = route.validate
        if validate is None:
            return self._decode_status(topic, payload, received_ns, route)
        try:
            message = validate(payload)
        except ValidationError as exc:
            reason, detail = _explain(exc)
            return Rejected(reason, detail, topic, payload, received_ns, route.route)
        # Duplicate keys: the parser keeps the last one silently. A key takes one colon
        # outside strings, so as many colons as keys the model got means every key once
        # (one count in C, ~0.1 µs); anything else is looked at closely (`_duplicate_key`).
        colons = payload.count(b":")
        if colons != len(message.__pydantic_fields_set__):
            duplicate = _duplicate_key(payload, colons, message)
            if duplicate is not None:
                return Rejected(
                    duplicate[0], duplicate[1], topic, payload, received_ns, route.route
                )
        # The model's own dict: the fields every Envelope has, without attribute lookups.
        carried = message.__dict__
        if not (carried["site"] is carried["kind"] is carried["device"] is None):
            mismatch = _identity_mismatch(message, route.site, route.kind_name, route.device)
            if mismatch:
                return Rejected(
                    RejectReason.IDENTITY_MISMATCH,
                    mismatch,
                    topic,
                    payload,
                    received_ns,
                    route.route,
                )
        raw_ts = carried["ts"]
        try:
            if raw_ts is None:
                ts_ns = received_ns
            else:
                ts_ns = _rfc3339_ns(raw_ts) if isinstance(raw_ts, str) else raw_ts * _NS_PER_MS
                if not received_ns - self._max_age_ns <= ts_ns <= received_ns + self._max_future_ns:
                    raise self._implausible(ts_ns, received_ns)
            point = route.to_point(route.channel, message, self._context)
        except _Refused as refused:
            return Rejected(
                refused.reason, refused.detail, topic, payload, received_ns, route.route
            )
        except (ValueError, TypeError, ArithmeticError) as exc:
            # A kind's mapping refused a field combination (or has a bug): count, keep, go on.
            log.error("mapping %s/%s failed: %s", route.kind_name, route.channel, exc)
            return Rejected(
                RejectReason.INVALID_PAYLOAD,
                f"mapping failed: {exc}"[:300],
                topic,
                payload,
                received_ns,
                route.route,
            )
        return new_reading(
            route.kind.measurement,
            route.site,
            route.kind_name,
            route.device,
            route.channel,
            carried["cell"],
            ts_ns,
            raw_ts is not None,
            carried["seq"],
            point.tags or {},
            point.fields,
        )

    def _route(self, topic: str) -> _Route | tuple[RejectReason, str, Route | None]:
        """Parse and check a topic; valid ones are cached (a device reuses its topics)."""
        cached = self._routes.get(topic)
        if cached is not None:
            return cached
        parsed = parse(self._prefix, topic)
        if isinstance(parsed, TopicError):
            return RejectReason.BAD_TOPIC, str(parsed), None
        site, kind_name, device, channel = parsed
        kind = self._kinds.get(kind_name)
        if kind is None:
            return RejectReason.UNKNOWN_KIND, f"kind {kind_name!r} is not registered", parsed
        if channel != STATUS and channel not in kind.channels:
            return (
                RejectReason.UNKNOWN_CHANNEL,
                f"kind {kind_name!r} has channels {sorted([*kind.channels, STATUS])}",
                parsed,
            )
        if self._allow_device is not None and not self._allow_device(site, kind_name, device):
            return (
                RejectReason.UNKNOWN_DEVICE,
                f"{kind_name} {device!r} of site {site!r} is not registered (or retired)",
                parsed,
            )
        if len(self._routes) >= _MAX_CACHED_ROUTES:
            self._routes.clear()  # bounded: a flood of made-up topics cannot grow memory
        validate = None
        if channel != STATUS:
            # The validator itself: model_validate_json adds a Python frame per message.
            validate = kind.channels[channel].__pydantic_validator__.validate_json
        route = self._routes[topic] = _Route(
            site, kind_name, device, channel, kind, validate, kind.to_point, parsed
        )
        return route

    def _timestamp(self, message: Envelope, received_ns: int) -> tuple[int, bool]:
        """Device time when sane (so redeliveries fold into one point), else receive time."""
        raw = message.ts
        if raw is None:
            return received_ns, False
        ts_ns = _rfc3339_ns(raw) if isinstance(raw, str) else raw * _NS_PER_MS
        if not received_ns - self._max_age_ns <= ts_ns <= received_ns + self._max_future_ns:
            raise self._implausible(ts_ns, received_ns)
        return ts_ns, True

    @staticmethod
    def _implausible(ts_ns: int, received_ns: int) -> _Refused:
        """The refusal for a device time too far ahead of or behind the hub clock.

        Integer arithmetic only: a JSON integer has no size limit (up to ~4300 digits get
        through the parser), and true division or float formatting of one overflows."""
        seconds = abs(ts_ns - received_ns) // _NS_PER_S
        amount = f"{seconds} s" if seconds < _MAX_SHOWN_S else "more than 10^12 s"
        if ts_ns > received_ns:
            return _Refused(RejectReason.TIMESTAMP_FUTURE, f"ts is {amount} ahead of the hub clock")
        return _Refused(RejectReason.TIMESTAMP_PAST, f"ts is {amount} behind the hub clock")

    def _decode_status(
        self, topic: str, payload: bytes, received_ns: int, route: _Route
    ) -> Reading | Rejected:
        """`online`/`offline` as plain text (last wills) or {"status": ..., "ts": ...}."""
        site, kind, device = route.site, route.kind_name, route.device
        text = payload.strip()
        ts_ns = received_ns
        from_device = False
        if text in (b"online", b"offline"):
            state = text.decode()
        else:
            try:
                message = _StatusPayload.model_validate_json(payload)
            except ValidationError as exc:
                reason, detail = _explain(exc)
                return Rejected(reason, detail, topic, payload, received_ns, route.route)
            colons = payload.count(b":")
            duplicate = (
                _duplicate_key(payload, colons, message)
                if colons != len(message.__pydantic_fields_set__)
                else None
            )
            if duplicate is not None:
                return Rejected(
                    duplicate[0], duplicate[1], topic, payload, received_ns, route.route
                )
            mismatch = _identity_mismatch(message, site, kind, device)
            if mismatch:
                return Rejected(
                    RejectReason.IDENTITY_MISMATCH,
                    mismatch,
                    topic,
                    payload,
                    received_ns,
                    route.route,
                )
            try:
                ts_ns, from_device = self._timestamp(message, received_ns)
            except _Refused as refused:
                return Rejected(
                    refused.reason, refused.detail, topic, payload, received_ns, route.route
                )
            state = message.status
        return Reading(
            measurement=DEVICE_STATUS,
            site=site,
            kind=kind,
            device=device,
            channel=STATUS,
            cell=None,
            ts_ns=ts_ns,
            ts_from_device=from_device,
            seq=None,
            tags={},
            fields={"online": state == "online", "state": state},
        )


def _rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch; the envelope's pattern already checked the shape."""
    head, dot, rest = text.partition(".")
    fraction = ""
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, rest = rest[:digits], rest[digits:]
    try:
        # Integer arithmetic: float seconds would lose microseconds at today's epoch.
        delta = datetime.fromisoformat(head + rest) - _EPOCH
    except (ValueError, OverflowError) as exc:
        raise _Refused(RejectReason.INVALID_PAYLOAD, f"ts: {exc}") from exc
    seconds = delta.days * 86400 + delta.seconds
    return seconds * _NS_PER_S + int(fraction.ljust(9, "0")) if fraction else seconds * _NS_PER_S


def _duplicate_key(
    payload: bytes, colons: int, message: Envelope
) -> tuple[RejectReason, str] | None:
    """Why a valid payload names a key of its model twice, or None (the parser kept the
    last one silently; another parser, a gateway or a broker plugin, may keep the first).

    Keys the model ignores may repeat, as they may be anything. The caller has counted
    `colons`: as many as the model's keys means every key once and no other. Else, when
    nothing is escaped (every key is written as is): colons that are the RFC 3339 time's
    own, or each model key written once (`"name"` once in the bytes; ~0.1 µs a key). Else
    a strict parse of the top-level keys decides (numbers skipped: no huge conversions)."""
    fields_set = message.__pydantic_fields_set__
    if payload.find(b"\\") < 0:  # cheaper than `in`
        ts = message.__dict__["ts"]
        if type(ts) is str and colons - ts.count(":") == len(fields_set):
            return None
        for name in fields_set:
            quoted = _QUOTED_KEYS.get(name)
            if quoted is None:
                quoted = _QUOTED_KEYS[name] = f'"{name}"'.encode()
            if payload.count(quoted) != 1:
                break
        else:
            return None
    try:
        top = json.loads(
            payload,
            object_pairs_hook=_pairs,
            parse_int=_skip,
            parse_float=_skip,
            parse_constant=_skip,
        )
    except (ValueError, RecursionError) as exc:  # the model's parser took it: unlikely
        return RejectReason.BAD_JSON, f"not strict JSON: {type(exc).__name__}"
    seen: set[str] = set()
    for key, _ in top:
        if key in fields_set:
            if key in seen:
                return RejectReason.DUPLICATE_KEY, f"key {key!r} appears more than once"
            seen.add(key)
    return None


_QUOTED_KEYS: Final[dict[str, bytes]] = {}
"""Model field names as they appear in JSON, `"name"` (bounded: the models' fields)."""


def _pairs(pairs: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """`object_pairs_hook`: every object as its list of pairs, duplicates kept."""
    return pairs


def _skip(_text: str) -> None:
    return None


class _Refused(Exception):
    """Internal: a check deep in decoding refuses the message."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _StatusPayload(Envelope):
    status: Literal["online", "offline"]


def _identity_mismatch(message: Envelope, site: str, kind: str, device: str) -> str:
    """Claims in the payload must agree with the topic the broker authorised."""
    if message.site is None and message.kind is None and message.device is None:
        return ""  # the usual case: the device makes no claims
    for label, claimed, actual in (
        ("site", message.site, site),
        ("kind", message.kind, kind),
        ("device", message.device, device),
    ):
        if claimed is not None and claimed != actual:
            return f"payload {label} {claimed!r} != topic {label} {actual!r}"
    return ""


def _explain(exc: ValidationError) -> tuple[RejectReason, str]:
    """Map a pydantic error to a reason and a one-line detail naming the field."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return RejectReason.BAD_JSON, f"not JSON: {first['msg']}"[:300]
    if first["type"] in {"model_type", "model_attributes_type", "dict_type"} and not first["loc"]:
        return RejectReason.BAD_JSON, "payload is not a JSON object"
    if first["loc"][:1] == ("ts",):
        return RejectReason.INVALID_PAYLOAD, (
            "ts: expected epoch milliseconds (a JSON integer) or an RFC 3339 time with an offset"
        )
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return RejectReason.INVALID_PAYLOAD, f"{where}: {first['msg']}{more}"[:300]
