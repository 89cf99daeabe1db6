"""Event sinks and the outbox dispatcher.

Dispatcher logic runs against an in-memory outbox; each sink is then checked against
a real receiver: InfluxDB 1.6.7 (queried back with InfluxQL), Mosquitto with a paho
subscriber, and an HTTP server started here on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from broker.client import ConnectionLost, ConnectOptions, MqttClient
from devstack.stack import ManagedProcess, free_port
from events import render
from events.dispatcher import OutboxDispatcher, OutboxStore
from events.model import (
    Action,
    AuditRecord,
    Detection,
    Location,
    OutboxItem,
    SecurityEvent,
    Severity,
    Source,
    new_event,
    transition,
)
from events.render import event_json, event_point, point_time_ns, rfc3339_ms
from events.sinks import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    WEBHOOK_BACKOFF_MAX_S,
    BackoffCapped,
    InfluxSink,
    MqttSink,
    ProbedSink,
    SinkRejected,
    SinkUnavailable,
    WebhookSink,
    idempotency_key,
)
from hub.wiring import influx_write
from ingest.influx import InfluxV1Writer, V1Target
from ingest.influxql import QueryTarget, query

T0 = 1_740_788_130_123  # 2025-03-01T00:15:30.123Z


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


async def eventually(predicate: Callable[[], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within_s} s")
        await asyncio.sleep(0.01)


def detection(**changes: object) -> Detection:
    base = Detection(
        rule_id="door_forced",
        key="d1",
        raised=True,
        at_ms=T0,
        site="s1",
        cell="c1",
        device="d1",
        severity=Severity.HIGH,
        title="Door forced",
        message="door d1 opened without a grant",
        incident="door_forced",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def raised(
    event_id: str = "e1", at_ms: int = T0, **changes: object
) -> tuple[SecurityEvent, AuditRecord]:
    return new_event(event_id, detection(**changes), at_ms)


# ---------------------------------------------------------------- fakes


class FakeStore:
    """The outbox part of the event store, in memory, with the store's semantics."""

    def __init__(self) -> None:
        self.items: dict[int, OutboxItem] = {}
        self.failed: dict[int, OutboxItem] = {}
        self.retry_calls: list[tuple[int, str, int, bool, int]] = []
        """(item id, error, next_attempt_ms, failed, clock at the call)."""
        self.broken_reads = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # the dispatcher calls from worker threads

    def add(self, sink: str, event: SecurityEvent, audit: AuditRecord) -> OutboxItem:
        with self._lock:
            item = OutboxItem(next(self._ids), sink, event, audit)
            self.items[item.id] = item
            return item

    def fill(self, sink: str, n: int) -> list[int]:
        return [self.add(sink, *raised(f"e{i}", T0 + i)).id for i in range(n)]

    def outbox_due(self, sink: str, now_ms: int, limit: int = 100) -> list[OutboxItem]:
        with self._lock:
            if self.broken_reads:
                self.broken_reads -= 1
                raise OSError("database is locked")
            due = [i for i in self.items.values() if i.sink == sink and i.next_attempt_ms <= now_ms]
            return sorted(due, key=lambda i: i.id)[:limit]

    def outbox_done(self, ids: Sequence[int]) -> None:
        with self._lock:
            for item_id in ids:
                del self.items[item_id]

    def outbox_retry(
        self, item_id: int, *, error: str, next_attempt_ms: int, failed: bool = False
    ) -> None:
        with self._lock:
            self.retry_calls.append((item_id, error, next_attempt_ms, failed, clock_ms()))
            old = self.items.pop(item_id)
            item = dataclasses.replace(
                old,
                attempts=old.attempts + 1,
                next_attempt_ms=next_attempt_ms,
                last_error=error,
            )
            (self.failed if failed else self.items)[item_id] = item

    def outbox_pending(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for item in self.items.values():
                counts[item.sink] = counts.get(item.sink, 0) + 1
            return counts


def _check_protocol(store: FakeStore) -> OutboxStore:
    return store  # mypy proves the fake implements the protocol


Outcome = Exception | int | None
"""What a scripted call does: raise, deliver the first n then be unavailable, or succeed."""


class ScriptedSink:
    def __init__(
        self,
        name: str = "rec",
        script: Sequence[Outcome] = (),
        refuse: frozenset[int] = frozenset(),
    ) -> None:
        self.name = name
        self.script = list(script)
        self.refuse = refuse
        """Items refused, by refusing any batch that holds one (without naming it)."""
        self.calls: list[list[int]] = []
        self.delivered: list[int] = []

    async def deliver(self, items: Sequence[OutboxItem]) -> None:
        ids = [i.id for i in items]
        self.calls.append(ids)
        outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, int):
            self.delivered.extend(ids[:outcome])
            raise SinkUnavailable("went away mid-batch", delivered=ids[:outcome])
        if self.refuse & set(ids):
            raise SinkRejected("batch refused")
        self.delivered.extend(ids)


def dispatcher(store: FakeStore, *sinks: ScriptedSink, **options: object) -> OutboxDispatcher:
    options = {"backoff_s": (0.01, 0.05), "idle_s": 0.05} | options
    return OutboxDispatcher(store, sinks, clock_ms=clock_ms, **options)  # type: ignore[arg-type]


# ---------------------------------------------------------------- dispatcher


async def test_delivers_in_outbox_order_in_batches() -> None:
    store = FakeStore()
    ids = store.fill("rec", 250)
    sink = ScriptedSink()
    d = dispatcher(store, sink, batch=100)
    assert await d.drain(5)
    assert sink.delivered == ids
    assert [len(c) for c in sink.calls] == [100, 100, 50]
    assert store.items == {}
    assert d.stats()["rec"] == dataclasses.replace(d.stats()["rec"], delivered=250, pending=0)


async def test_unavailable_n_times_then_back_loses_nothing_and_backs_off() -> None:
    store = FakeStore()
    ids = store.fill("rec", 5)
    down = [SinkUnavailable("connection refused") for _ in range(4)]
    sink = ScriptedSink(script=down)
    d = dispatcher(store, sink, backoff_s=(0.02, 0.1))
    assert await d.drain(10)
    assert sink.delivered == ids  # each once, in order
    assert all(call == ids for call in sink.calls)  # the head blocked the rest meanwhile
    stats = d.stats()["rec"]
    assert (stats.delivered, stats.retries, stats.failed) == (5, 4, 0)
    assert stats.last_error == "connection refused"
    # Backoff recorded on the head item: attempt n waits between half and all of min * 2^(n-1).
    waits = [nxt - at for _, _, nxt, _, at in store.retry_calls]
    assert [c[0] for c in store.retry_calls] == [ids[0]] * 4
    for n, wait in enumerate(waits, start=1):
        ceiling = min(100, 20 * 2 ** (n - 1))
        # The store records its own clock a thread hop later: allow that on the low side.
        assert ceiling / 2 - 10 <= wait <= ceiling + 1, (n, wait)


async def test_partial_delivery_is_not_resent() -> None:
    store = FakeStore()
    ids = store.fill("rec", 5)
    sink = ScriptedSink(script=[2])  # two get through, then the sink drops
    d = dispatcher(store, sink)
    assert await d.drain(5)
    assert sink.delivered == ids
    assert sink.calls == [ids, ids[2:]]
    assert store.retry_calls[0][0] == ids[2]  # the backoff sits on the first undelivered


async def test_retry_after_is_honoured_within_the_ceiling() -> None:
    store = FakeStore()
    store.fill("rec", 1)
    sink = ScriptedSink(script=[SinkUnavailable("429", retry_after_s=0.3)])
    d = dispatcher(store, sink, backoff_s=(0.01, 1.0))
    started = time.monotonic()
    assert await d.drain(5)
    assert time.monotonic() - started >= 0.29
    _, _, nxt, _, at = store.retry_calls[0]
    assert nxt - at >= 250


async def test_rejected_item_is_failed_kept_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    ids = store.fill("rec", 3)
    sink = ScriptedSink(script=[SinkRejected("HTTP 400: bad", item_id=ids[1], delivered=ids[:1])])
    d = dispatcher(store, sink)
    with caplog.at_level(logging.ERROR, logger="events.dispatcher"):
        assert await d.drain(5)
    assert sink.calls == [ids, ids[2:]]
    assert store.items == {}
    assert list(store.failed) == [ids[1]]
    assert store.failed[ids[1]].last_error == "HTTP 400: bad"
    stats = d.stats()["rec"]
    assert (stats.delivered, stats.failed, stats.retries) == (2, 1, 0)
    assert any("HTTP 400: bad" in r.getMessage() and "e1" in r.getMessage() for r in caplog.records)


async def test_batch_refused_without_culprit_is_narrowed_to_that_item() -> None:
    store = FakeStore()
    ids = store.fill("rec", 6)
    sink = ScriptedSink(refuse=frozenset({ids[3]}))
    d = dispatcher(store, sink)
    assert await d.drain(5)
    assert sink.delivered == [i for i in ids if i != ids[3]]
    assert list(store.failed) == [ids[3]]
    assert sink.calls[0] == ids and all(len(c) == 1 for c in sink.calls[1:])


async def test_max_attempts_fails_the_head_and_goes_on() -> None:
    store = FakeStore()
    ids = store.fill("rec", 2)
    sink = ScriptedSink(script=[SinkUnavailable("down")] * 4)
    d = dispatcher(store, sink, max_attempts=2)
    assert await d.drain(5)
    assert sink.delivered == []
    assert sorted(store.failed) == ids
    assert "gave up after 2 attempts: down" in store.failed[ids[0]].last_error
    assert d.stats()["rec"].failed == 2


async def test_sink_bug_counts_as_unavailable() -> None:
    store = FakeStore()
    ids = store.fill("rec", 2)
    sink = ScriptedSink(script=[RuntimeError("oops")])
    d = dispatcher(store, sink)
    assert await d.drain(5)
    assert sink.delivered == ids
    assert d.stats()["rec"].retries == 1


async def test_store_failure_is_retried() -> None:
    store = FakeStore()
    ids = store.fill("rec", 2)
    store.broken_reads = 2
    sink = ScriptedSink()
    assert await dispatcher(store, sink).drain(5)
    assert sink.delivered == ids


async def test_drain_times_out_while_a_sink_stays_down() -> None:
    store = FakeStore()
    store.fill("rec", 2)
    sink = ScriptedSink(script=[SinkUnavailable("down")] * 1000)
    d = dispatcher(store, sink)
    assert not await d.drain(0.3)
    assert len(store.items) == 2 and not store.failed
    assert d.stats()["rec"].pending == 2


async def test_one_sink_down_does_not_hold_the_others() -> None:
    store = FakeStore()
    good_ids = store.fill("good", 3)
    store.fill("bad", 3)
    good, bad = ScriptedSink("good"), ScriptedSink("bad", [SinkUnavailable("down")] * 1000)
    d = dispatcher(store, good, bad, idle_s=10)
    task = asyncio.create_task(d.run())
    try:
        await eventually(lambda: good.delivered == good_ids, 5)
        # The manager saves a transition and nudges: delivered well before idle_s.
        more = store.add("good", *raised("late")).id
        d.wake()
        await eventually(lambda: good.delivered == [*good_ids, more], 2)
        assert bad.delivered == [] and d.stats()["bad"].pending == 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_wake_from_another_thread() -> None:
    store = FakeStore()
    sink = ScriptedSink()
    d = dispatcher(store, sink, idle_s=10)
    task = asyncio.create_task(d.run())
    try:
        await asyncio.sleep(0.1)  # idle, waiting for a wake
        item = store.add("rec", *raised())
        await asyncio.to_thread(d.wake)
        await eventually(lambda: sink.delivered == [item.id], 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_drain_while_running_delivers_each_item_once() -> None:
    store = FakeStore()
    ids = store.fill("rec", 300)
    sink = ScriptedSink(script=[SinkUnavailable("down")])
    d = dispatcher(store, sink, batch=7)
    task = asyncio.create_task(d.run())
    try:
        assert await d.drain(5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sink.delivered == ids


def test_sink_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        dispatcher(FakeStore(), ScriptedSink("x"), ScriptedSink("x"))


# ---------------------------------------------------------------- readiness probes


class ProbedScriptedSink(ScriptedSink):
    """A scripted sink with a readiness probe the test switches on and off."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.up = False
        self.probes = 0

    async def ready(self) -> bool:
        self.probes += 1
        return self.up


@contextlib.asynccontextmanager
async def serving(d: OutboxDispatcher) -> AsyncIterator[None]:
    task = asyncio.create_task(d.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_which_sinks_have_a_probe_and_a_lower_ceiling() -> None:
    async def write(lines: Sequence[str]) -> None:
        return None

    async def publish(topic: str, payload: bytes) -> None:
        return None

    webhook = WebhookSink("http://127.0.0.1:9/hook")
    assert isinstance(InfluxSink(write), ProbedSink)
    assert isinstance(MqttSink(publish), ProbedSink)
    assert not isinstance(webhook, ProbedSink) and not isinstance(ScriptedSink(), ProbedSink)
    assert isinstance(webhook, BackoffCapped) and webhook.max_backoff_s == WEBHOOK_BACKOFF_MAX_S


async def test_probes_answer_from_what_they_were_given() -> None:
    async def write(lines: Sequence[str]) -> None:
        return None

    async def publish(topic: str, payload: bytes) -> None:
        return None

    async def pong() -> bool:
        return True

    connected = asyncio.Event()
    mqtt = MqttSink(publish, connected=connected.is_set)
    assert not await mqtt.ready()
    connected.set()
    assert await mqtt.ready()
    assert await InfluxSink(write, ping=pong).ready()
    assert not await InfluxSink(write).ready()  # no probe: wait out the backoff


async def test_a_ready_probe_cuts_a_long_backoff_short() -> None:
    """Down, then back: delivered within a probe interval, not after the 2-4 s backoff,
    which is still stored on the head item (a restart keeps it)."""
    store = FakeStore()
    ids = store.fill("rec", 3)
    sink = ProbedScriptedSink(script=[SinkUnavailable("down")])
    d = dispatcher(store, sink, backoff_s=(4.0, 60.0))
    async with serving(d):
        await eventually(lambda: bool(store.retry_calls), 2)
        _, _, next_attempt_ms, _, at_ms = store.retry_calls[0]
        assert next_attempt_ms - at_ms >= 2000
        await asyncio.sleep(0.3)
        sink.up = True
        back = time.monotonic()
        await eventually(lambda: not store.items, 1.5)
    print(f"\nprobed sink delivered {time.monotonic() - back:.2f} s after it was ready")
    assert sink.delivered == ids and sink.probes >= 1


async def test_a_stored_backoff_is_kept_until_the_probe_says_ready() -> None:
    """After a restart the head still backs off; the probe ends that wait, a sink
    without one waits it out."""
    store = FakeStore()
    (item_id,) = store.fill("rec", 1)
    store.outbox_retry(item_id, error="down", next_attempt_ms=clock_ms() + 60_000)
    plain, probed = ScriptedSink("rec"), ProbedScriptedSink("rec")
    async with serving(dispatcher(store, plain)):
        await asyncio.sleep(1.0)
    assert plain.calls == [] and list(store.items) == [item_id]
    probed.up = True
    async with serving(dispatcher(store, probed)):
        await eventually(lambda: not store.items, 1.5)
    assert probed.delivered == [item_id]


async def test_ready_yet_failing_falls_back_to_the_plain_backoff() -> None:
    """A receiver that answers the probe but fails deliveries: every other wait is the
    plain backoff, so it gets at most two attempts per backoff, not one per probe."""
    store = FakeStore()
    store.fill("rec", 1)
    sink = ProbedScriptedSink(script=[SinkUnavailable("half up")] * 100)
    sink.up = True
    d = dispatcher(store, sink, backoff_s=(2.0, 2.0))  # every wait 1-2 s
    async with serving(d):
        await asyncio.sleep(3.0)
    print(f"\n3 s ready-but-failing: {len(sink.calls)} attempts, {sink.probes} probes")
    assert 2 <= len(sink.calls) <= 5


async def test_a_probe_that_raises_is_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenProbe(ScriptedSink):
        async def ready(self) -> bool:
            raise RuntimeError("probe bug")

    store = FakeStore()
    ids = store.fill("rec", 1)
    sink = BrokenProbe(script=[SinkUnavailable("down")])
    d = dispatcher(store, sink, backoff_s=(1.5, 1.5))
    with caplog.at_level(logging.ERROR, logger="events.dispatcher"):
        async with serving(d):
            await eventually(lambda: not store.items, 3)
    assert sink.delivered == ids
    assert [r.getMessage() for r in caplog.records] == [
        "outbox rec: readiness probe raised; not asked again"
    ]


async def test_a_sink_ceiling_caps_its_backoff() -> None:
    """A webhook (no probe) waits at most its own ceiling, below the dispatcher's."""
    store = FakeStore()
    store.fill("rec", 1)
    sink = ScriptedSink(script=[SinkUnavailable("down")] * 4)
    sink.max_backoff_s = 0.2  # type: ignore[attr-defined]
    d = dispatcher(store, sink, backoff_s=(1.0, 60.0))
    assert await d.drain(5)
    waits = [next_ms - at_ms for _, _, next_ms, _, at_ms in store.retry_calls]
    assert len(waits) == 4 and max(waits) <= 210


# ---------------------------------------------------------------- rendering


def tricky() -> tuple[SecurityEvent, AuditRecord]:
    event, _ = raised(
        "ev-1",
        rule_id="door forced,x=1",
        cell="c 1",
        device="d\\1",
        title='Door "A" \\ west',
        message="line one\nline two\r\n\tend",
        location=Location(116.397, 39.909),
        values={"score": float("nan"), "n": 3},
    )
    return transition(event, Action.COMMENT, actor="op,1", at_ms=T0 + 5, note='say "hi"\n')


def test_line_protocol_golden() -> None:
    event, audit = tricky()
    ts = point_time_ns(event, audit)
    assert ts == 1_740_788_130_128_069_758
    assert event_point(event, audit) == (
        r"security_event,action=comment,cell=c\ 1,device=d/1,incident=door_forced,"
        r"rule=door\ forced\,x\=1,severity=high,site=s1,source=rule,state=active_unacknowledged "
        r'event_id="ev-1",count=1i,active=true,acknowledged=false,title="Door \"A\" \\ west",'
        r'message="line one line two end",actor="op,1",note="say \"hi\" ",'
        r'from_state="active_unacknowledged",lon=116.397,lat=39.909 '
        f"{ts}"
    )


@given(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
    | st.text('a ,="\\\n\r\x7f\x85', max_size=8)
)
def test_tags_and_strings_skip_escaping_only_when_nothing_needs_it(text: str) -> None:
    """The point's shortcut (no `translate` for text with nothing to escape) gives what
    escaping every value gives."""
    line = re.sub(r"[\x00-\x1f\x7f]+", " ", text)
    tag_escapes: dict[str, str | int | None] = {"\\": "/", ",": r"\,", "=": r"\=", " ": r"\ "}
    tag = line.translate(str.maketrans(tag_escapes))
    assert render._tag_value(text) == (tag if line.strip() else "")
    string_escapes: dict[str, str | int | None] = {"\\": "\\\\", '"': '\\"'}
    string = line.translate(str.maketrans(string_escapes))
    assert render._field(text) == '"' + string + '"'


def test_line_protocol_leaves_out_empty_tags_and_unset_fields() -> None:
    event, audit = raised(cell=None, device=None, incident="", location=None)
    line = event_point(event, audit)
    series, rest = line.split(" ", 1)
    field_set = rest.rsplit(" ", 1)[0]
    assert series == (
        "security_event,action=raise,rule=door_forced,severity=high,site=s1,"
        "source=rule,state=active_unacknowledged"
    )
    for absent in ("from_state", "assignee", "parent_id", "lon", "lat"):
        assert f"{absent}=" not in field_set


def test_point_time_keeps_the_millisecond_and_separates_transitions() -> None:
    a_event, a = raised("a")
    b_event, b = raised("b")
    assert point_time_ns(a_event, a) // 1_000_000 == T0
    assert point_time_ns(a_event, a) != point_time_ns(b_event, b)
    assert point_time_ns(a_event, a) == point_time_ns(*raised("a"))  # redelivery: same point
    c1 = transition(a_event, Action.COMMENT, actor="op", at_ms=T0, note="one")
    c2 = transition(c1[0], Action.COMMENT, actor="op", at_ms=T0, note="one")
    assert point_time_ns(*c1) != point_time_ns(*c2)  # version differs


def test_event_json_shape() -> None:
    event, audit = tricky()
    doc = event_json(event, audit)
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert doc["transition"] == {
        "action": "comment",
        "actor": "op,1",
        "at": "2025-03-01T00:15:30.128Z",
        "from_state": "active_unacknowledged",
        "to_state": "active_unacknowledged",
        "note": 'say "hi"\n',
    }
    assert doc["message"] == "line one\nline two\r\n\tend"  # exact text outside InfluxDB
    assert doc["values"] == {"score": None, "n": 3}
    assert doc["location"] == {"lon": 116.397, "lat": 39.909}
    assert (doc["raised_at"], doc["returned_at"], doc["state"]) == (
        "2025-03-01T00:15:30.123Z",
        None,
        "active_unacknowledged",
    )
    assert (doc["id"], doc["version"], doc["count"], doc["source"]) == ("ev-1", 2, 1, "rule")


def test_rfc3339_ms() -> None:
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(T0) == "2025-03-01T00:15:30.123Z"


def test_mismatched_audit_is_refused() -> None:
    event, _ = raised("a")
    _, audit = raised("b")
    with pytest.raises(ValueError, match="paired"):
        event_json(event, audit)
    with pytest.raises(ValueError, match="paired"):
        event_point(event, audit)


# ---------------------------------------------------------------- InfluxDB 1.6.7


@pytest.mark.integration
async def test_influx_points_land_in_influxdb(influxdb: ManagedProcess, database: str) -> None:
    url = f"http://127.0.0.1:{influxdb.port}"
    writer = InfluxV1Writer(V1Target(url, database, create_database=True))
    store = FakeStore()
    event, first = raised("ev-1")
    store.add("influxdb", event, first)
    store.add("influxdb", *tricky())
    # Two events of one rule, no device, same millisecond: both must be kept.
    for name in ("ev-2", "ev-3"):
        store.add("influxdb", *raised(name, T0 + 1000, device=None, key=name))
    d = OutboxDispatcher(store, [InfluxSink(influx_write(writer))], clock_ms=clock_ms)
    try:
        assert await d.drain(10)
    finally:
        await writer.aclose()
    rows = query(QueryTarget(url, database), "SELECT * FROM security_event ORDER BY time")[0]
    records = {r["event_id"]: r for r in rows.records()}
    assert len(rows.values) == 4
    assert sorted(records) == ["ev-1", "ev-2", "ev-3"]  # ev-1 twice: raise and comment
    comment = next(r for r in rows.records() if r["action"] == "comment")
    assert comment["title"] == 'Door "A" \\ west'
    assert comment["message"] == "line one line two end"
    assert comment["note"] == 'say "hi" '
    assert (comment["rule"], comment["cell"], comment["device"]) == (
        "door forced,x=1",
        "c 1",
        "d/1",
    )
    assert (comment["actor"], comment["lon"], comment["lat"]) == ("op,1", 116.397, 39.909)
    assert comment["time"] == point_time_ns(*tricky())
    assert (records["ev-2"]["count"], records["ev-2"]["active"]) == (1, True)
    assert records["ev-2"]["time"] // 1_000_000 == T0 + 1000


@pytest.mark.integration
async def test_influx_refused_point_is_failed_the_rest_written(
    influxdb: ManagedProcess, database: str
) -> None:
    url = f"http://127.0.0.1:{influxdb.port}"
    writer = InfluxV1Writer(V1Target(url, database, create_database=True))
    # `lat` first written as a string: later float `lat` points conflict (HTTP 400).
    await writer.write(f'security_event,site=s0 lat="x" {T0 * 1_000_000}\n'.encode())
    store = FakeStore()
    ok1 = store.add("influxdb", *raised("ok1", location=None))
    bad = store.add("influxdb", *raised("bad", location=Location(1.0, 2.0)))
    ok2 = store.add("influxdb", *raised("ok2", location=None))
    d = OutboxDispatcher(store, [InfluxSink(influx_write(writer))], clock_ms=clock_ms)
    try:
        assert await d.drain(10)
    finally:
        await writer.aclose()
    assert list(store.failed) == [bad.id]
    assert "field type conflict" in store.failed[bad.id].last_error
    rows = query(QueryTarget(url, database), 'SELECT "event_id" FROM security_event')[0]
    assert sorted(v[1] for v in rows.values if v[1]) == ["ok1", "ok2"]
    assert d.stats()["influxdb"].delivered == 2 and ok1.id < ok2.id


async def test_influx_down_is_unavailable() -> None:
    writer = InfluxV1Writer(V1Target(f"http://127.0.0.1:{free_port()}", "db", timeout_s=2))
    item = FakeStore().add("influxdb", *raised())
    try:
        with pytest.raises(SinkUnavailable, match="retry"):
            await InfluxSink(influx_write(writer)).deliver([item])
    finally:
        await writer.aclose()


# ---------------------------------------------------------------- MQTT


class Subscriber:
    """paho, QoS 1: an independent client checks what our sink published."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{port}")
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda _c, _u, _m, _rc, _p: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            (m.topic, bytes(m.payload), m.qos)
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("no SUBACK")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.asynccontextmanager
async def mqtt_client(port: int) -> AsyncIterator[MqttClient]:
    client = MqttClient(
        "127.0.0.1",
        port,
        ConnectOptions(client_id=f"hub-events-{port}", clean_start=True),
        subscriptions=[],
        on_publish=lambda *_: None,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.integration
async def test_mqtt_sink_publishes_to_mosquitto(mosquitto: ManagedProcess) -> None:
    sub = await asyncio.to_thread(Subscriber, mosquitto.port, "gw/events/v1/+")
    store = FakeStore()
    event, audit = raised("ev-1")
    store.add("mqtt", event, audit)
    acked = transition(event, Action.ACKNOWLEDGE, actor="alice", at_ms=T0 + 2000, note="on it")
    store.add("mqtt", *acked)
    store.add("mqtt", *raised("ev-2", site="s2"))
    try:
        async with mqtt_client(mosquitto.port) as client:

            async def publish(topic: str, payload: bytes) -> None:
                await client.publish(topic, payload, qos=1)

            d = OutboxDispatcher(store, [MqttSink(publish)], clock_ms=clock_ms)
            assert await d.drain(10)
        await eventually(lambda: len(sub.messages) >= 3, 10)
    finally:
        sub.close()
    assert [(t, q) for t, _, q in sub.messages] == [
        ("gw/events/v1/s1", 1),
        ("gw/events/v1/s1", 1),
        ("gw/events/v1/s2", 1),
    ]
    docs = [json.loads(p) for _, p, _ in sub.messages]
    assert docs[1] == event_json(*acked)
    assert docs[1]["transition"]["action"] == "acknowledge"
    assert docs[1]["state"] == "active_acknowledged"
    assert b'": ' not in sub.messages[0][1] and b", " not in sub.messages[0][1]  # compact


async def test_mqtt_sink_without_broker_is_unavailable() -> None:
    item = FakeStore().add("mqtt", *raised())
    async with mqtt_client(free_port()) as client:

        async def publish(topic: str, payload: bytes) -> None:
            await client.publish(topic, payload, qos=1)

        with pytest.raises(SinkUnavailable, match="no PUBACK"):
            await MqttSink(publish, timeout_s=0.3).deliver([item])


def test_mqtt_sink_topic_lies_outside_the_device_topics() -> None:
    async def publish(topic: str, payload: bytes) -> None:
        raise AssertionError("not called")

    assert MqttSink(publish).topic("s1") == "gw/events/v1/s1"
    assert MqttSink(publish, "/acme/grid/v9/").topic("s1") == "acme/grid/events/v9/s1"


async def test_mqtt_sink_refuses_a_site_that_is_not_a_topic_level() -> None:
    store = FakeStore()
    good = store.add("mqtt", *raised("a"))
    bad = store.add("mqtt", *raised("b", site="s/+"))
    sent: list[str] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append(topic)

    with pytest.raises(SinkRejected) as info:
        await MqttSink(publish).deliver([good, bad])
    assert (info.value.item_id, info.value.delivered, sent) == (
        bad.id,
        (good.id,),
        ["gw/events/v1/s1"],
    )


async def test_mqtt_sink_pipelines_a_batch_in_order() -> None:
    """Every publish of a batch is sent before the first PUBACK comes back (one round
    trip a batch, not one a transition), in the batch's order."""
    store = FakeStore()
    items = [store.add("mqtt", *raised(f"ev-{i}", site=f"s{i}")) for i in range(5)]
    sent: list[str] = []
    pubacks: list[asyncio.Future[None]] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append(topic)
        puback = asyncio.get_running_loop().create_future()
        pubacks.append(puback)
        await puback

    delivery = asyncio.create_task(MqttSink(publish).deliver(items))
    await eventually(lambda: len(sent) == 5, 5)
    assert not delivery.done()  # waiting for PUBACKs, all five on the wire
    assert sent == [f"gw/events/v1/s{i}" for i in range(5)]
    for puback in reversed(pubacks):  # the order PUBACKs arrive in does not matter
        puback.set_result(None)
    await delivery


async def test_mqtt_sink_reports_only_the_acknowledged_prefix() -> None:
    """A publish that fails mid-batch: what came before it is delivered; it and what
    follows are not, even a later one the broker did acknowledge (sent again, in order)."""
    store = FakeStore()
    items = [store.add("mqtt", *raised(f"ev-{i}")) for i in range(4)]
    calls = 0

    async def publish(topic: str, payload: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionLost("dropped")

    with pytest.raises(SinkUnavailable) as info:
        await MqttSink(publish).deliver(items)
    assert info.value.delivered == (items[0].id, items[1].id)


# ---------------------------------------------------------------- webhooks

SECRET = "webhook-secret-0123456789"


@dataclasses.dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int


class Receiver:
    """A webhook receiver on 127.0.0.1 answering with scripted statuses (then 200)."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.requests: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.script.pop(0) if receiver.script else 200
                receiver.requests.append(Received(dict(self.headers), body, status))
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"no" if status >= 300 else b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


async def test_webhook_signed_body(receiver: Receiver) -> None:
    store = FakeStore()
    item = store.add("webhook", *tricky())
    sink = WebhookSink(receiver.url, secret=SECRET)
    try:
        await sink.deliver([item])
    finally:
        await sink.aclose()
    (req,) = receiver.requests
    expected = "sha256=" + hmac.new(SECRET.encode(), req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(req.headers[SIGNATURE_HEADER], expected)
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers[IDEMPOTENCY_HEADER] == idempotency_key(item)
    assert json.loads(req.body) == json.loads(json.dumps(event_json(*tricky()), allow_nan=False))


async def test_webhook_503_then_200_delivered_once_with_one_key(receiver: Receiver) -> None:
    receiver.script = [503]
    store = FakeStore()
    first = store.add("webhook", *raised("a"))
    second = store.add("webhook", *raised("b"))
    sink = WebhookSink(receiver.url, secret=SECRET)
    d = OutboxDispatcher(store, [sink], clock_ms=clock_ms, backoff_s=(0.05, 0.2))
    try:
        assert await d.drain(10)
    finally:
        await sink.aclose()
    keys = [(r.headers[IDEMPOTENCY_HEADER], r.status) for r in receiver.requests]
    assert keys == [
        (idempotency_key(first), 503),
        (idempotency_key(first), 200),
        (idempotency_key(second), 200),
    ]
    stats = d.stats()["webhook"]
    assert (stats.delivered, stats.retries, stats.failed, stats.pending) == (2, 1, 0, 0)
    assert store.items == {}


async def test_webhook_400_fails_that_item_and_keeps_it(receiver: Receiver) -> None:
    receiver.script = [400]
    store = FakeStore()
    first = store.add("webhook", *raised("a"))
    second = store.add("webhook", *raised("b"))
    sink = WebhookSink(receiver.url)
    d = OutboxDispatcher(store, [sink], clock_ms=clock_ms)
    try:
        assert await d.drain(10)
    finally:
        await sink.aclose()
    assert list(store.failed) == [first.id]
    assert store.failed[first.id].last_error == "HTTP 400: no"
    assert [r.status for r in receiver.requests] == [400, 200]
    assert SIGNATURE_HEADER not in receiver.requests[0].headers  # no secret, no signature
    assert json.loads(receiver.requests[1].body)["id"] == second.event.id


@pytest.mark.parametrize("status", [404, 408, 429, 500])
async def test_webhook_statuses_that_are_retried(receiver: Receiver, status: int) -> None:
    receiver.script = [status]
    item = FakeStore().add("webhook", *raised())
    async with webhook_sink(receiver.url) as sink:
        with pytest.raises(SinkUnavailable, match=f"HTTP {status}"):
            await sink.deliver([item])


async def test_webhook_connection_refused_is_unavailable() -> None:
    item = FakeStore().add("webhook", *raised())
    async with webhook_sink(f"http://127.0.0.1:{free_port()}/hook") as sink:
        with pytest.raises(SinkUnavailable, match="ConnectError"):
            await sink.deliver([item])


@contextlib.asynccontextmanager
async def webhook_sink(url: str) -> AsyncIterator[WebhookSink]:
    sink = WebhookSink(url, timeout_s=2)
    try:
        yield sink
    finally:
        await sink.aclose()


def test_webhook_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookSink("ftp://127.0.0.1/x")


def test_source_enum_reaches_json() -> None:
    event, audit = raised(source=Source.REPORT)
    assert event_json(event, audit)["source"] == "report"
