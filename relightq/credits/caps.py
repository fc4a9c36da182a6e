"""The operator's side of a tenant's monthly credit cap: setting it, and waking the jobs it
parked.

A worker that finds the cap reached parks its job as ``waiting`` with a reason starting
with :data:`~relightq.jobs.models.CAP_REACHED` (relightq.credits.budgets.reserve); such a
job never fails and no fleet resume wakes it. :func:`wake_capped` does, once the tenant
has room again: at once when an operator raises or removes the cap
(:func:`set_monthly_cap`), or at the next sweep after the month turns (UTC).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from relightq.credits.amounts import ZERO, PositiveCredits
from relightq.credits.budgets import holding_reservation, month_of, spent_this_month
from relightq.db import utcnow
from relightq.errors import NotFound
from relightq.jobs.models import Job, JobStatus, parked_by_cap
from relightq.jobs.service import publish_job
from relightq.settings import get_settings
from relightq.tenants import known_keys
from relightq.tenants.models import Tenant, TenantCreditMonth

# Jobs woken per tenant and call: the sweeper comes back for the rest.
MAX_WOKEN_PER_TENANT = 10_000
_POSITIVE_CREDITS: TypeAdapter[Decimal] = TypeAdapter(PositiveCredits)


@dataclass(frozen=True)
class TenantCredits:
    """A tenant's month as the cap sees it."""

    month: date  # its first day (UTC)
    monthly_cap: Decimal | None
    spent_this_month: Decimal
    reserved: Decimal  # held by its unfinished jobs for calls under way

    def room(self) -> Decimal | None:
        """What may still be reserved this month; None without a cap."""
        if self.monthly_cap is None:
            return None
        return self.monthly_cap - self.spent_this_month - self.reserved


def parse_cap(text: str) -> Decimal | None:
    """A cap as an operator types it: a positive amount of at most six decimal places, or
    ``none`` for no cap. ValueError says what is wrong."""
    if text.strip().lower() == "none":
        return None
    try:
        return _POSITIVE_CREDITS.validate_python(text.strip())
    except ValidationError:
        raise ValueError(
            f"{text!r} is not a credit amount: a positive number with at most 6 decimal "
            "places (e.g. 250 or 12.5), or 'none' for no cap"
        ) from None


def reserved_now(session: Session, tenant_id: uuid.UUID) -> Decimal:
    """The credits the tenant's unfinished jobs hold reserved (as budgets.reserve counts)."""
    return _reserved_by_tenant(session, [tenant_id]).get(tenant_id, ZERO)


def _reserved_by_tenant(
    session: Session, tenant_ids: list[uuid.UUID] | None = None
) -> dict[uuid.UUID, Decimal]:
    query = (
        select(Job.tenant_id, func.sum(Job.credits_reserved))
        .where(holding_reservation())
        .group_by(Job.tenant_id)
    )
    if tenant_ids is not None:
        query = query.where(Job.tenant_id.in_(tenant_ids))
    return {tenant_id: Decimal(held) for tenant_id, held in session.execute(query)}


def tenant_credits(session: Session, tenant: Tenant) -> TenantCredits:
    """The tenant's cap, what it spent this month and what its jobs hold reserved now."""
    return TenantCredits(
        month=month_of(utcnow()),
        monthly_cap=tenant.monthly_credit_cap,
        spent_this_month=spent_this_month(session, tenant.id),
        reserved=reserved_now(session, tenant.id),
    )


@dataclass(frozen=True)
class TenantRow:
    """One line of `relightq tenants list`."""

    name: str
    is_operator: bool
    credits: TenantCredits


def list_tenants(session: Session) -> list[TenantRow]:
    """Every tenant by name, with its cap, this month's spend and its reservations."""
    month = month_of(utcnow())
    rows = session.execute(
        select(Tenant, TenantCreditMonth.credits_used)
        .outerjoin(
            TenantCreditMonth,
            (TenantCreditMonth.tenant_id == Tenant.id) & (TenantCreditMonth.month == month),
        )
        .order_by(Tenant.name)
    ).all()
    reserved = _reserved_by_tenant(session)
    return [
        TenantRow(
            tenant.name,
            tenant.is_operator,
            TenantCredits(
                month=month,
                monthly_cap=tenant.monthly_credit_cap,
                spent_this_month=spent if spent is not None else ZERO,
                reserved=reserved.get(tenant.id, ZERO),
            ),
        )
        for tenant, spent in rows
    ]


def set_monthly_cap(session: Session, tenant_name: str, cap: Decimal | None) -> Tenant:
    """Set (or with None remove) the tenant's monthly cap and wake at once the jobs it
    parked that now fit. Lowering the cap stops nothing already reserved: calls under way
    finish, the next ones are refused."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        raise NotFound("tenant", f"no tenant named {tenant_name!r}")
    tenant.monthly_credit_cap = cap
    known_keys.changed_on_commit(session)  # API processes keep tenants' rows
    session.flush()
    wake_capped(session, tenant.id)
    return tenant


def wake_capped(session: Session, tenant_id: uuid.UUID | None = None) -> int:
    """Publish the jobs parked by their tenant's monthly cap (all tenants', or only
    ``tenant_id``'s) that its cap now has room for, marking them ``queued``; returns how
    many. Messages go after ``session`` commits.

    Room is the cap less this month's spend and the reservations held now, as
    budgets.reserve counts them; a job needs ``number_of_images × price``. Jobs are taken
    by priority, then age, while they fit: waking more would only have them parked again
    by the worker, sweep after sweep, until the month turns. The worker's reservation
    stays the only guard: jobs woken by two sweeps at once are still never overspent.
    """
    parked_tenants = select(Job.tenant_id).where(parked_by_cap()).distinct()
    if tenant_id is not None:
        parked_tenants = parked_tenants.where(Job.tenant_id == tenant_id)
    tenant_ids = list(session.scalars(parked_tenants))
    if not tenant_ids:
        return 0
    price = get_settings().segmind_credits_per_image
    caps = {
        tenant: cap
        for tenant, cap in session.execute(
            select(Tenant.id, Tenant.monthly_credit_cap).where(Tenant.id.in_(tenant_ids))
        )
    }
    month = month_of(utcnow())
    spent = {
        tenant: used
        for tenant, used in session.execute(
            select(TenantCreditMonth.tenant_id, TenantCreditMonth.credits_used).where(
                TenantCreditMonth.tenant_id.in_(tenant_ids), TenantCreditMonth.month == month
            )
        )
    }
    reserved = _reserved_by_tenant(session, tenant_ids)
    woken = 0
    for parked_tenant in tenant_ids:
        room = TenantCredits(
            month,
            caps.get(parked_tenant),
            spent.get(parked_tenant, ZERO),
            reserved.get(parked_tenant, ZERO),
        ).room()
        if room is not None and room < price:  # not even one image: nothing to wake
            continue
        woken += _wake_tenant(session, parked_tenant, room, price)
    return woken


def _wake_tenant(
    session: Session, tenant_id: uuid.UUID, room: Decimal | None, price: Decimal
) -> int:
    images = func.coalesce(Job.params["number_of_images"].as_integer(), 1)
    parked = session.execute(
        select(Job.id, Job.priority, images)
        .where(Job.tenant_id == tenant_id, parked_by_cap())
        .order_by(Job.priority.desc(), Job.created_at)
        .limit(MAX_WOKEN_PER_TENANT)
    )
    chosen: dict[uuid.UUID, int] = {}  # job -> priority, by priority then age
    for job_id, priority, number_of_images in parked:
        cost = price * number_of_images
        if room is not None:
            if cost > room:
                continue  # a smaller job further on may still fit
            room -= cost
        chosen[job_id] = priority
    if not chosen:
        return 0
    # Still parked: a job cancelled (or woken by another sweep) meanwhile is left alone.
    woken = set(
        session.scalars(
            update(Job)
            .where(Job.id.in_(chosen), parked_by_cap())
            .values(status=JobStatus.QUEUED, waiting_reason=None, updated_at=utcnow())
            .returning(Job.id)
        )
    )
    for job_id, priority in chosen.items():
        if job_id in woken:
            publish_job(session, job_id, priority)
    return len(woken)
