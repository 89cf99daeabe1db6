"""Every GridWatch dashboard, in a fixed order, as JSON-ready dicts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard

from dashboards import (
    access_control,
    alarm_kpi,
    device_health,
    fire_safety,
    grid_map,
    hub_health,
    operations,
    parking_lots,
)
from dashboards.common import BuildConfig


@dataclass(frozen=True, slots=True)
class Board:
    uid: str
    title: str
    build: Callable[[BuildConfig], dashboard.Dashboard]

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"


BOARDS: Final = (
    Board(operations.UID, operations.TITLE, operations.build),
    Board(grid_map.UID, grid_map.TITLE, grid_map.build),
    Board(access_control.UID, access_control.TITLE, access_control.build),
    Board(fire_safety.UID, fire_safety.TITLE, fire_safety.build),
    Board(parking_lots.UID, parking_lots.TITLE, parking_lots.build),
    Board(device_health.UID, device_health.TITLE, device_health.build),
    Board(hub_health.UID, hub_health.TITLE, hub_health.build),
    Board(alarm_kpi.UID, alarm_kpi.TITLE, alarm_kpi.build),
)


def dashboard_json(board: Board, config: BuildConfig) -> dict[str, Any]:
    """The dashboard model as Grafana stores it (plain JSON types only)."""
    encoded = json.dumps(board.build(config), cls=JSONEncoder, sort_keys=True)
    decoded: dict[str, Any] = json.loads(encoded)
    return decoded


def dashboard_bytes(model: dict[str, Any]) -> bytes:
    """Stable bytes: sorted keys, two-space indent, trailing newline."""
    return (json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
