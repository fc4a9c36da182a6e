"""Low-balance warnings: the operator hears once per crossing of RELIGHTQ_CREDIT_WARN_BELOW
(default 10 credits), before Segmind answers 406.

Real parts: PostgreSQL, the suite's Celery worker, the simulator's x-remaining-credits and
free credits endpoint over HTTP, and a webhook receiver checking Standard Webhooks
signatures with the official verifier.
"""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from relightq.credits.balance import record_balance
from relightq.db import session_scope, utcnow
from relightq.jobs.models import UpstreamState
from relightq.metrics import CREDITS_LOW_WARNINGS
from relightq.segmind.client import SegmindClient
from relightq.settings import get_settings
from relightq.throttle.service import get_fleet, pause_fleet, probe
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import wait_for
from tests.support.receiver import Receiver
from tests.webhooks.test_outbound import register, submit, verified

pytestmark = pytest.mark.usefixtures("celery_worker")  # it delivers the webhooks


@pytest.fixture(autouse=True)
def fresh_balance() -> None:
    """No balance known and no warning given yet."""
    with session_scope() as session:
        session.execute(
            update(UpstreamState).values(
                remaining_credits=None, credits_seen_at=None, credits_low_since=None
            )
        )


def report(credits: str, seconds_ago: float = 0) -> bool:
    with session_scope() as session:
        seen_at = utcnow() - timedelta(seconds=seconds_ago)
        return record_balance(session, Decimal(credits), seen_at, get_settings())


def warnings() -> float:
    return CREDITS_LOW_WARNINGS._value.get()


def test_the_default_threshold_is_ten_credits() -> None:
    assert get_settings().credit_warn_below == Decimal(10)


def test_each_crossing_warns_once_and_a_top_up_rearms_it(
    api: httpx.Client, hooks: Receiver
) -> None:
    endpoint = register(api, hooks.url, "credits.low")
    before = warnings()

    sent = [report(credits) for credits in ("50", "10", "9.963", "9.926", "3")]
    assert sent == [False, False, True, False, False]  # 10 is not below 10

    assert report("25") is False  # a top-up: the next fall warns again
    assert report("8.5") is True
    assert warnings() - before == 2

    first, second = sorted(hooks.wait_for(2), key=lambda r: r.json()["timestamp"])
    payload = verified(endpoint["secret"], first)
    assert payload["type"] == "credits.low"
    assert payload["data"]["credits"] == 9.963 and payload["data"]["threshold"] == 10
    assert verified(endpoint["secret"], second)["data"]["credits"] == 8.5
    time.sleep(0.3)
    assert len(hooks.requests) == 2


def test_a_late_older_report_neither_warns_nor_overwrites_a_newer_one() -> None:
    assert report("40") is False
    assert report("2", seconds_ago=60) is False  # arrived late, said earlier
    with session_scope() as session:
        state = session.get_one(UpstreamState, 1)
        assert state.remaining_credits == Decimal("40") and state.credits_low_since is None


def test_calls_that_take_the_balance_below_the_threshold_warn_before_any_406(
    api: httpx.Client, simulator: httpx.Client, hooks: Receiver, services: Services
) -> None:
    register(api, hooks.url, "credits.low")
    simulator.post("/admin/config", json={"credits": 10.05}).raise_for_status()

    jobs = [wait_for(api, submit(api), "succeeded", "failed") for _ in range(4)]

    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    [warning] = hooks.wait_for(1)
    assert warning.json()["data"]["credits"] == 9.976  # the second call crossed it
    time.sleep(0.3)
    assert len(hooks.of_type("credits.low")) == 1
    metrics = httpx.get(f"{services.api}/metrics").text
    assert "relightq_credits_low 1.0" in metrics
    assert "relightq_credits_low_warnings_total" in metrics


def test_the_free_credits_probe_warns_too(
    simulator: httpx.Client, hooks: Receiver, make_tenant: Any, services: Services
) -> None:
    tenant: TenantKey = make_tenant()
    with httpx.Client(base_url=services.api, headers={"x-api-key": tenant.key}) as api:
        register(api, hooks.url, "credits.low")
    simulator.post("/admin/config", json={"credits": 4}).raise_for_status()
    fleet = get_fleet()
    pause_fleet(fleet, "segmind_out_of_credits", "Not enough credits")
    settings = get_settings()
    client = SegmindClient(settings.effective_segmind_url, settings.effective_segmind_key)
    try:
        probe(fleet, client, settings)
    finally:
        client.close()

    [warning] = hooks.wait_for(1)
    assert warning.json()["data"]["credits"] == 4
