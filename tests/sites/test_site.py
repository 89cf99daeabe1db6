"""Site files: demo sites, strict validation with lines, generator, geometry, schedules."""

from __future__ import annotations

import csv
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sensors.topics import is_topic_segment
from sites.generate import (
    MIN_DEVICES_FOR_ALL_SCENARIOS,
    farthest_pair_m,
    generate_site,
    scenario_needs_met,
)
from sites.geometry import point_in_polygon
from sites.model import (
    AccessDevice,
    Location,
    ParkingDevice,
    Schedule,
    Site,
    SiteError,
    SmokeDevice,
    demo_site_path,
    distance_m,
    dump_site,
    load_site,
    parse_site,
)

MELBOURNE_CSV = Path(__file__).resolve().parents[3] / "shared/data/parking/sensors_T11-18.csv"

BASE = """\
site: test-site
name: Test site
timezone: Asia/Shanghai
cells:
  - id: c1
    name: Cell one
    worker: {id: w1, name: Li Wei, phone: ext 101}
    polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]
  - id: c2
    name: Cell two
    worker: {id: w2, name: Chen Jing}
    polygon: [[1, 0], [2, 0], [2, 1], [1, 1], [1, 0]]
devices:
  - id: door-1
    kind: access
    cell: c1
    location: {lon: 0.5, lat: 0.5, floor: 1, label: Gate}
    attributes: {door: gate, schedule: office}
  - id: smoke-1
    kind: smoke
    cell: c2
    location: {lon: 1.5, lat: 0.5}
    attributes: {room: kitchen, unit: "3-501"}
  - id: bay-1
    kind: parking
    cell: c2
    location: {lon: 1.25, lat: 0.25}
    attributes: {bay_id: "101", zone: z1, fire_lane: true}
  - id: lot-1
    kind: parking
    cell: c1
    location: {lon: 0.25, lat: 0.75}
    attributes: {lot: Main lot, capacity: 120}
schedules:
  office:
    description: Weekday office hours
    rules:
      - {days: [mon, tue, wed, thu, fri], open: "08:00", close: "18:00"}
"""


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing needle."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[nth - 1]


def problems_of(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(SiteError) as caught:
        parse_site(text, "test.yaml")
    return [(p.path, p.line, p.message) for p in caught.value.problems]


# --- demo sites and round trips ---------------------------------------------------


@pytest.mark.parametrize("name", ["yingyang", "melbourne_bays"])
def test_demo_site_loads_and_meets_every_scenario_need(name: str) -> None:
    site = load_site(demo_site_path(name))
    assert scenario_needs_met(site) == []
    assert parse_site(dump_site(site)) == site


def test_yingyang_is_the_pilot_community() -> None:
    site = load_site(demo_site_path("yingyang"))
    assert site.timezone == "Asia/Shanghai"
    assert 6 <= len(site.cells) <= 8
    assert 60 <= len(site.devices) <= 80
    assert site.description is not None and "illustrative" in site.description
    for device in site.devices:
        assert 113.3 < device.location.lon < 113.5 and 22.4 < device.location.lat < 22.6


def test_unknown_demo_site_is_refused() -> None:
    with pytest.raises(ValueError, match="yingyang"):
        demo_site_path("nowhere")


@pytest.mark.skipif(not MELBOURNE_CSV.exists(), reason="shared datasets not present")
def test_melbourne_bays_are_the_datasets_bays_exactly() -> None:
    """Source: City of Melbourne bay sensors, ../shared/data/parking/sensors_T11-18.csv."""
    with MELBOURNE_CSV.open(encoding="utf-8") as f:
        rows = {row["bay_id"]: row for row in csv.DictReader(f)}
    site = load_site(demo_site_path("melbourne_bays"))
    assert site.timezone == "Australia/Melbourne"
    bays = [d for d in site.devices_of("parking") if d.attributes.is_bay]
    assert 40 <= len(bays) <= 120
    for device in bays:
        bay_id = device.attributes.bay_id
        assert bay_id is not None
        assert device.id == f"pk-bay-{bay_id}"
        row = rows[bay_id]
        assert device.location.lat == float(row["lat"])
        assert device.location.lon == float(row["lon"])
    assert any(d.attributes.fire_lane for d in bays)
    assert any(d.attributes.reserved for d in bays)
    assert site.description is not None and "sensors_T11-18.csv" in site.description


def test_helpers_find_cells_devices_and_kinds() -> None:
    site = parse_site(BASE)
    assert site.cell("c2").worker.name == "Chen Jing"
    assert site.cell("c2").polygon == [(1, 0), (2, 0), (2, 1), (1, 1)]  # closing point dropped
    assert isinstance(site.device("smoke-1"), SmokeDevice)
    doors: list[AccessDevice] = site.devices_of("access")
    parking: list[ParkingDevice] = site.devices_of("parking")
    assert [d.id for d in doors] == ["door-1"]
    assert [d.id for d in parking] == ["bay-1", "lot-1"]
    assert [d.attributes.is_bay for d in parking] == [True, False]
    assert site.tz.key == "Asia/Shanghai"
    schedule = site.schedule_of(doors[0])
    assert schedule is not None
    # 2024-01-08 is a Monday; 00:30 UTC is 08:30 in Shanghai.
    assert schedule.is_open(site.local_time(datetime(2024, 1, 8, 0, 30, tzinfo=UTC)))
    with pytest.raises(KeyError):
        site.cell("nope")
    with pytest.raises(ValueError, match="aware"):
        site.local_time(datetime(2024, 1, 8))


def test_dump_is_stable_and_round_trips() -> None:
    site = parse_site(BASE)
    text = dump_site(site)
    assert parse_site(text) == site
    assert dump_site(parse_site(text)) == text
    assert text.index("id: door-1") < text.index("kind: access") < text.index("cell: c1")


# --- generator --------------------------------------------------------------------


def test_generator_is_deterministic_per_seed() -> None:
    first = dump_site(generate_site(8, 40, seed=7))
    assert dump_site(generate_site(8, 40, seed=7)) == first
    assert dump_site(generate_site(8, 40, seed=8)) != first


@pytest.mark.parametrize(("cells", "devices"), [(1, 3), (8, 40), (200, 10_000)])
def test_generator_sizes(cells: int, devices: int) -> None:
    started = time.perf_counter()
    site = generate_site(cells, devices, seed=1)
    assert time.perf_counter() - started < 20
    assert len(site.cells) == cells
    assert len(site.devices) == devices
    assert parse_site(dump_site(site)) == site
    if devices >= MIN_DEVICES_FOR_ALL_SCENARIOS:
        assert scenario_needs_met(site) == []


def test_generator_kind_mix_is_about_40_35_25() -> None:
    site = generate_site(50, 2000, seed=3)
    shares = {
        "access": len(site.devices_of("access")) / 2000,
        "smoke": len(site.devices_of("smoke")) / 2000,
        "parking": len(site.devices_of("parking")) / 2000,
    }
    assert shares == pytest.approx({"access": 0.40, "smoke": 0.35, "parking": 0.25}, abs=0.02)


@pytest.mark.parametrize("cells", [1, 2, 3, 4, 5, 8, 17, 30])
@pytest.mark.parametrize("seed", [1, 2])
def test_generator_minimum_meets_every_need(cells: int, seed: int) -> None:
    site = generate_site(cells, MIN_DEVICES_FOR_ALL_SCENARIOS, seed=seed)
    assert scenario_needs_met(site) == []


def test_generator_below_minimum_says_what_is_missing() -> None:
    site = generate_site(2, MIN_DEVICES_FOR_ALL_SCENARIOS - 1, seed=1)
    unmet = scenario_needs_met(site)
    assert unmet
    assert site.description is not None
    assert all(need in site.description for need in unmet)
    assert generate_site(1, 0, seed=1).devices == []


def test_generator_refuses_no_cells() -> None:
    with pytest.raises(ValueError, match="cell"):
        generate_site(0, 10, seed=1)


def test_farthest_pair_matches_brute_force() -> None:
    site = generate_site(9, 300, seed=5)
    locations = [d.location for d in site.devices]
    brute = max(distance_m(a, b) for a in locations for b in locations)
    assert farthest_pair_m(locations) == pytest.approx(brute, rel=1e-3)


# --- strictness, with lines -------------------------------------------------------


def test_base_site_is_valid() -> None:
    assert len(parse_site(BASE).devices) == 4


def test_unknown_key_is_named_with_its_line() -> None:
    text = BASE.replace("{room: kitchen,", "{room: kitchen, colour: red,")
    assert problems_of(text) == [
        ("devices[1].attributes.colour", line_of(text, "colour"), "unknown key 'colour'")
    ]


def test_unknown_top_level_key() -> None:
    text = BASE + "owner: nobody\n"
    [(path, line, message)] = problems_of(text)
    assert (path, line) == ("owner", line_of(text, "owner:"))
    assert "owner" in message


def test_device_outside_its_cell_polygon() -> None:
    text = BASE.replace("{lon: 1.5, lat: 0.5}", "{lon: 2.5, lat: 0.5}")
    [(path, line, message)] = problems_of(text)
    assert (path, line) == ("devices[1].location", line_of(text, "lon: 2.5"))
    assert "not inside cell 'c2'" in message


def test_device_on_the_border_of_two_cells_belongs_to_neither() -> None:
    text = BASE.replace("{lon: 1.5, lat: 0.5}", "{lon: 1.0, lat: 0.5}")
    [(path, _, _)] = problems_of(text)
    assert path == "devices[1].location"


def test_cross_reference_problems_are_all_listed_with_lines() -> None:
    text = (
        BASE.replace("schedule: office", "schedule: night")
        .replace("cell: c1\n    location: {lon: 0.25", "cell: c9\n    location: {lon: 0.25")
        .replace("id: smoke-1", "id: door-1")
        .replace("id: c2", "id: c1")
        .replace(
            "schedules:\n",
            "  - {id: bay-2, kind: parking, cell: c1, location: {lon: 0.75, lat: 0.75},\n"
            '     attributes: {bay_id: "101"}}\nschedules:\n',
        )
    )
    problems = problems_of(text)
    assert ("cells[1].id", line_of(text, "- id: c1", 2), "duplicate cell id 'c1'") in problems
    assert (
        "devices[0].attributes.schedule",
        line_of(text, "schedule: night"),
        "unknown schedule 'night'",
    ) in problems
    assert ("devices[1].id", line_of(text, "id: door-1", 2), "duplicate device id 'door-1'") in (
        problems
    )
    assert ("devices[3].cell", line_of(text, "cell: c9"), "unknown cell 'c9'") in problems
    # Renaming c2 left its two devices without a cell: those are reported too.
    assert sum(message == "unknown cell 'c2'" for _, _, message in problems) == 2
    assert len(problems) == 7
    bay = [p for p in problems if p[0] == "devices[4].attributes.bay_id"]
    assert bay == [("devices[4].attributes.bay_id", line_of(text, 'bay_id: "101"}}'), bay[0][2])]
    assert "already belongs to 'bay-1'" in bay[0][2]


def test_parking_bay_and_lot_mixed() -> None:
    text = BASE.replace("{lot: Main lot, capacity: 120}", "{lot: Main lot, capacity: 120, "
                        'bay_id: "7"}')  # fmt: skip
    [(path, line, message)] = problems_of(text)
    assert (path, line) == ("devices[3].attributes", line_of(text, "lot: Main lot"))
    assert "bay_id" in message and "lot" in message and "capacity" in message


@pytest.mark.parametrize(
    ("attributes", "needle"),
    [
        ("{lot: Main lot}", "both lot and capacity"),
        ("{zone: z1}", "need bay_id"),
        ("{lot: Main lot, capacity: 0}", "greater than 0"),
    ],
)
def test_parking_shapes(attributes: str, needle: str) -> None:
    text = BASE.replace("{lot: Main lot, capacity: 120}", attributes)
    [(_, _, message)] = problems_of(text)
    assert needle in message


def test_bad_timezone() -> None:
    text = BASE.replace("Asia/Shanghai", "Asia/Atlantis")
    assert problems_of(text) == [("timezone", 3, "unknown IANA time zone 'Asia/Atlantis'")]


def test_missing_key_is_located_at_its_parent() -> None:
    text = BASE.replace("attributes: {door: gate, schedule: office}", "attributes: {}")
    assert problems_of(text) == [
        ("devices[0].attributes.door", line_of(text, "attributes: {}"), "missing key 'door'")
    ]


def test_unknown_kind() -> None:
    text = BASE.replace("kind: smoke", "kind: camera")
    [(path, line, message)] = problems_of(text)
    assert (path, line) == ("devices[1]", line_of(text, "id: smoke-1"))
    assert "camera" in message


def test_device_id_must_be_a_topic_segment() -> None:
    text = BASE.replace("id: smoke-1", "id: smoke/1")
    [(path, line, _)] = problems_of(text)
    assert (path, line) == ("devices[1].id", line_of(text, "smoke/1"))
    assert not is_topic_segment("a/b") and not is_topic_segment("a+") and is_topic_segment("a-1")


def test_duplicate_yaml_key() -> None:
    text = BASE.replace("name: Cell one", "name: Cell one\n    name: Cell uno")
    assert problems_of(text) == [("cells[0].name", line_of(text, "Cell uno"), "duplicate key")]


def test_unquoted_time_is_explained() -> None:
    text = BASE.replace('close: "18:00"', "close: 18:00")
    [(path, _, message)] = problems_of(text)
    assert path == "schedules.office.rules[0].close"
    assert "quoted" in message and "1080" in message


def test_strict_types_no_coercion() -> None:
    text = BASE.replace("fire_lane: true", 'fire_lane: "yes"')
    [(path, _, _)] = problems_of(text)
    assert path == "devices[2].attributes.fire_lane"


@pytest.mark.parametrize(
    ("polygon", "needle"),
    [
        ("[[0, 0], [1, 0], [0, 0]]", "3 distinct"),
        ("[[0, 0], [1, 0], [2, 0]]", "zero area"),
        ("[[0, 0], [181, 0], [1, 1]]", "less than or equal to 180"),
    ],
)
def test_bad_polygons(polygon: str, needle: str) -> None:
    text = BASE.replace("[[0, 0], [1, 0], [1, 1], [0, 1]]", polygon)
    problems = problems_of(text)
    assert problems[0][0].startswith("cells[0].polygon")
    assert needle in problems[0][2]


def test_elderly_resident_needs_a_unit() -> None:
    text = BASE.replace("{door: gate, schedule: office}", "{door: flat, elderly_resident: true}")
    [(_, _, message)] = problems_of(text)
    assert "unit" in message


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    assert problems_of("site: [unclosed\n")[0][2].startswith("not valid YAML")
    assert "mapping" in problems_of("- a\n- b\n")[0][2]
    with pytest.raises(SiteError, match="cannot read"):
        load_site(tmp_path / "missing.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("kind: smoke", "kind: camera"), encoding="utf-8")
    with pytest.raises(SiteError, match=r"bad\.yaml: 1 problem"):
        load_site(path)


def test_site_model_validate_reports_cross_references_too() -> None:
    site = parse_site(BASE)
    data = site.model_dump()
    data["devices"][0]["cell"] = "c9"
    with pytest.raises(ValueError, match=r"devices\[0\]\.cell: unknown cell 'c9'"):
        Site.model_validate(data)


# --- schedules ------------------------------------------------------------------------


def _schedule(*rules: dict[str, object]) -> Schedule:
    return Schedule.model_validate({"rules": list(rules)})


def test_schedule_open_inclusive_close_exclusive_weekdays() -> None:
    office = _schedule(
        {"days": ["mon", "tue", "wed", "thu", "fri"], "open": "08:00", "close": "18:00"}
    )
    monday = datetime(2024, 1, 8)  # schedules speak naive local wall time
    assert not office.is_open(monday.replace(hour=7, minute=59, second=59))
    assert office.is_open(monday.replace(hour=8))
    assert office.is_open(monday.replace(hour=17, minute=59, second=59, microsecond=999_999))
    assert not office.is_open(monday.replace(hour=18))
    assert not office.is_open(datetime(2024, 1, 13, 12))
    assert not office.is_always_open()


def test_schedule_until_midnight_and_overnight_split() -> None:
    night = _schedule(
        {"days": ["sat"], "open": "22:00", "close": "24:00"},
        {"days": ["sun"], "open": "00:00", "close": "06:00"},
    )
    assert night.is_open(datetime(2024, 1, 13, 23, 59, 59, 999_999))
    assert night.is_open(datetime(2024, 1, 14, 0, 0))
    assert not night.is_open(datetime(2024, 1, 14, 6, 0))
    assert not night.is_open(datetime(2024, 1, 13, 21, 59))
    week = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    always = _schedule(
        {"days": week, "open": "00:00", "close": "12:00"},
        {"days": week, "open": "12:00", "close": "24:00"},
    )
    assert always.is_always_open()


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ({"days": ["mon"], "open": "18:00", "close": "08:00"}, "after open"),
        ({"days": ["mon"], "open": "08:00", "close": "08:00"}, "after open"),
        ({"days": ["mon"], "open": "08:00", "close": "24:30"}, "24:00 is the latest"),
        ({"days": ["mon"], "open": "8:00", "close": "09:00"}, "pattern"),
        ({"days": ["mon", "mon"], "open": "08:00", "close": "09:00"}, "repeat"),
        ({"days": [], "open": "08:00", "close": "09:00"}, "at least 1"),
        ({"days": ["monday"], "open": "08:00", "close": "09:00"}, "mon"),
    ],
)
def test_bad_schedule_rules(rule: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        _schedule(rule)


# --- geometry -------------------------------------------------------------------------


SQUARE = [(0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (0.0, 4.0)]
# A U: the notch x in (1, 3), y in (1, 4) is outside.
U_SHAPE = [
    (0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (3.0, 4.0), (3.0, 1.0), (1.0, 1.0), (1.0, 4.0), (0.0, 4.0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("point", "polygon", "inside"),
    [
        ((2.0, 2.0), SQUARE, True),
        ((5.0, 2.0), SQUARE, False),
        ((-0.1, 2.0), SQUARE, False),
        ((0.0, 2.0), SQUARE, False),  # on an edge: outside by rule
        ((4.0, 4.0), SQUARE, False),  # on a vertex
        ((0.5, 3.0), U_SHAPE, True),
        ((3.5, 3.0), U_SHAPE, True),
        ((2.0, 3.0), U_SHAPE, False),  # in the notch
        ((2.0, 0.5), U_SHAPE, True),
        ((2.0, 1.0), U_SHAPE, False),  # on the notch's floor
        ((-1.0, 1.0), U_SHAPE, False),  # ray along an edge
        ((0.5, 1.0), U_SHAPE, True),  # ray through the notch's corners
    ],
)
def test_point_in_polygon(
    point: tuple[float, float], polygon: list[tuple[float, float]], inside: bool
) -> None:
    assert point_in_polygon(point, polygon) is inside


def test_haversine_against_known_distances() -> None:
    # Nashville (BNA) to Los Angeles (LAX): 2887.26 km, the classic haversine example.
    bna = Location(lon=-86.67, lat=36.12)
    lax = Location(lon=-118.40, lat=33.94)
    assert distance_m(bna, lax) == pytest.approx(2_887_260, rel=0.005)
    # One degree of latitude at 45°N on WGS 84: 111,132 m.
    assert distance_m(Location(lon=10, lat=44.5), Location(lon=10, lat=45.5)) == pytest.approx(
        111_132, rel=0.005
    )
    assert distance_m(bna, bna) == 0
