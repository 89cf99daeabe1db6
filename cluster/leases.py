"""Partition ownership: one lease row per partition in PostgreSQL, with a fencing token.

A hub owns a partition while its lease is unexpired; it renews it every third of the
time to live. Taking a lease (free, or expired) increments its token, and the owner's
writes to the event store check, in the same transaction, that the token is still
theirs (`fence_holds`, `SELECT ... FOR SHARE`): a hub that stalled past its lease and
wakes up finds its writes refused instead of interleaving with its successor's. Times are
the database's clock (`clock_timestamp()`), so hubs on machines with skewed clocks agree
on who holds what.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from storage.engine import create_engine
from storage.migrations import write_transaction

metadata = sa.MetaData()

leases = sa.Table(
    "cluster_leases",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("owner", sa.Text),
    sa.Column("token", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("acquired_at", sa.Float, nullable=False),
)

nodes = sa.Table(
    "cluster_nodes",
    metadata,
    sa.Column("node", sa.Text, primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
)

_LOCK_ID: Final = 0x67775F636C75  # serialises table creation between hubs starting together


def _now() -> sa.ColumnElement[float]:
    """The database's clock in seconds: every hub judges expiry by the same clock."""
    return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)


class ClusterError(Exception):
    """The lease table cannot be used as configured."""


class FencedOut(Exception):
    """Another hub took the partition's lease: this one must not write for it any more."""

    def __init__(self, partition: int, token: int) -> None:
        super().__init__(
            f"partition {partition}: lease token {token} is no longer ours (another hub "
            "took the partition); refusing to write"
        )
        self.partition = partition
        self.token = token


@dataclass(frozen=True, slots=True)
class Lease:
    partition: int
    owner: str | None
    token: int
    expires_in_s: float
    """Seconds until the lease may be taken (negative: expired)."""

    @property
    def live(self) -> bool:
        return self.owner is not None and self.expires_in_s > 0


class LeaseTable:
    """The cluster's leases and live hubs, in the event store's PostgreSQL database."""

    def __init__(self, url: str) -> None:
        parsed = sa.make_url(url)
        if not parsed.drivername.startswith(("postgresql", "postgres")):
            raise ClusterError(f"partition leases need PostgreSQL, not {parsed.drivername!r}")
        self._engine = create_engine(url)

    def close(self) -> None:
        self._engine.dispose()

    def prepare(self, partitions: int) -> None:
        """Create the tables and one row per partition; refuse a changed partition count
        (a site's partition, and so where its state lives, would change)."""
        with write_transaction(self._engine) as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_ID)))
            metadata.create_all(conn, checkfirst=True)
            found = int(conn.execute(sa.select(sa.func.count()).select_from(leases)).scalar_one())
            if found and found != partitions:
                raise ClusterError(
                    f"cluster.partitions is {partitions} but the cluster was set up with "
                    f"{found}: the count is fixed (a site's partition would move)"
                )
            if not found:
                conn.execute(
                    leases.insert(),
                    [
                        {
                            "partition": p,
                            "owner": None,
                            "token": 0,
                            "expires_at": 0.0,
                            "acquired_at": 0.0,
                        }
                        for p in range(partitions)
                    ],
                )

    # ------------------------------------------------------------------ live hubs

    def beat(self, node: str, ttl_s: float) -> None:
        """Say this hub is alive for another `ttl_s`."""
        insert = pg_insert(nodes).values(node=node, expires_at=_now() + ttl_s, started_at=_now())
        upsert = insert.on_conflict_do_update(
            index_elements=[nodes.c.node], set_={"expires_at": insert.excluded.expires_at}
        )
        with write_transaction(self._engine) as conn:
            conn.execute(upsert)

    def live_nodes(self) -> list[str]:
        query = sa.select(nodes.c.node).where(nodes.c.expires_at > _now()).order_by(nodes.c.node)
        with self._engine.connect() as conn:
            return [str(n) for n in conn.execute(query).scalars()]

    def leave(self, node: str) -> None:
        with write_transaction(self._engine) as conn:
            conn.execute(nodes.delete().where(nodes.c.node == node))

    # ------------------------------------------------------------------ leases

    def acquire(self, node: str, partition: int, ttl_s: float) -> int | None:
        """Take a free or expired partition; its new token, or None when it is held."""
        statement = (
            leases.update()
            .where(
                leases.c.partition == partition,
                sa.or_(leases.c.owner.is_(None), leases.c.expires_at < _now()),
            )
            .values(
                owner=node,
                token=leases.c.token + 1,
                expires_at=_now() + ttl_s,
                acquired_at=_now(),
            )
            .returning(leases.c.token)
        )
        with write_transaction(self._engine) as conn:
            token = conn.execute(statement).scalar_one_or_none()
        return None if token is None else int(token)

    def renew(self, node: str, partition: int, token: int, ttl_s: float) -> bool:
        """Extend our lease; False when it is no longer ours (taken after it expired)."""
        statement = (
            leases.update()
            .where(*_held_by(node, partition, token))
            .values(expires_at=_now() + ttl_s)
            .returning(leases.c.partition)
        )
        with write_transaction(self._engine) as conn:
            return conn.execute(statement).first() is not None

    def release(self, node: str, partition: int, token: int) -> None:
        """Give the partition up now (its hub has stopped and committed)."""
        statement = (
            leases.update()
            .where(*_held_by(node, partition, token))
            .values(owner=None, expires_at=0.0)
        )
        with write_transaction(self._engine) as conn:
            conn.execute(statement)

    def table(self) -> list[Lease]:
        """Every partition's lease, as the database sees it now."""
        now = _now().label("now")
        query = sa.select(leases, now).order_by(leases.c.partition)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            Lease(
                partition=int(r["partition"]),
                owner=r["owner"],
                token=int(r["token"]),
                expires_in_s=float(r["expires_at"]) - float(r["now"]),
            )
            for r in rows
        ]


def _held_by(node: str, partition: int, token: int) -> list[sa.ColumnElement[bool]]:
    """The partition's row while `node` holds it with `token`."""
    return [leases.c.partition == partition, leases.c.owner == node, leases.c.token == token]


def fence_holds(conn: Connection, partition: int, token: int) -> bool:
    """Inside a write transaction: whether `token` is still the partition's. The row stays
    share-locked until the transaction ends, so nobody takes the lease in between."""
    query = (
        sa.select(leases.c.token).where(leases.c.partition == partition).with_for_update(read=True)
    )
    return conn.execute(query).scalar_one_or_none() == token
