"""YAML documents validated by pydantic, with every problem reported at its line.

Site files and rule files are written by people: an error must say where. The YAML is
composed to a node tree first (which keeps line marks), then validated; each pydantic
error loc is walked back down the tree to the line it came from.

Aliases are bounded: a composed tree shares an anchored node wherever it is aliased, but
everything after composing (the duplicate-key walk, pydantic, the records built) sees it
expanded, so a few hundred bytes of nested aliases ("billion laughs") would cost
millions of nodes. `compose` measures the expansion on the shared tree (each distinct
node once) and refuses a document with more than `MAX_ALIASES` alias references, aliases
that add more than `MAX_EXPANDED_NODES` nodes, or a recursive alias, before anything
walks it. A large document without aliases is not refused here: it costs only its size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import yaml

Loc = tuple[str | int, ...]

SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SafeDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

MAX_ALIASES: Final = 1_000
"""Alias references (`*name`) a document may hold."""
MAX_EXPANDED_NODES: Final = 100_000
"""Nodes that expanding the aliases may add to a document's own nodes."""

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


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def expansion_problem(
    root: yaml.Node | None,
    *,
    max_aliases: int = MAX_ALIASES,
    max_nodes: int = MAX_EXPANDED_NODES,
) -> Problem | None:
    """Why the tree is too big once its aliases are expanded (or recursive), else None.

    One pass over the distinct nodes (each shared node's expanded size computed once):
    linear in the composed tree, whatever the expansion would be. A node reached again
    is an alias reference; the line named is the node (mapping or list) holding the
    reference, or the node whose expansion goes over the bound.
    """
    if root is None:
        return None
    size: dict[int, int] = {}
    on_path: set[int] = set()
    aliases = 0
    # Iterative depth-first walk in document order (no recursion limit on deep
    # documents): an anchor is always done before an alias of it is reached, unless
    # the alias lies inside it (recursive).
    stack: list[tuple[yaml.Node, yaml.Node | None, bool]] = [(root, None, False)]
    while stack:
        node, parent, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            total = 1 + sum(size[id(c)] for c in _children(node))
            size[key] = total
            # Nodes done so far are distinct, and include all of this one's: beyond them,
            # its expansion is what aliases add.
            if total - len(size) > max_nodes:
                return Problem(
                    "",
                    node.start_mark.line + 1,
                    f"aliases expand to more than {max_nodes:,} nodes (refused)",
                )
            continue
        where = (parent or node).start_mark.line + 1
        if key in on_path:
            return Problem("", where, "recursive alias (refused)")
        if key in size:
            aliases += 1
            if aliases > max_aliases:
                return Problem("", where, f"more than {max_aliases:,} alias references (refused)")
            continue
        on_path.add(key)
        stack.append((node, parent, True))
        stack.extend((child, node, False) for child in reversed(_children(node)))
    return None


def compose(text: str) -> tuple[yaml.Node | None, object, list[Problem]]:
    """The node tree (for lines), the plain data, and duplicate-key problems.

    Raises DocumentError-free: YAML syntax errors come back as a single problem with
    data None.
    """
    loader = SafeLoader(text)
    try:
        root = loader.get_single_node()
        too_big = expansion_problem(root)
        if too_big is not None:
            return None, None, [too_big]
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return None, None, [Problem("", line, f"not valid YAML: {exc}")]
    finally:
        loader.dispose()
    return root, data, list(duplicate_keys(root))
