"""Plane geometry on (lon, lat) for cells a few hundred metres wide.

Same rules as the site files (`simulators.site`), which registry may not import: a
point on a cell's edge is outside it, so a device on a boundary belongs to no cell by
accident of orientation.
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]


def _area2(polygon: Sequence[Point]) -> float:
    return sum(
        x0 * y1 - x1 * y0
        for (x0, y0), (x1, y1) in zip(polygon, [*polygon[1:], polygon[0]], strict=True)
    )


def polygon_problem(polygon: Sequence[Point]) -> str | None:
    """Why these vertices are no polygon, or None when they are one."""
    if len(set(polygon)) < 3:
        return "a polygon needs at least 3 distinct (lon, lat) points"
    if len(set(polygon)) != len(polygon):
        return "polygon repeats a vertex (only the closing one may repeat)"
    if _area2(polygon) == 0:
        return "polygon has zero area (all points on one line)"
    return None


def _on_segment(p: Point, a: Point, b: Point) -> bool:
    (px, py), (ax, ay), (bx, by) = p, a, b
    if (bx - ax) * (py - ay) - (by - ay) * (px - ax) != 0:
        return False
    return min(ax, bx) <= px <= max(ax, bx) and min(ay, by) <= py <= max(ay, by)


def inside(point: Point, polygon: Sequence[Point]) -> bool:
    """Ray casting; True only strictly inside (edges and vertices are outside)."""
    px, py = point
    n = len(polygon)
    result = False
    for i in range(n):
        a, b = polygon[i], polygon[(i + 1) % n]
        if _on_segment(point, a, b):
            return False
        (ax, ay), (bx, by) = a, b
        if (ay > py) != (by > py) and px < ax + (py - ay) * (bx - ax) / (by - ay):
            result = not result
    return result
