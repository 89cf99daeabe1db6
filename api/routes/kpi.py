"""Alarm KPIs after ISA-18.2 / EEMUA 191 for a site and a range of event time
(definitions: `events.kpi`)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BeforeValidator

from accounts.roles import Role
from api.deps import get_deps
from api.event_actions import epoch_ms
from api.problems import InvalidInput, problem_responses
from api.roles import Principal, requires
from api.schemas.kpi import KpiReportOut
from events.kpi import DAY_MS, read_report

DEFAULT_RANGE_MS: Final = DAY_MS
MAX_RANGE_MS: Final = 92 * DAY_MS
"""A quarter: the report carries one count per 10 minutes of the range."""

_NUMBER: Final = re.compile(r"\s*[+-]?\d+(\.\d*)?\s*")


def _not_a_number(value: object) -> object:
    """Pydantic would read a number as seconds since the epoch; the schema (and the
    clients) say RFC 3339, and a number in ms read as seconds is a silent 1000x error."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        raise ValueError("expected a date and time (RFC 3339), not a number")
    return value


Moment = Annotated[datetime | None, BeforeValidator(_not_a_number)]
Operator = Annotated[Principal, Depends(requires(Role.operator))]

router = APIRouter(prefix="/api/v1/kpi", tags=["kpi"])


@router.get(
    "",
    responses=problem_responses(401, 403, 422),
    summary="Alarm KPIs (ISA-18.2 / EEMUA 191) of a site over a range of event time",
)
def alarm_kpis(
    request: Request,
    _: Operator,
    site: Annotated[str | None, Query(max_length=128, description="None: every site")] = None,
    since: Annotated[Moment, Query(description="Start (default: until - 1 day)")] = None,
    until: Annotated[Moment, Query(description="End, excluded (default: now)")] = None,
) -> KpiReportOut:
    deps = get_deps(request)
    until_ms = epoch_ms(until)
    until_ms = deps.clock_ms() if until_ms is None else until_ms
    since_ms = epoch_ms(since)
    since_ms = until_ms - DEFAULT_RANGE_MS if since_ms is None else since_ms
    if since_ms >= until_ms:
        raise InvalidInput(
            "since must be before until", [{"loc": ["query", "since"], "msg": "not before until"}]
        )
    if until_ms - since_ms > MAX_RANGE_MS:
        raise InvalidInput(
            f"the range is at most {MAX_RANGE_MS // DAY_MS} days",
            [{"loc": ["query", "since"], "msg": f"more than {MAX_RANGE_MS} ms before until"}],
        )
    report = read_report(deps.events, site=site, since_ms=since_ms, until_ms=until_ms)
    return KpiReportOut.of(report)
