"""The hub's processes cap glibc's malloc arenas (`hub.supervision.tune_malloc`): threads
that allocate share two arenas instead of one each, so memory one thread freed is reused
by the next. Checked in a fresh interpreter, through glibc's own per-arena report."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hub.supervision import MALLOC_ARENAS

_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, sys, threading
    from hub.supervision import tune_malloc
    applied = tune_malloc() if sys.argv[1] == "tuned" else {}
    print(json.dumps(applied), flush=True)
    keep = []
    together = threading.Barrier(6)

    def allocate():
        together.wait()  # all alive at once: glibc gives each its own arena if it may
        keep.append([bytearray(20_000) for _ in range(50)])  # past pymalloc: glibc's

    threads = [threading.Thread(target=allocate) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ctypes.CDLL(None).malloc_stats()  # "Arena N:" per arena, on stderr
    """
)


def _arenas(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.update(env or {})
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=True,
    )
    arenas = sum(line.startswith("Arena ") for line in done.stderr.splitlines())
    return done.stdout.strip(), arenas


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_threads_share_the_capped_arenas() -> None:
    _, untuned = _arenas("plain")
    applied, tuned = _arenas("tuned")
    assert untuned > MALLOC_ARENAS, "six allocating threads should take arenas of their own"
    assert tuned <= MALLOC_ARENAS
    assert '"MALLOC_ARENA_MAX": 2' in applied and '"MALLOC_MMAP_THRESHOLD_": 131072' in applied


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_environment_wins() -> None:
    applied, arenas = _arenas("tuned", {"MALLOC_ARENA_MAX": "4"})
    assert "MALLOC_ARENA_MAX" not in applied
    assert MALLOC_ARENAS < arenas <= 4
