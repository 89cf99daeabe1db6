"""Who a user or a machine is to GridWatch: the roles the API's guards check."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Role(StrEnum):
    admin = "admin"
    integrator = "integrator"
    """Registry and broker credentials."""
    operator = "operator"
    """Works events; reads the registry."""
    resident = "resident"
    """Files reports and reads their own."""
    worker = "worker"
    """A grid worker (网格员) on the phone page: sees, accepts and resolves the events
    assigned to them. The account's username is the registry Worker id it acts as."""
    device = "device"
    """Machines publishing telemetry: no API route by default."""


PEOPLE_AND_INTEGRATIONS: Final = (
    Role.admin,
    Role.integrator,
    Role.operator,
    Role.resident,
    Role.worker,
)
"""Every role but `device`: devices publish over MQTT and have no API route."""
