"""The registry's refusals; the hub maps each to one HTTP problem type (in one place)."""

from __future__ import annotations

from dataclasses import dataclass


class RegistryError(Exception):
    """Base: the registry refused or failed an operation."""


class NotFound(RegistryError):
    def __init__(self, entity: str, ident: str) -> None:
        super().__init__(f"no {entity} {ident!r}")
        self.entity = entity
        self.ident = ident


class Conflict(RegistryError):
    """The request contradicts what is stored (duplicate id, retired, still in use)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input: where (row of an import, or field path) and what."""

    loc: str
    msg: str
    row: int | None = None
    """1-based row of an import: CSV line number (header is line 1), or the YAML line."""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"loc": self.loc, "msg": self.msg}
        if self.row is not None:
            out["row"] = self.row
        return out


class Invalid(RegistryError):
    """The input is wrong; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[Problem], source: str = "input") -> None:
        self.problems = problems
        self.source = source
        shown = "; ".join(
            (f"row {p.row}: " if p.row is not None else "") + f"{p.loc}: {p.msg}"
            for p in problems[:20]
        )
        more = f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        super().__init__(f"{source}: {len(problems)} problem(s): {shown}{more}")
