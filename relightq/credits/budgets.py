"""Budgets that hold exactly: a call's price is reserved before the call, never after.

A batch's ``credit_budget`` and a tenant's ``monthly_credit_cap`` are limits on what is
*spent or promised*: before its call a job reserves ``number_of_images × price`` on its
own row (``jobs.credits_reserved``), checked under a row lock against the credits already
used plus every reservation still held. Success settles the reservation into
``credits_used`` (the images returned, never more than reserved); any other end releases
it. So the credits spent never exceed the limit, whatever the window, the concurrency or
the number of workers: overshoot 0.

A reservation lives on the job row, not in a worker's memory: a worker killed mid-call
leaves it held (the call may still be paid) until the job's next run settles or releases
it. Only jobs not yet final count, so a reservation can never leak past its job's end.

Locks are taken in one order everywhere: the job row, then the batch row, then the
tenant's month row (as a worker recording a success does), so no two transactions wait
on each other in a cycle.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import cache

from sqlalchemy import (
    ColumnElement,
    Connection,
    Executable,
    ScalarSelect,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from relightq.batches.models import Batch
from relightq.credits.amounts import ZERO, as_text
from relightq.db import table_of, typed_param, utcnow
from relightq.jobs.models import CAP_REACHED, FINAL_STATUSES, Job
from relightq.tenants.models import Tenant, TenantCreditMonth

BUDGET_SPENT = "batch credit budget spent"


def month_of(moment: datetime) -> date:
    """The calendar month (UTC) a moment falls in, as its first day."""
    return moment.date().replace(day=1)


@dataclass(frozen=True)
class Refusal:
    """Why a call may not be made now: the batch's budget or the tenant's cap."""

    reason: str
    cap: bool  # the tenant's monthly cap (else the batch's budget)


def holding_reservation() -> ColumnElement[bool]:
    """Jobs whose reservation counts against a limit: held (> 0, a partial index keeps
    them few) by a job not yet final, so a reservation never outlives its job."""
    return (Job.credits_reserved > 0) & Job.status.not_in(FINAL_STATUSES)


def _held(where: ColumnElement[bool], job_id: uuid.UUID) -> ScalarSelect[Decimal]:
    """The credits other jobs matching ``where`` hold reserved."""
    return (
        select(func.coalesce(func.sum(Job.credits_reserved), 0))
        .where(where, holding_reservation(), Job.id != job_id)
        .scalar_subquery()
    )


def reserved_in_batch(session: Session, batch_id: uuid.UUID) -> tuple[Decimal, int]:
    """The credits the batch's unfinished items hold reserved now, and how many hold some."""
    held, holders = session.execute(
        select(func.coalesce(func.sum(Job.credits_reserved), 0), func.count()).where(
            Job.batch_id == batch_id, holding_reservation()
        )
    ).one()
    return (held if held is not None else ZERO), int(holders)


@dataclass(frozen=True)
class Limits:
    """What may stop a job's call, read in one query just before it."""

    monthly_cap: Decimal | None
    budget: Decimal | None
    batch_cancelled: bool


def limits(
    session: Session | Connection, tenant_id: uuid.UUID, batch_id: uuid.UUID | None
) -> Limits:
    """The tenant's monthly cap and the job's batch's budget and cancellation."""
    row = session.execute(_LIMITS, {"tenant_id": tenant_id, "batch_id": batch_id}).one()
    return Limits(row.monthly_credit_cap, row.credit_budget, row.cancelled_at is not None)


_TENANTS, _BATCHES = table_of(Tenant), table_of(Batch)
# Built once: a batch item reads it before every call.
_LIMITS = (
    select(_TENANTS.c.monthly_credit_cap, _BATCHES.c.credit_budget, _BATCHES.c.cancelled_at)
    .select_from(_TENANTS)
    .outerjoin(_BATCHES, _BATCHES.c.id == typed_param("batch_id", _BATCHES.c.id))
    .where(_TENANTS.c.id == typed_param("tenant_id", _TENANTS.c.id))
)


def reserve(
    session: Session,
    mark_reserved: ColumnElement[bool],
    job_id: uuid.UUID,
    tenant_id: uuid.UUID,
    batch_id: uuid.UUID | None,
    amount: Decimal,
    known: Limits | None = None,
) -> Refusal | None:
    """Reserve ``amount`` for the job's call against its batch budget and its tenant's
    monthly cap; None when held (or when neither limit applies: nothing to hold).

    ``mark_reserved`` selects the job's row while its caller still holds the lease;
    ``known`` are the limits if the caller read them already. The caller commits the
    transaction, or rolls it back on a refusal.
    """
    known = known or limits(session, tenant_id, batch_id)
    budget, cap = known.budget, known.monthly_cap
    if budget is None and cap is None:
        return None
    # The job's own row first (see the module docstring on lock order).
    session.execute(update(table_of(Job)).where(mark_reserved).values(credits_reserved=amount))
    if budget is not None:
        # Lock first, then sum in a statement of its own: under READ COMMITTED each
        # statement sees what committed before it began, so the sum sees every
        # reservation committed by whoever held the lock before us.
        used = session.scalar(
            select(Batch.credits_used).where(Batch.id == batch_id).with_for_update()
        )
        held = session.scalar(select(_held(Job.batch_id == batch_id, job_id)))
        if (used or ZERO) + (held or ZERO) + amount > budget:
            return Refusal(BUDGET_SPENT, cap=False)
    if cap is not None:
        month = month_of(utcnow())
        used = _lock_month(session, tenant_id, month)
        held = session.scalar(select(_held(Job.tenant_id == tenant_id, job_id)))
        if used + (held or ZERO) + amount > cap:
            return Refusal(
                f"{CAP_REACHED} ({as_text(used)} of {as_text(cap)} credits used in "
                f"{month:%Y-%m}, {as_text(held or ZERO)} reserved)",
                cap=True,
            )
    return None


def _insert(session: Session) -> type[postgresql.Insert] | type[sqlite.Insert]:
    # ON CONFLICT is dialect SQL: PostgreSQL in production, SQLite in the demo.
    return postgresql.Insert if session.get_bind().dialect.name == "postgresql" else sqlite.Insert


def _lock_month(session: Session, tenant_id: uuid.UUID, month: date) -> Decimal:
    """The tenant's spend this month, its ledger row locked until commit."""
    insert = _insert(session)(TenantCreditMonth).values(
        tenant_id=tenant_id, month=month, credits_used=ZERO
    )
    session.execute(insert.on_conflict_do_nothing())
    used = session.scalar(
        select(TenantCreditMonth.credits_used)
        .where(TenantCreditMonth.tenant_id == tenant_id, TenantCreditMonth.month == month)
        .with_for_update()
    )
    return used if used is not None else ZERO


def add_to_month(session: Session, tenant_id: uuid.UUID, credits: Decimal, when: datetime) -> None:
    """Count credits a job spent against its tenant's month (one upsert)."""
    if not credits:
        return
    session.execute(
        _month_upsert(session.get_bind().dialect.name),
        {"tenant_id": tenant_id, "month": month_of(when), "credits_used": credits},
    )


@cache
def _month_upsert(dialect: str) -> Executable:
    """The upsert adding to a tenant's month, built once per dialect: every success runs it."""
    months = table_of(TenantCreditMonth)
    insert = (postgresql.Insert if dialect == "postgresql" else sqlite.Insert)(months)
    return insert.on_conflict_do_update(
        index_elements=["tenant_id", "month"],
        set_={"credits_used": months.c.credits_used + insert.excluded.credits_used},
    )


def spent_this_month(session: Session, tenant_id: uuid.UUID) -> Decimal:
    """What the tenant spent in the current calendar month (UTC)."""
    used = session.scalar(
        select(TenantCreditMonth.credits_used).where(
            TenantCreditMonth.tenant_id == tenant_id,
            TenantCreditMonth.month == month_of(utcnow()),
        )
    )
    return used if used is not None else ZERO
