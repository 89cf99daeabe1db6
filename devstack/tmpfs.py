"""A small tmpfs to fill on purpose: disk-full faults on a real filesystem (root only).

`SmallDisk` mounts a tmpfs of a given size, fills it to the last few bytes with a
ballast file (`fill`), or keeps it full like a runaway log file that takes whatever is
freed (`hog`, until `stop_hog`), enlarges it (`resize`), and unmounts it on `close`. The tests
and `gridwatch drill` put the hub's spool on one to see what a full disk does.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path
from typing import Final

BALLAST: Final = ".ballast"


class MountError(RuntimeError):
    """The tmpfs could not be mounted (not root, or no mount permission here)."""


class SmallDisk:
    def __init__(self, path: Path, size: int, *, inodes: int | None = None) -> None:
        """`inodes`: how many files it can hold (tmpfs's `nr_inodes`; default: many)."""
        self.path = path
        self.size = size
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size},mode=0700" + (f",nr_inodes={inodes}" if inodes else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise MountError(
                f"cannot mount a tmpfs on {path}: {done.stderr.strip() or done.returncode}"
            )
        self._hog: threading.Thread | None = None
        self._hog_stop = threading.Event()

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> int:
        """Write ballast until at most `leave` bytes are free; returns the ballast size."""
        ballast = self.path / BALLAST
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        chunk = b"\0" * (1 << 20)
        try:
            while (room := self.free() - leave) > 0:
                try:
                    os.write(fd, chunk[: min(len(chunk), room)])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        finally:
            os.close(fd)
        return ballast.stat().st_size

    def hog(self, every_s: float = 0.01) -> None:
        """Keep the disk full from a thread: whatever is freed is taken again."""
        self._hog_stop.clear()

        def run() -> None:
            while not self._hog_stop.wait(every_s):
                self.fill()

        self.fill()
        self._hog = threading.Thread(target=run, name="disk-hog", daemon=True)
        self._hog.start()

    def stop_hog(self) -> None:
        self._hog_stop.set()
        if self._hog is not None:
            self._hog.join()
            self._hog = None

    def empty(self) -> None:
        """Remove the ballast."""
        (self.path / BALLAST).unlink(missing_ok=True)

    def resize(self, size: int) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.path)],
            capture_output=True,
            check=True,
        )
        self.size = size

    def close(self) -> None:
        self.stop_hog()
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)

    def __enter__(self) -> SmallDisk:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
