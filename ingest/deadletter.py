"""Dead letters: every message or point the hub refused, with its raw bytes and reason.

JSON lines in `DIR/deadletters.jsonl`, rotated by size to `.1` … `.N` (oldest dropped),
so a device spewing garbage costs bounded disk. Written on the same fsync batch as the
spool: a refused message is acked only once its dead letter is durable.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

_NAME: Final = "deadletters.jsonl"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    stage: str
    """`decode` (refused at the door) or `influx` (InfluxDB refused the point)."""
    reason: str
    detail: str
    topic: str
    payload: bytes
    at_ns: int

    def to_json(self) -> bytes:
        record: dict[str, str] = {
            "at": datetime.fromtimestamp(self.at_ns / 1e9, UTC).isoformat(timespec="milliseconds"),
            "stage": self.stage,
            "reason": self.reason,
            "detail": self.detail,
            "topic": self.topic,
            "payload_b64": base64.b64encode(self.payload).decode("ascii"),
        }
        return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"


class DeadLetterStore:
    def __init__(self, directory: Path, *, max_bytes: int, keep: int = 5) -> None:
        self.directory = directory
        self.file_bytes = max(max_bytes // max(keep, 1), 4096)
        self.keep = keep
        self._fd: int | None = None
        self._size = 0
        self._dirty = False
        self.written = 0
        # Intake and writer both dead-letter from worker threads.
        self._lock = threading.Lock()

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open_current()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def add(self, letter: DeadLetter) -> None:
        """Append (durable after `sync`); rotate first if the file is full. On a write
        error (a full disk) the partial line is cut and OSError raised: the file never
        holds half a letter followed by whole ones."""
        data = letter.to_json()
        with self._lock:
            if self._fd is None or self._size >= self.file_bytes:
                self._rotate() if self._fd is not None else self._open_current()
            assert self._fd is not None
            view = memoryview(data)
            try:
                while view:  # a short write continues
                    view = view[os.write(self._fd, view) :]
            except OSError:
                os.ftruncate(self._fd, self._size)
                raise
            self._size += len(data)
            self._dirty = True
            self.written += 1

    def append(self, letters: list[DeadLetter]) -> None:
        """Add and sync a batch of letters (raises OSError if the disk refuses them)."""
        for letter in letters:
            self.add(letter)
        self.sync()

    def sync(self) -> None:
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self._dirty and self._fd is not None:
            os.fsync(self._fd)
            self._dirty = False

    def files(self) -> list[Path]:
        """Newest first."""
        names = [self.directory / _NAME] + [
            self.directory / f"{_NAME}.{i}" for i in range(1, self.keep + 1)
        ]
        return [p for p in names if p.exists()]

    def _open_current(self) -> None:
        path = self.directory / _NAME
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        self._sync_locked()
        self.close()
        oldest = self.directory / f"{_NAME}.{self.keep}"
        oldest.unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            src = self.directory / f"{_NAME}.{i}"
            if src.exists():
                src.replace(self.directory / f"{_NAME}.{i + 1}")
        if self.keep > 0:
            (self.directory / _NAME).replace(self.directory / f"{_NAME}.1")
        else:
            (self.directory / _NAME).unlink()
        self._open_current()


def read_dead_letters(directory: Path, *, keep: int, limit: int = 20) -> Iterator[dict[str, str]]:
    """The newest `limit` records, newest first (for `gridwatch deadletters`)."""
    store = DeadLetterStore(directory, max_bytes=1, keep=keep)
    count = 0
    for path in store.files() if directory.exists() else []:
        for line in reversed(path.read_bytes().splitlines()):
            if count >= limit:
                return
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash: skip it, keep reading
            count += 1
            yield record
