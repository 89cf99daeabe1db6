"""Hostile import files are refused cheaply, with the row and column named: YAML alias
bombs, spreadsheet formulas in CSV cells, files over the row and size limits."""

from __future__ import annotations

import time

import pytest

from registry import bulk
from registry.bulk import MAX_ROWS, formula_problem, parse_csv, parse_yaml
from registry.errors import Invalid
from rules.schema import RuleError, parse_rules
from sensors.yaml_doc import compose, expansion_problem

HEADER = "id,kind,site,cell,lon,lat,floor,label,profile,attributes\n"


def billion_laughs(levels: int = 9) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for i in range(levels - 1):
        name = f"l{i}"
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
        prev = name
    return text


def test_alias_bomb_is_refused_at_once_with_its_line() -> None:
    text = billion_laughs()
    assert len(text) < 1_000
    start = time.perf_counter()
    root, data, problems = compose(text)
    assert time.perf_counter() - start < 0.1
    assert root is None and data is None
    (problem,) = problems
    assert problem.line == 5 and "aliases expand to more than 100,000 nodes" in problem.message
    with pytest.raises(Invalid, match="aliases expand"):
        parse_yaml(text)
    with pytest.raises(RuleError, match="aliases expand"):
        parse_rules(text)


def test_too_many_alias_references_and_recursive_aliases_are_refused() -> None:
    many = "d: &d 1\nl: [" + ", ".join(["*d"] * 1_001) + "]\n"
    (problem,) = compose(many)[2]
    assert problem.line == 2 and "more than 1,000 alias references" in problem.message
    (problem,) = compose("x: &x [1, *x]\n")[2]
    assert problem.message == "recursive alias (refused)"


def test_ordinary_aliases_still_work() -> None:
    root, data, problems = compose("base: &b {kind: smoke}\nl: [*b, *b]\n")
    assert problems == [] and data == {"base": {"kind": "smoke"}, "l": [{"kind": "smoke"}] * 2}
    assert expansion_problem(root) is None


@pytest.mark.parametrize(
    ("label", "column"),
    [
        ('"=HYPERLINK(""http://evil"",""click"")"', "label"),
        ("+cmd|' /C calc'!A0", "label"),
        ("-2+3", "label"),
        ("@SUM(1+1)", "label"),
        ('"\tlobby"', "label"),
        ('"  =1+1"', "label"),
    ],
)
def test_csv_formulas_are_refused_with_row_and_column(label: str, column: str) -> None:
    good = "sm-1,smoke,s1,c1,-3.5,-40.25,-1,lobby,,\n"
    bad = f"sm-2,smoke,s1,c1,1.0,2.0,,{label},,\n"
    with pytest.raises(Invalid) as caught:
        parse_csv(HEADER + good + bad)
    (problem,) = caught.value.problems
    assert (problem.loc, problem.row) == (column, 3)
    assert "formula" in problem.msg


def test_csv_numbers_and_formulas_in_attributes() -> None:
    row = 'sm-1,smoke,s1,c1,-3.5,-40.25,-1,lobby,,"{""room"": ""-12"", ""n"": -1}"\n'
    bundle, rows = parse_csv(HEADER + row)
    device = bundle.devices[0]
    assert (device.location.lon, device.location.lat, device.location.floor) == (-3.5, -40.25, -1)
    assert rows[("devices", 0)] == 2
    bad = 'sm-1,smoke,s1,c1,1,2,,,,"{""room"": ""=cmd()""}"\n'
    with pytest.raises(Invalid) as caught:
        parse_csv(HEADER + bad)
    assert [(p.loc, p.row) for p in caught.value.problems] == [("attributes.room", 2)]
    assert formula_problem("-3.5") is None and formula_problem("+4") is None
    assert formula_problem("-x") is not None


def test_row_and_size_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "MAX_ROWS", 3)
    rows = "".join(f"sm-{i},smoke,s1,c1,1,2,,,,\n" for i in range(5))
    with pytest.raises(Invalid) as caught:
        parse_csv(HEADER + rows)
    (problem,) = caught.value.problems
    assert problem.row == 5 and "more than 3 rows" in problem.msg
    yaml_rows = "workers:\n" + "".join(f"  - {{id: w{i}, name: W}}\n" for i in range(5))
    with pytest.raises(Invalid, match="5 records, more than 3"):
        parse_yaml(yaml_rows)
    monkeypatch.setattr(bulk, "MAX_BYTES", 100)
    with pytest.raises(Invalid, match="larger than 100 bytes"):
        parse_csv(HEADER + "x" * 100)
    with pytest.raises(Invalid, match="larger than 100 bytes"):
        parse_yaml("#" + "é" * 60)  # 61 characters, 121 bytes
    assert MAX_ROWS == 50_000
