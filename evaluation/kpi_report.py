"""The alarm-KPI report (`events.kpi`) as a text table and a PNG (`gridwatch report kpi`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from events.kpi import AlarmKpis, Durations, KpiReport, Outstanding


def format_table(report: KpiReport) -> str:
    """The report as fixed-width text: the scope's KPIs, its top points, then per position
    (and per site when it covers every site)."""
    k, t = report.kpis, report.thresholds
    span_h = (report.until_ms - report.since_ms) / 3_600_000
    scope = report.site or "all sites"
    lines = [
        f"alarm KPIs  {scope}  {_when(report.since_ms)} .. {_when(report.until_ms)}"
        f" ({span_h:.1f} h)  verdict: {k.verdict.value.upper()}",
        "",
        f"{'':<26}{'value':>10}{'acceptable':>12}{'manageable':>12}  verdict",
        f"{'alarms':<26}{k.alarms:>10}",
    ]
    for rate in k.rates:
        lines.append(
            f"{'per ' + rate.period + ' (average)':<26}{rate.average:>10.2f}"
            f"{rate.acceptable:>12g}{rate.manageable:>12g}  {rate.verdict.value}"
        )
    busiest = " / ".join(str(r.busiest) for r in k.rates)
    periods = "/".join(r.period for r in k.rates)
    lines += [
        f"{'busiest ' + periods:<26}{busiest:>10}  in one period of the range",
        f"{'peak 10 min (sliding)':<26}{k.peak_10min:>10}"
        + (f"  from {_when(k.peak_10min_at_ms)}" if k.peak_10min_at_ms is not None else ""),
        f"{'time in flood':<26}{k.flood_fraction:>10.2%}  {_dur(k.flood_ms)} in {k.floods}"
        f" spell(s); target < {t.flood_time_fraction:.0%} (> {t.flood_alarms} in 10 min)",
        f"{'top-' + str(t.top_n) + ' share':<26}{k.top_share:>10.1%}  target <= {t.top_share:.0%}",
        f"{'chattering points':<26}{len(k.chattering):>10}  "
        + ", ".join(f"{p.rule_id}/{p.key} ({p.alarms})" for p in k.chattering[:5]),
        f"{'standing':<26}{len(k.standing):>10}{_longest(k.standing)}",
        f"{'stale (> 24 h)':<26}{len(k.stale):>10}{_longest(k.stale)}",
        f"{'shelved':<26}{len(k.shelved):>10}{_longest(k.shelved)}",
        f"{'suppressed':<26}{len(k.suppressed):>10}{_longest(k.suppressed)}",
        f"{'out of service':<26}{len(k.out_of_service):>10}{_longest(k.out_of_service)}",
        f"{'time to acknowledge':<26}{_percentiles(k.time_to_acknowledge, 'unacknowledged')}",
        f"{'time to resolve':<26}{_percentiles(k.time_to_resolve, 'open')}",
    ]
    if k.top:
        lines += ["", f"top {len(k.top)} alarm points"]
        lines += [f"{p.alarms:>6}  {p.rule_id}/{p.key}" for p in k.top]
    for title, groups in (("position", report.positions), ("site", report.sites)):
        if groups:
            lines += ["", _group_header(title)]
            lines += [_group_row(name, kpis) for name, kpis in groups.items()]
    return "\n".join(line.rstrip() for line in lines)


def plot_report(report: KpiReport, path: Path) -> None:
    """Alarms per 10 min over the range against the EEMUA levels, and the top points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    k = report.kpis
    ten = next(r for r in k.rates if r.period_ms == report.thresholds.flood_window_ms)
    hours = [i * ten.period_ms / 3_600_000 for i in range(len(k.per_10min))]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(12, 7.5), gridspec_kw={"height_ratios": [3, 2]}
    )
    top.bar(hours, k.per_10min, width=ten.period_ms / 3_600_000, align="edge", color="tab:blue")
    top.axhline(ten.acceptable, color="tab:green", ls="--", lw=1.2,
                label=f"acceptable ({ten.acceptable:g} per 10 min)")  # fmt: skip
    top.axhline(ten.manageable, color="tab:orange", ls="--", lw=1.2,
                label=f"maximum manageable ({ten.manageable:g})")  # fmt: skip
    flood = report.thresholds.flood_alarms
    top.axhline(flood, color="tab:red", ls=":", lw=1.2, label=f"flood (> {flood})")
    top.set_ylabel("alarms per 10 min")
    top.set_title(
        f"{report.site or 'all sites'}: {k.alarms} alarms, peak {k.peak_10min} in 10 min, "
        f"{k.flood_fraction:.1%} of the time in flood, verdict {k.verdict.value}",
        fontsize=10,
    )
    top.set_xlabel(f"hours from {_when(report.since_ms)}")
    top.set_xlim(0, (report.until_ms - report.since_ms) / 3_600_000)
    top.legend(loc="upper right", fontsize=8)
    labels = [_short(f"{p.rule_id}/{p.key}") for p in k.top][::-1]
    bottom.barh(labels, [p.alarms for p in k.top][::-1], color="tab:gray")
    bottom.set_xlabel("alarms in the range")
    bottom.set_title(f"top {len(k.top)} alarm points: {k.top_share:.0%} of all alarms", fontsize=10)
    bottom.tick_params(axis="y", labelsize=8)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _short(label: str, limit: int = 40) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _group_header(title: str) -> str:
    return (
        f"{title:<16}{'alarms':>7}{'/10min':>8}{'/hour':>7}{'/day':>8}{'peak10':>7}"
        f"{'flood':>8}{'stand':>6}{'stale':>6}  verdict"
    )


def _group_row(name: str, k: AlarmKpis) -> str:
    ten, hour, day = (r.average for r in k.rates)
    return (
        f"{name:<16}{k.alarms:>7}{ten:>8.2f}{hour:>7.1f}{day:>8.1f}{k.peak_10min:>7}"
        f"{k.flood_fraction:>8.1%}{len(k.standing):>6}{len(k.stale):>6}  {k.verdict.value}"
    )


def _percentiles(d: Durations, pending: str) -> str:
    if d.count == 0:
        return f"{'-':>10}  ({d.pending} {pending})"
    assert d.p50_ms is not None and d.p90_ms is not None and d.max_ms is not None
    return (
        f"{_dur(d.p50_ms):>10}  p90 {_dur(d.p90_ms)}, max {_dur(d.max_ms)}"
        f" (p50 of {d.count}; {d.pending} {pending})"
    )


def _longest(items: tuple[Outstanding, ...]) -> str:
    return f"  longest {_dur(max(o.duration_ms for o in items))}" if items else ""


def _dur(ms: int) -> str:
    """1d2h, 3h05m, 4m30s, 20s."""
    s = ms // 1000
    days, hours, minutes, seconds = s // 86400, s // 3600 % 24, s // 60 % 60, s % 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")
