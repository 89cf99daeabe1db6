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
    device = "device"
    """Machines publishing telemetry: no API route by default."""


PEOPLE_AND_INTEGRATIONS: Final = (Role.admin, Role.integrator, Role.operator, Role.resident)
"""Every role but `device`: devices publish over MQTT and have no API route."""
