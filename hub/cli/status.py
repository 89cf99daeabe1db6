"""`gridwatch status` and `gridwatch deadletters`: what a running (or the last) hub left on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hub.cli.options import config_option, load

COUNTERS = (
    "received",
    "acked",
    "stored",
    "rejected",
    "dead_lettered",
    "duplicates",
    "retained_skipped",
    "foreign_skipped",
    "write_failures",
)


@click.command("status")
@config_option()
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Print the running hub's counters (from its status file)."""
    from ingest.status import read_status

    settings = load(config_path)
    if settings.cluster.enabled:
        _cluster_status(settings.hub.data_dir, as_json)
        return
    data = read_status(settings.hub.data_dir)
    if data is None:
        raise click.ClickException(f"no hub has run with data_dir {settings.hub.data_dir}")
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(format_status(data))


def _most_first(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Named counts, the largest first (the status file's JSON keeps no order)."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def format_status(data: dict[str, Any]) -> str:
    """The status file as the lines `gridwatch status` prints."""
    if "cluster" in data:
        return format_cluster_status(data)
    state = "running" if data["alive"] else "NOT RUNNING (last figures below)"
    lines = [
        f"hub {data.get('client_id')} pid {data.get('pid')}: {state}",
        f"  subscription  {data.get('subscription')}   InfluxDB {data.get('influx')}",
        f"  connected     {data.get('connected')}   reconnects {data.get('reconnects')}"
        f"   sessions lost {data.get('sessions_lost', 0)}",
    ]
    if data.get("connect_in_s"):
        lines.append(
            f"  WAITING       connects in {data['connect_in_s']:.0f} s, once the broker has "
            "queued again what the previous run left unacknowledged (mqtt.resume_wait_s)"
        )
    if data.get("storage_error"):
        lines.append(
            f"  STORAGE       {data['storage_error']}: not acknowledging for "
            f"{data.get('storage_blocked_s', 0):.0f} s ({data.get('storage_failures', 0)} "
            "attempts); the broker keeps the backlog"
        )
    lines += [f"  {key:<16} {data.get(key)}" for key in COUNTERS]
    lines += [
        f"    rejected {reason:<20} {count}"
        for reason, count in sorted(data.get("rejected_by_reason", {}).items())
    ]
    lines += [
        f"  spool         {data.get('spool_lines')} lines, {data.get('spool_bytes')} bytes",
        f"  lag           {data.get('lag_s', 0):.1f} s",
    ]
    if ahead := data.get("readings_ahead"):
        by_device = ", ".join(
            f"{name} {n}" for name, n in _most_first(data.get("readings_ahead_by") or {})
        )
        lines.append(
            f"  ahead         {ahead} readings arrived dated up to "
            f"{data.get('readings_ahead_max_s', 0):.1f} s ahead of the hub clock: a device clock "
            f"running fast (or the hub's slow); by device: {by_device or '?'}"
        )
    p50, p99 = data.get("latency_p50_ms"), data.get("latency_p99_ms")
    if p50 is not None:
        lines.append(f"  latency       p50 {p50:.1f} ms, p99 {p99:.1f} ms (publish→stored)")
    if "rules_evaluated" in data:
        lines.append(
            f"  rules         {data['rules_evaluated']} records evaluated, "
            f"{data['rules_detections']} detections; behind the log by "
            f"{data.get('rules_lag_records', 0)} records, "
            f"{data.get('rules_lag_s', 0):.1f} s of event time"
        )
        if late := data.get("rules_late_readings"):
            behind = data.get("rules_late_behind") or {}
            ranked = _most_first(behind)
            most = ", ".join(f"{name} {count}" for name, count in ranked)
            lines.append(
                f"  late          {late} readings reached the rules after timers past their "
                f"time had fired (events.allowed_lateness_s); behind: {most or '?'}"
            )
            top = ranked[0] if ranked else None
            if top is not None and top[1] >= 0.9 * late and not top[0].startswith("("):
                lines.append(f"                nearly all behind {top[0]}: is its clock ahead?")
        e50, e99 = data.get("rules_event_latency_p50_ms"), data.get("rules_event_latency_p99_ms")
        if e50 is not None:
            lines.append(f"  latency       p50 {e50:.1f} ms, p99 {e99:.1f} ms (event time→event)")
    anomaly = data.get("anomaly")
    if isinstance(anomaly, dict):
        lines.append(
            f"  anomaly       {anomaly.get('readings', 0)} readings scored, "
            f"{anomaly.get('detections', 0)} detections; behind the log by "
            f"{anomaly.get('lag_records', 0)} records, "
            f"{anomaly.get('lag_s', 0):.1f} s of event time"
        )
    return "\n".join(lines)


@click.command("deadletters")
@config_option()
@click.option("--limit", default=20, show_default=True)
def deadletters(config_path: Path | None, limit: int) -> None:
    """Print the newest dead letters (JSON lines, newest first)."""
    from ingest.deadletter import read_dead_letters

    settings = load(config_path)
    for record in read_dead_letters(
        settings.deadletters.directory, keep=settings.deadletters.keep, limit=limit
    ):
        click.echo(json.dumps(record, ensure_ascii=False))


def format_cluster_status(data: dict[str, Any], *, leases: bool = True) -> str:
    """A cluster node's status: the partitions it owns with their hubs' counters, then
    every partition's lease as the database saw it (docs/scaling.md)."""
    cluster = data["cluster"]
    state = "running" if data["alive"] else "NOT RUNNING (last figures below)"
    lines = [
        f"cluster node {cluster['node']} pid {data.get('pid')}: {state}",
        f"  live nodes    {', '.join(cluster['live_nodes']) or '-'}   "
        f"share {cluster['share']} partitions",
        f"  api           {data.get('api') or 'off'}",
        "  owned         partition  token  hub pid  starts  connected  received  lag s  sites",
    ]
    for name, part in cluster["partitions"].items():
        hub = part.get("hub", {})
        lines.append(
            f"                {name:<9}  {part['token']:>5}  {part.get('pid') or '-':>7}  "
            f"{part['starts']:>6}  {hub.get('connected', '-')!s:>9}  "
            f"{hub.get('received', '-'):>8}  {hub.get('lag_s', '-'):>5}  "
            f"{', '.join(part['sites']) or '(no sites)'}"
            f"{' + unknown sites' if part.get('catch_all') else ''}"
        )
    if not leases:
        return "\n".join(lines)
    lines.append("  leases        partition  owner                token  expires in s  sites")
    for lease in cluster["leases"]:
        lines.append(
            f"                {lease['partition']:<9}  {lease['owner'] or '(free)':<20} "
            f"{lease['token']:>5}  {lease['expires_in_s']:>12}  {', '.join(lease['sites'])}"
        )
    return "\n".join(lines)


def _cluster_status(data_dir: Path, as_json: bool) -> None:
    """Every node's status file under `<data_dir>/nodes/` (on one machine, or on the
    directory the nodes share)."""
    from ingest.status import read_status

    nodes = data_dir / "nodes"
    found = {
        path.name: data
        for path in sorted(nodes.iterdir() if nodes.is_dir() else [])
        if (data := read_status(path)) is not None
    }
    if not found:
        raise click.ClickException(f"no cluster node has run with data_dir {data_dir}")
    if as_json:
        click.echo(json.dumps(found, indent=2, sort_keys=True))
        return
    alive = [d for d in found.values() if d["alive"]]
    newest = max(alive or found.values(), key=lambda d: float(d.get("written_at", 0)))
    for data in found.values():
        click.echo(format_cluster_status(data, leases=data is newest))
