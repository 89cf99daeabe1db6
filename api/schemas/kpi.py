"""The alarm-KPI report as the API returns it (`GET /api/v1/kpi`): the figures of
`events.kpi`, the thresholds they are judged by, and the verdict."""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from events.kpi import KpiReport, Verdict

_READ: Final = ConfigDict(from_attributes=True)

_RATE_EXAMPLE: Final[dict[str, Any]] = {
    "period": "hour",
    "period_ms": 3_600_000,
    "average": 8.0,
    "busiest": 11,
    "acceptable": 6,
    "manageable": 12,
    "verdict": "manageable",
}


class RateOut(BaseModel):
    """Alarms per period: the average over the range and the busiest period of it."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_RATE_EXAMPLE]})

    period: str = Field(description="10min, hour or day")
    period_ms: int
    average: float = Field(description="Alarms per period over the range")
    busiest: int = Field(description="Most alarms in one consecutive period of the range")
    acceptable: float = Field(description='EEMUA 191 "very likely acceptable" level')
    manageable: float = Field(description='EEMUA 191 "maximum manageable" level')
    verdict: Verdict


class PointOut(BaseModel):
    """An alarm point (rule and key) and its alarms in the range."""

    model_config = _READ

    rule_id: str
    key: str
    alarms: int


class OutstandingOut(BaseModel):
    """An event standing, shelved, suppressed or out of service at the end of the range."""

    model_config = _READ

    event_id: str
    rule_id: str
    key: str
    site: str
    since_ms: int = Field(description="Active (standing) or in its mode since")
    duration_ms: int = Field(description="From since_ms to the end of the range")


class DurationsOut(BaseModel):
    """Nearest-rank percentiles; `pending`: started in the range, not finished by its end."""

    model_config = _READ

    count: int
    p50_ms: int | None
    p90_ms: int | None
    max_ms: int | None
    pending: int


class KpisOut(BaseModel):
    """The KPIs of one scope (the site, a position, or one site of all)."""

    model_config = _READ

    alarms: int = Field(description="Raises and re-activations (no flood parents, no reports)")
    rates: list[RateOut]
    peak_10min: int = Field(description="Most alarms in any sliding 10-minute window")
    peak_10min_at_ms: int | None
    flood_ms: int = Field(description="Time with more than 10 alarms in the last 10 minutes")
    flood_fraction: float
    floods: int = Field(description="Separate spells of flood")
    top: list[PointOut] = Field(description="The 10 points with the most alarms")
    top_share: float = Field(description="Their share of all alarms")
    chattering: list[PointOut] = Field(description="Points with 3 or more alarms in 1 minute")
    standing: list[OutstandingOut]
    stale: list[OutstandingOut] = Field(description="Standing for more than 24 h")
    shelved: list[OutstandingOut]
    suppressed: list[OutstandingOut]
    out_of_service: list[OutstandingOut]
    time_to_acknowledge: DurationsOut
    time_to_resolve: DurationsOut
    per_10min: list[int] = Field(description="Alarms in each consecutive 10 minutes")
    verdict: Verdict


class RateLimitOut(BaseModel):
    model_config = _READ

    period: str
    period_ms: int
    acceptable: float
    manageable: float


class ThresholdsOut(BaseModel):
    """What the figures are judged by (EEMUA 191, ISA-18.2)."""

    model_config = _READ

    rates: list[RateLimitOut]
    flood_window_ms: int
    flood_alarms: int = Field(description="More than this many in the window is a flood")
    flood_time_fraction: float = Field(description="Target: less time than this in flood")
    top_n: int
    top_share: float = Field(description="Target: the top points carry at most this share")
    chatter_alarms: int
    chatter_window_ms: int
    stale_ms: int


class KpiReportOut(BaseModel):
    """Alarm KPIs of a site (or every site) over `[since_ms, until_ms)`, per position too."""

    model_config = _READ

    site: str | None = Field(description="None: every site together")
    since_ms: int
    until_ms: int
    verdict: Verdict = Field(description="acceptable, manageable or overloaded")
    thresholds: ThresholdsOut
    kpis: KpisOut
    positions: dict[str, KpisOut] = Field(description="Per assignee; (unassigned) for none")
    sites: dict[str, KpisOut] = Field(description="Per site, when the report covers all")

    @classmethod
    def of(cls, report: KpiReport) -> KpiReportOut:
        return cls.model_validate(
            {
                "site": report.site,
                "since_ms": report.since_ms,
                "until_ms": report.until_ms,
                "verdict": report.kpis.verdict,
                "thresholds": report.thresholds,
                "kpis": report.kpis,
                "positions": dict(report.positions),
                "sites": dict(report.sites),
            },
            from_attributes=True,
        )
