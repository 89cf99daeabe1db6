"""Real-data replays: public sensor datasets as MQTT messages of a site's devices.

Each replay reads one dataset of shared/data (see its README), maps the dataset's
entities onto devices of a site and returns the messages plus ground-truth labels.
Values are copied unchanged; only time moves: every timestamp is the dataset's real
time shifted by one constant offset so that the replay's earliest row falls on the
caller's `start`. When a device sends two messages at one instant (a door event and
its telemetry), the second `ts` leads by 1 ms, as in the engine, so every message is a
distinct InfluxDB point. Per device, `seq` counts from 1.

- Smoke (Kaggle "Smoke Detection Dataset", 1 Hz): one detector; `Fire Alarm` → `alarm`
  and one `fire` label per contiguous run of alarm rows.
- Parking (UCI "Parking Birmingham", Stolfi, Alba & Yao 2017): one car park per
  lot-counter device; over-capacity and negative counts are real faults, labelled
  `lot_over_capacity` and `sensor_fault`.
- Doors (Room-Climate, Morgner et al. 2017): one recording per access device; the
  recorded `Door` column gives door events and `door_open` labels.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

from sensors.base import EVENT, TELEMETRY
from sensors.topics import DEFAULT_PREFIX, device_root
from simulators.behaviour import Emission, JsonScalar
from simulators.engine import SimMessage, encode_payload, epoch_ms
from simulators.labels import IncidentKind, Label, sorted_labels
from sites.model import AccessDevice, ParkingDevice, Site, SmokeDevice

# Smoke CSV column → telemetry field, and whether the model's field is an integer.
SMOKE_COLUMNS: Final[tuple[tuple[str, str, bool], ...]] = (
    ("Temperature[C]", "temperature", False),
    ("Humidity[%]", "humidity", False),
    ("TVOC[ppb]", "tvoc", False),
    ("eCO2[ppm]", "eco2", False),
    ("Raw H2", "raw_h2", True),
    ("Raw Ethanol", "raw_ethanol", True),
    ("Pressure[hPa]", "pressure", False),
    ("PM1.0", "pm1_0", False),
    ("PM2.5", "pm2_5", False),
    ("NC0.5", "nc0_5", False),
    ("NC1.0", "nc1_0", False),
    ("NC2.5", "nc2_5", False),
)
SMOKE_ALARM_COLUMN: Final = "Fire Alarm"
# Rooms where a replayed fire reads as a building fire rather than cooking or steam.
SMOKE_PREFERRED_ROOMS: Final = ("living", "corridor")

# Birmingham's LastUpdated is local wall-clock time in Birmingham (the dataset gives no
# offset; its rows follow the car parks' opening hours across the 30 Oct 2016 change
# from BST to GMT). Ambiguous times take the first (BST) reading, fold=0.
BIRMINGHAM_TZ: Final = ZoneInfo("Europe/London")
BIRMINGHAM_TIME: Final = "%Y-%m-%d %H:%M:%S"

DOOR_FILES: Final = re.compile(r"^room_climate-location_C-measurement\d+\.csv$")
# Room-Climate columns (no header): EID, AbsT, RelT, NID, Temp, RelH, L1, L2, Occ, Act,
# Door, Win.
_ABS_T: Final = 1
_NID: Final = 3
_DOOR: Final = 10
_DOOR_COLUMNS: Final = 12


@dataclass(frozen=True, slots=True)
class Replay:
    """Messages of a replay in time order, its ground truth and who played whom."""

    messages: list[SimMessage]
    labels: list[Label]
    mapping: dict[str, str]
    """Dataset entity (file or car park) → device id."""
    notes: list[str] = field(default_factory=list)
    """What was left out of the data and why (duplicates, rows beyond a limit)."""


class _Stream:
    """One device's outgoing messages: seq from 1, ts strictly increasing."""

    def __init__(self, site: Site, kind: str, device_id: str, cell: str) -> None:
        self.device_id = device_id
        self.kind = kind
        self.cell = cell
        # The device's topics but the channel (replays use the default prefix).
        self._prefix = device_root(DEFAULT_PREFIX, site.site, kind, device_id) + "/"
        self._seq = 0
        self._last_ts: int | None = None
        self.messages: list[SimMessage] = []

    def send(self, sim_ms: int, channel: str, fields: dict[str, JsonScalar]) -> None:
        ts = sim_ms if self._last_ts is None or sim_ms > self._last_ts else self._last_ts + 1
        self._seq += 1
        self._last_ts = ts
        emission = Emission(channel=channel, payload=fields, ts_ms=ts, seq=self._seq)
        self.messages.append(
            SimMessage(
                sim_ms=sim_ms,
                device_id=self.device_id,
                kind=self.kind,
                channel=channel,
                topic=self._prefix + channel,
                payload=encode_payload(emission, self.cell),
                retain=False,
            )
        )


def _merge(streams: Iterable[_Stream]) -> list[SimMessage]:
    """All streams in time order; ties by device id, then each device's own order."""
    messages = [m for stream in streams for m in stream.messages]
    return sorted(messages, key=lambda m: (m.sim_ms, m.device_id))  # stable: keeps seq order


def _runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """Index ranges (first, last) of contiguous True runs."""
    runs: list[tuple[int, int]] = []
    first: int | None = None
    for i, flag in enumerate(flags):
        if flag and first is None:
            first = i
        elif not flag and first is not None:
            runs.append((first, i - 1))
            first = None
    if first is not None:
        runs.append((first, len(flags) - 1))
    return runs


# --- smoke --------------------------------------------------------------------------


def default_smoke_device(site: Site) -> SmokeDevice:
    """The first detector in a living room or corridor, else the site's first detector."""
    detectors = site.devices_of("smoke")
    if not detectors:
        raise ValueError(f"site {site.site!r} has no smoke detector to replay onto")
    preferred = [d for d in detectors if d.attributes.room in SMOKE_PREFERRED_ROOMS]
    return (preferred or detectors)[0]


def replay_smoke(
    site: Site,
    csv_path: str | Path,
    *,
    start: datetime,
    device_id: str | None = None,
    limit: int | None = None,
) -> Replay:
    """Replay the smoke-detector run on one detector; `Fire Alarm` runs become `fire` labels.

    Each row is one telemetry message with every measured column and `alarm`; the
    dataset's `CNT` is not reused as `seq` (it starts at 0, ours at 1).
    """
    path = Path(csv_path)
    if device_id is None:
        device: SmokeDevice = default_smoke_device(site)
    else:
        found = site.device(device_id)
        if not isinstance(found, SmokeDevice):
            raise ValueError(f"{device_id!r} is a {found.kind} device, not a smoke detector")
        device = found
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    notes: list[str] = []
    if limit is not None and limit < len(rows):
        notes.append(f"{path.name}: replayed the first {limit} of {len(rows)} rows")
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"{path}: no rows to replay")
    times_ms = [int(row["UTC"]) * 1000 for row in rows]
    offset = epoch_ms(start) - min(times_ms)
    stream = _Stream(site, "smoke", device.id, device.cell)
    alarms: list[bool] = []
    for row, time_ms in zip(rows, times_ms, strict=True):
        fields: dict[str, JsonScalar] = {
            name: int(row[column]) if is_int else float(row[column])
            for column, name, is_int in SMOKE_COLUMNS
        }
        alarm = int(row[SMOKE_ALARM_COLUMN]) == 1
        fields["alarm"] = alarm
        alarms.append(alarm)
        stream.send(time_ms + offset, TELEMETRY, fields)
    labels = [
        Label(
            id=f"replay-smoke-{device.id}-{n}",
            kind=IncidentKind.FIRE,
            site=site.site,
            cell=device.cell,
            devices=(device.id,),
            start_ms=times_ms[first] + offset,
            end_ms=times_ms[last] + offset,
            source=f"smoke/{path.name} rows {first}-{last} (Fire Alarm = 1)",
        )
        for n, (first, last) in enumerate(_runs(alarms), start=1)
    ]
    return Replay(
        messages=_merge([stream]),
        labels=sorted_labels(labels),
        mapping={path.name: device.id},
        notes=notes,
    )


# --- parking ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _LotRow:
    time_ms: int
    capacity: int
    occupancy: int


def birmingham_time_ms(text: str) -> int:
    """A LastUpdated value (Birmingham local time) → epoch milliseconds (UTC)."""
    local = datetime.strptime(text, BIRMINGHAM_TIME).replace(tzinfo=BIRMINGHAM_TZ)
    return epoch_ms(local)


def lot_counters(site: Site) -> list[ParkingDevice]:
    """The site's car-park entrance counters (not bay sensors), in file order."""
    return [d for d in site.devices_of("parking") if not d.attributes.is_bay]


def replay_parking(
    site: Site,
    csv_path: str | Path,
    *,
    start: datetime,
    lots: Sequence[str] | None = None,
    limit_lots: int | None = None,
) -> Replay:
    """Replay Birmingham car parks on the site's lot counters, one car park per counter.

    `lots` names the car parks (SystemCodeNumber) in the order of the counters; by
    default the first ones in SystemCodeNumber order, as many as the site has counters
    (or `limit_lots`). Exact duplicate rows (same car park and LastUpdated) keep the
    first. Capacity and occupancy are sent exactly as recorded, faults included.
    """
    path = Path(csv_path)
    counters = lot_counters(site)
    rows_by_lot: dict[str, list[_LotRow]] = {}
    seen: set[tuple[str, str]] = set()
    duplicates: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            lot = row["SystemCodeNumber"]
            key = (lot, row["LastUpdated"])
            if key in seen:
                duplicates[lot] = duplicates.get(lot, 0) + 1
                continue
            seen.add(key)
            rows_by_lot.setdefault(lot, []).append(
                _LotRow(
                    time_ms=birmingham_time_ms(row["LastUpdated"]),
                    capacity=int(row["Capacity"]),
                    occupancy=int(row["Occupancy"]),
                )
            )
    chosen = list(lots) if lots is not None else sorted(rows_by_lot)[: len(counters)]
    if limit_lots is not None:
        chosen = chosen[:limit_lots]
    if not chosen:
        raise ValueError(f"site {site.site!r}: no car park to replay (lot counters: 0?)")
    if len(chosen) > len(counters):
        raise ValueError(
            f"site {site.site!r} has {len(counters)} lot counter(s) for {len(chosen)} car parks"
        )
    unknown = [lot for lot in chosen if lot not in rows_by_lot]
    if unknown:
        raise ValueError(f"{path.name}: no car park {unknown}")
    offset = epoch_ms(start) - min(rows_by_lot[lot][0].time_ms for lot in chosen)
    streams: list[_Stream] = []
    labels: list[Label] = []
    notes: list[str] = []
    mapping: dict[str, str] = {}
    for lot, device in zip(chosen, counters, strict=False):
        mapping[lot] = device.id
        rows = sorted(rows_by_lot[lot], key=lambda r: r.time_ms)
        if duplicates.get(lot):
            notes.append(f"{lot}: skipped {duplicates[lot]} exact duplicate row(s)")
        stream = _Stream(site, "parking", device.id, device.cell)
        for r in rows:
            fields: dict[str, JsonScalar] = {
                "lot": lot,
                "capacity": r.capacity,
                "occupancy": r.occupancy,
            }
            stream.send(r.time_ms + offset, TELEMETRY, fields)
        streams.append(stream)
        for kind, flags, what in (
            (IncidentKind.LOT_OVER_CAPACITY, [r.occupancy > r.capacity for r in rows], "over"),
            (IncidentKind.SENSOR_FAULT, [r.occupancy < 0 for r in rows], "negative"),
        ):
            for n, (first, last) in enumerate(_runs(flags), start=1):
                run = rows[first : last + 1]
                occupancies = [r.occupancy for r in run]
                extreme = max(occupancies) if what == "over" else min(occupancies)
                note = (
                    f"occupancy up to {extreme} of capacity {run[0].capacity}"
                    if what == "over"
                    else f"occupancy down to {extreme}"
                )
                labels.append(
                    Label(
                        id=f"replay-parking-{device.id}-{kind.value}-{n}",
                        kind=kind,
                        site=site.site,
                        cell=device.cell,
                        devices=(device.id,),
                        start_ms=run[0].time_ms + offset,
                        end_ms=run[-1].time_ms + offset,
                        source=f"parking/{path.name} {lot} ({len(run)} rows)",
                        note=note,
                    )
                )
    return Replay(
        messages=_merge(streams),
        labels=sorted_labels(labels),
        mapping=mapping,
        notes=notes,
    )


# --- doors --------------------------------------------------------------------------


def door_controllers(site: Site) -> list[AccessDevice]:
    """Access devices a door recording can play: by id, emergency exits left out."""
    return sorted(
        (d for d in site.devices_of("access") if not d.attributes.emergency_exit),
        key=lambda d: d.id,
    )


def read_door_states(path: str | Path) -> tuple[str, list[tuple[int, bool]]]:
    """(node, [(AbsT ms, door open)]) of one recording, from its lowest node id.

    Every node of a room reports the same recorded door state, so one node is enough;
    the others would only repeat it at slightly different times.
    """
    rows: list[list[str]] = []
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                cells = [cell.strip() for cell in line.split(",")]
                if len(cells) != _DOOR_COLUMNS:
                    raise ValueError(f"{path}: {len(cells)} columns, expected {_DOOR_COLUMNS}")
                rows.append(cells)
    if not rows:
        raise ValueError(f"{path}: no rows")
    node = min((row[_NID] for row in rows), key=int)
    states = sorted(
        ((int(row[_ABS_T]), row[_DOOR] == "1") for row in rows if row[_NID] == node),
        key=lambda state: state[0],
    )
    return node, states


def replay_doors(
    site: Site,
    csv_dir: str | Path,
    *,
    start: datetime,
    files: Sequence[str] | None = None,
) -> Replay:
    """Replay Room-Climate door recordings, one file per door controller.

    Files (default: every room_climate-location_C-measurementNN.csv, by name, as many as
    the site has controllers) go to the site's access devices in id order, emergency
    exits left out. A device sends its
    initial door state as telemetry, then at each change a `door_opened`/`door_closed`
    event and the new `door_open` telemetry. Each open episode is a `door_open` label
    from the opening row to the closing row (or the first/last row when the recording
    starts or ends with the door open).
    """
    directory = Path(csv_dir)
    controllers = door_controllers(site)
    notes: list[str] = []
    if files is not None:
        names = list(files)
    else:
        names = sorted(p.name for p in directory.iterdir() if DOOR_FILES.match(p.name))
        if len(names) > len(controllers):
            left_out = ", ".join(names[len(controllers) :])
            notes.append(f"{len(controllers)} door controller(s): left out {left_out}")
            names = names[: len(controllers)]
    if not names:
        raise ValueError(f"{directory}: no door recordings")
    if len(names) > len(controllers):
        raise ValueError(
            f"site {site.site!r} has {len(controllers)} door controller(s) for "
            f"{len(names)} recordings"
        )
    recordings = [(name, *read_door_states(directory / name)) for name in names]
    offset = epoch_ms(start) - min(states[0][0] for _, _, states in recordings)
    streams: list[_Stream] = []
    labels: list[Label] = []
    mapping: dict[str, str] = {}
    for (name, node, states), device in zip(recordings, controllers, strict=False):
        mapping[name] = device.id
        door = device.attributes.door
        stream = _Stream(site, "access", device.id, device.cell)
        first_ms, state = states[0]
        stream.send(first_ms + offset, TELEMETRY, {"door": door, "door_open": state})
        opened_at: int | None = first_ms if state else None
        episodes: list[tuple[int, int, str]] = []
        for time_ms, is_open in states[1:]:
            if is_open == state:
                continue
            state = is_open
            event = "door_opened" if is_open else "door_closed"
            stream.send(time_ms + offset, EVENT, {"door": door, "event": event})
            stream.send(time_ms + offset, TELEMETRY, {"door": door, "door_open": is_open})
            if is_open:
                opened_at = time_ms
            elif opened_at is not None:
                note = "open when the recording started" if opened_at == first_ms else ""
                episodes.append((opened_at, time_ms, note))
                opened_at = None
        if opened_at is not None:
            episodes.append((opened_at, states[-1][0], "still open when the recording ended"))
        streams.append(stream)
        labels += [
            Label(
                id=f"replay-doors-{device.id}-{n}",
                kind=IncidentKind.DOOR_OPEN,
                site=site.site,
                cell=device.cell,
                devices=(device.id,),
                start_ms=opened + offset,
                end_ms=closed + offset,
                source=f"doors/{name} node {node}",
                note=note,
            )
            for n, (opened, closed, note) in enumerate(episodes, start=1)
        ]
    return Replay(
        messages=_merge(streams),
        labels=sorted_labels(labels),
        mapping=mapping,
        notes=notes,
    )
