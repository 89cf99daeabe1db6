"""PostgreSQL on loopback: a private throwaway one for the tests and the drills
(`running_postgres`), and the local stack's long-lived one (`start_postgres`, `gridwatch
stack up --postgres`) that a cluster of hubs on one box shares (docs/scaling.md)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from devstack.stack import ManagedProcess, StackError, ensure_installed, free_port, launch

POSTGRES_READY_TIMEOUT = 30.0


def postgres_bindir() -> Path:
    """Debian's newest installed PostgreSQL server (`/usr/lib/postgresql/<major>/bin`)."""
    found = [
        p
        for p in Path("/usr/lib/postgresql").glob("*/bin")
        if re.fullmatch(r"\d+", p.parent.name) and (p / "postgres").exists()
    ]
    if not found:
        raise RuntimeError(
            "no PostgreSQL server in /usr/lib/postgresql: apt-get install postgresql"
        )
    return max(found, key=lambda p: int(p.parent.name))


@contextmanager
def running_postgres(workdir: Path) -> Iterator[str]:
    """A private PostgreSQL (trust auth, no fsync) on a free loopback port; yields its URL.

    As root, the server runs as the `postgres` user (it refuses root), so `workdir` and
    its parents must be reachable by that user: pytest's tmp dirs are not (0700 root).
    """
    bindir = postgres_bindir()
    as_owner: list[str] = []
    workdir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        as_owner = ["runuser", "-u", "postgres", "--"]
        shutil.chown(workdir, "postgres", "postgres")
    workdir.chmod(0o700)
    data = workdir / "data"
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    initdb += ["-E", "UTF8", "--no-locale", "--no-sync"]
    done = subprocess.run([*as_owner, *initdb], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    port = free_port()
    log_path = workdir / "postgres.log"
    settings = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(workdir),
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    argv = [*as_owner, str(bindir / "postgres"), "-D", str(data), "-p", str(port)]
    for name, value in settings.items():
        argv += ["-c", f"{name}={value}"]
    with log_path.open("ab") as log:
        server = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    try:
        _wait_postgres(server, port, log_path)
        yield url
    finally:
        _stop_postgres(server, [*as_owner, str(bindir / "pg_ctl")], data)


def _wait_postgres(server: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + POSTGRES_READY_TIMEOUT
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited during startup:\n{log_path.read_text()}")
        try:
            with psycopg.connect(
                host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=1
            ):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready:\n{log_path.read_text()}") from None
            time.sleep(0.1)


def _stop_postgres(server: subprocess.Popen[bytes], pg_ctl: list[str], data: Path) -> None:
    """Fast shutdown through pg_ctl (runuser would pass a plain SIGTERM on, then SIGKILL)."""
    if server.poll() is None:
        subprocess.run(
            [*pg_ctl, "stop", "-D", str(data), "-m", "fast", "-w", "-t", "30"],
            check=False,
            capture_output=True,
        )
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        # pg_ctl could not stop it: immediate shutdown of our own postmaster, by its pid.
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
        server.wait(30)


def create_database(admin_url: str, name: str) -> str:
    """A new empty database on the server of `admin_url`; returns its URL."""
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, name: str) -> None:
    """Drop a test database, even if a connection was left open."""
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _libpq(url: str) -> str:
    """SQLAlchemy's `postgresql+psycopg://` URL as a libpq one."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


STACK_DATABASE = "gridwatch"
"""The database the local stack's PostgreSQL holds for the hubs."""


def start_postgres(workdir: Path, port: int) -> ManagedProcess:
    """The local stack's PostgreSQL: durable (fsync on), loopback only, trust auth for
    the `postgres` user, a `gridwatch` database; data kept in `workdir/data` across
    restarts. As root it runs as the `postgres` user (it refuses root); the pid kept is
    the server's own, so `stack down` finds it again from another process."""
    try:
        bindir = postgres_bindir()
    except RuntimeError:
        # Debian's server packages bring postgresql-common (pg_ctlcluster) with them.
        ensure_installed({"/usr/bin/pg_ctlcluster": "postgresql"})
        try:
            bindir = postgres_bindir()
        except RuntimeError as exc:
            raise StackError(str(exc)) from exc
    workdir.mkdir(parents=True, exist_ok=True)
    as_owner: list[str] = []
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        as_owner = ["runuser", "-u", user, "--"]
        shutil.chown(workdir, user, user)
    workdir.chmod(0o700)
    data = workdir / "data"
    if not (data / "PG_VERSION").exists():
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        done = subprocess.run(
            [*as_owner, *initdb, "-E", "UTF8", "--no-locale"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise StackError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(port)]
    argv += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={workdir}"]
    log = workdir / "postgres.log"
    proc = launch("postgres", argv, workdir, log, port, ready=_answers, user=user)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (STACK_DATABASE,)
        ).fetchone()
        if found is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(STACK_DATABASE)))
    return proc


def _answers(proc: ManagedProcess, _offset: int) -> bool:
    try:
        with psycopg.connect(
            host="127.0.0.1", port=proc.port, user="postgres", dbname="postgres", connect_timeout=1
        ):
            return True
    except psycopg.OperationalError:
        return False
