"""Visited (level, change) cells of a context-novelty grid, as integers: shared by the NAB
detector (`anomaly.context`) and the hub's online baselines (`anomaly.baselines`). Pure
Python: the hub imports this without numpy."""

from __future__ import annotations

import math

_ROW = 1024  # a cell (i, j) is the integer i * _ROW + j; |j| < _ROW // 2 always


CELL_ROW = _ROW
"""A (level, change) cell (i, j) is the integer ``i * CELL_ROW + j`` (for other detectors)."""


def _cell_parts(key: int) -> tuple[int, int]:
    """Split a cell key into its (level, change) indices."""
    i = (key + _ROW // 2) // _ROW
    return i, key - i * _ROW


def _span(low: float, high: float) -> range:
    """The integer cells ``floor(v)`` that the half-open interval [low, high) touches."""
    first = math.floor(low)
    last = math.floor(high)
    if last > first and float(last) == high:
        last -= 1
    return range(first, max(first, last) + 1)


def moved_levels(i: int, g: int, old_lo: float, old_width: float, lo: float, width: float) -> range:
    """The levels of a grid of `g` over [lo, lo + width] that old level `i` (of the same
    grid over [old_lo, old_lo + old_width]) overlaps."""
    if old_width > 0.0:
        start = ((old_lo - lo) + old_width * i / g) / width * g
        return _span(start, start + old_width / width)
    first = math.floor((old_lo - lo) / width * g)
    return range(first, first + 1)


def moved_changes(j: int, ratio: float) -> range:
    """The changes that old change `j` overlaps when the range widens by 1 / `ratio`."""
    return _span((j - 0.5) * ratio + 0.5, (j + 0.5) * ratio + 0.5)


def widen_cells(
    cells: set[int], g: int, old_lo: float, old_hi: float, lo: float, hi: float
) -> None:
    """Move a grid's visited (level, change) cells from the range [old_lo, old_hi] to the
    wider [lo, hi], in place: every new cell an old one overlaps counts as visited."""
    old_width, width = old_hi - old_lo, hi - lo
    ratio = old_width / width
    moved: set[int] = set()
    for key in cells:
        i, j = _cell_parts(key)
        for a in moved_levels(i, g, old_lo, old_width, lo, width):
            for b in moved_changes(j, ratio):
                moved.add(a * _ROW + b)
    cells.clear()
    cells.update(moved)
