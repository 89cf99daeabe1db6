"""The field loop's photo store: checksums, type sniffing, size limits, no path from
outside, and the residents' report tokens (only their hashes kept)."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from events import attachments as att
from events.attachments import (
    AttachmentError,
    AttachmentStore,
    CorruptAttachment,
    MediaType,
    PhotoTooLarge,
    UnknownAttachment,
    UnsupportedPhoto,
    check_photo,
    sniff,
)
from storage.engine import create_engine


def photo(kind: str = "PNG", size: tuple[int, int] = (32, 24), colour: str = "teal") -> bytes:
    """A real image, encoded by Pillow."""
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=kind)
    return out.getvalue()


@pytest.fixture
def store(event_db_url: str, tmp_path: Path) -> Iterator[AttachmentStore]:
    found = AttachmentStore(event_db_url, tmp_path / "photos")
    found.migrate()
    try:
        yield found
    finally:
        found.close()


# ---------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("kind", "media"),
    [("JPEG", MediaType.JPEG), ("PNG", MediaType.PNG), ("WEBP", MediaType.WEBP)],
)
def test_real_images_are_recognised_by_their_bytes(kind: str, media: MediaType) -> None:
    data = photo(kind)
    assert sniff(data) is media
    assert check_photo(data, len(data)) is media


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a" + b"\0" * 64,
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        b"<!doctype html><script>alert(1)</script>",
        b"%PDF-1.7\n" + b"\0" * 64,
        b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 16,  # RIFF, but not WebP
        b"\xff\xd8",  # a JPEG's first two bytes only
    ],
)
def test_anything_else_is_no_photo_whatever_it_claims(data: bytes) -> None:
    assert sniff(data) is None
    with pytest.raises(UnsupportedPhoto):
        check_photo(data, 1 << 20)


def test_the_size_limit_is_checked_before_the_type() -> None:
    data = photo("JPEG", (200, 200))
    assert check_photo(data, len(data)) is MediaType.JPEG  # exactly at the limit: taken
    with pytest.raises(PhotoTooLarge) as caught:
        check_photo(data, len(data) - 1)
    assert (caught.value.size, caught.value.limit) == (len(data), len(data) - 1)
    with pytest.raises(PhotoTooLarge):
        check_photo(b"not even an image" * 100, 10)


# ---------------------------------------------------------------------- storing and reading


def test_a_photo_is_stored_under_its_checksum_and_read_back_checked(
    store: AttachmentStore,
) -> None:
    data = photo("PNG")
    digest = hashlib.sha256(data).hexdigest()
    added = store.add("ev-1", data, uploader="w-yy-g01", source="worker", max_bytes=1 << 20)
    assert (added.sha256, added.size_bytes, added.media_type) == (digest, len(data), MediaType.PNG)
    assert len(added.id) == 32 and added.event_id == "ev-1"
    path = store.root / digest[:2] / digest
    assert path.read_bytes() == data
    assert store.read(added) == data
    assert store.get(added.id) == added
    assert store.of_event("ev-1") == [added] and store.of_event("ev-2") == []
    assert list(store.files()) == [path]
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]


def test_the_same_bytes_twice_are_one_file_and_two_rows(store: AttachmentStore) -> None:
    data = photo("JPEG")
    first = store.add("ev-1", data, uploader="a", source="worker", max_bytes=1 << 20, at_ms=1)
    second = store.add("ev-2", data, uploader="b", source="resident", max_bytes=1 << 20, at_ms=2)
    assert first.sha256 == second.sha256 and first.id != second.id
    assert len(list(store.files())) == 1
    assert [a.uploader for a in store.of_event("ev-2")] == ["b"]


def test_the_type_is_the_sniffed_one_and_refusals_store_nothing(store: AttachmentStore) -> None:
    webp = photo("WEBP")
    assert store.add("e", webp, uploader="a", source="worker", max_bytes=1 << 20).media_type == (
        MediaType.WEBP
    )
    before = list(store.files())
    with pytest.raises(UnsupportedPhoto):
        store.add("e", b"<svg/>" * 10, uploader="a", source="worker", max_bytes=1 << 20)
    with pytest.raises(PhotoTooLarge):
        store.add("e", photo("PNG"), uploader="a", source="worker", max_bytes=10)
    assert list(store.files()) == before and len(store.of_event("e")) == 1


def test_a_changed_or_missing_file_fails_its_checksum(store: AttachmentStore) -> None:
    added = store.add("ev", photo("PNG"), uploader="a", source="worker", max_bytes=1 << 20)
    path = store.path_of(added.sha256)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(CorruptAttachment, match="checksum"):
        store.read(added)
    path.unlink()
    with pytest.raises(CorruptAttachment, match="missing"):
        store.read(added)


# ---------------------------------------------------------------------- no path from outside


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        "",
        "A" * 64,  # upper case is not how checksums are written here
        "0" * 63,
        "0" * 65,
        "0" * 62 + "/x",
        "0" * 63 + "\0",
        "%2e%2e%2f" + "0" * 55,
    ],
)
def test_only_a_checksum_names_a_file(store: AttachmentStore, name: str) -> None:
    with pytest.raises(UnknownAttachment):
        store.path_of(name)
    assert store.get(name) is None  # ids are 32 hex digits: anything else is nobody


def test_a_planted_symlink_cannot_lead_outside_the_root(
    store: AttachmentStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / ("ab" + "0" * 62)
    secret.write_bytes(b"\x89PNG\r\n\x1a\n secret")
    (store.root / "ab").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnknownAttachment, match="outside"):
        store.path_of("ab" + "0" * 62)


def test_a_row_naming_a_foreign_path_is_refused(store: AttachmentStore, event_db_url: str) -> None:
    """Even a tampered row cannot make the store read outside its root."""
    added = store.add("ev", photo("PNG"), uploader="a", source="worker", max_bytes=1 << 20)
    engine = create_engine(event_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                att.attachments.update()
                .where(att.attachments.c.id == added.id)
                .values(sha256="../../../../etc/passwd")
            )
    finally:
        engine.dispose()
    tampered = store.get(added.id)
    assert tampered is not None
    with pytest.raises(UnknownAttachment):
        store.read(tampered)


def test_photo_files_are_not_world_readable(store: AttachmentStore) -> None:
    added = store.add("ev", photo("PNG"), uploader="a", source="worker", max_bytes=1 << 20)
    assert os.stat(store.path_of(added.sha256)).st_mode & 0o007 == 0


# ---------------------------------------------------------------------- report tokens


def test_a_report_token_opens_its_report_and_only_its_hash_is_kept(
    store: AttachmentStore, event_db_url: str
) -> None:
    token = store.new_report_token("r" * 32)
    other = store.new_report_token("s" * 32)
    assert len(token) == 32 and token != other
    assert store.report_of_token(token) == "r" * 32
    assert store.report_of_token(other) == "s" * 32
    engine = create_engine(event_db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(att.report_tokens)).mappings().all()
    finally:
        engine.dispose()
    assert {r["token_sha256"] for r in rows} == {
        hashlib.sha256(t.encode()).hexdigest() for t in (token, other)
    }
    assert token not in str([dict(r) for r in rows])


@pytest.mark.parametrize(
    "guess", ["", "x" * 32, "../" * 11, "a" * 31, "a" * 33, "'; DROP TABLE report_tokens; --"]
)
def test_any_other_string_opens_nothing(store: AttachmentStore, guess: str) -> None:
    store.new_report_token("r" * 32)
    assert store.report_of_token(guess) is None


def test_a_second_token_for_one_report_is_refused(store: AttachmentStore) -> None:
    store.new_report_token("r" * 32)
    with pytest.raises(sa.exc.IntegrityError):
        store.new_report_token("r" * 32)


# ---------------------------------------------------------------------- migrations


def test_the_track_is_its_own_and_idempotent(event_db_url: str, tmp_path: Path) -> None:
    store = AttachmentStore(event_db_url, tmp_path / "p")
    try:
        assert store.migrate() == len(att.MIGRATIONS) == 1
        assert store.migrate() == 1
        assert (tmp_path / "p").is_dir()
    finally:
        store.close()
    engine = create_engine(event_db_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        assert {"attachment_schema_version", "attachments", "report_tokens"} <= tables
        assert "schema_version" not in tables  # the event store's track is untouched
        with engine.begin() as conn:
            conn.execute(att.attachment_schema_version.insert().values(version=5, applied_ms=1))
    finally:
        engine.dispose()
    newer = AttachmentStore(event_db_url, tmp_path / "p")
    try:
        with pytest.raises(AttachmentError, match="upgrade GridWatch"):
            newer.migrate()
    finally:
        newer.close()
