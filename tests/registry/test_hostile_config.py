"""Configuration refused where it enters: profile thresholds out of bounds (named by
key), time zones that are folders of the tz database or absurdly long names."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from registry.schema import (
    THRESHOLD_BOUNDS,
    Bundle,
    ProfilePatch,
    ProfileSpec,
    SitePatch,
    SiteSpec,
)
from rules.overrides import PARAMETER_BOUNDS
from sites.model import SiteError, parse_site

BAD_ZONES = ["America", "Asia", "x" * 300, "../../etc/passwd", "Asia/Atlantis", "", "UTC\x00"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("device_offline.after", 1e308),
        ("device_offline.after", 30 * 86_400 + 1),
        ("low_battery.below", math.nan),
        ("low_battery.below", math.inf),
        ("low_battery.below", -1e9),
        ("repeated_denials.at_least", 2.5),
        ("travel.max_speed_m_s", 0),
        ("a.b", math.inf),
    ],
)
def test_profile_thresholds_out_of_bounds_are_refused_naming_the_key(
    key: str, value: float
) -> None:
    for build in (
        lambda: ProfileSpec(id="p", kind="smoke", interval_s=60, thresholds={key: value}),
        lambda: ProfilePatch(thresholds={key: value}),
    ):
        with pytest.raises(ValidationError) as caught:
            build()
        [error] = caught.value.errors()
        assert error["loc"] == ("thresholds",) and key in error["msg"]


def test_profile_thresholds_in_bounds_are_accepted() -> None:
    spec = ProfileSpec(
        id="p",
        kind="smoke",
        interval_s=60,
        thresholds={"device_offline.after": 30 * 86_400, "low_battery.below": 25, "a.b": 0.3},
    )
    assert spec.thresholds["device_offline.after"] == 30 * 86_400


def test_the_registry_and_the_rules_bound_the_same_parameters_alike() -> None:
    assert set(THRESHOLD_BOUNDS) == set(PARAMETER_BOUNDS)
    for name, bounds in THRESHOLD_BOUNDS.items():
        rules = PARAMETER_BOUNDS[name]
        assert (bounds.low, bounds.high, bounds.integer, bounds.low_open) == (
            rules.low,
            rules.high,
            rules.integer,
            rules.low_open,
        ), name


@pytest.mark.parametrize("zone", BAD_ZONES)
def test_bad_time_zones_are_refused_by_site_specs(zone: str) -> None:
    for build in (
        lambda: SiteSpec(id="s1", name="S", timezone=zone),
        lambda: SitePatch(timezone=zone),
        lambda: Bundle.model_validate({"sites": [{"id": "s1", "name": "S", "timezone": zone}]}),
    ):
        with pytest.raises(ValidationError) as caught:
            build()
        assert any(e["loc"][-1] == "timezone" for e in caught.value.errors())


SITE_FILE = """
site: s1
name: Site one
timezone: {zone}
cells:
  - id: c1
    name: West
    worker: {{id: w1, name: Chen}}
    polygon: [[113.0, 22.0], [113.01, 22.0], [113.01, 22.01], [113.0, 22.01]]
devices: []
"""


@pytest.mark.parametrize("zone", ["America", "x" * 300])
def test_bad_time_zones_in_site_files_are_a_clear_site_error(zone: str) -> None:
    with pytest.raises(SiteError) as caught:
        parse_site(SITE_FILE.format(zone=zone), "s1.yaml")
    message = str(caught.value)
    assert "timezone" in message and ("IANA time zone" in message or "at most 64" in message)


def test_a_good_site_file_still_parses() -> None:
    assert parse_site(SITE_FILE.format(zone="Asia/Shanghai")).timezone == "Asia/Shanghai"
