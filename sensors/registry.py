"""The sensor kinds this hub knows, listed by hand: a broken plugin fails at import."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from sensors import access, parking, smoke
from sensors.base import SensorKind, build_registry

KINDS: Final[Mapping[str, SensorKind]] = build_registry(
    [
        access.KIND,
        smoke.KIND,
        parking.KIND,
    ]
)
