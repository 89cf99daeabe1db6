"""Golden cases under tests/cases/<kind>/<case>/: payload in, expected point or error out.

Each case directory holds `topic.txt`, `payload.json` (or `payload.bin` when the bytes
are not JSON) and either `expected.json` (measurement, tags, fields) or `rejected.txt`
(the reject reason). Used by the kind contract suite and the decoder's golden runner.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CASES_DIR = Path(__file__).parents[1] / "cases"


@dataclass(frozen=True)
class GoldenCase:
    """One directory under tests/cases/<kind>/."""

    kind: str
    name: str
    topic: str
    payload: bytes
    expected: Mapping[str, Any] | None
    rejected: str | None

    @property
    def channel(self) -> str:
        return self.topic.split("/")[-1]

    def payload_object(self) -> dict[str, Any] | None:
        try:
            obj = json.loads(self.payload)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None


def load_cases() -> list[GoldenCase]:
    """Read every case directory; a malformed one fails collection loudly."""
    cases = []
    for case_dir in sorted(p for p in CASES_DIR.glob("*/*") if p.is_dir()):
        payload_files = [case_dir / n for n in ("payload.json", "payload.bin")]
        (payload_file,) = [p for p in payload_files if p.exists()]
        expected_file, rejected_file = case_dir / "expected.json", case_dir / "rejected.txt"
        assert expected_file.exists() != rejected_file.exists(), case_dir
        cases.append(
            GoldenCase(
                kind=case_dir.parent.name,
                name=case_dir.name,
                topic=(case_dir / "topic.txt").read_text(encoding="utf-8").strip(),
                payload=payload_file.read_bytes(),
                expected=(
                    json.loads(expected_file.read_text(encoding="utf-8"))
                    if expected_file.exists()
                    else None
                ),
                rejected=(
                    rejected_file.read_text(encoding="utf-8").strip()
                    if rejected_file.exists()
                    else None
                ),
            )
        )
    return cases
