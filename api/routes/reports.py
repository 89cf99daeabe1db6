"""Resident reports: an incident a person saw becomes an event in its grid cell.

A report is a detection from source `report`: it opens an event (rule
`resident_report`, one per report), which is at once returned to normal (a report is a
moment, not a condition that a sensor will clear), so operators acknowledge and then
resolve it with a note like any other event. It is assigned to the grid worker of the
cell, named by the reporter or found from the location. The reporter reads its status
back; other residents cannot see it.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette import status

from accounts.roles import Role
from accounts.users import ReportLink
from api.deps import ApiDeps, CellArea, get_deps
from api.problems import InvalidInput, NotFound, problem_responses
from api.roles import Principal, requires
from api.schemas.reports import ReportIn, ReportOut, ReportPage
from events.model import SYSTEM, Action, Detection, Location, Severity, Source
from sites.geometry import point_in_polygon

REPORT_RULE: Final = "resident_report"

SEVERITY_OF: Final[dict[str, Severity]] = {
    "fire": Severity.CRITICAL,
    "smoke": Severity.HIGH,
    "intrusion": Severity.HIGH,
    "blocked_fire_lane": Severity.MEDIUM,
    "suspicious_person": Severity.MEDIUM,
    "vandalism": Severity.LOW,
    "parking": Severity.LOW,
    "noise": Severity.LOW,
    "other": Severity.LOW,
}

Filer = Annotated[Principal, Depends(requires(Role.resident, Role.operator))]


def place(deps: ApiDeps, report: ReportIn) -> CellArea:
    """The cell a report belongs to: the one named, else the one containing the location.

    Cells come from the registry when it knows the site, else from the site files.
    """
    cells = registry_cells(deps, report.site) or deps.cells.get(report.site)
    if not cells:
        raise InvalidInput(
            f"unknown site {report.site!r}", [{"loc": ["body", "site"], "msg": "unknown site"}]
        )
    if report.cell is not None:
        for cell in cells:
            if cell.id == report.cell:
                return cell
        raise InvalidInput(
            f"site {report.site} has no cell {report.cell!r}",
            [{"loc": ["body", "cell"], "msg": "unknown cell"}],
        )
    if report.location is None:
        raise InvalidInput(
            "give a cell or a location", [{"loc": ["body", "location"], "msg": "missing"}]
        )
    point = (report.location.lon, report.location.lat)
    for cell in cells:
        if point_in_polygon(point, cell.polygon):
            return cell
    raise InvalidInput(
        f"the location is in no grid cell of {report.site}",
        [{"loc": ["body", "location"], "msg": "outside every cell"}],
    )


def registry_cells(deps: ApiDeps, site: str) -> list[CellArea]:
    if deps.registry is None:
        return []
    return [
        CellArea(site, c.id, c.name, c.worker or "", tuple(c.polygon))
        for c in deps.registry.all_cells(site=site)
    ]


def file_report(deps: ApiDeps, reporter: Principal, report: ReportIn) -> ReportOut:
    cell = place(deps, report)
    report_id = uuid.uuid4().hex
    now = deps.clock_ms()
    values: dict[str, str] = {"category": report.category, "reporter": reporter.subject}
    if report.photo_url is not None:
        values["photo_url"] = str(report.photo_url)
    detection = Detection(
        rule_id=REPORT_RULE,
        key=report_id,
        raised=True,
        at_ms=now,
        site=report.site,
        cell=cell.id,
        severity=SEVERITY_OF[report.category],
        title=f"Resident report: {report.category.replace('_', ' ')}",
        message=report.description,
        incident=report.category,
        source=Source.REPORT,
        values=values,
        location=(
            None if report.location is None else Location(report.location.lon, report.location.lat)
        ),
    )
    deps.manager.handle(detection, now)
    event = deps.events.open_event(REPORT_RULE, report_id)
    assert event is not None, "the manager opened the report's event"
    deps.manager.handle(
        Detection(rule_id=REPORT_RULE, key=report_id, raised=False, at_ms=now, site=report.site),
        now,
    )
    event = deps.events.get(event.id) or event
    if cell.worker and event.assignee != cell.worker:
        # The manager assigns new events to the cell's worker from its own directory;
        # a site known here but not there still gets its worker.
        event = deps.manager.act(
            event.id,
            Action.ASSIGN,
            actor=SYSTEM,
            at_ms=now,
            assignee=cell.worker,
            note=f"grid worker of cell {cell.id}",
        )
    link = ReportLink(report_id, reporter.subject, event.id, report.category, now)
    deps.users.add_report(link)
    deps.metrics.reports.inc()
    return ReportOut.of(link, event)


def _visible(principal: Principal, link: ReportLink | None, report_id: str) -> ReportLink:
    """Residents see their own reports only; for others' ids it is as if none existed."""
    if link is None or (principal.role is Role.resident and link.reporter != principal.subject):
        raise NotFound(f"no report {report_id}", report_id=report_id)
    return link


def _out(deps: ApiDeps, link: ReportLink) -> ReportOut:
    event = deps.events.get(link.event_id)
    if event is None:  # the event store was reset under the report links
        raise NotFound(f"the event of report {link.id} is gone", report_id=link.id)
    return ReportOut.of(link, event)


router = APIRouter(prefix="/api/v1/reports", tags=["reports"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(401, 403, 422),
    summary="Report an incident; it becomes an event assigned to the cell's grid worker",
)
def create_report(request: Request, principal: Filer, report: ReportIn) -> ReportOut:
    return file_report(get_deps(request), principal, report)


@router.get(
    "",
    responses=problem_responses(401, 403, 422),
    summary="Reports, newest first: a resident's own, or everyone's for operators",
)
def list_reports(
    request: Request,
    principal: Filer,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ReportPage:
    deps = get_deps(request)
    mine = principal.subject if principal.role is Role.resident else None
    links, total = deps.users.reports(mine, limit=limit, offset=offset)
    items = [_out(deps, link) for link in links]
    return ReportPage(items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/{report_id}",
    responses=problem_responses(401, 403, 404, 422),
    summary="One report and the status of its event",
)
def get_report(
    request: Request,
    principal: Filer,
    report_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")],
) -> ReportOut:
    deps = get_deps(request)
    return _out(deps, _visible(principal, deps.users.get_report(report_id), report_id))
