"""The registry in SQL: sites, workers, cells, profiles and devices.

SQLAlchemy Core on the event store's database (SQLite default, PostgreSQL), with the
event store's engine setup and its own migration track. Synchronous, like the event
store: each operation checks out a connection for just that operation, so the API can
call it from worker threads. Every write re-checks references inside its transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from registry.checks import Lookup, cell_problems, device_problems
from registry.errors import Conflict, Invalid, NotFound, Problem
from registry.migrations import TRACK, cells, devices, profiles, sites, workers
from registry.model import (
    AttributeValue,
    Cell,
    Device,
    Location,
    Page,
    Profile,
    ScheduleRule,
    Site,
    Status,
    Worker,
)
from registry.schema import (
    Bundle,
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
from sensors.registry import KINDS
from storage.engine import create_engine
from storage.migrations import read_transaction, write_transaction

MAX_PAGE: Final = 1000

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """What an import changed, per entity: created and updated ids."""

    created: Mapping[str, tuple[str, ...]]
    updated: Mapping[str, tuple[str, ...]]

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            entity: {"created": len(self.created[entity]), "updated": len(self.updated[entity])}
            for entity in self.created
        }


RowLines = Mapping[tuple[str, int], int]
"""(section, index in section) -> row number reported for that record."""


class RegistryStore:
    """The registry; call `migrate()` once before use."""

    def __init__(
        self,
        url: str,
        *,
        kinds: Collection[str] | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self._engine = create_engine(url)
        self._kinds = frozenset(KINDS if kinds is None else kinds)
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    @property
    def kinds(self) -> frozenset[str]:
        return self._kinds

    def migrate(self) -> int:
        """Bring the registry tables up to date (idempotent); return their version."""
        return TRACK.migrate(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def ping(self) -> None:
        """Raise if the database cannot be reached (readiness)."""
        with self._read() as conn:
            conn.execute(sa.select(1))

    # ------------------------------------------------------------------ sites

    def create_site(self, spec: SiteSpec) -> Site:
        with self._write() as conn:
            if _get(conn, sites, spec.id, _site) is not None:
                raise Conflict(f"site {spec.id!r} exists")
            now = self._clock_ms()
            _insert(conn, sites, _site_row(spec), now)
            return _must(conn, sites, spec.id, _site, "site")

    def get_site(self, ident: str) -> Site:
        return self._fetch(sites, ident, _site, "site")

    def list_sites(
        self, *, status: Status = Status.ACTIVE, limit: int = 100, offset: int = 0
    ) -> Page[Site]:
        return self._page(sites, [], status, limit, offset, _site)

    def update_site(self, ident: str, patch: SitePatch) -> Site:
        with self._write() as conn:
            current = _must_active(conn, sites, ident, _site, "site")
            merged = _merge(SiteSpec, _site_spec(current), patch)
            if patch.schedules is not None:
                self._check_schedules_kept(conn, merged)
            self._update(conn, sites, ident, _site_row(merged))
            return _must(conn, sites, ident, _site, "site")

    def _check_schedules_kept(self, conn: Connection, site: SiteSpec) -> None:
        """Doors that name a schedule keep it: dropping it would silently open them."""
        rows = conn.execute(
            devices.select().where(devices.c.site == site.id, devices.c.retired_ms.is_(None))
        ).mappings()
        problems = [
            Problem(f"schedules (device {d.id})", f"device {d.id} uses schedule {name!r}")
            for d in (_device(r) for r in rows)
            if isinstance(name := d.attributes.get("schedule"), str) and name not in site.schedules
        ]
        _refuse_problems(problems)

    def retire_site(self, ident: str) -> Site:
        return self._retire_unused(
            sites, ident, _site, "site", (cells, cells.c.site == ident, "still has active cells")
        )

    # ------------------------------------------------------------------ workers

    def create_worker(self, spec: WorkerSpec) -> Worker:
        with self._write() as conn:
            if _get(conn, workers, spec.id, _worker) is not None:
                raise Conflict(f"worker {spec.id!r} exists")
            now = self._clock_ms()
            _insert(conn, workers, spec.model_dump(), now)
            return _must(conn, workers, spec.id, _worker, "worker")

    def get_worker(self, ident: str) -> Worker:
        return self._fetch(workers, ident, _worker, "worker")

    def list_workers(
        self, *, status: Status = Status.ACTIVE, limit: int = 100, offset: int = 0
    ) -> Page[Worker]:
        return self._page(workers, [], status, limit, offset, _worker)

    def update_worker(self, ident: str, patch: WorkerPatch) -> Worker:
        with self._write() as conn:
            current = _must_active(conn, workers, ident, _worker, "worker")
            merged = _merge(
                WorkerSpec, WorkerSpec(id=current.id, name=current.name, phone=current.phone), patch
            )
            self._update(conn, workers, ident, merged.model_dump())
            return _must(conn, workers, ident, _worker, "worker")

    def retire_worker(self, ident: str) -> Worker:
        return self._retire_unused(
            workers,
            ident,
            _worker,
            "worker",
            (cells, cells.c.worker == ident, "still looks after cells"),
        )

    # ------------------------------------------------------------------ cells

    def create_cell(self, spec: CellSpec) -> Cell:
        with self._write() as conn:
            if _get(conn, cells, spec.id, _cell) is not None:
                raise Conflict(f"cell {spec.id!r} exists")
            _refuse(cell_problems(spec, _StoreLookup(conn)))
            now = self._clock_ms()
            _insert(conn, cells, _cell_row(spec), now)
            return _must(conn, cells, spec.id, _cell, "cell")

    def get_cell(self, ident: str) -> Cell:
        return self._fetch(cells, ident, _cell, "cell")

    def list_cells(
        self,
        *,
        site: str | None = None,
        worker: str | None = None,
        status: Status = Status.ACTIVE,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[Cell]:
        where = []
        if site is not None:
            where.append(cells.c.site == site)
        if worker is not None:
            where.append(cells.c.worker == worker)
        return self._page(cells, where, status, limit, offset, _cell)

    def update_cell(self, ident: str, patch: CellPatch) -> Cell:
        with self._write() as conn:
            current = _must_active(conn, cells, ident, _cell, "cell")
            merged = _merge(CellSpec, _cell_spec(current), patch)
            _refuse(cell_problems(merged, _StoreLookup(conn)))
            if patch.polygon is not None:
                self._check_devices_inside(conn, merged)
            self._update(conn, cells, ident, _cell_row(merged))
            return _must(conn, cells, ident, _cell, "cell")

    def _check_devices_inside(self, conn: Connection, cell: CellSpec) -> None:
        """A reshaped cell must still hold its devices."""
        look = _StoreLookup(conn)
        look.cells_override[cell.id] = _cell_from_spec(cell)
        rows = conn.execute(
            devices.select().where(devices.c.cell == cell.id, devices.c.retired_ms.is_(None))
        ).mappings()
        problems = [
            Problem(f"polygon (device {d.id})", msg)
            for d in (_device(r) for r in rows)
            for loc, msg in device_problems(_device_spec(d), look, self._kinds)
            if loc == "location"
        ]
        _refuse_problems(problems)

    def retire_cell(self, ident: str) -> Cell:
        return self._retire_unused(
            cells,
            ident,
            _cell,
            "cell",
            (devices, devices.c.cell == ident, "still has active devices"),
        )

    # ------------------------------------------------------------------ profiles

    def create_profile(self, spec: ProfileSpec) -> Profile:
        with self._write() as conn:
            if _get(conn, profiles, spec.id, _profile) is not None:
                raise Conflict(f"profile {spec.id!r} exists")
            if spec.kind not in self._kinds:
                _refuse([("kind", f"unknown kind {spec.kind!r}")])
            now = self._clock_ms()
            _insert(conn, profiles, _profile_row(spec), now)
            return _must(conn, profiles, spec.id, _profile, "profile")

    def get_profile(self, ident: str) -> Profile:
        return self._fetch(profiles, ident, _profile, "profile")

    def list_profiles(
        self,
        *,
        kind: str | None = None,
        status: Status = Status.ACTIVE,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[Profile]:
        where = [] if kind is None else [profiles.c.kind == kind]
        return self._page(profiles, where, status, limit, offset, _profile)

    def update_profile(self, ident: str, patch: ProfilePatch) -> Profile:
        with self._write() as conn:
            current = _must_active(conn, profiles, ident, _profile, "profile")
            merged = _merge(ProfileSpec, _profile_spec(current), patch)
            self._update(conn, profiles, ident, _profile_row(merged))
            return _must(conn, profiles, ident, _profile, "profile")

    def retire_profile(self, ident: str) -> Profile:
        return self._retire_unused(
            profiles,
            ident,
            _profile,
            "profile",
            (devices, devices.c.profile == ident, "is still used by devices"),
        )

    # ------------------------------------------------------------------ devices

    def create_device(self, spec: DeviceSpec) -> Device:
        with self._write() as conn:
            existing = _get(conn, devices, spec.id, _device)
            if existing is not None:
                retired = " (retired; device ids are never reused)" if existing.retired else ""
                raise Conflict(f"device {spec.id!r} exists{retired}")
            _refuse(device_problems(spec, _StoreLookup(conn), self._kinds))
            now = self._clock_ms()
            _insert(conn, devices, _device_row(spec), now)
            return _must(conn, devices, spec.id, _device, "device")

    def get_device(self, ident: str) -> Device:
        return self._fetch(devices, ident, _device, "device")

    def list_devices(
        self,
        *,
        site: str | None = None,
        kind: str | None = None,
        cell: str | None = None,
        profile: str | None = None,
        status: Status = Status.ACTIVE,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[Device]:
        c = devices.c
        where = [
            col == value
            for col, value in ((c.site, site), (c.kind, kind), (c.cell, cell), (c.profile, profile))
            if value is not None
        ]
        return self._page(devices, where, status, limit, offset, _device)

    def update_device(self, ident: str, patch: DevicePatch) -> Device:
        with self._write() as conn:
            current = _must_active(conn, devices, ident, _device, "device")
            merged = _merge(DeviceSpec, _device_spec(current), patch)
            _refuse(device_problems(merged, _StoreLookup(conn), self._kinds))
            self._update(conn, devices, ident, _device_row(merged))
            return _must(conn, devices, ident, _device, "device")

    def retire_device(self, ident: str) -> Device:
        return self._retire_unused(devices, ident, _device, "device")

    def all_devices(self, *, status: Status = Status.ACTIVE) -> list[Device]:
        """Every device (no paging): for the rules' directory and the ingest allowlist."""
        query = devices.select().where(*_status_where(devices, status)).order_by(devices.c.id)
        with self._read() as conn:
            return [_device(r) for r in conn.execute(query).mappings()]

    def all_sites(self) -> list[Site]:
        with self._read() as conn:
            return [_site(r) for r in conn.execute(sites.select().order_by(sites.c.id)).mappings()]

    def all_profiles(self) -> list[Profile]:
        """Every profile, retired ones too: a device keeps its profile's overrides."""
        with self._read() as conn:
            query = profiles.select().order_by(profiles.c.id)
            return [_profile(r) for r in conn.execute(query).mappings()]

    def all_cells(self, *, site: str | None = None) -> list[Cell]:
        query = cells.select().where(cells.c.retired_ms.is_(None)).order_by(cells.c.id)
        if site is not None:
            query = query.where(cells.c.site == site)
        with self._read() as conn:
            return [_cell(r) for r in conn.execute(query).mappings()]

    # ------------------------------------------------------------------ bulk

    def import_bundle(
        self, bundle: Bundle, *, rows: RowLines | None = None, source: str = "import"
    ) -> ImportSummary:
        """Create or update every record of `bundle` in one transaction, or nothing.

        Every record is checked first, against the store and the rest of the bundle;
        any problem raises `Invalid` with all problems, each with its row number.
        """
        rows = rows or {}
        problems: list[Problem] = []

        def note(section: str, index: int, loc: str, msg: str) -> None:
            problems.append(
                Problem(f"{section}[{index + 1}].{loc}", msg, rows.get((section, index)))
            )

        with self._write() as conn:
            look = _StoreLookup(conn)
            stored = _StoreLookup(conn)  # without the bundle's records: what exists now
            plan: list[tuple[str, sa.Table, str, dict[str, Any], bool]] = []
            seen: dict[str, set[str]] = {}

            def stage(
                section: str,
                index: int,
                table: sa.Table,
                ident: str,
                row: dict[str, Any],
                exists: object | None,
            ) -> bool:
                ids = seen.setdefault(section, set())
                if ident in ids:
                    note(section, index, "id", f"{ident!r} appears twice in this file")
                    return False
                ids.add(ident)
                if exists is not None and getattr(exists, "retired_ms", None) is not None:
                    note(section, index, "id", f"{ident!r} is retired; ids are never reused")
                    return False
                plan.append((section, table, ident, row, exists is not None))
                return True

            for i, site in enumerate(bundle.sites):
                if stage("sites", i, sites, site.id, _site_row(site), stored.site(site.id)):
                    look.sites_override[site.id] = _site_from_spec(site)
            for i, worker in enumerate(bundle.workers):
                if stage(
                    "workers", i, workers, worker.id, worker.model_dump(), stored.worker(worker.id)
                ):
                    look.workers_override[worker.id] = _worker_from_spec(worker)
            for i, profile in enumerate(bundle.profiles):
                if profile.kind not in self._kinds:
                    note("profiles", i, "kind", f"unknown kind {profile.kind!r}")
                if stage(
                    "profiles",
                    i,
                    profiles,
                    profile.id,
                    _profile_row(profile),
                    stored.profile(profile.id),
                ):
                    look.profiles_override[profile.id] = _profile_from_spec(profile)
            for i, cell in enumerate(bundle.cells):
                if stage("cells", i, cells, cell.id, _cell_row(cell), stored.cell(cell.id)):
                    look.cells_override[cell.id] = _cell_from_spec(cell)
            for i, cell in enumerate(bundle.cells):
                for loc, msg in cell_problems(cell, look):
                    note("cells", i, loc, msg)
            known = _existing(conn, devices, [d.id for d in bundle.devices], _device)
            for i, device in enumerate(bundle.devices):
                existing = known.get(device.id)
                if existing is not None and (existing.kind, existing.site) != (
                    device.kind,
                    device.site,
                ):
                    note(
                        "devices",
                        i,
                        "id",
                        f"device {device.id!r} exists as {existing.kind} at {existing.site}; "
                        "id, kind and site never change",
                    )
                stage("devices", i, devices, device.id, _device_row(device), existing)
                for loc, msg in device_problems(device, look, self._kinds):
                    note("devices", i, loc, msg)
            _refuse_problems(problems, source)

            now = self._clock_ms()
            created: dict[str, list[str]] = {s: [] for s in _SECTIONS}
            updated: dict[str, list[str]] = {s: [] for s in _SECTIONS}
            # Batched per section, parents first (sites, workers, profiles, cells, devices).
            for section in _SECTIONS:
                staged = [p for p in plan if p[0] == section]
                if not staged:
                    continue
                table = staged[0][1]
                inserts = [
                    {**row, "created_ms": now, "updated_ms": now}
                    for _, _, _, row, exists in staged
                    if not exists
                ]
                updates = [
                    {**row, "b_id": ident, "updated_ms": now}
                    for _, _, ident, row, exists in staged
                    if exists
                ]
                if inserts:
                    conn.execute(table.insert(), inserts)
                if updates:
                    conn.execute(table.update().where(table.c.id == sa.bindparam("b_id")), updates)
                created[section] = [ident for _, _, ident, _, exists in staged if not exists]
                updated[section] = [ident for _, _, ident, _, exists in staged if exists]
        return ImportSummary(
            {s: tuple(v) for s, v in created.items()}, {s: tuple(v) for s, v in updated.items()}
        )

    # ------------------------------------------------------------------ internals

    def _page(
        self,
        table: sa.Table,
        where: list[sa.ColumnElement[bool]],
        status: Status,
        limit: int,
        offset: int,
        convert: Callable[[RowMapping], R],
    ) -> Page[R]:
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid([Problem("limit", f"must be 1..{MAX_PAGE}")])
        if offset < 0:
            raise Invalid([Problem("offset", "must be >= 0")])
        where = [*where, *_status_where(table, status)]
        query = table.select().where(*where).order_by(table.c.id).limit(limit).offset(offset)
        count = sa.select(sa.func.count()).select_from(table).where(*where)
        with self._read() as conn:
            items = tuple(convert(r) for r in conn.execute(query).mappings())
            total = int(conn.execute(count).scalar_one())
        return Page(items, total, limit, offset)

    def _update(
        self,
        conn: Connection,
        table: sa.Table,
        ident: str,
        values: Mapping[str, Any],
        now: int | None = None,
    ) -> None:
        stamp = self._clock_ms() if now is None else now
        conn.execute(
            table.update().where(table.c.id == ident).values({**values, "updated_ms": stamp})
        )

    def _fetch(
        self, table: sa.Table, ident: str, convert: Callable[[RowMapping], R], entity: str
    ) -> R:
        """One record, retired or not; `NotFound` if there is none."""
        with self._read() as conn:
            return _must(conn, table, ident, convert, entity)

    def _retire_unused(
        self,
        table: sa.Table,
        ident: str,
        convert: Callable[[RowMapping], R],
        entity: str,
        users: tuple[sa.Table, sa.ColumnElement[bool], str] | None = None,
    ) -> R:
        """Retire an active record unless active `users` (table, reference, what the
        refusal says) still refer to it."""
        with self._write() as conn:
            _must_active(conn, table, ident, convert, entity)
            if users is not None:
                user_table, refers, refusal = users
                found = _active_ids(conn, user_table, refers)
                if found:
                    raise Conflict(f"{entity} {ident!r} {refusal} {_few(found)}")
            self._retire(conn, table, ident)
            return _must(conn, table, ident, convert, entity)

    def _retire(self, conn: Connection, table: sa.Table, ident: str) -> None:
        now = self._clock_ms()
        conn.execute(
            table.update().where(table.c.id == ident).values(retired_ms=now, updated_ms=now)
        )

    def _read(self) -> AbstractContextManager[Connection]:
        return read_transaction(self._engine)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with write_transaction(self._engine) as conn:
                yield conn
        except IntegrityError as err:
            # Checked before writing, so only a concurrent writer gets here (PostgreSQL).
            raise Conflict(f"changed concurrently, try again ({err.orig})") from err


_SECTIONS: Final = ("sites", "workers", "profiles", "cells", "devices")


@dataclass
class _StoreLookup(Lookup):
    """References as stored, with records about to be written laid over them."""

    conn: Connection
    sites_override: dict[str, Site] = field(default_factory=dict)
    workers_override: dict[str, Worker] = field(default_factory=dict)
    cells_override: dict[str, Cell] = field(default_factory=dict)
    profiles_override: dict[str, Profile] = field(default_factory=dict)

    memo: dict[tuple[str, str], Any] = field(default_factory=dict)
    """Stored records read in this transaction (a bulk import asks for the same cell often)."""

    def _stored(self, table: sa.Table, ident: str, convert: Callable[[RowMapping], R]) -> R | None:
        key = (table.name, ident)
        if key not in self.memo:
            self.memo[key] = _get(self.conn, table, ident, convert)
        found: R | None = self.memo[key]
        return found

    def site(self, ident: str) -> Site | None:
        return self.sites_override.get(ident) or self._stored(sites, ident, _site)

    def worker(self, ident: str) -> Worker | None:
        return self.workers_override.get(ident) or self._stored(workers, ident, _worker)

    def cell(self, ident: str) -> Cell | None:
        return self.cells_override.get(ident) or self._stored(cells, ident, _cell)

    def profile(self, ident: str) -> Profile | None:
        return self.profiles_override.get(ident) or self._stored(profiles, ident, _profile)


S = TypeVar("S", bound=BaseModel)


def _merge(model: type[S], current: BaseModel, patch: BaseModel) -> S:
    """The stored record with the patch's given fields, validated as a whole."""
    data = current.model_dump() | patch.model_dump(exclude_unset=True)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(
            [Problem(".".join(str(p) for p in e["loc"]) or "body", e["msg"]) for e in exc.errors()]
        ) from None


def _existing(
    conn: Connection, table: sa.Table, ids: Sequence[str], convert: Callable[[RowMapping], R]
) -> dict[str, R]:
    """The stored records among `ids`, by id (a few queries, not one per id)."""
    found: dict[str, R] = {}
    unique = sorted(set(ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        for row in conn.execute(table.select().where(table.c.id.in_(chunk))).mappings():
            found[str(row["id"])] = convert(row)
    return found


def _insert(conn: Connection, table: sa.Table, row: Mapping[str, Any], now: int) -> None:
    conn.execute(table.insert().values({**row, "created_ms": now, "updated_ms": now}))


def _refuse(found: Sequence[tuple[str, str]]) -> None:
    _refuse_problems([Problem(loc, msg) for loc, msg in found])


def _refuse_problems(problems: list[Problem], source: str = "input") -> None:
    if problems:
        raise Invalid(problems, source)


def _get(
    conn: Connection, table: sa.Table, ident: str, convert: Callable[[RowMapping], R]
) -> R | None:
    row = conn.execute(table.select().where(table.c.id == ident)).mappings().first()
    return None if row is None else convert(row)


def _must(
    conn: Connection, table: sa.Table, ident: str, convert: Callable[[RowMapping], R], entity: str
) -> R:
    found = _get(conn, table, ident, convert)
    if found is None:
        raise NotFound(entity, ident)
    return found


def _must_active(
    conn: Connection, table: sa.Table, ident: str, convert: Callable[[RowMapping], R], entity: str
) -> R:
    found = _must(conn, table, ident, convert, entity)
    if getattr(found, "retired_ms", None) is not None:
        raise Conflict(f"{entity} {ident!r} is retired")
    return found


def _active_ids(conn: Connection, table: sa.Table, where: sa.ColumnElement[bool]) -> list[str]:
    query = sa.select(table.c.id).where(where, table.c.retired_ms.is_(None)).order_by(table.c.id)
    return [str(i) for i in conn.execute(query.limit(6)).scalars()]


def _few(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")


def _status_where(table: sa.Table, status: Status) -> list[sa.ColumnElement[bool]]:
    if status is Status.ACTIVE:
        return [table.c.retired_ms.is_(None)]
    if status is Status.RETIRED:
        return [table.c.retired_ms.is_not(None)]
    return []


# ---------------------------------------------------------------------- rows


def _stamps(row: RowMapping) -> dict[str, Any]:
    retired = row["retired_ms"]
    return {
        "created_ms": int(row["created_ms"]),
        "updated_ms": int(row["updated_ms"]),
        "retired_ms": None if retired is None else int(retired),
    }


def _site_row(spec: SiteSpec) -> dict[str, Any]:
    schedules = {
        name: [rule.model_dump() for rule in rules] for name, rules in spec.schedules.items()
    }
    return {
        "id": spec.id,
        "name": spec.name,
        "timezone": spec.timezone,
        "description": spec.description,
        "schedules_json": json.dumps(schedules, sort_keys=True),
    }


def _schedules(raw: Mapping[str, Any]) -> dict[str, tuple[ScheduleRule, ...]]:
    return {
        str(name): tuple(
            ScheduleRule(tuple(r["days"]), str(r["open"]), str(r["close"])) for r in rules
        )
        for name, rules in raw.items()
    }


def _site(row: RowMapping) -> Site:
    return Site(
        id=str(row["id"]),
        name=str(row["name"]),
        timezone=str(row["timezone"]),
        description=row["description"],
        schedules=_schedules(json.loads(row["schedules_json"])),
        **_stamps(row),
    )


def _site_from_spec(spec: SiteSpec) -> Site:
    return Site(
        spec.id,
        spec.name,
        spec.timezone,
        spec.description,
        _schedules({k: [r.model_dump() for r in v] for k, v in spec.schedules.items()}),
    )


def _site_spec(site: Site) -> SiteSpec:
    return SiteSpec.model_validate(
        {
            "id": site.id,
            "name": site.name,
            "timezone": site.timezone,
            "description": site.description,
            "schedules": {
                name: [{"days": list(r.days), "open": r.open, "close": r.close} for r in rules]
                for name, rules in site.schedules.items()
            },
        }
    )


def _worker(row: RowMapping) -> Worker:
    return Worker(str(row["id"]), str(row["name"]), row["phone"], **_stamps(row))


def _worker_from_spec(spec: WorkerSpec) -> Worker:
    return Worker(spec.id, spec.name, spec.phone)


def _cell_row(spec: CellSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "site": spec.site,
        "name": spec.name,
        "worker": spec.worker,
        "polygon_json": json.dumps([list(p) for p in spec.polygon]),
    }


def _cell(row: RowMapping) -> Cell:
    return Cell(
        id=str(row["id"]),
        site=str(row["site"]),
        name=str(row["name"]),
        polygon=tuple((float(x), float(y)) for x, y in json.loads(row["polygon_json"])),
        worker=row["worker"],
        **_stamps(row),
    )


def _cell_from_spec(spec: CellSpec) -> Cell:
    return Cell(spec.id, spec.site, spec.name, tuple(spec.polygon), spec.worker)


def _cell_spec(cell: Cell) -> CellSpec:
    return CellSpec(
        id=cell.id, site=cell.site, name=cell.name, worker=cell.worker, polygon=list(cell.polygon)
    )


def _profile_row(spec: ProfileSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "kind": spec.kind,
        "interval_s": spec.interval_s,
        "thresholds_json": json.dumps(spec.thresholds, sort_keys=True),
        "description": spec.description,
    }


def _profile(row: RowMapping) -> Profile:
    return Profile(
        id=str(row["id"]),
        kind=str(row["kind"]),
        interval_s=float(row["interval_s"]),
        thresholds={str(k): float(v) for k, v in json.loads(row["thresholds_json"]).items()},
        description=row["description"],
        **_stamps(row),
    )


def _profile_from_spec(spec: ProfileSpec) -> Profile:
    return Profile(spec.id, spec.kind, spec.interval_s, dict(spec.thresholds), spec.description)


def _profile_spec(profile: Profile) -> ProfileSpec:
    return ProfileSpec(
        id=profile.id,
        kind=profile.kind,
        interval_s=profile.interval_s,
        thresholds=dict(profile.thresholds),
        description=profile.description,
    )


def _device_row(spec: DeviceSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "kind": spec.kind,
        "site": spec.site,
        "cell": spec.cell,
        "lon": spec.location.lon,
        "lat": spec.location.lat,
        "floor": spec.location.floor,
        "label": spec.location.label,
        "profile": spec.profile,
        "attributes_json": json.dumps(spec.attributes, sort_keys=True),
    }


def _device(row: RowMapping) -> Device:
    attributes: dict[str, AttributeValue] = json.loads(row["attributes_json"])
    return Device(
        id=str(row["id"]),
        kind=str(row["kind"]),
        site=str(row["site"]),
        cell=str(row["cell"]),
        location=Location(float(row["lon"]), float(row["lat"]), row["floor"], row["label"]),
        profile=row["profile"],
        attributes=attributes,
        **_stamps(row),
    )


def _device_spec(device: Device) -> DeviceSpec:
    loc = device.location
    return DeviceSpec.model_validate(
        {
            "id": device.id,
            "kind": device.kind,
            "site": device.site,
            "cell": device.cell,
            "location": {"lon": loc.lon, "lat": loc.lat, "floor": loc.floor, "label": loc.label},
            "profile": device.profile,
            "attributes": dict(device.attributes),
        }
    )
