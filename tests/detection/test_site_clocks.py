"""What carries no event time (a rejection, a status without a device time) is dated by
its own site's newest reading, so the events do not depend on how sites interleave in
the log: a hub reading one site (a cluster partition) decides as a hub reading all."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from detection.rules_service import RulesService, SiteClocks
from events.manager import EventManager
from events.store import EventStore
from ingest.decode import Rejected, RejectReason
from ingest.records import Record, Tick
from rules.directory import Directory
from rules.engine import Engine
from rules.schema import load_rules
from rules.site_directory import directory_from_sites
from sensors.base import FieldValue, Reading
from sensors.topics import DEFAULT_PREFIX, Route, device_topic
from sites.model import load_site_ref

T0_MS = 1_800_000_000_000
MIN_MS = 60_000


@pytest.fixture(scope="module")
def directory() -> Directory:
    return directory_from_sites([load_site_ref("yingyang"), load_site_ref("melbourne_bays")])


def a_device(directory: Directory, site: str, kind: str) -> str:
    return sorted(d.id for d in directory.devices.values() if d.site == site and d.kind == kind)[0]


def heartbeat(site: str, kind: str, device: str, at_ms: int) -> Reading:
    fields: dict[str, FieldValue] = {"online": True, "state": "online"}
    return Reading(
        kind, site, kind, device, "status", None, at_ms * 1_000_000, True, None, {}, fields
    )  # fmt: skip


def malformed(site: str, kind: str, device: str, received_ms: int) -> Rejected:
    route = Route(site, kind, device, "event")
    topic = device_topic(DEFAULT_PREFIX, site, kind, device, "event")
    return Rejected(RejectReason.BAD_JSON, "test", topic, b"{", received_ms * 1_000_000, route)


def decide(
    tmp_path: Path, directory: Directory, records: Sequence[Record]
) -> list[tuple[str, str, int]]:
    tmp_path.mkdir()
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        service = RulesService(
            Engine(load_rules(), directory), store, EventManager(store, workers={})
        )
        service.step(records, force=True)
        found = store.list_events(limit=1000)
    return sorted((e.rule_id, e.key, e.raised_ms) for e in found)


@pytest.fixture
def stream(directory: Directory) -> Iterator[tuple[list[Record], list[Record]]]:
    """Yingyang's log alone, and the same interleaved with Melbourne's, which runs 30 s
    ahead: the rejection follows a Melbourne reading newer than any of Yingyang's."""
    door = a_device(directory, "yingyang", "access")
    bay = a_device(directory, "melbourne_bays", "parking")
    own: list[Record] = []
    mixed: list[Record] = []
    for minute in range(10):
        mine = heartbeat("yingyang", "access", door, T0_MS + minute * MIN_MS)
        other = heartbeat("melbourne_bays", "parking", bay, T0_MS + minute * MIN_MS + 30_000)
        own.append(mine)
        mixed += [mine, other]
        if minute == 5:  # three make a `malformed_payloads` event
            bad = [malformed("yingyang", "access", door, T0_MS + 99 * MIN_MS)] * 3
            own += bad
            mixed += bad
    own.append(Tick(T0_MS + 11 * MIN_MS))
    mixed.append(Tick(T0_MS + 11 * MIN_MS))
    yield own, mixed


def test_a_rejection_is_dated_by_its_own_sites_clock_whatever_else_the_log_holds(
    tmp_path: Path, directory: Directory, stream: tuple[list[Record], list[Record]]
) -> None:
    own, mixed = stream
    alone = decide(tmp_path / "alone", directory, own)
    together = [e for e in decide(tmp_path / "mixed", directory, mixed) if "bay" not in e[1]]
    assert alone == together
    raised = [at for rule, _key, at in alone if rule == "malformed_payloads"]
    assert raised == [T0_MS + 5 * MIN_MS]  # its site's newest reading, not Melbourne's


def test_site_clocks_fall_back_to_the_watermark_and_follow_ticks() -> None:
    clocks = SiteClocks()
    assert clocks.date("a", 500) == 500  # nothing seen of the site yet
    clocks.saw("a", 100)
    clocks.saw("a", 90)  # an older reading moves nothing
    assert clocks.date("a", 500) == 100
    assert clocks.date(None, 500) == 500  # no site (a bad topic): the watermark
    clocks.ticked(300)
    assert clocks.date("a", 500) == 300  # ticks move every site
