"""A site's event changes as server-sent events, for the wall and other live pages.

The API may run in another process than the rules (`gridwatch serve`), so the stream
does not hook the event manager: it polls the store for the site's open events and
their versions (one indexed query per stream per `poll_s`), and sends what changed:

- `event: change`, `data: {"kind": "raised" | "changed" | "closed", "event": {...}}`
  for each event that appeared in, changed in or left the open set since the last poll;
- `event: sync`, `data: {"cursor", "reason"}` when the client must re-read the whole
  state: on a fresh connection, on a resume after changes it missed, and when one
  poll finds more than `burst` changes (a flood is one re-read, not a thousand rows);
- `: heartbeat` comments after `heartbeat_s` of silence, so proxies keep the line open.

Every `sync` and the last `change` of a poll carry `id: <cursor>`, a digest of the open
set (ids and versions). The browser's EventSource sends it back as `Last-Event-ID` when
it reconnects (a hub restart, a dropped line, the end of a stream's `lifetime_s`); when
the store still matches it, nothing was missed and no re-read is asked for. An event
that opened and closed while the client was away leaves the digest as it was: the wall
never had to show it. A stream ends after `lifetime_s`, so the session cookie is checked
again at the reconnect, and at once when the server shuts down (`LiveStreams.close`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette

from accounts.roles import Role
from api.deps import get_deps
from api.roles import Principal, requires
from events.migrations import events as events_table
from events.model import SecurityEvent
from events.store import EventStore

SITE_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,128}$"
CURSOR: Final = re.compile(r"^[0-9a-f]{1,64}$")
"""What a Last-Event-ID must look like to be compared (anything else: re-read)."""

StreamOperator = Annotated[Principal, Depends(requires(Role.operator, cookie=True))]

router = APIRouter(prefix="/desk", include_in_schema=False)


@dataclass(frozen=True, slots=True)
class StreamTiming:
    poll_s: float = 1.0
    heartbeat_s: float = 15.0
    lifetime_s: float = 300.0
    """A stream ends after this; the browser reconnects (and is authenticated again)."""
    retry_ms: int = 2000
    """How long the browser waits before it reconnects."""
    burst: int = 50
    """More changes than this in one poll are sent as one `sync`."""


class LiveStreams:
    """The app's event streams: their timing, and the switch that ends them when the
    server shuts down (uvicorn waits for open responses before it stops)."""

    def __init__(self, timing: StreamTiming | None = None) -> None:
        self.timing = timing or StreamTiming()
        self.closing = False

    def open(self) -> None:
        self.closing = False

    def close(self) -> None:
        """End every stream at its next poll."""
        self.closing = True


def live_streams(app: Starlette) -> LiveStreams:
    streams = app.state.streams
    assert isinstance(streams, LiveStreams), "create_app() puts LiveStreams on app.state"
    return streams


def event_summary(event: SecurityEvent) -> dict[str, Any]:
    """What a live page shows of an event (the wall's rows, the change messages)."""
    return {
        "id": event.id,
        "version": event.version,
        "rule": event.rule_id,
        "title": event.title or event.rule_id,
        "severity": event.severity.value,
        "state": event.state.value,
        "active": event.active,
        "cell": event.cell,
        "device": event.device,
        "incident": event.incident,
        "raised_ms": event.raised_ms,
        "last_ms": event.last_ms,
        "count": event.count,
        "assignee": event.assignee,
        "parent": event.parent_id,
    }


def open_versions(store: EventStore, site: str) -> dict[str, int]:
    """The site's not-closed events and their versions (the `ix_events_site_closed` index)."""
    c = events_table.c
    query = sa.select(c.id, c.version).where(c.site == site, sa.not_(c.closed))
    with store.reading() as conn:
        return {str(row.id): int(row.version) for row in conn.execute(query)}


def cursor_of(versions: Mapping[str, int]) -> str:
    """The digest of an open set: equal digests, nothing to re-read."""
    text = "\n".join(f"{ident}:{version}" for ident, version in sorted(versions.items()))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def frame(kind: str, data: Mapping[str, Any], *, ident: str | None = None) -> str:
    """One server-sent event (JSON has no raw newlines: one `data:` line)."""
    lines = [f"event: {kind}"]
    if ident is not None:
        lines.append(f"id: {ident}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def _fetch(store: EventStore, ids: Iterable[str]) -> dict[str, SecurityEvent]:
    found = {ident: store.get(ident) for ident in ids}
    return {ident: event for ident, event in found.items() if event is not None}


def change_frames(
    store: EventStore, before: Mapping[str, int], now: Mapping[str, int], *, burst: int
) -> list[str]:
    """The messages that take a client from `before` to `now` (empty if equal)."""
    changed = [ident for ident, version in now.items() if before.get(ident) != version]
    gone = [ident for ident in before if ident not in now]
    if not changed and not gone:
        return []
    cursor = cursor_of(now)
    if len(changed) + len(gone) > burst:
        return [frame("sync", {"cursor": cursor, "reason": "burst"}, ident=cursor)]
    found = _fetch(store, [*changed, *gone])
    messages: list[tuple[int, str, dict[str, Any]]] = []
    for ident in [*changed, *gone]:
        event = found.get(ident)
        kind = "closed" if ident in gone else "changed" if ident in before else "raised"
        body = event_summary(event) if event is not None else {"id": ident}
        messages.append(
            (event.last_ms if event is not None else 0, ident, {"kind": kind, "event": body})
        )
    messages.sort(key=lambda m: (m[0], m[1]))  # oldest first: the newest arrives last
    out = [frame("change", data) for _, _, data in messages[:-1]]
    return [*out, frame("change", messages[-1][2], ident=cursor)]


async def site_changes(
    store: EventStore, site: str, last_id: str | None, streams: LiveStreams
) -> AsyncIterator[str]:
    """The stream's body: retry, then a sync unless `last_id` is current, then changes."""
    timing = streams.timing
    loop = asyncio.get_running_loop()
    yield f"retry: {timing.retry_ms}\n\n"
    seen = await asyncio.to_thread(open_versions, store, site)
    cursor = cursor_of(seen)
    if last_id != cursor:
        reason = "connect" if last_id is None else "resume"
        yield frame("sync", {"cursor": cursor, "reason": reason}, ident=cursor)
    else:
        yield ": resumed\n\n"
    ends = loop.time() + timing.lifetime_s
    last_sent = loop.time()
    while not streams.closing and loop.time() < ends:
        await asyncio.sleep(min(timing.poll_s, max(0.0, ends - loop.time())))
        if streams.closing:
            break
        now = await asyncio.to_thread(open_versions, store, site)
        frames = await asyncio.to_thread(change_frames, store, seen, now, burst=timing.burst)
        seen = now
        for text in frames:
            yield text
        if frames:
            last_sent = loop.time()
        elif loop.time() - last_sent >= timing.heartbeat_s:
            yield ": heartbeat\n\n"
            last_sent = loop.time()


def _last_id(request: Request, query: str | None) -> str | None:
    """Last-Event-ID (the browser's own reconnect) or `?last_id=` (the page's)."""
    given = request.headers.get("last-event-id") or query
    if given is None:
        return None
    return given if CURSOR.match(given) else ""  # unknown: a resume that re-reads


@router.get("/{site}/stream")
async def site_stream(
    request: Request,
    _: StreamOperator,
    site: Annotated[str, Path(pattern=SITE_PATTERN)],
    last_id: Annotated[str | None, Query(max_length=64)] = None,
) -> StreamingResponse:
    """Server-sent events: the site's event changes (see the module's docstring)."""
    store = get_deps(request).events
    body = site_changes(store, site, _last_id(request, last_id), live_streams(request.app))
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
    )
