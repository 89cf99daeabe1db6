"""The UCI Occupancy data (shared/data/occupancy) as a labelled stream: an office that fills
up is the "unusual" state, and the recorded Occupancy column says when it happened.

Scored three ways: per occupied episode (caught or not, delay to the first alarm), per
alarm (inside an episode or a false alarm), and NAB's standard profile with the episodes
as windows, plus the threshold-free ROC AUC of the score against the label.
`evaluate_occupancy_online` scores the hub's default (online baselines) the same way, the
office's climate and CO2 replayed as a smoke detector's.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np

from anomaly.baselines import OnlineParams
from anomaly.protocol import FloatArray, JsonValue
from anomaly.streaming import StreamConfig, StreamResult, run_stream
from evaluation.anomaly_scenarios import decoded
from evaluation.nab import FileScore, Window, nab_default_profiles, normalised, score_detections
from evaluation.plots import Panel
from evaluation.smoke_eval import ONLINE_SITE, OnlineRun, run_online
from sensors.base import TELEMETRY, Reading
from sensors.topics import DEFAULT_PREFIX, device_root
from simulators.behaviour import Emission, JsonScalar
from simulators.engine import SimMessage, encode_payload
from simulators.replay import default_smoke_device
from sites.model import load_site_ref

OCCUPANCY_CHANNELS: tuple[str, ...] = ("Temperature", "Humidity", "Light", "CO2", "HumidityRatio")
OCCUPANCY_FILES: tuple[str, ...] = ("datatest.txt", "datatraining.txt")


class OccupancyFormatError(ValueError):
    """The occupancy directory lacks its files or they have no usable rows."""


@dataclass(frozen=True)
class OccupancyData:
    """Readings in time order, minutes since the first row, the label, malformed rows."""

    times: tuple[datetime, ...]
    readings: FloatArray
    occupied: FloatArray
    skipped: int


def load_occupancy(directory: Path) -> OccupancyData:
    """Read the UCI files in ``directory``, merge them in time order, skip bad rows."""
    records: dict[datetime, tuple[list[float], float]] = {}
    skipped = 0
    found = [directory / name for name in OCCUPANCY_FILES if (directory / name).is_file()]
    if not found:
        raise OccupancyFormatError(f"{directory}: none of {', '.join(OCCUPANCY_FILES)}")
    for path in found:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            missing = {"date", "Occupancy", *OCCUPANCY_CHANNELS} - set(header)
            if missing:
                raise OccupancyFormatError(f"{path}: missing columns {', '.join(sorted(missing))}")
            for fields in reader:
                # The UCI rows carry one leading id field that the header does not name.
                try:
                    row = dict(zip(header, fields[len(fields) - len(header) :], strict=True))
                    stamp = datetime.fromisoformat(row["date"])
                    values = [float(row[name]) for name in OCCUPANCY_CHANNELS]
                    label = float(row["Occupancy"])
                except (TypeError, ValueError, KeyError):
                    skipped += 1
                    continue
                records[stamp] = (values, label)
    if not records:
        raise OccupancyFormatError(f"{directory}: no usable rows")
    times = tuple(sorted(records))
    readings = np.asarray([records[t][0] for t in times], dtype=np.float64)
    occupied = np.asarray([records[t][1] for t in times], dtype=np.float64)
    return OccupancyData(times, readings, occupied, skipped)


def episodes(label: FloatArray) -> list[Window]:
    """Runs of label 1 as inclusive row spans."""
    flags = np.concatenate([[0], (label > 0.5).astype(np.int8), [0]])
    edges = np.diff(flags)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [Window(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


@dataclass(frozen=True)
class OccupancyReport:
    """The stream's output and its scores against the occupancy label."""

    config: StreamConfig
    data: OccupancyData
    result: StreamResult
    spans: tuple[Window, ...]
    caught: int
    delays_min: tuple[float, ...]
    alarms_inside: int
    alarms_outside: int
    roc_auc: float
    nab: FileScore
    nab_standard: float

    def to_json(self) -> dict[str, JsonValue]:
        """Plain data for ``--json``."""
        delays = sorted(self.delays_min)
        return {
            "config": self.config.describe(),
            "rows": int(self.data.readings.shape[0]),
            "skipped_rows": self.data.skipped,
            "episodes": len(self.spans),
            "episodes_caught": self.caught,
            "median_delay_min": float(np.median(delays)) if delays else None,
            "alarms_inside": self.alarms_inside,
            "alarms_outside": self.alarms_outside,
            "roc_auc": self.roc_auc,
            "nab_standard": self.nab_standard,
            "nab_raw": self.nab.raw,
        }


def evaluate_occupancy(
    directory: Path, config: StreamConfig, on_progress: Callable[[int], None] | None = None
) -> OccupancyReport:
    """Stream the detector over the office readings and score it against occupancy."""
    from sklearn.metrics import roc_auc_score

    data = load_occupancy(directory)
    result = run_stream(data.readings, config, on_progress)
    spans = tuple(episodes(data.occupied))
    minutes = np.array([t.timestamp() / 60.0 for t in data.times])
    caught = 0
    delays: list[float] = []
    inside = np.zeros(result.alarms.shape[0], dtype=np.bool_)
    for span in spans:
        inside[span.left : span.right + 1] = True
        hits = np.flatnonzero(result.alarms[span.left : span.right + 1])
        if hits.size:
            caught += 1
            delays.append(float(minutes[span.left + hits[0]] - minutes[span.left]))
    labels = data.occupied > 0.5
    auc = float(roc_auc_score(labels, result.score)) if 0 < labels.sum() < labels.size else 0.5
    nab = score_detections(result.alarms, spans, nab_default_profiles()["standard"])
    return OccupancyReport(
        config=config,
        data=data,
        result=result,
        spans=spans,
        caught=caught,
        delays_min=tuple(delays),
        alarms_inside=int(np.count_nonzero(result.alarms & inside)),
        alarms_outside=int(np.count_nonzero(result.alarms & ~inside)),
        roc_auc=auc,
        nab=nab,
        nab_standard=normalised([nab]),
    )


def format_occupancy(report: OccupancyReport) -> str:
    """One paragraph for the terminal."""
    j = report.to_json()
    delay = j["median_delay_min"]
    delay_text = "n/a" if delay is None else f"{delay:.0f} min"
    return (
        f"configuration: {j['config']}\n"
        f"occupancy: {j['rows']} rows ({j['skipped_rows']} malformed skipped); "
        f"{j['episodes_caught']}/{j['episodes']} occupied episodes caught, median delay "
        f"{delay_text}; alarms inside {j['alarms_inside']}, outside {j['alarms_outside']}; "
        f"ROC AUC {report.roc_auc:.3f}; NAB standard (episodes as windows) "
        f"{report.nab_standard:.1f}"
    )


def occupancy_panel(report: OccupancyReport, threshold: float) -> Panel:
    """CO2 with the score and the occupied episodes."""
    return Panel(
        title=f"UCI occupancy, CO2 shown: {report.caught}/{len(report.spans)} episodes "
        f"caught, {report.alarms_outside} alarms outside, ROC AUC {report.roc_auc:.3f}",
        values=report.data.readings[:, OCCUPANCY_CHANNELS.index("CO2")],
        score=report.result.score,
        alarms=report.result.alarms,
        spans=[(w.left, w.right) for w in report.spans],
        threshold=threshold,
        span_label="occupied",
    )


# -- the hub's default: per-device baselines learned online ----------------------------
OCCUPANCY_TO_SMOKE: Final[tuple[tuple[str, str], ...]] = (
    ("Temperature", "temperature"),
    ("Humidity", "humidity"),
    ("CO2", "eco2"),
)
"""Office columns the smoke kind declares (a smoke detector's own climate and CO2
channels); Light and HumidityRatio have no field in any kind, so the hub cannot score
them."""


def occupancy_readings(data: OccupancyData) -> list[Reading]:
    """The office's rows as telemetry of the Yingyang site's default smoke detector, at
    their recorded times (UTC as given), decoded as intake does."""
    site = load_site_ref(ONLINE_SITE)
    device = default_smoke_device(site)
    topic = device_root(DEFAULT_PREFIX, site.site, "smoke", device.id) + "/" + TELEMETRY
    columns = [(OCCUPANCY_CHANNELS.index(column), name) for column, name in OCCUPANCY_TO_SMOKE]
    messages = []
    for seq, (stamp, row) in enumerate(zip(data.times, data.readings, strict=True), start=1):
        ts_ms = round(stamp.replace(tzinfo=UTC).timestamp() * 1000)
        fields: dict[str, JsonScalar] = {name: float(row[i]) for i, name in columns}
        payload = encode_payload(Emission(TELEMETRY, fields, ts_ms=ts_ms, seq=seq), device.cell)
        messages.append(SimMessage(ts_ms, device.id, "smoke", TELEMETRY, topic, payload, False))
    return decoded(messages)


@dataclass(frozen=True)
class OccupancyOnlineReport:
    """The online default against the occupied episodes: an episode is caught when a
    detection raises or repeats the device's condition inside it; a condition opened
    outside every episode is a false alarm."""

    run: OnlineRun
    data: OccupancyData
    spans: tuple[Window, ...]
    warmup_end_row: int
    scored_spans: int
    caught: int
    delays_min: tuple[float, ...]
    opened_inside: int
    opened_outside: int
    flagged_inside: int
    flagged_outside: int
    roc_auc: float
    nab_standard: float

    def to_json(self) -> dict[str, JsonValue]:
        """Plain data for ``--json``."""
        delays = sorted(self.delays_min)
        return {
            "detector": "online",
            "warmup_s": self.run.params.warmup_ms / 1000,
            "rows": int(self.data.readings.shape[0]),
            "skipped_rows": self.data.skipped,
            "fields": [name for _column, name in OCCUPANCY_TO_SMOKE],
            "warmup_end_row": self.warmup_end_row,
            "episodes": len(self.spans),
            "episodes_after_warmup": self.scored_spans,
            "episodes_caught": self.caught,
            "median_delay_min": float(np.median(delays)) if delays else None,
            "opened_inside": self.opened_inside,
            "opened_outside": self.opened_outside,
            "flagged_inside": self.flagged_inside,
            "flagged_outside": self.flagged_outside,
            "roc_auc_after_warmup": self.roc_auc,
            "nab_standard": self.nab_standard,
        }


def evaluate_occupancy_online(
    directory: Path, params: OnlineParams | None = None
) -> OccupancyOnlineReport:
    """Score the office with the online baselines (`params`: the hub's defaults unless
    given) and the result against the occupied episodes; episodes that end inside the
    device's warm-up are counted apart (nothing can be flagged there)."""
    from sklearn.metrics import roc_auc_score

    data = load_occupancy(directory)
    readings = occupancy_readings(data)
    run = run_online(readings, params or OnlineParams())
    times = [r.ts_ns // 1_000_000 for r in readings]
    n = len(times)
    row_of = {t: i for i, t in enumerate(times)}
    warm_end = int(np.searchsorted(times, times[0] + run.params.warmup_ms))
    spans = tuple(episodes(data.occupied))
    score = np.zeros(n)
    flagged = np.zeros(n, dtype=np.bool_)
    for ts, (value, flag) in run.scores.items():
        score[row_of[ts]] = value
        flagged[row_of[ts]] = flag
    opened = np.zeros(n, dtype=np.bool_)
    for ts in run.opened_ms():
        opened[int(np.searchsorted(times, ts))] = True  # a raise is at a reading's time
    raised = np.zeros(n, dtype=np.bool_)
    for d in run.detections:
        if d.raised:
            raised[int(np.searchsorted(times, d.at_ms))] = True
    inside = np.zeros(n, dtype=np.bool_)
    caught = scored = 0
    delays: list[float] = []
    for span in spans:
        inside[span.left : span.right + 1] = True
        if span.right < warm_end:
            continue
        scored += 1
        hits = np.flatnonzero(raised[span.left : span.right + 1])
        if hits.size:
            caught += 1
            delays.append((times[span.left + int(hits[0])] - times[span.left]) / 60_000)
    labels = data.occupied[warm_end:] > 0.5
    auc = float(roc_auc_score(labels, score[warm_end:])) if 0 < labels.sum() < labels.size else 0.5
    nab = score_detections(opened, spans, nab_default_profiles()["standard"])
    return OccupancyOnlineReport(
        run=run,
        data=data,
        spans=spans,
        warmup_end_row=warm_end,
        scored_spans=scored,
        caught=caught,
        delays_min=tuple(delays),
        opened_inside=int(np.count_nonzero(opened & inside)),
        opened_outside=int(np.count_nonzero(opened & ~inside)),
        flagged_inside=int(np.count_nonzero(flagged & inside)),
        flagged_outside=int(np.count_nonzero(flagged & ~inside)),
        roc_auc=auc,
        nab_standard=normalised([nab]),
    )


def format_occupancy_online(report: OccupancyOnlineReport) -> str:
    """One paragraph for the terminal."""
    j = report.to_json()
    delay = j["median_delay_min"]
    delay_text = "n/a" if delay is None else f"{delay:.0f} min"
    return (
        f"configuration: online baselines (hub default scorer), device warm-up "
        f"{j['warmup_s']:.0f} s; office Temperature, Humidity, CO2 as a smoke detector's "
        f"temperature, humidity, eco2\n"
        f"occupancy: {j['rows']} rows ({j['skipped_rows']} malformed skipped), warm-up "
        f"ends at row {j['warmup_end_row']}; {j['episodes_caught']}/"
        f"{j['episodes_after_warmup']} occupied episodes after the warm-up caught "
        f"({j['episodes']} in all), median delay {delay_text}; conditions opened inside "
        f"{j['opened_inside']}, outside {j['opened_outside']}; flagged readings inside "
        f"{j['flagged_inside']}, outside {j['flagged_outside']}; ROC AUC after the warm-up "
        f"{report.roc_auc:.3f}; NAB standard (episodes as windows, opened conditions as "
        f"detections) {report.nab_standard:.1f}"
    )
