"""Releasing a batch's items to the broker a window at a time, and noticing when it is done.

A batch's items are stored as held jobs (``dispatched_at`` NULL) and no message is sent
for them. Each batch may have at most ``RELIGHTQ_BATCH_WINDOW`` items sent and not yet
final; whenever one finishes, the next is released in the same transaction. So a
100k-item batch keeps the broker short, and a single job or a small batch submitted
after it waits behind at most one window per busy batch, never behind 100k messages.
Pausing the fleet parks the window's items; the held ones are never touched, so a pause
costs no messages and no attempts however big the batch.
"""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import Integer, bindparam, exists, func, select, text, update
from sqlalchemy.orm import Session

from relightq.batches.models import Batch
from relightq.credits.budgets import reserved_in_batch
from relightq.db import table_of, typed_param, utcnow
from relightq.jobs.models import FINAL_STATUSES, IN_FLIGHT_STATUSES, Job, JobStatus, held_by_batch
from relightq.jobs.service import cancelled_values, publish_job
from relightq.settings import get_settings
from relightq.webhooks.events import emit
from relightq.webhooks.models import EventType

log = logging.getLogger(__name__)

# A batch is unfinished while an item is in one of these (so they can be asked by name).
assert set(JobStatus) == FINAL_STATUSES | set(IN_FLIGHT_STATUSES)

# Held items cancelled per statement: a cancel answers after the first chunk, and the
# rest of a big batch is cancelled a chunk per transaction after the answer.
CANCEL_CHUNK = 20_000


def budget_spent(batch: _Spending) -> bool:
    """True once the batch's budget has no room left for one more image."""
    if batch.credit_budget is None:
        return False
    price = get_settings().segmind_credits_per_image
    return batch.credits_used + price > batch.credit_budget


class _Spending(Protocol):
    """A batch's budget and spend: its row, or the columns of it a query read."""

    @property
    def credit_budget(self) -> Decimal | None: ...
    @property
    def credits_used(self) -> Decimal: ...


_BATCHES = table_of(Batch)
_JOBS = table_of(Job)
_BATCH_ID = typed_param("batch_id", _BATCHES.c.id)

# release() runs in every item's final transaction: its statements are built once (see
# relightq.jobs.runner._CLAIM), the statuses compared one by one (an IN list is
# re-rendered into the SQL at every execution).
_LOCK_BATCH = (
    select(_BATCHES.c.cancelled_at, _BATCHES.c.credit_budget, _BATCHES.c.credits_used)
    .where(_BATCHES.c.id == _BATCH_ID)
    .with_for_update()
)
_IN_FLIGHT = select(func.count()).where(
    _JOBS.c.batch_id == _BATCH_ID,
    _JOBS.c.dispatched_at.is_not(None),
    # The statuses written into the SQL, not bound: PostgreSQL then proves the partial
    # index ix_jobs_batch_in_flight applies even to a prepared statement's generic plan.
    text(f"jobs.status IN ({', '.join(repr(str(status)) for status in IN_FLIGHT_STATUSES)})"),
)
_NEXT_HELD = (
    select(_JOBS.c.id, _JOBS.c.priority)
    .where(_JOBS.c.batch_id == _BATCH_ID, held_by_batch(_JOBS.c))
    .order_by(_JOBS.c.batch_row)
    .limit(bindparam("room", type_=Integer))
    # A cancel or retry holding some of these rows is not waited for: no lock cycle.
    .with_for_update(skip_locked=True)
)
_SEND = (
    update(_JOBS)
    .where(_JOBS.c.id == typed_param("job_id", _JOBS.c.id))
    .values(
        status=JobStatus.QUEUED,
        dispatched_at=typed_param("now", _JOBS.c.dispatched_at),
        updated_at=typed_param("now", _JOBS.c.dispatched_at),
        waiting_reason=None,
    )
)


def release(session: Session, batch_id: uuid.UUID) -> int:
    """Send the broker as many held items as the batch's window has room for.

    The batch row is locked for the transaction, so two workers finishing items of the
    same batch at once cannot both fill the same room.
    """
    batch: Any = session.execute(_LOCK_BATCH, {"batch_id": batch_id}).one_or_none()
    if batch is None or batch.cancelled_at is not None or budget_spent(batch):
        return 0
    in_flight = session.scalar(_IN_FLIGHT, {"batch_id": batch_id}) or 0
    room = get_settings().batch_window_size - in_flight
    if batch.credit_budget is not None:
        # Items the budget cannot pay for would only be claimed and handed back: release
        # no more than the images left fit, counting the calls under way and, at one
        # image each, the items sent that have not reserved yet (every success or
        # failure releases again).
        price = get_settings().segmind_credits_per_image
        held, holders = reserved_in_batch(session, batch_id)
        unreserved = max(in_flight - holders, 0)
        left = batch.credit_budget - batch.credits_used - held - price * unreserved
        room = min(room, int(left // price))
    if room <= 0:
        return 0
    rows = session.execute(_NEXT_HELD, {"batch_id": batch_id, "room": room}).all()
    if not rows:
        return 0
    now = utcnow()
    session.execute(_SEND, [{"job_id": row.id, "now": now} for row in rows])
    for row in rows:
        publish_job(session, row.id, row.priority)
    return len(rows)


def mark_completed(session: Session, batch_id: uuid.UUID) -> bool:
    """Record that the batch has nothing left to run; True when this call recorded it."""
    # The statuses that are not final, named: the index on (batch_id, status) finds them.
    unfinished = exists().where(Job.batch_id == batch_id, Job.status.in_(IN_FLIGHT_STATUSES))
    done = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.completed_at.is_(None), ~unfinished)
        .values(completed_at=utcnow())
    )
    completed = bool(done.rowcount)  # type: ignore[attr-defined]
    if completed:
        log.info("batch %s completed", batch_id)
        _emit_completed(session, batch_id)
    return completed


def status_counts(session: Session, batch_id: uuid.UUID) -> dict[str, int]:
    """How many of the batch's items are in each job status (absent: none)."""
    rows = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    )
    return {str(status): count for status, count in rows}


def _emit_completed(session: Session, batch_id: uuid.UUID) -> None:
    batch = session.get(Batch, batch_id, populate_existing=True)
    assert batch is not None
    data = {
        "id": str(batch.id),
        "name": batch.name,
        "total": batch.total,
        "rejected": batch.rejected,
        "counts": status_counts(session, batch_id),
        "credits_used": float(batch.credits_used),
        "reused": batch.reused,
        "credits_saved": float(batch.credits_saved),
        "cancelled": batch.cancelled_at is not None,
        "metadata": batch.metadata_,
        "results_url": f"/v1/batches/{batch.id}/results",
        "errors_url": f"/v1/batches/{batch.id}/errors",
    }
    emit(session, batch.tenant_id, EventType.BATCH_COMPLETED, data, batch.callback_url)


def settle(session: Session, batch_id: uuid.UUID) -> None:
    """After an item changed state: release what the window allows, or mark the batch done."""
    if not release(session, batch_id):
        mark_completed(session, batch_id)


def reopen(session: Session, batch_id: uuid.UUID) -> None:
    """Items went back to the batch (a retry): it is not done, and may release them."""
    session.execute(
        update(Batch).where(Batch.id == batch_id).values(completed_at=None, updated_at=utcnow())
    )
    release(session, batch_id)


def batch_cancelled(session: Session, batch_id: uuid.UUID) -> bool:
    """True when the batch was cancelled: nothing of it runs again."""
    return session.scalar(select(Batch.cancelled_at).where(Batch.id == batch_id)) is not None


def add_credits(session: Session, batch_id: uuid.UUID, credits: Decimal) -> None:
    """Count an item's credits against its batch (one atomic increment)."""
    session.execute(_ADD_CREDITS, {"batch_id": batch_id, "credits": credits, "now": utcnow()})


# Built once: every paid item of a batch runs it.
_ADD_CREDITS = (
    update(_BATCHES)
    .where(_BATCHES.c.id == _BATCH_ID)
    .values(
        credits_used=_BATCHES.c.credits_used + typed_param("credits", _BATCHES.c.credits_used),
        updated_at=typed_param("now", _BATCHES.c.updated_at),
    )
)


def cancel_held(session: Session, batch_id: uuid.UUID, after: int, limit: int) -> int | None:
    """Cancel the next ``limit`` held items of a batch by row, after row ``after``; the
    last row cancelled, or None when none was left. Rows another transaction holds are
    skipped (a release, or a second canceller): whoever holds them settles them."""
    chunk = (
        select(Job.id)
        .where(Job.batch_id == batch_id, held_by_batch(), Job.batch_row > after)
        .order_by(Job.batch_row)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(chunk))
        .values(cancelled_values(utcnow()))
        .returning(Job.batch_row)
        .execution_options(synchronize_session=False)
    ).scalars()
    return max((row or 0 for row in rows), default=None)


def settle_open_batches(session: Session) -> int:
    """The sweeper's repair: settle every batch not yet completed; returns how many.

    A cancelled batch whose held items were still being cancelled (after the answer, a
    chunk at a time) when its canceller stopped has the next chunk cancelled here."""
    open_batches = session.execute(
        select(Batch.id, Batch.cancelled_at).where(Batch.completed_at.is_(None))
    ).all()
    for batch_id, cancelled_at in open_batches:
        if cancelled_at is not None:
            cancel_held(session, batch_id, 0, CANCEL_CHUNK)
        settle(session, batch_id)
    return len(open_batches)
