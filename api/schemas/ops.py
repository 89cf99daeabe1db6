"""Liveness and readiness answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Check(BaseModel):
    ok: bool
    detail: str = ""


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "checks": {
                        "store": {"ok": True, "detail": ""},
                        "broker": {"ok": True, "detail": ""},
                        "influxdb": {"ok": True, "detail": ""},
                    },
                }
            ]
        }
    )

    status: Literal["ready", "not_ready"]
    checks: dict[str, Check]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
