"""What every anomaly scorer reports, whatever detects: the condition ids its events
carry, the clear it sends when a device has gone quiet, and the scored readings it can
keep. Pure Python, so the hub imports it (and the online baselines) without numpy, which
only trained models need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from anomaly.extractor import FeatureVector
from events.model import Detection, Source

RULE_PREFIX: Final = "anomaly."
INCIDENT: Final = "anomaly"


def rule_id(kind: str) -> str:
    """The condition id of a kind's detector (what dedup and the event desk group by)."""
    return f"{RULE_PREFIX}{kind}"


def quiet_clear(
    kind: str, device: str, *, at_ms: int, site: str, cell: str | None, message: str
) -> Detection:
    """Clear a device's anomaly condition: it has gone without a flagged reading long
    enough (the same clear whichever scorer kept the condition open)."""
    return Detection(
        rule_id=rule_id(kind),
        key=device,
        raised=False,
        at_ms=at_ms,
        site=site,
        cell=cell,
        device=device,
        source=Source.ANOMALY,
        incident=INCIDENT,
        message=message,
    )


@dataclass(frozen=True, slots=True)
class Scored:
    """One scored reading (kept for evaluation and the benchmark)."""

    vector: FeatureVector
    score: float
    flagged: bool
