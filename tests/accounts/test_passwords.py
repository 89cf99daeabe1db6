"""Password hashing: argon2id at OWASP's setting, old hashes upgraded, bursts bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Literal

from argon2 import PasswordHasher

from accounts.roles import Role
from accounts.users import HASHES_AT_ONCE, UserStore

NEW_SETTING = "$argon2id$v=19$m=19456,t=2,p=1$"


def _store(tmp_path: Path, hasher: PasswordHasher | None = None) -> UserStore:
    store = UserStore(f"sqlite:///{tmp_path / 'users.db'}", hasher=hasher)
    store.migrate()
    return store


def _hash_of(store: UserStore, username: str) -> str:
    with store._read() as conn:
        row = conn.exec_driver_sql(
            "SELECT password_hash FROM api_users WHERE username = ?", (username,)
        ).first()
    assert row is not None
    return str(row[0])


def test_passwords_are_hashed_with_argon2id_at_19_mib(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.add_user("ops", "correct horse battery", Role.operator)
    assert _hash_of(store, "ops").startswith(NEW_SETTING)
    assert store.authenticate("ops", "correct horse battery") is not None
    assert store.authenticate("ops", "wrong") is None
    assert store.authenticate("nobody", "correct horse battery") is None


def test_a_hash_of_the_old_64_mib_default_logs_in_and_is_rehashed(tmp_path: Path) -> None:
    old = _store(tmp_path, PasswordHasher())  # argon2-cffi's default: m=65536, t=3, p=4
    old.add_user("ops", "correct horse battery", Role.operator)
    assert _hash_of(old, "ops").startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    old.close()
    store = _store(tmp_path)
    assert store.authenticate("ops", "wrong") is None
    assert _hash_of(store, "ops").startswith("$argon2id$v=19$m=65536")  # not on a failure
    assert store.authenticate("ops", "correct horse battery") is not None
    assert _hash_of(store, "ops").startswith(NEW_SETTING)
    assert store.authenticate("ops", "correct horse battery") is not None


class _Counting(PasswordHasher):
    """Counts hashes in flight; each takes a while, so a burst overlaps."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8 * 1024, parallelism=1)
        self._lock = threading.Lock()
        self.now = self.most = 0

    def _enter(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.05)

    def _leave(self) -> None:
        with self._lock:
            self.now -= 1

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self._enter()
        try:
            return super().verify(hash, password)
        finally:
            self._leave()


def test_a_burst_of_logins_hashes_at_most_two_at_a_time(tmp_path: Path) -> None:
    hasher = _Counting()
    store = _store(tmp_path, hasher)
    store.add_user("ops", "correct horse battery", Role.operator)
    results: list[bool] = []
    start = threading.Barrier(8)

    def login(password: str) -> None:
        start.wait()
        results.append(store.authenticate("ops", password) is not None)

    threads = [
        threading.Thread(target=login, args=("correct horse battery" if i % 2 else "guess",))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [False] * 4 + [True] * 4
    assert hasher.most == HASHES_AT_ONCE == 2
