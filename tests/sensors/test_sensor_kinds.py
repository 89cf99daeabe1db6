"""Contract suite over every registered sensor kind, plus its golden cases.

Golden cases live in tests/cases/<kind>/<case>/: topic.txt, payload.json (or payload.bin)
and either expected.json (the kind-specific part of the point) or rejected.txt (the
reason). Here each payload goes straight through the kind's model and mapping; the
end-to-end runner through the decoder is separate.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pydantic
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import sensors
from sensors import access, parking
from sensors.base import (
    COMMON_TAGS,
    DecodeContext,
    Envelope,
    FieldValue,
    Point,
    SensorKind,
    keyed_hash,
)
from sensors.registry import KINDS
from tests.support.golden import CASES_DIR, GoldenCase, load_cases

SENSORS_DIR = Path(sensors.__file__).parent
NOT_PLUGINS = frozenset({"__init__", "base", "registry", "geo", "topics", "yaml_doc"})
GOLDEN_KEY = b"golden-test-key"
CTX = DecodeContext(hash_identifier=lambda value: keyed_hash(GOLDEN_KEY, value))
REJECT_REASONS = frozenset({"bad_json", "invalid_payload", "unknown_channel", "duplicate_key"})
MIN_VALID, MIN_REJECTED = 5, 3
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")

KIND_PARAMS = [pytest.param(kind, id=name) for name, kind in KINDS.items()]
CHANNEL_PARAMS = [
    pytest.param(kind, channel, id=f"{name}-{channel}")
    for name, kind in KINDS.items()
    for channel in kind.channels
]


CASES = load_cases()
VALID = [pytest.param(c, id=f"{c.kind}/{c.name}") for c in CASES if c.expected is not None]
REJECTED = [pytest.param(c, id=f"{c.kind}/{c.name}") for c in CASES if c.rejected is not None]


def typed(values: Mapping[str, object]) -> dict[str, tuple[type, object]]:
    """Pair each value with its exact type, so 21 and 21.0 (or 1 and True) differ."""
    return {name: (type(value), value) for name, value in values.items()}


def check_point(kind: SensorKind, point: Point) -> None:
    """Assert the point only carries declared, storable fields and tags."""
    assert point.fields, "a point without fields cannot be written to InfluxDB"
    for name, value in point.fields.items():
        spec = kind.field(name)
        assert type(value) is spec.type, f"{name}: {type(value).__name__} is not {spec.type}"
        if isinstance(value, float):
            assert math.isfinite(value), name
        if type(value) is int and name != "seq":  # seq: see test_int_fields_fit_int64
            assert INT64_MIN <= value <= INT64_MAX, name
    for name, tag in (point.tags or {}).items():
        assert name in kind.tags, f"undeclared tag {name!r}"
        assert isinstance(tag, str)
        assert tag


# ---------------------------------------------------------------- registry and declarations


def plugin_modules() -> list[str]:
    return sorted(p.stem for p in SENSORS_DIR.glob("*.py") if p.stem not in NOT_PLUGINS)


@pytest.mark.parametrize("module_name", plugin_modules())
def test_every_plugin_module_is_registered(module_name: str) -> None:
    module = importlib.import_module(f"sensors.{module_name}")
    kind = getattr(module, "KIND", None)
    # A helper module belongs in NOT_PLUGINS, by name; anything else must be a kind.
    assert isinstance(kind, SensorKind), f"sensors/{module_name}.py defines no KIND"
    assert KINDS.get(kind.name) is kind, f"sensors/{module_name}.py is not in sensors.registry"
    assert kind.name == module_name, "one module per kind, named after the kind"


def test_every_case_directory_belongs_to_a_registered_kind() -> None:
    assert {p.name for p in CASES_DIR.iterdir() if p.is_dir()} <= set(KINDS)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_kind_declarations(kind: SensorKind) -> None:
    assert kind.name == kind.measurement
    assert KINDS[kind.name] is kind
    names = [spec.name for spec in kind.fields]
    assert len(names) == len(set(names)), "field declared twice"
    assert not set(names) & (set(kind.tags) | set(COMMON_TAGS)), "a name is field and tag"
    assert len(kind.tags) == len(set(kind.tags))
    for spec in kind.fields:
        assert SNAKE_CASE.match(spec.name), spec.name
        assert spec.type in get_args(FieldValue), spec
        assert spec.description, spec
    assert kind.field("seq").type is int
    for tag in kind.tags:
        assert SNAKE_CASE.match(tag), tag


@pytest.mark.parametrize(("kind", "channel"), CHANNEL_PARAMS)
def test_channel_models_keep_the_device_contract(kind: SensorKind, channel: str) -> None:
    model = kind.channels[channel]
    assert issubclass(model, Envelope)
    assert model.model_config.get("strict") is True
    assert model.model_config.get("extra") == "ignore"
    assert model.model_config.get("frozen") is True
    assert model.model_config.get("allow_inf_nan") is False, "InfluxDB cannot store NaN/inf"
    assert model.model_config.get("hide_input_in_errors") is True, "errors reach logs"
    for name in model.model_fields:
        assert SNAKE_CASE.match(name), name


# ---------------------------------------------------------------- golden cases


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_every_kind_has_golden_cases(kind: SensorKind) -> None:
    mine = [c for c in CASES if c.kind == kind.name]
    valid = [c for c in mine if c.expected is not None]
    rejected = [c for c in mine if c.rejected is not None]
    assert len(valid) >= MIN_VALID, f"{kind.name}: {len(valid)} valid golden cases"
    assert len(rejected) >= MIN_REJECTED, f"{kind.name}: {len(rejected)} rejected golden cases"


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_golden_cases_cover_every_declared_field_and_tag(kind: SensorKind) -> None:
    expected = [c.expected for c in CASES if c.kind == kind.name and c.expected is not None]
    seen_fields = {name for e in expected for name in e["fields"]}
    seen_tags = {name for e in expected for name in e.get("tags") or {}}
    assert {spec.name for spec in kind.fields} - seen_fields == set()
    assert set(kind.tags) - seen_tags == set()


@pytest.mark.parametrize("case", [*VALID, *REJECTED])
def test_golden_topic_is_well_formed(case: GoldenCase) -> None:
    root, version, site, kind, device, channel = case.topic.split("/")
    assert (root, version, kind) == ("gw", "v1", case.kind)
    assert site and device and channel


@pytest.mark.parametrize("case", VALID)
def test_golden_valid_case(case: GoldenCase) -> None:
    assert case.expected is not None
    kind = KINDS[case.kind]
    model = kind.channels[case.channel].model_validate_json(case.payload)
    point = kind.to_point(case.channel, model, CTX)
    assert case.expected["measurement"] == kind.measurement
    assert typed(point.tags or {}) == typed(case.expected.get("tags") or {})
    assert typed(point.fields) == typed(case.expected["fields"])
    check_point(kind, point)


@pytest.mark.parametrize("case", REJECTED)
def test_golden_rejected_case(case: GoldenCase) -> None:
    assert case.rejected in REJECT_REASONS
    kind = KINDS[case.kind]
    if case.rejected == "unknown_channel":
        assert case.channel not in kind.channels
        return
    if case.rejected == "duplicate_key":
        # The decoder's refusal: the model alone takes the payload (the last key wins).
        kind.channels[case.channel].model_validate_json(case.payload)
        with pytest.raises(ValueError, match="twice"):
            json.loads(case.payload, object_pairs_hook=_refuse_duplicate_keys)
        return
    with pytest.raises(pydantic.ValidationError) as failure:
        kind.channels[case.channel].model_validate_json(case.payload)
    json_broken = any(error["type"] == "json_invalid" for error in failure.value.errors())
    assert json_broken == (case.rejected == "bad_json"), failure.value


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("a key twice")
    return dict(pairs)


# ---------------------------------------------------------------- storable numbers


def first_case_emitting(kind: SensorKind, field: str) -> GoldenCase:
    return next(
        c
        for c in CASES
        if c.kind == kind.name and c.expected is not None and field in c.expected["fields"]
    )


def fields_of_type(field_type: type) -> list[Any]:
    params = []
    for name, kind in KINDS.items():
        for spec in kind.fields:
            if spec.type is field_type:
                params.append(pytest.param(kind, spec.name, id=f"{name}.{spec.name}"))
    return params


def with_value(case: GoldenCase, field: str, value: object) -> bytes:
    payload = json.loads(case.payload)
    payload[field] = value
    return json.dumps(payload).encode()


@pytest.mark.parametrize(("kind", "field"), fields_of_type(float))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_float_fields_refuse_non_finite(kind: SensorKind, field: str, value: float) -> None:
    case = first_case_emitting(kind, field)
    with pytest.raises(pydantic.ValidationError):
        kind.channels[case.channel].model_validate_json(with_value(case, field, value))


@pytest.mark.parametrize(("kind", "field"), fields_of_type(float))
def test_float_fields_stay_float_from_unvalidated_models(kind: SensorKind, field: str) -> None:
    """A JSON 21 must never reach InfluxDB as an int next to 21.5 (a field type conflict),
    even from models built without validation (model_copy, model_construct)."""
    case = first_case_emitting(kind, field)
    model = kind.channels[case.channel].model_validate_json(case.payload)
    point = kind.to_point(case.channel, model.model_copy(update={field: 21}), CTX)
    assert typed(point.fields)[field] == (float, 21.0)


@pytest.mark.parametrize(("kind", "field"), fields_of_type(int))
def test_int_fields_fit_int64(kind: SensorKind, field: str) -> None:
    case = first_case_emitting(kind, field)
    with pytest.raises(pydantic.ValidationError):
        kind.channels[case.channel].model_validate_json(with_value(case, field, INT64_MAX + 1))


# ---------------------------------------------------------------- properties

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


identifiers = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,15}", fullmatch=True)


def literal_strings(model: type[Envelope]) -> list[str]:
    """The Literal choices (event types, directions) anywhere in the model's annotations."""
    found: set[str] = set()

    def walk(annotation: object) -> None:
        if get_origin(annotation) is Literal:
            found.update(a for a in get_args(annotation) if isinstance(a, str))
        for arg in get_args(annotation):
            walk(arg)

    for info in model.model_fields.values():
        walk(info.annotation)
    return sorted(found)


def golden_values(kind: SensorKind, channel: str) -> dict[str, list[Any]]:
    """Values the valid golden payloads of one channel carry, per key."""
    seen: dict[str, list[Any]] = {}
    for case in CASES:
        if case.kind == kind.name and case.channel == channel and case.expected is not None:
            for key, value in json.loads(case.payload).items():
                seen.setdefault(key, []).append(value)
    return seen


def json_objects(kind: SensorKind, channel: str) -> st.SearchStrategy[dict[str, Any]]:
    """Arbitrary JSON objects, biased to the model's keys and to valid golden payloads
    (with keys dropped or replaced), so that validation passes often enough to exercise
    the mapping too."""
    model = kind.channels[channel]
    keys = sorted(model.model_fields)
    generic = st.booleans() | st.integers() | st.floats() | identifiers | json_values
    choices = literal_strings(model)
    if choices:
        generic |= st.sampled_from(choices)
    known = golden_values(kind, channel)
    bases = [
        json.loads(c.payload)
        for c in CASES
        if c.kind == kind.name and c.channel == channel and c.expected is not None
    ]

    def value_for(key: str) -> st.SearchStrategy[Any]:
        if key not in known:
            return generic
        valid = st.sampled_from(known[key])
        return st.integers(0, 9).flatmap(lambda i: valid if i < 8 else generic)

    foreign = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
    mixed = st.fixed_dictionaries({}, optional={key: value_for(key) for key in keys})
    mutated = st.tuples(
        st.sampled_from(bases),
        st.sets(st.sampled_from(keys), max_size=2),
        st.dictionaries(st.sampled_from(keys), generic, max_size=2),
    ).map(lambda t: {k: v for k, v in t[0].items() if k not in t[1]} | t[2])
    return st.tuples(foreign, mixed | mutated).map(lambda pair: pair[0] | pair[1])


@pytest.mark.parametrize(("kind", "channel"), CHANNEL_PARAMS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_json_object_is_validated_or_refused(
    kind: SensorKind, channel: str, data: st.DataObject
) -> None:
    model = kind.channels[channel]
    obj = data.draw(json_objects(kind, channel))
    try:
        payload = model.model_validate_json(json.dumps(obj))
    except pydantic.ValidationError:
        return
    check_point(kind, kind.to_point(channel, payload, CTX))


card_numbers = st.text(min_size=1, max_size=128)
plates = st.from_regex(r"[A-Za-z0-9 ·京沪-]{0,10}[A-Za-z0-9京沪粤]{1,12}", fullmatch=True)

access_events = st.fixed_dictionaries(
    {"event": st.sampled_from(get_args(access.AccessEventType)), "credential": card_numbers},
    optional={
        "door": identifiers,
        "reader": identifiers,
        "reason": st.text(max_size=256),
        "credential_hash": st.text(min_size=1, max_size=128),
        "direction": st.sampled_from(["in", "out"]),
    },
)
parking_bays = st.fixed_dictionaries(
    {"bay_id": identifiers, "occupied": st.booleans(), "plate": plates},
    optional={"zone": identifiers},
)
parking_events = st.fixed_dictionaries(
    {"event": st.sampled_from(get_args(parking.ParkingEventType)), "plate": plates},
    optional={"bay_id": identifiers, "zone": identifiers},
)


def assert_never_clear(
    kind: SensorKind, channel: str, payload: dict[str, Any], secret_key: str, hashed: str
) -> None:
    """Validate and map; the clear secret must appear only as its keyed hash."""
    secret: str = payload[secret_key]
    clear = {secret, parking.normalise_plate(secret) if secret_key == "plate" else secret}
    others = {v for k, v in payload.items() if k != secret_key and isinstance(v, str)}
    assume(clear.isdisjoint(others))
    model = kind.channels[channel].model_validate_json(json.dumps(payload))
    assert f"{secret_key}=" not in repr(model)
    point = kind.to_point(channel, model, CTX)
    check_point(kind, point)
    emitted = {*point.fields.values(), *(point.tags or {}).values()}
    assert not clear & emitted
    assert point.fields[hashed] == CTX.hash_identifier(getattr(model, secret_key))


@settings(deadline=None)
@given(payload=access_events)
def test_clear_card_number_is_never_emitted(payload: dict[str, Any]) -> None:
    assert_never_clear(KINDS["access"], "event", payload, "credential", "credential_hash")


@settings(deadline=None)
@given(payload=parking_bays)
def test_clear_plate_is_never_emitted_by_bays(payload: dict[str, Any]) -> None:
    assert_never_clear(KINDS["parking"], "telemetry", payload, "plate", "plate_hash")


@settings(deadline=None)
@given(payload=parking_events)
def test_clear_plate_is_never_emitted_by_events(payload: dict[str, Any]) -> None:
    assert_never_clear(KINDS["parking"], "event", payload, "plate", "plate_hash")


@pytest.mark.parametrize(
    ("plate", "same_as"),
    [("ab12 cde", "AB12CDE"), ("AB12-CDE", "AB12CDE"), ("京A·12345", "京A12345")],
)
def test_plates_hash_alike_however_written(plate: str, same_as: str) -> None:
    assert parking.normalise_plate(plate) == same_as


@pytest.mark.parametrize(("kind", "channel"), CHANNEL_PARAMS)
def test_validation_errors_do_not_echo_secrets(kind: SensorKind, channel: str) -> None:
    secret = "SECRET-0004521877"
    payload = {"credential": secret, "plate": secret, "event": 42, "door_open": "x"}
    with pytest.raises(pydantic.ValidationError) as failure:
        kind.channels[channel].model_validate_json(json.dumps(payload))
    assert secret not in str(failure.value)
