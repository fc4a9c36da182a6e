"""A tenant's monthly credit cap, the operator's side: reservations never overshoot it
(nor a batch's budget), capped jobs wait apart from a fleet pause, and go on when the cap
is raised or removed or the month turns; `relightq tenants`; GET /v1/throttle."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from relightq.batches.models import Batch
from relightq.cli import app as cli
from relightq.credits import caps
from relightq.credits.budgets import month_of, reserve
from relightq.credits.caps import set_monthly_cap, wake_capped
from relightq.db import session_scope, utcnow
from relightq.errors import NotFound
from relightq.jobs import sweeper
from relightq.jobs.models import CAP_REACHED, Job, JobStatus, parked_by_cap, parked_by_pause
from relightq.jobs.schemas import JobOptions
from relightq.jobs.sweeper import sweep
from relightq.settings import get_settings
from relightq.tenants import known_keys
from relightq.tenants.models import Tenant, TenantCreditMonth
from tests.conftest import TenantKey

PRICE = get_settings().segmind_credits_per_image  # 0.037
SWEEP_AT_ONCE = get_settings().model_copy(update={"sweep_grace_seconds": 0.0})
runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # Rich wraps at 80 columns where there is no terminal


def table_rows(output: str) -> list[list[str]]:
    """The cells of each body row of a table Rich printed."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.strip().startswith("│")
    ]


def this_month() -> date:
    return month_of(utcnow())


def last_month() -> date:
    return month_of(utcnow()).replace(day=1) - timedelta(days=1)


class Jobs:
    """Job rows made for one test, cancelled after it so no later sweep wakes them."""

    def __init__(self) -> None:
        self.ids: list[uuid.UUID] = []

    def add(
        self,
        tenant_id: uuid.UUID,
        *,
        status: JobStatus = JobStatus.WAITING,
        reason: str | None = f"{CAP_REACHED} (1 of 1 credits used)",
        images: int = 1,
        priority: int = 5,
        reserved: Decimal = Decimal(0),
        batch_id: uuid.UUID | None = None,
        **values: Any,
    ) -> uuid.UUID:
        params = JobOptions(prompt="x", number_of_images=images).relight_params().model_dump()
        past = utcnow() - timedelta(seconds=30)
        job = Job(
            tenant_id=tenant_id,
            batch_id=batch_id,
            status=status,
            waiting_reason=reason,
            params=params,
            subject_image="https://example.com/x.png",
            priority=priority,
            credits_reserved=reserved,
            created_at=past,
            updated_at=past,
            **values,
        )
        with session_scope() as session:
            session.add(job)
        self.ids.append(job.id)
        return job.id

    def status(self, job_id: uuid.UUID) -> tuple[JobStatus, str | None]:
        with session_scope() as session:
            row = session.execute(
                select(Job.status, Job.waiting_reason).where(Job.id == job_id)
            ).one()
        return JobStatus(row.status), row.waiting_reason


@pytest.fixture
def jobs(database: str) -> Iterator[Jobs]:
    made = Jobs()
    yield made
    with session_scope() as session:
        session.execute(update(Job).where(Job.id.in_(made.ids)).values(status=JobStatus.CANCELLED))


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[uuid.UUID]:
    """The jobs a wake-up was published for. Kept here rather than sent: a worker another
    test started would otherwise run these made-up jobs."""
    sent: list[uuid.UUID] = []

    def record(_session: object, job_id: uuid.UUID, _priority: int, countdown: float = 0) -> None:
        sent.append(job_id)

    monkeypatch.setattr(caps, "publish_job", record)
    monkeypatch.setattr(sweeper, "publish_job", record)
    return sent


def set_cap(tenant: TenantKey, cap: Decimal | None) -> None:
    """The cap alone, without the wake-ups of caps.set_monthly_cap (which also tells the
    API processes that keep tenants' rows)."""
    with session_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant.id).values(monthly_credit_cap=cap))
        known_keys.changed_on_commit(session)


def spend(tenant: TenantKey, credits: Decimal, month: date) -> None:
    with session_scope() as session:
        session.add(TenantCreditMonth(tenant_id=tenant.id, month=month, credits_used=credits))


def wake(tenant: TenantKey | None = None) -> int:
    with session_scope() as session:
        return wake_capped(session, tenant.id if tenant else None)


# Reservations: overshoot 0 under real concurrent transactions -----------------------------


def race_to_reserve(
    tenant_id: uuid.UUID, batch_id: uuid.UUID | None, job_ids: list[uuid.UUID]
) -> int:
    """Every job reserves one image at the same moment, each in its own transaction (as
    workers do); how many reservations held."""
    start = threading.Barrier(len(job_ids))

    def one(job_id: uuid.UUID) -> bool:
        with session_scope() as session:
            start.wait()
            refusal = reserve(session, Job.id == job_id, job_id, tenant_id, batch_id, PRICE)
            if refusal is not None:
                session.rollback()  # as the worker does: nothing reserved
            return refusal is None

    with ThreadPoolExecutor(len(job_ids)) as pool:
        return sum(pool.map(one, job_ids))


def held(where: Any) -> Decimal:
    with session_scope() as session:
        return Decimal(session.scalar(select(func.sum(Job.credits_reserved)).where(where)) or 0)


@pytest.mark.parametrize("round_", range(3))
def test_twenty_concurrent_reservations_against_a_cap_of_ten_calls_hold_exactly_ten(
    tenant: TenantKey, jobs: Jobs, round_: int
) -> None:
    set_cap(tenant, Decimal("0.37"))
    job_ids = [jobs.add(tenant.id, status=JobStatus.RUNNING, reason=None) for _ in range(20)]

    assert race_to_reserve(tenant.id, None, job_ids) == 10
    assert held(Job.tenant_id == tenant.id) == Decimal("0.37")


@pytest.mark.parametrize("round_", range(3))
def test_twenty_concurrent_reservations_against_a_batch_budget_of_ten_calls_hold_exactly_ten(
    tenant: TenantKey, jobs: Jobs, round_: int
) -> None:
    with session_scope() as session:
        batch = Batch(tenant_id=tenant.id, source="json", total=20, credit_budget=Decimal("0.37"))
        session.add(batch)
    job_ids = [
        jobs.add(tenant.id, status=JobStatus.RUNNING, reason=None, batch_id=batch.id)
        for _ in range(20)
    ]

    assert race_to_reserve(tenant.id, batch.id, job_ids) == 10
    assert held(Job.batch_id == batch.id) == Decimal("0.37")


# Parked by the cap, not by a pause ----------------------------------------------------------


def test_a_fleet_resume_does_not_wake_jobs_parked_by_the_cap(tenant: TenantKey, jobs: Jobs) -> None:
    capped = jobs.add(tenant.id)
    paused = jobs.add(tenant.id, reason="fleet paused")
    no_reason = jobs.add(tenant.id, reason=None)
    with session_scope() as session:
        by_pause = set(
            session.scalars(select(Job.id).where(Job.tenant_id == tenant.id, parked_by_pause()))
        )
        by_cap = set(
            session.scalars(select(Job.id).where(Job.tenant_id == tenant.id, parked_by_cap()))
        )
    assert by_pause == {paused, no_reason}
    assert by_cap == {capped}


# Waking ------------------------------------------------------------------------------------


def test_nothing_is_woken_while_the_cap_leaves_no_room_for_an_image(
    tenant: TenantKey, jobs: Jobs, published: list[uuid.UUID]
) -> None:
    set_cap(tenant, Decimal("1"))
    spend(tenant, Decimal("0.97"), this_month())  # 0.03 left: less than one image
    job_id = jobs.add(tenant.id)

    assert wake(tenant) == 0
    assert published == [] and jobs.status(job_id)[0] == JobStatus.WAITING


def test_reservations_held_by_unfinished_jobs_count_and_finished_ones_do_not(
    tenant: TenantKey, jobs: Jobs, published: list[uuid.UUID]
) -> None:
    set_cap(tenant, Decimal("1"))
    spend(tenant, Decimal("0.9"), this_month())
    jobs.add(tenant.id, status=JobStatus.RUNNING, reason=None, reserved=PRICE * 2)
    job_id = jobs.add(tenant.id)
    assert wake(tenant) == 0  # 0.9 + 0.074 + 0.037 > 1

    with session_scope() as session:  # the call ended: its reservation no longer counts
        session.execute(
            update(Job)
            .where(Job.tenant_id == tenant.id, Job.status == JobStatus.RUNNING)
            .values(status=JobStatus.FAILED)
        )
    assert wake(tenant) == 1
    assert published == [job_id]


def test_raising_the_cap_wakes_the_parked_jobs_at_once_as_queued(
    tenant: TenantKey, jobs: Jobs, published: list[uuid.UUID]
) -> None:
    set_cap(tenant, Decimal("1"))
    spend(tenant, Decimal("1"), this_month())
    parked = [jobs.add(tenant.id) for _ in range(3)]
    assert wake(tenant) == 0

    with session_scope() as session:
        set_monthly_cap(session, tenant.name, Decimal("2"))
        assert published == parked  # sent once this commits
    for job_id in parked:
        assert jobs.status(job_id) == (JobStatus.QUEUED, None)


def test_removing_the_cap_wakes_every_parked_job(
    tenant: TenantKey, jobs: Jobs, published: list[uuid.UUID]
) -> None:
    set_cap(tenant, Decimal("0.037"))
    spend(tenant, Decimal("0.037"), this_month())
    parked = [jobs.add(tenant.id, images=12) for _ in range(3)]

    with session_scope() as session:
        set_monthly_cap(session, tenant.name, None)
    assert sorted(published) == sorted(parked)
    with session_scope() as session:
        assert session.get(Tenant, tenant.id).monthly_credit_cap is None  # type: ignore[union-attr]


def test_when_the_month_turns_the_parked_jobs_go_on(
    tenant: TenantKey, jobs: Jobs, published: list[uuid.UUID]
) -> None:
    set_cap(tenant, Decimal("1"))
    spend(tenant, Decimal("1"), last_month())  # the whole cap, but last month
    parked = [jobs.add(tenant.id) for _ in range(2)]

    assert wake() == 2  # every tenant's, as the sweeper asks
    assert sorted(published) == sorted(parked)


def test_only_the_jobs_that_fit_are_woken_by_priority_then_age(
    tenant: TenantKey, jobs: Jobs, published: list[uuid.UUID]
) -> None:
    # Room for two images: waking more would only have the worker park them again.
    set_cap(tenant, Decimal("1"))
    spend(tenant, Decimal("1") - 2 * PRICE, this_month())
    oldest = jobs.add(tenant.id)
    too_big = jobs.add(tenant.id, images=3, priority=9)
    urgent = jobs.add(tenant.id, priority=8)
    last = jobs.add(tenant.id)

    assert wake(tenant) == 2
    assert published == [urgent, oldest]
    assert jobs.status(too_big)[0] == jobs.status(last)[0] == JobStatus.WAITING


def test_a_job_cancelled_meanwhile_is_not_woken(
    tenant: TenantKey, jobs: Jobs, published: list[uuid.UUID]
) -> None:
    job_id = jobs.add(tenant.id, status=JobStatus.CANCELLED)
    set_cap(tenant, None)
    assert wake(tenant) == 0 and published == []
    assert jobs.status(job_id)[0] == JobStatus.CANCELLED


def test_an_unknown_tenant_is_not_found(database: str) -> None:
    with session_scope() as session, pytest.raises(NotFound, match="no tenant named"):
        set_monthly_cap(session, f"nobody-{uuid.uuid4().hex[:8]}", Decimal(1))


# The sweeper -------------------------------------------------------------------------------


def test_the_sweeper_wakes_capped_jobs_once_the_month_turned(
    tenant: TenantKey, jobs: Jobs, published: list[uuid.UUID]
) -> None:
    set_cap(tenant, Decimal("1"))
    spend(tenant, Decimal("1"), last_month())
    job_id = jobs.add(tenant.id, run_after=utcnow() - timedelta(minutes=5))

    with session_scope() as session:
        report = sweep(session, SWEEP_AT_ONCE, broker_backlog=0, fleet_paused=False)
    assert report.woken_by_cap >= 1
    assert published.count(job_id) == 1  # woken, not also re-sent as a lost wake-up
    assert jobs.status(job_id) == (JobStatus.QUEUED, None)


def test_the_sweeper_leaves_capped_jobs_alone_while_the_cap_has_no_room(
    tenant: TenantKey, jobs: Jobs, published: list[uuid.UUID]
) -> None:
    set_cap(tenant, Decimal("1"))
    spend(tenant, Decimal("1"), this_month())
    # Stale and due: the lost wake-ups query would re-send it on every sweep.
    job_id = jobs.add(tenant.id, run_after=utcnow() - timedelta(minutes=5))

    for _ in range(2):
        with session_scope() as session:
            sweep(session, SWEEP_AT_ONCE, broker_backlog=0, fleet_paused=False)
    assert job_id not in published
    assert jobs.status(job_id)[0] == JobStatus.WAITING


# `relightq tenants` ------------------------------------------------------------------------


def test_tenants_cap_sets_and_removes_the_cap_and_wakes_parked_jobs(
    tenant: TenantKey, jobs: Jobs, published: list[uuid.UUID]
) -> None:
    set_cap(tenant, Decimal("0.5"))
    spend(tenant, Decimal("0.5"), this_month())
    job_id = jobs.add(tenant.id)

    result = runner.invoke(cli, ["tenants", "cap", tenant.name, "12.5"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert f"{tenant.name}: monthly cap 12.5 credits a month" in result.output
    assert f"spent in {this_month():%Y-%m} (UTC) 0.5, reserved now 0" in result.output
    assert published == [job_id]

    result = runner.invoke(cli, ["tenants", "cap", tenant.name, "none"])
    assert result.exit_code == 0, result.output
    assert "monthly cap none" in result.output
    with session_scope() as session:
        assert session.get(Tenant, tenant.id).monthly_credit_cap is None  # type: ignore[union-attr]


@pytest.mark.parametrize("amount", ["0", "-3", "1.0000001", "lots", "nan", "inf", ""])
def test_tenants_cap_refuses_a_bad_amount_and_changes_nothing(
    tenant: TenantKey, amount: str
) -> None:
    set_cap(tenant, Decimal("7"))
    # "--": "-3" would otherwise be read as an option.
    result = runner.invoke(cli, ["tenants", "cap", tenant.name, "--", amount], env=WIDE)
    assert result.exit_code == 2
    assert "at most 6 decimal places" in result.output
    with session_scope() as session:
        assert session.get(Tenant, tenant.id).monthly_credit_cap == Decimal("7")  # type: ignore[union-attr]


def test_tenants_cap_names_an_unknown_tenant(database: str) -> None:
    result = runner.invoke(cli, ["tenants", "cap", "no-such-tenant-here", "10"])
    assert result.exit_code == 1
    assert "no tenant named 'no-such-tenant-here'" in result.output


def test_tenants_list_shows_cap_spend_and_reservations(
    make_tenant: Callable[[], TenantKey], operator: TenantKey, jobs: Jobs
) -> None:
    capped, free = make_tenant(), make_tenant()
    set_cap(capped, Decimal("250"))
    spend(capped, Decimal("12.321"), this_month())
    spend(capped, Decimal("99"), last_month())  # another month: not shown
    jobs.add(capped.id, status=JobStatus.RUNNING, reason=None, reserved=PRICE * 2)
    jobs.add(capped.id, status=JobStatus.SUCCEEDED, reason=None, reserved=PRICE)  # ended

    result = runner.invoke(cli, ["tenants", "list"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert f"spent {this_month():%Y-%m}" in result.output
    rows = {cells[0]: cells[1:] for cells in table_rows(result.output)}
    assert rows[capped.name] == ["no", "250", "12.321", "0.074"]
    assert rows[free.name] == ["no", "none", "0", "0"]
    assert rows[operator.name][0] == "yes"


# GET /v1/throttle --------------------------------------------------------------------------


def test_the_throttle_shows_the_caller_its_own_cap_spend_and_reservations(
    api: httpx.Client, tenant: TenantKey, jobs: Jobs
) -> None:
    free = api.get("/v1/throttle").json()
    assert free["tenant_credits"] == {
        "monthly_cap": None,
        "spent_this_month": 0,
        "reserved": 0,
        "month": f"{this_month():%Y-%m}",
    }
    assert free["state"] in ("running", "paused") and "limits" in free  # the fleet as before

    set_cap(tenant, Decimal("10.5"))
    spend(tenant, Decimal("0.333"), this_month())
    spend(tenant, Decimal("4"), last_month())
    jobs.add(tenant.id, status=JobStatus.RUNNING, reason=None, reserved=PRICE * 2)
    response = api.get("/v1/throttle")
    assert response.json()["tenant_credits"] == {
        "monthly_cap": 10.5,
        "spent_this_month": 0.333,
        "reserved": 0.074,
        "month": f"{this_month():%Y-%m}",
    }
    assert '"spent_this_month":0.333,' in response.text  # exact text, no float drift
