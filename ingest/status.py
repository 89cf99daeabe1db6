"""The status file a running hub rewrites every second, read by `gridwatch status`.

A file rather than a socket: it survives the hub (so a crash leaves its last figures)
and needs no port. Liveness is checked against the recorded pid.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Final

STATUS_FILE = "status.json"


_BLOCK: Final = 4096
_READ_TRIES: Final = 5


def write_status(data_dir: Path, snapshot: dict[str, Any]) -> None:
    """Atomically replace the status file (readers never see half a file).

    The file is padded with spaces (valid JSON) to whole blocks plus one spare, so that
    when the disk is full, and a new file cannot be written, the status is rewritten in
    place in the blocks it already has: `gridwatch status` must still say why."""
    data_dir.mkdir(parents=True, exist_ok=True)
    snapshot = {**snapshot, "written_at": time.time()}
    body = json.dumps(snapshot, sort_keys=True).encode()
    size = (len(body) // _BLOCK + 2) * _BLOCK
    tmp = data_dir / f".{STATUS_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_bytes(body.ljust(size))
        tmp.replace(data_dir / STATUS_FILE)
    except OSError:
        tmp.unlink(missing_ok=True)
        _rewrite_in_place(data_dir / STATUS_FILE, body)


def _rewrite_in_place(path: Path, body: bytes) -> None:
    """Overwrite the existing file's blocks (a reader may catch it half-written and
    retries). Raises OSError when the file is missing or too small."""
    fd = os.open(path, os.O_WRONLY)
    try:
        room = os.fstat(fd).st_size
        if len(body) > room:
            raise OSError(f"status of {len(body)} bytes does not fit the {room} of {path}")
        os.pwrite(fd, body.ljust(room), 0)
    finally:
        os.close(fd)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / STATUS_FILE
    if not path.exists():
        return None
    for attempt in range(_READ_TRIES):
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            break
        except ValueError:  # caught during an in-place rewrite
            if attempt == _READ_TRIES - 1:
                raise
            time.sleep(0.05)
    data["alive"] = bool(data.get("running")) and _pid_alive(int(data.get("pid", 0)))
    return data


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
