"""Issue 18, decode: no payload may make `Decoder.decode` raise; hostile ones are refused.

Numeric extremes (integers of hundreds of digits, 1e308, NaN, negative times), deep
nesting, huge strings, duplicate keys and random bytes: every one gives a `Reading` or a
`Rejected` with a reason, never an exception (one escaping used to drop the MQTT
connection, and the broker redelivered the same message forever).
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest.decode import Decoder, Rejected, RejectReason
from ingest.line_protocol import encode_reading
from sensors.base import DecodeContext, Reading, keyed_hash
from sensors.registry import KINDS
from sensors.smoke import SmokeTelemetry

CTX = DecodeContext(hash_identifier=lambda value: keyed_hash(b"hostile-key", value))
DECODER = Decoder(KINDS, CTX)
NOW_NS = 1_740_788_130_250_000_000  # 2025-03-01T00:15:30.250Z
NOW_MS = NOW_NS // 1_000_000
SMOKE = "gw/v1/yingyang/smoke/sm-kg-kitchen/telemetry"
STATUS = "gw/v1/yingyang/smoke/sm-kg-kitchen/status"
ACCESS = "gw/v1/yingyang/access/dc-0001/event"
PARKING = "gw/v1/yingyang/parking/pk-1/telemetry"
TOPICS = [SMOKE, STATUS, ACCESS, PARKING, "gw/v1/yingyang/access/dc-0001/telemetry"]
INT64_MAX = 2**63 - 1
HUGE = int("1" + "0" * 400)  # the poison: a `ts` of 401 digits


def decode(topic: str, payload: bytes) -> Reading | Rejected:
    """Decode; whatever comes back must be a Reading (storable) or a Rejected."""
    result = DECODER.decode(topic, payload, NOW_NS)
    assert isinstance(result, Reading | Rejected)
    if isinstance(result, Rejected):
        assert isinstance(result.reason, RejectReason)
        assert result.detail and len(result.detail) <= 400
        assert result.payload == payload and result.topic == topic
    else:
        for value in result.fields.values():
            if isinstance(value, float):
                assert math.isfinite(value) and abs(value) <= 1e9
            elif isinstance(value, int):
                assert -(2**63) <= value <= INT64_MAX
        encode_reading(result)  # storable
    return result


def refused(topic: str, payload: bytes, reason: RejectReason) -> Rejected:
    result = decode(topic, payload)
    assert isinstance(result, Rejected), result
    assert result.reason is reason, result.detail
    return result


# ---------------------------------------------------------------- the findings


@pytest.mark.parametrize(
    ("topic", "body"),
    [
        (SMOKE, '{"ts":%s,"temperature":20}'),
        (STATUS, '{"ts":%s,"status":"online"}'),
    ],
)
def test_a_ts_of_hundreds_of_digits_is_a_future_timestamp(topic: str, body: str) -> None:
    """Finding 1: used to raise OverflowError (true division of a 401-digit integer)."""
    result = refused(topic, (body % HUGE).encode(), RejectReason.TIMESTAMP_FUTURE)
    assert result.detail == "ts is more than 10^12 s ahead of the hub clock"
    refused(topic, (body % -HUGE).encode(), RejectReason.TIMESTAMP_PAST)


@pytest.mark.parametrize("digits", [20, 310, 313, 400, 1000, 4000, 4290])
def test_ts_of_any_length_never_raises(digits: int) -> None:
    for sign in ("", "-"):
        payload = f'{{"ts":{sign}1{"0" * digits},"temperature":20}}'.encode()
        result = decode(SMOKE, payload)
        assert isinstance(result, Rejected)
        assert result.reason in {
            RejectReason.TIMESTAMP_FUTURE,
            RejectReason.TIMESTAMP_PAST,
            RejectReason.BAD_JSON,  # beyond ~4300 digits the parser refuses the number
        }


def test_a_ts_beyond_the_parser_limit_is_bad_json() -> None:
    refused(SMOKE, b'{"ts":1' + b"0" * 16000 + b',"temperature":20}', RejectReason.BAD_JSON)


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        (-1, RejectReason.TIMESTAMP_PAST),
        (-(2**63), RejectReason.TIMESTAMP_PAST),
        (-(2**64), RejectReason.TIMESTAMP_PAST),
        (2**63, RejectReason.TIMESTAMP_FUTURE),
        (2**1024, RejectReason.TIMESTAMP_FUTURE),  # beyond any float
    ],
)
def test_negative_and_huge_integer_ts(ts: int, reason: RejectReason) -> None:
    refused(SMOKE, f'{{"ts":{ts},"temperature":20}}'.encode(), reason)
    refused(STATUS, f'{{"ts":{ts},"status":"offline"}}'.encode(), reason)


@pytest.mark.parametrize(
    "ts", ["1e308", "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1.5", "-0.0", "5e-324"]
)
def test_float_ts_is_invalid(ts: str) -> None:
    result = refused(
        SMOKE, f'{{"ts":{ts},"temperature":20}}'.encode(), RejectReason.INVALID_PAYLOAD
    )
    assert result.detail.startswith("ts:")


@pytest.mark.parametrize(
    ("topic", "body", "field"),
    [
        (SMOKE, '{"temperature": %s}', "temperature"),
        (SMOKE, '{"humidity": %s}', "humidity"),
        (SMOKE, '{"co": %s}', "co"),
        (SMOKE, '{"battery": %s}', "battery"),
        (SMOKE, '{"pm2_5": %s}', "pm2_5"),
        (SMOKE, '{"nc0_5": %s}', "nc0_5"),
        (SMOKE, '{"pressure": %s}', "pressure"),
        (SMOKE, '{"raw_ethanol": %s}', "raw_ethanol"),
        (SMOKE, '{"alarm": false, "seq": %s}', "seq"),
        (PARKING, '{"lot": "L1", "capacity": %s, "occupancy": 1}', "capacity"),
        (PARKING, '{"lot": "L1", "capacity": 5, "occupancy": %s}', "occupancy"),
        (PARKING, '{"bay_id": "b1", "occupied": true, "lat": %s}', "lat"),
        (ACCESS.replace("event", "telemetry"), '{"door_open": true, "battery": %s}', "battery"),
    ],
)
@pytest.mark.parametrize(
    "number", ["18446744073709551616", "-18446744073709551616", "1e308", "-1e308", str(HUGE)]
)
def test_extreme_numbers_are_refused_naming_the_field(
    topic: str, body: str, field: str, number: str
) -> None:
    """Finding 2: 2**64 °C used to be stored; every measured value now has bounds."""
    result = refused(topic, (body % number).encode(), RejectReason.INVALID_PAYLOAD)
    assert result.detail.startswith(f"{field}:"), result.detail


@pytest.mark.parametrize(
    ("value", "ok"), [(-100, True), (1000, True), (-100.01, False), (1000.01, False)]
)
def test_temperature_bounds_are_inclusive(value: float, ok: bool) -> None:
    result = decode(SMOKE, json.dumps({"temperature": value}).encode())
    assert isinstance(result, Reading) is ok, result


# ---------------------------------------------------------------- duplicate keys


@pytest.mark.parametrize(
    ("topic", "payload", "key"),
    [
        (SMOKE, b'{"device":"other","device":"sm-kg-kitchen","temperature":20}', "device"),
        (SMOKE, b'{"device":"sm-kg-kitchen","device":"other","temperature":20}', "device"),
        (SMOKE, b'{"temperature":20,"temperature":2}', "temperature"),
        (SMOKE, b'{"temperature": 20, "temperature" : 2}', "temperature"),  # spaced
        (SMOKE, b'{"temperature":20,\n"temperature"\t:2}', "temperature"),
        (SMOKE, b'{"temperature":20,"t\\u0065mperature":2}', "temperature"),  # escaped
        (SMOKE, b'{"ts":"2025-03-01T00:15:30Z","ts":"2025-03-01T00:15:29Z","co":1}', "ts"),
        (SMOKE, b'{"ts":1740788130000,"ts":1740788130001,"co":1,"note":"a:b"}', "ts"),
        (SMOKE, b'{"co":1,"extra":{"co":5},"co":2}', "co"),
        (ACCESS, b'{"event":"access_granted","credential":"1","credential":"2"}', "credential"),
        (STATUS, b'{"status":"offline","status":"online"}', "status"),
        (STATUS, b'{"status":"online","ts":1740788130000,"ts":1740788130001}', "ts"),
    ],
)
def test_duplicate_keys_are_refused(topic: str, payload: bytes, key: str) -> None:
    result = refused(topic, payload, RejectReason.DUPLICATE_KEY)
    assert repr(key) in result.detail


@pytest.mark.parametrize(
    "payload",
    [
        b'{"temperature":20,"firmware":"1","firmware":"2"}',  # keys the model ignores
        b'{"temperature":20,"x":{"a":1,"a":2}}',  # nested, ignored
        b'{"temperature":20,"x":[{"co":1},{"co":2}]}',
        b'{"temperature":20,"note":"\\"temperature\\": 5, \\"temperature\\""}',
        b'{"temperature":20,"note":"temperature","cell":"temperature"}',
        b'{"ts":"2025-03-01T00:15:30Z","temperature":20,"note":"x:y"}',
        b'{"ts":"2025-03-01T08:15:30+08:00","temperature":20}',
    ],
)
def test_payloads_without_a_model_key_twice_are_accepted(payload: bytes) -> None:
    assert isinstance(decode(SMOKE, payload), Reading)


# ---------------------------------------------------------------- structure extremes


@pytest.mark.parametrize("depth", [1, 50, 199, 200, 201, 1000, 5000])
def test_deep_nesting(depth: int) -> None:
    for inner in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        payload = f'{{"temperature":20,"x":{inner}}}'.encode()
        result = decode(SMOKE, payload)
        assert isinstance(result, Reading) or result.reason in {
            RejectReason.BAD_JSON,
            RejectReason.OVERSIZE,
        }
    bare = ("[" * depth + "]" * depth).encode()
    assert isinstance(decode(SMOKE, bare), Rejected)


@pytest.mark.parametrize("size", [256, 257, 16_000])
def test_huge_strings(size: int) -> None:
    text = "x" * size
    result = decode(SMOKE, json.dumps({"temperature": 20, "note": text}).encode())
    assert isinstance(result, Reading)
    detail = json.dumps({"event": "fault", "detail": text}).encode()
    expected_ok = size <= 256
    assert isinstance(decode("gw/v1/y/smoke/d/event", detail), Reading) is expected_ok
    long_key = json.dumps({"temperature": 20, text: 1}).encode()
    assert isinstance(decode(SMOKE, long_key), Reading)


def test_random_bytes_never_raise() -> None:
    rng = random.Random(18)
    for _ in range(2000):
        payload = rng.randbytes(rng.randint(0, 300))
        decode(rng.choice(TOPICS), payload)


# ---------------------------------------------------------------- properties

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

extreme_numbers = (
    st.sampled_from(
        [
            "0",
            "-0",
            "-0.0",
            "1e308",
            "-1e308",
            "1.7976931348623157e308",
            "1e309",
            "5e-324",
            "1e-400",
            "NaN",
            "Infinity",
            "-Infinity",
            str(2**63),
            str(-(2**63) - 1),
            str(2**64),
            str(HUGE),
            str(-HUGE),
            "1" + "0" * 4299,
            "9" * 5000,
        ]
    )
    | st.integers().map(str)
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
)
keys = st.sampled_from(
    [
        "ts",
        "seq",
        "temperature",
        "humidity",
        "co",
        "battery",
        "status",
        "device",
        "site",
        "door_open",
        "event",
        "capacity",
        "occupancy",
        "lat",
        "bay_id",
        "occupied",
        "x",
        "",
    ]
)
scalars = (
    extreme_numbers
    | st.sampled_from(["true", "false", "null", '"online"', '"alarm"', '"sm-kg-kitchen"'])
    | st.text(max_size=20).map(json.dumps)
    | st.just(json.dumps("z" * 17_000))
)


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    """JSON-ish object text with extreme numbers, repeated keys, odd whitespace and
    nesting (written by hand: json.dumps can neither repeat keys nor write 1e400)."""
    spaces = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])
    members = []
    for _ in range(draw(st.integers(0, 6))):
        value = draw(scalars)
        depth = draw(st.integers(0, 3))
        if depth and draw(st.booleans()):
            value = "[" * depth + value + "]" * depth
        members.append(f"{json.dumps(draw(keys))}{draw(spaces)}:{draw(spaces)}{value}")
    return "{" + ",".join(members) + "}"


@FAST
@given(topic=st.sampled_from(TOPICS), text=json_texts())
@example(topic=SMOKE, text='{"ts":' + str(HUGE) + ',"temperature":20}')
@example(topic=STATUS, text='{"ts":' + str(HUGE) + ',"status":"online"}')
def test_hostile_objects_never_raise(topic: str, text: str) -> None:
    decode(topic, text.encode())


@FAST
@given(topic=st.sampled_from(TOPICS), payload=st.binary(max_size=400))
def test_random_bytes_property(topic: str, payload: bytes) -> None:
    decode(topic, payload)


@FAST
@given(depth=st.integers(1, 8000), opener=st.sampled_from(["[", '{"a":']))
def test_nesting_property(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    inner = opener * depth + ("1" if opener != "[" else "") + closer * depth
    decode(SMOKE, f'{{"temperature":1,"x":{inner}}}'.encode())


def _top_level_pairs(payload: bytes) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = json.loads(payload, object_pairs_hook=lambda p: p)
    return pairs


member_keys = st.sampled_from(["temperature", "humidity", "co", "seq", "ts", "cell", "note", "x"])
member_values = {
    "temperature": st.sampled_from(["20", "21.5", "-3"]),
    "humidity": st.sampled_from(["40", "55.5"]),
    "co": st.sampled_from(["0", "1.5"]),
    "seq": st.sampled_from(["1", "77"]),
    "ts": st.sampled_from([str(NOW_MS), '"2025-03-01T00:15:30Z"', '"2025-03-01T08:15:30+08:00"']),
    "cell": st.sampled_from(['"g-07"', '"a:b"']),
    "note": st.sampled_from(['"temperature"', '"x:y"', '"\\"co\\": 1"', '"\\u0074s"', '"a"']),
    "x": st.sampled_from(["1", '{"co":1,"co":2}', '["humidity",{"temperature":1}]']),
}


@st.composite
def keyed_objects(draw: st.DrawFn) -> bytes:
    """Valid smoke payloads, some with a key twice, keys escaped, odd whitespace."""
    spaces = st.sampled_from(["", " ", "\n", "  \t"])
    members = []
    for _ in range(draw(st.integers(1, 6))):
        key = draw(member_keys)
        written = key
        if draw(st.integers(0, 9)) == 0:
            written = f"{key[0]}\\u{ord(key[1]):04x}{key[2:]}" if len(key) > 1 else key
        value = draw(member_values[key])
        members.append(f'{draw(spaces)}"{written}"{draw(spaces)}:{draw(spaces)}{value}')
    return ("{" + ",".join(members) + draw(spaces) + "}").encode()


@settings(max_examples=1500, deadline=None)
@given(payload=keyed_objects())
def test_duplicate_verdict_matches_a_strict_parser(payload: bytes) -> None:
    """The cheap checks never miss a repeated model key, and never refuse without one.
    (The model validates first: what it refuses is refused for its own reason.)"""
    model_keys = {"temperature", "humidity", "co", "seq", "ts", "cell"}
    top = [key for key, _ in _top_level_pairs(payload) if key in model_keys]
    repeated = len(top) != len(set(top))
    try:
        SmokeTelemetry.model_validate_json(payload)
    except pydantic.ValidationError:
        model_accepts = False
    else:
        model_accepts = True
    result = decode(SMOKE, payload)
    duplicate = isinstance(result, Rejected) and result.reason is RejectReason.DUPLICATE_KEY
    assert duplicate == (model_accepts and repeated), (payload, result)


# ---------------------------------------------------------------- reserved topics


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("gw/v1/_hub/hub-a/status", b"online"),
        ("gw/v1/_hub/hub-a/status", b"offline"),
        ("gw/v1/_hub/hub b:1/status", b"offline"),
    ],
)
def test_hub_presence_is_not_refused(topic: str, payload: bytes) -> None:
    assert DECODER.decode_reserved(topic, payload, NOW_NS) is None


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("gw/v1/_hub/hub-a/status", b'{"temperature": 20}'),
        ("gw/v1/_hub/hub-a/status", b"ONLINE"),
        ("gw/v1/_hub/hub-a/status", b" online"),
        ("gw/v1/_hub/hub-a/telemetry", b"online"),
        ("gw/v1/_hub/hub-a/status/x", b"online"),
        ("gw/v1/_hub/status", b"online"),
        ("gw/v1/_hub//status", b"online"),
        ("gw/v1/_hub/", b""),
        ("gw/v1/_hub/x/y/z", b"\xff" * 100),
    ],
)
def test_anything_else_under_hub_is_a_reserved_topic(topic: str, payload: bytes) -> None:
    result = DECODER.decode_reserved(topic, payload, NOW_NS)
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.RESERVED_TOPIC
    assert (result.topic, result.payload, result.received_ns) == (topic, payload, NOW_NS)
    assert result.route is None
    assert "gw/v1/_hub/" in result.detail


def test_internal_error_names_the_exception_type_not_its_text() -> None:
    secret = "0004521877"
    result = DECODER.internal_error(SMOKE, b"{}", NOW_NS, KeyError(secret), "decode")
    assert result.reason is RejectReason.INTERNAL_ERROR
    assert result.detail == "decode raised KeyError"
    assert result.route is not None and result.route.device == "sm-kg-kitchen"
    assert DECODER.internal_error("no/route", b"", 1, ValueError(), "x").route is None
