"""Synthetic sites of any size, deterministic for a seed, with every scenario's needs met.

Benchmarks and scenario tests need sites bigger (or smaller) than the demo ones; this
makes them. Cells are a grid of squares around a centre; devices sit strictly inside
their cell. The first `MIN_DEVICES_FOR_ALL_SCENARIOS` devices are the ones scenarios
depend on (see `SCENARIO_NEEDS`); the rest follow a mix of about 40 % access, 35 % smoke
and 25 % parking. A smaller site gets the first of those that fit, and its
`description` names the needs left unmet.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any, Final

from sites.geometry import EARTH_RADIUS_M
from sites.model import (
    WEEKDAYS,
    AccessDevice,
    Location,
    ParkingDevice,
    Site,
    distance_m,
)

CELL_SIDE_M: Final = 80.0
"""Usual side of a generated cell (a block of a few buildings)."""
MIN_SPAN_M: Final = 400.0
"""Grids of few cells get bigger cells so two doors can be >= CLONED_CARD_DISTANCE_M apart."""
CLONED_CARD_DISTANCE_M: Final = 300.0
"""Two uses of one card this far apart within minutes are a cloned card."""
FIRE_SPREAD_DETECTORS: Final = 3
"""A fire spreads across at least this many detectors of one cell."""
_MARGIN: Final = 0.1
"""Devices keep this fraction of the cell side away from its edges."""

_M_PER_DEG: Final = EARTH_RADIUS_M * math.pi / 180

SCHEDULES: Final[dict[str, dict[str, Any]]] = {
    "residents": {
        "description": "Residential gates and entrances: closed to cards at night",
        "rules": [{"days": list(WEEKDAYS), "open": "06:00", "close": "23:30"}],
    },
    "office": {
        "description": "Management office and service rooms",
        "rules": [{"days": list(WEEKDAYS[:5]), "open": "08:00", "close": "18:00"}],
    },
}

_SURNAMES: Final = (
    "Li", "Wang", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou",
    "Xu", "Sun", "Ma", "Zhu", "Hu", "Guo", "He", "Lin", "Luo", "Liang",
)  # fmt: skip
_GIVEN: Final = (
    "Wei", "Fang", "Min", "Jing", "Lei", "Yan", "Jun", "Hui", "Ping", "Gang",
    "Xia", "Ting", "Hao", "Qiang", "Li", "Na", "Tao", "Yun", "Bin", "Hong",
)  # fmt: skip
# Room weights: kitchens and corridors are where detectors usually are.
_ROOMS: Final = (
    "kitchen", "bathroom", "bedroom", "living", "corridor", "stairwell", "plant", "garage",
)  # fmt: skip
_ROOM_WEIGHTS: Final = (25, 10, 15, 15, 20, 8, 4, 3)
_IN_FLAT: Final = frozenset({"kitchen", "bathroom", "bedroom", "living"})


# --- scenario needs ---------------------------------------------------------------


def _card_doors(site: Site) -> list[AccessDevice]:
    return [d for d in site.devices_of("access") if not d.attributes.emergency_exit]


def _bays(site: Site) -> list[ParkingDevice]:
    return [d for d in site.devices_of("parking") if d.attributes.is_bay]


def _after_hours(site: Site) -> bool:
    for door in _card_doors(site):
        schedule = site.schedule_of(door)
        if schedule is not None and not schedule.is_always_open():
            return True
    return False


def _fire_spread(site: Site) -> bool:
    per_cell: dict[str, int] = {}
    for detector in site.devices_of("smoke"):
        per_cell[detector.cell] = per_cell.get(detector.cell, 0) + 1
    return max(per_cell.values(), default=0) >= FIRE_SPREAD_DETECTORS


def farthest_pair_m(locations: Sequence[Location]) -> float:
    """Largest distance between two locations (convex hull, then all hull pairs)."""
    if len(locations) < 2:
        return 0.0
    scale = math.cos(math.radians(sum(loc.lat for loc in locations) / len(locations)))
    by_xy = {(loc.lon * scale, loc.lat): loc for loc in locations}
    points = sorted(by_xy)
    if len(points) < 3:
        hull = points
    else:

        def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
            chain: list[tuple[float, float]] = []
            for p in seq:
                while (
                    len(chain) >= 2
                    and (
                        (chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                        - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])
                    )
                    <= 0
                ):
                    chain.pop()
                chain.append(p)
            return chain[:-1]

        hull = half(points) + half(points[::-1])
    return max((distance_m(by_xy[a], by_xy[b]) for a, b in combinations(hull, 2)), default=0.0)


SCENARIO_NEEDS: Final[tuple[tuple[str, Callable[[Site], bool]], ...]] = (
    (
        "door forced / held open / tailgating / denied attempts: a card door "
        "(access device, not an emergency exit)",
        lambda site: bool(_card_doors(site)),
    ),
    (
        "after-hours access: a card door whose schedule is not open around the clock",
        _after_hours,
    ),
    (
        "emergency exit: an access device flagged emergency_exit",
        lambda site: any(d.attributes.emergency_exit for d in site.devices_of("access")),
    ),
    (
        f"cloned card: two card doors at least {CLONED_CARD_DISTANCE_M:.0f} m apart",
        lambda site: (
            farthest_pair_m([d.location for d in _card_doors(site)]) >= CLONED_CARD_DISTANCE_M
        ),
    ),
    (
        "elderly resident living alone: a flat door flagged elderly_resident",
        lambda site: any(d.attributes.elderly_resident for d in site.devices_of("access")),
    ),
    (
        "smoke nuisance / detector tamper, fault, offline, low battery: "
        "a kitchen or bathroom smoke detector",
        lambda site: any(
            d.attributes.room in ("kitchen", "bathroom") for d in site.devices_of("smoke")
        ),
    ),
    (
        f"fire spreading: at least {FIRE_SPREAD_DETECTORS} smoke detectors in one cell",
        _fire_spread,
    ),
    ("parking overstay / stuck sensor: a bay sensor", lambda site: bool(_bays(site))),
    (
        "vehicle in fire lane: a bay flagged fire_lane",
        lambda site: any(d.attributes.fire_lane for d in _bays(site)),
    ),
    (
        "vehicle in reserved bay: a bay flagged reserved",
        lambda site: any(d.attributes.reserved for d in _bays(site)),
    ),
    (
        "lot over capacity: a lot counter with a capacity",
        lambda site: any(not d.attributes.is_bay for d in site.devices_of("parking")),
    ),
)
"""What scenarios need of a site. Flooding, incident storms and offline devices need
only devices, which every need above brings."""


def scenario_needs_met(site: Site) -> list[str]:
    """The scenario needs this site does not meet (empty: every scenario can run)."""
    return [need for need, met in SCENARIO_NEEDS if not met(site)]


# --- generator --------------------------------------------------------------------


class _Grid:
    """Square cells in rows and columns around a centre, in metres east/north of SW."""

    def __init__(self, cells: int, center: tuple[float, float]) -> None:
        self.cols = math.ceil(math.sqrt(cells))
        self.rows = math.ceil(cells / self.cols)
        self.side = max(CELL_SIDE_M, MIN_SPAN_M / max(self.cols, self.rows))
        self.lon0, self.lat0 = center
        self.deg_lat = 1 / _M_PER_DEG
        self.deg_lon = 1 / (_M_PER_DEG * math.cos(math.radians(self.lat0)))
        self.width = self.cols * self.side
        self.height = self.rows * self.side

    def lonlat(self, x: float, y: float) -> tuple[float, float]:
        """Metres east/north of the grid's SW corner as (lon, lat), to ~1 cm."""
        lon = self.lon0 + (x - self.width / 2) * self.deg_lon
        lat = self.lat0 + (y - self.height / 2) * self.deg_lat
        return round(lon, 7), round(lat, 7)

    def origin(self, index: int) -> tuple[float, float]:
        row, col = divmod(index, self.cols)
        return col * self.side, row * self.side

    def polygon(self, index: int) -> list[list[float]]:
        x, y = self.origin(index)
        s = self.side
        corners = ((x, y), (x + s, y), (x + s, y + s), (x, y + s))
        return [list(self.lonlat(px, py)) for px, py in corners]

    def point(self, index: int, u: float, v: float) -> tuple[float, float]:
        """A point at fractions (u, v) of the cell, kept inside the margin."""
        x, y = self.origin(index)
        span = 1 - 2 * _MARGIN
        return self.lonlat(
            x + (_MARGIN + u * span) * self.side, y + (_MARGIN + v * span) * self.side
        )


def _far_cell_corner(grid: _Grid, cells: int) -> tuple[int, float, float]:
    """The cell and inner corner farthest from cell 0's SW corner (the second gate)."""
    best = (0, 1.0, 1.0)
    best_d = -1.0
    for index in range(cells):
        x, y = grid.origin(index)
        for u in (0.0, 1.0):
            for v in (0.0, 1.0):
                d = math.hypot(x + u * grid.side, y + v * grid.side)
                if d > best_d:
                    best, best_d = (index, u, v), d
    return best


class _Builder:
    def __init__(self, grid: _Grid, rng: random.Random, cell_ids: list[str], devices: int):
        self.grid = grid
        self.rng = rng
        self.cell_ids = cell_ids
        self.width = max(4, len(str(devices)))
        self.counts = {"access": 0, "smoke": 0, "parking": 0}
        self.bays = 0
        self.lots = 0
        self.out: list[dict[str, Any]] = []

    def add(
        self,
        kind: str,
        cell: int,
        attributes: dict[str, Any],
        *,
        at: tuple[float, float] | None = None,
        floor: int | None = None,
        label: str | None = None,
    ) -> None:
        self.counts[kind] += 1
        prefix = {"access": "ac", "smoke": "sm", "parking": "pk"}[kind]
        u, v = at if at is not None else (self.rng.random(), self.rng.random())
        lon, lat = self.grid.point(cell, u, v)
        location: dict[str, Any] = {"lon": lon, "lat": lat}
        if floor is not None:
            location["floor"] = floor
        if label is not None:
            location["label"] = label
        self.out.append(
            {
                "id": f"{prefix}-{self.counts[kind]:0{self.width}d}",
                "kind": kind,
                "cell": self.cell_ids[cell],
                "location": location,
                "attributes": attributes,
            }
        )

    def unit(self, cell: int, floor: int) -> str:
        return f"{cell + 1}-{self.rng.randint(1, 4)}-{floor}{self.rng.randint(1, 6):02d}"

    def bay(self, cell: int, **flags: bool) -> dict[str, Any]:
        self.bays += 1
        zone = f"{self.cell_ids[cell]}-{'abc'[self.rng.randrange(3)]}"
        set_flags = {name: True for name, value in flags.items() if value}
        return {"bay_id": f"B{self.bays:05d}", "zone": zone, **set_flags}

    def lot(self) -> dict[str, Any]:
        self.lots += 1
        return {"lot": f"Lot {self.lots}", "capacity": self.rng.choice([40, 80, 120, 220, 450])}

    def any_access(self, cell: int) -> None:
        roll = self.rng.random()
        floor = self.rng.randint(1, 18)
        if roll < 0.06:
            unit = self.unit(cell, floor)
            attrs = {"door": "flat", "elderly_resident": True, "unit": unit}
            self.add("access", cell, attrs, floor=floor, label=f"Flat {unit}")
        elif roll < 0.16:
            self.add("access", cell, {"door": "exit", "emergency_exit": True}, floor=1)
        elif roll < 0.5:
            attrs = {"door": "entrance", "schedule": "residents"}
            self.add("access", cell, attrs, floor=1, label="Building entrance")
        elif roll < 0.6:
            self.add("access", cell, {"door": "office", "schedule": "office"}, floor=1)
        else:
            unit = self.unit(cell, floor)
            self.add("access", cell, {"door": "flat", "unit": unit}, floor=floor)

    def any_smoke(self, cell: int) -> None:
        room = self.rng.choices(_ROOMS, weights=_ROOM_WEIGHTS)[0]
        floor = -1 if room == "garage" else self.rng.randint(1, 18)
        attrs: dict[str, Any] = {"room": room}
        if room in _IN_FLAT:
            attrs["unit"] = self.unit(cell, floor)
        self.add("smoke", cell, attrs, floor=floor)

    def any_parking(self, cell: int) -> None:
        roll = self.rng.random()
        if roll < 0.03:
            self.add("parking", cell, self.lot(), label="Car park entrance")
        else:
            attrs = self.bay(cell, fire_lane=roll < 0.07, reserved=0.07 <= roll < 0.15)
            self.add("parking", cell, attrs)


def _required(b: _Builder, cells: int) -> list[Callable[[], None]]:
    """One step per device scenarios depend on, most useful first (small sites get a
    prefix): one of each kind, then the pairs and flags."""
    fire_cell = cells // 2
    park_cell = cells - 1
    far_cell, far_u, far_v = _far_cell_corner(b.grid, cells)
    elderly_cell = b.rng.randrange(cells)
    floor = b.rng.randint(2, 12)
    elderly_unit = b.unit(elderly_cell, floor)
    flat = b.unit(fire_cell, 6)
    return [
        lambda: b.add(
            "access", 0, {"door": "gate", "schedule": "residents"}, at=(0.0, 0.0), label="Gate A"
        ),
        lambda: b.add("smoke", fire_cell, {"room": "kitchen", "unit": flat}, floor=6),
        lambda: b.add("parking", park_cell, b.lot(), label="Car park entrance"),
        lambda: b.add(
            "access", far_cell, {"door": "gate", "schedule": "office"}, at=(far_u, far_v),
            label="Gate B",
        ),
        lambda: b.add("smoke", fire_cell, {"room": "bathroom", "unit": flat}, floor=6),
        lambda: b.add("parking", park_cell, b.bay(park_cell, fire_lane=True)),
        lambda: b.add(
            "access", elderly_cell,
            {"door": "flat", "elderly_resident": True, "unit": elderly_unit},
            floor=floor, label=f"Flat {elderly_unit}",
        ),
        lambda: b.add("smoke", fire_cell, {"room": "corridor"}, floor=6),
        lambda: b.add("parking", park_cell, b.bay(park_cell, reserved=True)),
        lambda: b.add("access", b.rng.randrange(cells), {"door": "exit", "emergency_exit": True}),
    ]  # fmt: skip


MIN_DEVICES_FOR_ALL_SCENARIOS: Final = 10
"""Smallest device count for which a generated site meets every scenario need."""


def generate_site(
    cells: int,
    devices: int,
    seed: int,
    *,
    site_id: str = "synthetic",
    center: tuple[float, float] = (113.3926, 22.5176),
) -> Site:
    """A valid synthetic site; the same arguments always give the same site."""
    if cells < 1:
        raise ValueError("a site needs at least one cell")
    if devices < 0:
        raise ValueError("devices must be >= 0")
    rng = random.Random(seed)
    grid = _Grid(cells, center)
    width = max(3, len(str(cells)))
    cell_ids = [f"c{i + 1:0{width}d}" for i in range(cells)]
    cell_data = [
        {
            "id": cell_ids[i],
            "name": f"Block row {i // grid.cols + 1} column {i % grid.cols + 1}",
            "worker": {
                "id": f"w-{cell_ids[i]}",
                "name": f"{rng.choice(_SURNAMES)} {rng.choice(_GIVEN)}",
                "phone": f"ext {1000 + i + 1}",
            },
            "polygon": grid.polygon(i),
        }
        for i in range(cells)
    ]
    builder = _Builder(grid, rng, cell_ids, devices)
    steps = _required(builder, cells)
    for step in steps[:devices]:
        step()
    rest = devices - len(builder.out)
    if rest > 0:
        targets = {"access": round(0.40 * devices), "smoke": round(0.35 * devices)}
        targets["parking"] = devices - targets["access"] - targets["smoke"]
        kinds: list[str] = []
        for kind in ("access", "smoke", "parking"):
            kinds += [kind] * max(0, targets[kind] - builder.counts[kind])
        kinds = (kinds + ["access"] * rest)[:rest]  # rounding: top up with doors
        rng.shuffle(kinds)
        make = {
            "access": builder.any_access,
            "smoke": builder.any_smoke,
            "parking": builder.any_parking,
        }
        for kind in kinds:
            make[kind](rng.randrange(cells))
    center_text = f"({center[0]}, {center[1]})"
    data: dict[str, Any] = {
        "site": site_id,
        "name": f"Synthetic site {site_id} (seed {seed})",
        "timezone": "Asia/Shanghai",
        "description": (
            f"Generated by generate_site(cells={cells}, devices={devices}, seed={seed}): "
            f"{grid.cols}x{grid.rows} grid of {grid.side:.0f} m cells around {center_text}."
        ),
        "cells": cell_data,
        "devices": builder.out,
        "schedules": SCHEDULES,
    }
    site = Site.model_validate(data)
    unmet = scenario_needs_met(site)
    if unmet:
        data["description"] += (
            f" Too few devices for every scenario (needs >= {MIN_DEVICES_FOR_ALL_SCENARIOS});"
            f" unmet: {'; '.join(unmet)}."
        )
        site = Site.model_validate(data)
    return site
