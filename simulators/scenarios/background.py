"""Ground truth of the incidents a site's ordinary background traffic contains.

Device faults and low batteries happen on a normal day too, an elderly resident may stay
in for a day and a half, a vehicle may stay in its bay for more than a day:
`background_labels` labels these next to the scenarios' labels of a run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Final

from sensors.base import EVENT, STATUS, TELEMETRY
from simulators.engine import SimMessage
from simulators.labels import IncidentKind, Label, sorted_labels
from simulators.scenarios.catalogue import OVERSTAY_LIMIT_MS, SIGNS_OF_LIFE, WELFARE_SILENCE_MS
from sites.model import Site


def _event_name(message: SimMessage) -> str | None:
    try:
        body = json.loads(message.payload)
    except ValueError:
        return None  # a malformed-payload scenario's message
    event = body.get("event") if isinstance(body, dict) else None
    return event if isinstance(event, str) else None


WELFARE: Final = IncidentKind.WELFARE_CHECK
OVERSTAY: Final = IncidentKind.PARKING_OVERSTAY


def _occupied(message: SimMessage) -> bool | None:
    """A bay message's word on occupancy: its `occupied` field or arrival/departure."""
    try:
        body = json.loads(message.payload)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    occupied = body.get("occupied")
    if isinstance(occupied, bool):
        return occupied
    event = body.get("event")
    return True if event == "vehicle_arrived" else False if event == "vehicle_left" else None


def background_labels(
    site: Site, messages: Iterable[SimMessage], labels: Sequence[Label]
) -> list[Label]:
    """Ground truth of the incidents ordinary background traffic contains (device
    faults and low batteries happen on a normal day too): without these labels a
    detector that finds them would be charged with false alarms.

    A fault lasts until the device says `fault_cleared` or, for a bay sensor (which
    has no such event), until its next telemetry. An elderly resident's flat door with
    no sign of life (`SIGNS_OF_LIFE`) for `WELFARE_SILENCE_MS` (a day indoors) is a
    welfare check, from the door's last such event (or first message) to its next one
    (or the end of traffic). An ordinary bay (no fire lane, not reserved) occupied for
    more than `OVERSTAY_LIMIT_MS` is an overstay, from its first occupied report to the
    vehicle leaving (or the end of traffic).
    Events already covered by a scenario label of the same kind on the same device are
    left to that label."""
    covered: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for label in labels:
        for device in label.devices:
            covered.setdefault((device, label.kind.value), []).append(
                (label.start_ms, label.end_ms)
            )
    open_faults: dict[str, int] = {}
    found: list[Label] = []

    def add(kind: IncidentKind, device_id: str, start_ms: int, end_ms: int) -> None:
        spans = covered.get((device_id, kind.value), [])
        if any(lo <= start_ms <= hi for lo, hi in spans):
            return
        device = site.device(device_id)
        found.append(
            Label(
                id=f"bg-{kind.value}-{device_id}-{start_ms}",
                kind=kind,
                site=site.site,
                cell=device.cell,
                devices=(device_id,),
                start_ms=start_ms,
                end_ms=end_ms,
                source="background",
            )
        )

    elderly = {d.id for d in site.devices_of("access") if d.attributes.elderly_resident}
    ordinary_bays = {
        d.id
        for d in site.devices_of("parking")
        if d.attributes.bay_id is not None
        and not d.attributes.fire_lane
        and not d.attributes.reserved
    }
    quiet_since: dict[str, int] = {}
    parked_since: dict[str, int] = {}
    last_ms = 0

    def lasting(kind: IncidentKind, limit_ms: int, device_id: str, start: int, end: int) -> None:
        """A state held at least `limit_ms` is an incident of `kind` (unless covered)."""
        if end - start < limit_ms:
            return
        spans = covered.get((device_id, kind.value), [])
        if not any(lo <= end and start <= hi for lo, hi in spans):
            add(kind, device_id, start, end)

    for message in messages:
        last_ms = max(last_ms, message.sim_ms)
        device_id = message.device_id
        if device_id in elderly:
            quiet_since.setdefault(device_id, message.sim_ms)
            if message.channel == EVENT and _event_name(message) in SIGNS_OF_LIFE:
                since = quiet_since[device_id]
                lasting(WELFARE, WELFARE_SILENCE_MS, device_id, since, message.sim_ms)
                quiet_since[device_id] = message.sim_ms
        elif device_id in ordinary_bays and message.channel != STATUS:
            occupied = _occupied(message)
            if occupied is True:
                parked_since.setdefault(device_id, message.sim_ms)
            elif occupied is False and device_id in parked_since:
                since = parked_since.pop(device_id)
                lasting(OVERSTAY, OVERSTAY_LIMIT_MS, device_id, since, message.sim_ms)
        if message.channel == STATUS:
            continue
        if (
            b'"fault' not in message.payload
            and b"low_battery" not in message.payload
            and (message.device_id not in open_faults)
        ):
            continue  # most messages: nothing to look at, skip the JSON parse
        try:
            body = json.loads(message.payload)
        except ValueError:
            continue  # a malformed-payload scenario's message
        if not isinstance(body, dict):
            continue
        ts = int(body.get("ts", message.sim_ms))
        event = body.get("event") if message.channel == EVENT else None
        device_id = message.device_id
        if event == "fault":
            open_faults.setdefault(device_id, ts)
        elif device_id in open_faults and (
            event == "fault_cleared" or (message.kind == "parking" and message.channel == TELEMETRY)
        ):
            add(IncidentKind.DEVICE_FAULT, device_id, open_faults.pop(device_id), ts)
        elif event == "low_battery":
            add(IncidentKind.LOW_BATTERY, device_id, ts, ts)
    for device_id, start in open_faults.items():
        add(IncidentKind.DEVICE_FAULT, device_id, start, start)
    for device_id, start in quiet_since.items():
        lasting(WELFARE, WELFARE_SILENCE_MS, device_id, start, last_ms)
    for device_id, start in parked_since.items():
        lasting(OVERSTAY, OVERSTAY_LIMIT_MS, device_id, start, last_ms)
    return sorted_labels(found)
