"""The status file a running hub rewrites every second, read by `gridwatch status`.

A file rather than a socket: it survives the hub (so a crash leaves its last figures)
and needs no port. Liveness is checked against the recorded pid.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def write_status(data_dir: Path, snapshot: dict[str, Any]) -> None:
    """Atomically replace the status file (readers never see half a file)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    snapshot = {**snapshot, "written_at": time.time()}
    tmp = data_dir / f".{STATUS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(snapshot, sort_keys=True))
    tmp.replace(data_dir / STATUS_FILE)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / STATUS_FILE
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
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
