"""Resident reports: what a resident files and what they read back."""

from __future__ import annotations

from typing import Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from accounts.users import ReportLink
from events.model import SecurityEvent, State

Category = Literal[
    "fire", "smoke", "intrusion", "suspicious_person", "vandalism",
    "blocked_fire_lane", "parking", "noise", "other",
]  # fmt: skip


class Coordinates(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)


class ReportIn(BaseModel):
    """Where (a cell, or a location inside one), what, and optionally a photo."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "site": "yingyang",
                    "location": {"lon": 121.4733, "lat": 31.2304},
                    "category": "blocked_fire_lane",
                    "description": "A van has blocked the fire lane behind building 3 since 8pm.",
                    "photo_url": "https://photos.example.org/r/123.jpg",
                }
            ]
        },
    )

    site: str = Field(min_length=1, max_length=128)
    cell: str | None = Field(default=None, min_length=1, max_length=128)
    location: Coordinates | None = None
    category: Category
    description: str = Field(min_length=1, max_length=2000)
    photo_url: AnyHttpUrl | None = Field(default=None, description="http(s) link to a photo")


class ReportOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b5e4c1f2a3d4e5f6a7b8c9d0e1f2a3b",
                    "event_id": "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f",
                    "site": "yingyang",
                    "cell": "c02",
                    "category": "blocked_fire_lane",
                    "description": "A van has blocked the fire lane behind building 3.",
                    "photo_url": "https://photos.example.org/r/123.jpg",
                    "status": "returned_unacknowledged",
                    "assignee": "w-02",
                    "resolution": "",
                    "created_ms": 1764450000000,
                    "updated_ms": 1764450000000,
                }
            ]
        }
    )

    id: str
    event_id: str
    site: str
    cell: str | None
    category: str
    description: str
    photo_url: str | None
    status: State
    assignee: str | None
    resolution: str
    created_ms: int
    updated_ms: int

    @classmethod
    def of(cls, link: ReportLink, event: SecurityEvent) -> ReportOut:
        photo = event.values.get("photo_url")
        return cls(
            id=link.id,
            event_id=event.id,
            site=event.site,
            cell=event.cell,
            category=link.category,
            description=event.message,
            photo_url=str(photo) if photo else None,
            status=event.state,
            assignee=event.assignee,
            resolution=event.resolution,
            created_ms=link.created_ms,
            updated_ms=event.updated_ms,
        )


class ReportPage(BaseModel):
    items: list[ReportOut]
    total: int
    limit: int
    offset: int
