"""Partition leases on a real PostgreSQL: one owner at a time, expiry, fencing tokens."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from cluster.leases import ClusterError, LeaseTable, fence_holds
from cluster.partitions import (
    CATCH_ALL,
    fair_share,
    foreign_sites,
    partition_of,
    sites_by_partition,
)
from storage.engine import create_engine
from storage.migrations import write_transaction


def test_a_site_keeps_its_partition_and_partitions_cover_every_site() -> None:
    # Pinned: a change would move every site's state to another partition.
    assert [partition_of(s, 8) for s in ("yingyang", "melbourne_bays", "a")] == [0, 7, 3]
    sites = [f"site-{i}" for i in range(100)]
    grouped = sites_by_partition(sites, 8)
    assert sorted(s for group in grouped.values() for s in group) == sorted(sites)
    assert all(len(group) > 0 for group in grouped.values())
    assert fair_share(8, 3) == 3 and fair_share(8, 1) == 8 and fair_share(8, 0) == 8


def test_only_the_catch_all_partition_skips_the_others_sites() -> None:
    grouped = sites_by_partition(["yingyang", "melbourne_bays", "a", "b"], 8)
    others = foreign_sites(CATCH_ALL, grouped)
    assert others is not None and "yingyang" not in others
    assert sorted(others) == sorted(s for p, ss in grouped.items() if p != CATCH_ALL for s in ss)
    assert foreign_sites(7, grouped) is None


def test_one_owner_until_the_lease_expires_then_a_new_token(postgres_db: str) -> None:
    table = LeaseTable(postgres_db)
    table.prepare(4)
    first = table.acquire("a", 2, ttl_s=1.0)
    assert first == 1
    assert table.acquire("b", 2, ttl_s=1.0) is None  # held
    assert table.renew("a", 2, first, ttl_s=1.0)
    time.sleep(1.2)
    second = table.acquire("b", 2, ttl_s=5.0)
    assert second == 2  # expired: taken, with a new token
    assert not table.renew("a", 2, first, ttl_s=1.0)  # the old owner cannot renew
    lease = {x.partition: x for x in table.table()}[2]
    assert lease.owner == "b" and lease.live and lease.token == 2
    table.release("b", 2, second)
    assert not {x.partition: x for x in table.table()}[2].live
    assert table.acquire("a", 2, ttl_s=5.0) == 3
    table.close()


def test_the_partition_count_is_fixed(postgres_db: str) -> None:
    table = LeaseTable(postgres_db)
    table.prepare(4)
    table.prepare(4)  # again, and by another node: fine
    with pytest.raises(ClusterError, match="fixed"):
        table.prepare(8)
    table.close()


def test_leases_need_postgresql(tmp_path: object) -> None:
    with pytest.raises(ClusterError, match="PostgreSQL"):
        LeaseTable("sqlite:////tmp/x.db")


def test_live_nodes_are_the_ones_that_beat_within_their_ttl(postgres_db: str) -> None:
    table = LeaseTable(postgres_db)
    table.prepare(2)
    table.beat("a", 0.5)
    table.beat("b", 30.0)
    assert table.live_nodes() == ["a", "b"]
    time.sleep(0.7)
    assert table.live_nodes() == ["b"]
    table.leave("b")
    assert table.live_nodes() == []
    table.close()


def test_the_fence_refuses_a_stale_token_and_blocks_a_takeover_until_commit(
    postgres_db: str,
) -> None:
    table = LeaseTable(postgres_db)
    table.prepare(1)
    token = table.acquire("a", 0, ttl_s=0.2)
    assert token is not None
    engine = create_engine(postgres_db)
    time.sleep(0.3)  # expired, not yet taken: the old owner's token still holds
    with write_transaction(engine) as conn:
        assert fence_holds(conn, 0, token)
        # While this transaction holds the row, a takeover waits for it.
        taker = create_engine(postgres_db)
        with taker.connect() as other:
            other.execute(sa.text("SET lock_timeout = '200ms'"))
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                other.execute(
                    sa.text("UPDATE cluster_leases SET token = token + 1 WHERE partition = 0")
                )
        taker.dispose()
    assert table.acquire("b", 0, ttl_s=5.0) == token + 1
    with write_transaction(engine) as conn:
        assert not fence_holds(conn, 0, token)
    engine.dispose()
    table.close()
