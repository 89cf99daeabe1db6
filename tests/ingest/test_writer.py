"""SpoolWriter failure sorting against an in-test fake InfluxDB (real servers: elsewhere)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ingest.writer
from ingest.deadletter import DeadLetterStore, read_dead_letters
from ingest.influx import Failure, InfluxWriter, WriteError, classify
from ingest.spool import Spool, encode_frame
from ingest.stats import IngestStats
from ingest.writer import SpoolWriter

TS0 = 1_740_788_130_000_000_000


def make_lines(n: int, bad: frozenset[int] = frozenset()) -> list[bytes]:
    return [
        (f"smoke,device=d{i} {'bad' if i in bad else 'v'}={i}i {TS0 + i}\n").encode()
        for i in range(n)
    ]


class FakeInflux:
    """Stores payloads; refuses any containing a `bad=` line, or fails a set number of times."""

    def __init__(
        self,
        spool: Spool | None = None,
        *,
        fail_times: int = 0,
        failure: Failure = Failure.RETRY,
        status: int | None = 503,
        retry_after_s: float | None = None,
    ) -> None:
        self.spool = spool
        self.fail_times = fail_times
        self.failure = failure
        self.status = status
        self.retry_after_s = retry_after_s
        self.calls = 0
        self.stored: list[bytes] = []
        self.refused: list[bytes] = []
        self.pending_seen: list[int] = []
        self.closed = False

    async def write(self, payload: bytes) -> None:
        self.calls += 1
        if self.spool is not None:
            self.pending_seen.append(self.spool.pending_lines)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise WriteError(self.failure, self.status, "injected", self.retry_after_s)
        if b" bad=" in payload:
            self.refused.append(payload)
            raise WriteError(Failure.REJECTED, 400, 'field type conflict: "bad"')
        self.stored.extend(payload.splitlines(keepends=True))

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", max_bytes=1 << 30)
    s.open()
    yield s
    s.close()


@pytest.fixture
def dead(tmp_path: Path) -> Iterator[DeadLetterStore]:
    d = DeadLetterStore(tmp_path / "dl", max_bytes=1 << 20, keep=2)
    d.open()
    yield d
    d.close()


def spool_lines(spool: Spool, lines: list[bytes], per_frame: int = 7) -> None:
    for i in range(0, len(lines), per_frame):
        chunk = lines[i : i + per_frame]
        spool.append(encode_frame(chunk, TS0 // 1_000_000), len(chunk))
        spool.sync()


def writer(
    spool: Spool,
    sink: InfluxWriter,
    dead: DeadLetterStore,
    stats: IngestStats,
    commits: list[int] | None = None,
    **kwargs: float,
) -> SpoolWriter:
    on_commit = (lambda: commits.append(spool.pending_lines)) if commits is not None else None
    return SpoolWriter(
        spool,
        sink,
        dead,
        stats,
        batch_size=int(kwargs.pop("batch_size", 1000)),
        retry_min_s=kwargs.pop("retry_min_s", 0.001),
        retry_max_s=kwargs.pop("retry_max_s", 0.005),
        flush_interval_s=kwargs.pop("flush_interval_s", 0.01),
        on_commit=on_commit or (lambda: None),
    )


async def eventually(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Poll until the condition holds; fail after limit_s."""
    step = 0.001
    for _ in range(int(limit_s / step)):
        if condition():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {limit_s} s")


def test_the_fake_is_an_influx_writer() -> None:
    sink: InfluxWriter = FakeInflux()
    assert hasattr(sink, "write") and hasattr(sink, "ping") and hasattr(sink, "aclose")


async def test_empty_spool_writes_nothing(spool: Spool, dead: DeadLetterStore) -> None:
    sink = FakeInflux()
    assert await writer(spool, sink, dead, IngestStats()).write_once() is False
    assert sink.calls == 0


async def test_success_commits_and_counts_stored(spool: Spool, dead: DeadLetterStore) -> None:
    lines = make_lines(30)
    spool_lines(spool, lines)
    sink, stats, commits = FakeInflux(), IngestStats(), list[int]()
    assert await writer(spool, sink, dead, stats, commits).write_once() is True
    assert sink.stored == lines
    assert sink.calls == 1
    assert stats.stored == 30
    assert stats.dead_lettered == 0
    assert spool.pending_lines == 0
    assert spool.read(100) is None
    assert commits == [0]
    assert dead.written == 0


async def test_batches_follow_batch_size(spool: Spool, dead: DeadLetterStore) -> None:
    lines = make_lines(30)
    spool_lines(spool, lines, per_frame=5)
    sink, stats = FakeInflux(), IngestStats()
    w = writer(spool, sink, dead, stats, batch_size=10)
    while await w.write_once():
        pass
    assert sink.calls == 3
    assert sink.stored == lines
    assert stats.stored == 30


async def test_refused_lines_are_isolated_and_dead_lettered(
    spool: Spool, dead: DeadLetterStore
) -> None:
    bad = frozenset({3, 17})
    lines = make_lines(25, bad)
    spool_lines(spool, lines)
    sink, stats = FakeInflux(), IngestStats()
    assert await writer(spool, sink, dead, stats).write_once() is True
    good = [line for i, line in enumerate(lines) if i not in bad]
    assert sorted(sink.stored) == sorted(good)
    assert len(sink.stored) == len(set(sink.stored)) == 23
    assert stats.stored == 25 - 2
    assert stats.dead_lettered == 2
    assert spool.pending_lines == 0
    records = list(read_dead_letters(dead.directory, keep=dead.keep))
    assert len(records) == 2
    assert {base64.b64decode(r["payload_b64"]) for r in records} == {lines[3], lines[17]}
    assert {r["stage"] for r in records} == {"influx"}
    assert {r["reason"] for r in records} == {"influx_400"}
    assert all("field type conflict" in r["detail"] for r in records)
    assert stats.write_failures == {}


async def test_every_line_refused(spool: Spool, dead: DeadLetterStore) -> None:
    lines = make_lines(4, frozenset(range(4)))
    spool_lines(spool, lines)
    stats = IngestStats()
    assert await writer(spool, FakeInflux(), dead, stats).write_once() is True
    assert stats.stored == 0
    assert stats.dead_lettered == 4
    assert spool.pending_lines == 0


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (Failure.RETRY, 503),
        (Failure.RETRY, 429),
        (Failure.RETRY, None),
        (Failure.CONFIG, 401),
        (Failure.CONFIG, 404),
    ],
)
async def test_retryable_failures_retry_and_lose_nothing(
    spool: Spool, dead: DeadLetterStore, failure: Failure, status: int | None
) -> None:
    lines = make_lines(12)
    spool_lines(spool, lines)
    sink = FakeInflux(spool, fail_times=3, failure=failure, status=status)
    stats, commits = IngestStats(), list[int]()
    assert await writer(spool, sink, dead, stats, commits).write_once() is True
    assert sink.calls == 4
    # Nothing was committed while the writes failed.
    assert sink.pending_seen == [12, 12, 12, 12]
    assert commits == [0]
    assert sink.stored == lines
    assert stats.stored == 12
    assert stats.dead_lettered == 0
    assert stats.write_failures == {failure.value: 3}
    assert dead.written == 0


async def test_nothing_is_committed_until_success(spool: Spool, dead: DeadLetterStore) -> None:
    lines = make_lines(5)
    spool_lines(spool, lines)
    sink = FakeInflux(spool, fail_times=10**9)
    stats = IngestStats()
    task = asyncio.create_task(writer(spool, sink, dead, stats).write_once())
    await eventually(lambda: sink.calls >= 5)
    assert not task.done()
    assert spool.pending_lines == 5
    assert stats.stored == 0
    sink.fail_times = 0  # InfluxDB is back
    assert await asyncio.wait_for(task, 5) is True
    assert spool.pending_lines == 0
    assert sink.stored == lines
    assert stats.stored == 5


async def test_retry_after_is_honoured(spool: Spool, dead: DeadLetterStore) -> None:
    spool_lines(spool, make_lines(2))
    sink = FakeInflux(spool, fail_times=1, failure=Failure.RETRY, status=429, retry_after_s=0.2)
    w = writer(spool, sink, dead, IngestStats())
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await w.write_once() is True
    assert loop.time() - start >= 0.19


async def test_retry_then_refusal(spool: Spool, dead: DeadLetterStore) -> None:
    lines = make_lines(8, frozenset({5}))
    spool_lines(spool, lines)
    sink = FakeInflux(spool, fail_times=2)
    stats = IngestStats()
    assert await writer(spool, sink, dead, stats).write_once() is True
    assert stats.stored == 7
    assert stats.dead_lettered == 1
    assert stats.write_failures == {"retry": 2}


async def test_run_writes_in_the_background(spool: Spool, dead: DeadLetterStore) -> None:
    lines = make_lines(10)
    spool_lines(spool, lines)
    sink, stats = FakeInflux(), IngestStats()
    task = asyncio.create_task(writer(spool, sink, dead, stats, batch_size=4).run())
    try:
        await eventually(lambda: stats.stored >= 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sink.stored == lines
    assert spool.pending_lines == 0


async def test_latency_is_recorded(spool: Spool, dead: DeadLetterStore) -> None:
    spool_lines(spool, make_lines(3))
    stats = IngestStats()
    await writer(spool, FakeInflux(), dead, stats).write_once()
    p50, p99 = stats.latency.percentiles(0.5, 0.99)
    assert p50 is not None and p99 is not None
    assert p50 > 0


@pytest.mark.parametrize(
    ("status", "failure"),
    [
        (400, Failure.REJECTED),
        (413, Failure.REJECTED),
        (422, Failure.REJECTED),
        (401, Failure.CONFIG),
        (403, Failure.CONFIG),
        (404, Failure.CONFIG),
        (429, Failure.RETRY),
        (500, Failure.RETRY),
        (502, Failure.RETRY),
        (503, Failure.RETRY),
        (504, Failure.RETRY),
    ],
)
def test_classify(status: int, failure: Failure) -> None:
    assert classify(status) is failure


def test_write_error_message() -> None:
    exc = WriteError(Failure.RETRY, 503, "down", 1.5)
    assert str(exc) == "retry: HTTP 503: down"
    assert exc.retry_after_s == 1.5
    assert str(WriteError(Failure.RETRY, None, "refused")) == "retry: refused"


class FlakyDuringBisection(FakeInflux):
    """Refuses `bad=` lines, and fails once with 503 on a given call (mid-bisection)."""

    def __init__(self, fail_on_call: int) -> None:
        super().__init__()
        self.fail_on_call = fail_on_call

    async def write(self, payload: bytes) -> None:
        if self.calls + 1 == self.fail_on_call:
            self.calls += 1
            raise WriteError(Failure.RETRY, 503, "blip")
        await super().write(payload)


@pytest.mark.parametrize("fail_on_call", range(2, 8))
async def test_retry_during_bisection_dead_letters_each_line_once(
    spool: Spool, dead: DeadLetterStore, fail_on_call: int
) -> None:
    """8 lines, line 1 bad: calls are 1:[0-7] 2:[0-3] 3:[0,1] 4:[0] 5:[1] 6:[2,3] 7:[4-7];
    a 503 anywhere in there re-sends the batch, but line 1 is dead-lettered once."""
    lines = make_lines(8, frozenset({1}))
    spool_lines(spool, lines)
    stats = IngestStats()
    sink = FlakyDuringBisection(fail_on_call)
    assert await writer(spool, sink, dead, stats).write_once() is True
    records = list(read_dead_letters(dead.directory, keep=dead.keep))
    assert [base64.b64decode(r["payload_b64"]) for r in records] == [lines[1]]
    assert stats.dead_lettered == 1
    assert stats.stored == 7
    assert set(sink.stored) == {line for i, line in enumerate(lines) if i != 1}
    assert stats.write_failures == {"retry": 1}
    assert spool.pending_lines == 0


def test_latency_histogram_percentiles_within_two_percent() -> None:
    from ingest.stats import LatencyHistogram

    hist = LatencyHistogram()
    assert hist.percentiles(0.5) == [None]
    values = [float(v) for v in range(1, 1001)]  # 1..1000 ms
    for v in values:
        hist.add(v)
    p50, p99 = hist.percentiles(0.5, 0.99)
    assert p50 is not None and p99 is not None
    assert 500 <= p50 <= 500 * 1.02 + 1e-9
    assert 990 <= p99 <= 990 * 1.02 + 1e-9
    hist.add(-5.0)  # a device clock ahead of the hub's: counted at the floor, never an error
    assert hist.percentiles(0.0)[0] == pytest.approx(0.1)


class SlowInflux(FakeInflux):
    """Takes `seconds` per write and notes when each write started."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.started: list[float] = []

    async def write(self, payload: bytes) -> None:
        self.started.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.seconds)
        await super().write(payload)


async def test_the_rest_of_a_burst_waits_for_idle_once_not_per_batch(
    spool: Spool, dead: DeadLetterStore
) -> None:
    """Idle means no new lines: the backlog shrinking under our own writes is not input.
    Full batches go at once (two in flight for a backlog); the partial rest goes once the
    input has been quiet for idle_s counted from the last new line, not the last write."""
    lines = make_lines(25)
    spool_lines(spool, lines, per_frame=5)
    sink, stats = SlowInflux(0.8), IngestStats()
    w = SpoolWriter(spool, sink, dead, stats, batch_size=10, flush_interval_s=30.0, idle_s=1.0)
    start = asyncio.get_running_loop().time()
    task = asyncio.create_task(w.run())
    try:
        await eventually(lambda: stats.stored == 25, limit_s=10.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sorted(sink.stored) == sorted(lines)
    assert len(sink.started) == 3
    first, second, rest = (t - start for t in sink.started)
    assert first < 0.3 and second < 0.3  # full batches: at once, both in flight
    assert 0.95 < rest < 1.5  # idle_s after the last new line (the old rule: ~1.8 s)


class CountingInflux(SlowInflux):
    """Notes how many writes were in flight at once."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.in_flight = 0
        self.most_in_flight = 0

    async def write(self, payload: bytes) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await super().write(payload)
        finally:
            self.in_flight -= 1


async def test_a_backlog_has_two_writes_in_flight(spool: Spool, dead: DeadLetterStore) -> None:
    lines = make_lines(45)
    spool_lines(spool, lines, per_frame=5)
    sink, stats = CountingInflux(0.05), IngestStats()
    w = SpoolWriter(spool, sink, dead, stats, batch_size=10, flush_interval_s=0.05, idle_s=0.05)
    task = asyncio.create_task(w.run())
    try:
        await eventually(lambda: stats.stored == 45)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sink.most_in_flight == 2
    assert sorted(sink.stored) == sorted(lines)
    assert len(sink.stored) == 45
    assert spool.pending_lines == 0


async def test_two_in_flight_commit_together_after_a_retry(
    spool: Spool, dead: DeadLetterStore
) -> None:
    """The first batch fails once while the second is stored: nothing is committed
    until both are stored, then the cursor moves over both."""
    lines = make_lines(20)
    spool_lines(spool, lines, per_frame=5)
    sink, stats, commits = FakeInflux(spool, fail_times=1), IngestStats(), list[int]()
    w = writer(spool, sink, dead, stats, commits, batch_size=10)
    assert await w._write_two() is True
    assert sink.calls == 3  # two batches, one retried
    assert sorted(sink.stored) == sorted(lines) and len(sink.stored) == 20
    assert sink.pending_seen == [20, 20, 20]  # no commit before both were stored
    assert commits == [0]
    assert stats.stored == 20
    assert stats.write_failures[Failure.RETRY.value] == 1
    assert spool.read(100) is None


async def test_two_in_flight_dead_letter_refused_lines_once(
    spool: Spool, dead: DeadLetterStore
) -> None:
    lines = make_lines(20, bad=frozenset({2, 15}))
    spool_lines(spool, lines, per_frame=5)
    sink, stats = FakeInflux(), IngestStats()
    assert await writer(spool, sink, dead, stats, batch_size=10)._write_two() is True
    assert stats.stored == 18
    assert stats.dead_lettered == 2
    records = list(read_dead_letters(dead.directory, keep=dead.keep))
    assert {base64.b64decode(r["payload_b64"]) for r in records} == {lines[2], lines[15]}
    assert spool.pending_lines == 0


# ---------------------------------------------------------------- readiness probe


class ProbedInflux(FakeInflux):
    """Fails every write until `up`; `/ping` answers only when `answers_ping` (and up)."""

    def __init__(self, spool: Spool | None = None, **kwargs: object) -> None:
        super().__init__(spool, fail_times=10**9, **kwargs)  # type: ignore[arg-type]
        self.pings = 0
        self.answers_ping = False
        self.call_times: list[float] = []

    async def write(self, payload: bytes) -> None:
        self.call_times.append(asyncio.get_running_loop().time())
        await super().write(payload)

    async def ping(self) -> None:
        self.pings += 1
        if not self.answers_ping:
            raise WriteError(Failure.RETRY, None, "ConnectError: refused")

    def come_back(self) -> None:
        self.fail_times = 0
        self.answers_ping = True


@pytest.mark.parametrize("status", [None, 503])
async def test_a_ping_cuts_a_long_backoff_short(
    spool: Spool, dead: DeadLetterStore, status: int | None
) -> None:
    """InfluxDB down (no answer, 5xx), then back: the retry follows its `/ping` within
    a probe interval, not the 5-10 s backoff."""
    spool_lines(spool, make_lines(5))
    sink = ProbedInflux(spool, status=status)
    w = writer(spool, sink, dead, IngestStats(), retry_min_s=5.0, retry_max_s=30.0)
    task = asyncio.create_task(w.write_once())
    await eventually(lambda: sink.calls == 1)
    await asyncio.sleep(1.2)
    assert sink.pings >= 1 and sink.calls == 1
    loop = asyncio.get_running_loop()
    back = loop.time()
    sink.come_back()
    assert await asyncio.wait_for(task, 2) is True
    print(f"\nwrite resumed {sink.call_times[-1] - back:.2f} s after /ping answered")
    assert sink.call_times[-1] - back <= 0.8
    assert spool.pending_lines == 0


@pytest.mark.parametrize(("failure", "status"), [(Failure.RETRY, 429), (Failure.CONFIG, 401)])
async def test_throttling_and_config_failures_wait_the_plain_backoff(
    spool: Spool, dead: DeadLetterStore, failure: Failure, status: int
) -> None:
    """The server is up (throttling, or our config is wrong): `/ping` would answer at
    once, so it is not asked."""
    spool_lines(spool, make_lines(3))
    sink = ProbedInflux(spool, failure=failure, status=status)
    sink.answers_ping = True
    w = writer(spool, sink, dead, IngestStats(), retry_min_s=0.4, retry_max_s=0.4)
    task = asyncio.create_task(w.write_once())
    await asyncio.sleep(1.0)
    sink.fail_times = 0
    assert await asyncio.wait_for(task, 2) is True
    assert sink.pings == 0
    assert 3 <= sink.calls <= 4  # every 0.4 s


async def test_ping_answered_but_writes_failing_is_not_hammered(
    spool: Spool, dead: DeadLetterStore
) -> None:
    """`/ping` says up yet writes get 500: every other wait is the plain backoff, so at
    most two writes per backoff, not one per probe."""
    spool_lines(spool, make_lines(3))
    sink = ProbedInflux(spool, status=500)
    sink.answers_ping = True
    w = writer(spool, sink, dead, IngestStats(), retry_min_s=2.0, retry_max_s=2.0)
    task = asyncio.create_task(w.write_once())
    await asyncio.sleep(3.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    print(f"\n3 s of 500s with /ping up: {sink.calls} writes, {sink.pings} pings")
    assert 2 <= sink.calls <= 4


async def test_a_long_retry_after_is_bounded(
    spool: Spool, dead: DeadLetterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest.writer, "RETRY_AFTER_MAX_S", 0.3)
    spool_lines(spool, make_lines(2))
    sink = FakeInflux(spool, fail_times=1, failure=Failure.RETRY, status=503, retry_after_s=3600)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await asyncio.wait_for(writer(spool, sink, dead, IngestStats()).write_once(), 2)
    assert 0.29 <= loop.time() - start <= 1.0
