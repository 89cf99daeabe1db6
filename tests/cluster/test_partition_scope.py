"""One partition's hub in a store several hubs share: its own events, outbox and state
names, and writes fenced by its lease (real PostgreSQL); the settings a node derives for
a partition's hub; what cluster mode refuses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cluster.leases import FencedOut, LeaseTable
from events.manager import EventManager
from events.model import Detection
from events.store import EventStore, StoreScope
from hub.cluster import partition_settings
from hub.runtime import subscription_filters
from hub.settings import Settings, SettingsError, load_settings
from hub.wiring import store_scope

T0 = 1_800_000_000_000


def raise_on(store: EventStore, site: str, key: str) -> None:
    manager = EventManager(store, workers={}, sinks=["mqtt"])
    manager.handle(Detection("door_forced", key, True, T0, site, title="Door forced"), T0)


def test_a_partition_sees_its_own_sites_events_outbox_and_state(postgres_db: str) -> None:
    with EventStore(postgres_db) as whole:
        whole.migrate()
    first = EventStore(postgres_db, StoreScope("p000", frozenset({"north"})))
    second = EventStore(postgres_db, StoreScope("p001", frozenset({"south"})))
    raise_on(first, "north", "n-door")
    raise_on(second, "south", "s-door")
    assert [e.site for e in first.list_events()] == ["north"]
    assert [e.site for e in second.list_events()] == ["south"]
    assert [i.event.site for i in first.outbox_due("mqtt", T0 + 1)] == ["north"]
    assert first.outbox_pending() == {"mqtt": 1} and first.count_events() == 1
    first.put_snapshot("rules-engine", b"north state", T0)
    second.put_snapshot("rules-engine", b"south state", T0)
    first.put_consumer_state("anomaly", {"dev": b"n"}, T0)
    assert first.get_snapshot("rules-engine") == b"north state"
    assert second.get_snapshot("rules-engine") == b"south state"
    assert second.get_consumer_state("anomaly") == {}
    with EventStore(postgres_db) as whole:  # the API's view: everything, names as stored
        assert sorted(e.site for e in whole.list_events()) == ["north", "south"]
        assert whole.get_snapshot("rules-engine@p001") == b"south state"
    first.close()
    second.close()


def test_the_catch_all_partition_sees_every_site_but_the_other_partitions(
    postgres_db: str,
) -> None:
    """Sites no partition knows are the catch-all's: their events, outbox and timers."""
    with EventStore(postgres_db) as whole:
        whole.migrate()
    catch_all = EventStore(
        postgres_db, StoreScope("p000", frozenset({"north"}), foreign=frozenset({"south"}))
    )
    other = EventStore(postgres_db, StoreScope("p001", frozenset({"south"})))
    raise_on(catch_all, "north", "n-door")
    raise_on(catch_all, "unregistered", "u-door")
    raise_on(other, "south", "s-door")
    assert sorted(e.site for e in catch_all.list_events()) == ["north", "unregistered"]
    assert [e.site for e in other.list_events()] == ["south"]
    due = catch_all.outbox_due("mqtt", T0 + 1)
    assert sorted(i.event.site for i in due) == ["north", "unregistered"]
    catch_all.close()
    other.close()


def test_writes_stop_once_another_hub_takes_the_lease(postgres_db: str, tmp_path: Path) -> None:
    table = LeaseTable(postgres_db)
    table.prepare(2)
    token = table.acquire("node-a", 1, ttl_s=0.1)
    assert token is not None
    settings = Settings.model_construct(
        **{
            **{name: getattr(Settings(), name) for name in Settings.model_fields},
            "cluster": Settings().cluster.model_copy(
                update={"partition": 1, "partition_sites": ["south"], "lease_token": token}
            ),
        }
    )
    scope = store_scope(settings)
    assert scope is not None and scope.name == "p001" and scope.sites == {"south"}
    store = EventStore(postgres_db, scope)
    store.migrate()
    raise_on(store, "south", "before")  # our lease (expired, but nobody took it yet)
    time.sleep(0.2)
    assert table.acquire("node-b", 1, ttl_s=30) == token + 1
    with pytest.raises(FencedOut, match="no longer ours"):
        raise_on(store, "south", "after")
    with pytest.raises(FencedOut):
        store.put_snapshot("rules-position", b"{}", T0)
    assert [e.key for e in store.list_events()] == ["before"]
    store.close()
    table.close()


def test_a_partitions_hub_gets_its_own_session_log_and_sites(tmp_path: Path) -> None:
    base = Settings().model_copy(
        update={
            "spool": Settings().spool.model_copy(update={"directory": tmp_path / "spool"}),
            "hub": Settings().hub.model_copy(update={"data_dir": tmp_path / "data"}),
        }
    )
    derived = partition_settings(base, 3, 7, ("north", "west"), b"k" * 64)
    assert derived.mqtt.client_id == "gridwatch-hub-p003"
    assert derived.spool.directory == tmp_path / "spool" / "p003"
    assert derived.deadletters.directory.name == "p003"
    assert derived.hub.data_dir == tmp_path / "data" / "partitions" / "p003"
    assert derived.hub.credential_hash_key is not None
    assert derived.hub.credential_hash_key.get_secret_value() == "k" * 64
    assert derived.anomaly.model_dir == tmp_path / "data" / "anomaly"  # the node's models
    assert not derived.api.enabled and not derived.cluster.enabled
    assert (derived.cluster.partition, derived.cluster.lease_token) == (3, 7)
    assert derived.cluster.partition_sites == ["north", "west"]
    assert subscription_filters(derived) == ["gw/v1/north/#", "gw/v1/west/#"]
    assert subscription_filters(base) == ["gw/v1/#"]
    catch_all = partition_settings(base, 0, 1, ("east",), b"k" * 64, ("north", "west"))
    assert subscription_filters(catch_all) == ["gw/v1/#"]  # all but the foreign sites
    assert catch_all.cluster.foreign_sites == ["north", "west"]
    scope = store_scope(catch_all)
    assert scope is not None and scope.foreign == frozenset({"north", "west"})


def test_cluster_mode_needs_postgresql_and_no_shared_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text("[cluster]\nenabled = true\n")
    with pytest.raises(SettingsError, match="PostgreSQL"):
        load_settings(config)
    config.write_text(
        '[cluster]\nenabled = true\n[events]\nstore_url = "postgresql://h/db"\n'
        '[mqtt]\nshared_group = "g"\n'
    )
    with pytest.raises(SettingsError, match="shared_group"):
        load_settings(config)
    config.write_text('[cluster]\nenabled = true\n[events]\nstore_url = "postgresql://h/db"\n')
    assert load_settings(config).cluster.partitions == 8
    monkeypatch.setenv("GRIDWATCH_CLUSTER__PARTITION", "2")
    with pytest.raises(SettingsError, match="set by the cluster node"):
        load_settings(config)
