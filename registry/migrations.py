"""The registry's tables and their own versioned migration track.

The registry lives in the same database as the event store but migrates on its own:
`registry_schema_version` counts its steps, so events and registry can evolve apart.
`MIGRATIONS[i]` takes the schema from version i to i + 1, each step in one transaction
with its version row (`storage.migrations`). Add steps at the end; never edit an
applied one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from registry.errors import RegistryError
from storage.migrations import MigrationTrack, Step, version_table

_MIGRATE_LOCK: Final = 0x67775245_47  # PostgreSQL advisory lock id (not the events' one)

metadata = sa.MetaData()

schema_version = version_table("registry_schema_version", metadata)


def _stamps() -> list[sa.Column[int]]:
    return [
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("retired_ms", sa.BigInteger),
    ]


sites = sa.Table(
    "registry_sites",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("timezone", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("schedules_json", sa.Text, nullable=False),
    *_stamps(),
)

workers = sa.Table(
    "registry_workers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("phone", sa.Text),
    *_stamps(),
)

cells = sa.Table(
    "registry_cells",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("site", sa.Text, sa.ForeignKey("registry_sites.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("worker", sa.Text, sa.ForeignKey("registry_workers.id")),
    sa.Column("polygon_json", sa.Text, nullable=False),
    *_stamps(),
    sa.Index("ix_registry_cells_site", "site"),
)

profiles = sa.Table(
    "registry_profiles",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("interval_s", sa.Float, nullable=False),
    sa.Column("thresholds_json", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    *_stamps(),
)

devices = sa.Table(
    "registry_devices",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("site", sa.Text, sa.ForeignKey("registry_sites.id"), nullable=False),
    sa.Column("cell", sa.Text, sa.ForeignKey("registry_cells.id"), nullable=False),
    sa.Column("lon", sa.Float, nullable=False),
    sa.Column("lat", sa.Float, nullable=False),
    sa.Column("floor", sa.Integer),
    sa.Column("label", sa.Text),
    sa.Column("profile", sa.Text, sa.ForeignKey("registry_profiles.id")),
    sa.Column("attributes_json", sa.Text, nullable=False),
    *_stamps(),
    sa.Index("ix_registry_devices_site_kind", "site", "kind"),
    sa.Index("ix_registry_devices_cell", "cell"),
)


def _v1_tables(conn: Connection) -> None:
    metadata.create_all(conn, tables=[sites, workers, cells, profiles, devices])


MIGRATIONS: Final[Sequence[Step]] = (_v1_tables,)


class RegistrySchemaTooNew(RegistryError):
    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the registry tables are at schema version {found}, this GridWatch knows up to "
            f"{known}: upgrade GridWatch"
        )


TRACK: Final = MigrationTrack(schema_version, MIGRATIONS, _MIGRATE_LOCK, RegistrySchemaTooNew)
