"""Clients of the real API (over HTTP, as the suite's tenant and an operator)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relightq.client import RelightqClient
from tests.conftest import Services, TenantKey


@pytest.fixture
def client(services: Services, tenant: TenantKey) -> Iterator[RelightqClient]:
    """The sync client as ``tenant``, with the default retry policy."""
    with RelightqClient(services.api, tenant.key) as client:
        yield client


@pytest.fixture
def ops_client(services: Services, operator: TenantKey) -> Iterator[RelightqClient]:
    """The sync client as an operator (may pause and resume the fleet)."""
    with RelightqClient(services.api, operator.key) as client:
        yield client
