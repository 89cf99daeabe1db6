"""The topic grammar: every MQTT topic GridWatch builds, parses or grants comes from here.

```
device namespace   <prefix>/<site>/<kind>/<device>/<channel>    prefix `gw/v1` by default
hub presence       <prefix>/_hub/<client id>/status             retained online/offline
security events    <events root>/<site>                         `gw/v1` → `gw/events/v1/<site>`
hub subscription   <prefix>/#   or   $share/<group>/<prefix>/#
```

- `site`, `kind` and `device` are identifiers (`is_topic_segment`): they become InfluxDB
  tags and broker ACL patterns. The channel is any level: which channels exist is the
  kind's business (decode answers `unknown_channel`, not `bad_topic`).
- The hub's presence topic lies inside the device namespace but is never a device
  topic (`_hub` is no identifier, and it has one level less); the hub drops it on
  arrival (`is_hub_presence`).
- Security events lie outside the device namespace (`events` goes in before the
  prefix's last level, `acme/grid/v9` → `acme/grid/events/v9`), so no hub subscription
  ever receives them: a hub cannot consume its own (or a peer's) events.

A prefix is normalised once (`normalise_prefix`: no outer slashes, checked levels);
every function here takes such a prefix. Builders do not re-check the device
segments: they come from site files, the registry or decoded topics, all checked
where they enter. This module is the bottom of the house: it imports nothing of ours.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

__all__ = [
    "CHANNELS",
    "DEFAULT_PREFIX",
    "EVENT",
    "HUB_PRESENCE_LEVEL",
    "SEGMENT_MAX_LENGTH",
    "SEGMENT_PATTERN",
    "STATUS",
    "TELEMETRY",
    "Route",
    "TopicError",
    "device_filter",
    "device_root",
    "device_topic",
    "events_filter",
    "events_root",
    "events_topic",
    "hub_presence_client",
    "hub_presence_filter",
    "hub_presence_head",
    "hub_presence_topic",
    "is_hub_presence",
    "is_topic_level",
    "is_topic_segment",
    "normalise_prefix",
    "parse",
    "site_filter",
    "subscription",
    "subtree",
]

DEFAULT_PREFIX: Final = "gw/v1"

# Channels: measured values, discrete happenings, retained online/offline.
TELEMETRY: Final = "telemetry"
EVENT: Final = "event"
STATUS: Final = "status"
CHANNELS: Final = (TELEMETRY, EVENT, STATUS)

SEGMENT_MAX_LENGTH: Final = 64
SEGMENT_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
"""A site, kind or device segment (with `SEGMENT_MAX_LENGTH`), e.g. for pydantic."""
_SEGMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")

HUB_PRESENCE_LEVEL: Final = "_hub"
"""Under the prefix, the hubs' presence topics; never an identifier, so never a site."""
_EVENTS_LEVEL: Final = "events"


class TopicError(ValueError):
    """A topic, prefix or level that does not follow the grammar; the message says why."""


class Route(NamedTuple):
    """What a device topic says: who sent it, of which kind, on which channel.

    A named tuple (immutable, compared by value, unpacks as `site, kind, device, channel`):
    `parse` builds one for every topic decode has not cached, at half a frozen
    dataclass's cost."""

    site: str
    kind: str
    device: str
    channel: str

    def topic(self, prefix: str) -> str:
        return device_topic(prefix, self.site, self.kind, self.device, self.channel)


# --------------------------------------------------------------------------- levels


def is_topic_segment(value: str) -> bool:
    """Whether a string may stand as a site, kind or device: 1-64 characters of
    `A-Za-z0-9_.:-`, starting with a letter or digit (no wildcards, no `$`, no `/`)."""
    return _SEGMENT.fullmatch(value) is not None


def is_topic_level(value: str) -> bool:
    """Whether a string can be one literal level of a topic we publish: not empty, no
    `/`, no wildcard, no NUL (the MQTT rule; looser than `is_topic_segment`)."""
    return bool(value) and not any(c in value for c in "/+#\x00")


def normalise_prefix(prefix: str) -> str:
    """The prefix without outer slashes, its levels checked: identifiers, and a last
    level other than `events` (the events root must lie outside the prefix)."""
    clean = prefix.strip("/")
    levels = clean.split("/")
    for level in levels:
        if not is_topic_segment(level):
            raise TopicError(
                f"topic prefix {prefix!r}: level {level[:80]!r} is not an identifier "
                "(1-64 of A-Za-z0-9_.:-, starting with a letter or digit)"
            )
    if levels[-1] == _EVENTS_LEVEL:
        raise TopicError(
            f"topic prefix {prefix!r} may not end in {_EVENTS_LEVEL!r}: "
            "the security events go under it"
        )
    return clean


# --------------------------------------------------------------------------- devices


def device_root(prefix: str, site: str, kind: str, device: str) -> str:
    """`<prefix>/<site>/<kind>/<device>`: the device's channels are the levels below."""
    return f"{prefix}/{site}/{kind}/{device}"


def device_topic(prefix: str, site: str, kind: str, device: str, channel: str) -> str:
    """`<prefix>/<site>/<kind>/<device>/<channel>`."""
    return f"{prefix}/{site}/{kind}/{device}/{channel}"


def parse(prefix: str, topic: str) -> Route | TopicError:
    """The route of a device topic, or why it is none (returned, not raised: a flood of
    made-up topics is answered without raising). The channel is not checked (see the
    module docstring); the prefix must match level for level."""
    head = len(prefix)
    if topic.startswith(prefix) and topic[head : head + 1] == "/":
        parts = topic[head + 1 :].split("/")
        if len(parts) == 4:
            site, kind, device, channel = parts
            for label, value in (("site", site), ("kind", kind), ("device", device)):
                if _SEGMENT.fullmatch(value) is None:
                    return TopicError(f"{label} {value[:80]!r} is not an identifier")
            return Route(site, kind, device, channel)
    return TopicError(f"expected {prefix}/<site>/<kind>/<device>/<channel>")


# --------------------------------------------------------------------------- filters


def subtree(root: str) -> str:
    """`<root>/#`: the root's topics and everything below (a filter or ACL pattern)."""
    return f"{root}/#"


def subscription(prefix: str, shared_group: str | None = None) -> str:
    """What a hub subscribes to: `<prefix>/#`, or `$share/<group>/<prefix>/#` so hubs of
    one group split the load. As an ACL pattern, group `+` stands for any group."""
    base = subtree(prefix)
    return f"$share/{shared_group}/{base}" if shared_group else base


def site_filter(prefix: str, site: str) -> str:
    """`<prefix>/<site>/#`: every device topic of a site (a simulator's ACL)."""
    return subtree(f"{prefix}/{site}")


def device_filter(prefix: str, site: str, kind: str, device: str) -> str:
    """`<prefix>/<site>/<kind>/<device>/#`: a device's own topics (its ACL)."""
    return subtree(device_root(prefix, site, kind, device))


# --------------------------------------------------------------------------- the hub


def hub_presence_topic(prefix: str, client_id: str) -> str:
    """`<prefix>/_hub/<client id>/status`: a hub's retained online/offline (its will)."""
    if not is_topic_level(client_id):
        raise TopicError(f"client id {client_id[:80]!r} cannot be a topic level")
    return f"{prefix}/{HUB_PRESENCE_LEVEL}/{client_id}/{STATUS}"


def hub_presence_filter(prefix: str) -> str:
    """`<prefix>/_hub/#`: every hub's presence (the hub's publish ACL)."""
    return subtree(f"{prefix}/{HUB_PRESENCE_LEVEL}")


def hub_presence_head(prefix: str) -> str:
    """`<prefix>/_hub/`: how every hub presence topic starts. On a hot path keep it and
    test `topic.startswith(head)`; elsewhere `is_hub_presence` says the same."""
    return f"{prefix}/{HUB_PRESENCE_LEVEL}/"


def is_hub_presence(prefix: str, topic: str) -> bool:
    """Whether a topic is a hub's presence flag, not device data."""
    return topic.startswith(hub_presence_head(prefix))


def hub_presence_client(prefix: str, topic: str) -> str | None:
    """The client id of `<prefix>/_hub/<client id>/status`, or None when the topic is
    anything else (other levels under `_hub` are reserved, and no hub publishes there)."""
    head = hub_presence_head(prefix)
    if not topic.startswith(head):
        return None
    client_id, sep, channel = topic[len(head) :].partition("/")
    return client_id if sep and channel == STATUS and is_topic_level(client_id) else None


# --------------------------------------------------------------------------- events


def events_root(prefix: str) -> str:
    """Where security events go: the prefix with `events` before its last level
    (`gw/v1` → `gw/events/v1`, `gw` → `events/gw`), outside `<prefix>/#`."""
    head, _, last = prefix.rpartition("/")
    return f"{head}/{_EVENTS_LEVEL}/{last}" if head else f"{_EVENTS_LEVEL}/{last}"


def events_topic(prefix: str, site: str) -> str:
    """`<events root>/<site>`: the site's event transitions (the hub publishes them)."""
    if not is_topic_level(site):
        raise TopicError(f"site {site[:80]!r} cannot be a topic level")
    return f"{events_root(prefix)}/{site}"


def events_filter(prefix: str, site: str = "+") -> str:
    """`<events root>/+` (every site) or `<events root>/<site>`: what operators and
    dashboards subscribe to, and the ACL pattern of whoever publishes or reads them."""
    return f"{events_root(prefix)}/{site}"
