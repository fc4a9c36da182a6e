"""Schedules: CRUD, the next run time, and the tick that fires what is due exactly once.

The scheduler (``relightq beat``) only sends "look now" every RELIGHTQ_SCHEDULE_TICK_SECONDS;
what is due is decided in PostgreSQL: due schedules are locked with FOR UPDATE SKIP LOCKED
and each cron time is a unique (schedule, scheduled_for) run row, so two beats or two
workers ticking at once still fire each run once. ``now`` is a parameter throughout, so
tests drive the clock instead of sleeping.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim
from sqlalchemy import delete, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from relightq.batches.models import Batch
from relightq.batches.schemas import BatchSettings
from relightq.batches.service import batch_views, create_batch
from relightq.batches.sources import RawItem, json_items, prefix_items
from relightq.db import utcnow
from relightq.errors import FieldProblem, InvalidInput, NotFound, RelightqError, RunExists
from relightq.jobs.models import Job, JobStatus
from relightq.jobs.service import foreign_subject_problem, retry_job
from relightq.pagination import newest_first, page
from relightq.schedules.models import (
    Overlap,
    RunStatus,
    Schedule,
    ScheduleObject,
    ScheduleRun,
)
from relightq.schedules.schemas import (
    ALLOWED,
    ReprocessPrefix,
    RerunBatch,
    RetryFailed,
    RunBatch,
    RunOut,
    ScheduleCreate,
    ScheduleOut,
    ScheduleUpdate,
)
from relightq.settings import Settings
from relightq.storage import Storage, StorageError, StoredObject, parse_s3_prefix

log = logging.getLogger(__name__)

ACTION_CHUNK = 2000
# A prefix object whose job ended so was not relit: the next run offers it again.
UNSEEN_STATUSES = (JobStatus.FAILED, JobStatus.CANCELLED)
MAX_RETRIED_PER_RUN = 10_000


def next_time(cron: str, timezone: str, after: datetime) -> datetime:
    """The first cron time strictly after ``after``, in UTC (DST-correct in ``timezone``)."""
    local = after.astimezone(ZoneInfo(timezone))
    # In a DST fall-back hour cronsim may answer the repeated wall time's first (earlier)
    # instant; step on until the answer really is later.
    for candidate in CronSim(cron, local):
        if candidate.astimezone(UTC) > after:
            return candidate.astimezone(UTC)
    raise ValueError(f"cron {cron!r} has no time after {after.isoformat()}")


# Reading --------------------------------------------------------------------------------


def get_schedule(session: Session, tenant_id: uuid.UUID, schedule_id: uuid.UUID) -> Schedule:
    """A tenant's schedule; anyone else's is a 404."""
    schedule = session.scalar(
        select(Schedule).where(Schedule.id == schedule_id, Schedule.tenant_id == tenant_id)
    )
    if schedule is None:
        raise NotFound("schedule")
    return schedule


def list_schedules(session: Session, tenant_id: uuid.UUID) -> list[Schedule]:
    """The tenant's schedules, oldest first."""
    return list(
        session.scalars(
            select(Schedule).where(Schedule.tenant_id == tenant_id).order_by(Schedule.created_at)
        )
    )


def run_view(session: Session, run: ScheduleRun) -> RunOut:
    """A run with the batches it created."""
    batches = list(
        session.scalars(
            select(Batch).where(Batch.schedule_run_id == run.id).order_by(Batch.created_at)
        )
    )
    views = batch_views(session, batches)
    # Read-only: a running run whose batches are all completed shows how it ended; the
    # tick records that (reads never write).
    status = RunStatus(run.status)
    if status == RunStatus.RUNNING:
        status = _done_status(batches) or status
    return RunOut(
        id=run.id,
        schedule_id=run.schedule_id,
        scheduled_for=run.scheduled_for,
        manual=run.manual,
        status=status,
        error=run.error,
        summary=run.summary,
        started_at=run.started_at,
        created_at=run.created_at,
        batches=[
            RunBatch(id=v.id, status=v.status.value, total=v.total, progress=v.progress)
            for v in views
        ],
    )


def schedule_view(session: Session, schedule: Schedule) -> ScheduleOut:
    """A schedule with its latest run."""
    last = session.scalar(
        select(ScheduleRun)
        .where(ScheduleRun.schedule_id == schedule.id)
        .order_by(ScheduleRun.created_at.desc())
        .limit(1)
    )
    return ScheduleOut(
        id=schedule.id,
        name=schedule.name,
        cron=schedule.cron,
        timezone=schedule.timezone,
        action=schedule.action,
        overlap=schedule.overlap,
        enabled=schedule.enabled,
        next_run_at=schedule.next_run_at,
        last_run_at=schedule.last_run_at,
        created_at=schedule.created_at,
        last_run=run_view(session, last) if last else None,
    )


def list_runs(
    session: Session, tenant_id: uuid.UUID, schedule_id: uuid.UUID, cursor: str | None, limit: int
) -> tuple[list[RunOut], str | None]:
    """A page of a schedule's run history, newest first."""
    get_schedule(session, tenant_id, schedule_id)
    query = newest_first(
        select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id),
        ScheduleRun,
        cursor,
        limit,
    )
    runs, next_cursor = page(list(session.scalars(query)), limit)
    return [run_view(session, run) for run in runs], next_cursor


# Writing --------------------------------------------------------------------------------


def _check_action(
    session: Session,
    tenant_id: uuid.UUID,
    action: RerunBatch | ReprocessPrefix | RetryFailed,
    storage: Storage,
) -> None:
    problems: list[FieldProblem] = []
    if isinstance(action, RerunBatch | RetryFailed) and action.batch_id is not None:
        owned = session.scalar(
            select(Batch.id).where(Batch.id == action.batch_id, Batch.tenant_id == tenant_id)
        )
        if owned is None:
            problems.append(FieldProblem("action.batch_id", "is not a batch of yours"))
    if isinstance(action, ReprocessPrefix):
        foreign = foreign_subject_problem(session, tenant_id, action.source, storage.bucket)
        if foreign:
            problems.append(FieldProblem("action.source", foreign.message, ALLOWED["source"]))
        else:
            try:
                storage.check_bucket(parse_s3_prefix(action.source)[0])
            except StorageError as exc:
                problems.append(FieldProblem("action.source", f"is not reachable ({exc})"))
    if problems:
        raise InvalidInput(problems)


def create_schedule(
    session: Session, tenant_id: uuid.UUID, spec: ScheduleCreate, storage: Storage
) -> Schedule:
    """Store a schedule and its first run time."""
    _check_action(session, tenant_id, spec.action, storage)
    schedule = Schedule(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name=spec.name,
        cron=spec.cron,
        timezone=spec.timezone,
        action=spec.action.model_dump(mode="json"),
        overlap=spec.overlap,
        enabled=spec.enabled,
        next_run_at=next_time(spec.cron, spec.timezone, utcnow()) if spec.enabled else None,
    )
    session.add(schedule)
    session.flush()
    return schedule


def update_schedule(
    session: Session,
    tenant_id: uuid.UUID,
    schedule_id: uuid.UUID,
    spec: ScheduleUpdate,
    storage: Storage,
) -> Schedule:
    """Change a schedule; a new cron or time zone moves the next run time."""
    schedule = get_schedule(session, tenant_id, schedule_id)
    if spec.action is not None:
        _check_action(session, tenant_id, spec.action, storage)
        action = spec.action.model_dump(mode="json")
        if action.get("source") != schedule.action.get("source"):
            # What was seen was under the old prefix: under a new one every object is new.
            # New parameters alone do not resend what was already relit
            # (docs/concepts/schedules.md).
            session.execute(delete(ScheduleObject).where(ScheduleObject.schedule_id == schedule.id))
        schedule.action = action
    for name in ("name", "cron", "timezone", "overlap"):
        value = getattr(spec, name)
        if value is not None:
            setattr(schedule, name, value)
    if schedule.enabled:
        schedule.next_run_at = next_time(schedule.cron, schedule.timezone, utcnow())
    session.flush()
    return schedule


def pause(session: Session, tenant_id: uuid.UUID, schedule_id: uuid.UUID) -> Schedule:
    """Stop firing until resumed (a queued run still starts when its turn comes)."""
    schedule = get_schedule(session, tenant_id, schedule_id)
    schedule.enabled = False
    schedule.next_run_at = None
    session.flush()
    return schedule


def resume(
    session: Session, tenant_id: uuid.UUID, schedule_id: uuid.UUID, now: datetime | None = None
) -> Schedule:
    """Fire again from the next cron time after now (times missed while paused are not
    made up)."""
    schedule = get_schedule(session, tenant_id, schedule_id)
    schedule.enabled = True
    schedule.next_run_at = next_time(schedule.cron, schedule.timezone, now or utcnow())
    session.flush()
    return schedule


def run_now(
    session: Session,
    tenant_id: uuid.UUID,
    schedule_id: uuid.UUID,
    storage: Storage,
    settings: Settings,
    now: datetime | None = None,
) -> ScheduleRun:
    """Fire once by hand, now; the overlap policy applies as to a cron time."""
    schedule = get_schedule(session, tenant_id, schedule_id)
    # Serialise with a beat's tick and with other manual runs, as tick() does: the overlap
    # check and the new run must see each other's runs.
    session.refresh(schedule, with_for_update=True)
    now = now or utcnow()
    run = fire(session, schedule, now, storage, settings, manual=True, now=now)
    if run is None:
        raise RunExists("a run was started this very moment; try again")
    return run


# Firing ---------------------------------------------------------------------------------


def _done_status(batches: list[Batch]) -> RunStatus | None:
    """How a running run ended, once every batch it created is completed (None before):
    cancelled if one of them was cancelled, else succeeded."""
    if any(b.completed_at is None for b in batches):
        return None
    if any(b.cancelled_at is not None for b in batches):
        return RunStatus.CANCELLED
    return RunStatus.SUCCEEDED


def _refresh(session: Session, run: ScheduleRun) -> RunStatus:
    """Record a running run's end once every batch it created is completed."""
    if run.status == RunStatus.RUNNING:
        batches = list(session.scalars(select(Batch).where(Batch.schedule_run_id == run.id)))
        done = _done_status(batches)
        if done is not None:
            run.status = done
            session.flush()
    return RunStatus(run.status)


def _busy(
    session: Session, schedule: Schedule, besides: uuid.UUID | None = None
) -> tuple[bool, bool]:
    """(another run is still going, another run is queued)."""
    going = queued = False
    query = select(ScheduleRun).where(
        ScheduleRun.schedule_id == schedule.id,
        ScheduleRun.status.in_([RunStatus.RUNNING, RunStatus.QUEUED]),
    )
    if besides is not None:
        query = query.where(ScheduleRun.id != besides)
    for run in session.scalars(query):
        status = _refresh(session, run)
        going = going or status == RunStatus.RUNNING
        queued = queued or status == RunStatus.QUEUED
    return going, queued


def fire(
    session: Session,
    schedule: Schedule,
    scheduled_for: datetime,
    storage: Storage,
    settings: Settings,
    *,
    manual: bool = False,
    now: datetime | None = None,
) -> ScheduleRun | None:
    """Record the run for ``scheduled_for`` and start it (or skip or queue it); None when
    that time has already fired. ``now`` is the clock the action reads (tests drive it)."""
    run_id = session.scalar(
        insert(ScheduleRun)
        .values(
            id=uuid.uuid4(),
            schedule_id=schedule.id,
            scheduled_for=scheduled_for,
            manual=manual,
            status=RunStatus.QUEUED,
            summary={},
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["schedule_id", "scheduled_for"])
        .returning(ScheduleRun.id)
    )
    if run_id is None:
        return None
    run = session.get(ScheduleRun, run_id)
    assert run is not None
    going, queued = _busy(session, schedule, besides=run.id)
    if going or queued:
        if schedule.overlap == Overlap.QUEUE and not queued:
            log.info("schedule %s: run %s waits for the previous one", schedule.id, run.id)
        else:
            run.status = RunStatus.SKIPPED
            run.error = "a run is already queued" if queued else "the previous run is still going"
        session.flush()
        return run
    execute(session, schedule, run, storage, settings, now)
    return run


def execute(
    session: Session,
    schedule: Schedule,
    run: ScheduleRun,
    storage: Storage,
    settings: Settings,
    now: datetime | None = None,
) -> None:
    """Do the schedule's action for ``run`` as of ``now`` (the retry window ends there); a
    failure is recorded on the run, not raised."""
    now = now or utcnow()
    run.started_at = now
    schedule.last_run_at = now
    savepoint = session.begin_nested()
    try:
        action = schedule.action
        if action["type"] == "rerun_batch":
            summary = _rerun_batch(session, schedule, run, RerunBatch(**action), storage, settings)
        elif action["type"] == "reprocess_prefix":
            summary = _reprocess_prefix(
                session, schedule, run, ReprocessPrefix(**action), storage, settings
            )
        else:
            summary = _retry_failed(session, schedule, RetryFailed(**action), now)
        savepoint.commit()
    except (RelightqError, StorageError) as exc:
        savepoint.rollback()
        run.status = RunStatus.FAILED
        run.error = str(exc)
        if isinstance(exc, RelightqError) and exc.fields:
            run.error += ": " + "; ".join(f"{p.field} {p.message}" for p in exc.fields[:20])
        session.flush()
        log.warning("schedule %s run %s failed: %s", schedule.id, run.id, run.error)
        return
    run.summary = summary
    run.status = RunStatus.RUNNING if summary.get("batch_id") else RunStatus.SUCCEEDED
    session.flush()
    log.info("schedule %s run %s started: %s", schedule.id, run.id, summary)


def _new_batch(
    session: Session,
    schedule: Schedule,
    run: ScheduleRun,
    spec: BatchSettings,
    source: str,
    items: Iterator[RawItem],
    storage: Storage,
    settings: Settings,
) -> Batch:
    batch = create_batch(session, schedule.tenant_id, spec, source, items, storage, settings)
    batch.schedule_run_id = run.id
    batch.metadata_ = {
        **batch.metadata_,
        "schedule": {"id": str(schedule.id), "run_id": str(run.id)},
    }
    session.flush()
    return batch


def _rerun_batch(
    session: Session,
    schedule: Schedule,
    run: ScheduleRun,
    action: RerunBatch,
    storage: Storage,
    settings: Settings,
) -> dict[str, Any]:
    original = session.scalar(
        select(Batch).where(Batch.id == action.batch_id, Batch.tenant_id == schedule.tenant_id)
    )
    if original is None:
        raise NotFound("batch", "the batch to re-run no longer exists")

    def items() -> Iterator[dict[str, Any]]:
        after = -1
        while True:
            jobs = list(
                session.scalars(
                    select(Job)
                    .where(Job.batch_id == original.id, Job.batch_row > after)
                    .order_by(Job.batch_row)
                    .limit(ACTION_CHUNK)
                )
            )
            for job in jobs:
                yield {
                    **job.params,
                    "subject_image": job.subject_image,
                    "external_id": job.external_id,
                    "metadata": job.metadata_,
                    "priority": job.priority,
                    "reuse": job.reuse,
                    **action.overrides,
                }
            if len(jobs) < ACTION_CHUNK:
                return
            after = jobs[-1].batch_row or 0

    spec = BatchSettings(
        name=f"{schedule.name} {run.scheduled_for:%Y-%m-%d %H:%M}Z",
        output_prefix=original.output_prefix,
        key_template=original.key_template,
        credit_budget=original.credit_budget,
        reuse=action.reuse and original.reuse,
        metadata=original.metadata_,
    )
    spec.callback_url = original.callback_url  # checked when the original was created
    batch = _new_batch(
        session, schedule, run, spec, f"rerun:{original.id}", json_items(items()), storage, settings
    )
    return {"batch_id": str(batch.id), "items": batch.total, "rerun_of": str(original.id)}


def _reprocess_prefix(
    session: Session,
    schedule: Schedule,
    run: ScheduleRun,
    action: ReprocessPrefix,
    storage: Storage,
    settings: Settings,
) -> dict[str, Any]:
    # An object counts as seen only while the job it became has not failed or been
    # cancelled: those are offered again, as if never sent.
    seen = dict(
        session.execute(
            select(ScheduleObject.key, ScheduleObject.etag)
            .outerjoin(Job, Job.id == ScheduleObject.job_id)
            .where(
                ScheduleObject.schedule_id == schedule.id,
                or_(Job.id.is_(None), Job.status.not_in(UNSEEN_STATUSES)),
            )
        ).all()
    )
    changed: list[StoredObject] = []
    unchanged = 0

    def new_or_changed(stored: StoredObject) -> bool:
        nonlocal unchanged
        if seen.get(stored.key) == stored.etag:
            unchanged += 1
            return False
        changed.append(stored)
        return True

    # Listed once into memory as keys only (100k keys are a few MB); nothing to send is
    # a succeeded run without a batch.
    items = list(prefix_items(storage, action.source, only=new_or_changed))
    if not items:
        return {"items": 0, "unchanged": unchanged}
    spec = BatchSettings.model_validate(action.model_dump(exclude={"type", "source"}))
    if spec.name is None:
        spec.name = f"{schedule.name} {run.scheduled_for:%Y-%m-%d %H:%M}Z"
    batch = _new_batch(session, schedule, run, spec, action.source, iter(items), storage, settings)
    # Only what became a job is remembered, with that job: a rejected object (a key
    # collision, say) is offered again next run, once the schedule is fixed, not skipped
    # as "unchanged".
    job_of = dict(
        session.execute(select(Job.subject_image, Job.id).where(Job.batch_id == batch.id)).all()
    )
    sent = [o for o in changed if o.uri in job_of]
    now = utcnow()
    for start in range(0, len(sent), ACTION_CHUNK):
        rows = [
            {
                "schedule_id": schedule.id,
                "key": o.key,
                "etag": o.etag,
                "seen_at": now,
                "job_id": job_of[o.uri],
            }
            for o in sent[start : start + ACTION_CHUNK]
        ]
        statement = insert(ScheduleObject).values(rows)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["schedule_id", "key"],
                set_={
                    "etag": statement.excluded.etag,
                    "seen_at": statement.excluded.seen_at,
                    "job_id": statement.excluded.job_id,
                },
            )
        )
    return {
        "batch_id": str(batch.id),
        "items": batch.total,
        "rejected": batch.rejected,
        "unchanged": unchanged,
    }


def _retry_failed(
    session: Session, schedule: Schedule, action: RetryFailed, now: datetime
) -> dict[str, Any]:
    query = (
        select(Job.id)
        .where(
            Job.tenant_id == schedule.tenant_id,
            Job.status == JobStatus.FAILED,
            Job.finished_at >= now - timedelta(hours=action.window_hours),
        )
        .limit(MAX_RETRIED_PER_RUN)
    )
    if action.batch_id is not None:
        query = query.where(Job.batch_id == action.batch_id)
    retried = 0
    for job_id in list(session.scalars(query)):
        try:
            retry_job(session, schedule.tenant_id, job_id)
            retried += 1
        except RelightqError:
            continue  # e.g. its batch was cancelled meanwhile
    return {"jobs": retried}


def tick(
    session_factory: Any, now: datetime, storage: Storage, settings: Settings
) -> list[uuid.UUID]:
    """Fire every due schedule once and start queued runs whose turn came; returns the run
    ids created. Each schedule is handled in its own transaction, locked SKIP LOCKED."""
    fired: list[uuid.UUID] = []
    with session_factory() as session:
        due = list(
            session.scalars(
                select(Schedule.id).where(Schedule.enabled.is_(True), Schedule.next_run_at <= now)
            )
        )
        queued = list(
            session.scalars(
                select(ScheduleRun.schedule_id)
                .where(ScheduleRun.status == RunStatus.QUEUED)
                .distinct()
            )
        )
    for schedule_id in dict.fromkeys([*due, *queued]):
        with session_factory() as session, session.begin():
            schedule = session.scalar(
                select(Schedule).where(Schedule.id == schedule_id).with_for_update(skip_locked=True)
            )
            if schedule is None:
                continue  # another scheduler holds it right now
            _start_queued(session, schedule, storage, settings, now)
            if schedule.enabled and schedule.next_run_at and schedule.next_run_at <= now:
                scheduled_for = schedule.next_run_at
                # Missed times (downtime) fire once, not once each.
                schedule.next_run_at = next_time(schedule.cron, schedule.timezone, now)
                run = fire(session, schedule, scheduled_for, storage, settings, now=now)
                if run is not None:
                    fired.append(run.id)
    return fired


def _start_queued(
    session: Session, schedule: Schedule, storage: Storage, settings: Settings, now: datetime
) -> None:
    waiting = session.scalar(
        select(ScheduleRun)
        .where(ScheduleRun.schedule_id == schedule.id, ScheduleRun.status == RunStatus.QUEUED)
        .order_by(ScheduleRun.created_at)
        .limit(1)
    )
    if waiting is None:
        return
    going, _ = _busy(session, schedule, besides=waiting.id)
    if not going:
        execute(session, schedule, waiting, storage, settings, now)
