"""Line protocol encoding: escaping, types, tag order, and a round trip through a parser."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.line_protocol import (
    LineProtocolError,
    encode_point,
    encode_reading,
    reading_tags,
)
from sensors.base import FieldValue, Reading

TS = 1_740_788_130_250_000_000


def line(
    measurement: str = "m",
    tags: Mapping[str, str] | None = None,
    fields: Mapping[str, FieldValue] | None = None,
    ts: int = TS,
) -> str:
    return encode_point(measurement, tags or {}, fields or {"v": 1}, ts).decode()


# ---------------------------------------------------------------- escaping


def test_plain_point() -> None:
    assert line("smoke", {"site": "s1"}, {"temperature": 21.5}) == (
        f"smoke,site=s1 temperature=21.5 {TS}\n"
    )


def test_measurement_escapes_comma_and_space() -> None:
    assert line("my meas,x").startswith(r"my\ meas\,x v=1i")


def test_measurement_does_not_escape_equals() -> None:
    assert line("a=b").startswith("a=b v=1i")


def test_tag_keys_and_values_escape_comma_equals_space() -> None:
    encoded = line("m", {"k ,=": "v ,="})
    assert encoded.startswith(r"m,k\ \,\==v\ \,\= v=1i")


def test_field_keys_escape_comma_equals_space() -> None:
    assert line("m", {}, {"a b,c=d": 1}) == f"m a\\ b\\,c\\=d=1i {TS}\n"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("plain", '"plain"'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("two\nlines", r'"two\nlines"'),
        ("cr\rhere", r'"cr\rhere"'),
        ("", '""'),
        ("comma, space=equals", '"comma, space=equals"'),
        ("京A·12345", '"京A·12345"'),
    ],
)
def test_string_field_values(value: str, encoded: str) -> None:
    assert line("m", {}, {"s": value}) == f"m s={encoded} {TS}\n"


def test_string_values_never_break_the_line() -> None:
    encoded = line("m", {}, {"s": "a\nb\r\nc"})
    assert encoded.count("\n") == 1 and encoded.endswith("\n")
    assert "\r" not in encoded


def test_output_is_utf8_bytes() -> None:
    raw = encode_point("m", {"zone": "北"}, {"s": "京"}, TS)
    assert isinstance(raw, bytes)
    assert raw.decode("utf-8") == f'm,zone=北 s="京" {TS}\n'


# ---------------------------------------------------------------- field types


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "0i"),
        (42, "42i"),
        (-3, "-3i"),
        (2**63 - 1, f"{2**63 - 1}i"),
        (True, "true"),
        (False, "false"),
        (1.0, "1.0"),
        (21.5, "21.5"),
        (-0.043, "-0.043"),
        (0.1 + 0.2, repr(0.1 + 0.2)),
        (1e16, repr(1e16)),
        (5e-324, repr(5e-324)),
    ],
)
def test_field_types(value: FieldValue, encoded: str) -> None:
    assert line("m", {}, {"f": value}) == f"m f={encoded} {TS}\n"


def test_bool_is_not_encoded_as_int() -> None:
    encoded = line("m", {}, {"t": True, "f": False, "one": 1, "zero": 0})
    assert "t=true" in encoded and "f=false" in encoded
    assert "one=1i" in encoded and "zero=0i" in encoded
    assert "t=1i" not in encoded and "f=0i" not in encoded


def test_float_keeps_its_type_even_when_whole() -> None:
    """21.0 must stay a float: an int would conflict with the field's float type in InfluxDB."""
    assert "x=21.0 " in line("m", {}, {"x": 21.0})


def test_float_repr_round_trips() -> None:
    value = 0.1 + 0.2
    encoded = line("m", {}, {"x": value})
    assert float(encoded.split("x=")[1].split(" ")[0]) == value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_raise(value: float) -> None:
    with pytest.raises(LineProtocolError):
        encode_point("m", {}, {"x": value}, TS)


def test_line_protocol_error_is_a_value_error() -> None:
    assert issubclass(LineProtocolError, ValueError)


def test_empty_fields_raise() -> None:
    with pytest.raises(LineProtocolError, match="at least one field"):
        encode_point("m", {"a": "b"}, {}, TS)


def test_fields_keep_their_order() -> None:
    encoded = line("m", {}, {"b": 1, "a": 2, "c": 3})
    assert " b=1i,a=2i,c=3i " in encoded


# ---------------------------------------------------------------- tags


def test_empty_tag_values_are_dropped() -> None:
    assert line("m", {"a": "", "b": "x", "c": ""}) == f"m,b=x v=1i {TS}\n"


def test_tags_are_sorted_by_key() -> None:
    encoded = line("m", {"zone": "z", "bay_id": "b", "kind": "k", "device": "d"})
    assert encoded.startswith("m,bay_id=b,device=d,kind=k,zone=z ")


def test_no_tags() -> None:
    assert line("m", {}, {"v": 1}) == f"m v=1i {TS}\n"


def test_timestamp_is_integer_nanoseconds() -> None:
    assert line(ts=0).endswith(" 0\n")
    assert line(ts=TS + 7).endswith(f" {TS + 7}\n")


# ---------------------------------------------------------------- readings


def reading(**changes: object) -> Reading:
    values: dict[str, object] = {
        "measurement": "parking",
        "site": "s1",
        "kind": "parking",
        "device": "pk-1",
        "channel": "telemetry",
        "cell": "g-03",
        "ts_ns": TS,
        "ts_from_device": True,
        "seq": 88,
        "tags": {"bay_id": "b-017", "zone": "p2-north"},
        "fields": {"occupied": True, "lat": 39.9},
    }
    values.update(changes)
    return Reading(**values)  # type: ignore[arg-type]


def test_encode_reading_adds_common_tags_and_seq() -> None:
    assert encode_reading(reading()) == (
        b"parking,bay_id=b-017,cell=g-03,channel=telemetry,device=pk-1,kind=parking,"
        b"site=s1,zone=p2-north occupied=true,lat=39.9,seq=88i " + str(TS).encode() + b"\n"
    )


def test_encode_reading_without_cell_or_seq() -> None:
    encoded = encode_reading(reading(cell=None, seq=None, tags={}))
    assert encoded == (
        b"parking,channel=telemetry,device=pk-1,kind=parking,site=s1 occupied=true,lat=39.9 "
        + str(TS).encode()
        + b"\n"
    )
    assert b"cell=" not in encoded and b"seq=" not in encoded


def test_encode_reading_keeps_a_seq_the_kind_already_emitted() -> None:
    encoded = encode_reading(reading(seq=88, fields={"seq": 88, "occupied": True}))
    assert encoded.count(b"seq=88i") == 1


def test_reading_tags() -> None:
    assert reading_tags(reading()) == {
        "site": "s1",
        "kind": "parking",
        "device": "pk-1",
        "channel": "telemetry",
        "cell": "g-03",
        "bay_id": "b-017",
        "zone": "p2-north",
    }
    assert "cell" not in reading_tags(reading(cell=None))
    assert "cell" not in reading_tags(reading(cell=""))


def test_encode_reading_refuses_non_finite() -> None:
    with pytest.raises(LineProtocolError):
        encode_reading(reading(fields={"lat": math.nan}))


# ---------------------------------------------------------------- round trip


def _unescape_until(text: str, pos: int, stops: str) -> tuple[str, int]:
    """Read a key-ish token up to an unescaped stop character; backslash escapes anything."""
    out: list[str] = []
    while pos < len(text) and text[pos] not in stops:
        if text[pos] == "\\" and pos + 1 < len(text):
            nxt = text[pos + 1]
            out.append("\n" if nxt == "n" else nxt)
            pos += 2
        else:
            out.append(text[pos])
            pos += 1
    return "".join(out), pos


def _parse_value(text: str, pos: int) -> tuple[FieldValue, int]:
    if text[pos] == '"':
        out: list[str] = []
        pos += 1
        while text[pos] != '"':
            if text[pos] == "\\":
                out.append({"n": "\n", "r": "\r"}.get(text[pos + 1], text[pos + 1]))
                pos += 2
            else:
                out.append(text[pos])
                pos += 1
        return "".join(out), pos + 1
    end = pos
    while text[end] not in ", ":
        end += 1
    raw = text[pos:end]
    if raw in ("true", "false"):
        return raw == "true", end
    if raw.endswith("i"):
        return int(raw[:-1]), end
    return float(raw), end


def parse_line(
    encoded: bytes,
) -> tuple[str, dict[str, str], dict[str, FieldValue], int]:
    """A small reference parser for the subset of line protocol the encoder writes."""
    text = encoded.decode("utf-8")
    assert text.endswith("\n") and text.count("\n") == 1
    text = text[:-1]
    measurement, pos = _unescape_until(text, 0, ", ")
    tags: dict[str, str] = {}
    while text[pos] == ",":
        key, pos = _unescape_until(text, pos + 1, "=")
        value, pos = _unescape_until(text, pos + 1, ", ")
        tags[key] = value
    assert text[pos] == " "
    fields: dict[str, FieldValue] = {}
    pos += 1
    while True:
        key, pos = _unescape_until(text, pos, "=")
        field_value, pos = _parse_value(text, pos + 1)
        fields[key] = field_value
        if text[pos] == " ":
            break
        assert text[pos] == ","
        pos += 1
    ts = int(text[pos + 1 :])
    return measurement, tags, fields, ts


# Keys: printable, no backslash (line protocol cannot express a trailing one) and no
# newline (keys never carry one: they come from declared names and identifiers).
keys = st.text(
    st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="\\"),
    min_size=1,
    max_size=12,
)
field_values: st.SearchStrategy[FieldValue] = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
)


@settings(max_examples=300, deadline=None)
@given(
    measurement=keys,
    tags=st.dictionaries(keys, keys, max_size=4),
    fields=st.dictionaries(keys, field_values, min_size=1, max_size=5),
    ts=st.integers(0, 2**63 - 1),
)
def test_round_trip_through_a_reference_parser(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], ts: int
) -> None:
    encoded = encode_point(measurement, tags, fields, ts)
    parsed_measurement, parsed_tags, parsed_fields, parsed_ts = parse_line(encoded)
    assert parsed_measurement == measurement
    assert parsed_tags == tags
    assert list(parsed_tags) == sorted(parsed_tags)
    assert {k: (type(v), v) for k, v in parsed_fields.items()} == {
        k: (type(v), v) for k, v in fields.items()
    }
    assert parsed_ts == ts
