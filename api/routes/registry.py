"""The registry API: sites, grid workers, cells, device profiles and devices, bulk import,
and broker credentials.

Integrators write (create, update, retire, import, credentials); operators read.
Registering a device also creates its MQTT login in the broker's dynamic-security plugin
and returns the generated password once; retiring disables the login; rotating issues
a new password. Without a dynamic-security client (`deps.dynsec` is None) the registry
still works and `credentials` is null.

The registry store is synchronous (SQL), so handlers that also talk to the broker are
async and run the store on a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Final, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from accounts.roles import Role
from api.deps import get_deps
from api.problems import Unavailable, problem_responses
from api.roles import Principal, requires
from api.schemas.registry import (
    IDENT,
    CellOut,
    CredentialsOut,
    DeviceOut,
    ImportOut,
    PageOut,
    ProfileOut,
    RegisteredDeviceOut,
    ServiceLoginIn,
    SiteOut,
    WorkerOut,
)
from broker.dynsec import BrokerAccounts
from registry import bulk
from registry.errors import Conflict, Invalid, Problem
from registry.model import Device, Status
from registry.schema import (
    CellPatch,
    CellSpec,
    DevicePatch,
    DeviceSpec,
    ProfilePatch,
    ProfileSpec,
    SitePatch,
    SiteSpec,
    WorkerPatch,
    WorkerSpec,
)
from registry.store import MAX_PAGE, RegistryStore

IMPORT_PATH: Final = "/api/v1/registry/import"
"""The one route with a larger body limit (`api.max_import_bytes`)."""

Ident = Annotated[str, Path(pattern=IDENT, description="The record's id")]
Reader = Annotated[Principal, Depends(requires(Role.operator, Role.integrator))]
Writer = Annotated[Principal, Depends(requires(Role.integrator))]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Records to skip")]
StatusQ = Annotated[Status, Query(description="active (default), retired or all")]
FilterId = Annotated[str | None, Query(pattern=IDENT)]

router = APIRouter(prefix="/api/v1", tags=["registry"])

READ_ERRORS: Final = problem_responses(401, 403, 404, 422)
WRITE_ERRORS: Final = problem_responses(401, 403, 404, 409, 422, 503)


def _store(request: Request) -> RegistryStore:
    store = get_deps(request).registry
    if not isinstance(store, RegistryStore):
        raise Unavailable("this hub runs without a device registry")
    return store


def _accounts(request: Request) -> BrokerAccounts | None:
    accounts = get_deps(request).dynsec
    return accounts if isinstance(accounts, BrokerAccounts) else None


def _required_accounts(request: Request) -> BrokerAccounts:
    """For calls that only make sense with broker logins: 503 without them."""
    accounts = _accounts(request)
    if accounts is None:
        raise Unavailable("this hub manages no broker logins (dynamic security is off)")
    return accounts


def _prefix(request: Request) -> str:
    return get_deps(request).config.topic_prefix


# ---------------------------------------------------------------------- sites


@router.get("/sites", responses=READ_ERRORS, summary="List sites")
def list_sites(
    request: Request,
    _: Reader,
    status: StatusQ = Status.ACTIVE,
    limit: Limit = 100,
    offset: Offset = 0,
) -> PageOut[SiteOut]:
    page = _store(request).list_sites(status=status, limit=limit, offset=offset)
    return PageOut[SiteOut].of(page, SiteOut.of)


@router.post("/sites", status_code=201, responses=WRITE_ERRORS, summary="Create a site")
def create_site(request: Request, _: Writer, spec: SiteSpec) -> SiteOut:
    return SiteOut.of(_store(request).create_site(spec))


@router.get("/sites/{site_id}", responses=READ_ERRORS, summary="One site")
def get_site(request: Request, _: Reader, site_id: Ident) -> SiteOut:
    return SiteOut.of(_store(request).get_site(site_id))


@router.patch("/sites/{site_id}", responses=WRITE_ERRORS, summary="Change a site")
def update_site(request: Request, _: Writer, site_id: Ident, patch: SitePatch) -> SiteOut:
    return SiteOut.of(_store(request).update_site(site_id, patch))


@router.delete(
    "/sites/{site_id}", responses=WRITE_ERRORS, summary="Retire a site (it must have no cells)"
)
def retire_site(request: Request, _: Writer, site_id: Ident) -> SiteOut:
    return SiteOut.of(_store(request).retire_site(site_id))


# ---------------------------------------------------------------------- workers


@router.get("/workers", responses=READ_ERRORS, summary="List grid workers")
def list_workers(
    request: Request,
    _: Reader,
    status: StatusQ = Status.ACTIVE,
    limit: Limit = 100,
    offset: Offset = 0,
) -> PageOut[WorkerOut]:
    page = _store(request).list_workers(status=status, limit=limit, offset=offset)
    return PageOut[WorkerOut].of(page, WorkerOut.of)


@router.post("/workers", status_code=201, responses=WRITE_ERRORS, summary="Add a grid worker")
def create_worker(request: Request, _: Writer, spec: WorkerSpec) -> WorkerOut:
    return WorkerOut.of(_store(request).create_worker(spec))


@router.get("/workers/{worker_id}", responses=READ_ERRORS, summary="One grid worker")
def get_worker(request: Request, _: Reader, worker_id: Ident) -> WorkerOut:
    return WorkerOut.of(_store(request).get_worker(worker_id))


@router.patch("/workers/{worker_id}", responses=WRITE_ERRORS, summary="Change a grid worker")
def update_worker(request: Request, _: Writer, worker_id: Ident, patch: WorkerPatch) -> WorkerOut:
    return WorkerOut.of(_store(request).update_worker(worker_id, patch))


@router.delete(
    "/workers/{worker_id}",
    responses=WRITE_ERRORS,
    summary="Retire a grid worker (no cell may still name them)",
)
def retire_worker(request: Request, _: Writer, worker_id: Ident) -> WorkerOut:
    return WorkerOut.of(_store(request).retire_worker(worker_id))


# ---------------------------------------------------------------------- cells


@router.get("/cells", responses=READ_ERRORS, summary="List grid cells")
def list_cells(
    request: Request,
    _: Reader,
    site: FilterId = None,
    worker: FilterId = None,
    status: StatusQ = Status.ACTIVE,
    limit: Limit = 100,
    offset: Offset = 0,
) -> PageOut[CellOut]:
    page = _store(request).list_cells(
        site=site, worker=worker, status=status, limit=limit, offset=offset
    )
    return PageOut[CellOut].of(page, CellOut.of)


@router.post("/cells", status_code=201, responses=WRITE_ERRORS, summary="Create a grid cell")
def create_cell(request: Request, _: Writer, spec: CellSpec) -> CellOut:
    return CellOut.of(_store(request).create_cell(spec))


@router.get("/cells/{cell_id}", responses=READ_ERRORS, summary="One grid cell")
def get_cell(request: Request, _: Reader, cell_id: Ident) -> CellOut:
    return CellOut.of(_store(request).get_cell(cell_id))


@router.patch(
    "/cells/{cell_id}",
    responses=WRITE_ERRORS,
    summary="Change a grid cell (a new polygon must still hold its devices)",
)
def update_cell(request: Request, _: Writer, cell_id: Ident, patch: CellPatch) -> CellOut:
    return CellOut.of(_store(request).update_cell(cell_id, patch))


@router.delete(
    "/cells/{cell_id}", responses=WRITE_ERRORS, summary="Retire a grid cell (no active devices)"
)
def retire_cell(request: Request, _: Writer, cell_id: Ident) -> CellOut:
    return CellOut.of(_store(request).retire_cell(cell_id))


# ---------------------------------------------------------------------- profiles


@router.get("/profiles", responses=READ_ERRORS, summary="List device profiles")
def list_profiles(
    request: Request,
    _: Reader,
    kind: FilterId = None,
    status: StatusQ = Status.ACTIVE,
    limit: Limit = 100,
    offset: Offset = 0,
) -> PageOut[ProfileOut]:
    page = _store(request).list_profiles(kind=kind, status=status, limit=limit, offset=offset)
    return PageOut[ProfileOut].of(page, ProfileOut.of)


@router.post("/profiles", status_code=201, responses=WRITE_ERRORS, summary="Create a profile")
def create_profile(request: Request, _: Writer, spec: ProfileSpec) -> ProfileOut:
    return ProfileOut.of(_store(request).create_profile(spec))


@router.get("/profiles/{profile_id}", responses=READ_ERRORS, summary="One device profile")
def get_profile(request: Request, _: Reader, profile_id: Ident) -> ProfileOut:
    return ProfileOut.of(_store(request).get_profile(profile_id))


@router.patch("/profiles/{profile_id}", responses=WRITE_ERRORS, summary="Change a profile")
def update_profile(
    request: Request, _: Writer, profile_id: Ident, patch: ProfilePatch
) -> ProfileOut:
    return ProfileOut.of(_store(request).update_profile(profile_id, patch))


@router.delete(
    "/profiles/{profile_id}", responses=WRITE_ERRORS, summary="Retire a profile (unused only)"
)
def retire_profile(request: Request, _: Writer, profile_id: Ident) -> ProfileOut:
    return ProfileOut.of(_store(request).retire_profile(profile_id))


# ---------------------------------------------------------------------- devices


@router.get("/devices", responses=READ_ERRORS, summary="List devices")
def list_devices(
    request: Request,
    _: Reader,
    site: FilterId = None,
    kind: FilterId = None,
    cell: FilterId = None,
    profile: FilterId = None,
    status: StatusQ = Status.ACTIVE,
    limit: Limit = 100,
    offset: Offset = 0,
) -> PageOut[DeviceOut]:
    page = _store(request).list_devices(
        site=site,
        kind=kind,
        cell=cell,
        profile=profile,
        status=status,
        limit=limit,
        offset=offset,
    )
    prefix = _prefix(request)
    return PageOut[DeviceOut].of(page, lambda d: DeviceOut.of(d, prefix))


async def _issue(accounts: BrokerAccounts, device: Device) -> CredentialsOut:
    """Create or re-key the device's broker login."""
    creds = await accounts.register_device(device.id, device.topic_root(accounts.prefix))
    return CredentialsOut.of(creds)


@router.post(
    "/devices",
    status_code=201,
    responses=WRITE_ERRORS,
    summary="Register a device and create its broker login (password shown once)",
)
async def create_device(request: Request, _: Writer, spec: DeviceSpec) -> RegisteredDeviceOut:
    device = await asyncio.to_thread(_store(request).create_device, spec)
    # Registered first: if the broker is down the device exists and
    # POST /devices/{id}/credentials issues its login later.
    accounts = _accounts(request)
    credentials = None if accounts is None else await _issue(accounts, device)
    return RegisteredDeviceOut(
        device=DeviceOut.of(device, _prefix(request)), credentials=credentials
    )


@router.get("/devices/{device_id}", responses=READ_ERRORS, summary="One device")
def get_device(request: Request, _: Reader, device_id: Ident) -> DeviceOut:
    return DeviceOut.of(_store(request).get_device(device_id), _prefix(request))


@router.patch(
    "/devices/{device_id}",
    responses=WRITE_ERRORS,
    summary="Move or re-describe a device (id, kind and site never change)",
)
def update_device(request: Request, _: Writer, device_id: Ident, patch: DevicePatch) -> DeviceOut:
    return DeviceOut.of(_store(request).update_device(device_id, patch), _prefix(request))


@router.delete(
    "/devices/{device_id}",
    responses=WRITE_ERRORS,
    summary="Retire a device: its broker login is disabled and its messages are refused "
    "(idempotent)",
)
async def retire_device(request: Request, _: Writer, device_id: Ident) -> DeviceOut:
    store = _store(request)
    try:
        device = await asyncio.to_thread(store.retire_device, device_id)
    except Conflict:
        # Retired already: retrying must still reach the broker if the first try did not.
        device = await asyncio.to_thread(store.get_device, device_id)
        if not device.retired:
            raise
    accounts = _accounts(request)
    if accounts is not None:
        await accounts.retire_device(device.id)
    return DeviceOut.of(device, _prefix(request))


@router.post(
    "/devices/{device_id}/credentials",
    responses=WRITE_ERRORS,
    summary="Rotate (or first issue) a device's broker password; the old one stops working",
)
async def rotate_credentials(request: Request, _: Writer, device_id: Ident) -> CredentialsOut:
    device = await asyncio.to_thread(_store(request).get_device, device_id)
    if device.retired:
        raise Conflict(f"device {device_id!r} is retired")
    accounts = _required_accounts(request)
    return await _issue(accounts, device)


# ---------------------------------------------------------------------- bulk import


@router.post(
    IMPORT_PATH.removeprefix("/api/v1"),
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
    summary="Import a CSV (devices) or YAML (any records) file: all rows or none",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def import_file(
    request: Request,
    _: Writer,
    format: Annotated[Literal["csv", "yaml"], Query(description="The body's format")],
) -> ImportOut:
    raw = await request.body()  # api.hardening has refused a body over api.max_import_bytes
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Invalid([Problem("body", f"not UTF-8: {exc.reason}")], "import") from exc
    store = _store(request)
    summary = await asyncio.to_thread(bulk.import_text, store, text, format, f"import.{format}")
    credentials: list[CredentialsOut] = []
    accounts = _accounts(request)
    if accounts is not None:
        for device_id in summary.created["devices"]:
            device = await asyncio.to_thread(store.get_device, device_id)
            credentials.append(await _issue(accounts, device))
    return ImportOut(counts=summary.counts(), credentials=credentials)


# ---------------------------------------------------------------------- service logins


@router.post(
    "/broker/hub-login",
    responses=WRITE_ERRORS,
    summary="Create or re-key the hub's own broker login (role gridwatch-hub)",
)
async def hub_login(
    request: Request,
    _: Annotated[Principal, Depends(requires(Role.admin))],
    body: Annotated[ServiceLoginIn, Body()],
) -> CredentialsOut:
    accounts = _required_accounts(request)
    return CredentialsOut.of(await accounts.register_hub(body.username))


@router.post(
    "/broker/simulator-login",
    responses=WRITE_ERRORS,
    summary="Create or re-key a simulator's broker login for its sites",
)
async def simulator_login(
    request: Request, _: Writer, body: Annotated[ServiceLoginIn, Body()]
) -> CredentialsOut:
    accounts = _required_accounts(request)
    if not body.sites:
        raise Invalid([Problem("sites", "a simulator needs at least one site")])
    return CredentialsOut.of(await accounts.register_simulator(body.username, body.sites))
