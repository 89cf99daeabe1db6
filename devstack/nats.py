"""A private NATS server with JetStream and its MQTT listener: the second broker.

NATS 2.9 (Debian `nats-server`) speaks MQTT 3.1.1 and keeps MQTT state in JetStream
streams (sessions in `$MQTT_sess`, QoS 1 messages for persistent sessions in
`$MQTT_msgs`, retained messages in `$MQTT_rmsgs`), so its MQTT needs JetStream, and
JetStream needs a server name. Like Mosquitto it binds 127.0.0.1 only, runs in the
foreground under our control and keeps config, JetStream store and log in one workdir;
a restart on the same workdir recovers the streams, so the sessions and their queues.

Stop it with `stop_nats` (lame duck mode), not SIGTERM: on SIGTERM NATS 2.9 shuts
JetStream down first and closes the MQTT connections after, and QoS 1 publishes it
PUBACKs in between are never stored (measured: 17-30 of 20,000 with a live session;
3 of 3,000 at 250 msg/s through the hub). Lame duck mode closes the connections first.

What it lacks against Mosquitto (README "Supported brokers"): MQTT 5 (a v5 CONNECT is
answered "unacceptable protocol version"), shared subscriptions (`$share/...` is taken
as a literal topic: nothing arrives), `.` and space in topics (the publisher is
disconnected; NATS 2.10 maps `.` to `//`), QoS 2 (a QoS 2 publish disconnects the
publisher, a QoS 2 subscription is granted QoS 1), and any limit on publish sizes. And it
sends unacknowledged QoS 1 messages again `ack_wait` after it first sent them (30 s by
default), whether or not the client reconnected in between, never at the reconnect
itself as MQTT 3.1.1 says (§4.4).
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Final

from broker.client import MQTT_V311, ConnectOptions, encode_connect
from devstack.stack import (
    HOST,
    ManagedProcess,
    _log_since,
    ensure_installed,
    free_port,
    launch,
)

NATS_BIN: Final = "/usr/sbin/nats-server"
NATS_PACKAGES: Final = {NATS_BIN: "nats-server"}
SERVER_NAME: Final = "gridwatch-local"
"""JetStream refuses to start without a server name; one node, so any fixed name."""
STOP_TIMEOUT_S: Final = 40.0
"""Lame duck mode closes the clients over up to `lame_duck_duration` (30 s, NATS's
minimum; a few clients go at once) before the server exits."""
PROBE_CLIENT_ID: Final = "gridwatch-ready-probe"


def nats_conf(
    workdir: Path, mqtt_port: int, client_port: int, *, ack_wait_s: float | None = None
) -> str:
    """Config text: every listener on loopback, JetStream in workdir, MQTT on `mqtt_port`;
    `ack_wait_s`: when unacknowledged QoS 1 messages are sent again (NATS default 30 s).

    No `max_payload`: NATS 2.9 does not apply it to MQTT (measured: a 2 MB publish is
    accepted under the default 1 MB), so publishes of any size reach the hub, whose
    client drops and acks what is above its limit (`MqttProtocol._skip_oversize`)."""
    ack_wait = "" if ack_wait_s is None else f'\n  ack_wait: "{int(ack_wait_s * 1000)}ms"'
    return f"""\
server_name: "{SERVER_NAME}"
# the NATS protocol listener (unused by GridWatch, but always open): loopback, own port
listen: "{HOST}:{client_port}"
# `stop_nats`: lame duck mode closes every client before JetStream stops (0.6-1.1 s here)
lame_duck_duration: "30s"
lame_duck_grace_period: "100ms"
jetstream {{
  store_dir: "{workdir / "jetstream"}"
}}
mqtt {{
  listen: "{HOST}:{mqtt_port}"{ack_wait}
}}
"""


def _mqtt_connack(port: int, timeout: float = 1.0) -> int | None:
    """The return code of a clean 3.1.1 CONNECT (None if no CONNACK): NATS opens its MQTT
    port before JetStream has recovered, and creates its MQTT streams on the first
    connect, so only a CONNACK 0 says the broker serves MQTT sessions."""
    # A fresh client id each time: a clean connect under an id whose session record an
    # earlier run deleted makes NATS log an error.
    opts = ConnectOptions(
        client_id=f"{PROBE_CLIENT_ID}-{time.time_ns()}",
        protocol=MQTT_V311,
        clean_start=True,
        keepalive_s=5,
    )
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(encode_connect(opts))
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    return None
                reply += chunk
            kind, _length, _flags, code = struct.unpack("!BBBB", reply)
            if kind >> 4 != 2:
                return None
            if code == 0:
                sock.sendall(b"\xe0\x00")  # DISCONNECT: no will, the clean session goes
            return int(code)
    except OSError:
        return None


def _nats_ready(proc: ManagedProcess, offset: int) -> bool:
    """NATS logs 'Server is ready' once its listeners are open; then MQTT must CONNACK 0."""
    return b"Server is ready" in _log_since(proc.log, offset) and _mqtt_connack(proc.port) == 0


def start_nats(
    workdir: Path,
    mqtt_port: int,
    *,
    client_port: int | None = None,
    ack_wait_s: float | None = None,
) -> ManagedProcess:
    """Run a private NATS with JetStream and MQTT on 127.0.0.1:mqtt_port (the returned
    process's `port`), config, store and log in workdir; a restart on the same workdir
    (and so the same config and ports) recovers the MQTT sessions it stored."""
    ensure_installed(NATS_PACKAGES)
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nats.conf"
    conf.write_text(
        nats_conf(workdir, mqtt_port, client_port or free_port(), ack_wait_s=ack_wait_s)
    )
    cmd = [NATS_BIN, "-c", str(conf)]
    return launch("nats", cmd, workdir, workdir / "nats.log", mqtt_port, ready=_nats_ready)


def stop_nats(proc: ManagedProcess, timeout: float = STOP_TIMEOUT_S) -> None:
    """Graceful stop that keeps every acknowledged message: lame duck mode (SIGUSR2) closes
    the clients, then the server stores what it has and exits; SIGTERM after `timeout`."""
    if proc.popen is None or proc.popen.poll() is not None:
        proc.stop()
        return
    proc.popen.send_signal(signal.SIGUSR2)
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.stop()


def restart_nats(proc: ManagedProcess, *, kill: bool = False, down_s: float = 0.0) -> None:
    """Stop (`stop_nats`, or SIGKILL with `kill`), wait `down_s`, start the same command
    line again (same config, store and ports); `proc` then describes the new process."""
    if kill:
        proc.kill()
    else:
        stop_nats(proc)
    time.sleep(down_s)
    new = launch(
        proc.name, list(proc.cmdline), proc.workdir, proc.log, proc.port, ready=_nats_ready
    )
    proc.pid, proc.popen = new.pid, new.popen
    proc.create_time, proc.started_at = new.create_time, new.started_at
