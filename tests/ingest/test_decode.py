"""decode(topic, payload) end to end: golden cases, every reject reason, and properties.

tests/test_sensor_kinds.py checks each kind's model and mapping on the golden cases;
here the same cases go through the whole `Decoder` (topic, identity, timestamps).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.decode import DecodeLimits, Decoder, Rejected, RejectReason
from ingest.line_protocol import encode_reading
from sensors.base import (
    DEVICE_STATUS,
    STATUS,
    DecodeContext,
    FieldValue,
    Reading,
    SensorKind,
    keyed_hash,
)
from sensors.registry import KINDS
from sensors.topics import Route, parse
from tests.support.golden import GoldenCase, load_cases

GOLDEN_KEY = b"golden-test-key"
CTX = DecodeContext(hash_identifier=lambda value: keyed_hash(GOLDEN_KEY, value))
DECODER = Decoder(KINDS, CTX)
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
NOW_NS = 1_740_788_130_250_000_000  # 2025-03-01T00:15:30.250Z
TOPIC = "gw/v1/yingyang/smoke/sd-0001/telemetry"
GOOD = b'{"temperature": 21.5}'
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# ---------------------------------------------------------------- golden cases


def iso_to_ns(text: str) -> int:
    """RFC 3339 → integer ns, independently of the decoder's arithmetic."""
    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo is not None
    whole = (
        int(parsed.timestamp())
        if parsed.microsecond == 0
        else int(parsed.replace(microsecond=0).timestamp())
    )
    return whole * NS_PER_S + parsed.microsecond * 1000


def device_ts_ns(case: GoldenCase) -> int | None:
    obj = case.payload_object()
    ts = obj.get("ts") if obj else None
    if isinstance(ts, int):
        return ts * NS_PER_MS
    if isinstance(ts, str):
        return iso_to_ns(ts)
    return None


CASES = load_cases()
VALID = [pytest.param(c, id=f"{c.kind}/{c.name}") for c in CASES if c.expected is not None]
REJECTED = [pytest.param(c, id=f"{c.kind}/{c.name}") for c in CASES if c.rejected is not None]
VALID_CASES = [c for c in CASES if c.expected is not None]


def typed(values: Mapping[str, object]) -> dict[str, tuple[type, object]]:
    """Pair values with their exact type so 21 and 21.0 (or 1 and True) differ."""
    return {k: (type(v), v) for k, v in values.items()}


def decode_case(case: GoldenCase) -> tuple[Reading | Rejected, int, int | None]:
    ts = device_ts_ns(case)
    received = ts + 1_500 * NS_PER_MS if ts is not None else time.time_ns()
    return DECODER.decode(case.topic, case.payload, received), received, ts


def test_golden_cases_exist() -> None:
    assert len(VALID) >= 5 * len(KINDS)
    assert len(REJECTED) >= 3 * len(KINDS)


@pytest.mark.parametrize("case", VALID)
def test_golden_valid_case_decodes(case: GoldenCase) -> None:
    assert case.expected is not None
    result, received, ts = decode_case(case)
    assert isinstance(result, Reading), result
    _, _, site, kind, device, channel = case.topic.split("/")
    assert (result.site, result.kind, result.device, result.channel) == (
        site,
        kind,
        device,
        channel,
    )
    assert result.measurement == case.expected["measurement"]
    assert typed(result.tags) == typed(case.expected.get("tags") or {})
    assert typed(result.fields) == typed(case.expected["fields"])
    # `seq` is both a declared field (as expected.json lists it) and Reading.seq.
    assert result.seq == case.expected["fields"].get("seq")
    obj = case.payload_object()
    assert obj is not None
    assert result.cell == obj.get("cell")
    if ts is None:
        assert (result.ts_ns, result.ts_from_device) == (received, False)
    else:
        assert (result.ts_ns, result.ts_from_device) == (ts, True)


@pytest.mark.parametrize("case", REJECTED)
def test_golden_rejected_case_is_rejected(case: GoldenCase) -> None:
    result, received, _ = decode_case(case)
    assert isinstance(result, Rejected), result
    assert result.reason.value == case.rejected, result.detail
    assert result.payload == case.payload
    assert result.topic == case.topic
    assert result.received_ns == received


@pytest.mark.parametrize("case", VALID)
def test_golden_reading_encodes_without_clear_secrets(case: GoldenCase) -> None:
    result, _, _ = decode_case(case)
    assert isinstance(result, Reading)
    encoded = encode_reading(result)
    assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
    assert encoded.startswith(result.measurement.encode() + b",")
    assert encoded.rstrip(b"\n").endswith(b" " + str(result.ts_ns).encode())
    obj = case.payload_object()
    assert obj is not None
    for secret_key in ("credential", "plate"):
        secret = obj.get(secret_key)
        if isinstance(secret, str):
            assert secret.encode() not in encoded
            compact = "".join(c for c in secret if c.isalnum()).upper()
            assert compact.encode() not in encoded


def test_golden_cases_cover_the_secret_keys() -> None:
    keys = {k for c in VALID_CASES for k in (c.payload_object() or {})}
    assert {"credential", "plate"} <= keys


# ---------------------------------------------------------------- every reject reason


def decode(
    topic: str = TOPIC, payload: bytes = GOOD, received_ns: int = NOW_NS
) -> Reading | Rejected:
    return DECODER.decode(topic, payload, received_ns)


def rejected(
    reason: RejectReason, topic: str = TOPIC, payload: bytes = GOOD, received_ns: int = NOW_NS
) -> Rejected:
    result = DECODER.decode(topic, payload, received_ns)
    assert isinstance(result, Rejected), result
    assert result.reason is reason, result.detail
    assert result.topic == topic
    assert result.payload == payload
    assert result.received_ns == received_ns
    assert result.detail
    assert result.route == route_of(topic)
    return result


def route_of(topic: str) -> Route | None:
    """What a rejection must carry: the topic's route when it is a device topic."""
    parsed = parse("gw/v1", topic)
    return parsed if isinstance(parsed, Route) else None


def test_every_reason_has_a_stable_value() -> None:
    assert {r.value for r in RejectReason} == {
        "oversize",
        "bad_topic",
        "unknown_kind",
        "unknown_channel",
        "bad_json",
        "invalid_payload",
        "identity_mismatch",
        "timestamp_future",
        "timestamp_past",
        "unknown_device",
        "duplicate_key",
        "reserved_topic",
        "internal_error",
    }


def test_oversize() -> None:
    limit = DecodeLimits().max_payload_bytes
    assert limit == 16 * 1024
    padded = b'{"temperature": 21.5, "pad": "' + b"x" * limit + b'"}'
    result = rejected(RejectReason.OVERSIZE, payload=padded[: limit + 1])
    assert str(limit) in result.detail


def test_payload_at_the_limit_is_accepted() -> None:
    limit = DecodeLimits().max_payload_bytes
    head = b'{"temperature": 21.5, "pad": "'
    payload = head + b"x" * (limit - len(head) - 2) + b'"}'
    assert len(payload) == limit
    assert isinstance(decode(payload=payload), Reading)


def test_oversize_is_checked_before_the_topic() -> None:
    rejected(RejectReason.OVERSIZE, topic="garbage", payload=b"x" * (16 * 1024 + 1))


def test_rejections_carry_the_route_of_their_topic() -> None:
    """Consumers (rules) never parse a rejected topic again: the route comes along."""
    sd1 = Route("yingyang", "smoke", "sd-0001", "telemetry")
    assert rejected(RejectReason.INVALID_PAYLOAD, payload=b'{"temperature": "hot"}').route == sd1
    assert rejected(RejectReason.BAD_JSON, payload=b"{").route == sd1
    oversize = b"x" * (16 * 1024 + 1)
    assert rejected(RejectReason.OVERSIZE, payload=oversize).route == sd1  # cached route
    fresh = "gw/v1/yingyang/smoke/sd-fresh/telemetry"
    assert rejected(RejectReason.OVERSIZE, fresh, oversize).route == Route(
        "yingyang", "smoke", "sd-fresh", "telemetry"
    )
    assert rejected(RejectReason.OVERSIZE, "garbage", oversize).route is None
    water = rejected(RejectReason.UNKNOWN_KIND, "gw/v1/s1/water/w-1/telemetry").route
    assert water == Route("s1", "water", "w-1", "telemetry")
    assert rejected(RejectReason.UNKNOWN_CHANNEL, "gw/v1/s1/smoke/d/x y").route == Route(
        "s1", "smoke", "d", "x y"
    )
    assert rejected(RejectReason.BAD_TOPIC, "gw/v1/s1/smoke/a b/telemetry").route is None
    status = "gw/v1/s1/access/dc-1/status"
    claims = b'{"status": "online", "device": "other"}'
    assert rejected(RejectReason.IDENTITY_MISMATCH, status, claims).route == Route(
        "s1", "access", "dc-1", "status"
    )
    gated = Decoder(KINDS, CTX, allow_device=lambda site, kind, device: False)
    refused = gated.decode(TOPIC, GOOD, NOW_NS)
    assert isinstance(refused, Rejected) and refused.reason is RejectReason.UNKNOWN_DEVICE
    assert refused.route == sd1


def test_custom_limits() -> None:
    decoder = Decoder(KINDS, CTX, limits=DecodeLimits(max_payload_bytes=10))
    result = decoder.decode(TOPIC, GOOD, NOW_NS)
    assert isinstance(result, Rejected) and result.reason is RejectReason.OVERSIZE


@pytest.mark.parametrize(
    "topic",
    [
        "gw/v2/yingyang/smoke/sd-0001/telemetry",  # wrong prefix
        "xx/v1/yingyang/smoke/sd-0001/telemetry",
        "/gw/v1/yingyang/smoke/sd-0001/telemetry",
        "gw/v1/yingyang/smoke/sd-0001",  # too few segments
        "gw/v1/yingyang/smoke",
        "gw/v1",
        "",
        "gw/v1/yingyang/smoke/sd-0001/telemetry/extra",  # too many
        "gw/v1/yingyang/smoke/sd-0001/telemetry/",
        "gw/v1/yingyang/smoke/a b/telemetry",  # not identifiers
        "gw/v1/yingyang/smoke/../x/telemetry",
        "gw/v1/yingyang/smoke/../telemetry",
        "gw/v1/yingyang/smoke/-dash-first/telemetry",
        "gw/v1/yingyang/smoke/sd+1/telemetry",
        "gw/v1/yingyang/smoke/sd#1/telemetry",
        "gw/v1/yin yang/smoke/sd-0001/telemetry",
        "gw/v1/yingyang/smo ke/sd-0001/telemetry",
        "gw/v1/yingyang/smoke/" + "d" * 65 + "/telemetry",  # too long
        "gw/v1//smoke/sd-0001/telemetry",  # empty segments
        "gw/v1/yingyang//sd-0001/telemetry",
        "gw/v1/yingyang/smoke//telemetry",
        "gw/v1/yingyang/smoke/设备/telemetry",
    ],
)
def test_bad_topic(topic: str) -> None:
    rejected(RejectReason.BAD_TOPIC, topic=topic)


def test_identifier_of_max_length_is_accepted() -> None:
    assert isinstance(decode(topic="gw/v1/yingyang/smoke/" + "d" * 64 + "/telemetry"), Reading)


def test_custom_topic_prefix() -> None:
    decoder = Decoder(KINDS, CTX, topic_prefix="/acme/grid/v9/")
    assert isinstance(decoder.decode("acme/grid/v9/s/smoke/d/telemetry", GOOD, NOW_NS), Reading)
    result = decoder.decode(TOPIC, GOOD, NOW_NS)
    assert isinstance(result, Rejected) and result.reason is RejectReason.BAD_TOPIC


@pytest.mark.parametrize("kind", ["water", "Smoke", "access2"])
def test_unknown_kind(kind: str) -> None:
    rejected(RejectReason.UNKNOWN_KIND, topic=f"gw/v1/yingyang/{kind}/d-1/telemetry")


@pytest.mark.parametrize("channel", ["config", "Telemetry", "events", "", "status2", "a b"])
def test_unknown_channel(channel: str) -> None:
    result = rejected(RejectReason.UNKNOWN_CHANNEL, topic=f"gw/v1/yingyang/smoke/sd-0001/{channel}")
    assert "status" in result.detail


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"{'temperature': 21.5}",
        b'{"temperature": 21.5,}',
        b"\xff\xfe{}",  # not UTF-8
        b'{"detail": "\xc3\x28"}',  # invalid UTF-8 inside a string
        b"[]",  # JSON, but not an object
        b"[1, 2]",
        b"42",
        b"21.5",
        b'"temperature"',
        b"null",
        b"true",
    ],
)
def test_bad_json(payload: bytes) -> None:
    rejected(RejectReason.BAD_JSON, payload=payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"temperature": "21.5"}',  # string for a number
        b'{"temperature": NaN}',  # non-JSON literals, if the parser takes them
        b'{"temperature": Infinity}',
        b'{"temperature": -Infinity}',
        b'{"temperature": 1e400}',  # overflows to infinity
        b'{"temperature": 21.5, "ts": "2025-03-01T00:15:30"}',  # naive RFC 3339
        b'{"temperature": 21.5, "ts": "2025-03-01T00:15:30.250"}',
        b'{"temperature": 21.5, "ts": 1740788130250.0}',  # float ms
        b'{"temperature": 21.5, "ts": true}',
        b'{"temperature": 21.5, "ts": "yesterday"}',
        b'{"temperature": 21.5, "seq": -1}',
        b'{"temperature": 21.5, "seq": 1.5}',
        b'{"temperature": 21.5, "seq": 100000000000000000000000000000}',
        b'{"temperature": 21.5, "cell": "a b"}',
        b'{"temperature": 21.5, "device": 7}',
        b'{"alarm": 1}',
        b"{}",  # smoke telemetry without a measurement
    ],
)
def test_invalid_payload(payload: bytes) -> None:
    rejected(RejectReason.INVALID_PAYLOAD, payload=payload)


def test_invalid_payload_detail_names_the_field() -> None:
    result = rejected(RejectReason.INVALID_PAYLOAD, payload=b'{"temperature": "warm"}')
    assert result.detail.startswith("temperature:")
    assert "warm" not in result.detail  # inputs are not echoed into logs


def test_naive_timestamp_detail() -> None:
    result = rejected(
        RejectReason.INVALID_PAYLOAD, payload=b'{"temperature": 1, "ts": "2025-03-01T00:15:30"}'
    )
    assert "offset" in result.detail


def test_invalid_payload_does_not_echo_a_card_number() -> None:
    topic = "gw/v1/yingyang/access/dc-0001/event"
    payload = b'{"event": "exploded", "credential": "0004521877"}'
    result = rejected(RejectReason.INVALID_PAYLOAD, topic=topic, payload=payload)
    assert "0004521877" not in result.detail
    assert result.payload == payload  # the raw bytes are kept for the dead letter


@pytest.mark.parametrize(
    ("key", "value"),
    [("site", "elsewhere"), ("kind", "access"), ("device", "sd-0002")],
)
def test_identity_mismatch(key: str, value: str) -> None:
    payload = json.dumps({"temperature": 21.5, key: value}).encode()
    result = rejected(RejectReason.IDENTITY_MISMATCH, payload=payload)
    assert key in result.detail and value in result.detail


def test_identity_matching_the_topic_is_accepted() -> None:
    payload = json.dumps(
        {"temperature": 21.5, "site": "yingyang", "kind": "smoke", "device": "sd-0001"}
    ).encode()
    assert isinstance(decode(payload=payload), Reading)


def with_ts(ts: object) -> bytes:
    return json.dumps({"temperature": 21.5, "ts": ts}).encode()


def test_timestamp_future() -> None:
    limit_ms = int(DecodeLimits().max_future_s * 1000)
    now_ms = NOW_NS // NS_PER_MS
    assert isinstance(decode(payload=with_ts(now_ms + limit_ms)), Reading)
    result = rejected(RejectReason.TIMESTAMP_FUTURE, payload=with_ts(now_ms + limit_ms + 1))
    assert "ahead" in result.detail
    rejected(RejectReason.TIMESTAMP_FUTURE, payload=with_ts(10**30))
    rejected(RejectReason.TIMESTAMP_FUTURE, payload=with_ts("9999-12-31T23:59:59-23:59"))


def test_timestamp_past() -> None:
    limit_ms = int(DecodeLimits().max_age_s * 1000)
    now_ms = NOW_NS // NS_PER_MS
    assert isinstance(decode(payload=with_ts(now_ms - limit_ms)), Reading)
    result = rejected(RejectReason.TIMESTAMP_PAST, payload=with_ts(now_ms - limit_ms - 1))
    assert "behind" in result.detail
    rejected(RejectReason.TIMESTAMP_PAST, payload=with_ts(0))
    rejected(RejectReason.TIMESTAMP_PAST, payload=with_ts(-(10**30)))
    rejected(RejectReason.TIMESTAMP_PAST, payload=with_ts("0001-01-01T00:00:00+23:59"))


def test_custom_time_limits() -> None:
    decoder = Decoder(KINDS, CTX, limits=DecodeLimits(max_future_s=1.0, max_age_s=10.0))
    now_ms = NOW_NS // NS_PER_MS
    for ts, reason in [
        (now_ms + 1001, RejectReason.TIMESTAMP_FUTURE),
        (now_ms - 10_001, RejectReason.TIMESTAMP_PAST),
    ]:
        result = decoder.decode(TOPIC, with_ts(ts), NOW_NS)
        assert isinstance(result, Rejected) and result.reason is reason
    assert isinstance(decoder.decode(TOPIC, with_ts(now_ms + 1000), NOW_NS), Reading)


# ---------------------------------------------------------------- timestamps


def reading(payload: bytes, topic: str = TOPIC, received_ns: int = NOW_NS) -> Reading:
    result = DECODER.decode(topic, payload, received_ns)
    assert isinstance(result, Reading), result
    return result


@pytest.mark.parametrize(
    ("ts", "ns"),
    [
        (1_740_788_130_250, 1_740_788_130_250_000_000),
        ("2025-03-01T00:15:30.250Z", 1_740_788_130_250_000_000),
        ("2025-03-01T08:15:30.250+08:00", 1_740_788_130_250_000_000),
        ("2025-02-28T19:15:30.250-05:00", 1_740_788_130_250_000_000),
        ("2025-03-01T00:15:30.123456Z", 1_740_788_130_123_456_000),  # microseconds exact
        ("2025-03-01T08:15:30.000001+08:00", 1_740_788_130_000_001_000),
        ("2025-03-01T00:15:29.999999+00:00", 1_740_788_129_999_999_000),
        ("2025-03-01T00:15:30Z", 1_740_788_130_000_000_000),
    ],
)
def test_device_timestamps_map_to_exact_ns(ts: object, ns: int) -> None:
    result = reading(with_ts(ts))
    assert result.ts_ns == ns
    assert result.ts_from_device is True
    if isinstance(ts, str):
        assert iso_to_ns(ts) == ns


def test_epoch_ms_and_rfc3339_agree() -> None:
    a = reading(with_ts(1_740_788_130_123))
    b = reading(with_ts("2025-03-01T08:15:30.123+08:00"))
    assert a.ts_ns == b.ts_ns


def test_missing_ts_uses_receive_time() -> None:
    result = reading(GOOD, received_ns=NOW_NS + 17)
    assert result.ts_ns == NOW_NS + 17
    assert result.ts_from_device is False


def test_null_ts_uses_receive_time() -> None:
    result = reading(with_ts(None))
    assert (result.ts_ns, result.ts_from_device) == (NOW_NS, False)


def test_reading_carries_topic_identity_cell_and_seq() -> None:
    result = reading(b'{"temperature": 21, "seq": 7, "cell": "g-07", "firmware": "2.4"}')
    assert result.measurement == "smoke"
    assert (result.site, result.kind, result.device, result.channel) == (
        "yingyang",
        "smoke",
        "sd-0001",
        "telemetry",
    )
    assert result.cell == "g-07"
    assert result.seq == 7
    assert typed(result.fields) == typed({"seq": 7, "temperature": 21.0})  # unknown key ignored
    assert b"cell=g-07" in encode_reading(result)


# ---------------------------------------------------------------- status channel


STATUS_TOPIC = "gw/v1/yingyang/access/dc-0001/status"


@pytest.mark.parametrize(
    ("payload", "state"),
    [
        (b"online", "online"),
        (b"offline", "offline"),
        (b"  online\n", "online"),
        (b"\toffline\r\n", "offline"),
    ],
)
def test_plain_status(payload: bytes, state: str) -> None:
    result = reading(payload, topic=STATUS_TOPIC)
    assert result.measurement == DEVICE_STATUS
    assert result.channel == STATUS
    assert typed(result.fields) == typed({"online": state == "online", "state": state})
    assert (result.ts_ns, result.ts_from_device) == (NOW_NS, False)
    assert result.tags == {}
    assert result.seq is None
    assert b"device_status," in encode_reading(result)


@pytest.mark.parametrize("kind", list(KINDS))
def test_status_for_every_kind(kind: str) -> None:
    result = reading(b"offline", topic=f"gw/v1/s1/{kind}/d-1/status")
    assert result.kind == kind
    assert result.fields["online"] is False


def test_json_status_with_device_time() -> None:
    payload = b'{"status": "offline", "ts": 1740788100000}'
    result = reading(payload, topic=STATUS_TOPIC)
    assert typed(result.fields) == typed({"online": False, "state": "offline"})
    assert result.ts_ns == 1_740_788_100_000 * NS_PER_MS
    assert result.ts_from_device is True


def test_json_status_without_time() -> None:
    result = reading(b'{"status": "online"}', topic=STATUS_TOPIC)
    assert result.fields == {"online": True, "state": "online"}
    assert (result.ts_ns, result.ts_from_device) == (NOW_NS, False)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"ONLINE", RejectReason.BAD_JSON),
        (b"on line", RejectReason.BAD_JSON),
        (b"", RejectReason.BAD_JSON),
        (b'"online"', RejectReason.BAD_JSON),
        (b'{"status": "sleeping"}', RejectReason.INVALID_PAYLOAD),
        (b'{"status": true}', RejectReason.INVALID_PAYLOAD),
        (b"{}", RejectReason.INVALID_PAYLOAD),
        (b'{"status": "online", "ts": "2025-03-01T00:15:30"}', RejectReason.INVALID_PAYLOAD),
        (b'{"status": "online", "device": "dc-0002"}', RejectReason.IDENTITY_MISMATCH),
        (b'{"status": "online", "ts": 99999999999999}', RejectReason.TIMESTAMP_FUTURE),
        (b'{"status": "online", "ts": 1}', RejectReason.TIMESTAMP_PAST),
    ],
)
def test_invalid_status(payload: bytes, reason: RejectReason) -> None:
    rejected(reason, topic=STATUS_TOPIC, payload=payload)


def test_status_on_unknown_kind_is_unknown_kind() -> None:
    rejected(RejectReason.UNKNOWN_KIND, topic="gw/v1/s1/water/w-1/status", payload=b"online")


# ---------------------------------------------------------------- rejected keeps raw bytes


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (TOPIC, b"\x00\xff\xfe raw \r\n bytes"),
        ("gw/v1/yingyang/smoke/a b/telemetry", b'{"temperature": 1}'),
        ("weird/\u00e9/topic \n", b"\x80"),
        (TOPIC, b'{"temperature": "21"}  '),
    ],
)
def test_rejected_keeps_raw_bytes_and_topic_exactly(topic: str, payload: bytes) -> None:
    result = decode(topic=topic, payload=payload, received_ns=123)
    assert isinstance(result, Rejected)
    assert result.payload is payload or result.payload == payload
    assert result.topic == topic
    assert result.received_ns == 123


# ---------------------------------------------------------------- properties


def valid_topics() -> list[str]:
    return [
        f"gw/v1/s-1/{name}/dev_1.a:b/{channel}"
        for name, kind in KINDS.items()
        for channel in [*kind.channels, STATUS]
    ]


def check_result(result: object, topic: str, payload: bytes) -> None:
    """Whatever the input: a Reading or a Rejected, and a Reading is storable."""
    assert isinstance(result, Reading | Rejected)
    if isinstance(result, Rejected):
        assert isinstance(result.reason, RejectReason)
        assert result.payload == payload and result.topic == topic
        assert len(result.detail) <= 400
        assert result.route == route_of(topic)
        if result.reason is not RejectReason.OVERSIZE:  # the size is checked first
            assert (result.route is None) == (result.reason is RejectReason.BAD_TOPIC)
        return
    check_reading(result)


def check_reading(result: Reading) -> None:
    kind: SensorKind = KINDS[result.kind]
    if result.channel == STATUS:
        assert result.measurement == DEVICE_STATUS
        assert set(result.fields) == {"online", "state"}
    else:
        declared = {spec.name: spec.type for spec in kind.fields}
        assert result.fields, "a reading needs fields"
        for name, value in result.fields.items():
            assert name in declared, name
            assert type(value) is declared[name], (name, value)
        assert set(result.tags) <= set(kind.tags)
    for value in result.fields.values():
        check_value(value)
    assert result.seq is None or 0 <= result.seq <= INT64_MAX
    encode_reading(result)  # must not raise: everything decoded can be stored


def check_value(value: FieldValue) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        assert INT64_MIN <= value <= INT64_MAX


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(topic=st.sampled_from(valid_topics()), payload=st.binary(max_size=20_000))
def test_arbitrary_bytes_never_raise(topic: str, payload: bytes) -> None:
    check_result(DECODER.decode(topic, payload, NOW_NS), topic, payload)


@FAST
@given(topic=st.text(max_size=200), payload=st.binary(max_size=200))
def test_arbitrary_topics_never_raise(topic: str, payload: bytes) -> None:
    check_result(DECODER.decode(topic, payload, NOW_NS), topic, payload)


segments = st.sampled_from(
    ["gw", "v1", "s1", *KINDS, "dev-1", "telemetry", "event", STATUS, "", "a b", "..", "+", "#"]
)


@FAST
@given(
    parts=st.lists(segments, min_size=0, max_size=8),
    payload=st.sampled_from(
        [GOOD, b"online", b'{"event": "alarm"}', b'{"door_open": true}', b"{}", b"\xff"]
    ),
)
def test_topic_shaped_strings_never_raise(parts: list[str], payload: bytes) -> None:
    topic = "/".join(parts)
    check_result(DECODER.decode(topic, payload, NOW_NS), topic, payload)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from([10**30, -(10**30), 2**63, -(2**63) - 1, -1, 0, 1e308, -0.0])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def golden_bases() -> list[tuple[str, dict[str, Any]]]:
    """(topic, payload dict) of each valid golden case, with ts moved near NOW_NS."""
    bases = []
    for case in VALID_CASES:
        obj = case.payload_object()
        assert obj is not None
        if "ts" in obj:
            obj["ts"] = NOW_NS // NS_PER_MS - 1000
        bases.append((case.topic, obj))
    bases.append((STATUS_TOPIC, {"status": "offline", "ts": NOW_NS // NS_PER_MS}))
    return bases


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, bytes]:
    topic, base = draw(st.sampled_from(golden_bases()))
    obj = dict(base)
    keys = sorted(obj)
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["drop", "replace", "add", "huge", "negative", "nest"]))
        key = draw(st.sampled_from(keys)) if keys else "ts"
        if action == "drop":
            obj.pop(key, None)
        elif action == "replace":
            obj[key] = draw(json_values)
        elif action == "add":
            obj[draw(st.text(max_size=10))] = draw(json_values)
        elif action == "huge":
            obj[key] = draw(st.sampled_from([10**30, -(10**30), 2**63, 2**64, 1e300]))
        elif action == "negative":
            obj[draw(st.sampled_from([key, "seq"]))] = draw(st.integers(max_value=-1))
        else:
            obj[key] = {"nested": obj.get(key), "deeper": {"x": [obj.get(key)]}}
    return topic, json.dumps(obj).encode()


@FAST
@given(message=near_valid())
def test_near_valid_payloads_never_raise(message: tuple[str, bytes]) -> None:
    topic, payload = message
    check_result(DECODER.decode(topic, payload, NOW_NS), topic, payload)


@FAST
@given(message=near_valid())
def test_near_valid_payloads_decode_the_same_every_time(message: tuple[str, bytes]) -> None:
    topic, payload = message
    assert DECODER.decode(topic, payload, NOW_NS) == DECODER.decode(topic, payload, NOW_NS)


def test_golden_bases_still_decode() -> None:
    """The unmutated bases are valid, so the property tests also exercise Readings."""
    for topic, obj in golden_bases():
        result = DECODER.decode(topic, json.dumps(obj).encode(), NOW_NS)
        assert isinstance(result, Reading), (topic, result)
        check_reading(result)


def test_numeric_string_ts_is_refused_not_read_as_seconds() -> None:
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=str))
    result = decoder.decode(
        "gw/v1/s/smoke/d/telemetry", b'{"temperature": 1.5, "ts": "1795700000"}', 1795700000 * 10**9
    )
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.INVALID_PAYLOAD
    assert "JSON integer" in result.detail


def test_rfc3339_keeps_nanoseconds() -> None:
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=str))
    payload = b'{"temperature": 1.5, "ts": "2026-11-26T20:00:00.123456789+08:00"}'
    result = decoder.decode("gw/v1/s/smoke/d/telemetry", payload, 1795694400 * 10**9)
    assert isinstance(result, Reading)
    assert result.ts_ns == 1795694400_123456789
