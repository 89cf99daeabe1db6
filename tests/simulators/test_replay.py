"""Real-data replays reproduce the dataset values they read, with ground-truth labels.

Data: ../shared/data (see its README): the Kaggle smoke-detection run, UCI Parking
Birmingham (Stolfi, Alba & Yao 2017) and the Room-Climate door recordings (Morgner et
al. 2017). Expected values are recomputed here from the CSV files independently.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pytest

from ingest.decode import Decoder
from sensors.base import DecodeContext, Reading
from sensors.registry import KINDS
from simulators.engine import SimMessage, epoch_ms, serialise
from simulators.labels import (
    IncidentKind,
    Label,
    dumps_labels,
    format_ms,
    parse_ms,
    read_labels,
    write_labels,
)
from simulators.replay import (
    Replay,
    birmingham_time_ms,
    replay_doors,
    replay_parking,
    replay_smoke,
)
from sites.model import DEMO_SITES, Site, demo_site_path, load_site

DATA: Final = Path(__file__).parents[3] / "shared" / "data"
SMOKE_CSV: Final = DATA / "smoke" / "smoke_detection_iot_first10080_allcols.csv"
PARKING_CSV: Final = DATA / "parking" / "birmingham_parking.csv"
DOORS_DIR: Final = DATA / "doors"
START: Final = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
START_MS: Final = epoch_ms(START)
SMOKE_ALARM_UTC: Final = 1654736509  # the README's single 0→1 transition

FLOAT_COLUMNS: Final = {
    "Temperature[C]": "temperature",
    "Humidity[%]": "humidity",
    "TVOC[ppb]": "tvoc",
    "eCO2[ppm]": "eco2",
    "Pressure[hPa]": "pressure",
    "PM1.0": "pm1_0",
    "PM2.5": "pm2_5",
    "NC0.5": "nc0_5",
    "NC1.0": "nc1_0",
    "NC2.5": "nc2_5",
}
INT_COLUMNS: Final = {"Raw H2": "raw_h2", "Raw Ethanol": "raw_ethanol"}


@pytest.fixture(scope="module", params=DEMO_SITES)
def site(request: pytest.FixtureRequest) -> Site:
    return load_site(demo_site_path(str(request.param)))


@pytest.fixture(scope="module")
def yingyang() -> Site:
    return load_site(demo_site_path("yingyang"))


@pytest.fixture(scope="module")
def smoke_rows() -> list[dict[str, str]]:
    with SMOKE_CSV.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def parking_rows() -> list[dict[str, str]]:
    with PARKING_CSV.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def payloads(replay: Replay, channel: str) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in replay.messages if m.channel == channel]


def runs(flags: list[bool]) -> int:
    """Number of contiguous True runs (counted independently of the replay module)."""
    return sum(1 for i, flag in enumerate(flags) if flag and (i == 0 or not flags[i - 1]))


def decode_all(messages: list[SimMessage]) -> list[Reading]:
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=str))
    readings: list[Reading] = []
    for m in messages:
        ts_ms = json.loads(m.payload)["ts"]
        result = decoder.decode(m.topic, m.payload, received_ns=ts_ms * 1_000_000)
        assert isinstance(result, Reading), result
        readings.append(result)
    return readings


def check_stream(replay: Replay, site: Site) -> None:
    """Time order, per-device seq from 1 and strictly increasing ts, topic shape."""
    sims = [m.sim_ms for m in replay.messages]
    assert sims == sorted(sims)
    last: dict[str, tuple[int, int]] = {}
    for m in replay.messages:
        body = json.loads(m.payload)
        device = site.device(m.device_id)
        assert m.topic == f"gw/v1/{site.site}/{device.kind}/{m.device_id}/{m.channel}"
        assert body["cell"] == device.cell
        seq, ts = last.get(m.device_id, (0, -1))
        assert body["seq"] == seq + 1
        assert body["ts"] > ts
        assert body["ts"] >= m.sim_ms
        last[m.device_id] = (body["seq"], body["ts"])
    assert set(last) == set(replay.mapping.values())
    for label in replay.labels:
        assert label.site == site.site
        assert all(site.device(d).cell == label.cell for d in label.devices)


# --- labels file ----------------------------------------------------------------------


def test_label_json_has_the_agreed_keys() -> None:
    label = Label(
        id="x-1",
        kind=IncidentKind.FIRE,
        site="yingyang",
        cell="yy-g07",
        devices=("sm-1",),
        start_ms=1654736509000,
        end_ms=1654736510250,
    )
    body = json.loads(label.to_json())
    assert list(body) == ["id", "kind", "site", "cell", "devices", "start", "end"]
    assert body["start"] == "2022-06-09T01:01:49.000Z"
    assert body["end"] == "2022-06-09T01:01:50.250Z"
    assert parse_ms(format_ms(label.end_ms)) == label.end_ms
    with_extras = dataclasses.replace(label, source="s", note="n")
    assert list(json.loads(with_extras.to_json()))[-2:] == ["source", "note"]
    with pytest.raises(ValueError, match="ends before"):
        dataclasses.replace(label, end_ms=label.start_ms - 1)


def test_labels_file_round_trips_byte_for_byte(tmp_path: Path, yingyang: Site) -> None:
    labels = [
        *replay_smoke(yingyang, SMOKE_CSV, start=START).labels,
        *replay_parking(yingyang, PARKING_CSV, start=START, lots=["BHMBCCTHL01"]).labels,
        *replay_doors(yingyang, DOORS_DIR, start=START).labels,
    ]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_labels(first, reversed(labels))
    back = read_labels(first)
    assert sorted(back, key=lambda x: x.id) == sorted(labels, key=lambda x: x.id)
    assert [(x.start_ms, x.id) for x in back] == sorted((x.start_ms, x.id) for x in back)
    write_labels(second, back)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() == dumps_labels(labels).encode()


# --- smoke ----------------------------------------------------------------------------


def test_smoke_replay_reproduces_every_row(site: Site, smoke_rows: list[dict[str, str]]) -> None:
    replay = replay_smoke(site, SMOKE_CSV, start=START)
    check_stream(replay, site)
    telemetry = payloads(replay, "telemetry")
    assert len(replay.messages) == len(telemetry) == len(smoke_rows)
    offset = START_MS - int(smoke_rows[0]["UTC"]) * 1000
    for row, body in zip(smoke_rows, telemetry, strict=True):
        assert body["ts"] == int(row["UTC"]) * 1000 + offset
        for column, name in FLOAT_COLUMNS.items():
            assert body[name] == float(row[column])
        for column, name in INT_COLUMNS.items():
            assert body[name] == int(row[column])
        assert body["alarm"] is (row["Fire Alarm"] == "1")
    (device,) = replay.mapping.values()
    assert site.device(device).kind == "smoke"


def test_smoke_fire_labels_follow_the_alarm_column(
    site: Site, smoke_rows: list[dict[str, str]]
) -> None:
    replay = replay_smoke(site, SMOKE_CSV, start=START)
    alarms = [row["Fire Alarm"] == "1" for row in smoke_rows]
    assert len(replay.labels) == runs(alarms) == 1
    (label,) = replay.labels
    offset = START_MS - int(smoke_rows[0]["UTC"]) * 1000
    assert label.kind is IncidentKind.FIRE
    assert label.start_ms == SMOKE_ALARM_UTC * 1000 + offset
    assert label.end_ms == int(smoke_rows[-1]["UTC"]) * 1000 + offset
    assert label.devices == tuple(replay.mapping.values())


def test_smoke_limit_and_chosen_device(yingyang: Site) -> None:
    replay = replay_smoke(yingyang, SMOKE_CSV, start=START, device_id="sm-b6-stairwell", limit=50)
    assert len(replay.messages) == 50
    assert replay.labels == []  # the alarm starts at row 3178
    assert replay.notes
    assert {m.device_id for m in replay.messages} == {"sm-b6-stairwell"}
    with pytest.raises(ValueError, match="not a smoke detector"):
        replay_smoke(yingyang, SMOKE_CSV, start=START, device_id="ac-clinic")


# --- parking --------------------------------------------------------------------------


def kept_rows(rows: list[dict[str, str]], lot: str) -> list[dict[str, str]]:
    seen: set[str] = set()
    kept = []
    for row in rows:
        if row["SystemCodeNumber"] == lot and row["LastUpdated"] not in seen:
            seen.add(row["LastUpdated"])
            kept.append(row)
    return kept


@pytest.mark.parametrize("lot", ["BHMBCCTHL01", "NIA North"])
def test_parking_replay_reproduces_kept_rows_and_faults(
    site: Site, parking_rows: list[dict[str, str]], lot: str
) -> None:
    replay = replay_parking(site, PARKING_CSV, start=START, lots=[lot])
    check_stream(replay, site)
    rows = kept_rows(parking_rows, lot)
    assert len(rows) < sum(r["SystemCodeNumber"] == lot for r in parking_rows)  # duplicates
    assert any("duplicate" in note for note in replay.notes)
    telemetry = payloads(replay, "telemetry")
    assert len(telemetry) == len(replay.messages) == len(rows)
    offset = START_MS - birmingham_time_ms(rows[0]["LastUpdated"])
    for row, body in zip(rows, telemetry, strict=True):
        assert body["lot"] == lot
        assert body["capacity"] == int(row["Capacity"])
        assert body["occupancy"] == int(row["Occupancy"])
        assert body["ts"] == birmingham_time_ms(row["LastUpdated"]) + offset
    over = [int(r["Occupancy"]) > int(r["Capacity"]) for r in rows]
    negative = [int(r["Occupancy"]) < 0 for r in rows]
    kinds = [label.kind for label in replay.labels]
    assert kinds.count(IncidentKind.LOT_OVER_CAPACITY) == runs(over)
    assert kinds.count(IncidentKind.SENSOR_FAULT) == runs(negative)
    faulty = {"BHMBCCTHL01": over, "NIA North": negative}[lot]
    assert any(faulty)
    assert sum(faulty) == sum(int(x.source.split("(")[1].split()[0]) for x in replay.labels)


def test_parking_over_capacity_labels_match_independent_runs(
    yingyang: Site, parking_rows: list[dict[str, str]]
) -> None:
    lots = sorted({r["SystemCodeNumber"] for r in parking_rows})
    expected = 0
    for lot in lots:
        rows = kept_rows(parking_rows, lot)
        expected_here = runs([int(r["Occupancy"]) > int(r["Capacity"]) for r in rows])
        if expected_here:
            replay = replay_parking(yingyang, PARKING_CSV, start=START, lots=[lot])
            got = [x for x in replay.labels if x.kind is IncidentKind.LOT_OVER_CAPACITY]
            assert len(got) == expected_here, lot
            expected += expected_here
    assert expected > 0


def test_parking_default_lot_and_local_time(yingyang: Site) -> None:
    replay = replay_parking(yingyang, PARKING_CSV, start=START)
    assert replay.mapping == {"BHMBCCMKT01": "pk-lot-yingyang"}
    # 07:59:42 BST on 4 Oct 2016 is 06:59:42 UTC; 30 Oct 2016 is GMT again.
    assert birmingham_time_ms("2016-10-04 07:59:42") == epoch_ms(
        datetime(2016, 10, 4, 6, 59, 42, tzinfo=UTC)
    )
    assert birmingham_time_ms("2016-11-04 07:59:42") == epoch_ms(
        datetime(2016, 11, 4, 7, 59, 42, tzinfo=UTC)
    )
    with pytest.raises(ValueError, match="lot counter"):
        replay_parking(yingyang, PARKING_CSV, start=START, lots=["Shopping", "Bull Ring"])


# --- doors ----------------------------------------------------------------------------


def door_changes(path: Path) -> list[tuple[int, bool]]:
    """(AbsT, state) of the lowest node: its first row, then each change of Door."""
    rows = [[c.strip() for c in line.split(",")] for line in path.open() if line.strip()]
    node = min(int(r[3]) for r in rows)
    states = sorted((int(r[1]), r[10] == "1") for r in rows if int(r[3]) == node)
    changes = [states[0]]
    for t, state in states[1:]:
        if state != changes[-1][1]:
            changes.append((t, state))
    return changes


def test_door_replay_reproduces_state_changes(site: Site) -> None:
    replay = replay_doors(site, DOORS_DIR, start=START)
    check_stream(replay, site)
    assert replay.mapping
    changes = {name: door_changes(DOORS_DIR / name) for name in replay.mapping}
    offset = START_MS - min(c[0][0] for c in changes.values())
    by_device: dict[str, list[dict[str, object]]] = defaultdict(list)
    for m in replay.messages:
        by_device[m.device_id].append(
            {"channel": m.channel, "sim_ms": m.sim_ms} | json.loads(m.payload)
        )
    expected_labels = 0
    for name, device_id in replay.mapping.items():
        device = site.device(device_id)
        assert device.kind == "access" and not device.attributes.emergency_exit
        sent = by_device[device_id]
        states = [(b["sim_ms"], b["door_open"]) for b in sent if b["channel"] == "telemetry"]
        assert states == [(t + offset, s) for t, s in changes[name]]
        events = [b["event"] for b in sent if b["channel"] == "event"]
        assert events == ["door_opened" if s else "door_closed" for _, s in changes[name][1:]]
        expected_labels += sum(1 for _, s in changes[name] if s)
        opened = [(t + offset) for t, s in changes[name][1:] if s]
        mine = [x for x in replay.labels if x.devices == (device_id,)]
        assert [x.start_ms for x in mine] == opened
        assert all(x.kind is IncidentKind.DOOR_OPEN and x.end_ms > x.start_ms for x in mine)
    assert len(replay.labels) == expected_labels > 0


# --- all replays ----------------------------------------------------------------------


def all_replays(site: Site) -> list[Replay]:
    return [
        replay_smoke(site, SMOKE_CSV, start=START, limit=3300),
        replay_parking(site, PARKING_CSV, start=START, lots=["NIA North"]),
        replay_doors(site, DOORS_DIR, start=START),
    ]


def test_replays_decode_as_valid_readings(site: Site) -> None:
    for replay in all_replays(site):
        readings = decode_all(replay.messages)
        assert len(readings) == len(replay.messages)
        assert all(r.site == site.site and r.ts_from_device for r in readings)


def test_replays_are_deterministic(site: Site) -> None:
    first = [(serialise(r.messages), dumps_labels(r.labels)) for r in all_replays(site)]
    second = [(serialise(r.messages), dumps_labels(r.labels)) for r in all_replays(site)]
    assert first == second


def test_start_must_be_aware(yingyang: Site) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        replay_smoke(yingyang, SMOKE_CSV, start=datetime(2026, 3, 2), limit=5)
