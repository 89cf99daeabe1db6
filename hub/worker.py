"""The detection worker: rules, anomaly scoring and the event sinks in a process of their own.

One Python process is one core (the GIL). The intake (decode, spool, fsync, PUBACK) and
the rules each need most of one at full rate, so in one process each halves the other:
acknowledgements wait behind rule evaluation and alarms behind telemetry. With
`events.detection = "process"` (the default) the hub starts this worker, which consumes
the same log from another process:

- **The log is the interface.** The worker reads the hub's spool through a
  `SpoolFollower` (read-only, up to the `synced` mark, so only durable frames), and
  notices new frames by looking at the mark every `FOLLOW_S`. Its consumers commit their
  positions with their output in the event store, exactly as in the hub's process, so
  a crash of either process changes no event (`docs/alarm-path.md`).
- **Two pipes, JSON lines.** The hub writes the settings (pickled, once), then commands:
  `pressure` (the disk's state and the newest event time, which only the writer knows),
  `hub_condition` (the hub's health events), `reload` (SIGHUP) and `stop`. The worker
  writes reports every `hub.status_interval_s`: each consumer's position to keep the
  log from (the hub's spool frees only what they have passed) and its status for
  `gridwatch status` and `hub_stats`.
- **It dies with the hub** (PR_SET_PDEATHSIG, and an end of its input): a SIGKILLed hub
  leaves no worker committing behind its successor. The hub restarts a worker that
  exits, under its supervisor.

Operators' actions go through the hub's API, with a manager of its own on the same
store: every write is version-checked, so the two processes never overwrite each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import Mapping
from typing import Any, Final

from events.model import Severity
from hub.settings import Settings
from hub.supervision import Supervisor, setup_logging, tune_gc, tune_malloc
from hub.wiring import build_anomaly, build_events, build_writer, detection_tasks, events_publisher
from ingest.spool import Cursor, Spool, SpoolFollower
from sensors.base import FieldValue

log = logging.getLogger(__name__)

FOLLOW_S: Final = 0.02
"""How often the worker looks for new frames (the `synced` mark): the most it adds to
publish→event latency."""
STOP_TIMEOUT_S: Final = 30.0
"""How long the hub waits for a stopping worker to commit what it decided."""
_PR_SET_PDEATHSIG: Final = 1
_SIZE: Final = struct.Struct("<Q")


# ------------------------------------------------------------------------ the worker side


class DetectionWorker:
    """The worker process's body: the hub's detection tasks over a followed log."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = SpoolFollower(settings.spool.directory)
        self.sink = build_writer(settings)  # the events' InfluxDB points
        self.publisher = events_publisher(settings) if settings.events.publish_mqtt else None
        self.events = build_events(settings, self.publisher, self.sink)
        self.anomaly = build_anomaly(
            settings, self.events.service.manager, self.events.dispatcher.wake
        )
        self.supervisor = Supervisor()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        self.log.refresh()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # the hub's ^C: the hub says stop
        commands = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(commands), os.fdopen(0, "rb", buffering=0)
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                runners: list[asyncio.Task[None]] = []
                if self.publisher is not None:
                    runners.append(tasks.create_task(self.publisher.run(), name="mqtt-events"))
                factories = detection_tasks(self.settings, self.events, self.anomaly, self.log)
                for name, factory in factories.items():
                    runners.append(tasks.create_task(self.supervisor.run(name, factory)))
                runners.append(tasks.create_task(self._follow()))
                runners.append(tasks.create_task(self._report()))
                runners.append(tasks.create_task(self._commands(commands)))
                await self._stop.wait()
                await self._graceful_stop()
                for task in runners:
                    task.cancel()
        finally:
            for webhook in self.events.webhooks:
                await webhook.aclose()
            await self.sink.aclose()
            self.events.store.close()
            self.log.close()
            self._send(self._report_body())

    async def _graceful_stop(self) -> None:
        """Decide on what the log holds, then hand events to the sinks (what is left
        stays in the outbox for the next start)."""
        self.log.refresh()
        await self.events.service.stop()
        if self.anomaly is not None:
            await self.anomaly.stop()
        await self.events.dispatcher.drain(5.0)

    async def _follow(self) -> None:
        while True:
            if self.log.refresh():
                self.events.service.wake()
                if self.anomaly is not None:
                    self.anomaly.wake()
            await asyncio.sleep(FOLLOW_S)

    async def _report(self) -> None:
        while True:
            self._send(self._report_body())
            await asyncio.sleep(self.settings.hub.status_interval_s)

    def _report_body(self) -> dict[str, Any]:
        holds = {name: [c.segment, c.offset] for name, c in self.log.holds.items()}
        status: dict[str, Any] = dict(self.events.service.status())
        times = os.times()
        status["worker_cpu_s"] = round(times.user + times.system, 3)
        if self.anomaly is not None:
            status["anomaly"] = self.anomaly.status()
        consumers = ["rules", *(["anomaly"] if self.anomaly is not None else [])]
        return {
            "consumers": consumers,
            "holds": holds,
            "log_end": [self.log.end.segment, self.log.end.offset],
            "status": status,
            "tasks": self.supervisor.status(),
        }

    def _send(self, body: Mapping[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the hub is gone: nobody to tell
            sys.stdout.buffer.write(json.dumps(body).encode() + b"\n")
            sys.stdout.buffer.flush()

    async def _commands(self, commands: asyncio.StreamReader) -> None:
        while line := await commands.readline():
            try:
                command = json.loads(line)
                self._apply(command)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("detection worker: bad command from the hub %r: %s", line[:200], exc)
        log.info("detection worker: the hub closed its pipe; stopping")
        self._stop.set()

    def _apply(self, command: dict[str, Any]) -> None:
        op = command["op"]
        if op == "pressure":
            self.log.pressure(
                full=bool(command["full"]),
                needs_space=bool(command["needs_space"]),
                latest_event_ms=int(command["latest_event_ms"]),
            )
        elif op == "hub_condition":
            self.events.service.hub_condition(
                str(command["rule_id"]),
                bool(command["raised"]),
                hub=str(command["hub"]),
                severity=Severity(command["severity"]),
                title=str(command["title"]),
                message=str(command["message"]),
                values=dict(command["values"]),
            )
        elif op == "reload":
            self.events.service.reload_on_signal()
        elif op == "stop":
            self._stop.set()
        else:
            raise KeyError(f"unknown op {op!r}")


def die_with(parent: int) -> None:
    """SIGKILL this process when its parent (`parent`) ends, however it ends."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise SystemExit("the parent closed its pipe before the settings")
        data += chunk
    return data


def settings_blob(settings: Settings) -> bytes:
    """The settings as a child process reads them from its stdin (`read_settings`)."""
    # As a plain Settings (one loaded from a file is of a local subclass).
    plain = Settings.model_construct(
        **{name: getattr(settings, name) for name in Settings.model_fields}
    )
    blob = pickle.dumps(plain)
    return _SIZE.pack(len(blob)) + blob


def read_settings() -> Settings:
    """What the parent wrote with `settings_blob`, read unbuffered from stdin (what
    follows is the event loop's to read)."""
    (size,) = _SIZE.unpack(_read_exactly(0, _SIZE.size))
    settings = pickle.loads(_read_exactly(0, size))  # noqa: S301 (our own parent, over a pipe)
    assert isinstance(settings, Settings)
    return settings


def main() -> None:
    """`python -m hub.worker <hub pid>`: the settings arrive pickled on stdin."""
    die_with(int(sys.argv[1]))
    settings = read_settings()
    setup_logging(settings.hub.log_level)
    tune_malloc()
    tune_gc()
    asyncio.run(DetectionWorker(settings).run())


# ------------------------------------------------------------------------ the hub's side


class WorkerHandle:
    """The hub's end: starts the worker, relays commands, keeps its last report, and
    frees the log as the worker's consumers pass it."""

    def __init__(self, settings: Settings, spool: Spool) -> None:
        self.settings = settings
        self.spool = spool
        self.status: dict[str, Any] = {}
        """The worker's last report (`status`): its consumers' counters and lag."""
        self.seen_end: Cursor | None = None
        """The log's synced end when the worker last looked (its lag counts up to it)."""
        self.tasks: dict[str, Any] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._pending: list[dict[str, Any]] = []
        """Commands for a worker not (yet) running: sent when it starts."""
        self._stopping = False
        self._stopped = asyncio.Event()

    @property
    def pid(self) -> int | None:
        """The running worker's process id."""
        return None if self._process is None else self._process.pid

    def hold_log(self) -> None:
        """Before anything commits: keep the whole log until the worker says how much
        its consumers still need (its first report)."""
        self.spool.hold("rules", None)
        self.spool.hold("anomaly", None)

    async def run(self) -> None:
        """One worker's life (the supervisor runs this again when it fails)."""
        if self._stopping:
            return
        self._stopped.clear()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub.worker",
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(settings_blob(self.settings))
            pending, self._pending = self._pending, []
            for command in pending:
                self._write(command)
            self.pressure()
            while line := await process.stdout.readline():
                self._take(json.loads(line))
            code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            self._process = None
            self._stopped.set()
        if not self._stopping:
            raise RuntimeError(f"the detection worker exited with status {code}")

    def _take(self, report: dict[str, Any]) -> None:
        self.status = report.get("status", {})
        self.tasks = report.get("tasks", {})
        if "log_end" in report:
            seg, offset = report["log_end"]
            self.seen_end = Cursor(int(seg), int(offset))
        holds = report.get("holds", {})
        consumers = report.get("consumers", ["rules", "anomaly"])
        for name in ("rules", "anomaly"):
            if name in holds:
                seg, offset = holds[name]
                self.spool.release(name, Cursor(int(seg), int(offset)))
            elif name not in consumers:  # none in this worker (no anomaly model)
                self.spool.unhold(name)
            # else: a consumer that has not started yet keeps what the log held for it

    def current_status(self) -> dict[str, Any]:
        """The last report, its lag counted up to the log's end now: the worker saw the
        log up to `seen_end`, and what was synced since is behind every consumer too (a
        report of "no lag" must not predate the last acknowledged reading)."""
        found = dict(self.status)
        unseen = self.spool.records_after(self.seen_end) if self.seen_end is not None else 0
        if unseen:
            if "rules_lag_records" in found:
                found["rules_lag_records"] = int(found["rules_lag_records"]) + unseen
            anomaly = found.get("anomaly")
            if isinstance(anomaly, dict) and "lag_records" in anomaly:
                found["anomaly"] = {**anomaly, "lag_records": int(anomaly["lag_records"]) + unseen}
        return found

    def pressure(self) -> None:
        """Tell the worker what only the writer knows (every status interval)."""
        self.send(
            {
                "op": "pressure",
                "full": self.spool.full,
                "needs_space": self.spool.needs_space,
                "latest_event_ms": self.spool.latest_event_ms,
            },
            keep=False,
        )

    def hub_condition(
        self,
        rule_id: str,
        raised: bool,
        *,
        hub: str,
        severity: Severity,
        title: str,
        message: str,
        values: dict[str, FieldValue],
    ) -> None:
        self.send(
            {
                "op": "hub_condition",
                "rule_id": rule_id,
                "raised": raised,
                "hub": hub,
                "severity": severity.value,
                "title": title,
                "message": message,
                "values": values,
            }
        )

    def reload(self) -> None:
        self.send({"op": "reload"})

    def send(self, command: dict[str, Any], *, keep: bool = True) -> None:
        """To the running worker; `keep`: else to the next one, when it starts."""
        sent = self._process is not None and self._write(command)
        if not sent and keep:
            self._pending.append(command)

    def _write(self, command: dict[str, Any]) -> bool:
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return False
        process.stdin.write(json.dumps(command).encode() + b"\n")
        return True

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the worker to finish (decide on the log, commit, flush sinks) and wait."""
        self._stopping = True
        process = self._process
        if process is None:
            return
        self._write({"op": "stop"})
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout_s)
        except TimeoutError:
            log.error("the detection worker did not stop within %.0f s; killing it", timeout_s)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await self._stopped.wait()


if __name__ == "__main__":
    main()
