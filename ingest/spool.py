"""Durable local spool: the hub acks a message to the broker only once it is in here.

Layout: `DIR/<n>.seg` segment files of frames, `DIR/cursor` (segment, offset) of the
first frame not yet stored in InfluxDB, `DIR/lock` held by the one hub using DIR.
A frame is one fsync batch of line-protocol lines:

    header  <I payload length> <I crc32(rest)> <I line count> <Q spooled-at ms>
    payload the lines, newline-terminated

On open, a torn tail (crash during write) is cut at the first frame whose CRC fails;
those messages were never acked, so the broker still has them.
`append` + `sync` run on a worker thread while the event loop reads: a lock guards the
shared counters, and readers only see frames that are already fsynced.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("<IIIQ")
_SUFFIX: Final = ".seg"


class SpoolError(Exception):
    """The spool directory cannot be used (locked by another hub, unwritable)."""


@dataclass(frozen=True, slots=True)
class Cursor:
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """Consecutive frames read from the cursor: commit `end` once they are stored."""

    payload: bytes
    lines: int
    end: Cursor
    oldest_spooled_ms: int


def encode_frame(lines: Sequence[bytes], spooled_at_ms: int) -> bytes:
    payload = b"".join(lines)
    crc = _frame_crc(len(lines), spooled_at_ms, payload)
    return _HEADER.pack(len(payload), crc, len(lines), spooled_at_ms) + payload


def _frame_crc(lines: int, spooled_at_ms: int, payload: bytes | memoryview) -> int:
    """CRC-32 of line count, spool time and payload, without copying the payload."""
    return zlib.crc32(payload, zlib.crc32(struct.pack("<IQ", lines, spooled_at_ms)))


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int = 64 << 20) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._write_fd: int | None = None
        self._write_segment = 0
        self._write_offset = 0
        self._sizes: dict[int, int] = {}  # synced size per live segment
        self._cursor = Cursor(0, 0)
        self._pending_lines = 0
        self._synced_lines = 0
        self._unsynced_lines = 0
        self._unsynced_bytes = 0
        self._read_fds: dict[int, int] = {}

    # -- lifecycle ------------------------------------------------------------------
    def open(self) -> None:
        """Lock the directory, recover torn tails, count what is waiting."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolError(f"spool {self.directory} is in use by another hub process") from exc
        self._cursor = self._load_cursor()
        segments = sorted(
            int(p.stem) for p in self.directory.glob(f"*{_SUFFIX}") if p.stem.isdigit()
        )
        for seg in segments:
            if seg < self._cursor.segment:
                self._segment_path(seg).unlink()
                continue
            size, lines = self._scan(seg, self._cursor.offset if seg == self._cursor.segment else 0)
            self._sizes[seg] = size
            self._pending_lines += lines
        if not self._sizes:
            self._sizes[self._cursor.segment] = 0
            self._cursor = Cursor(self._cursor.segment, 0)
        elif self._cursor.segment not in self._sizes:
            # `commit` deletes finished segments before it writes the cursor: a crash in
            # between leaves the cursor in a deleted segment. Resume at the first live one
            # (re-sent points fold in InfluxDB); otherwise `read` would never find a frame.
            self._cursor = Cursor(min(self._sizes), 0)
        self._write_segment = max(self._sizes)
        self._write_offset = self._sizes[self._write_segment]
        self._open_write_fd()
        if self._pending_lines:
            log.info(
                "spool %s: %d lines waiting from a previous run",
                self.directory,
                self._pending_lines,
            )

    def close(self) -> None:
        for fd in [*self._read_fds.values(), self._write_fd, self._lock_fd]:
            if fd is not None:
                os.close(fd)
        self._read_fds.clear()
        self._write_fd = None
        self._lock_fd = None

    # -- writing (worker thread) ---------------------------------------------------
    def append(self, frame: bytes, lines: int) -> None:
        """Write a frame (not yet durable: call `sync`)."""
        if self._write_offset >= self.segment_bytes:
            self._rotate()
        assert self._write_fd is not None
        os.write(self._write_fd, frame)
        self._write_offset += len(frame)
        self._unsynced_lines += lines
        self._unsynced_bytes += len(frame)

    def sync(self) -> None:
        """fsync, then make the synced frames visible to the reader."""
        assert self._write_fd is not None
        os.fsync(self._write_fd)
        with self._lock:
            self._sizes[self._write_segment] = self._write_offset
            self._pending_lines += self._unsynced_lines
            self._synced_lines += self._unsynced_lines
        self._unsynced_lines = 0
        self._unsynced_bytes = 0

    def _rotate(self) -> None:
        assert self._write_fd is not None
        os.fsync(self._write_fd)
        os.close(self._write_fd)
        with self._lock:
            self._sizes[self._write_segment] = self._write_offset
            self._write_segment += 1
            self._write_offset = 0
            self._sizes[self._write_segment] = 0
        self._open_write_fd()
        _fsync_dir(self.directory)

    # -- reading (event loop) ------------------------------------------------------
    @property
    def pending_bytes(self) -> int:
        with self._lock:
            total = sum(self._sizes.values()) - self._cursor.offset
        return total

    @property
    def pending_lines(self) -> int:
        return self._pending_lines

    @property
    def synced_lines(self) -> int:
        """Lines made durable since `open`: grows with the input, never with commits."""
        return self._synced_lines

    @property
    def full(self) -> bool:
        return self.pending_bytes + self._unsynced_bytes >= self.max_bytes

    def read(self, max_lines: int, start: Cursor | None = None) -> SpoolBatch | None:
        """Frames from the cursor (or from `start`, the end of a batch read before) up to
        about max_lines (at least one frame)."""
        seg, offset = (start or self._cursor).segment, (start or self._cursor).offset
        chunks: list[bytes] = []
        lines = 0
        oldest = 0
        while lines < max_lines:
            with self._lock:
                size = self._sizes.get(seg)
                last = max(self._sizes)
            if size is None:
                break
            if offset >= size:
                if seg >= last:
                    break
                seg, offset = seg + 1, 0
                continue
            fd = self._read_fd(seg)
            header = os.pread(fd, _HEADER.size, offset)
            length, _crc, count, spooled_ms = _HEADER.unpack(header)
            chunks.append(os.pread(fd, length, offset + _HEADER.size))
            if not oldest:
                oldest = spooled_ms
            lines += count
            offset += _HEADER.size + length
        if not chunks:
            return None
        return SpoolBatch(b"".join(chunks), lines, Cursor(seg, offset), oldest)

    def oldest_pending_ms(self) -> int | None:
        """Spool time of the first unstored frame, for the `lag` statistic (its header
        only: the status loop asks every second, and a frame can hold megabytes)."""
        seg, offset = self._cursor.segment, self._cursor.offset
        while True:
            with self._lock:
                size = self._sizes.get(seg)
                last = max(self._sizes)
            if size is None:
                return None
            if offset < size:
                header = os.pread(self._read_fd(seg), _HEADER.size, offset)
                spooled_ms: int = _HEADER.unpack(header)[3]
                return spooled_ms
            if seg >= last:
                return None
            seg, offset = seg + 1, 0

    def commit(self, end: Cursor, lines: int) -> None:
        """Everything before `end` is stored: move the cursor, drop finished segments."""
        with self._lock:
            finished = [s for s in self._sizes if s < end.segment]
            for seg in finished:
                del self._sizes[seg]
            self._cursor = end
            self._pending_lines -= lines
        for seg in finished:
            fd = self._read_fds.pop(seg, None)
            if fd is not None:
                os.close(fd)
            self._segment_path(seg).unlink(missing_ok=True)
        # Not fsynced on purpose: losing the cursor only re-sends points InfluxDB folds.
        tmp = self.directory / "cursor.tmp"
        tmp.write_text(f"{end.segment} {end.offset}\n")
        tmp.replace(self.directory / "cursor")

    # -- helpers ---------------------------------------------------------------------
    def _segment_path(self, seg: int) -> Path:
        return self.directory / f"{seg:016d}{_SUFFIX}"

    def _open_write_fd(self) -> None:
        self._write_fd = os.open(
            self._segment_path(self._write_segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )

    def _read_fd(self, seg: int) -> int:
        fd = self._read_fds.get(seg)
        if fd is None:
            fd = os.open(self._segment_path(seg), os.O_RDONLY)
            self._read_fds[seg] = fd
        return fd

    def _load_cursor(self) -> Cursor:
        path = self.directory / "cursor"
        if not path.exists():
            return Cursor(0, 0)
        try:
            seg, offset = (int(x) for x in path.read_text().split())
        except ValueError as exc:
            raise SpoolError(f"{path} is corrupt: {exc}") from exc
        return Cursor(seg, offset)

    def _scan(self, seg: int, start: int) -> tuple[int, int]:
        """Validate frames from `start`; truncate a torn tail. Return (size, lines)."""
        path = self._segment_path(seg)
        data = path.read_bytes()
        offset = start
        lines = 0
        while offset + _HEADER.size <= len(data):
            length, crc, count, spooled_ms = _HEADER.unpack_from(data, offset)
            end = offset + _HEADER.size + length
            body = memoryview(data)[offset + _HEADER.size : end]
            if end > len(data) or _frame_crc(count, spooled_ms, body) != crc:
                break
            lines += count
            offset = end
        if offset != len(data):
            log.warning(
                "spool %s: cutting %d bytes of torn tail (unacked, the broker re-sends them)",
                path.name,
                len(data) - offset,
            )
            with path.open("r+b") as f:
                f.truncate(offset)
                os.fsync(f.fileno())
        return offset, lines


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
