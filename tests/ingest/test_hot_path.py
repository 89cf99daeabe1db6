"""The ingest hot path's shortcuts give exactly what the plain forms give.

Decode, the sensor mappings and the MQTT client take shortcuts for speed (README,
"Hot-path caches"): precomputed HMAC pads, slot setters instead of a frozen dataclass's
__init__, per-model field plans, PUBACKs built by slicing. Each is checked here against
the obvious implementation it replaces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.client import encode_pubacks
from evaluation.bench_costs import bench_decoder, bench_messages
from evaluation.ingest_bench import _templates
from sensors import smoke
from sensors.base import (
    DeclaredValues,
    FieldValue,
    Point,
    Reading,
    declared_values,
    keyed_hash,
    new_reading,
)


@settings(deadline=None, max_examples=200)
@given(key=st.binary(max_size=200), value=st.text(max_size=300))
def test_keyed_hash_is_hmac_sha256(key: bytes, value: str) -> None:
    expected = hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
    assert keyed_hash(key, value) == expected


@pytest.mark.parametrize("key_length", [0, 1, 63, 64, 65, 128, 129])
def test_keyed_hash_at_the_block_size_edges(key_length: int) -> None:
    key = bytes(range(key_length % 256)) * (key_length // 256 + 1)
    key = key[:key_length]
    expected = hmac.new(key, b"10000093", hashlib.sha256).hexdigest()[:32]
    assert keyed_hash(key, "10000093") == expected


def test_new_reading_is_the_dataclass() -> None:
    fields: dict[str, FieldValue] = {"co": 0.5}
    fast = new_reading("smoke", "s1", "smoke", "d1", "telemetry", "c1", 17, True, 5, {}, fields)
    assert fast == Reading("smoke", "s1", "smoke", "d1", "telemetry", "c1", 17, True, 5, {}, fields)
    assert type(fast) is Reading
    assert fast.cell == "c1" and fast.seq == 5 and fast.fields == {"co": 0.5}
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.site = "other"  # type: ignore[misc]  # frozen: the point of the test


def test_point_keeps_dataclass_behaviour() -> None:
    point = Point(fields={"leak": True})
    assert point.tags is None
    assert point == Point({"leak": True}, None)
    assert dataclasses.replace(point, tags={"room": "r1"}).tags == {"room": "r1"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.tags = {}  # type: ignore[misc]  # frozen: the point of the test


def test_declared_values_plan_coerces_and_refuses_like_the_contract() -> None:
    payload = smoke.SmokeTelemetry.model_validate_json(b'{"seq":3,"temperature":21,"alarm":true}')
    values = DeclaredValues("smoke", smoke.FIELDS)(payload)
    assert values == {"seq": 3, "temperature": 21.0, "alarm": True}
    assert type(values["temperature"]) is float
    assert declared_values("smoke", smoke.FIELDS, payload) == values
    # A model whose value has another type than the declared field: refused, named.
    wrong = smoke.SmokeTelemetry.model_construct(temperature="hot")  # type: ignore[arg-type]  # wrong on purpose
    with pytest.raises(TypeError, match=r"smoke\.temperature: str, not float"):
        DeclaredValues("smoke", smoke.FIELDS)(wrong)


@pytest.mark.parametrize("ids", [[], [1], [65535, 1, 256, 255], list(range(1, 4097))])
def test_pubacks_are_one_packet_per_id(ids: list[int]) -> None:
    expected = b"".join(b"\x40\x02" + struct.pack("!H", pid) for pid in ids)
    assert encode_pubacks(ids) == expected


def test_pubacks_refuse_ids_outside_16_bits() -> None:
    with pytest.raises(struct.error):
        encode_pubacks([65536])


def test_benchmark_messages_are_all_valid_readings() -> None:
    """The benchmark measures the path of valid traffic: none of it may be rejected."""
    bench = bench_messages(_templates(600, 100, seed=2))
    decoder = bench_decoder()
    results = [decoder.decode(t, p, bench.received_ns) for t, p in bench.messages]
    assert all(isinstance(r, Reading) for r in results), [
        r for r in results if not isinstance(r, Reading)
    ][:3]
    assert {r.kind for r in results if isinstance(r, Reading)} == {"access", "smoke", "parking"}
