"""Schemathesis against the live API's own OpenAPI: no generated input gets a 500.

Driven by hand (one Hypothesis run per operation) rather than through schemathesis'
pytest plugin, whose fixture loader does not support this pytest version.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import Services, TenantKey

pytestmark = pytest.mark.usefixtures("celery_worker")

EXAMPLES_PER_OPERATION = 25


def test_no_generated_input_gets_a_server_error(services: Services, tenant: TenantKey) -> None:
    schema = schemathesis.openapi.from_url(f"{services.api}/openapi.json")
    operations = [cast(Any, result).ok() for result in schema.get_all_operations()]
    server_errors: list[str] = []
    calls = 0

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(headers={"x-api-key": tenant.key}, timeout=30)
            if response.status_code >= 500:
                server_errors.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]}"
                )

        call()

    assert len(operations) >= 30 and calls >= 10 * len(operations)
    assert server_errors == []
