"""Online scoring: readings in batches → feature vectors → scores → detections.

The model is fixed while it scores (retraining is `gridwatch anomaly train`), so a batch
gives the same scores however it was cut. Per device, a flagged reading raises the
condition `anomaly.<kind>` keyed by the device; while it stays anomalous a repeat is sent
at most every `repeat_after_ms` (the event manager bumps the open event's counter, as for
rule events), and it clears once the device has gone `clear_after_ms` without a flagged
reading. Each detection carries the score, the threshold and the features that drove it.
Pure CPU, no I/O: the hub runs `score_batch` on a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from anomaly.conditions import INCIDENT, Scored, quiet_clear, rule_id
from anomaly.extractor import FeatureExtractor, FeatureVector
from anomaly.training import AnomalyModel
from events.model import Detection, Severity, Source
from sensors.base import FieldValue, Reading


@dataclass(frozen=True, slots=True)
class ScoringPolicy:
    repeat_after_ms: int = 600_000
    clear_after_ms: int = 900_000
    top_features: int = 3


@dataclass(slots=True)
class _Open:
    last_flag_ms: int
    last_sent_ms: int
    site: str
    cell: str | None


class AnomalyScorer:
    """Stateful scorer; not thread-safe (one worker at a time)."""

    def __init__(self, model: AnomalyModel, policy: ScoringPolicy | None = None) -> None:
        self.model = model
        self.policy = policy or ScoringPolicy()
        self.extractor = FeatureExtractor(model.profiles)
        self._open: dict[tuple[str, str], _Open] = {}
        self.scored = 0
        self.flagged = 0
        self.keep = True
        """Moot here: the scored vectors are what the model scores."""

    def score_batch(self, readings: Sequence[Reading]) -> tuple[list[Detection], list[Scored]]:
        """Score readings (time-ordered); return the detections and every scored vector."""
        vectors = [v for r in readings if (v := self.extractor.update(r)) is not None]
        vectors = [v for v in vectors if v.kind in self.model.kinds]
        if not vectors:
            return [], []
        scores = np.zeros(len(vectors), dtype=np.float64)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, v in enumerate(vectors):
            groups.setdefault((v.kind, v.device), []).append(i)
        for (kind, device), index in groups.items():
            rows = np.array([vectors[i].values for i in index], dtype=np.float64)
            scores[index] = self.model.kinds[kind].score(device, rows)
        detections: list[Detection] = []
        scored: list[Scored] = []
        for vector, score in zip(vectors, scores.tolist(), strict=True):
            km = self.model.kinds[vector.kind]
            flagged = km.threshold.is_anomalous(score)
            scored.append(Scored(vector, score, flagged))
            self.scored += 1
            detection = self._decide(vector, score, flagged)
            if detection is not None:
                detections.append(detection)
        return detections, scored

    def _decide(self, vector: FeatureVector, score: float, flagged: bool) -> Detection | None:
        key = (vector.kind, vector.device)
        state = self._open.get(key)
        now = vector.ts_ms
        if flagged:
            self.flagged += 1
            if state is None:
                self._open[key] = _Open(now, now, vector.site, vector.cell)
                return self._detection(vector, score, raised=True)
            state.last_flag_ms = now
            if now - state.last_sent_ms >= self.policy.repeat_after_ms:
                state.last_sent_ms = now
                return self._detection(vector, score, raised=True)
            return None
        if state is not None and now - state.last_flag_ms >= self.policy.clear_after_ms:
            del self._open[key]
            return self._detection(vector, score, raised=False)
        return None

    def state_changes(self) -> dict[str, bytes]:
        """Nothing: the model is fixed while it scores (the hub commits no rows for it)."""
        return {}

    def load_state(self, rows: Mapping[str, bytes]) -> None:
        """Nothing to load (see `state_changes`)."""

    def tick(self, now_ms: int) -> list[Detection]:
        """Clear conditions of devices that have gone quiet (no reading to clear them)."""
        out: list[Detection] = []
        for (kind, device), state in list(self._open.items()):
            if now_ms - state.last_flag_ms >= self.policy.clear_after_ms:
                del self._open[(kind, device)]
                out.append(
                    quiet_clear(
                        kind,
                        device,
                        at_ms=now_ms,
                        site=state.site,
                        cell=state.cell,
                        message="no unusual reading for a while",
                    )
                )
        return out

    def _detection(self, vector: FeatureVector, score: float, *, raised: bool) -> Detection:
        km = self.model.kinds[vector.kind]
        row = np.array(vector.values, dtype=np.float64)
        drivers = km.explain(vector.device, row, self.policy.top_features)
        values: dict[str, FieldValue] = {
            "score": round(score, 6),
            "threshold": round(km.threshold.value, 6),
        }
        for name, value, z in drivers:
            values[name] = round(value, 6)
            values[f"{name}_z"] = round(z, 3)
        driving = ", ".join(f"{name}={value:.4g} (z {z:+.1f})" for name, value, z in drivers)
        return Detection(
            rule_id=rule_id(vector.kind),
            key=vector.device,
            raised=raised,
            at_ms=vector.ts_ms,
            site=vector.site,
            cell=vector.cell,
            device=vector.device,
            severity=Severity.LOW,
            title=f"Unusual {vector.kind} behaviour",
            message=(
                f"anomaly score {score:.3g} ≥ threshold {km.threshold.value:.3g}; {driving}"
                if raised
                else f"back to usual (score {score:.3g}); {driving}"
            ),
            incident=INCIDENT,
            source=Source.ANOMALY,
            values=values,
        )
