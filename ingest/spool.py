"""Durable local spool, the hub's log: a message is acked to the broker only once it is in here.

Layout: `DIR/<n>.seg` segment files of frames, `DIR/cursor` (segment, offset) of the
first frame not yet stored in InfluxDB, `DIR/synced` (segment, offset) the log has made
durable (so acknowledged), `DIR/format` (the frame format), `DIR/lock` held by the one
hub using DIR. A frame is one fsync batch:

    header  <I lines length> <I crc32(rest)> <I line count> <Q spooled-at ms>
            <I records length> <I record count>
    lines   line protocol for InfluxDB, newline-terminated
    records the readings, rejections and ticks the detection consumers evaluate
            (`ingest.records`), in arrival order

Consumers: the InfluxDB writer reads lines from `cursor` and `commit`s; the rules and
anomaly consumers read records from positions they keep themselves (committed with
their output, in the event store) and `release` them here. A segment is deleted once
the writer and every `hold`er have passed it, so the log keeps what some consumer still
needs, and `full` counts from the oldest such position. Records of recent frames stay
in memory as objects (bounded), so a consumer that keeps up never decodes them.

Writes are checked: a short write goes on, and a failed write or fsync (a full disk,
an I/O error) cuts the file back to its last synced frame and raises `SpoolWriteError`;
nothing more is appended until the cut has succeeded. So no frame is acknowledged that
is not wholly written and fsynced, and no acknowledged frame sits behind garbage.

On open, a torn tail (crash during write) is cut at the first frame whose CRC fails,
but only past `synced`: those messages were never acked, and the broker still has them.
A frame that fails its check before `synced` is damage to acknowledged data, not a
torn write; the spool refuses to open (`SpoolError`, saying where) rather than cut it.
`synced` is rewritten in place after each fsync without an fsync of its own: it never
runs ahead of the durable frames, and after a process crash it is exact.
`append` + `sync` run on a worker thread while the event loop reads: a lock guards the
shared counters, and readers only see frames that are already fsynced.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn, Protocol

from ingest.records import Record, decode_records, encode_records, event_time_ms

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("<IIIQII")
_SUFFIX: Final = ".seg"
FORMAT: Final = "gridwatch-spool 2\n"
"""Frames with records (format 1 had lines only and no format file)."""
CACHE_RECORDS: Final = 50_000
"""Records of recent frames kept in memory for the consumers that keep up (tens of MB;
a consumer further behind decodes them from disk)."""
_TAIL_FRAMES: Final = 4096
_MARK: Final = struct.Struct("<QQI")
"""`DIR/synced`: segment, offset, crc32 of the two."""


class SpoolError(Exception):
    """The spool directory cannot be used (locked by another hub, unwritable, foreign)."""


class SpoolWriteError(SpoolError):
    """A frame could not be written or made durable (disk full, I/O error). Every frame
    appended since the last `sync` is gone from the log again: none may be acknowledged,
    and the caller appends them again once the disk takes writes."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True, slots=True, order=True)
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


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Consecutive frames' records from a consumer's position; `end` is the position
    after them (what the consumer commits once it has acted on them)."""

    records: list[Record]
    end: Cursor
    frames: int


def encode_frame(
    lines: Sequence[bytes], spooled_at_ms: int, records: Sequence[Record] = ()
) -> bytes:
    payload = b"".join(lines)
    blob = encode_records(records) if records else b""
    crc = _frame_crc(len(lines), spooled_at_ms, len(records), payload, blob)
    header = _HEADER.pack(len(payload), crc, len(lines), spooled_at_ms, len(blob), len(records))
    return header + payload + blob


def _frame_crc(
    lines: int,
    spooled_at_ms: int,
    records: int,
    payload: bytes | memoryview,
    blob: bytes | memoryview,
) -> int:
    """CRC-32 of counts, spool time, lines and records, without copying them."""
    crc = zlib.crc32(struct.pack("<IQII", lines, spooled_at_ms, len(blob), records))
    return zlib.crc32(blob, zlib.crc32(payload, crc))


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int = 64 << 20,
        cache_records: int = CACHE_RECORDS,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        # Segments are freed whole: one as large as the limit would keep that much that
        # no consumer needs, and a disk sized for `max_bytes` would fill with everyone
        # caught up.
        self.segment_bytes = min(segment_bytes, max(max_bytes // 8, 1 << 16))
        self.cache_records = cache_records
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._write_fd: int | None = None
        self._write_segment = 0
        self._write_offset = 0
        self._sizes: dict[int, int] = {}  # synced size per live segment
        self._cursor = Cursor(0, 0)
        self._holds: dict[str, Cursor] = {}
        self._pending_lines = 0
        self._synced_lines = 0
        self._synced_records = 0
        self._unsynced_lines = 0
        self._unsynced_bytes = 0
        self._unsynced_frames: list[tuple[Cursor, Cursor, list[Record]]] = []
        self._cache: OrderedDict[Cursor, tuple[list[Record], Cursor]] = OrderedDict()
        self._cached_records = 0
        self._tail: deque[Cursor] = deque(maxlen=_TAIL_FRAMES)
        self.latest_event_ms = 0
        """The newest event time among the records synced since `open` (for lag)."""
        self._read_fds: dict[int, int] = {}
        self._mark_fd: int | None = None
        self._cut_pending = False
        """A failed write left bytes past the synced end that are not cut yet."""
        self.needs_space = False
        """The disk refused the last write for want of space (until a sync succeeds):
        consumers should commit, so that `reclaim` can free what they have passed."""

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
        self._check_format(bool(segments))
        synced = self._load_mark()
        for seg in segments:
            size, lines = self._scan(seg, self._cursor, synced, seg == segments[-1])
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
        self._write_fd = self._open_segment(self._write_segment)
        # What recovery kept may never have been fsynced (a crash between write and
        # fsync): make it durable before the mark says it is.
        os.fsync(self._write_fd)
        self._open_mark()
        if self._pending_lines:
            log.info(
                "spool %s: %d lines waiting from a previous run",
                self.directory,
                self._pending_lines,
            )

    def close(self) -> None:
        for fd in [*self._read_fds.values(), self._write_fd, self._mark_fd, self._lock_fd]:
            if fd is not None:
                os.close(fd)
        self._read_fds.clear()
        self._write_fd = self._mark_fd = self._lock_fd = None

    def _check_format(self, has_segments: bool) -> None:
        path = self.directory / "format"
        found = path.read_text() if path.exists() else None
        if found == FORMAT:
            return
        if has_segments:
            what = "an older GridWatch (frames without records)" if found is None else repr(found)
            raise SpoolError(
                f"spool {self.directory} holds frames written by {what}: drain it with that "
                "version (or move the directory away) before starting this one"
            )
        tmp = self.directory / "format.tmp"
        tmp.write_text(FORMAT)
        tmp.replace(path)
        _fsync_dir(self.directory)

    # -- writing (worker thread) ---------------------------------------------------
    def append(self, frame: bytes, lines: int, records: list[Record] | None = None) -> None:
        """Write a frame (not yet durable: call `sync`). `records` are the frame's
        records as objects, kept in memory for the consumers once synced. Raises
        `SpoolWriteError` when the disk refuses it (see the class)."""
        self._cut_back()
        if self._write_offset >= self.segment_bytes:
            self._rotate()
        fd = self._write_fd
        assert fd is not None
        start = Cursor(self._write_segment, self._write_offset)
        view = memoryview(frame)
        try:
            while view:  # a short write (a full disk can cut one) continues, never skips
                written = os.write(fd, view)
                view = view[written:]
        except OSError as exc:
            if exc.errno == errno.ENOSPC and start.offset > 0 and not self._unsynced_bytes:
                # Perhaps the consumers are past most of this segment, which is only
                # freed whole: start the next one, so `reclaim` can delete this one.
                self._cut_pending = True
                self._cut_back()
                self._rotate()
            self._abandon_unsynced(exc, "write")
        self._write_offset += len(frame)
        self._unsynced_lines += lines
        self._unsynced_bytes += len(frame)
        if records:
            end = Cursor(self._write_segment, self._write_offset)
            self._unsynced_frames.append((start, end, records))

    def sync(self) -> None:
        """fsync, then make the synced frames visible to the readers. Raises
        `SpoolWriteError` when the fsync fails (the unsynced frames are then cut: after
        a failed fsync the kernel may have dropped their pages, so they are written
        again rather than trusted)."""
        assert self._write_fd is not None
        try:
            os.fsync(self._write_fd)
        except OSError as exc:
            self._abandon_unsynced(exc, "fsync")
        with self._lock:
            self._sizes[self._write_segment] = self._write_offset
            self._publish_unsynced()
        self.needs_space = False
        self._mark_synced()

    def _abandon_unsynced(self, exc: OSError, what: str) -> NoReturn:
        """Forget the frames appended since the last sync, cut their bytes, and raise."""
        with self._lock:
            self._write_offset = self._sizes[self._write_segment]
        self._unsynced_lines = self._unsynced_bytes = 0
        self._unsynced_frames.clear()
        self._cut_pending = True
        self.needs_space = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        detail = f"spool {self.directory}: {what} failed ({exc.strerror or exc})"
        try:
            self._cut_back()
        except SpoolWriteError as cut:
            detail += f"; {cut}"
        raise SpoolWriteError(detail, exc.errno) from exc

    def _cut_back(self) -> None:
        """Before anything is appended: cut what a failed write left past the synced
        end (appending after it would put acknowledged frames behind garbage)."""
        if not self._cut_pending:
            return
        try:
            if self._write_fd is None:
                self._write_fd = self._open_segment(self._write_segment)
            os.ftruncate(self._write_fd, self._write_offset)
        except OSError as exc:
            raise SpoolWriteError(
                f"cannot cut {self._segment_path(self._write_segment).name} back to its "
                f"synced end {self._write_offset} ({exc.strerror or exc})",
                exc.errno,
            ) from exc
        self._cut_pending = False

    def _publish_unsynced(self) -> None:
        """Under the lock, after an fsync: counters and cached records of the new frames."""
        self._pending_lines += self._unsynced_lines
        self._synced_lines += self._unsynced_lines
        for start, end, records in self._unsynced_frames:
            self._cache[start] = (records, end)
            self._cached_records += len(records)
            self._synced_records += len(records)
            self._tail.append(start)
            for record in reversed(records):  # in arrival order: the last one is newest
                at_ms = event_time_ms(record)
                if at_ms is not None:
                    self.latest_event_ms = max(self.latest_event_ms, at_ms)
                    break
        while self._cached_records > self.cache_records and self._cache:
            _, (records, _end) = self._cache.popitem(last=False)
            self._cached_records -= len(records)
        self._unsynced_frames.clear()
        self._unsynced_lines = 0
        self._unsynced_bytes = 0

    def _rotate(self) -> None:
        """Start the next segment: create and sync it first, so that a full disk leaves
        the log as it was (nothing of the frame to come is written yet)."""
        assert self._write_fd is not None
        seg = self._write_segment + 1
        try:
            os.fsync(self._write_fd)
        except OSError as exc:
            self._abandon_unsynced(exc, "fsync")
        try:
            new_fd = self._open_segment(seg)
        except OSError as exc:
            raise SpoolWriteError(
                f"spool {self.directory}: cannot start segment {seg} ({exc.strerror or exc})",
                exc.errno,
            ) from exc
        try:
            _fsync_dir(self.directory)
        except OSError as exc:
            os.close(new_fd)
            self._segment_path(seg).unlink(missing_ok=True)
            raise SpoolWriteError(
                f"spool {self.directory}: cannot sync the directory ({exc.strerror or exc})",
                exc.errno,
            ) from exc
        os.close(self._write_fd)
        with self._lock:
            self._sizes[self._write_segment] = self._write_offset
            self._publish_unsynced()
            self._write_segment = seg
            self._write_offset = 0
            self._sizes[seg] = 0
        self._write_fd = new_fd
        self._mark_synced()

    def _mark_synced(self) -> None:
        """Record the synced end in `DIR/synced`, in place (no new blocks: it works on a
        full disk) and without an fsync (it is written after the frames' fsync, so it
        never claims more than is durable)."""
        if self._mark_fd is None:
            return
        seg, offset = self._write_segment, self._write_offset
        data = _MARK.pack(seg, offset, zlib.crc32(struct.pack("<QQ", seg, offset)))
        try:
            os.pwrite(self._mark_fd, data, 0)
        except OSError as exc:  # recovery then falls back to cutting at the first bad frame
            log.warning("spool %s: cannot record the synced end: %s", self.directory, exc)

    # -- reading lines: the InfluxDB writer (event loop) ----------------------------
    @property
    def pending_bytes(self) -> int:
        """Bytes not yet stored in InfluxDB."""
        with self._lock:
            return self._bytes_from(self._cursor)

    @property
    def retained_bytes(self) -> int:
        """Bytes some consumer still needs (what the log must keep)."""
        with self._lock:
            return self._bytes_from(self._oldest_needed())

    def _bytes_from(self, start: Cursor) -> int:
        # min: a segment `reclaim` emptied is shorter than a position at its old end
        return sum(size for seg, size in self._sizes.items() if seg >= start.segment) - min(
            start.offset, self._sizes.get(start.segment, 0)
        )

    @property
    def pending_lines(self) -> int:
        return self._pending_lines

    @property
    def synced_lines(self) -> int:
        """Lines made durable since `open`: grows with the input, never with commits."""
        return self._synced_lines

    @property
    def synced_records(self) -> int:
        """Records made durable since `open`."""
        return self._synced_records

    @property
    def full(self) -> bool:
        return self.retained_bytes + self._unsynced_bytes >= self.max_bytes

    def read(self, max_lines: int, start: Cursor | None = None) -> SpoolBatch | None:
        """Frames from the cursor (or from `start`, the end of a batch read before) up to
        about max_lines (at least one frame with lines)."""
        seg, offset = (start or self._cursor).segment, (start or self._cursor).offset
        chunks: list[bytes] = []
        lines = 0
        oldest = 0
        while lines < max_lines:
            found = self._next_frame(seg, offset)
            if found is None:
                break
            seg, offset, header = found
            length, _crc, count, spooled_ms, blob_length, _records = header
            if count:
                chunks.append(os.pread(self._read_fd(seg), length, offset + _HEADER.size))
                if not oldest:
                    oldest = spooled_ms
                lines += count
            offset += _HEADER.size + length + blob_length
        if not chunks:
            if (seg, offset) != (self._cursor.segment, self._cursor.offset) and start is None:
                # Only frames without lines (records, ticks): nothing to store, move on.
                self._move_cursor(Cursor(seg, offset), 0)
            return None
        return SpoolBatch(b"".join(chunks), lines, Cursor(seg, offset), oldest)

    def _next_frame(
        self, seg: int, offset: int
    ) -> tuple[int, int, tuple[int, int, int, int, int, int]] | None:
        """The synced frame at (seg, offset) or, at a segment's end, the next one's first."""
        while True:
            with self._lock:
                size = self._sizes.get(seg)
                last = max(self._sizes)
            if size is None:
                return None
            if offset < size:
                header = _HEADER.unpack(os.pread(self._read_fd(seg), _HEADER.size, offset))
                return seg, offset, header
            if seg >= last:
                return None
            seg, offset = seg + 1, 0

    def oldest_pending_ms(self) -> int | None:
        """Spool time of the first unstored frame with lines, for the `lag` statistic
        (headers only: the status loop asks every second, and a frame can hold megabytes)."""
        seg, offset = self._cursor.segment, self._cursor.offset
        while (found := self._next_frame(seg, offset)) is not None:
            seg, offset, header = found
            if header[2]:
                return header[3]
            offset += _HEADER.size + header[0] + header[4]
        return None

    def commit(self, end: Cursor, lines: int) -> None:
        """Everything before `end` is stored: move the cursor, drop finished segments."""
        self._move_cursor(end, lines)

    def _move_cursor(self, end: Cursor, lines: int) -> None:
        with self._lock:
            self._cursor = end
            self._pending_lines -= lines
        self._collect()
        # Not fsynced on purpose: losing the cursor only re-sends points InfluxDB folds;
        # for the same reason a full disk only leaves the previous one in place.
        tmp = self.directory / "cursor.tmp"
        try:
            tmp.write_text(f"{end.segment} {end.offset}\n")
            tmp.replace(self.directory / "cursor")
        except OSError as exc:
            log.warning("spool %s: cursor not saved (%s); kept in memory", self.directory, exc)

    # -- reading records: the detection consumers (event loop) ----------------------
    def start_of_log(self) -> Cursor:
        with self._lock:
            return Cursor(min(self._sizes), 0)

    def end_of_log(self) -> Cursor:
        """The position after the last synced frame."""
        with self._lock:
            seg = max(self._sizes)
            return Cursor(seg, self._sizes[seg])

    def hold(self, name: str, position: Cursor | None) -> Cursor:
        """Keep the log from `position` for consumer `name` (None: from its start); a
        position the log no longer has (or never had) starts at the oldest frame it
        has, logged. Returns where the consumer starts."""
        position = _resume_at(
            self.directory, name, position, self.start_of_log(), self.end_of_log()
        )
        with self._lock:
            self._holds[name] = position
        return position

    def release(self, name: str, position: Cursor) -> None:
        """Consumer `name` has committed everything before `position`."""
        with self._lock:
            self._holds[name] = position
            oldest = min(self._holds.values())  # what no holder will read again
            while self._cache:
                start = next(iter(self._cache))
                if start >= oldest:
                    break
                records, _end = self._cache.pop(start)
                self._cached_records -= len(records)
        self._collect()

    def unhold(self, name: str) -> None:
        with self._lock:
            self._holds.pop(name, None)
        self._collect()

    def read_records(
        self, start: Cursor, max_records: int, *, stop: Cursor | None = None
    ) -> RecordBatch | None:
        """Records of the synced frames from `start` (and before `stop`), about
        `max_records` (at least one frame); None when there are none yet. From memory
        when cached, else from disk."""
        records: list[Record] = []
        frames = 0
        seg, offset = start.segment, start.offset
        while len(records) < max_records and (stop is None or Cursor(seg, offset) < stop):
            with self._lock:
                cached = self._cache.get(Cursor(seg, offset))
            if cached is not None:
                records += cached[0]
                seg, offset = cached[1].segment, cached[1].offset
                frames += 1
                continue
            found = self._next_frame(seg, offset)
            if found is None or (stop is not None and Cursor(found[0], found[1]) >= stop):
                break
            seg, offset, header = found
            length, _crc, _lines, _ms, blob_length, count = header
            if count:
                cached = self._cache.get(Cursor(seg, offset))  # the frame after a rotation
                if cached is not None:
                    records += cached[0]
                else:
                    at = offset + _HEADER.size + length
                    records += decode_records(os.pread(self._read_fd(seg), blob_length, at))
            offset += _HEADER.size + length + blob_length
            frames += 1
        if not frames:
            return None
        return RecordBatch(records, Cursor(seg, offset), frames)

    def records_after(self, start: Cursor) -> int:
        """How many records the synced log holds from `start` (headers only)."""
        total = 0
        seg, offset = start.segment, start.offset
        while (found := self._next_frame(seg, offset)) is not None:
            seg, offset, header = found
            total += header[5]
            offset += _HEADER.size + header[0] + header[4]
        return total

    def tail_records(self, limit: int) -> list[Record]:
        """Up to about `limit` of the newest records (seeds the duplicate check at start)."""
        out: list[list[Record]] = []
        n = 0
        for start in reversed(self._tail):
            batch = self.read_records(start, 1)
            if batch is None:
                continue
            out.append(batch.records)
            n += len(batch.records)
            if n >= limit:
                break
        return [r for records in reversed(out) for r in records]

    # -- helpers ---------------------------------------------------------------------
    def _oldest_needed(self) -> Cursor:
        """Under the lock: the oldest position the writer or a holder still needs."""
        return min([self._cursor, *self._holds.values()])

    def reclaim(self) -> int:
        """Free what no consumer needs (event loop); the bytes freed. The intake calls
        it when the disk is full: `append` has then started a new segment, and a
        finished segment whose end every consumer has reached is emptied in place (its
        file stays until they move on, so their positions stay valid across a restart)."""
        freed = self._collect()
        with self._lock:
            oldest = self._oldest_needed()
            size = self._sizes.get(oldest.segment, 0)
            if oldest.segment >= self._write_segment or not size or oldest.offset < size:
                return freed
            self._sizes[oldest.segment] = 0
        fd = self._read_fds.pop(oldest.segment, None)
        if fd is not None:
            os.close(fd)
        os.truncate(self._segment_path(oldest.segment), 0)
        return freed + size

    def _collect(self) -> int:
        """Delete segments every consumer has passed; the bytes freed."""
        with self._lock:
            oldest = self._oldest_needed()
            finished = [s for s in self._sizes if s < oldest.segment]
            freed = sum(self._sizes.pop(seg) for seg in finished)
        for seg in finished:
            fd = self._read_fds.pop(seg, None)
            if fd is not None:
                os.close(fd)
            self._segment_path(seg).unlink(missing_ok=True)
        return freed

    def _segment_path(self, seg: int) -> Path:
        return self.directory / f"{seg:016d}{_SUFFIX}"

    def _open_segment(self, seg: int) -> int:
        return os.open(self._segment_path(seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _open_mark(self) -> None:
        """Open `DIR/synced` and give it its block now, so rewriting it never needs space."""
        path = self.directory / "synced"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(fd).st_size < _MARK.size:
                os.pwrite(fd, bytes(_MARK.size), 0)
                os.fsync(fd)
        except OSError as exc:
            log.warning("spool %s: no synced mark (%s): recovery cuts at a bad frame", path, exc)
            return
        self._mark_fd = fd
        self._mark_synced()

    def _load_mark(self) -> Cursor | None:
        """The synced end a previous run recorded; None when unknown (no file yet, or
        unreadable: then a bad frame anywhere is cut as before)."""
        path = self.directory / "synced"
        try:
            data = path.read_bytes()[: _MARK.size]
        except FileNotFoundError:
            return None
        if len(data) < _MARK.size:
            return None
        seg, offset, crc = _MARK.unpack(data)
        if zlib.crc32(struct.pack("<QQ", seg, offset)) != crc:
            log.warning("spool %s: the synced mark is unreadable; ignoring it", self.directory)
            return None
        return Cursor(seg, offset)

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

    def _scan(
        self, seg: int, cursor: Cursor, synced: Cursor | None, newest: bool
    ) -> tuple[int, int]:
        """Validate a segment's frames; truncate a torn tail. Return (size, lines waiting
        for the writer, i.e. from `cursor`). A bad frame before the `synced` mark (or, in
        an older segment, anywhere: rotation syncs it whole) is damage to acknowledged
        frames: refused, never cut."""
        path = self._segment_path(seg)
        data = path.read_bytes()
        offset = 0
        lines = 0
        while offset + _HEADER.size <= len(data):
            length, crc, count, spooled_ms, blob_length, records = _HEADER.unpack_from(data, offset)
            body = offset + _HEADER.size
            end = body + length + blob_length
            if end > len(data):
                break
            payload = memoryview(data)[body : body + length]
            blob = memoryview(data)[body + length : end]
            if _frame_crc(count, spooled_ms, records, payload, blob) != crc:
                break
            if Cursor(seg, offset) >= cursor:
                lines += count
            if records:
                self._tail.append(Cursor(seg, offset))
            offset = end
        if offset != len(data):
            acked = (synced is not None and Cursor(seg, offset) < synced) or (
                synced is None and not newest
            )
            if acked:
                raise SpoolError(
                    f"spool {path}: the frame at offset {offset} fails its check, but the "
                    f"log had synced (and acknowledged) up to {synced or 'the segment end'}: "
                    "that is damage to stored data, not a torn write, and is not cut. Copy "
                    "the directory for inspection; moving this segment away starts the hub "
                    "without its frames (they are then lost)"
                )
            log.warning(
                "spool %s: cutting %d bytes of torn tail (unacked, the broker re-sends them)",
                path.name,
                len(data) - offset,
            )
            with path.open("r+b") as f:
                f.truncate(offset)
                os.fsync(f.fileno())
        return offset, lines


class LogReader(Protocol):
    """What a detection consumer reads the log through: the hub's own `Spool` (a
    consumer in the hub's process) or a `SpoolFollower` (one in a process of its own)."""

    @property
    def full(self) -> bool: ...
    @property
    def needs_space(self) -> bool: ...
    @property
    def synced_records(self) -> int: ...
    @property
    def latest_event_ms(self) -> int: ...

    def hold(self, name: str, position: Cursor | None) -> Cursor: ...
    def release(self, name: str, position: Cursor) -> None: ...
    def read_records(
        self, start: Cursor, max_records: int, *, stop: Cursor | None = None
    ) -> RecordBatch | None: ...
    def records_after(self, start: Cursor) -> int: ...


class SpoolFollower:
    """The hub's log, read from another process (the detection worker, `hub.worker`).

    Read-only: it never locks, cuts, writes or deletes. It reads the frames before the
    `synced` mark, which the hub rewrites after each fsync, so everything it reads is
    durable and whole. Holds stay here: the worker reports its consumers' positions to
    the hub, whose `Spool` then frees what they have passed (never earlier, so no file
    this reader still needs is deleted; an open one survives its unlink). What only the
    hub knows (the disk's state, the newest event time) the hub sends over (`pressure`).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.holds: dict[str, Cursor] = {}
        self._read_fds: dict[int, int] = {}
        self._end = Cursor(0, 0)
        self._synced_records = 0
        self._full = False
        self._needs_space = False
        self._latest_event_ms = 0

    # -- what the hub tells, and the mark -------------------------------------------
    def pressure(self, *, full: bool, needs_space: bool, latest_event_ms: int) -> None:
        self._full, self._needs_space = full, needs_space
        self._latest_event_ms = max(self._latest_event_ms, latest_event_ms)

    def refresh(self) -> bool:
        """Read the synced mark; True when the log grew (new frames to read)."""
        try:
            data = (self.directory / "synced").read_bytes()[: _MARK.size]
        except FileNotFoundError:
            return False
        if len(data) < _MARK.size:
            return False
        seg, offset, crc = _MARK.unpack(data)
        if zlib.crc32(struct.pack("<QQ", seg, offset)) != crc:
            return False  # caught mid-rewrite: the next look finds it whole
        end = Cursor(seg, offset)
        if end <= self._end:
            return False
        if self._end != Cursor(0, 0):
            self._synced_records += self.records_after(self._end, until=end)
        self._end = end
        return True

    def close(self) -> None:
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()

    # -- LogReader ------------------------------------------------------------------
    @property
    def full(self) -> bool:
        return self._full

    @property
    def needs_space(self) -> bool:
        return self._needs_space

    @property
    def synced_records(self) -> int:
        return self._synced_records

    @property
    def end(self) -> Cursor:
        """The synced end this reader last saw (`refresh`)."""
        return self._end

    @property
    def latest_event_ms(self) -> int:
        return self._latest_event_ms

    def hold(self, name: str, position: Cursor | None) -> Cursor:
        """Start `name` at `position`, or at the oldest frame the log still has."""
        position = _resume_at(self.directory, name, position, self._oldest(), self._end)
        self.holds[name] = position
        return position

    def release(self, name: str, position: Cursor) -> None:
        self.holds[name] = position

    def read_records(
        self, start: Cursor, max_records: int, *, stop: Cursor | None = None
    ) -> RecordBatch | None:
        """Records of the synced frames from `start` (and before `stop`)."""
        limit = self._end if stop is None or stop > self._end else stop
        records: list[Record] = []
        frames = 0
        seg, offset = start.segment, start.offset
        while len(records) < max_records and Cursor(seg, offset) < limit:
            header = self._header(seg, offset, limit)
            if header is None:  # the end of a finished segment: the next one's start
                seg, offset = seg + 1, 0
                continue
            length, _crc, _lines, _ms, blob_length, count = header
            if count:
                at = offset + _HEADER.size + length
                records += decode_records(os.pread(self._read_fd(seg), blob_length, at))
            offset += _HEADER.size + length + blob_length
            frames += 1
        if not frames:
            return None
        return RecordBatch(records, Cursor(seg, offset), frames)

    def records_after(self, start: Cursor, *, until: Cursor | None = None) -> int:
        """Records of the synced frames from `start` to `until` (headers only)."""
        limit = until or self._end
        total = 0
        seg, offset = start.segment, start.offset
        while Cursor(seg, offset) < limit:
            header = self._header(seg, offset, limit)
            if header is None:
                seg, offset = seg + 1, 0
                continue
            total += header[5]
            offset += _HEADER.size + header[0] + header[4]
        return total

    # -- helpers --------------------------------------------------------------------
    def _oldest(self) -> Cursor:
        segments = [int(p.stem) for p in self.directory.glob(f"*{_SUFFIX}") if p.stem.isdigit()]
        return Cursor(min(segments), 0) if segments else self._end

    def _header(
        self, seg: int, offset: int, limit: Cursor
    ) -> tuple[int, int, int, int, int, int] | None:
        """The frame header at (seg, offset), which is before `limit`; None at the end of
        a finished segment (the hub may also have emptied one every consumer passed)."""
        data = os.pread(self._read_fd(seg), _HEADER.size, offset)
        if len(data) < _HEADER.size:
            if seg >= limit.segment:  # the mark says a frame is here
                raise SpoolError(f"spool {self.directory}: no frame at {Cursor(seg, offset)}")
            return None
        return _HEADER.unpack(data)

    def _read_fd(self, seg: int) -> int:
        fd = self._read_fds.get(seg)
        if fd is None:
            path = self.directory / f"{seg:016d}{_SUFFIX}"
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError as exc:
                raise SpoolError(f"spool {path}: gone while a consumer needs it") from exc
            self._read_fds[seg] = fd
        return fd


class ConsumerLag:
    """How far a consumer of the log is behind: records, and seconds of event time."""

    def __init__(self) -> None:
        self._spool: LogReader | None = None
        self._backlog = 0
        self._synced0 = 0
        self.consumed = 0

    def start(self, spool: LogReader, position: Cursor) -> None:
        self._spool = spool
        self._backlog = spool.records_after(position)
        self._synced0 = spool.synced_records
        self.consumed = 0

    def records(self) -> int:
        if self._spool is None:
            return 0
        written = self._backlog + self._spool.synced_records - self._synced0
        return max(0, written - self.consumed)

    def seconds(self, watermark_ms: int) -> float:
        head = self._spool.latest_event_ms if self._spool is not None else 0
        return max(0.0, (head - watermark_ms) / 1000) if head and watermark_ms else 0.0


def _resume_at(
    directory: Path, name: str, position: Cursor | None, start: Cursor, end: Cursor
) -> Cursor:
    """Where consumer `name` starts: `position`, or the oldest frame when it has none or
    the log (`start` to `end`) does not hold it (logged)."""
    if position is None:
        return start
    if position < start or position > end:
        log.warning(
            "spool %s: consumer %s resumes at %s, which the log does not hold "
            "(it holds %s to %s): starting at its oldest frame",
            directory,
            name,
            position,
            start,
            end,
        )
        return start
    return position


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
