"""Sites to partitions: a fixed number of partitions, a site's by a stable hash.

The hash is CRC-32 of the site id, not Python's `hash` (salted per process): every hub,
whatever its version or machine, must put a site in the same partition.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from typing import Final

CATCH_ALL: Final = 0
"""The partition whose hub also reads the sites no partition knows yet (a device of an
unregistered site): every other hub subscribes to its own sites only, so without it the
broker would drop such messages, where a single hub logs and flags them."""


def partition_of(site: str, partitions: int) -> int:
    """The partition `site` belongs to, in `range(partitions)`."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return zlib.crc32(site.encode()) % partitions


def sites_by_partition(sites: Iterable[str], partitions: int) -> dict[int, tuple[str, ...]]:
    """Every partition (empty ones too) with its sites, sorted."""
    found: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for site in sorted(set(sites)):
        found[partition_of(site, partitions)].append(site)
    return {p: tuple(s) for p, s in found.items()}


def foreign_sites(
    partition: int, by_partition: dict[int, tuple[str, ...]]
) -> tuple[str, ...] | None:
    """What the catch-all partition's hub skips: the other partitions' sites. None for
    any other partition (its hub subscribes to its own sites only)."""
    if partition != CATCH_ALL:
        return None
    return tuple(sorted(s for p, sites in by_partition.items() if p != partition for s in sites))


def fair_share(partitions: int, nodes: int) -> int:
    """The most partitions one of `nodes` live hubs should own."""
    return math.ceil(partitions / max(1, nodes))


def partition_name(partition: int) -> str:
    """`p003`: names the partition's MQTT session, log directory and stored state."""
    return f"p{partition:03d}"
