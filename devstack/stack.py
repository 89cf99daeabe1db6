"""Start and stop real local services (Mosquitto, InfluxDB 1.x, VictoriaMetrics).

Everything binds to 127.0.0.1 only, runs in the foreground under our control
(so ``pid`` is the server itself) and keeps its config, data and log in one workdir.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psutil

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0
LOG_TAIL_LINES = 40

MOSQUITTO_BIN = "/usr/sbin/mosquitto"
INFLUXD_BIN = "/usr/bin/influxd"
VICTORIA_METRICS_BIN = "/usr/bin/victoria-metrics"
MOSQUITTO_PACKAGES = {MOSQUITTO_BIN: "mosquitto"}
INFLUXDB_PACKAGES = {INFLUXD_BIN: "influxdb"}
VICTORIA_METRICS_PACKAGES = {VICTORIA_METRICS_BIN: "victoria-metrics"}
HUB_MAX_PAYLOAD_BYTES = 16 * 1024
"""The hub's default payload limit (`hub.max_payload_bytes`; devstack cannot read the
hub's settings, so a hub with another limit passes its own to `LocalStack`)."""


def broker_max_packet(max_payload_bytes: int = HUB_MAX_PAYLOAD_BYTES) -> int:
    """The broker's `max_packet_size` for a hub that accepts `max_payload_bytes`.

    The hub's MQTT client announces a maximum packet size of 4x its payload limit plus
    1 KiB (oversize payloads up to that arrive, to be counted and dead-lettered as
    `too_big`). A broker that accepts a larger publish PUBACKs it to the device and
    then drops it before the hub (a log line only): the broker must refuse first. Its
    limit is the hub's, less 512 bytes for what forwarding may add (a 3.1.1 device's
    publish gains the MQTT 5 properties length, identifiers), so whatever the broker
    accepts reaches the hub. Above it, Mosquitto disconnects the publisher (an MQTT 5
    client learns the limit in CONNACK, and its library refuses to send such a packet).
    """
    return 4 * max_payload_bytes + 1024 - 512


CLIENT_PACKAGES = {
    "/usr/bin/mosquitto_pub": "mosquitto-clients",
    "/usr/bin/mosquitto_sub": "mosquitto-clients",
}


class StackError(Exception):
    """A local service could not be installed, started or stopped."""


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """True if something listens on the port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
        return False


def port_holder(port: int) -> str:
    """Describe who listens on a port, so the error tells the user what to stop."""
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        conns = []
    for conn in conns:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            if conn.pid is None:
                break
            try:
                name = str(psutil.Process(conn.pid).name())
            except psutil.Error:
                name = "?"
            return f"pid {conn.pid} ({name})"
    return "a process psutil cannot identify (try `ss -ltnp`)"


def ensure_port_free(port: int) -> None:
    """Fail early with the holder's name instead of a cryptic bind error in a log."""
    if port_in_use(port):
        raise StackError(f"port {port} on {HOST} is already in use by {port_holder(port)}")


# --------------------------------------------------------------------------- install


def ensure_installed(binaries: Mapping[str, str]) -> None:
    """Install the Debian packages of missing binaries, so fresh machines and CI just work."""
    missing = sorted(path for path in binaries if not os.access(path, os.X_OK))
    if not missing:
        return
    packages = sorted({binaries[path] for path in missing})
    hint = f"apt-get install -y --no-install-recommends {' '.join(packages)}"
    if shutil.which("apt-get") is None:
        raise StackError(f"missing {', '.join(missing)} and apt-get is not available: {hint}")
    if os.geteuid() != 0:
        raise StackError(f"missing {', '.join(missing)}; installing needs root: sudo {hint}")
    _apt_update()
    with _no_service_starts():
        _apt(["apt-get", "install", "-y", "--no-install-recommends", *packages])
    still = [path for path in missing if not os.access(path, os.X_OK)]
    if still:
        raise StackError(f"installed {' '.join(packages)} but {', '.join(still)} still missing")


@contextlib.contextmanager
def _no_service_starts() -> Iterator[None]:
    """Hold off invoke-rc.d (Debian's policy-rc.d) while installing: the packages' own
    daemons would start with their defaults (influxd on every interface). We start ours."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


@functools.cache
def _apt_update() -> None:
    """Refresh package lists once per process (cached only when it succeeded)."""
    _apt(["apt-get", "update"])


APT_LOCK_WAIT_S = 600


def _apt(argv: list[str]) -> None:
    """Run apt non-interactively, turning failure into a StackError with its output.
    Another apt run holding dpkg's lock (a user's install, unattended upgrades) is
    waited for, not a failure."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = [argv[0], "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}", *argv[1:]]
    try:
        res = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"{' '.join(argv)} failed: {exc}") from exc
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-LOG_TAIL_LINES:])
        raise StackError(f"{' '.join(argv)} exited {res.returncode}:\n{tail}")


# --------------------------------------------------------------------------- processes


@dataclass
class ManagedProcess:
    """One service we started (or found in a state file), identified by pid + create time."""

    name: str
    port: int
    pid: int
    workdir: Path
    log: Path
    cmdline: list[str]
    create_time: float
    started_at: float = field(default_factory=time.time)
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        """Where clients connect."""
        if self.name == "postgres":
            return f"postgresql://postgres@{HOST}:{self.port}/gridwatch"
        scheme = "mqtt" if self.name == "mosquitto" else "http"
        return f"{scheme}://{HOST}:{self.port}"

    def alive(self) -> bool:
        """True while our process (not a reused pid) is running."""
        if self.popen is not None:
            return self.popen.poll() is None
        proc = self._verified()
        try:
            return proc is not None and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM so the service saves its state, SIGKILL after timeout; safe to repeat."""
        if self.popen is not None:
            self._stop_child(timeout)
            return
        proc = self._verified()
        if proc is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
            if not _wait_gone(proc, timeout):
                proc.kill()
                if not _wait_gone(proc, 5):
                    raise StackError(f"{self.name} (pid {self.pid}) survived SIGKILL")

    def kill(self) -> None:
        """SIGKILL without a chance to save anything (fault injection)."""
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.kill()
            self.popen.wait()
            return
        proc = self._verified()
        if proc is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
                _wait_gone(proc, 5)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Last lines of the service log, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _stop_child(self, timeout: float) -> None:
        """Stop and reap a child we spawned ourselves."""
        assert self.popen is not None
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s (pid %d) ignored SIGTERM for %.0fs; killing", self.name, self.pid, timeout
            )
            self.popen.kill()
            self.popen.wait()

    def _verified(self) -> psutil.Process | None:
        """The live process if the pid still belongs to the program we started, else None."""
        try:
            proc = psutil.Process(self.pid)
            same = abs(float(proc.create_time()) - self.create_time) < 1.0
            if same and list(proc.cmdline()) == self.cmdline:
                return proc
        except psutil.Error:
            return None
        return None

    def to_record(self) -> dict[str, object]:
        """JSON-safe description for the state file."""
        return {
            "name": self.name,
            "pid": self.pid,
            "port": self.port,
            "workdir": str(self.workdir),
            "log": str(self.log),
            "cmdline": self.cmdline,
            "create_time": self.create_time,
            "started_at": self.started_at,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, object]) -> ManagedProcess:
        """Rebuild from a state-file record (no Popen: identity is checked via psutil)."""
        cmdline = rec["cmdline"]
        assert isinstance(cmdline, list)
        return cls(
            name=str(rec["name"]),
            pid=_as_int(rec["pid"]),
            port=_as_int(rec["port"]),
            workdir=Path(str(rec["workdir"])),
            log=Path(str(rec["log"])),
            cmdline=[str(x) for x in cmdline],
            create_time=_as_float(rec["create_time"]),
            started_at=_as_float(rec["started_at"]),
        )


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait until the process exited; a zombie counts (its parent, not we, must reap it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc.wait(min(0.1, timeout))
            return True
        except psutil.TimeoutExpired:
            pass
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False


def _as_int(value: object) -> int:
    """Narrow a JSON value to int."""
    if not isinstance(value, int):
        raise StackError(f"bad state file value {value!r}")
    return value


def _as_float(value: object) -> float:
    """Narrow a JSON value to float."""
    if not isinstance(value, int | float):
        raise StackError(f"bad state file value {value!r}")
    return float(value)


ReadyCheck = Callable[[ManagedProcess, int], bool]


def launch(
    name: str,
    cmdline: list[str],
    workdir: Path,
    log_path: Path,
    port: int,
    *,
    ready: ReadyCheck,
    user: str | None = None,
) -> ManagedProcess:
    """Spawn a service in its own session, log to a file, and wait until it serves;
    `user`: as that user (and group), for a server that refuses to run as root."""
    ensure_port_free(port)
    offset = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as out:
        popen = subprocess.Popen(
            cmdline,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
            group=user,
        )
    try:
        create_time = float(psutil.Process(popen.pid).create_time())
    except psutil.Error:
        create_time = time.time()
    proc = ManagedProcess(
        name=name,
        port=port,
        pid=popen.pid,
        workdir=workdir,
        log=log_path,
        cmdline=cmdline,
        create_time=create_time,
        popen=popen,
    )
    try:
        _wait_ready(proc, ready, offset)
    except BaseException:
        proc.stop(timeout=5)
        raise
    return proc


def _wait_ready(proc: ManagedProcess, ready: ReadyCheck, offset: int) -> None:
    """Poll the readiness check; fail fast if the process dies, else after READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not proc.alive():
            code = proc.popen.returncode if proc.popen else None
            raise StackError(
                f"{proc.name} exited (code {code}) during startup; "
                f"log {proc.log}:\n{proc.log_tail()}"
            )
        if ready(proc, offset):
            return
        time.sleep(0.05)
    raise StackError(
        f"{proc.name} not ready on port {proc.port} after {READY_TIMEOUT:.0f}s; "
        f"log {proc.log}:\n{proc.log_tail()}"
    )


def _tcp_ok(port: int) -> bool:
    """True if a TCP connect to the port succeeds."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status of GET http://127.0.0.1:port/path (None if unreachable); ignores proxy env."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _log_since(path: Path, offset: int) -> bytes:
    """Log bytes written after offset (so a restart does not see the old run's lines)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read()
    except OSError:
        return b""


# --------------------------------------------------------------------------- mosquitto


def _mosquitto_ready(proc: ManagedProcess, offset: int) -> bool:
    """Mosquitto logs 'running' once its listeners are open; then TCP must answer."""
    return b" running" in _log_since(proc.log, offset) and _tcp_ok(proc.port)


BROKER_AUTOSAVE_CHANGES: Final = 1000
"""Changes between two saves of the broker's database (see `BROKER_PERSISTENCE`)."""
BROKER_PERSISTENCE: Final = (
    "persistence true",
    "autosave_on_changes true",
    f"autosave_interval {BROKER_AUTOSAVE_CHANGES}",
)
"""The local broker's persistence: rewrite its database after every
`BROKER_AUTOSAVE_CHANGES` changes (a message queued for or delivered to a persistent
session, a subscription, a persistent connect), so a SIGKILL loses at most that many
PUBACKed messages (plus one per publishing connection) and never the hub's session. Mosquitto
saves from its main loop after it has sent the PUBACK, never before: no setting makes a
crash lose nothing. Figures and the trade-off: docs/broker-durability.md
(`gridwatch bench broker`)."""


def mosquitto_conf(
    workdir: Path,
    port: int,
    extra_conf: str = "",
    *,
    max_packet_size: int | None = None,
    persistence: Sequence[str] = BROKER_PERSISTENCE,
) -> str:
    """Config text: loopback listener, persistence that survives restarts and crashes
    (`persistence`, by default `BROKER_PERSISTENCE`), deep queues, and publishes larger
    than the hub takes refused (`broker_max_packet`)."""
    lines = [
        f"listener {port} {HOST}",
        # refuse (disconnect) what the hub could not receive, instead of PUBACK + drop
        f"max_packet_size {max_packet_size or broker_max_packet()}",
        "allow_anonymous true",
        *persistence,
        f"persistence_location {workdir / 'data'}/",
        # the hub's persistent session must queue a long outage (default 1000 drops)
        "max_queued_messages 1000000",
        f"log_dest file {workdir / 'mosquitto.log'}",
        # 2.0 reads only ONE value per log_type line; "running" (readiness) and client
        # connects/disconnects are `information`; messages themselves are never logged
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    if os.geteuid() == 0:
        # as root, 2.0 drops to user `mosquitto`, which cannot open a 0700 tmp dir
        lines.append("user root")
    return "\n".join(lines) + "\n" + extra_conf + ("\n" if extra_conf else "")


def start_mosquitto(
    workdir: Path,
    port: int,
    *,
    extra_conf: str = "",
    max_packet_size: int | None = None,
    persistence: Sequence[str] = BROKER_PERSISTENCE,
) -> ManagedProcess:
    """Run a private broker on 127.0.0.1:port with config, data and log in workdir
    (a restart on the same workdir reloads the sessions it saved)."""
    ensure_installed(MOSQUITTO_PACKAGES)
    workdir = workdir.resolve()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        mosquitto_conf(
            workdir, port, extra_conf, max_packet_size=max_packet_size, persistence=persistence
        )
    )
    cmd = [MOSQUITTO_BIN, "-c", str(conf)]
    log_path = workdir / "mosquitto.log"  # mosquitto's log_dest and its stdout/stderr
    return launch("mosquitto", cmd, workdir, log_path, port, ready=_mosquitto_ready)


# --------------------------------------------------------------------------- influxdb


def _influx_ready(proc: ManagedProcess, _offset: int) -> bool:
    """InfluxDB answers /ping with 204 once the HTTP service is up."""
    return http_status(proc.port, "/ping") == 204


def influxdb_conf(workdir: Path, http_port: int, rpc_port: int) -> str:
    """Config text for InfluxDB 1.6.7 with every listener on loopback and extras off."""
    return f"""\
# Debian's build renamed upstream's `reporting-disabled` to `reporting-enabled`;
# unknown keys are silently ignored, so set both.
reporting-enabled = false
reporting-disabled = true
bind-address = "{HOST}:{rpc_port}"

[meta]
  dir = "{workdir / "meta"}"

[data]
  dir = "{workdir / "data"}"
  wal-dir = "{workdir / "wal"}"
  query-log-enabled = false

[http]
  enabled = true
  bind-address = "{HOST}:{http_port}"
  auth-enabled = false
  log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[ifql]
  enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
"""


def start_influxdb(workdir: Path, http_port: int) -> ManagedProcess:
    """Run a private InfluxDB 1.x; the RPC (backup) service gets its own loopback port."""
    ensure_installed(INFLUXDB_PACKAGES)
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "influxdb.conf"
    conf.write_text(influxdb_conf(workdir, http_port, free_port()))
    cmd = [INFLUXD_BIN, "run", "-config", str(conf)]
    log_path = workdir / "influxd.log"
    return launch("influxdb", cmd, workdir, log_path, http_port, ready=_influx_ready)


# --------------------------------------------------------------------------- victoria-metrics


def _vm_ready(proc: ManagedProcess, _offset: int) -> bool:
    """VictoriaMetrics answers /health with 200 when it accepts writes and queries."""
    return http_status(proc.port, "/health") == 200


def start_victoria_metrics(workdir: Path, http_port: int) -> ManagedProcess:
    """Run a private VictoriaMetrics (the real /api/v2/write target) on loopback."""
    ensure_installed(VICTORIA_METRICS_PACKAGES)
    workdir = workdir.resolve()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    cmd = [
        VICTORIA_METRICS_BIN,
        f"-httpListenAddr={HOST}:{http_port}",
        f"-storageDataPath={workdir / 'data'}",
        "-retentionPeriod=100y",
        # tests query right after writing: no rollup cache, no 1m "incomplete data" hiding
        "-search.disableCache",
        "-search.latencyOffset=0s",
    ]
    log_path = workdir / "victoria-metrics.log"
    return launch("victoria-metrics", cmd, workdir, log_path, http_port, ready=_vm_ready)


# --------------------------------------------------------------------------- restart

_READY: dict[str, ReadyCheck] = {
    "mosquitto": _mosquitto_ready,
    "influxdb": _influx_ready,
    "victoria-metrics": _vm_ready,
}


def restart(proc: ManagedProcess) -> ManagedProcess:
    """Graceful stop, then the same command line again (same config, dir and port).

    Updates and returns the same object, so a fixture holding it stops the new process.
    """
    proc.stop()
    new = launch(
        proc.name, list(proc.cmdline), proc.workdir, proc.log, proc.port, ready=_READY[proc.name]
    )
    proc.pid, proc.popen = new.pid, new.popen
    proc.create_time, proc.started_at = new.create_time, new.started_at
    return proc


# --------------------------------------------------------------------------- local stack


STACK_POSTGRES_PORT: Final = 15432
"""The local stack's PostgreSQL (`stack up --postgres`): the store a cluster shares."""


class LocalStack:
    """A long-lived Mosquitto + InfluxDB (and, asked for, PostgreSQL) under one root,
    tracked in root/stack.json."""

    def __init__(
        self,
        root: Path,
        mqtt_port: int = 18830,
        influx_port: int = 18086,
        *,
        max_payload_bytes: int = HUB_MAX_PAYLOAD_BYTES,
        postgres_port: int | None = None,
    ) -> None:
        self.root = root.resolve()
        self.max_packet_size = broker_max_packet(max_payload_bytes)
        """The broker's `max_packet_size`, from the hub's payload limit."""
        self.ports = {"mosquitto": mqtt_port, "influxdb": influx_port}
        if postgres_port is not None:
            self.ports["postgres"] = postgres_port
        self.state_file = self.root / "stack.json"
        self._children: dict[str, ManagedProcess] = {}
        self.mosquitto_extra_conf = ""
        """Appended to the broker config when `up` starts it (`devstack.dynsec`)."""

    def up(self) -> dict[str, str]:
        """Start what is not running yet; a taken port fails before anything starts."""
        ensure_installed({**MOSQUITTO_PACKAGES, **INFLUXDB_PACKAGES})
        running = {name: p for name, p in self._load().items() if p.alive()}
        todo = [name for name in self.ports if name not in running]
        for name in todo:
            ensure_port_free(self.ports[name])
        report = {name: f"already running (pid {p.pid}) at {p.url}" for name, p in running.items()}
        started: list[ManagedProcess] = []
        try:
            for name in todo:
                proc = self._start(name)
                started.append(proc)
                report[name] = f"started (pid {proc.pid}) at {proc.url}"
        except BaseException:
            for proc in started:
                proc.stop()
            raise
        self._children.update({p.name: p for p in started})
        self._save({**running, **{p.name: p for p in started}})
        return report

    def down(self) -> list[str]:
        """Stop exactly the recorded processes (never a reused pid) and forget them."""
        stopped = []
        for name, proc in self._load().items():
            if proc.alive():
                proc.stop()
                stopped.append(f"{name} (pid {proc.pid})")
            else:
                log.info("%s pid %d is gone or no longer ours; not touching it", name, proc.pid)
        self.state_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, dict[str, object]]:
        """Per service: running?, pid, port, url."""
        recorded = self._load()
        out: dict[str, dict[str, object]] = {}
        for name, port in self.ports.items():
            proc = recorded.get(name)
            if proc is None:
                scheme = "mqtt" if name == "mosquitto" else "http"
                out[name] = {
                    "running": False,
                    "pid": None,
                    "port": port,
                    "url": f"{scheme}://{HOST}:{port}",
                }
            else:
                out[name] = {
                    "running": proc.alive(),
                    "pid": proc.pid,
                    "port": proc.port,
                    "url": proc.url,
                }
        return out

    def _start(self, name: str) -> ManagedProcess:
        """Start one service in its own subdirectory of root."""
        workdir = self.root / name
        if name == "postgres":
            from devstack.postgres import start_postgres  # it builds on this module

            return start_postgres(workdir, self.ports[name])
        if name == "mosquitto":
            return start_mosquitto(
                workdir,
                self.ports[name],
                extra_conf=self.mosquitto_extra_conf,
                max_packet_size=self.max_packet_size,
            )
        return start_influxdb(workdir, self.ports[name])

    def _load(self) -> dict[str, ManagedProcess]:
        """Recorded processes from the state file (empty if there is none)."""
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StackError(f"unreadable state file {self.state_file}: {exc}") from exc
        services = data.get("services", {}) if isinstance(data, dict) else {}
        procs = {str(name): ManagedProcess.from_record(rec) for name, rec in services.items()}
        return {name: self._own_child(proc) for name, proc in procs.items()}

    def _own_child(self, proc: ManagedProcess) -> ManagedProcess:
        """Prefer our own Popen handle for a record we started, so stopping also reaps it."""
        child = self._children.get(proc.name)
        if child and (child.pid, child.create_time) == (proc.pid, proc.create_time):
            return child
        return proc

    def _save(self, procs: Mapping[str, ManagedProcess]) -> None:
        """Write the state file atomically so a crash never leaves half a record."""
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "services": {n: p.to_record() for n, p in procs.items()}}
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.state_file)
