"""Bulk import from CSV (devices) and YAML (everything): every row checked, then all or nothing.

Rows are numbered as people see them in an editor: a CSV row is its line number (the
header is line 1; a quoted field spanning lines counts from where the record starts),
a YAML row is the line where the list item starts. Parsing collects every bad row; the
store then checks references (against the database *and* the rest of the file) inside
the one transaction that writes everything, so a file with one bad row changes nothing.

Hostile files are refused before they cost much: a file over `MAX_BYTES` is refused
unread, a CSV stops at `MAX_ROWS` records (a YAML file is counted before any row is
validated), YAML aliases are bounded by `sensors.yaml_doc.compose`, and CSV cells that a
spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab or CR first) are refused
with their row and column unless they are numbers (`-3.5`), so what the registry
stores and serves (the map layers, exports) never carries a formula.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ValidationError

from registry.errors import Invalid, Problem
from registry.schema import (
    Bundle,
    CellSpec,
    DeviceSpec,
    ProfileSpec,
    SiteSpec,
    WorkerSpec,
)
from registry.store import ImportSummary, RegistryStore, RowLines
from sensors.yaml_doc import compose, error_message, format_loc, locate

Format = Literal["csv", "yaml"]

CSV_COLUMNS: Final = (
    "id",
    "kind",
    "site",
    "cell",
    "lon",
    "lat",
    "floor",
    "label",
    "profile",
    "attributes",
)
"""Device CSV columns; `id, kind, site, cell, lon, lat` are required, `attributes` is a
JSON object (e.g. `{"door": "main", "schedule": "office"}`)."""
_REQUIRED_CSV: Final = ("id", "kind", "site", "cell", "lon", "lat")

_SECTIONS: Final[Mapping[str, type[BaseModel]]] = {
    "sites": SiteSpec,
    "workers": WorkerSpec,
    "cells": CellSpec,
    "profiles": ProfileSpec,
    "devices": DeviceSpec,
}
MAX_ROWS: Final = 50_000
"""Records one import file may hold (a site of 5,000 devices is a tenth of it)."""
MAX_BYTES: Final = 16 * 1024 * 1024
"""Size of one import file (UTF-8), as the API's body limit."""
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet runs as a formula when a cell starts with it (CSV injection)."""


def _too_big(text: str) -> bool:
    # A character is 1-4 bytes: encode only when the length alone cannot tell.
    return len(text) > MAX_BYTES or (4 * len(text) > MAX_BYTES and len(text.encode()) > MAX_BYTES)


def _size_check(text: str, source: str) -> None:
    if _too_big(text):
        raise Invalid(
            [Problem("file", f"larger than {MAX_BYTES:,} bytes; split it into several files", 1)],
            source,
        )


def formula_problem(value: str) -> str | None:
    """Why a text cell is refused (it would run as a spreadsheet formula), else None.
    A number (`-3.5`, `+4`) is a value, not a formula."""
    if not value.startswith(FORMULA_STARTS):
        return None
    try:
        float(value)
    except ValueError:
        return (
            f"starts with {value[0]!r}: a spreadsheet would run it as a formula "
            "(remove the leading character)"
        )
    return None


def parse(text: str, fmt: Format, source: str = "import") -> tuple[Bundle, RowLines]:
    """Validate every row of an import file; Invalid lists all bad rows."""
    return parse_csv(text, source) if fmt == "csv" else parse_yaml(text, source)


def import_text(
    store: RegistryStore, text: str, fmt: Format, source: str = "import"
) -> ImportSummary:
    """Parse, check and apply one import file, all or nothing."""
    bundle, rows = parse(text, fmt, source)
    return store.import_bundle(bundle, rows=rows, source=source)


# ---------------------------------------------------------------------- CSV


def parse_csv(text: str, source: str = "import.csv") -> tuple[Bundle, RowLines]:
    """Devices, one per record, columns named by the header (order free)."""
    _size_check(text, source)
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey="__extra__")
    header = reader.fieldnames or []
    problems: list[Problem] = []
    unknown = [c for c in header if c not in CSV_COLUMNS]
    missing = [c for c in _REQUIRED_CSV if c not in header]
    if unknown:
        problems.append(
            Problem("header", f"unknown columns {unknown}; known: {', '.join(CSV_COLUMNS)}", 1)
        )
    if missing:
        problems.append(Problem("header", f"missing columns {missing}", 1))
    if problems:
        raise Invalid(problems, source)
    specs: list[DeviceSpec] = []
    rows: dict[tuple[str, int], int] = {}
    line = reader.line_num + 1
    for count, record in enumerate(reader):
        if count >= MAX_ROWS:
            problems.append(
                Problem("file", f"more than {MAX_ROWS:,} rows; split it into several files", line)
            )
            break
        if "__extra__" in record:
            problems.append(Problem("row", "more fields than header columns", line))
        else:
            spec = _csv_device(record, line, problems)
            if spec is not None:
                rows[("devices", len(specs))] = line
                specs.append(spec)
        line = reader.line_num + 1
    if problems:
        raise Invalid(problems, source)
    return Bundle(devices=specs), rows


def _csv_device(
    record: Mapping[str, str | None], line: int, problems: list[Problem]
) -> DeviceSpec | None:
    def cell(name: str) -> str | None:
        value = (record.get(name) or "").strip()
        return value or None

    bad = False
    for name in CSV_COLUMNS:
        raw = record.get(name)
        # the raw cell (a leading tab) and the stored one (`  =1+1` is stored stripped)
        why = (formula_problem(raw) or formula_problem(raw.strip())) if raw else None
        if why is not None:
            problems.append(Problem(name, why, line))
            bad = True
    if bad:
        return None
    raw_attrs = cell("attributes")
    attributes: object = {}
    if raw_attrs is not None:
        try:
            attributes = json.loads(raw_attrs)
        except json.JSONDecodeError as exc:
            problems.append(Problem("attributes", f"not JSON: {exc.msg}", line))
            return None
        if isinstance(attributes, dict):
            for key, value in attributes.items():
                why = formula_problem(value) if isinstance(value, str) else None
                why = why or formula_problem(str(key))
                if why is not None:
                    problems.append(Problem(f"attributes.{key}", why, line))
                    bad = True
        if bad:
            return None
    data: dict[str, Any] = {
        "id": cell("id"),
        "kind": cell("kind"),
        "site": cell("site"),
        "cell": cell("cell"),
        "location": {
            "lon": cell("lon"),
            "lat": cell("lat"),
            "floor": cell("floor"),
            "label": cell("label"),
        },
        "profile": cell("profile"),
        "attributes": attributes,
    }
    try:
        return DeviceSpec.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = [p for p in error["loc"] if p != "location"] or ["row"]
            problems.append(Problem(format_loc(tuple(loc)), error_message(error), line))
        return None


# ---------------------------------------------------------------------- YAML


def parse_yaml(text: str, source: str = "import.yaml") -> tuple[Bundle, RowLines]:
    """A mapping with any of `sites, workers, cells, profiles, devices` (lists)."""
    _size_check(text, source)
    root, data, found = compose(text)
    problems = [Problem(p.path or "file", p.message, p.line) for p in found]
    if problems:
        raise Invalid(problems, source)
    if data is None or data == {}:  # most likely the wrong file: say so rather than do nothing
        raise Invalid(
            [Problem("file", f"nothing to import; expected sections: {', '.join(_SECTIONS)}", 1)],
            source,
        )
    if not isinstance(data, dict):
        raise Invalid(
            [Problem("file", "an import file is a YAML mapping (devices: [...])", 1)], source
        )
    for key in data:
        if key not in _SECTIONS:
            _, line = locate(root, (str(key),))
            problems.append(
                Problem(str(key), f"unknown section; known: {', '.join(_SECTIONS)}", line)
            )
    total = sum(len(v) for k, v in data.items() if k in _SECTIONS and isinstance(v, list))
    if total > MAX_ROWS:
        raise Invalid(
            [Problem("file", f"{total:,} records, more than {MAX_ROWS:,}; split the file", 1)],
            source,
        )
    parsed: dict[str, list[BaseModel]] = {}
    rows: dict[tuple[str, int], int] = {}
    for section, model in _SECTIONS.items():
        items = data.get(section) or []
        if not isinstance(items, list):
            _, line = locate(root, (section,))
            problems.append(Problem(section, "must be a list", line))
            continue
        for i, item in enumerate(items):
            _, line = locate(root, (section, i))
            try:
                spec = model.model_validate(item)
            except ValidationError as exc:
                for error in exc.errors():
                    _, at = locate(root, (section, i, *error["loc"]))
                    loc = format_loc((section, i + 1, *error["loc"]))
                    problems.append(Problem(loc, error_message(error), at or line))
                continue
            rows[(section, len(parsed.setdefault(section, [])))] = line or 0
            parsed[section].append(spec)
    if problems:
        raise Invalid(problems, source)
    bundle = Bundle.model_validate({k: [s.model_dump() for s in v] for k, v in parsed.items()})
    return bundle, rows


def dump_yaml(bundle: Bundle) -> str:
    """A bundle as an import file (what `parse_yaml` reads back)."""
    data = bundle.model_dump(mode="json", exclude_none=True)
    text: str = yaml.safe_dump(
        {k: v for k, v in data.items() if v}, sort_keys=False, allow_unicode=True
    )
    return text
