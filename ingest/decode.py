"""decode(topic, payload) -> Reading | Rejected: the only door from the wire into the hub.

Never raises on input: every failure becomes a `Rejected` with a reason from a small
fixed vocabulary (counted per reason in `hub_stats`) and the raw bytes (dead letters).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
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
    Reading,
    SensorKind,
)

log = logging.getLogger(__name__)

_IDENTIFIER: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_MAX_CACHED_ROUTES: Final = 200_000
_NS_PER_MS: Final = 1_000_000
_NS_PER_S: Final = 1_000_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


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


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message the hub will not store, with everything needed to look at it later."""

    reason: RejectReason
    detail: str
    topic: str
    payload: bytes
    received_ns: int


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_payload_bytes: int = 16 * 1024
    max_future_s: float = 300.0
    """Device clocks run fast; beyond this the timestamp is not trusted."""
    max_age_s: float = 30 * 86400.0
    """Older than this is a broken clock or a replay, not a late delivery."""


@dataclass(frozen=True, slots=True)
class _Route:
    """What a valid topic says: who sent it, of which kind, on which channel."""

    site: str
    kind_name: str
    device: str
    channel: str
    kind: SensorKind


class Decoder:
    """Turns (topic, payload) into a validated Reading using a registry of sensor kinds."""

    def __init__(
        self,
        kinds: Mapping[str, SensorKind],
        context: DecodeContext,
        *,
        topic_prefix: str = "gw/v1",
        limits: DecodeLimits | None = None,
    ) -> None:
        self._kinds = kinds
        self._context = context
        self._prefix_parts = tuple(topic_prefix.strip("/").split("/"))
        self._limits = limits or DecodeLimits()
        self._routes: dict[str, _Route] = {}

    def decode(self, topic: str, payload: bytes, received_ns: int) -> Reading | Rejected:
        """Validate one message; the received time stands in for a missing device time."""

        def reject(reason: RejectReason, detail: str) -> Rejected:
            return Rejected(reason, detail, topic, payload, received_ns)

        if len(payload) > self._limits.max_payload_bytes:
            return reject(
                RejectReason.OVERSIZE,
                f"{len(payload)} bytes > limit {self._limits.max_payload_bytes}",
            )
        route = self._route(topic)
        if not isinstance(route, _Route):
            return reject(*route)
        site, kind_name, device, channel, kind = (
            route.site,
            route.kind_name,
            route.device,
            route.channel,
            route.kind,
        )
        if channel == STATUS:
            return self._decode_status(topic, payload, received_ns, site, kind_name, device)
        model = kind.channels[channel]
        try:
            # The validator itself: model_validate_json adds a Python frame per message.
            message: Envelope = model.__pydantic_validator__.validate_json(payload)
        except ValidationError as exc:
            return reject(*_explain(exc))
        mismatch = _identity_mismatch(message, site, kind_name, device)
        if mismatch:
            return reject(RejectReason.IDENTITY_MISMATCH, mismatch)
        try:
            ts_ns, from_device = self._timestamp(message, received_ns)
            point = kind.to_point(channel, message, self._context)
        except _Refused as refused:
            return reject(refused.reason, refused.detail)
        except (ValueError, TypeError) as exc:
            # A kind's mapping refused a field combination (or has a bug): count, keep, go on.
            log.error("mapping %s/%s failed: %s", kind_name, channel, exc)
            return reject(RejectReason.INVALID_PAYLOAD, f"mapping failed: {exc}"[:300])
        return Reading(
            measurement=kind.measurement,
            site=site,
            kind=kind_name,
            device=device,
            channel=channel,
            cell=message.cell,
            ts_ns=ts_ns,
            ts_from_device=from_device,
            seq=message.seq,
            tags=point.tags or {},
            fields=point.fields,
        )

    def _route(self, topic: str) -> _Route | tuple[RejectReason, str]:
        """Parse and check a topic; valid ones are cached (a device reuses its topics)."""
        cached = self._routes.get(topic)
        if cached is not None:
            return cached
        parts = topic.split("/")
        n_prefix = len(self._prefix_parts)
        if len(parts) != n_prefix + 4 or tuple(parts[:n_prefix]) != self._prefix_parts:
            return (
                RejectReason.BAD_TOPIC,
                f"expected {'/'.join(self._prefix_parts)}/<site>/<kind>/<device>/<channel>",
            )
        site, kind_name, device, channel = parts[n_prefix:]
        for label, value in (("site", site), ("kind", kind_name), ("device", device)):
            if not _IDENTIFIER.fullmatch(value):
                return RejectReason.BAD_TOPIC, f"{label} {value[:80]!r} is not an identifier"
        kind = self._kinds.get(kind_name)
        if kind is None:
            return RejectReason.UNKNOWN_KIND, f"kind {kind_name!r} is not registered"
        if channel != STATUS and channel not in kind.channels:
            return (
                RejectReason.UNKNOWN_CHANNEL,
                f"kind {kind_name!r} has channels {sorted([*kind.channels, STATUS])}",
            )
        if len(self._routes) >= _MAX_CACHED_ROUTES:
            self._routes.clear()  # bounded: a flood of made-up topics cannot grow memory
        route = self._routes[topic] = _Route(site, kind_name, device, channel, kind)
        return route

    def _timestamp(self, message: Envelope, received_ns: int) -> tuple[int, bool]:
        """Device time when sane (so redeliveries fold into one point), else receive time."""
        raw = message.ts
        if raw is None:
            return received_ns, False
        ts_ns = _rfc3339_ns(raw) if isinstance(raw, str) else raw * _NS_PER_MS
        if ts_ns > received_ns + int(self._limits.max_future_s * _NS_PER_S):
            ahead = (ts_ns - received_ns) / _NS_PER_S
            raise _Refused(
                RejectReason.TIMESTAMP_FUTURE, f"ts is {ahead:.0f} s ahead of the hub clock"
            )
        if ts_ns < received_ns - int(self._limits.max_age_s * _NS_PER_S):
            behind = (received_ns - ts_ns) / _NS_PER_S
            raise _Refused(
                RejectReason.TIMESTAMP_PAST, f"ts is {behind:.0f} s behind the hub clock"
            )
        return ts_ns, True

    def _decode_status(
        self, topic: str, payload: bytes, received_ns: int, site: str, kind: str, device: str
    ) -> Reading | Rejected:
        """`online`/`offline` as plain text (last wills) or {"status": ..., "ts": ...}."""
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
                return Rejected(reason, detail, topic, payload, received_ns)
            mismatch = _identity_mismatch(message, site, kind, device)
            if mismatch:
                return Rejected(
                    RejectReason.IDENTITY_MISMATCH, mismatch, topic, payload, received_ns
                )
            try:
                ts_ns, from_device = self._timestamp(message, received_ns)
            except _Refused as refused:
                return Rejected(refused.reason, refused.detail, topic, payload, received_ns)
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
    except ValueError as exc:
        raise _Refused(RejectReason.INVALID_PAYLOAD, f"ts: {exc}") from exc
    seconds = delta.days * 86400 + delta.seconds
    return seconds * _NS_PER_S + int(fraction.ljust(9, "0")) if fraction else seconds * _NS_PER_S


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
