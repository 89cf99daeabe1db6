"""In-process costs per message for `gridwatch bench ingest`: stable where wall clocks are not.

Each is a part, measured in the bench's own process: never the hub's figure (the bench
prints them as "part, in-process").

The end-to-end rates share two cores with Mosquitto, InfluxDB and the publisher, so they
are noisy. CPU time per message of one stage, measured in this process over the same
benchmark messages, is not: it tells whether a change made a stage cheaper. Each cost
is the best of a few passes (`time.process_time`, so other processes do not count).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ingest.decode import Decoder, Rejected
from ingest.line_protocol import LineEncoder
from sensors.base import DecodeContext, Reading, keyed_hash
from sensors.registry import KINDS

BENCH_HASH_KEY = b"benchmark-credential-key-01234"
"""The key the benchmark's hub uses (its config sets the same one)."""
PUBLISH_RATE = 40_000
"""Messages per second the device timestamps are spread at (the publisher's usual pace)."""


@dataclass(frozen=True, slots=True)
class BenchMessages:
    """The benchmark's messages as the hub receives them, with a receive time each."""

    messages: list[tuple[str, bytes]]
    received_ns: int


def bench_messages(templates: Sequence[tuple[str, int, bytes, bytes]]) -> BenchMessages:
    """Fill the templates' `ts` as the publisher does: wall time, strictly rising per device."""
    start_ms = time.time_ns() // 1_000_000
    last: dict[int, int] = {}
    out = []
    for i, (topic, idx, head, tail) in enumerate(templates):
        ts = max(start_ms + i * 1000 // PUBLISH_RATE, last.get(idx, 0) + 1)
        last[idx] = ts
        out.append((topic, head + str(ts).encode() + tail))
    span_ms = len(templates) * 1000 // PUBLISH_RATE
    return BenchMessages(out, (start_ms + span_ms + 1000) * 1_000_000)


def bench_decoder() -> Decoder:
    return Decoder(KINDS, DecodeContext(hash_identifier=lambda v: keyed_hash(BENCH_HASH_KEY, v)))


def _best_us(per_item: int, passes: int, run: Callable[[], object]) -> float:
    """Best CPU µs per item over `passes` runs, without GC pauses (the hub tunes GC too)."""
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(passes):
            start = time.process_time()
            run()
            best = min(best, time.process_time() - start)
    finally:
        gc.enable()
    return round(best / max(per_item, 1) * 1e6, 2)


def decode_encode_cost(bench: BenchMessages, passes: int = 3) -> dict[str, float]:
    """µs per message of `decode` alone and of `decode` + line protocol (the hub's hot path)."""
    decoder = bench_decoder()
    received_ns = bench.received_ns

    def decode_only() -> None:
        decode = decoder.decode
        for topic, payload in bench.messages:
            decode(topic, payload, received_ns)

    def decode_and_encode() -> None:
        decode = decoder.decode
        encode = LineEncoder().encode
        for topic, payload in bench.messages:
            result = decode(topic, payload, received_ns)
            if not isinstance(result, Rejected):
                encode(result)

    n = len(bench.messages)
    return {
        "decode_us_per_msg": _best_us(n, passes, decode_only),
        "decode_encode_us_per_msg": _best_us(n, passes, decode_and_encode),
    }


def bench_readings(bench: BenchMessages) -> list[Reading]:
    decoder = bench_decoder()
    out = []
    for topic, payload in bench.messages:
        result = decoder.decode(topic, payload, bench.received_ns)
        if isinstance(result, Reading):
            out.append(result)
    return out


def spread_readings(readings: Sequence[Reading], step_ms: int = 1) -> list[Reading]:
    """The same readings with device times `step_ms` apart: rule timers (windows, absences,
    silences) come due all through the stream, as in live traffic at a slower pace. At
    the publisher's pace (0.025 ms apart) hardly any timer fires; this is the stream that
    showed a timer scan of every slot per reading (~560 µs per reading)."""
    if not readings:
        return []
    t0 = readings[0].ts_ns
    return [replace(r, ts_ns=t0 + i * step_ms * 1_000_000) for i, r in enumerate(readings)]


def rules_cost(readings: Sequence[Reading], sites: Sequence[str] = ("yingyang",)) -> float:
    """µs per reading of the default rule pack, as the hub runs it (its default sites),
    with the clock following the readings' device time."""
    from rules.engine import Engine, EngineState
    from rules.schema import load_rules
    from rules.site_directory import directory_from_sites
    from sites.model import load_site_ref

    engine = Engine(load_rules(), directory_from_sites([load_site_ref(s) for s in sites]))

    def evaluate_all() -> None:
        state = EngineState()  # a fresh state per pass: every pass does the same work
        evaluate = engine.evaluate
        for reading in readings:
            evaluate(reading, state, reading.ts_ns // 1_000_000)

    return _best_us(len(readings), 2, evaluate_all)
