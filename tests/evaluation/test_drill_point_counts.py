"""The drills count stored points per field (`evaluation.drill.point_counts`) on a real
InfluxDB, which answers `count(*)` with null for a field that has no point in the range."""

from __future__ import annotations

import httpx

from devstack.stack import ManagedProcess
from evaluation.drill import point_counts
from ingest.influxql import QueryTarget


def test_a_field_without_points_in_the_range_counts_as_absent(
    influxdb: ManagedProcess, database: str
) -> None:
    url = f"http://127.0.0.1:{influxdb.port}"
    httpx.post(f"{url}/query", params={"q": f'CREATE DATABASE "{database}"'}).raise_for_status()
    # `status` only before the drills' range (time > 0): its count is null, not 0.
    lines = b"device_status,device=a status=1i -1000\ndevice_status,device=a online=true 2000\n"
    httpx.post(f"{url}/write", params={"db": database}, content=lines).raise_for_status()
    counts = point_counts(QueryTarget(url, database))
    assert counts == {"device_status": {"online": 1}}
