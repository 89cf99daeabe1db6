"""InfluxQL reads on `/query`: the one query language InfluxDB 1.x, 2.x (v1 compat) and 3.x share.

Used by dashboards tests, anomaly training and the benchmark. Errors raise
`InfluxQLError` with InfluxDB's own message rather than returning empty results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx


class InfluxQLError(Exception):
    """The server answered with an error, or could not be reached."""


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    columns: list[str]
    values: list[list[Any]]
    tags: dict[str, str] = field(default_factory=dict)

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.values]


@dataclass(frozen=True, slots=True)
class QueryTarget:
    url: str
    database: str
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = None
    token: str | None = None
    """For InfluxDB 2.x/3.x v1-compatibility endpoints (`Authorization: Token …`)."""
    timeout_s: float = 30.0


def _request_args(target: QueryTarget, query: str, epoch: str) -> dict[str, Any]:
    params = {"db": target.database, "q": query, "epoch": epoch}
    if target.retention_policy:
        params["rp"] = target.retention_policy
    headers = {"Authorization": f"Token {target.token}"} if target.token else {}
    auth = (target.username, target.password or "") if target.username else None
    return {"params": params, "headers": headers, "auth": auth}


def _parse(resp: httpx.Response) -> list[Series]:
    try:
        body = resp.json()
    except ValueError as exc:
        raise InfluxQLError(f"HTTP {resp.status_code}: not JSON: {resp.text[:200]}") from exc
    if resp.status_code >= 400 or "error" in body:
        raise InfluxQLError(f"HTTP {resp.status_code}: {body.get('error', resp.text[:200])}")
    out: list[Series] = []
    for result in body.get("results", []):
        if "error" in result:
            raise InfluxQLError(str(result["error"]))
        for s in result.get("series", []):
            out.append(
                Series(s.get("name", ""), s["columns"], s.get("values", []), s.get("tags", {}))
            )
    return out


def query(target: QueryTarget, influxql: str, *, epoch: str = "ns") -> list[Series]:
    """Run one InfluxQL statement (or several separated by `;`), blocking."""
    args = _request_args(target, influxql, epoch)
    try:
        # POST: InfluxDB 1.x refuses SELECT INTO / DDL over GET, and long queries fit.
        with httpx.Client(timeout=target.timeout_s, auth=args["auth"]) as client:
            resp = client.post(
                f"{target.url.rstrip('/')}/query", params=args["params"], headers=args["headers"]
            )
    except httpx.HTTPError as exc:
        raise InfluxQLError(f"{target.url}: {type(exc).__name__}: {exc}") from exc
    return _parse(resp)
