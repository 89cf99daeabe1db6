"""YAML documents validated by pydantic, with every problem reported at its line.

Site files and rule files are written by people: an error must say where. The YAML is
composed to a node tree first (which keeps line marks), then validated; each pydantic
error loc is walked back down the tree to the line it came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import yaml

Loc = tuple[str | int, ...]

SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SafeDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# Discriminator keys of tagged unions: pydantic puts the tag value into the loc.
_TAG_KEYS: Final = ("kind", "type")


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem: where in the document (path and 1-based line) and what."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "line ?"
        return f"{where}: {self.path or '(document)'}: {self.message}"


class DocumentError(ValueError):
    """A document that cannot be used; the message lists every problem found."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s)"]
        lines += [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


def format_loc(loc: Loc) -> str:
    """`("devices", 3, "attributes", "bay_id")` → `devices[3].attributes.bay_id`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def scalar_key(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def locate(root: yaml.Node | None, loc: Loc) -> tuple[Loc, int | None]:
    """Walk the composed YAML tree along a pydantic loc: the clean loc and its line.

    Pydantic adds the tag of a discriminated union (`access`) to the loc; it is not in
    the file, so it is dropped. A missing key is kept in the path and located at its
    parent mapping.
    """
    node = root
    clean: list[str | int] = []
    for part in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                node = node.value[part]
                clean.append(part)
                continue
        elif isinstance(node, yaml.MappingNode):
            found = [v for k, v in node.value if scalar_key(k) == str(part)]
            if found:
                node = found[-1]
                clean.append(part)
                continue
            tags = {scalar_key(v) for k, v in node.value if scalar_key(k) in _TAG_KEYS}
            if part in tags:
                continue
        clean.append(part)
        break
    line = node.start_mark.line + 1 if node is not None else None
    return tuple(clean), line


def duplicate_keys(node: yaml.Node | None, loc: Loc = ()) -> Iterator[Problem]:
    """Duplicate mapping keys: safe_load silently keeps the last, hiding a typo."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = scalar_key(key)
            if name is not None and name in seen:
                yield Problem(format_loc((*loc, name)), key.start_mark.line + 1, "duplicate key")
            if name is not None:
                seen.add(name)
                yield from duplicate_keys(value, (*loc, name))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from duplicate_keys(item, (*loc, i))


def error_message(error: Any) -> str:
    """A pydantic error in words a person editing the file understands."""
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return f"unknown key {str(error['loc'][-1])!r}"
    if error["type"] == "missing":
        return f"missing key {str(error['loc'][-1])!r}"
    return message.removeprefix("Value error, ")


def compose(text: str) -> tuple[yaml.Node | None, object, list[Problem]]:
    """The node tree (for lines), the plain data, and duplicate-key problems.

    Raises DocumentError-free: YAML syntax errors come back as a single problem with
    data None.
    """
    loader = SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return None, None, [Problem("", line, f"not valid YAML: {exc}")]
    finally:
        loader.dispose()
    return root, data, list(duplicate_keys(root))
