"""Engine fixes on hand-written sequences: sequences that return to normal by themselves,
travel rules under any key, bounded state (count and travel slots are forgotten), and
the clears a reload owes for the events of changed rules.

Helpers (times in seconds after T0, `Run`) come from tests/support/rules.py.
"""

from __future__ import annotations

from rules.engine import Engine, EngineState, open_conditions
from rules.schema import parse_rules
from tests.support.rules import (
    CLOSED,
    DENIED,
    GRANTED,
    HOUR,
    OPENED,
    RELOAD,
    TRAVEL,
    TRAVEL_DIRECTORY,
    Run,
    at,
    ev,
    event,
    grant,
    reading,
    rules_yaml,
)

HELD = f"{{type: sequence, after: {OPENED}, then: {CLOSED}, within: 45s, at_least: 1}}"
TAILGATE = f"{{type: sequence, after: {GRANTED}, then: {OPENED}, within: 15s, at_most: 1}}"

# --- sequences without a `clear` -------------------------------------------------------


def test_absence_without_clear_returns_when_the_awaited_event_comes() -> None:
    run = Run(rules_yaml(HELD))
    run.feed(event("access", "a1", 0, "door_opened"))
    assert ev(run.tick(50)) == [("raise", 45)]
    assert list(open_conditions(run.state)) == [("r1", "a1")]
    assert ev(run.feed(event("access", "a1", 120, "door_closed"))) == [("clear", 120)]
    assert list(open_conditions(run.state)) == []
    # A second episode raises again (before the fix the slot stayed open for ever and
    # every later episode was swallowed as the same open event).
    run.feed(event("access", "a1", 500, "door_opened"))
    assert ev(run.tick(600)) == [("raise", 545)]
    assert run.state.slots  # open: remembered
    run.feed(event("access", "a1", 700, "door_closed"))
    assert run.state.slots == {}  # back to normal and nothing pending: forgotten


def test_absence_without_clear_ignores_an_older_late_event() -> None:
    """Out of order: a close stamped before the raise does not end it."""
    run = Run(rules_yaml(HELD))
    run.feed(event("access", "a1", 0, "door_opened"))
    run.tick(50)
    assert run.feed(event("access", "a1", 30, "door_closed"), now=60) == []
    assert list(open_conditions(run.state)) == [("r1", "a1")]
    assert ev(run.feed(event("access", "a1", 61, "door_closed"))) == [("clear", 61)]


def test_absence_without_clear_ends_on_reset() -> None:
    cond = HELD[:-1] + ", reset: {channel: event, field: event, equals: door_locked}}"
    run = Run(rules_yaml(cond))
    run.feed(event("access", "a1", 0, "door_opened"))
    assert ev(run.tick(50)) == [("raise", 45)]
    assert ev(run.feed(event("access", "a1", 80, "door_locked"))) == [("clear", 80)]


def test_absence_without_clear_survives_a_restart_mid_condition() -> None:
    run = Run(rules_yaml(HELD))
    run.feed(event("access", "a1", 0, "door_opened"))
    assert ev(run.tick(46)) == [("raise", 45)]
    after = run.restarted()
    assert after.tick(100) == []  # not raised twice
    assert ev(after.feed(event("access", "a1", 200, "door_closed"))) == [("clear", 200)]


def test_excess_without_clear_returns_when_its_window_ends() -> None:
    run = Run(rules_yaml(TAILGATE))
    run.feed(event("access", "a1", 0, "access_granted"))
    run.feed(event("access", "a1", 2, "door_opened"))
    assert ev(run.feed(event("access", "a1", 4, "door_opened"))) == [("raise", 4)]
    assert run.tick(14) == []
    assert ev(run.tick(16)) == [("clear", 15)]
    assert run.state.slots == {}
    # The next grant with two openings is a new incident.
    run.feed(event("access", "a1", 100, "access_granted"))
    run.feed(event("access", "a1", 101, "door_opened"))
    assert ev(run.feed(event("access", "a1", 102, "door_opened"))) == [("raise", 102)]


def test_excess_with_a_rule_clear_keeps_the_rules_timing() -> None:
    run = Run(rules_yaml(TAILGATE, clear="{after: 5m}"))
    run.feed(event("access", "a1", 0, "access_granted"))
    run.feed(event("access", "a1", 2, "door_opened"))
    run.feed(event("access", "a1", 4, "door_opened"))
    assert run.tick(16) == []  # not at the window's end: the rule says 5 min
    assert ev(run.tick(400)) == [("clear", 304)]


def test_excess_clock_jump_fires_raise_window_and_clear_once() -> None:
    """A tick long after (a clock jump): the window end clears once, nothing repeats."""
    run = Run(rules_yaml(TAILGATE))
    run.feed(event("access", "a1", 0, "access_granted"))
    run.feed(event("access", "a1", 1, "door_opened"))
    run.feed(event("access", "a1", 2, "door_opened"))
    assert ev(run.tick(10 * HOUR)) == [("clear", 15)]
    assert run.tick(20 * HOUR) == []
    assert run.state.slots == {}


# --- travel under any key ---------------------------------------------------------------


def test_travel_with_the_default_device_key() -> None:
    """Sightings of one card at two doors meet whatever the rule's key; the event is
    keyed by the rule's key (here the default, the second door) and clears under it."""
    run = Run(rules_yaml(TRAVEL, clear="{after: 5m}"), TRAVEL_DIRECTORY)
    assert run.feed(grant("a1", 0, "card1")) == []
    (d,) = run.feed(grant("a2", 60, "card1"))
    assert (d.raised, d.key, d.devices) == (True, "a2", ("a1", "a2"))
    (c,) = run.tick(400)
    assert (c.raised, c.key, c.at_ms) == (False, "a2", at(360))
    assert run.feed(grant("a2", 61, "card2")) == []  # another card: its own state


def test_travel_with_a_site_key_and_two_cards_interleaved() -> None:
    run = Run(rules_yaml(TRAVEL, key='"{site}"', cooldown="1s"), TRAVEL_DIRECTORY)
    run.feed(grant("a1", 0, "x"))
    run.feed(grant("a2", 1, "y"))  # another card in between does not hide x
    (d,) = run.feed(grant("a2", 30, "x"))
    assert (d.raised, d.key) == (True, "s1")


def test_travel_reraise_under_another_key_returns_the_old_event_first() -> None:
    run = Run(rules_yaml(TRAVEL, cooldown="1s"), TRAVEL_DIRECTORY)
    run.feed(grant("a1", 0, "card"))
    assert [(d.raised, d.key) for d in run.feed(grant("a2", 60, "card"))] == [(True, "a2")]
    out = run.feed(grant("a1", 120, "card"))
    assert [(d.raised, d.key) for d in out] == [(False, "a2"), (True, "a1")]


def test_travel_late_older_sighting_is_compared_but_not_kept() -> None:
    run = Run(rules_yaml(TRAVEL, key='"{credential_hash}"'), TRAVEL_DIRECTORY)
    run.feed(grant("a2", 60, "card"))
    # Delivered late: at a1 a minute earlier. Still one card too fast.
    assert ev(run.feed(grant("a1", 0, "card"), now=61)) == [("raise", 0)]
    (slot,) = run.state.slots.values()
    assert slot["c"]["at"][:2] == ["a2", at(60)]  # the newest sighting stays


# --- bounded state ------------------------------------------------------------------------


def test_travel_state_is_forgotten_after_its_window() -> None:
    run = Run(rules_yaml(TRAVEL, key='"{credential_hash}"'), TRAVEL_DIRECTORY)
    for i in range(200):  # 200 cards, each seen once at a single door
        run.feed(grant("a1", i, f"card{i}"))
    assert len(run.state.slots) == 200
    assert run.tick(200 + HOUR) == []
    assert run.state.slots == {}


def test_count_state_is_forgotten_once_the_window_empties() -> None:
    cond = f"{{type: count, when: {DENIED}, at_least: 3, within: 2m}}"
    run = Run(rules_yaml(cond))
    for i in range(50):
        run.feed(event("access", f"door{i}", i, "access_denied"))
    assert len(run.state.slots) == 50
    run.tick(10 * 60)
    assert run.state.slots == {}


def test_count_memory_stays_bounded_over_a_long_run() -> None:
    """A day of one denial every minute at ever new doors: only the last window stays."""
    cond = f"{{type: count, when: {DENIED}, at_least: 3, within: 2m}}"
    run = Run(rules_yaml(cond))
    for minute in range(24 * 60):
        run.feed(event("access", f"door{minute}", minute * 60, "access_denied"))
    assert len(run.state.slots) <= 3


def test_timers_that_move_with_every_reading_keep_memory_bounded_in_a_backlog() -> None:
    """A backlog spans little event time: a silence timer moves with each reading and
    none comes due. Its old heap entries used to pile up, one per reading."""
    run = Run(rules_yaml("{type: silence, within: 15m}"))
    for i in range(20_000):
        run.feed(reading("smoke", f"s{i % 10}", i / 1000, {"temperature": 21.0}))
    assert len(run.state.slots) == 10
    assert len(run.state.timers) <= 2 * len(run.state.slots) + 1024
    # Rebuilt, the timers still fire: each device falls silent 15 min after its last.
    raised = ev(run.tick(20 + 15 * 60))
    assert [action for action, _t in raised] == ["raise"] * 10


def test_raised_count_is_kept_until_it_clears() -> None:
    cond = f"{{type: count, when: {DENIED}, at_least: 2, within: 1m}}"
    run = Run(rules_yaml(cond))
    run.feed(event("access", "a1", 0, "access_denied"))
    run.feed(event("access", "a1", 1, "access_denied"))
    assert run.tick(30) == []
    assert list(open_conditions(run.state)) == [("r1", "a1")]
    assert ev(run.tick(120)) == [("clear", 60)]
    assert run.state.slots == {}


# --- reload: clears owed for dropped open slots --------------------------------------------


def test_retire_clears_the_open_events_of_changed_rules() -> None:
    old = Engine(parse_rules(RELOAD))
    state = EngineState()
    old.evaluate(reading("smoke", "d1", 0, {"temperature": 90.0}), state, at(0))
    old.evaluate(event("access", "a1", 1, "access_denied"), state, at(1))
    old.evaluate(event("access", "a1", 2, "access_denied"), state, at(2))
    new = Engine(parse_rules(RELOAD.replace("at_least: 2", "at_least: 3")))
    cleared = new.retire(state, old, at(10))
    assert [(d.rule_id, d.key, d.raised, d.at_ms) for d in cleared] == [
        ("denials", "a1", False, at(10))
    ]
    assert list(open_conditions(state)) == [("hot", "d1")]
    assert Engine(parse_rules(RELOAD)).retire(state, new, at(11)) == []  # hot unchanged


def test_absence_without_clear_under_door_chatter() -> None:
    """A bouncing door (open/close within a second, again and again) raises nothing; a
    door then left open raises once; a bounce while raised clears it, and the reopening
    starts a new wait."""
    run = Run(rules_yaml(HELD))
    t = 0.0
    for _ in range(20):
        run.feed(event("access", "a1", t, "door_opened"))
        run.feed(event("access", "a1", t + 0.4, "door_closed"))
        t += 0.8
    assert run.tick(200) == []
    run.feed(event("access", "a1", 300, "door_opened"))
    assert ev(run.tick(400)) == [("raise", 345)]
    assert run.tick(500) == []  # raised once, however long it stands open
    assert ev(run.feed(event("access", "a1", 600, "door_closed"))) == [("clear", 600)]
    run.feed(event("access", "a1", 600.5, "door_opened"))
    assert ev(run.tick(700)) == [("raise", 645.5)]


def test_retire_drops_open_slots_no_engine_knows_without_failing() -> None:
    """A snapshot from an older rule set: an open slot of a rule neither engine has."""
    old = Engine(parse_rules(RELOAD))
    state = EngineState()
    old.evaluate(reading("smoke", "d1", 0, {"temperature": 90.0}), state, at(0))
    state.slots["ghost\x1fd1"] = {"c": {}, "open": True, "ctx": {"device": "d1"}}
    cleared = Engine(parse_rules(RELOAD)).retire(state, old, at(5))
    assert cleared == []
    assert list(open_conditions(state)) == [("hot", "d1")]
