"""The contacts and the `to:` line of escalation steps: what `events.escalation` writes
into an audit note and what the e-mail sink reads back. No I/O, no store: the settings
validate contacts with `check_contact` without importing the escalator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from events.model import Action

__all__ = [
    "STEPS",
    "Notice",
    "check_contact",
    "email_addresses",
    "format_note",
    "parse_note",
]

STEPS: Final = (Action.NOTIFY, Action.ESCALATE)
"""The audit actions of escalation, in the order they happen."""
_TO: Final = "to: "

# ---------------------------------------------------------------------- contacts, notes

_SCHEME: Final = re.compile(r"^[a-z][a-z0-9+.-]*:\S+$")
_ADDRESS: Final = re.compile(r"^[^\s@<>,;:\"()\[\]\\]+@[^\s@<>,;:\"()\[\]\\]+$")


def check_contact(contact: str) -> str:
    """`contact` if it is a usable URI (`mailto:` a single plain address, `tel:`, a
    webhook consumer's own scheme...), else ValueError. No whitespace or control
    characters: it goes into one line of the note and, for mail, into SMTP commands."""
    if not _SCHEME.match(contact) or any(ord(c) < 32 or ord(c) == 127 for c in contact):
        raise ValueError(f"contact {contact!r} is not a URI such as mailto:name@example.org")
    if contact.startswith("mailto:") and not _ADDRESS.match(contact[len("mailto:") :]):
        raise ValueError(f"contact {contact!r}: mailto: takes one plain address, name@domain")
    return contact


@dataclass(frozen=True, slots=True)
class Notice:
    """Who a step addresses and through which contacts (the note's `to:` line)."""

    addressee: str
    """`worker:<id>`, `desk:<site>` or `supervisor:<site>` (ids percent-encoded): the
    rate limit counts per addressee."""
    contacts: tuple[str, ...] = ()

    @property
    def who(self) -> str:
        kind, _, ident = self.addressee.partition(":")
        name = unquote(ident)
        return {
            "worker": f"grid worker {name}",
            "desk": f"the desk of {name} (no assignee)",
            "supervisor": f"the supervisor of {name}",
        }.get(kind, self.addressee)


def format_note(text: str, notice: Notice) -> str:
    """The audit note of a step: the human sentence, then `to: <addressee> <contact>...`."""
    return f"{text}\n{_TO}{' '.join((notice.addressee, *notice.contacts))}"


def parse_note(note: str) -> Notice | None:
    """The `to:` line of a step's note (None if it has none)."""
    for line in reversed(note.splitlines()):
        if line.startswith(_TO):
            parts = line[len(_TO) :].split()
            if parts:
                return Notice(parts[0], tuple(parts[1:]))
    return None


def email_addresses(notice: Notice) -> tuple[str, ...]:
    """The notice's `mailto:` contacts as addresses (others are for other channels)."""
    found: list[str] = []
    for contact in notice.contacts:
        if contact.startswith("mailto:"):
            address = contact[len("mailto:") :]
            if _ADDRESS.match(address) and address not in found:
                found.append(address)
    return tuple(found)
