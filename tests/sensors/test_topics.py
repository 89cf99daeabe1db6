"""The topic grammar: building and parsing agree, and the events lie outside every hub's
subscription (checked with paho's own MQTT filter matching)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from sensors import topics
from sensors.topics import Route, TopicError

SEGMENT = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
PREFIX = st.lists(SEGMENT.filter(lambda s: s != "events"), min_size=1, max_size=4).map("/".join)
CHANNEL = st.sampled_from(topics.CHANNELS)


def test_the_default_grammar() -> None:
    p = topics.DEFAULT_PREFIX
    assert p == "gw/v1"
    assert topics.device_topic(p, "yy", "smoke", "sd-1", "telemetry") == (
        "gw/v1/yy/smoke/sd-1/telemetry"
    )
    assert topics.device_root(p, "yy", "smoke", "sd-1") == "gw/v1/yy/smoke/sd-1"
    assert topics.device_filter(p, "yy", "smoke", "sd-1") == "gw/v1/yy/smoke/sd-1/#"
    assert topics.site_filter(p, "yy") == "gw/v1/yy/#"
    assert topics.subscription(p) == "gw/v1/#"
    assert topics.subscription(p, "hubs") == "$share/hubs/gw/v1/#"
    assert topics.hub_presence_topic(p, "gridwatch-hub") == "gw/v1/_hub/gridwatch-hub/status"
    assert topics.hub_presence_filter(p) == "gw/v1/_hub/#"
    assert topics.events_root(p) == "gw/events/v1"
    assert topics.events_topic(p, "yy") == "gw/events/v1/yy"
    assert topics.events_filter(p) == "gw/events/v1/+"
    assert topics.events_root("acme/grid/v9") == "acme/grid/events/v9"
    assert topics.events_root("gw") == "events/gw"
    assert topics.CHANNELS == ("telemetry", "event", "status")


@given(prefix=PREFIX, site=SEGMENT, kind=SEGMENT, device=SEGMENT, channel=CHANNEL)
def test_parse_inverts_build(prefix: str, site: str, kind: str, device: str, channel: str) -> None:
    topic = topics.device_topic(prefix, site, kind, device, channel)
    route = topics.parse(prefix, topic)
    assert route == Route(site, kind, device, channel)
    assert isinstance(route, Route) and route.topic(prefix) == topic
    assert topic_matches_sub(topics.subscription(prefix), topic)
    assert topic_matches_sub(topics.device_filter(prefix, site, kind, device), topic)
    assert topic_matches_sub(topics.site_filter(prefix, site), topic)


@given(prefix=PREFIX, site=SEGMENT, client=SEGMENT)
def test_events_never_match_a_hub_subscription(prefix: str, site: str, client: str) -> None:
    """The hub subscribes to its prefix (maybe shared): its own events must stay out."""
    event = topics.events_topic(prefix, site)
    assert not topic_matches_sub(topics.subscription(prefix), event)
    assert topic_matches_sub(topics.events_filter(prefix), event)
    assert topic_matches_sub(topics.events_filter(prefix, site), event)
    presence = topics.hub_presence_topic(prefix, client)
    assert topic_matches_sub(topics.subscription(prefix), presence)  # by design, dropped
    assert topic_matches_sub(topics.hub_presence_filter(prefix), presence)
    assert topics.is_hub_presence(prefix, presence)
    assert isinstance(topics.parse(prefix, presence), TopicError)  # never a device topic


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("gw/v2/s/smoke/d/telemetry", "expected gw/v1/<site>/<kind>/<device>/<channel>"),
        ("gw/v1x/s/smoke/d/telemetry", "expected"),
        ("gw/v1", "expected"),
        ("gw/v1/", "expected"),
        ("gw/v1/s/smoke/d", "expected"),
        ("gw/v1/s/smoke/d/telemetry/x", "expected"),
        ("gw/v1/_hub/gridwatch-hub/status", "expected"),
        ("gw/v1/s/smoke/a b/telemetry", "device 'a b' is not an identifier"),
        ("gw/v1//smoke/d/telemetry", "site '' is not an identifier"),
        ("gw/v1/s/sm+ke/d/telemetry", "kind 'sm+ke' is not an identifier"),
        ("gw/v1/s/smoke/" + "d" * 65 + "/telemetry", "is not an identifier"),
    ],
)
def test_parse_refuses(topic: str, why: str) -> None:
    error = topics.parse("gw/v1", topic)
    assert isinstance(error, TopicError) and why in str(error)


def test_the_channel_is_the_kinds_business() -> None:
    assert topics.parse("gw/v1", "gw/v1/s/smoke/d/") == Route("s", "smoke", "d", "")
    assert topics.parse("gw/v1", "gw/v1/s/smoke/d/a b") == Route("s", "smoke", "d", "a b")


@pytest.mark.parametrize(
    ("value", "segment", "level"),
    [
        ("a-1", True, True),
        ("A.b:c_d-9", True, True),
        ("d" * 64, True, True),
        ("d" * 65, False, True),
        ("-a", False, True),
        ("_hub", False, True),
        ("a b", False, True),
        ("设备", False, True),
        ("$sys", False, True),
        ("", False, False),
        ("a/b", False, False),
        ("a+", False, False),
        ("a#", False, False),
        ("a\x00", False, False),
        ("a\n", False, True),
    ],
)
def test_segments_and_levels(value: str, segment: bool, level: bool) -> None:
    assert topics.is_topic_segment(value) is segment
    assert topics.is_topic_level(value) is level


@pytest.mark.parametrize(
    ("given", "clean"), [("gw/v1", "gw/v1"), ("/gw/v1/", "gw/v1"), ("acme", "acme")]
)
def test_prefix_is_normalised(given: str, clean: str) -> None:
    assert topics.normalise_prefix(given) == clean


@pytest.mark.parametrize("prefix", ["", "/", "gw//v1", "gw/+", "gw/#", "gw/v 1", "gw/events"])
def test_prefix_is_checked(prefix: str) -> None:
    with pytest.raises(TopicError):
        topics.normalise_prefix(prefix)


@pytest.mark.parametrize("bad", ["", "a/b", "s+", "#"])
def test_published_levels_are_checked(bad: str) -> None:
    with pytest.raises(TopicError):
        topics.events_topic("gw/v1", bad)
    with pytest.raises(TopicError):
        topics.hub_presence_topic("gw/v1", bad)
