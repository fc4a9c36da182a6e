"""Fixtures of the dashboard's tests."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from relightq.db import utcnow
from relightq.throttle.service import get_fleet
from tests.dashboard.rows import set_upstream


@pytest.fixture
def low_balance(simulator: httpx.Client) -> Iterator[None]:
    """Segmind reported 9.963 credits, below the default threshold of 10; the warning is
    cleared afterwards. (The simulator fixture lets earlier tests' requests end first: one
    collected now would report the simulator's balance over this one.)"""
    get_fleet().record_credits(Decimal("9.963"))
    now = utcnow()
    set_upstream(remaining_credits=Decimal("9.963"), credits_seen_at=now, credits_low_since=now)
    yield
    set_upstream(credits_low_since=None)
