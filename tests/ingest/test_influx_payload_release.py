"""A batch sent to InfluxDB is freed when its write returns, not when the cyclic GC next
runs: httpx leaves a reference cycle between a response and its stream, and through the
request it held the batch (up to ~1 MB). The hub makes full collections rare
(`hub.supervision.tune_gc`), and a 300,000-message backlog had 32 MB of sent batches alive."""

from __future__ import annotations

import gc
import sys

import pytest

from devstack.stack import HOST, ManagedProcess
from ingest.influx import InfluxV1Writer, V1Target, WriteError

pytestmark = pytest.mark.integration


async def test_a_written_batch_is_freed_with_its_response(influxdb: ManagedProcess) -> None:
    writer = InfluxV1Writer(
        V1Target(f"http://{HOST}:{influxdb.port}", "payload_release", create_database=True)
    )
    await writer.ensure_database()
    payload = b"".join(
        b"m,device=d%d v=%d %d\n" % (i, i, 1_700_000_000_000_000_000 + i) for i in range(2_000)
    )
    refused = b'm v="a string where a float was" 1700000000000000000\n'
    gc.disable()  # only reference counting frees anything now
    try:
        held = sys.getrefcount(payload)
        await writer.write(payload)
        assert sys.getrefcount(payload) == held, "the written batch outlives its write"
        held = sys.getrefcount(refused)
        with pytest.raises(WriteError):  # a refusal reads the answer's text: same
            await writer.write(refused)
        assert sys.getrefcount(refused) == held
    finally:
        gc.enable()
        await writer.aclose()
