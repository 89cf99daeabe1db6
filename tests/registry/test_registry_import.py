"""Bulk import: site files as they are, CSV and YAML, all or nothing with row numbers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from detection.directory_source import directory_from_registry
from registry.bulk import dump_yaml, import_text, parse_csv, parse_yaml
from registry.errors import Invalid
from registry.model import Status
from registry.site_import import bundle_from_site, import_sites
from registry.store import RegistryStore
from rules.site_directory import directory_from_sites
from sites.model import DEMO_SITES, load_site_ref

CSV_HEADER = "id,kind,site,cell,lon,lat,floor,label,attributes\n"


@pytest.fixture
def store(event_db_url: str) -> Iterator[RegistryStore]:
    with RegistryStore(event_db_url) as reg:
        reg.migrate()
        yield reg


def test_demo_site_files_import_as_they_are(store: RegistryStore) -> None:
    sites = [load_site_ref(name) for name in DEMO_SITES]
    summary = import_sites(store, sites)
    n_devices = sum(len(s.devices) for s in sites)
    assert len(summary.created["devices"]) == n_devices
    assert len(summary.created["cells"]) == sum(len(s.cells) for s in sites)
    assert store.list_devices(status=Status.ALL, limit=1).total == n_devices
    # the rules see the same directory whether it comes from the files or the registry
    assert directory_from_registry(store) == directory_from_sites(sites)
    # importing again updates in place and creates nothing
    again = import_sites(store, sites)
    assert not any(again.created.values())
    assert len(again.updated["devices"]) == n_devices


def test_yaml_with_one_bad_row_changes_nothing_and_names_the_row(store: RegistryStore) -> None:
    site = load_site_ref("yingyang")
    text = dump_yaml(bundle_from_site(site))
    lines = text.splitlines()
    # break the cell of one device, deep in the file: a reference error, found by the store
    victim = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("- id: ") and "cell: yy-g03" in "\n".join(lines[i : i + 4]) and i > 100
    )
    cell_line = next(i for i in range(victim, victim + 5) if "cell: yy-g03" in lines[i])
    lines[cell_line] = lines[cell_line].replace("yy-g03", "yy-nowhere")
    with pytest.raises(Invalid) as bad:
        import_text(store, "\n".join(lines) + "\n", "yaml", source="site.yaml")
    assert [(p.row, p.msg) for p in bad.value.problems] == [
        (victim + 1, "unknown cell 'yy-nowhere'")
    ]
    assert store.list_sites(status=Status.ALL).total == 0
    assert store.list_devices(status=Status.ALL).total == 0
    # the same file without the mistake imports everything
    summary = import_text(store, text, "yaml")
    assert len(summary.created["devices"]) == len(site.devices)


def test_yaml_schema_errors_are_all_reported_with_lines(store: RegistryStore) -> None:
    text = (
        "sites:\n"
        "- id: s1\n"
        "  name: One\n"
        "  timezone: Mars/Olympus\n"
        "devices:\n"
        "- id: d1\n"
        "  kind: smoke\n"
        "  site: s1\n"
        "  cell: c1\n"
        "  location: {lon: 500, lat: 22}\n"
        "  colour: red\n"
    )
    with pytest.raises(Invalid) as bad:
        import_text(store, text, "yaml")
    found = {(p.row, p.loc) for p in bad.value.problems}
    assert found == {
        (4, "sites[1].timezone"),
        (10, "devices[1].location.lon"),
        (11, "devices[1].colour"),
    }


def test_csv_with_one_bad_row_changes_nothing_and_names_the_row(store: RegistryStore) -> None:
    import_sites(store, [load_site_ref("yingyang")])
    before = store.list_devices(status=Status.ALL).total
    good = (
        "new-smoke-1,smoke,yingyang,yy-g01,113.388,22.517,3,Block 1 hall,"
        '"{""room"": ""corridor""}"\n'
    )
    bad_location = "new-smoke-2,smoke,yingyang,yy-g01,113.3999,22.517,,,\n"
    with pytest.raises(Invalid) as bad:
        import_text(store, CSV_HEADER + good + bad_location + good.replace("-1,", "-3,"), "csv")
    assert [(p.row, p.loc) for p in bad.value.problems] == [(3, "devices[2].location")]
    assert store.list_devices(status=Status.ALL).total == before
    summary = import_text(store, CSV_HEADER + good, "csv")
    assert summary.created["devices"] == ("new-smoke-1",)
    assert store.get_device("new-smoke-1").location.floor == 3


def test_csv_parse_errors_name_every_bad_row() -> None:
    text = CSV_HEADER + "a,smoke,s,c,1,2,,,\nb,smoke,s,c,east,2,,,\nc,smoke,s,c,1,2,,,{oops\n"
    with pytest.raises(Invalid) as bad:
        parse_csv(text)
    assert [(p.row, p.loc) for p in bad.value.problems] == [(3, "lon"), (4, "attributes")]
    with pytest.raises(Invalid, match="unknown columns"):
        parse_csv("id,kind,site,cell,lon,lat,colour\n")


@pytest.mark.parametrize("text", ["", "null\n", "{}\n", "# only a comment\n"])
def test_an_empty_yaml_import_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_yaml(text, "empty.yaml")
    assert "nothing to import" in str(caught.value)
