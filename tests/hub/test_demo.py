"""`gridwatch run --demo` after a restart: it does not replay what the hub has seen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.demo import RESUME_GAP_S, demo_start
from simulators.demo import DEMO_HISTORY_S
from simulators.engine import epoch_ms


def test_a_restarted_demo_does_not_replay_what_the_hub_has_seen() -> None:
    now = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
    fresh = now - timedelta(seconds=DEMO_HISTORY_S)
    assert demo_start(0, now) == fresh
    seen = now - timedelta(minutes=20)
    assert demo_start(epoch_ms(seen), now) == seen + timedelta(seconds=RESUME_GAP_S)
    long_ago = now - timedelta(days=2)
    assert demo_start(epoch_ms(long_ago), now) == fresh
    ahead = now + timedelta(minutes=3)
    assert demo_start(epoch_ms(ahead), now) == now
