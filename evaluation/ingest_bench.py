"""`gridwatch bench ingest`: the full pipeline measured against the broker's own limit.

Starts a private Mosquitto + InfluxDB 1.x, runs the hub as a separate process with its
default pipeline (validation, spool with fsync, batched writes), and publishes N
realistic QoS 1 messages from 1,000 devices of the three kinds from another process:

- live: the hub runs while the publisher publishes;
- backlog: the hub is down while N messages queue for its persistent session, then it
  starts and drains them;
- limit: the same backlog drained by `mosquitto_sub -q 1` (C client, prints to /dev/null).

Rates are first message received → last point stored (InfluxDB acknowledged), read
from the hub's own counters; loss is N minus the distinct points counted in InfluxDB.

The hub runs with `events.enabled = false` unless `rules=True`: the ratio is the ingest
pipeline's, and the rules' cost is reported apart, per reading, measured in-process over
the same messages (`bench_costs`), next to decode and line-protocol costs.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import psutil

from broker.client import ConnectOptions, MqttClient
from devstack.stack import (
    CLIENT_PACKAGES,
    INFLUXDB_PACKAGES,
    MOSQUITTO_PACKAGES,
    ManagedProcess,
    ensure_installed,
    free_port,
    start_influxdb,
    start_mosquitto,
)
from evaluation.bench_costs import (
    BENCH_HASH_KEY,
    bench_messages,
    bench_readings,
    decode_encode_cost,
    rules_cost,
)
from ingest.influxql import InfluxQLError, QueryTarget, query
from ingest.status import read_status
from sensors import topics
from simulators.traffic import make_fleet, message

KIND_MEASUREMENTS = ("access", "smoke", "parking")
HUB_CLIENT_ID = "bench-hub"
_TS_MARK = b'"ts":0,'


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


# -- publisher (separate process) ----------------------------------------------------------
def _templates(n: int, devices: int, seed: int) -> list[tuple[str, int, bytes, bytes]]:
    """(topic, device index, payload before ts, payload after ts): ts is filled at send time."""
    fleet = make_fleet(devices, site="bench", seed=seed)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        idx = rng.randrange(len(fleet))
        topic, payload = message(fleet[idx], rng, 0)
        body = json.loads(payload)
        body["ts"] = 0
        raw = json.dumps(body, separators=(",", ":")).encode()
        head, _, tail = raw.partition(_TS_MARK)
        out.append((topic, idx, head + b'"ts":', b"," + tail))
    return out


async def _publish(
    port: int, templates: list[tuple[str, int, bytes, bytes]], window: int, rate: float | None
) -> dict[str, float]:
    client = MqttClient(
        "127.0.0.1",
        port,
        ConnectOptions(client_id=f"bench-pub-{os.getpid()}", clean_start=True, session_expiry_s=0),
        subscriptions=[],
        on_publish=lambda *_: None,
    )
    runner = asyncio.create_task(client.run())
    await client.connected.wait()
    last_ts: dict[int, int] = {}
    pending: deque[asyncio.Future[None]] = deque()
    start = time.perf_counter()
    for i, (topic, idx, head, tail) in enumerate(templates):
        if rate and i % 100 == 0:  # paced: keep to the schedule in steps of 100 messages
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
        now_ms = max(time.time_ns() // 1_000_000, last_ts.get(idx, 0) + 1)
        last_ts[idx] = now_ms
        fut = client.publish_nowait(topic, head + str(now_ms).encode() + tail, qos=1)
        assert fut is not None
        pending.append(fut)
        if len(pending) >= window:
            await pending.popleft()
    while pending:
        await pending.popleft()
    elapsed = time.perf_counter() - start
    runner.cancel()
    return {"published": len(templates), "seconds": elapsed, "end_ns": time.time_ns()}


def _publisher_main(
    port: int, n: int, devices: int, seed: int, rate: float | None, out: Any
) -> None:
    templates = _templates(n, devices, seed)
    out.send("ready")
    out.recv()  # go
    out.send(asyncio.run(_publish(port, templates, 2000, rate)))


class _PublisherProcess:
    """Payloads are generated before `go()`, so generation cost is not in the timing."""

    def __init__(
        self, port: int, n: int, devices: int, seed: int, rate: float | None = None
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_publisher_main, args=(port, n, devices, seed, rate, child), daemon=True
        )
        self._proc.start()
        if self._conn.recv() != "ready":
            raise RuntimeError("publisher failed to start")

    def go(self) -> None:
        self._conn.send("go")

    def result(self) -> dict[str, float]:
        data: dict[str, float] = self._conn.recv()
        self._proc.join(10)
        return data


# -- hub process ---------------------------------------------------------------------------
def _hub_config(work: Path, mqtt_port: int, influx_port: int, database: str, rules: bool) -> Path:
    """Default settings but for ports, paths and `events.enabled` (the rules are measured
    in-process by default, see `bench_costs`, so the ratio is the ingest pipeline's)."""
    path = work / f"hub-{database}.toml"
    path.write_text(
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\nclient_id = "{HUB_CLIENT_ID}"\n'
        f'[influx]\nurl = "http://127.0.0.1:{influx_port}"\ndatabase = "{database}"\n'
        f'[spool]\ndirectory = "{work}/spool"\n[deadletters]\ndirectory = "{work}/dead"\n'
        f'[hub]\ndata_dir = "{work}/data-{database}"\nstatus_interval_s = 0.2\n'
        f'log_level = "WARNING"\n'
        f'credential_hash_key = "{BENCH_HASH_KEY.decode()}"\n'
        f"[events]\nenabled = {'true' if rules else 'false'}\n"
    )
    return path


class _HubProcess:
    def __init__(self, config: Path, data_dir: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
        self.data_dir = data_dir
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "hub", "run", "--config", str(config)],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.ps = psutil.Process(self.popen.pid)

    def status(self) -> dict[str, Any]:
        return read_status(self.data_dir) or {}

    def wait_connected(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.status().get("connected"):
            if time.monotonic() > deadline or self.popen.poll() is not None:
                raise RuntimeError("hub did not connect; see the hub log in the bench workdir")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float(self.ps.memory_info().rss) / 2**20

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def _count(target: QueryTarget) -> int:
    try:
        # Measurement names are our own constants, not input.
        series = query(target, "SELECT count(seq) FROM " + ",".join(KIND_MEASUREMENTS))  # noqa: S608
    except InfluxQLError:
        return 0
    return sum(int(s.values[0][1]) for s in series)


def _wait_stored(hub: _HubProcess, target: QueryTarget, n: int, progress: bool, label: str) -> int:
    """Until InfluxDB holds n points, or nothing moved for 30 s; returns the count."""
    last_change = time.monotonic()
    seen = -1
    last_print = 0.0
    while True:
        stored = int(hub.status().get("stored", 0))
        if stored != seen:
            seen, last_change = stored, time.monotonic()
        if time.monotonic() - last_print > 2:
            _log(progress, f"  {label}: {stored:,}/{n:,} stored")
            last_print = time.monotonic()
        if stored >= n:
            count = _count(target)
            if count >= n:
                return count
        if time.monotonic() - last_change > 30:
            return _count(target)
        time.sleep(0.1)


def _service_cpu(services: list[ManagedProcess]) -> dict[str, float]:
    """CPU seconds used so far by each service (the box has 2 cores for all of them)."""
    out = {}
    for svc in services:
        times = psutil.Process(svc.pid).cpu_times()
        out[svc.name] = float(times.user + times.system)
    return out


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {f"{name}_cpu_s": round(after[name] - before[name], 2) for name in after}


def _mode_result(hub: _HubProcess, n: int, count: int, cpu0: float) -> dict[str, float]:
    status = hub.status()
    span_s = max((status["last_stored_ns"] - status["first_received_ns"]) / 1e9, 1e-9)
    cpu_s = hub.cpu_seconds()
    return {
        "msgs_per_s": round(n / span_s, 1),
        "loss": n - count,
        "p50_ms": round(status.get("latency_p50_ms") or 0.0, 1),
        "p99_ms": round(status.get("latency_p99_ms") or 0.0, 1),
        "cpu_s": round(cpu_s - cpu0, 2),
        # From the first message on: the hub's own cost per message, whatever the box's
        # load does to the rates (cpu_s of the backlog also holds the hub's start-up).
        "cpu_us_per_msg": round((cpu_s - status.get("first_received_cpu_s", 0.0)) / n * 1e6, 2),
        "rss_mb": round(hub.peak_rss_mb(), 1),
    }


def _sub_argv(mqtt_port: int, client_id: str, *extra: str) -> list[str]:
    """mosquitto_sub with a persistent session (-c, fixed id) at QoS 1 on all telemetry."""
    return [
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(mqtt_port),
        "-c", "-i", client_id, "-q", "1", "-t", topics.subscription(topics.DEFAULT_PREFIX), *extra,
    ]  # fmt: skip


def _register_session(client_id: str, mqtt_port: int) -> None:
    """A subscriber connects once so the broker queues for it while it is away."""
    subprocess.run(_sub_argv(mqtt_port, client_id, "-W", "1"), check=False, capture_output=True)


def _mosquitto_sub_limit(mqtt_port: int, n: int, devices: int, progress: bool) -> float:
    _register_session("bench-limit", mqtt_port)
    pub = _PublisherProcess(mqtt_port, n, devices, seed=3)
    pub.go()
    pub.result()
    _log(progress, f"limit: {n:,} queued; draining with mosquitto_sub -q 1")
    start = time.perf_counter()
    subprocess.run(
        _sub_argv(mqtt_port, "bench-limit", "-C", str(n)), check=True, stdout=subprocess.DEVNULL
    )
    return n / (time.perf_counter() - start)


def run_ingest_bench(
    n: int,
    devices: int,
    workdir: Path | None,
    *,
    progress: bool,
    rate: float | None = None,
    rules: bool = False,
) -> dict[str, Any]:
    """Both modes and the limit end to end, then the per-message costs in-process."""
    result = _run_end_to_end(n, devices, workdir, progress=progress, rate=rate, rules=rules)
    _log(progress, "costs: decode, line protocol, rules and anomaly scoring, in-process")
    messages = bench_messages(_templates(n, devices, seed=2))
    result["costs"] = {
        **decode_encode_cost(messages),
        "rules_us_per_reading": rules_cost(bench_readings(messages)),
        **anomaly_cost(),
    }
    return result


def anomaly_cost() -> dict[str, float]:
    """Online anomaly scoring per reading: the intake hook (ingest's path) and the worker
    step (features, detectors, events; on a thread), with a model trained on a simulated
    day of the Yingyang site (`gridwatch bench anomaly` measures it in more detail)."""
    from evaluation.anomaly_bench import run_anomaly_bench

    figures = run_anomaly_bench(train_days=1.0, hours=2.0, detector="median_mad")
    return {
        "anomaly_observe_us_per_reading": figures["observe_us_per_reading"],
        "anomaly_us_per_reading": figures["process_cpu_us_per_reading"],
    }


def _run_end_to_end(
    n: int, devices: int, workdir: Path | None, *, progress: bool, rate: float | None, rules: bool
) -> dict[str, Any]:
    ensure_installed({**MOSQUITTO_PACKAGES, **INFLUXDB_PACKAGES, **CLIENT_PACKAGES})
    work = Path(tempfile.mkdtemp(prefix="gridwatch-bench-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    services: list[ManagedProcess] = []
    try:
        mosq = start_mosquitto(work / "mosquitto", free_port())
        services.append(mosq)
        influx = start_influxdb(work / "influxdb", free_port())
        services.append(influx)
        result: dict[str, Any] = {
            "messages": n,
            "devices": devices,
            "live_rate": rate,
            "hub_rules": rules,
        }

        # live
        _log(progress, f"live: hub running, publishing {n:,} messages from {devices:,} devices")
        live_target = QueryTarget(f"http://127.0.0.1:{influx.port}", "bench_live")
        hub = _HubProcess(
            _hub_config(work, mosq.port, influx.port, "bench_live", rules),
            work / "data-bench_live",
            work / "hub.log",
        )
        hub.wait_connected()
        pub = _PublisherProcess(mosq.port, n, devices, seed=1, rate=rate)
        cpu0 = hub.cpu_seconds()
        svc0 = _service_cpu(services)
        pub.go()
        published = pub.result()
        count = _wait_stored(hub, live_target, n, progress, "live")
        result["live"] = _mode_result(hub, n, count, cpu0)
        result["live"].update(_cpu_delta(svc0, _service_cpu(services)))
        result["live"]["publish_msgs_per_s"] = round(n / published["seconds"], 1)
        # Keeping up: how long after the publisher's last message the last point was stored.
        last_stored_ns = hub.status().get("last_stored_ns", 0)
        result["live"]["catch_up_s"] = round((last_stored_ns - published["end_ns"]) / 1e9, 2)
        hub.stop()

        # backlog: the hub's persistent session queues while it is down
        _log(progress, f"backlog: hub down, queueing {n:,} messages for its session")
        backlog_target = QueryTarget(f"http://127.0.0.1:{influx.port}", "bench_backlog")
        pub = _PublisherProcess(mosq.port, n, devices, seed=2)
        pub.go()
        pub.result()
        svc0 = _service_cpu(services)
        hub = _HubProcess(
            _hub_config(work, mosq.port, influx.port, "bench_backlog", rules),
            work / "data-bench_backlog",
            work / "hub.log",
        )
        cpu0 = 0.0  # the process starts with the drain
        count = _wait_stored(hub, backlog_target, n, progress, "backlog")
        result["backlog"] = _mode_result(hub, n, count, cpu0)
        result["backlog"].update(_cpu_delta(svc0, _service_cpu(services)))
        hub.stop()

        limit = _mosquitto_sub_limit(mosq.port, n, devices, progress)
        result["limit_msgs_per_s"] = round(limit, 1)
        result["ratio"] = round(result["backlog"]["msgs_per_s"] / limit, 3)
        return result
    finally:
        for svc in reversed(services):
            svc.stop()
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def format_result(result: dict[str, Any]) -> str:
    rules = "rules evaluated in the hub" if result["hub_rules"] else "rules off in the hub"
    lines = [
        f"gridwatch ingest benchmark: {result['messages']:,} messages, "
        f"{result['devices']:,} devices ({rules})"
    ]
    for mode in ("live", "backlog"):
        r = result[mode]
        extra = (
            f", publisher {r['publish_msgs_per_s']:,.0f} msg/s, caught up {r['catch_up_s']} s "
            "after it finished"
            if "publish_msgs_per_s" in r
            else ""
        )
        lines.append(
            f"  {mode:<8} {r['msgs_per_s']:>9,.0f} msg/s stored, loss {r['loss']}, "
            f"p50 {r['p50_ms']:,.0f} ms, p99 {r['p99_ms']:,.0f} ms, hub CPU {r['cpu_s']} s "
            f"({r['cpu_us_per_msg']} µs/msg), peak RSS {r['rss_mb']} MB{extra}"
        )
        lines.append(
            f"{'':11}service CPU: mosquitto {r.get('mosquitto_cpu_s')} s, "
            f"influxdb {r.get('influxdb_cpu_s')} s"
        )
    lines.append(
        f"  limit    {result['limit_msgs_per_s']:>9,.0f} msg/s (mosquitto_sub -q 1 backlog drain)"
    )
    lines.append(f"  ratio    {result['ratio']:.3f} (backlog / limit; target >= 0.4)")
    costs = result["costs"]
    lines.append(
        f"  costs    decode {costs['decode_us_per_msg']} µs/msg, decode + line protocol "
        f"{costs['decode_encode_us_per_msg']} µs/msg, default rule pack "
        f"{costs['rules_us_per_reading']} µs/reading, anomaly scoring "
        f"{costs['anomaly_us_per_reading']} µs/reading on its worker thread "
        f"(+{costs['anomaly_observe_us_per_reading']} µs on ingest's path) (CPU, in-process)"
    )
    return "\n".join(lines)
