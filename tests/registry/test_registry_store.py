"""The registry store on SQLite and PostgreSQL: CRUD, references, retiring, paging."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from events.store import EventStore
from registry.errors import Conflict, Invalid, NotFound
from registry.model import Status
from registry.schema import (
    CellPatch,
    CellSpec,
    DevicePatch,
    DeviceSpec,
    ProfileSpec,
    ScheduleRuleSpec,
    SitePatch,
    SiteSpec,
    WorkerSpec,
)
from registry.store import RegistryStore

SQUARE = [(113.0, 22.0), (113.01, 22.0), (113.01, 22.01), (113.0, 22.01)]
EAST = [(113.01, 22.0), (113.02, 22.0), (113.02, 22.01), (113.01, 22.01)]


@pytest.fixture
def store(event_db_url: str) -> Iterator[RegistryStore]:
    with RegistryStore(event_db_url) as reg:
        reg.migrate()
        yield reg


def seed(store: RegistryStore) -> None:
    store.create_site(SiteSpec(id="s1", name="Site one", timezone="Asia/Shanghai"))
    store.create_worker(WorkerSpec(id="w1", name="Chen"))
    store.create_cell(CellSpec(id="c1", site="s1", name="West", worker="w1", polygon=SQUARE))
    store.create_cell(CellSpec(id="c2", site="s1", name="East", worker="w1", polygon=EAST))


def device(ident: str, kind: str = "smoke", cell: str = "c1", lon: float = 113.005) -> DeviceSpec:
    return DeviceSpec.model_validate(
        {
            "id": ident,
            "kind": kind,
            "site": "s1",
            "cell": cell,
            "location": {"lon": lon, "lat": 22.005},
            "attributes": {"room": "kitchen"},
        }
    )


def test_shares_the_event_database_with_its_own_migration_track(event_db_url: str) -> None:
    with EventStore(event_db_url) as events, RegistryStore(event_db_url) as reg:
        assert events.migrate() == 4
        assert reg.migrate() == 1
        assert reg.migrate() == 1  # idempotent
        assert events.migrate() == 4


def test_create_read_update_retire_a_device(store: RegistryStore) -> None:
    seed(store)
    created = store.create_device(device("d1"))
    assert created.kind == "smoke" and created.cell == "c1" and not created.retired
    assert store.get_device("d1") == created
    moved = store.update_device(
        "d1",
        DevicePatch.model_validate({"cell": "c2", "location": {"lon": 113.015, "lat": 22.005}}),
    )
    assert moved.cell == "c2" and moved.attributes == {"room": "kitchen"}
    retired = store.retire_device("d1")
    assert retired.retired
    with pytest.raises(Conflict):
        store.update_device("d1", DevicePatch(attributes={}))
    with pytest.raises(Conflict, match="never reused"):
        store.create_device(device("d1"))
    with pytest.raises(NotFound):
        store.get_device("nope")


def test_references_are_checked(store: RegistryStore) -> None:
    seed(store)
    with pytest.raises(Invalid) as bad:
        store.create_device(
            DeviceSpec.model_validate(
                {
                    "id": "d9",
                    "kind": "teapot",
                    "site": "s1",
                    "cell": "c1",
                    "location": {"lon": 113.015, "lat": 22.005},
                }
            )
        )
    locs = {p.loc for p in bad.value.problems}
    assert locs == {"kind", "location"}
    with pytest.raises(Invalid, match="unknown cell"):
        store.create_device(device("d9", cell="c404"))
    store.create_profile(ProfileSpec(id="door-std", kind="access", interval_s=60))
    with pytest.raises(Invalid, match="is for kind 'access'"):
        store.create_device(device("d9").model_copy(update={"profile": "door-std"}))
    # reshaping a cell so that a device falls out of it is refused
    store.create_device(device("d1"))
    with pytest.raises(Invalid, match="not inside"):
        store.update_cell(
            "c1", CellPatch(polygon=[(113.0, 22.0), (113.004, 22.0), (113.0, 22.004)])
        )


def test_retiring_what_is_still_in_use_is_refused(store: RegistryStore) -> None:
    seed(store)
    store.create_device(device("d1"))
    with pytest.raises(Conflict, match="active devices d1"):
        store.retire_cell("c1")
    with pytest.raises(Conflict, match="still looks after"):
        store.retire_worker("w1")
    store.retire_device("d1")
    assert store.retire_cell("c1").retired_ms is not None
    assert [c.id for c in store.list_cells(site="s1").items] == ["c2"]
    assert [c.id for c in store.list_cells(status=Status.RETIRED).items] == ["c1"]


def test_filters_and_pagination(store: RegistryStore) -> None:
    seed(store)
    for i in range(7):
        store.create_device(
            device(f"smoke-{i}", cell="c1" if i % 2 else "c2", lon=113.005 if i % 2 else 113.015)
        )
    store.create_device(
        DeviceSpec.model_validate(
            {
                "id": "door-1",
                "kind": "access",
                "site": "s1",
                "cell": "c1",
                "location": {"lon": 113.002, "lat": 22.002},
                "attributes": {"door": "main"},
            }
        )
    )
    page = store.list_devices(kind="smoke", limit=3, offset=0)
    assert page.total == 7 and [d.id for d in page.items] == ["smoke-0", "smoke-1", "smoke-2"]
    last = store.list_devices(kind="smoke", limit=3, offset=6)
    assert [d.id for d in last.items] == ["smoke-6"]
    assert store.list_devices(cell="c1").total == 4  # 3 smoke + the door
    assert store.list_devices(site="s1", kind="access").total == 1
    store.retire_device("smoke-0")
    assert store.list_devices(kind="smoke").total == 6
    assert store.list_devices(kind="smoke", status=Status.ALL).total == 7
    with pytest.raises(Invalid):
        store.list_devices(limit=0)


def test_a_schedule_in_use_cannot_be_dropped(store: RegistryStore) -> None:
    rules = [ScheduleRuleSpec(days=["mon"], open="08:00", close="18:00")]
    store.create_site(
        SiteSpec(id="s1", name="One", timezone="Asia/Shanghai", schedules={"office": rules})
    )
    store.create_cell(CellSpec(id="c1", site="s1", name="West", polygon=SQUARE))
    door = device("door-1", kind="access").model_copy(
        update={"attributes": {"door": "main", "schedule": "office"}}
    )
    store.create_device(door)
    with pytest.raises(Invalid, match="uses schedule 'office'"):
        store.update_site("s1", SitePatch(schedules={}))
    with pytest.raises(Invalid, match="unknown schedule 'night'"):
        store.update_device("door-1", DevicePatch(attributes={"schedule": "night"}))
    assert store.update_site("s1", SitePatch(name="Renamed")).schedules["office"][0].open == "08:00"
