"""Training reads: stored points back into `Reading`s, from InfluxDB through InfluxQL.

Measurements, tags and fields are the sensor kinds' own names (`sensors/`), and each
field comes back as its declared type (InfluxDB's JSON turns a stored 20.0 into 20), so
history replays through the same feature extractor as live readings. The range is read
in chunks, merged across kinds in time order, so memory stays bounded for any `--since`.
A row that cannot be a reading (no device tag, a field of the wrong type) is counted and
skipped; nothing else is lost.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ingest.influxql import QueryTarget, query
from sensors.base import COMMON_TAGS, FieldValue, Reading, SensorKind

NS_PER_S: Final = 1_000_000_000
DEFAULT_CHUNK_NS: Final = 6 * 3600 * NS_PER_S
_SITE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


@dataclass
class HistoryStats:
    """What a history read saw: readings per kind and rows it had to skip (with why)."""

    readings: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def _typed(kind: SensorKind, name: str, value: Any) -> FieldValue:
    """A stored field value as the kind declares it; TypeError when it cannot be."""
    expected = kind.field(name).type
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise TypeError(
        f"{kind.name}.{name}: stored {type(value).__name__}, declared {expected.__name__}"
    )


def reading_from_row(kind: SensorKind, row: Mapping[str, Any]) -> Reading:
    """One `SELECT *` row of a kind's measurement as a Reading (ValueError/TypeError if not)."""
    site, device, channel = row.get("site"), row.get("device"), row.get("channel")
    if not (isinstance(site, str) and isinstance(device, str) and isinstance(channel, str)):
        raise ValueError("row lacks the site, device or channel tag")
    time_ns = row.get("time")
    if not isinstance(time_ns, int):
        raise ValueError("row time is not epoch nanoseconds")
    fields: dict[str, FieldValue] = {}
    for spec in kind.fields:
        value = row.get(spec.name)
        if value is not None:
            fields[spec.name] = _typed(kind, spec.name, value)
    seq = fields.get("seq")
    cell = row.get("cell")
    tags = {t: v for t in kind.tags if isinstance(v := row.get(t), str) and v}
    return Reading(
        measurement=kind.measurement,
        site=site,
        kind=kind.name,
        device=device,
        channel=channel,
        cell=cell if isinstance(cell, str) and cell else None,
        ts_ns=time_ns,
        ts_from_device=True,
        seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        tags=tags,
        fields=fields,
    )


def select_statement(kind: SensorKind, start_ns: int, end_ns: int, site: str | None) -> str:
    """InfluxQL for one chunk of one kind: its declared fields and tags, by name."""
    if site is not None and not _SITE.match(site):
        raise ValueError(f"site {site!r} is not an identifier")
    columns = [*COMMON_TAGS, *kind.tags, *(spec.name for spec in kind.fields)]
    selected = ", ".join(f'"{name}"' for name in dict.fromkeys(columns))
    where = f"time >= {start_ns} AND time < {end_ns}"
    if site is not None:
        where += f" AND \"site\" = '{site}'"
    # Not SQL: names come from the sensor kinds and the site is checked above.
    return f'SELECT {selected} FROM "{kind.measurement}" WHERE {where}'  # noqa: S608


def chunks(start_ns: int, end_ns: int, chunk_ns: int = DEFAULT_CHUNK_NS) -> list[tuple[int, int]]:
    """[start, end) cut into consecutive chunks of at most `chunk_ns`."""
    if chunk_ns <= 0:
        raise ValueError("chunk_ns must be positive")
    return [(t, min(t + chunk_ns, end_ns)) for t in range(start_ns, end_ns, chunk_ns)]


def read_history(
    target: QueryTarget,
    kinds: Sequence[SensorKind],
    start_ns: int,
    end_ns: int,
    *,
    site: str | None = None,
    chunk_ns: int = DEFAULT_CHUNK_NS,
    stats: HistoryStats | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> Iterator[Reading]:
    """Every stored reading of these kinds in [start, end), in time order.

    `on_chunk(n)` is called after each chunk with the chunk's row count (progress bars).
    Query failures raise `ingest.influxql.InfluxQLError`: training on a partial history
    would silently learn the wrong normal.
    """
    stats = stats if stats is not None else HistoryStats()
    for chunk_start, chunk_end in chunks(start_ns, end_ns, chunk_ns):
        per_kind: list[list[tuple[int, int, Reading]]] = []
        rows = 0
        for order, kind in enumerate(kinds):
            statement = select_statement(kind, chunk_start, chunk_end, site)
            readings: list[tuple[int, int, Reading]] = []
            for series in query(target, statement, epoch="ns"):
                for record in series.records():
                    rows += 1
                    try:
                        reading = reading_from_row(kind, record)
                    except (ValueError, TypeError) as exc:
                        stats.skip(f"{kind.name}: {exc}")
                        continue
                    readings.append((reading.ts_ns, order, reading))
            stats.readings[kind.name] = stats.readings.get(kind.name, 0) + len(readings)
            per_kind.append(readings)
        for _, _, reading in heapq.merge(*per_kind, key=lambda item: (item[0], item[1])):
            yield reading
        if on_chunk is not None:
            on_chunk(rows)
