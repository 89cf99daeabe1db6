"""The three migration tracks (events, registry, API users) share one database and one
`MigrationTrack` helper but keep their own version tables, locks and refusals."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from accounts import users as api_users
from accounts.users import UserStore, UserStoreError
from events import migrations as event_migrations
from events.store import EventStore, SchemaTooNew
from registry import migrations as registry_migrations
from registry.migrations import RegistrySchemaTooNew
from registry.store import RegistryStore
from storage.engine import create_engine
from storage.migrations import MigrationTrack

TRACKS: dict[str, MigrationTrack] = {
    "events": event_migrations.TRACK,
    "registry": registry_migrations.TRACK,
    "users": api_users.TRACK,
}


def _versions(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {name: track.current_version(conn) for name, track in TRACKS.items()}
    finally:
        engine.dispose()


def test_tracks_have_their_own_tables_and_locks() -> None:
    assert len({t.table.name for t in TRACKS.values()}) == 3
    assert len({t.lock_id for t in TRACKS.values()}) == 3
    for track in TRACKS.values():
        assert [c.name for c in track.table.columns] == ["version", "applied_ms"]


def test_each_store_migrates_only_its_own_track(event_db_url: str) -> None:
    assert _versions(event_db_url) == {"events": 0, "registry": 0, "users": 0}
    registry = RegistryStore(event_db_url)
    try:
        assert registry.migrate() == 1
        assert _versions(event_db_url) == {"events": 0, "registry": 1, "users": 0}
        assert registry.migrate() == 1  # idempotent
    finally:
        registry.close()
    with EventStore(event_db_url) as store:
        assert store.migrate() == 4
    users = UserStore(event_db_url)
    try:
        assert users.migrate() == 1
    finally:
        users.close()
    assert _versions(event_db_url) == {"events": 4, "registry": 1, "users": 1}


@pytest.mark.parametrize(
    ("name", "error"),
    [("events", SchemaTooNew), ("registry", RegistrySchemaTooNew), ("users", UserStoreError)],
)
def test_a_newer_track_is_refused_with_its_own_error(
    event_db_url: str, name: str, error: type[Exception]
) -> None:
    track = TRACKS[name]
    engine = create_engine(event_db_url)
    try:
        assert track.migrate(engine) == len(track.steps)
        with engine.begin() as conn:
            conn.execute(track.table.insert().values(version=9, applied_ms=0))
        with pytest.raises(error, match="upgrade GridWatch"):
            track.migrate(engine)
        # The other tracks are not affected by this one being ahead.
        for other, other_track in TRACKS.items():
            if other != name:
                assert other_track.migrate(engine) == len(other_track.steps)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(track.table.c.version).order_by("version")).all()
        assert [r.version for r in rows] == [*range(1, len(track.steps) + 1), 9]
    finally:
        engine.dispose()
