"""Dead letters: JSON lines with the raw bytes, bounded by size-based rotation."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.deadletter import DeadLetter, DeadLetterStore, read_dead_letters

AT_NS = 1_740_788_130_250_123_456


def letter(i: int = 0, payload: bytes = b'{"x": 1}', *, detail: str = "d") -> DeadLetter:
    return DeadLetter(
        stage="decode",
        reason="bad_json",
        detail=f"{detail}-{i}",
        topic=f"gw/v1/s1/smoke/sd-{i}/telemetry",
        payload=payload,
        at_ns=AT_NS,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DeadLetterStore]:
    s = DeadLetterStore(tmp_path / "dl", max_bytes=1 << 20, keep=3)
    s.open()
    yield s
    s.close()


@pytest.mark.parametrize(
    "payload",
    [b"", b'{"x": 1}', b"\xff\xfe\x00 not utf-8 \x80", bytes(range(256)), "京A·12345".encode()],
)
def test_record_is_json_with_a_base64_payload(payload: bytes) -> None:
    raw = letter(7, payload).to_json()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    record = json.loads(raw)
    assert record == {
        "at": "2025-03-01T00:15:30.250+00:00",
        "stage": "decode",
        "reason": "bad_json",
        "detail": "d-7",
        "topic": "gw/v1/s1/smoke/sd-7/telemetry",
        "payload_b64": base64.b64encode(payload).decode("ascii"),
    }
    assert base64.b64decode(record["payload_b64"]) == payload


def test_non_ascii_detail_survives(store: DeadLetterStore) -> None:
    store.add(letter(detail="车牌 refused"))
    store.sync()
    (record,) = read_dead_letters(store.directory, keep=store.keep)
    assert record["detail"] == "车牌 refused-0"


def test_add_and_sync_write_json_lines(store: DeadLetterStore) -> None:
    for i in range(3):
        store.add(letter(i))
    store.sync()
    assert store.written == 3
    path = store.directory / "deadletters.jsonl"
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["detail"] for r in records] == ["d-0", "d-1", "d-2"]


def test_read_returns_newest_first_with_limit(store: DeadLetterStore) -> None:
    for i in range(5):
        store.add(letter(i))
    store.sync()
    records = list(read_dead_letters(store.directory, keep=store.keep, limit=3))
    assert [r["detail"] for r in records] == ["d-4", "d-3", "d-2"]


def test_read_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert list(read_dead_letters(tmp_path / "none", keep=5)) == []


def test_read_skips_a_torn_last_line(store: DeadLetterStore) -> None:
    for i in range(3):
        store.add(letter(i))
    store.sync()
    with (store.directory / "deadletters.jsonl").open("ab") as f:
        f.write(letter(99).to_json()[:25])  # crash in the middle of a write
    records = list(read_dead_letters(store.directory, keep=store.keep))
    assert [r["detail"] for r in records] == ["d-2", "d-1", "d-0"]


def test_reopen_appends(tmp_path: Path) -> None:
    directory = tmp_path / "dl"
    first = DeadLetterStore(directory, max_bytes=1 << 20, keep=2)
    first.open()
    first.add(letter(0))
    first.sync()
    first.close()
    second = DeadLetterStore(directory, max_bytes=1 << 20, keep=2)
    second.open()
    second.add(letter(1))
    second.sync()
    second.close()
    records = list(read_dead_letters(directory, keep=2))
    assert [r["detail"] for r in records] == ["d-1", "d-0"]


def test_rotation_keeps_at_most_keep_files_and_drops_the_oldest(tmp_path: Path) -> None:
    directory = tmp_path / "dl"
    keep = 3
    # file_bytes is max(max_bytes // keep, 4096): 4096 bytes per file here.
    store = DeadLetterStore(directory, max_bytes=3 * 4096, keep=keep)
    assert store.file_bytes == 4096
    store.open()
    try:
        big = b"x" * 1500  # ~2 KB per record once base64-encoded: 2-3 records per file
        n = 40
        for i in range(n):
            store.add(letter(i, big))
        store.sync()
        assert store.written == n
        files = store.files()
        assert [p.name for p in files] == [
            "deadletters.jsonl",
            "deadletters.jsonl.1",
            "deadletters.jsonl.2",
            "deadletters.jsonl.3",
        ]
        assert not (directory / "deadletters.jsonl.4").exists()
        assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in files)
        for path in files[1:]:
            assert path.stat().st_size >= store.file_bytes
            assert path.stat().st_size < store.file_bytes + 2 * len(letter(0, big).to_json())
        records = list(read_dead_letters(directory, keep=keep, limit=1000))
        details = [r["detail"] for r in records]
        # Newest first, contiguous, ending at the newest; the oldest were dropped.
        assert details[0] == f"d-{n - 1}"
        assert details == [f"d-{i}" for i in range(n - 1, n - 1 - len(details), -1)]
        assert len(details) < n
        assert all(base64.b64decode(r["payload_b64"]) == big for r in records)
    finally:
        store.close()


def test_rotation_with_keep_one(tmp_path: Path) -> None:
    directory = tmp_path / "dl"
    store = DeadLetterStore(directory, max_bytes=4096, keep=1)
    store.open()
    try:
        for i in range(20):
            store.add(letter(i, b"y" * 1500))
        store.sync()
        assert [p.name for p in store.files()] == ["deadletters.jsonl", "deadletters.jsonl.1"]
        assert len(list(directory.iterdir())) == 2
        details = [r["detail"] for r in read_dead_letters(directory, keep=1, limit=100)]
        assert details[0] == "d-19"
        assert details == [f"d-{i}" for i in range(19, 19 - len(details), -1)]
    finally:
        store.close()
