"""People and machines that may call the API: users (argon2 passwords) and API keys,
and which resident filed which report.

Kept in the same SQL database as events, in tables of their own with their own
migration track (`api_schema_version`), so the event store's versions stay its own.
API keys are `gwk_<id>_<secret>`: the id finds the row, the secret is compared by its
SHA-256 (a 256-bit random secret needs no slow hash; passwords people choose do).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import IntegrityError

from accounts.roles import Role
from storage.engine import create_engine
from storage.migrations import (
    MigrationTrack,
    Step,
    read_transaction,
    version_table,
    write_transaction,
)

KEY_PREFIX: Final = "gwk_"
PASSWORD_TIME_COST: Final = 2
PASSWORD_MEMORY_KIB: Final = 19 * 1024
PASSWORD_PARALLELISM: Final = 1
"""argon2id at OWASP's first recommended setting (19 MiB, 2 passes, 1 lane). argon2-cffi's
default (RFC 9106's low-memory profile) takes 64 MiB per hash: at start-up (the dummy
hash below) that was 70 MB of the hub's 158 MB peak RSS, and each login in flight took as
much again. Hashes made with other settings still verify and are rehashed at login."""
HASHES_AT_ONCE: Final = 2
"""Password hashes computed at the same time, at most (one per core here): a burst of
logins queues for them instead of taking 19 MiB each at once."""
_MIGRATE_LOCK: Final = 0x67774150  # PostgreSQL advisory lock id of this track

metadata = sa.MetaData()

api_schema_version = version_table("api_schema_version", metadata)

api_users = sa.Table(
    "api_users",
    metadata,
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("secret_sha256", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False),
)


api_reports = sa.Table(
    "api_reports",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("reporter", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("category", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_api_reports_reporter", "reporter", "created_ms"),
)
"""Who filed which report (the event itself lives in the event store)."""


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[api_users, api_keys, api_reports])


MIGRATIONS: Final[Sequence[Step]] = (_v1,)


class UserStoreError(Exception):
    """A user or key operation was refused; the message says why."""


class UserExists(UserStoreError):
    pass


class UnknownUser(UserStoreError):
    pass


def _too_new(found: int, known: int) -> UserStoreError:
    return UserStoreError(
        f"the API user tables are at version {found}, this GridWatch "
        f"knows up to {known}: upgrade GridWatch"
    )


TRACK: Final = MigrationTrack(api_schema_version, MIGRATIONS, _MIGRATE_LOCK, _too_new)


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: Role
    created_ms: int
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class ReportLink:
    id: str
    reporter: str
    event_id: str
    category: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    role: Role
    subject: str
    """Who acts through the key (a device id, an integration's name)."""
    created_ms: int
    revoked: bool = False


class UserStore:
    """Users and API keys; call `migrate()` first."""

    def __init__(self, url: str, *, hasher: PasswordHasher | None = None) -> None:
        self._engine: Engine = create_engine(url)
        self._hasher = hasher or PasswordHasher(
            time_cost=PASSWORD_TIME_COST,
            memory_cost=PASSWORD_MEMORY_KIB,
            parallelism=PASSWORD_PARALLELISM,
        )
        self._hashing = threading.BoundedSemaphore(HASHES_AT_ONCE)
        self._dummy_hash = self._hash(secrets.token_hex(8))

    def close(self) -> None:
        self._engine.dispose()

    def migrate(self) -> int:
        """Apply this track's missing steps, one transaction each; return the version."""
        return TRACK.migrate(self._engine)

    def ping(self) -> None:
        """Raise if the database cannot be reached (readiness)."""
        with self._engine.connect() as conn:
            conn.execute(sa.select(1))

    # ------------------------------------------------------------------ users

    def add_user(self, username: str, password: str, role: Role) -> User:
        _check_username(username)
        _check_password(password)
        user = User(username, role, _now_ms())
        try:
            with self._write() as conn:
                conn.execute(
                    api_users.insert().values(
                        username=username,
                        password_hash=self._hash(password),
                        role=role.value,
                        created_ms=user.created_ms,
                        disabled=False,
                    )
                )
        except IntegrityError as exc:
            raise UserExists(f"user {username!r} exists") from exc
        return user

    def set_password(self, username: str, password: str) -> None:
        _check_password(password)
        self._update_user(username, password_hash=self._hash(password))

    def set_disabled(self, username: str, disabled: bool) -> None:
        self._update_user(username, disabled=disabled)

    def _update_user(self, username: str, **values: object) -> None:
        with self._write() as conn:
            done = conn.execute(
                api_users.update().where(api_users.c.username == username).values(**values)
            )
            if done.rowcount == 0:
                raise UnknownUser(f"no user {username!r}")

    def get_user(self, username: str) -> User | None:
        with self._read() as conn:
            row = (
                conn.execute(sa.select(api_users).where(api_users.c.username == username))
                .mappings()
                .first()
            )
        return None if row is None else _user(row)

    def list_users(self) -> list[User]:
        with self._read() as conn:
            rows = conn.execute(sa.select(api_users).order_by(api_users.c.username)).mappings()
            return [_user(row) for row in rows]

    def count_users(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(api_users)).scalar_one())

    def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password matches and the user is enabled; same work either way."""
        with self._read() as conn:
            row = (
                conn.execute(sa.select(api_users).where(api_users.c.username == username))
                .mappings()
                .first()
            )
        stored = str(row["password_hash"]) if row is not None else self._dummy_hash
        try:
            with self._hashing:
                self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or row["disabled"]:
            return None
        if self._hasher.check_needs_rehash(stored):
            self._update_user(username, password_hash=self._hash(password))
        return _user(row)

    def _hash(self, password: str) -> str:
        with self._hashing:
            return self._hasher.hash(password)

    # ------------------------------------------------------------------ API keys

    def add_key(self, name: str, role: Role, subject: str) -> tuple[ApiKey, str]:
        """A new key and its plaintext (shown once; only its hash is kept)."""
        if not name.strip() or not subject.strip():
            raise UserStoreError("an API key needs a name and a subject")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        key = ApiKey(key_id, name.strip(), role, subject.strip(), _now_ms())
        with self._write() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    secret_sha256=_sha256(secret),
                    name=key.name,
                    role=role.value,
                    subject=key.subject,
                    created_ms=key.created_ms,
                    revoked=False,
                )
            )
        return key, f"{KEY_PREFIX}{key_id}_{secret}"

    def verify_key(self, token: str) -> ApiKey | None:
        """The key a plaintext names, unless it is wrong, unknown or revoked."""
        if not token.startswith(KEY_PREFIX):
            return None
        key_id, sep, secret = token[len(KEY_PREFIX) :].partition("_")
        if not sep or not key_id or not secret:
            return None
        with self._read() as conn:
            row = (
                conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
            )
        if row is None or row["revoked"]:
            return None
        if not hmac.compare_digest(str(row["secret_sha256"]), _sha256(secret)):
            return None
        return _key(row)

    def revoke_key(self, key_id: str) -> None:
        with self._write() as conn:
            done = conn.execute(
                api_keys.update().where(api_keys.c.id == key_id).values(revoked=True)
            )
            if done.rowcount == 0:
                raise UserStoreError(f"no API key {key_id!r}")

    def api_keys(self) -> list[ApiKey]:
        with self._read() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_ms)).mappings()
            return [_key(row) for row in rows]

    # ------------------------------------------------------------------ reports

    def add_report(self, link: ReportLink) -> None:
        with self._write() as conn:
            conn.execute(
                api_reports.insert().values(
                    id=link.id,
                    reporter=link.reporter,
                    event_id=link.event_id,
                    category=link.category,
                    created_ms=link.created_ms,
                )
            )

    def get_report(self, report_id: str) -> ReportLink | None:
        with self._read() as conn:
            row = (
                conn.execute(sa.select(api_reports).where(api_reports.c.id == report_id))
                .mappings()
                .first()
            )
        return None if row is None else _report(row)

    def reports(
        self, reporter: str | None, *, limit: int, offset: int
    ) -> tuple[list[ReportLink], int]:
        """Reports newest first (of one reporter, or everyone's) and their total."""
        where = [] if reporter is None else [api_reports.c.reporter == reporter]
        query = (
            sa.select(api_reports)
            .where(*where)
            .order_by(api_reports.c.created_ms.desc(), api_reports.c.id)
            .limit(limit)
            .offset(offset)
        )
        count = sa.select(sa.func.count()).select_from(api_reports).where(*where)
        with self._read() as conn:
            rows = [_report(r) for r in conn.execute(query).mappings()]
            return rows, int(conn.execute(count).scalar_one())

    # ------------------------------------------------------------------ transactions

    def _read(self) -> AbstractContextManager[Connection]:
        return read_transaction(self._engine)

    def _write(self) -> AbstractContextManager[Connection]:
        return write_transaction(self._engine)


def _check_username(username: str) -> None:
    if not username or len(username) > 64 or not all(c.isalnum() or c in "._@-" for c in username):
        raise UserStoreError("a username is 1-64 letters, digits and . _ @ -")


def _check_password(password: str) -> None:
    if len(password) < 10:
        raise UserStoreError("a password needs at least 10 characters")


def _user(row: RowMapping) -> User:
    return User(
        username=str(row["username"]),
        role=Role(row["role"]),
        created_ms=int(row["created_ms"]),
        disabled=bool(row["disabled"]),
    )


def _key(row: RowMapping) -> ApiKey:
    return ApiKey(
        id=str(row["id"]),
        name=str(row["name"]),
        role=Role(row["role"]),
        subject=str(row["subject"]),
        created_ms=int(row["created_ms"]),
        revoked=bool(row["revoked"]),
    )


def _report(row: RowMapping) -> ReportLink:
    return ReportLink(
        id=str(row["id"]),
        reporter=str(row["reporter"]),
        event_id=str(row["event_id"]),
        category=str(row["category"]),
        created_ms=int(row["created_ms"]),
    )


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
