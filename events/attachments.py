"""What the field loop keeps beside the events: photos (grid workers closing an event,
residents reporting one) and the public tokens of resident reports.

Photos are files named by their SHA-256 under one directory (`<root>/ab/abcdef…`),
written to a temporary file, fsynced and renamed into place, so a reader sees a whole
photo or none; the same bytes uploaded twice are one file. Their type is sniffed from
their first bytes (JPEG, PNG or WebP; whatever the client's name or Content-Type says),
and every read checks the checksum again. A path is only ever built from a checksum
this module computed and validated, and must resolve inside the root: no client string
reaches the file system.

The rows (which photo belongs to which event, who sent it, its type, size and checksum;
the hash of each report's public token) live in the event store's database, on a
migration track of their own (`attachment_schema_version`), like the users' and the
registry's: the event store's schema stays its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from storage.engine import create_engine
from storage.migrations import (
    MigrationTrack,
    Step,
    read_transaction,
    version_table,
    write_transaction,
)

_MIGRATE_LOCK: Final = 0x67774154  # PostgreSQL advisory lock id of this track ("gwAT")
SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
ATTACHMENT_ID: Final = re.compile(r"[0-9a-f]{32}")
TOKEN_BYTES: Final = 24
"""Random bytes in a public report token (192 bits; 32 URL-safe characters)."""
TOKEN_PATTERN: Final = r"^[A-Za-z0-9_-]{32}$"  # noqa: S105  # a pattern, not a secret


class MediaType(StrEnum):
    """The photo types the hub accepts (and serves back with this Content-Type)."""

    JPEG = "image/jpeg"
    PNG = "image/png"
    WEBP = "image/webp"

    @property
    def extension(self) -> str:
        return {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}[self.value]


def sniff(data: bytes) -> MediaType | None:
    """The type the bytes themselves declare (magic numbers), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return MediaType.JPEG
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaType.PNG
    if len(data) >= 16 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return MediaType.WEBP
    return None


class AttachmentError(Exception):
    """A photo was refused or cannot be read; the message says why."""


class PhotoTooLarge(AttachmentError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the photo is {size} bytes; photos may be at most {limit} bytes")
        self.size, self.limit = size, limit


class UnsupportedPhoto(AttachmentError):
    """Not a JPEG, PNG or WebP image (or empty)."""


class UnknownAttachment(AttachmentError):
    pass


class CorruptAttachment(AttachmentError):
    """The file is missing or no longer matches its checksum."""


def check_photo(data: bytes, max_bytes: int) -> MediaType:
    """The photo's type, if it is one we take and within the size limit."""
    if len(data) > max_bytes:
        raise PhotoTooLarge(len(data), max_bytes)
    if not data:
        raise UnsupportedPhoto("the file is empty")
    found = sniff(data)
    if found is None:
        raise UnsupportedPhoto("not a JPEG, PNG or WebP image (judged by its first bytes)")
    return found


# ---------------------------------------------------------------------- schema

metadata = sa.MetaData()

attachment_schema_version = version_table("attachment_schema_version", metadata)

attachments = sa.Table(
    "attachments",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("media_type", sa.Text, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("uploader", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_attachments_event", "event_id", "created_ms"),
)
"""Which photo belongs to which event (the bytes are on disk, named by `sha256`)."""

report_tokens = sa.Table(
    "report_tokens",
    metadata,
    sa.Column("token_sha256", sa.Text, primary_key=True),
    sa.Column("report_id", sa.Text, nullable=False, unique=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
)
"""The public status link of a resident report: only the token's hash is kept."""


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[attachments, report_tokens])


MIGRATIONS: Final[Sequence[Step]] = (_v1,)


def _too_new(found: int, known: int) -> AttachmentError:
    return AttachmentError(
        f"the attachment tables are at version {found}, this GridWatch knows up to "
        f"{known}: upgrade GridWatch"
    )


TRACK: Final = MigrationTrack(attachment_schema_version, MIGRATIONS, _MIGRATE_LOCK, _too_new)


@dataclass(frozen=True, slots=True)
class Attachment:
    id: str
    event_id: str
    sha256: str
    media_type: MediaType
    size_bytes: int
    uploader: str
    """Who sent it: a worker id, an operator, or the public reporter."""
    source: str
    """`worker`, `resident` or `operator`."""
    created_ms: int


class AttachmentStore:
    """Photos on disk under `directory`, their rows in the database at `url`;
    call `migrate()` first."""

    def __init__(self, url: str, directory: Path) -> None:
        self._engine = create_engine(url)
        self.root = Path(directory)

    def migrate(self) -> int:
        """Apply this track's missing steps and make the photo directory; return the version."""
        self.root.mkdir(parents=True, exist_ok=True)
        return TRACK.migrate(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    # ------------------------------------------------------------------ photos

    def add(
        self,
        event_id: str,
        data: bytes,
        *,
        uploader: str,
        source: str,
        max_bytes: int,
        at_ms: int | None = None,
    ) -> Attachment:
        """Store a photo of an event: the file first (durably), then its row."""
        media = check_photo(data, max_bytes)
        digest = hashlib.sha256(data).hexdigest()
        self._write_file(digest, data)
        attachment = Attachment(
            id=secrets.token_hex(16),
            event_id=event_id,
            sha256=digest,
            media_type=media,
            size_bytes=len(data),
            uploader=uploader,
            source=source,
            created_ms=_now_ms() if at_ms is None else at_ms,
        )
        with self._write() as conn:
            conn.execute(
                attachments.insert().values(
                    id=attachment.id,
                    event_id=event_id,
                    sha256=digest,
                    media_type=media.value,
                    size_bytes=len(data),
                    uploader=uploader,
                    source=source,
                    created_ms=attachment.created_ms,
                )
            )
        return attachment

    def get(self, attachment_id: str) -> Attachment | None:
        if not ATTACHMENT_ID.fullmatch(attachment_id):
            return None
        with self._read() as conn:
            row = (
                conn.execute(attachments.select().where(attachments.c.id == attachment_id))
                .mappings()
                .first()
            )
        return None if row is None else _attachment(row)

    def of_event(self, event_id: str) -> list[Attachment]:
        """The event's photos, oldest first."""
        query = (
            attachments.select()
            .where(attachments.c.event_id == event_id)
            .order_by(attachments.c.created_ms, attachments.c.id)
        )
        with self._read() as conn:
            return [_attachment(r) for r in conn.execute(query).mappings()]

    def read(self, attachment: Attachment) -> bytes:
        """The photo's bytes, checked against its checksum."""
        path = self.path_of(attachment.sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise CorruptAttachment(f"photo {attachment.id} is missing from {self.root}") from exc
        if hashlib.sha256(data).hexdigest() != attachment.sha256:
            raise CorruptAttachment(f"photo {attachment.id} no longer matches its checksum")
        return data

    def path_of(self, sha256: str) -> Path:
        """Where the photo with this checksum lives; refuses anything but a checksum, and
        any path that would resolve outside the root (a planted symlink)."""
        if not SHA256_HEX.fullmatch(sha256):
            raise UnknownAttachment(f"{sha256[:80]!r} is no SHA-256 checksum")
        root = self.root.resolve()
        path = (root / sha256[:2] / sha256).resolve()
        if not path.is_relative_to(root):
            raise UnknownAttachment(f"photo {sha256} resolves outside {root}")
        return path

    def files(self) -> Iterator[Path]:
        """Every stored photo file (for checks and clean-ups)."""
        for path in sorted(self.root.glob("??/*")):
            if SHA256_HEX.fullmatch(path.name):
                yield path

    def _write_file(self, digest: str, data: bytes) -> None:
        path = self.path_of(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.parent / f".{digest}.{secrets.token_hex(4)}.tmp"
        try:
            with open(temp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temp, 0o640)
            os.replace(temp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        _fsync_dir(path.parent)

    # ------------------------------------------------------------------ report tokens

    def new_report_token(self, report_id: str, at_ms: int | None = None) -> str:
        """A fresh public token for a report (shown once; only its hash is kept)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with self._write() as conn:
            conn.execute(
                report_tokens.insert().values(
                    token_sha256=_token_hash(token),
                    report_id=report_id,
                    created_ms=_now_ms() if at_ms is None else at_ms,
                )
            )
        return token

    def report_of_token(self, token: str) -> str | None:
        """The report a token opens, or None for any other string."""
        if not re.fullmatch(TOKEN_PATTERN, token):
            return None
        query = sa.select(report_tokens.c.report_id).where(
            report_tokens.c.token_sha256 == _token_hash(token)
        )
        with self._read() as conn:
            found = conn.execute(query).scalar_one_or_none()
        return None if found is None else str(found)

    # ------------------------------------------------------------------ transactions

    def _read(self) -> AbstractContextManager[Connection]:
        return read_transaction(self._engine)

    def _write(self) -> AbstractContextManager[Connection]:
        return write_transaction(self._engine)


def _attachment(row: RowMapping) -> Attachment:
    return Attachment(
        id=str(row["id"]),
        event_id=str(row["event_id"]),
        sha256=str(row["sha256"]),
        media_type=MediaType(row["media_type"]),
        size_bytes=int(row["size_bytes"]),
        uploader=str(row["uploader"]),
        source=str(row["source"]),
        created_ms=int(row["created_ms"]),
    )


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
