"""Alarm KPIs after ISA-18.2 / EEMUA 191 for a site and a range of event time
(definitions: `events.kpi`): `GET /api/v1/kpi` (JSON), and what the desk's KPI page
(`/desk/{site}/kpi`, routed in `api.routes.desk`) shows, with its plots.

The plots are SVG drawn here, inline in the page: no plotting library in the browser and
nothing from elsewhere (the desk's CSP holds: no inline style either, every colour is a
class of `/static/desk.css`). Each bar carries a `<title>` (its period and count), each
plot a title and an `aria-label`, so they read without the picture too.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request
from markupsafe import Markup, escape
from pydantic import BeforeValidator

from accounts.roles import Role
from api.deps import ApiDeps, get_deps
from api.event_actions import epoch_ms
from api.problems import InvalidInput, problem_responses
from api.roles import Principal, requires
from api.schemas.kpi import KpiReportOut
from events.kpi import DAY_MS, HOUR_MS, WINDOW_MS, AlarmKpis, KpiReport, RateLimit, read_report

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


# ---------------------------------------------------------------------- the desk page

KPI_RANGES: Final = {1: "1 h", 6: "6 h", 24: "24 h", 72: "3 days", 168: "7 days"}
"""Ranges the desk's KPI page offers (hours up to now); 7 days is 1008 ten-minute bars."""
LIST_MAX: Final = 15
"""Standing, shelved... events listed by name on the page (the rest are counted)."""

_W: Final = 960
_H: Final = 250
_LEFT, _RIGHT, _TOP, _BOTTOM = 46, 118, 12, 34


def kpi_page_context(deps: ApiDeps, site: str, hours: int) -> dict[str, Any]:
    """What `kpi.html` shows: the report of the last `hours` and its plots."""
    until_ms = deps.clock_ms()
    since_ms = until_ms - hours * HOUR_MS
    report = read_report(deps.events, site=site, since_ms=since_ms, until_ms=until_ms)
    return {
        "site": site,
        "hours": hours,
        "ranges": KPI_RANGES,
        "report": report,
        "k": report.kpis,
        "t": report.thresholds,
        "plots": kpi_plots(report),
        "list_max": LIST_MAX,
    }


def kpi_plots(report: KpiReport) -> list[tuple[str, str, Markup]]:
    """(id, heading, SVG) of each plot the range has room for: alarms per 10 min, per
    hour (2 h and more), per day (2 days and more), the rates against EEMUA 191, and the
    top alarm points."""
    k, t = report.kpis, report.thresholds
    span = report.until_ms - report.since_ms
    plots: list[tuple[str, str, Markup]] = []
    for limit in t.rates:
        if span < 2 * limit.period_ms and limit.period_ms != WINDOW_MS:
            continue
        counts = _regroup(k.per_10min, limit.period_ms // WINDOW_MS)
        flood = t.flood_alarms if limit.period_ms == t.flood_window_ms else None
        plots.append(
            (
                f"plot-{limit.period}",
                f"Alarms per {_period_name(limit)}",
                period_chart(counts, limit, report.since_ms, report.until_ms, flood=flood),
            )
        )
    plots.append(("plot-rates", "Average rates against EEMUA 191", rates_chart(k)))
    plots.append(("plot-top", f"Top {t.top_n} alarm points", top_chart(k, t.top_n)))
    return plots


def _period_name(limit: RateLimit) -> str:
    return {WINDOW_MS: "10 minutes", HOUR_MS: "hour", DAY_MS: "day"}.get(
        limit.period_ms, limit.period
    )


def _regroup(per_10min: Sequence[int], factor: int) -> list[int]:
    """Consecutive 10-minute counts summed `factor` at a time (the last group may be short)."""
    return [sum(per_10min[i : i + factor]) for i in range(0, len(per_10min), factor)]


def _band(count: float, limit: RateLimit, flood: int | None = None) -> str:
    if flood is not None and count > flood:
        return "flood"
    if count <= limit.acceptable:
        return "ok"
    return "warn" if count <= limit.manageable else "over"


def _nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value`."""
    if value <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _svg(ident: str, label: str, body: list[str], height: int = _H) -> Markup:
    head = (
        f'<svg id="{ident}" class="plot" viewBox="0 0 {_W} {height}" role="img" '
        f'aria-label="{escape(label)}" preserveAspectRatio="xMinYMin meet" '
        'xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>"
    )
    # Every text and attribute value above went through escape() or is a number.
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704  # built escaped


def _clock(ms: int, span_ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%H:%M" if span_ms <= DAY_MS else "%m-%d %H:%M")


def period_chart(
    counts: Sequence[int],
    limit: RateLimit,
    since_ms: int,
    until_ms: int,
    *,
    flood: int | None = None,
) -> Markup:
    """Bars of alarms per consecutive period of the range, coloured by EEMUA band, with
    the acceptable and maximum manageable levels (and the flood level) as lines."""
    span = until_ms - since_ms
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    peak = max(counts, default=0)
    top = _nice_max(max(peak, limit.manageable * 1.25, flood + 1 if flood and peak > flood else 0))

    def y(value: float) -> float:
        return _TOP + plot_h * (1 - value / top)

    def x(ms: int) -> float:
        return _LEFT + plot_w * (ms - since_ms) / span

    body = [f'<rect class="frame" x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}"/>']
    ticks = _ticks(top)
    for value in ticks:
        body.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y(value):.1f}" '
            f'y2="{y(value):.1f}"/><text class="tick" x="{_LEFT - 6}" y="{y(value) + 4:.1f}" '
            f'text-anchor="end">{_num(value)}</text>'
        )
    for index, count in enumerate(counts):
        start = since_ms + index * limit.period_ms
        end = min(until_ms, start + limit.period_ms)
        if count == 0:
            continue
        left, right = x(start), x(end)
        body.append(
            f'<rect class="bar {_band(count, limit, flood)}" x="{left:.2f}" y="{y(count):.1f}" '
            f'width="{max(right - left - 0.6, 0.6):.2f}" height="{y(0) - y(count):.1f}">'
            f"<title>{_clock(start, span)} to {_clock(end, span)} UTC: {count} "
            f"alarm{'' if count == 1 else 's'}</title></rect>"
        )
    levels = [("acceptable", limit.acceptable, f"acceptable {_num(limit.acceptable)}")]
    levels.append(("manageable", limit.manageable, f"manageable {_num(limit.manageable)}"))
    if flood is not None and flood <= top:
        levels.append(("flood", flood, f"flood > {flood}"))
    label_y = _spread([y(value) + 4 for _, value, _ in levels], gap=13)
    for (name, value, text), at in zip(levels, label_y, strict=True):
        body.append(
            f'<line class="level {name}" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y(value):.1f}" '
            f'y2="{y(value):.1f}"/><text class="level-label {name}" x="{_LEFT + plot_w + 6}" '
            f'y="{at:.1f}">{escape(text)}</text>'
        )
    for ms in _time_ticks(since_ms, until_ms):
        body.append(
            f'<text class="tick" x="{x(ms):.1f}" y="{_H - _BOTTOM + 16}" text-anchor="middle">'
            f"{_clock(ms, span)}</text>"
        )
    body.append(
        f'<text class="axis" x="{_LEFT + plot_w / 2:.0f}" y="{_H - 4}" text-anchor="middle">'
        f"UTC · {len(counts)} periods · busiest {peak}</text>"
    )
    label = (
        f"Alarms per {_period_name(limit)}: busiest {peak}, levels acceptable "
        f"{_num(limit.acceptable)} and maximum manageable {_num(limit.manageable)}"
    )
    return _svg(f"svg-{limit.period}", label, body)


def _spread(ys: Sequence[float], gap: float) -> list[float]:
    """Label positions at `ys`, moved apart to at least `gap` (the lowest stays put)."""
    order = sorted(range(len(ys)), key=lambda i: -ys[i])  # bottom first
    out = list(ys)
    for before, after in itertools.pairwise(order):
        out[after] = min(out[after], out[before] - gap)
    return out


def _ticks(top: float) -> list[float]:
    step = top / 5 if top >= 5 else 1.0
    return [step * i for i in range(round(top / step) + 1)]


def _time_ticks(since_ms: int, until_ms: int, wanted: int = 8) -> list[int]:
    """Round UTC times inside the range, about `wanted` of them."""
    span = until_ms - since_ms
    steps = [m * 60_000 for m in (10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880)]
    step = next((s for s in steps if span / s <= wanted), steps[-1])
    first = -(-since_ms // step) * step
    return list(range(first, until_ms, step))


def rates_chart(k: AlarmKpis) -> Markup:
    """Each average rate as a bar over its EEMUA 191 bands (acceptable, manageable,
    overloaded), on a scale of its own."""
    row_h, height = 56, 20 + 56 * len(k.rates)
    left, width = 150, _W - 150 - 200
    body = []
    for row, rate in enumerate(k.rates):
        top = _nice_max(max(rate.average, rate.manageable * 1.5))
        y0 = 14 + row * row_h

        def x(value: float, scale: float = top) -> float:
            return left + width * min(value, scale) / scale

        bands = [
            ("ok", 0.0, rate.acceptable),
            ("warn", rate.acceptable, rate.manageable),
            ("over", rate.manageable, top),
        ]
        for name, low, high in bands:
            body.append(
                f'<rect class="band {name}" x="{x(low):.1f}" y="{y0}" '
                f'width="{x(high) - x(low):.1f}" height="30"/>'
            )
        body.append(
            f'<rect class="value {rate.verdict.value}" x="{left}" y="{y0 + 9}" '
            f'width="{max(x(rate.average) - left, 1.5):.1f}" height="12">'
            f"<title>{rate.average:.2f} alarms per {rate.period}</title></rect>"
        )
        body.append(
            f'<text class="rate-name" x="{left - 8}" y="{y0 + 20}" text-anchor="end">'
            f"per {escape(rate.period)}</text>"
            f'<text class="rate-value" x="{left + width + 8}" y="{y0 + 14}">'
            f"{rate.average:.2f} · {rate.verdict.value}</text>"
            f'<text class="tick" x="{left + width + 8}" y="{y0 + 29}">'
            f"levels {_num(rate.acceptable)} / {_num(rate.manageable)}, busiest {rate.busiest}"
            "</text>"
        )
    label = "Average alarm rates: " + "; ".join(
        f"{r.average:.2f} per {r.period} ({r.verdict.value})" for r in k.rates
    )
    return _svg("svg-rates", label, body, height)


def top_chart(k: AlarmKpis, top_n: int) -> Markup:
    """The alarm points with the most alarms, as horizontal bars."""
    row_h = 22
    height = max(40, 16 + row_h * len(k.top))
    left, width = 330, _W - 330 - 80
    most = max((p.alarms for p in k.top), default=1)
    body = []
    if not k.top:
        body.append('<text class="axis" x="20" y="28">No alarms in the range.</text>')
    for row, point in enumerate(k.top):
        y0 = 8 + row * row_h
        name = f"{point.rule_id} / {point.key}"
        short = name if len(name) <= 44 else name[:43] + "…"
        share = point.alarms / k.alarms if k.alarms else 0.0
        body.append(
            f'<text class="point" x="{left - 8}" y="{y0 + 13}" text-anchor="end">'
            f"{escape(short)}</text>"
            f'<rect class="bar point-bar" x="{left}" y="{y0 + 2}" '
            f'width="{max(width * point.alarms / most, 1.5):.1f}" height="{row_h - 6}">'
            f"<title>{escape(name)}: {point.alarms} alarms ({share:.0%})</title></rect>"
            f'<text class="tick" x="{left + width * point.alarms / most + 6:.1f}" '
            f'y="{y0 + 13}">{point.alarms}</text>'
        )
    label = f"Top {top_n} alarm points: {k.top_share:.0%} of all alarms"
    return _svg("svg-top", label, body, height)


def duration(ms: int | None) -> str:
    """1d2h, 3h05m, 4m30s, 20s; a dash for none."""
    if ms is None:
        return "-"
    s = ms // 1000
    days, hours, minutes, seconds = s // 86400, s // 3600 % 24, s // 60 % 60, s % 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
