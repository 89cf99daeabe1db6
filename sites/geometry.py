"""Geometry on (lon, lat) in degrees (WGS 84): cell polygons and distances.

Cells are a few hundred metres wide, so polygons are treated as planar; polygons
crossing the antimeridian are not supported. Site files, the registry, resident
reports and the rules all use these functions, so a point is in the same cell for all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

Point = tuple[float, float]
"""(lon, lat)."""

EARTH_RADIUS_M: Final = 6_371_008.8
"""Mean radius: a sphere is exact enough for doors a few kilometres apart."""


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def signed_area(polygon: Sequence[Point]) -> float:
    """Shoelace area in square degrees (positive counter-clockwise)."""
    return 0.5 * sum(
        x0 * y1 - x1 * y0
        for (x0, y0), (x1, y1) in zip(polygon, [*polygon[1:], polygon[0]], strict=True)
    )


def polygon_problem(polygon: Sequence[Point]) -> str | None:
    """Why these vertices are no polygon, or None when they are one."""
    if len(set(polygon)) < 3:
        return "a polygon needs at least 3 distinct (lon, lat) points"
    if len(set(polygon)) != len(polygon):
        return "polygon repeats a vertex (only the closing one may repeat)"
    if signed_area(polygon) == 0:
        return "polygon has zero area (all points on one line)"
    return None


def _on_segment(p: Point, a: Point, b: Point) -> bool:
    (px, py), (ax, ay), (bx, by) = p, a, b
    if (bx - ax) * (py - ay) - (by - ay) * (px - ax) != 0:
        return False
    return min(ax, bx) <= px <= max(ax, bx) and min(ay, by) <= py <= max(ay, by)


def point_in_polygon(point: Point, polygon: Sequence[Point]) -> bool:
    """Ray casting: True only strictly inside.

    Boundary rule: a point on an edge or vertex is *outside*. A device on the line
    between two cells would otherwise belong to both (or, with half-open rules, to one
    chosen by accident of orientation); refusing it makes the author place it.
    """
    n = len(polygon)
    inside = False
    px, py = point
    for i in range(n):
        a, b = polygon[i], polygon[(i + 1) % n]
        if _on_segment(point, a, b):
            return False
        (ax, ay), (bx, by) = a, b
        # Half-open in y so a ray through a vertex counts the vertex once.
        if (ay > py) != (by > py):
            x_cross = ax + (py - ay) * (bx - ax) / (by - ay)
            if px < x_cross:
                inside = not inside
    return inside
