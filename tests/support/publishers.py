"""Test-side MQTT publishing with paho: an independent implementation checks our client.

The publisher keeps a persistent session and auto-reconnects, so a broker restart in
the middle of a run loses nothing on the sending side either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ingest.influxql import InfluxQLError, QueryTarget, query


class Publisher:
    def __init__(self, port: int, client_id: str, *, will: tuple[str, bytes] | None = None) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        # PUBACKs tracked by packet id: paho's own wait/is_published raise for messages
        # queued while disconnected, which it still delivers after reconnecting.
        self._unacked: set[int] = set()
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self.client.on_publish = self._on_puback
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_puback(self, _c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        # Runs on paho's thread holding paho's lock: never call into paho from here.
        with self._lock:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._early.add(mid)  # acked before publish() recorded it

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        # paho packet ids wrap at 65535: never keep more than 20k unconfirmed.
        while len(self._unacked) >= 20_000:
            time.sleep(0.01)
        info = self.client.publish(topic, payload, qos=1, retain=retain)  # not under our lock
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
            else:
                self._unacked.add(info.mid)

    def publish_all(
        self,
        messages: Iterable[tuple[str, bytes]],
        *,
        rate: float | None = None,
        between: Callable[[int], None] | None = None,
    ) -> int:
        count = 0
        for topic, payload in messages:
            self.publish(topic, payload)
            count += 1
            if between is not None:
                between(count)
            if rate:
                time.sleep(1.0 / rate)
        return count

    def wait(self, timeout: float = 60.0) -> None:
        """Until the broker has PUBACKed every message (survives reconnects)."""
        deadline = time.monotonic() + timeout
        while self._unacked:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._unacked)} messages not acknowledged by the broker")
            time.sleep(0.01)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def count_points(target: QueryTarget, measurement: str, where: str = "") -> int:
    """Distinct points stored; a database not created yet holds none."""
    try:
        series = query(target, f'SELECT count("seq") FROM "{measurement}" {where}')
    except InfluxQLError as exc:
        if "database not found" in str(exc):
            return 0
        raise
    return int(series[0].values[0][1]) if series else 0


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def until(predicate: Callable[[], bool], within_s: float, what: str) -> None:
    """`wait_for` for async tests: the predicate (blocking I/O) runs off the event loop."""
    import asyncio

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {within_s} s waiting for {what}")
