"""Creating, reading, cancelling and retrying batches. Services flush; callers commit.

A batch is validated and stored in one transaction: items are inserted in chunks as
they are read, and if any row is bad (without ``skip_invalid``) the caller rolls the
whole transaction back, so nothing of a rejected batch is ever stored. A dry run
(:func:`estimate_batch`) validates the very same way but inserts nothing: its valid items
are only collected, to estimate what they would cost.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from operator import attrgetter
from typing import Any, cast
from urllib.parse import urlparse

from pydantic import ValidationError
from sqlalchemy import ColumnElement, case, func, select, update
from sqlalchemy.orm import Session, selectinload

from relightq.batches.bulk import CopyStream, RowWriter
from relightq.batches.dispatch import (
    CANCEL_CHUNK,
    budget_spent,
    cancel_held,
    mark_completed,
    release,
    reopen,
)
from relightq.batches.models import Batch, BatchReject
from relightq.batches.schemas import (
    ALLOWED,
    DEFAULT_KEY_TEMPLATE,
    BatchCounts,
    BatchCreate,
    BatchEstimate,
    BatchOut,
    BatchSettings,
    BatchStatus,
    validate_defaults,
)
from relightq.batches.sources import RawItem, json_items, prefix_items
from relightq.credits.amounts import ZERO, as_text, json_default
from relightq.credits.budgets import BUDGET_SPENT
from relightq.credits.estimate import PlannedItem, estimate
from relightq.db import table_of, utcnow
from relightq.errors import (
    UNSTORABLE,
    BatchCancelled,
    BatchRejected,
    FieldProblem,
    InvalidInput,
    NotFound,
    TooManyItems,
    field_problems,
    unstorable_field,
)
from relightq.jobs.models import Job, JobOutput, JobStatus, held_by_batch
from relightq.jobs.schemas import JobCreate
from relightq.jobs.service import cancelled_values, foreign_subject_problem, rerun_values
from relightq.pagination import newest_first, page
from relightq.segmind.params import PARAM_FIELDS
from relightq.settings import Settings
from relightq.storage import Storage, StorageError, parse_s3_prefix
from relightq.tenants.service import ungranted_bucket_problem, usable_buckets

# Rows written per COPY (or INSERT): big enough that a statement's round trip is noise,
# small enough that a chunk's dicts and text stay a few MB.
INSERT_CHUNK = 5000
PARAM_VALUES = attrgetter(*(name for name in JobCreate.model_fields if name in PARAM_FIELDS))
# Distinct parameter sets remembered with their JSON during one ingest (most catalogs
# use a handful); past this the memory is cleared, not grown.
PARAMS_MEMO_SIZE = 1024
# Single jobs default to priority 5; bulk work yields to them unless told otherwise.
BATCH_DEFAULT_PRIORITY = 4
MAX_KEY_BYTES = 1024  # S3's limit
PACE_WINDOW = timedelta(minutes=5)


@dataclass
class _Ingest:
    """Running state of one batch's validation and insertion (or, in a dry run, of its
    validation and the collecting of its valid items)."""

    batch: Batch
    settings: Settings
    output_prefix: str | None
    key_template: str | None
    dry_run: bool = False
    rows: int = 0
    valid: int = 0
    bad_rows: int = 0
    problems: list[FieldProblem] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    keys: dict[str, int] = field(default_factory=dict)
    batch_keeps_rejects: bool = False
    planned: list[PlannedItem] = field(default_factory=list)  # a dry run's valid items
    now: datetime = field(default_factory=utcnow)
    params_memo: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    stream: CopyStream | None = None  # where valid items and kept rejects are written
    job_rows: RowWriter | None = None  # JOB_ROWS with what every item shares
    reject_rows: RowWriter | None = None


def _settings_problems(
    session: Session, tenant_id: uuid.UUID, spec: BatchSettings, storage: Storage
) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    try:
        validate_defaults(spec.defaults)
    except ValidationError as exc:
        problems += [
            FieldProblem(f"defaults.{p.field}", p.message, p.allowed)
            for p in field_problems(exc.errors(), ALLOWED)
        ]
    if spec.output_prefix:
        bucket, prefix = parse_s3_prefix(spec.output_prefix)
        mine = f"outputs/{tenant_id}/"
        if bucket == storage.bucket and not prefix.startswith(mine):
            problems.append(
                FieldProblem(
                    "output_prefix",
                    f"points into relightq's bucket outside your own area s3://{bucket}/{mine}",
                    ALLOWED["output_prefix"],
                )
            )
        elif ungranted := ungranted_bucket_problem(
            session, tenant_id, "output_prefix", bucket, ALLOWED["output_prefix"]
        ):
            problems.append(ungranted)  # written with relightq's credentials: granted only
        else:
            try:
                storage.check_bucket(bucket)
            except StorageError as exc:
                problems.append(
                    FieldProblem(
                        "output_prefix", f"is not reachable ({exc})", ALLOWED["output_prefix"]
                    )
                )
    return problems


def create_batch(
    session: Session,
    tenant_id: uuid.UUID,
    spec: BatchSettings,
    source: str,
    items: Iterable[RawItem],
    storage: Storage,
    settings: Settings,
) -> Batch:
    """Validate and store every item, or raise and leave the transaction to be rolled back."""
    state = _ingest(session, tenant_id, spec, source, items, storage, settings, dry_run=False)
    batch = state.batch
    batch.total = state.valid
    batch.rejected = state.bad_rows
    session.flush()
    release(session, batch.id)
    return batch


def estimate_batch(
    session: Session,
    tenant_id: uuid.UUID,
    spec: BatchSettings,
    source: str,
    items: Iterable[RawItem],
    storage: Storage,
    settings: Settings,
) -> BatchEstimate:
    """Validate every item exactly as :func:`create_batch` does (raising the same errors)
    and answer what the batch would cost; nothing is stored and nothing is sent."""
    state = _ingest(session, tenant_id, spec, source, items, storage, settings, dry_run=True)
    found = estimate(session, tenant_id, state.planned, storage, settings)
    return BatchEstimate(
        items=found.items,
        rejected=state.bad_rows,
        would_reuse=found.would_reuse,
        calls=found.calls,
        credits=found.credits,
        credits_saved=found.credits_saved,
        max_calls_per_minute=found.max_calls_per_minute,
        estimated_seconds=round(found.estimated_seconds, 1),
    )


def _ingest(
    session: Session,
    tenant_id: uuid.UUID,
    spec: BatchSettings,
    source: str,
    items: Iterable[RawItem],
    storage: Storage,
    settings: Settings,
    *,
    dry_run: bool,
) -> _Ingest:
    """Validate every item and insert the valid ones (a dry run collects them instead);
    raise when the batch is rejected."""
    problems = _settings_problems(session, tenant_id, spec, storage)
    if problems:
        raise InvalidInput(problems)
    batch = Batch(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name=spec.name,
        source=source,
        defaults=spec.defaults,
        output_prefix=spec.output_prefix,
        key_template=spec.key_template,
        metadata_=spec.metadata,
        credit_budget=spec.credit_budget,
        reuse=spec.reuse,
        callback_url=spec.callback_url,
    )
    if not dry_run:
        session.add(batch)
        session.flush()  # the items' foreign key needs the row
    output_prefix = spec.output_prefix
    key_template = spec.key_template
    if output_prefix or key_template:
        output_prefix = output_prefix or (
            f"s3://{storage.bucket}/outputs/{tenant_id}/batches/{batch.id}/"
        )
        key_template = key_template or DEFAULT_KEY_TEMPLATE
    state = _Ingest(batch, settings, output_prefix, key_template, dry_run=dry_run)
    state.job_rows = JOB_ROWS.bound(
        {
            "tenant_id": tenant_id,
            "batch_id": batch.id,
            "status": JobStatus.QUEUED,
            "attempts": 0,
            "credits_used": ZERO,
            # Every item of a batch is created at the same moment.
            "created_at": state.now,
            "updated_at": state.now,
            "dispatched_at": None,  # held: the batch releases it
        }
    )
    state.reject_rows = REJECT_ROWS.bound({"batch_id": batch.id})
    # A dry run keeps no rejects: they are only counted.
    state.batch_keeps_rejects = spec.skip_invalid and not dry_run
    # Validation reads the tenant's granted buckets; read them now, before a COPY holds
    # the connection (they are remembered for the session).
    usable_buckets(session, tenant_id)
    try:
        with CopyStream(session) as state.stream:
            for item in items:
                state.rows += 1
                if state.rows > settings.max_batch_items:
                    raise TooManyItems(settings.max_batch_items)
                _take(session, state, item, spec, storage)
            if state.bad_rows and not spec.skip_invalid:
                raise BatchRejected(state.problems, state.bad_rows, state.rows)
            if not state.valid:
                what = "no valid items" if state.rows else "no items"
                raise InvalidInput(
                    [FieldProblem("items", f"the batch has {what}", ALLOWED["items"])]
                )
            _flush(session, state)
    except UnicodeDecodeError as exc:
        raise InvalidInput([FieldProblem("file", "is not UTF-8 text", ALLOWED["file"])]) from exc
    except StorageError as exc:
        raise InvalidInput(
            [FieldProblem("source", f"could not be listed ({exc})", ALLOWED["source"])]
        ) from exc
    return state


def _take(
    session: Session, state: _Ingest, item: RawItem, spec: BatchSettings, storage: Storage
) -> None:
    job_id = uuid.uuid4()
    problems = [item.problem] if item.problem else []
    # Every source's fields, whatever decoded them (CSV cells may hold NUL).
    unstorable = None if item.storable else unstorable_field(item.fields)
    if unstorable and not problems:
        problems.append(unstorable)
    request: JobCreate | None = None
    # A row with one unreadable cell (a bad metadata cell) is still checked field by field,
    # so the 422 lists all its problems at once; an unreadable record has no fields.
    if not problems or (item.problem and item.fields and not unstorable):
        merged = {**spec.defaults, **item.fields}
        merged.setdefault("priority", BATCH_DEFAULT_PRIORITY)
        if isinstance(spec.defaults.get("metadata"), dict) and isinstance(
            item.fields.get("metadata"), dict
        ):
            merged["metadata"] = {**spec.defaults["metadata"], **item.fields["metadata"]}
        try:
            request = JobCreate.model_validate(merged)
        except ValidationError as exc:
            problems += field_problems(exc.errors(), ALLOWED)
    template = None
    if request is not None and not problems:
        foreign = foreign_subject_problem(
            session, state.batch.tenant_id, request.subject_image, storage.bucket
        )
        if foreign:
            problems.append(foreign)
        elif state.key_template:
            template, problem = _output_template(state, item, request, job_id)
            if problem:
                problems.append(problem)
    if problems:
        _reject(state, item, problems)
        if len(state.rejects) >= INSERT_CHUNK:
            _flush(session, state)
        return
    assert request is not None
    state.valid += 1
    if state.bad_rows and not spec.skip_invalid:
        return  # the batch will be rejected; keep validating to list every bad row
    # What every item of the batch shares is in state.job_rows (_job_constants).
    state.jobs.append(
        {
            "id": job_id,
            "batch_row": item.row,
            "params": _params(state, request),
            "subject_image": request.subject_image,
            "external_id": request.external_id,
            "metadata": request.metadata,
            "callback_url": request.callback_url,
            "priority": request.priority,
            "reuse": request.reuse and spec.reuse,
            "output_template": template,
        }
    )
    if len(state.jobs) + len(state.rejects) >= INSERT_CHUNK:
        _flush(session, state)


JOB_ROWS = RowWriter(
    table_of(Job),
    (
        "id",
        "tenant_id",
        "batch_id",
        "batch_row",
        "status",
        "params",
        "subject_image",
        "external_id",
        "metadata",
        "callback_url",
        "priority",
        "attempts",
        "credits_used",
        "reuse",
        "created_at",
        "updated_at",
        "dispatched_at",
        "output_template",
    ),
)
REJECT_ROWS = RowWriter(
    table_of(BatchReject),
    ("id", "batch_id", "row", "external_id", "subject_image", "problems"),
)


def _params(state: _Ingest, request: JobCreate) -> dict[str, Any]:
    """``request.relight_params().model_dump()``, without validating the validated fields
    again; rows with the same parameters share one dict (and so one JSON encoding)."""
    key = PARAM_VALUES(request)
    params = state.params_memo.get(key)
    if params is None:
        if len(state.params_memo) >= PARAMS_MEMO_SIZE:
            state.params_memo.clear()
        params = state.params_memo[key] = request.model_dump(include=set(PARAM_FIELDS))
    return params


def _reject(state: _Ingest, item: RawItem, problems: list[FieldProblem]) -> None:
    state.bad_rows += 1
    if len(state.problems) < state.settings.max_reported_row_errors:
        state.problems += [
            FieldProblem(f"rows[{item.row}].{p.field}", p.message, p.allowed) for p in problems
        ]
    if not state.batch_keeps_rejects:
        return  # the batch will be rejected whole: only the listing matters
    state.rejects.append(
        {
            "id": uuid.uuid4(),
            "row": item.row,
            "external_id": _text(item.fields.get("external_id")),
            "subject_image": _text(item.fields.get("subject_image")),
            "problems": [p.as_dict() for p in problems],
        }
    )


def _text(value: Any) -> str | None:
    # A rejected row may hold the NUL or lone surrogate it was rejected for; neither can
    # be stored.
    return None if value is None else UNSTORABLE.sub("\ufffd", str(value)[:4096])


def _flush(session: Session, state: _Ingest) -> None:
    if state.dry_run:
        state.planned += [
            PlannedItem(job["subject_image"], job["params"], job["reuse"]) for job in state.jobs
        ]
        state.jobs.clear()
        return
    assert state.stream is not None and state.job_rows and state.reject_rows
    state.stream.write(state.job_rows, state.jobs)
    state.jobs.clear()
    state.stream.write(state.reject_rows, state.rejects)
    state.rejects.clear()


def _escape(value: str) -> str:
    return value.replace("{", "{{").replace("}", "}}")


def _output_template(
    state: _Ingest, item: RawItem, request: JobCreate, job_id: uuid.UUID
) -> tuple[str | None, FieldProblem | None]:
    """The item's output URI with {index} and {ext} left to fill, or why it cannot have one."""
    assert state.key_template is not None and state.output_prefix is not None
    source_path = item.source_key or urlparse(request.subject_image).path
    source_name = posixpath.splitext(posixpath.basename(source_path))[0] or str(item.row)
    source_key = item.source_key or ""
    item_name = (
        request.external_id
        or (posixpath.splitext(item.source_key)[0] if item.source_key else None)
        or str(item.row)
    )
    values = {
        "item": item_name,
        "external_id": request.external_id or "",
        "row": str(item.row),
        "source_key": source_key,
        "source_name": source_name,
        "job_id": str(job_id),
        "batch_id": str(state.batch.id),
    }
    key = state.key_template.format(
        **{k: _escape(v) for k, v in values.items()}, index="{index}", ext="{ext}"
    )
    prefix = state.output_prefix if state.output_prefix.endswith("/") else state.output_prefix + "/"
    template = prefix + key
    sample = template.format(index=99, ext="webp")
    allowed = ALLOWED["key_template"]
    if len(sample.encode()) - len(prefix.split("/", 3)[0]) > MAX_KEY_BYTES + 16:
        return None, FieldProblem("key_template", "makes a key longer than 1024 bytes", allowed)
    segments = sample[len(prefix) :].split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        # Legal in S3, but clients and browsers resolve "../" in the presigned URL and
        # fetch another key: refused before any credit is spent on it.
        return None, FieldProblem(
            "key_template",
            f"gives a key with an empty, '.' or '..' path segment ({sample})",
            allowed,
        )
    if "{index}" not in key and request.number_of_images > 1:
        return None, FieldProblem(
            "key_template", "needs {index} when number_of_images is more than 1", allowed
        )
    first = state.keys.setdefault(template, item.row)
    if first != item.row:
        return None, FieldProblem(
            "key_template",
            f"gives the same output key as row {first} ({sample}); "
            "make external_id unique or add {row} or {source_key} to key_template",
            allowed,
        )
    return template, None


def _owned(tenant_id: uuid.UUID) -> Any:
    return select(Batch).where(Batch.tenant_id == tenant_id)


def get_batch(session: Session, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> Batch:
    """A tenant's batch; another tenant's is indistinguishable from a missing one."""
    batch = session.scalar(_owned(tenant_id).where(Batch.id == batch_id))
    if batch is None:
        raise NotFound("batch")
    return batch


def count_batches(session: Session, tenant_id: uuid.UUID) -> int:
    """How many batches the tenant has (committed ones: a batch still being ingested is
    not counted until its 202)."""
    query = select(func.count()).select_from(Batch).where(Batch.tenant_id == tenant_id)
    return int(session.scalar(query) or 0)


def list_batches(
    session: Session, tenant_id: uuid.UUID, cursor: str | None = None, limit: int = 50
) -> tuple[list[Batch], str | None]:
    """A page of a tenant's batches, newest first, keyset-paginated."""
    query = newest_first(_owned(tenant_id), Batch, cursor, limit)
    return page(list(session.scalars(query)), limit)


def get_batches(session: Session, tenant_id: uuid.UUID, ids: list[uuid.UUID]) -> list[Batch]:
    """Those of ``ids`` that are the tenant's batches, in the order asked (others left out)."""
    found = {b.id: b for b in session.scalars(_owned(tenant_id).where(Batch.id.in_(ids)))}
    return [found[i] for i in dict.fromkeys(ids) if i in found]


def gallery(session: Session, batch_id: uuid.UUID, after: int, limit: int) -> list[Job]:
    """A page of a batch's items by row, after row ``after``, with their outputs."""
    return list(
        session.scalars(
            select(Job)
            .where(Job.batch_id == batch_id, Job.batch_row > after)
            .options(selectinload(Job.outputs))
            .order_by(Job.batch_row)
            .limit(limit)
        )
    )


def source_items(
    session: Session, tenant_id: uuid.UUID, create: BatchCreate, storage: Storage
) -> tuple[str, Iterator[RawItem]]:
    """Where a JSON batch's items come from, and the items: its ``items``, or the objects
    under its ``source`` prefix, which must be in a bucket the tenant may read."""
    if create.source is None:
        return "json", json_items(create.items or [])
    foreign = foreign_subject_problem(session, tenant_id, create.source, storage.bucket)
    if foreign:
        raise InvalidInput([FieldProblem("source", foreign.message, ALLOWED["source"])])
    return create.source, prefix_items(storage, create.source)


def batch_view(session: Session, batch: Batch) -> BatchOut:
    """A batch with its counts, progress and an ETA from the last few minutes' pace."""
    return batch_views(session, [batch])[0]


@dataclass
class _Tally:
    """One batch's items as one grouped query counts them."""

    counts: dict[str, int] = field(default_factory=dict)
    recent: int = 0
    waiting_reason: str | None = None


def _tallies(session: Session, batches: list[Batch], now: datetime) -> dict[uuid.UUID, _Tally]:
    """Per batch: items per status, items finished within the pace window, and a waiting
    item's reason; in one query for the whole list, however long it is."""
    # Portable SQL (the demo runs on SQLite): CASE rather than GREATEST and FILTER.
    window_start = now - PACE_WINDOW
    since = case((Batch.created_at > window_start, Batch.created_at), else_=window_start)
    rows = session.execute(
        select(
            Job.batch_id,
            Job.status,
            func.count(),
            func.sum(case((Job.finished_at >= since, 1), else_=0)),
            func.min(case((Job.status == JobStatus.WAITING, Job.waiting_reason))),
        )
        .join(Batch, Batch.id == Job.batch_id)
        .where(Job.batch_id.in_([b.id for b in batches]))
        .group_by(Job.batch_id, Job.status)
    )
    tallies: dict[uuid.UUID, _Tally] = {b.id: _Tally() for b in batches}
    for batch_id, status, count, recent, waiting_reason in rows:
        tally = tallies[cast(uuid.UUID, batch_id)]  # never None: filtered by batch_id
        tally.counts[str(status)] = count
        tally.recent += int(recent or 0)
        tally.waiting_reason = tally.waiting_reason or waiting_reason
    return tallies


def batch_views(session: Session, batches: list[Batch]) -> list[BatchOut]:
    """``batch_view`` of each batch, counted with one query for them all."""
    if not batches:
        return []
    now = utcnow()
    tallies = _tallies(session, batches, now)
    return [_view(batch, tallies[batch.id], now) for batch in batches]


def _view(batch: Batch, tally: _Tally, now: datetime) -> BatchOut:
    counts = BatchCounts(**tally.counts)
    if batch.cancelled_at is not None:
        # Items of a cancelled batch still queued are the held ones not yet brought up to
        # date (finish_cancel): none of them will run.
        counts.cancelled += counts.queued + counts.waiting
        counts.queued = counts.waiting = 0
    final = counts.succeeded + counts.failed + counts.cancelled
    remaining = max(batch.total - final, 0)
    since = max(now - PACE_WINDOW, batch.created_at)
    minutes = max((now - since).total_seconds(), 1.0) / 60
    per_minute = tally.recent / minutes if tally.recent else None
    eta = 0.0 if not remaining else (remaining / per_minute * 60 if per_minute else None)
    waiting_reason = None
    if batch.cancelled_at is not None:
        status = BatchStatus.CANCELLED
    elif batch.completed_at is not None:
        status = BatchStatus.COMPLETED
    elif budget_spent(batch):
        status, waiting_reason = BatchStatus.WAITING, BUDGET_SPENT
    elif counts.waiting and not counts.running:
        status = BatchStatus.WAITING
        waiting_reason = tally.waiting_reason
    elif final or counts.running:
        status = BatchStatus.RUNNING
    else:
        status = BatchStatus.QUEUED
    return BatchOut(
        id=batch.id,
        name=batch.name,
        status=status,
        waiting_reason=waiting_reason,
        source=batch.source,
        total=batch.total,
        rejected=batch.rejected,
        counts=counts,
        progress=round(final / batch.total, 4) if batch.total else 1.0,
        credits_used=batch.credits_used,
        credit_budget=batch.credit_budget,
        reuse=batch.reuse,
        reused=batch.reused,
        credits_saved=batch.credits_saved,
        # No time left to promise while the batch waits for a budget or a resume.
        eta_seconds=None if eta is None or status == BatchStatus.WAITING else round(eta, 1),
        items_per_minute=None if per_minute is None else round(per_minute, 2),
        defaults=batch.defaults,
        output_prefix=batch.output_prefix,
        key_template=batch.key_template,
        metadata=batch.metadata_,
        callback_url=batch.callback_url,
        created_at=batch.created_at,
        updated_at=batch.updated_at,
        completed_at=batch.completed_at,
        cancelled_at=batch.cancelled_at,
        results_url=f"/v1/batches/{batch.id}/results",
        errors_url=f"/v1/batches/{batch.id}/errors",
    )


def cancel_batch(session: Session, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> tuple[Batch, bool]:
    """Cancel every item not yet running; running items finish. Idempotent.

    The items sent to the broker and the first held ones are cancelled here; so is the
    batch, which keeps the rest from ever being sent (``release`` sends nothing of a
    cancelled batch, a worker claiming an item of one cancels it) and counts them as
    cancelled. True with the batch when held items are left for :func:`finish_cancel`
    to bring up to date after the commit, a chunk at a time (one UPDATE of a million rows
    would keep the answer waiting for minutes)."""
    batch = get_batch(session, tenant_id, batch_id)
    now = utcnow()
    # Items first, then the batch row: the same lock order as a worker finishing an item.
    session.execute(
        update(Job)
        .where(
            Job.batch_id == batch_id,
            Job.dispatched_at.is_not(None),
            Job.status.in_([JobStatus.QUEUED, JobStatus.WAITING]),
        )
        .values(cancelled_values(now))
    )
    last = cancel_held(session, batch_id, 0, CANCEL_CHUNK)
    session.execute(
        update(Batch)
        # A batch that already completed stays completed: nothing was left to cancel.
        .where(Batch.id == batch_id, Batch.cancelled_at.is_(None), Batch.completed_at.is_(None))
        .values(cancelled_at=now, updated_at=now)
    )
    mark_completed(session, batch_id)
    session.refresh(batch)
    return batch, last is not None and batch.completed_at is None


def finish_cancel(session_factory: Callable[[], Session], batch_id: uuid.UUID) -> None:
    """Cancel a cancelled batch's held items left by :func:`cancel_batch`, a chunk per
    transaction, then record the batch done (the sweeper repairs what this leaves)."""
    after: int | None = 0
    while after is not None:
        with session_factory() as session, session.begin():
            after = cancel_held(session, batch_id, after, CANCEL_CHUNK)
    with session_factory() as session, session.begin():
        mark_completed(session, batch_id)


def retry_failed(session: Session, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> int:
    """Put every failed item back in the batch with fresh attempts; returns how many."""
    batch = get_batch(session, tenant_id, batch_id)
    if batch.cancelled_at is not None:
        raise BatchCancelled("the batch was cancelled; submit a new one")
    now = utcnow()
    done = session.execute(
        update(Job)
        .where(Job.batch_id == batch_id, Job.status == JobStatus.FAILED)
        .values(rerun_values(now, in_batch=True))
    )
    count = int(done.rowcount)  # type: ignore[attr-defined]
    if count:
        reopen(session, batch_id)
    return count


def update_budget(
    session: Session, tenant_id: uuid.UUID, batch_id: uuid.UUID, credit_budget: Decimal | None
) -> Batch:
    """Change the credit budget; raising it lets the batch go on at once."""
    batch = get_batch(session, tenant_id, batch_id)
    batch.credit_budget = credit_budget
    session.flush()
    # Items handed back while the budget was spent sit held as "waiting"; release them.
    session.execute(
        update(Job)
        .where(Job.batch_id == batch_id, held_by_batch(), Job.waiting_reason == BUDGET_SPENT)
        .values(status=JobStatus.QUEUED, waiting_reason=None)
    )
    release(session, batch_id)
    session.refresh(batch)
    return batch


# Manifests -----------------------------------------------------------------------------

RESULT_COLUMNS = (
    "row",
    "job_id",
    "external_id",
    "source",
    "status",
    "attempts",
    "credits_used",
    "credits_saved",
    "reused_from",
    "output_s3_uris",
    "output_urls",
    "error_code",
    "error_message",
)
# Rows read per query, each page by its own short session (no transaction is held open
# while a client reads slowly); the next page starts after the last row, by index.
MANIFEST_CHUNK = 5000
# Rows per piece of the streamed body: one piece per row would cost a thread hop each.
STREAM_ROWS = 1000
CSV_LIST_SEPARATOR = " | "
_MANIFEST_JSON = json.JSONEncoder(ensure_ascii=False, default=json_default)
# Most items cost one of a few amounts: each written once.
_amount_text = lru_cache(maxsize=1024)(as_text)
_RESULT_FIELDS = (
    Job.id,
    Job.batch_row,
    Job.external_id,
    Job.subject_image,
    Job.status,
    Job.attempts,
    Job.credits_used,
    Job.credits_saved,
    Job.reused_from,
    Job.error_code,
    Job.error_message,
)


def _result_row(job: Any, outputs: list[tuple[int, str]], storage: Storage) -> dict[str, Any]:
    """A job's manifest row from its columns (``_RESULT_FIELDS``) and its outputs."""
    return {
        "row": job.batch_row,
        "job_id": str(job.id),
        "external_id": job.external_id,
        "source": job.subject_image,
        "status": str(job.status),
        "attempts": job.attempts,
        "credits_used": job.credits_used,
        "credits_saved": job.credits_saved,
        "reused_from": None if job.reused_from is None else str(job.reused_from),
        "outputs": [
            {"index": index, "s3_uri": uri, "url": storage.url(uri)} for index, uri in outputs
        ],
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
    }


def _reject_row(reject: BatchReject) -> dict[str, Any]:
    message = "; ".join(f"{p['field']}: {p['message']}" for p in reject.problems)
    return {
        "row": reject.row,
        "job_id": None,
        "external_id": reject.external_id,
        "source": reject.subject_image,
        "status": "rejected",
        "attempts": 0,
        "credits_used": ZERO,
        "credits_saved": ZERO,
        "reused_from": None,
        "outputs": [],
        "error": {"code": "validation_error", "message": message, "fields": reject.problems},
    }


def _page_outputs(
    session: Session, where: list[ColumnElement[bool]], after: int, last: int
) -> dict[uuid.UUID, list[tuple[int, str]]]:
    """The outputs of a page's items (``where``, rows ``after`` < row <= ``last``), by
    index; joined by row range, with no list of thousands of ids to bind."""
    rows = session.execute(
        select(JobOutput.job_id, JobOutput.index, JobOutput.uri)
        .join(Job, Job.id == JobOutput.job_id)
        .where(*where, Job.batch_row > after, Job.batch_row <= last)
        .order_by(JobOutput.job_id, JobOutput.index)
    )
    found: dict[uuid.UUID, list[tuple[int, str]]] = {}
    for job_id, index, uri in rows:
        found.setdefault(job_id, []).append((index, uri))
    return found


def _job_rows(
    session_factory: Callable[[], Session],
    batch_id: uuid.UUID,
    storage: Storage,
    statuses: tuple[JobStatus, ...] | None,
    *,
    sent: bool,
) -> Iterator[dict[str, Any]]:
    """The batch's items sent to the broker, or those it still holds, by row: each set has
    its own index (ix_jobs_batch_sent, ix_jobs_batch_held)."""
    where = [
        Job.batch_id == batch_id,
        Job.dispatched_at.is_not(None) if sent else Job.dispatched_at.is_(None),
    ]
    if statuses:
        where.append(Job.status.in_(statuses))
    after = -1
    while True:
        with session_factory() as session:
            jobs = session.execute(
                select(*_RESULT_FIELDS)
                .where(*where, Job.batch_row > after)
                .order_by(Job.batch_row)
                .limit(MANIFEST_CHUNK)
            ).all()
            last = (jobs[-1].batch_row or 0) if jobs else after
            outputs = _page_outputs(session, where, after, last) if jobs else {}
        yield from (_result_row(job, outputs.get(job.id, []), storage) for job in jobs)
        if len(jobs) < MANIFEST_CHUNK:
            return
        after = last


def _reject_rows(
    session_factory: Callable[[], Session], batch_id: uuid.UUID
) -> Iterator[dict[str, Any]]:
    after = -1
    while True:
        with session_factory() as session:
            rejects = list(
                session.scalars(
                    select(BatchReject)
                    .where(BatchReject.batch_id == batch_id, BatchReject.row > after)
                    .order_by(BatchReject.row)
                    .limit(MANIFEST_CHUNK)
                )
            )
            rows = [_reject_row(reject) for reject in rejects]
        yield from rows
        if len(rejects) < MANIFEST_CHUNK:
            return
        after = rejects[-1].row


def manifest_rows(
    session_factory: Callable[[], Session],
    batch_id: uuid.UUID,
    storage: Storage,
    errors_only: bool,
) -> Iterator[dict[str, Any]]:
    """Every item by row (or only failed and rejected ones), read a chunk at a time."""
    statuses = (JobStatus.FAILED,) if errors_only else None
    streams = [
        _job_rows(session_factory, batch_id, storage, statuses, sent=True),
        _job_rows(session_factory, batch_id, storage, statuses, sent=False),
    ]
    if errors_only:
        streams.append(_reject_rows(session_factory, batch_id))
    return heapq.merge(*streams, key=lambda row: int(row["row"] or 0))


def _pieces(lines: Iterable[str]) -> Iterator[str]:
    """``lines`` joined a few hundred at a time."""
    piece: list[str] = []
    for line in lines:
        piece.append(line)
        if len(piece) >= STREAM_ROWS:
            yield "".join(piece)
            piece.clear()
    if piece:
        yield "".join(piece)


def jsonl_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A manifest as JSON Lines (yielded a few hundred lines at a time)."""
    return _pieces(_MANIFEST_JSON.encode(row) + "\n" for row in rows)


def csv_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A manifest as CSV with a header (yielded a few hundred lines at a time); several
    outputs share a cell, joined by " | "."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(RESULT_COLUMNS)
    for written, row in enumerate(rows, start=1):
        error = row["error"] or {}
        writer.writerow(
            (
                row["row"],
                row["job_id"],
                row["external_id"],
                row["source"],
                row["status"],
                row["attempts"],
                _amount_text(row["credits_used"]),
                _amount_text(row["credits_saved"]),
                row["reused_from"] or "",
                CSV_LIST_SEPARATOR.join(o["s3_uri"] for o in row["outputs"]),
                CSV_LIST_SEPARATOR.join(o["url"] for o in row["outputs"]),
                error.get("code") or "",
                error.get("message") or "",
            )
        )
        if written % STREAM_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
