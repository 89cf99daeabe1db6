"""Whether the broker should still hold the hub's MQTT session, across restarts.

The hub connects with clean_start=False: the broker keeps its subscription and queues
what arrives while it is away. A CONNACK with `session present: 0` is expected the
first time, or after the session expired; otherwise the broker lost it (it crashed
before saving, or was replaced) and with it whatever it had queued for us. This file
remembers where and when the hub last held a session, so that a restart can tell the
two apart too: `DIR/mqtt-session.json`, the broker, client id and the last time the
session was known alive (rewritten on connect and now and then, never fsynced: a stale
time only makes an expiry look later than it was).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

FILE: Final = "mqtt-session.json"


class SessionMemory:
    def __init__(self, directory: Path, broker: str, client_id: str, expiry_s: int | None) -> None:
        """`expiry_s`: how long the broker keeps the session after we leave (None: for
        ever, as MQTT 3.1.1 brokers do unless configured)."""
        self._path = directory / FILE
        self._who = {"broker": broker, "client_id": client_id}
        self._expiry_s = expiry_s
        self._alive_at: float | None = self._load()

    def _load(self) -> float | None:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s): assuming no session was held", self._path, exc)
            return None
        if not isinstance(data, dict) or any(data.get(k) != v for k, v in self._who.items()):
            return None  # another broker or client id: its session is not ours to expect
        alive_at = data.get("alive_at")
        return float(alive_at) if isinstance(alive_at, int | float) else None

    def expected(self, now: float | None = None) -> bool:
        """Should the broker still have our session?"""
        if self._alive_at is None:
            return False
        if self._expiry_s is None:
            return True
        return (now or time.time()) - self._alive_at < self._expiry_s

    def alive(self, now: float | None = None) -> None:
        """The session is held now (connected); remember it."""
        self._alive_at = now or time.time()
        body = {**self._who, "alive_at": self._alive_at}
        tmp = self._path.with_suffix(".tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(body))
            tmp.replace(self._path)
        except OSError as exc:  # a full disk: the in-memory time still serves this run
            log.warning("cannot save %s: %s", self._path, exc)
