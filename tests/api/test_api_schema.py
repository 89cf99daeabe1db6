"""Schemathesis against the running app's OpenAPI: no 5xx, responses match the schema.

The app runs under uvicorn on a free loopback port over a real SQLite event store (with
events, a report and registry tables in it) and a real Mosquitto with dynamic security
(broker credentials), and every operation of its schema is fuzzed as an operator and as
an admin, with valid and with invalid data. Every check runs except "schema-valid data
must be accepted": a report for a site that does not exist, or a device in an unknown
cell, fits the schema and is still rightly refused (422) by the domain. Examples per
operation are bounded so the module stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from accounts.roles import Role
from broker.dynsec import BrokerAccounts, DynsecClient
from events.model import Severity
from tests.support.api_fixtures import ApiHarness, api_harness, serving
from tests.support.dynsec_fixtures import dynsec_mosquitto

MAX_EXAMPLES = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiHarness, str]]:
    tmp = tmp_path_factory.mktemp("schema")
    with (
        dynsec_mosquitto(tmp / "broker") as (_, admin),
        api_harness(f"sqlite:///{tmp / 'events.db'}") as api,
        serving(api.app) as base,
    ):
        api.deps.dynsec = BrokerAccounts(DynsecClient(admin))
        first = api.raise_event(key="door-1", cell="yy-g01", severity=Severity.HIGH)
        api.raise_event(key="smoke-2", cell="yy-g02", severity=Severity.CRITICAL)
        api.clear_event(first)
        api.client.post(
            "/api/v1/reports",
            json={"site": "yingyang", "cell": "yy-g03", "category": "noise", "description": "x"},
            headers=api.headers(Role.resident),
        )
        yield api, base


def fuzz(served: tuple[ApiHarness, str], role: Role) -> list[str]:
    """Every operation, positive and negative data; the failures, one line each."""
    api, base = served
    headers = {"Authorization": f"Bearer {api.token(role)}"}
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema is invalid: {result.err()}"
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @_bounded
            def run(case: Any) -> None:
                case.call_and_validate(
                    base_url=base, headers=headers, excluded_checks=[positive_data_acceptance]
                )

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid input?"
                continue  # nothing in this operation can be made invalid (no parameters)
            except (AssertionError, Failure, FailureGroup) as exc:
                first = str(exc).strip().splitlines()[:14]
                failures.append(f"{operation.label} [{mode.value}]: " + " | ".join(first))
    assert operations >= 15, f"only {operations} operations in the schema"
    return failures


_bounded = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def test_fuzz_as_operator(served: tuple[ApiHarness, str]) -> None:
    failures = fuzz(served, Role.operator)
    assert failures == [], "\n".join(failures)


def test_fuzz_as_admin(served: tuple[ApiHarness, str]) -> None:
    failures = fuzz(served, Role.admin)
    assert failures == [], "\n".join(failures)
