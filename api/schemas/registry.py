"""The registry's answers (sites, grid workers, cells, profiles, devices, broker
logins) and the service-login body. Integrators write with `registry.schema` specs and
patches; these are what they read back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Final, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from broker.dynsec import Credentials
from registry.model import Cell, Device, Page, Profile, Site, Worker
from sensors import topics

T = TypeVar("T")
R = TypeVar("R")
IDENT: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
"""A registry id: in paths, filters and bodies."""


class PageOut(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="Records matching the filters, over all pages")
    limit: int
    offset: int

    @classmethod
    def of(cls, page: Page[R], convert: Callable[[R], T]) -> Self:
        """A page of the registry's records, each converted (e.g. `SiteOut.of`)."""
        return cls(
            items=[convert(i) for i in page.items],
            total=page.total,
            limit=page.limit,
            offset=page.offset,
        )


class _Out(BaseModel):
    created_ms: int
    updated_ms: int
    retired_ms: int | None


class ScheduleRuleOut(BaseModel):
    days: list[str]
    open: str
    close: str


class SiteOut(_Out):
    id: str
    name: str
    timezone: str
    description: str | None
    schedules: dict[str, list[ScheduleRuleOut]]

    @classmethod
    def of(cls, site: Site) -> SiteOut:
        return cls(
            id=site.id,
            name=site.name,
            timezone=site.timezone,
            description=site.description,
            schedules={
                name: [
                    ScheduleRuleOut(days=list(r.days), open=r.open, close=r.close) for r in rules
                ]
                for name, rules in site.schedules.items()
            },
            created_ms=site.created_ms,
            updated_ms=site.updated_ms,
            retired_ms=site.retired_ms,
        )


class WorkerOut(_Out):
    id: str
    name: str
    phone: str | None

    @classmethod
    def of(cls, worker: Worker) -> WorkerOut:
        return cls(
            id=worker.id,
            name=worker.name,
            phone=worker.phone,
            created_ms=worker.created_ms,
            updated_ms=worker.updated_ms,
            retired_ms=worker.retired_ms,
        )


class CellOut(_Out):
    id: str
    site: str
    name: str
    worker: str | None
    polygon: list[tuple[float, float]]

    @classmethod
    def of(cls, cell: Cell) -> CellOut:
        return cls(
            id=cell.id,
            site=cell.site,
            name=cell.name,
            worker=cell.worker,
            polygon=list(cell.polygon),
            created_ms=cell.created_ms,
            updated_ms=cell.updated_ms,
            retired_ms=cell.retired_ms,
        )


class ProfileOut(_Out):
    id: str
    kind: str
    interval_s: float
    thresholds: dict[str, float]
    description: str | None

    @classmethod
    def of(cls, profile: Profile) -> ProfileOut:
        return cls(
            id=profile.id,
            kind=profile.kind,
            interval_s=profile.interval_s,
            thresholds=dict(profile.thresholds),
            description=profile.description,
            created_ms=profile.created_ms,
            updated_ms=profile.updated_ms,
            retired_ms=profile.retired_ms,
        )


class DeviceLocationOut(BaseModel):
    lon: float
    lat: float
    floor: int | None
    label: str | None


class DeviceOut(_Out):
    """A device as the registry knows it (`DevicePublic`: no secrets, ever)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "yy-smoke-012",
                    "kind": "smoke",
                    "site": "yingyang",
                    "cell": "yy-g03",
                    "location": {"lon": 113.392, "lat": 22.517, "floor": 2, "label": None},
                    "profile": None,
                    "attributes": {"room": "kitchen", "unit": "3-201"},
                    "topic": "gw/v1/yingyang/smoke/yy-smoke-012",
                    "created_ms": 1764450000000,
                    "updated_ms": 1764450000000,
                    "retired_ms": None,
                }
            ]
        }
    )

    id: str
    kind: str
    site: str
    cell: str
    location: DeviceLocationOut
    profile: str | None
    attributes: dict[str, str | int | float | bool | None]
    topic: str = Field(description="The device publishes only under `<topic>/#`")

    @classmethod
    def of(cls, device: Device, prefix: str = topics.DEFAULT_PREFIX) -> DeviceOut:
        loc = device.location
        return cls(
            id=device.id,
            kind=device.kind,
            site=device.site,
            cell=device.cell,
            location=DeviceLocationOut(lon=loc.lon, lat=loc.lat, floor=loc.floor, label=loc.label),
            profile=device.profile,
            attributes=dict(device.attributes),
            topic=device.topic_root(prefix),
            created_ms=device.created_ms,
            updated_ms=device.updated_ms,
            retired_ms=device.retired_ms,
        )


class CredentialsOut(BaseModel):
    """An MQTT login. The password is shown this once; GridWatch does not keep it."""

    username: str
    password: str
    client_id: str | None = Field(description="The client id the login must connect with")
    role: str

    @classmethod
    def of(cls, creds: Credentials) -> CredentialsOut:
        return cls(
            username=creds.username,
            password=creds.password,
            client_id=creds.client_id,
            role=creds.role,
        )


class RegisteredDeviceOut(BaseModel):
    device: DeviceOut
    credentials: CredentialsOut | None = Field(
        description="null when the hub manages no broker logins (no dynamic security)"
    )


class ImportOut(BaseModel):
    counts: dict[str, dict[str, int]] = Field(
        description="created/updated records per section",
        examples=[{"devices": {"created": 75, "updated": 0}}],
    )
    credentials: list[CredentialsOut] = Field(
        description="Logins of the devices this import created (passwords shown once)"
    )


class ServiceLoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=IDENT)
    sites: list[Annotated[str, Field(pattern=IDENT)]] = Field(
        default_factory=list, max_length=100, description="Simulators: the sites they speak for"
    )
