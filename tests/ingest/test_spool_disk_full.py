"""The spool on a real full disk (a small tmpfs): a refused frame is cut back, never
acknowledged, taken again once there is room, and recovery cuts nothing that was synced."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.tmpfs import MountError, SmallDisk
from ingest.spool import Spool, SpoolWriteError, encode_frame
from ingest.status import read_status, write_status

SPOOLED_MS = 1_740_788_130_250
FRAME_LINES = 200  # ~5 kB a frame


def lines_of(tag: str, n: int = FRAME_LINES) -> list[bytes]:
    return [f'm,f={tag} v={i}i,pad="{"x" * 8}" {i}\n'.encode() for i in range(n)]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    try:
        small = SmallDisk(tmp_path / "disk", 256 * 1024)
    except MountError as exc:
        pytest.skip(f"{exc}: the disk-full tests need a tmpfs mount (root)")
    with small:
        yield small


def open_spool(directory: Path, **kwargs: int) -> Spool:
    spool = Spool(directory, max_bytes=1 << 30, **kwargs)
    spool.open()
    return spool


def put(spool: Spool, tag: str) -> None:
    lines = lines_of(tag)
    spool.append(encode_frame(lines, SPOOLED_MS), len(lines))
    spool.sync()


def every_line(spool: Spool) -> bytes:
    batch = spool.read(1 << 30)
    return b"" if batch is None else batch.payload


def segment_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.seg"))


def test_a_full_disk_cuts_the_frame_back_and_takes_it_once_enlarged(
    disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    directory = disk.path / "spool"
    spool = open_spool(directory)
    written: list[str] = []
    try:
        with pytest.raises(SpoolWriteError) as refused:
            for i in range(1000):
                put(spool, f"f{i}")
                written.append(f"f{i}")
        assert refused.value.errno == errno.ENOSPC
        assert len(written) > 10
        synced = b"".join(b"".join(lines_of(tag)) for tag in written)
        # Nothing of the refused frame is left in the file, nor counted, nor readable.
        assert every_line(spool) == synced
        assert spool.pending_lines == FRAME_LINES * len(written)
        on_disk = segment_bytes(directory)
        with pytest.raises(SpoolWriteError):  # still full: refused again, still cut
            put(spool, "again")
        assert segment_bytes(directory) == on_disk

        disk.resize(4 << 20)
        refused_tag = f"f{len(written)}"
        put(spool, refused_tag)
        put(spool, "after")
        written += [refused_tag, "after"]
    finally:
        spool.close()
    with caplog.at_level(logging.WARNING, logger="ingest.spool"):
        again = open_spool(directory)
    try:
        assert "torn tail" not in caplog.text
        assert every_line(again) == b"".join(b"".join(lines_of(tag)) for tag in written)
    finally:
        again.close()


def test_a_failed_fsync_cuts_the_unsynced_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed fsync the kernel may have dropped the pages: the frames are cut and
    must be written again, not trusted."""
    directory = tmp_path / "spool"
    spool = open_spool(directory)
    try:
        put(spool, "kept")
        size = segment_bytes(directory)
        real_fsync = os.fsync

        def failing(fd: int) -> None:
            monkeypatch.setattr("ingest.spool.os.fsync", real_fsync)
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr("ingest.spool.os.fsync", failing)
        lines = lines_of("lost")
        spool.append(encode_frame(lines, SPOOLED_MS), len(lines))
        with pytest.raises(SpoolWriteError, match="fsync failed") as refused:
            spool.sync()
        assert refused.value.errno == errno.EIO
        assert segment_bytes(directory) == size
        assert every_line(spool) == b"".join(lines_of("kept"))
        put(spool, "retried")
        assert every_line(spool) == b"".join(lines_of("kept") + lines_of("retried"))
    finally:
        spool.close()


def test_no_room_for_a_new_segment_leaves_the_log_as_it_was(tmp_path: Path) -> None:
    """Rotation creates the next segment before anything is written to it: a disk out
    of inodes refuses that file, and the log stays whole and writable once it has one."""
    try:
        small = SmallDisk(tmp_path / "disk", 4 << 20, inodes=64)
    except MountError as exc:
        pytest.skip(f"{exc}: the disk-full tests need a tmpfs mount (root)")
    with small:
        directory = small.path / "spool"
        spool = open_spool(directory, segment_bytes=8 * 1024)
        try:
            put(spool, "a")
            put(spool, "b")  # the first segment is over 8 kB now: the next frame rotates
            blockers = []
            for i in range(1000):  # use up the inodes
                try:
                    fd = os.open(small.path / f"inode{i}", os.O_CREAT | os.O_WRONLY, 0o600)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
                os.close(fd)
                blockers.append(small.path / f"inode{i}")
            with pytest.raises(SpoolWriteError, match="cannot start segment"):
                put(spool, "c")
            assert every_line(spool) == b"".join(lines_of("a") + lines_of("b"))
            blockers.pop().unlink()
            put(spool, "c")
            assert every_line(spool) == b"".join(lines_of("a") + lines_of("b") + lines_of("c"))
        finally:
            spool.close()


def test_the_status_file_is_still_rewritten_on_a_full_disk(disk: SmallDisk) -> None:
    """`gridwatch status` must be able to say why nothing is acknowledged: the status
    file keeps spare blocks and is rewritten in place when a new file cannot be made."""
    write_status(disk.path, {"running": True, "pid": os.getpid(), "storage_error": None})
    disk.fill()
    error = "spool: write failed (No space left on device)"
    write_status(disk.path, {"running": True, "pid": os.getpid(), "storage_error": error})
    status = read_status(disk.path)
    assert status is not None
    assert status["storage_error"] == error and status["alive"]
    assert not list(disk.path.glob(".status.json.*"))  # no half-written temporary left
