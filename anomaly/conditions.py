"""What every anomaly scorer reports, whatever detects: the condition ids its events
carry and the scored readings it can keep. Pure Python, so the hub imports it (and the
online baselines) without numpy, which only trained models need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from anomaly.extractor import FeatureVector

RULE_PREFIX: Final = "anomaly."
INCIDENT: Final = "anomaly"


def rule_id(kind: str) -> str:
    """The condition id of a kind's detector (what dedup and the event desk group by)."""
    return f"{RULE_PREFIX}{kind}"


@dataclass(frozen=True, slots=True)
class Scored:
    """One scored reading (kept for evaluation and the benchmark)."""

    vector: FeatureVector
    score: float
    flagged: bool
