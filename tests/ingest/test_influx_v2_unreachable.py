"""The InfluxDB 2.x/3.x writer (no such server can run here: ARCHITECTURE.md) says
"retry" when nothing answers, through its lazily imported transport's errors."""

from __future__ import annotations

import pytest

from devstack.stack import free_port
from ingest.influx import Failure, InfluxV2Writer, V2Target, WriteError


@pytest.mark.parametrize("call", ["write", "ping"])
async def test_an_unreachable_v2_server_is_a_retryable_failure(call: str) -> None:
    writer = InfluxV2Writer(
        V2Target(f"http://127.0.0.1:{free_port()}", "org", "bucket", "token", timeout_s=2.0)
    )
    try:
        with pytest.raises(WriteError) as info:
            if call == "write":
                await writer.write(b"m v=1i 1\n")
            else:
                await writer.ping()
        assert info.value.failure is Failure.RETRY
    finally:
        await writer.aclose()
