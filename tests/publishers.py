"""Test-side MQTT publishing with paho: an independent implementation checks our client.

The publisher keeps a persistent session and auto-reconnects, so a broker restart in
the middle of a run loses nothing on the sending side either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ingest.influxql import QueryTarget, query


class Publisher:
    def __init__(self, port: int, client_id: str, *, will: tuple[str, bytes] | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 1.0)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._infos: list[paho.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        # paho packet ids wrap at 65535: never keep more than 20k unconfirmed.
        if len(self._infos) >= 20_000:
            self._infos.pop(0).wait_for_publish(60)
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self._infos.append(info)

    def publish_all(self, messages: Iterable[tuple[str, bytes]], *, rate: float | None = None,
                    between: Callable[[int], None] | None = None) -> int:
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
        for info in self._infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError("broker did not acknowledge every message in time")
        self._infos.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def count_points(target: QueryTarget, measurement: str, where: str = "") -> int:
    series = query(target, f'SELECT count("seq") FROM "{measurement}" {where}')
    return int(series[0].values[0][1]) if series else 0


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """`wait_for` for async tests: the predicate (blocking I/O) runs off the event loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
