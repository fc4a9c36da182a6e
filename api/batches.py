"""/v1/batches: submit a catalog as JSON items, a CSV/JSONL file or an S3 prefix; follow it."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from enum import StrEnum
from typing import IO, Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from api.bodies import BodyKind, SubmittedAs, read_form, read_json_object
from api.deps import CurrentStorage, CurrentTenant, DbSession
from api.errors import authenticated
from api.idempotency import OPENAPI_PARAMETER as IDEMPOTENCY_PARAMETER
from api.idempotency import Idempotency, idempotency_for
from relightq.batches import service
from relightq.batches.schemas import (
    ALLOWED,
    BatchCreate,
    BatchEstimate,
    BatchOut,
    BatchPage,
    BatchSettings,
    BatchUpdate,
)
from relightq.batches.sources import RawItem, csv_items, jsonl_items
from relightq.db import get_sessionmaker
from relightq.errors import (
    BatchCancelled,
    FieldProblem,
    IdempotencyKeyReused,
    InvalidInput,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    TooManyItems,
    UnsupportedMediaType,
    field_problems,
)
from relightq.json_input import parse_json
from relightq.settings import get_settings
from relightq.storage import Storage
from relightq.tenants.models import Tenant

router = APIRouter(prefix="/v1/batches", tags=["batches"])
ENDPOINT = "POST /v1/batches"

_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": ALLOWED["file"]},
        "format": {"type": "string", "enum": ["csv", "jsonl"]},
        "defaults": {"type": "string", "description": "a JSON object of job fields, as text"},
        "metadata": {"type": "string", "description": "a JSON object, as text"},
        "name": {"type": "string"},
        "output_prefix": {"type": "string"},
        "key_template": {"type": "string"},
        "credit_budget": {"type": "number"},
        "skip_invalid": {"type": "boolean"},
        "reuse": {"type": "boolean"},
        "callback_url": {"type": "string"},
        "dry_run": {"type": "boolean", "description": ALLOWED["dry_run"]},
    },
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": BatchCreate.model_json_schema()},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    },
    "parameters": [IDEMPOTENCY_PARAMETER],
}
_JSON_FIELDS = ("defaults", "metadata")
# A boolean read as pydantic reads one (true/false, 1/0, yes/no, on/off), JSON or form text.
_BOOLEAN = TypeAdapter(bool)
_ESTIMATED: dict[int | str, dict[str, Any]] = {
    200: {
        "model": BatchEstimate,
        "description": "With dry_run: what the batch would cost and take; nothing was stored "
        "and the Idempotency-Key, if any, is not used",
    }
}


class ManifestFormat(StrEnum):
    """How a manifest is written."""

    JSONL = "jsonl"
    CSV = "csv"


def _invalid(exc: ValidationError) -> InvalidInput:
    return InvalidInput(field_problems(exc.errors(), ALLOWED))


def _file_format(upload: UploadFile, given: str | None) -> str:
    name = (upload.filename or "").lower()
    if given:
        if given not in ("csv", "jsonl"):
            raise InvalidInput([FieldProblem("format", "must be csv or jsonl", ALLOWED["format"])])
        return given
    if name.endswith(".csv") or upload.content_type == "text/csv":
        return "csv"
    if name.endswith((".jsonl", ".ndjson")) or upload.content_type in (
        "application/jsonl",
        "application/x-ndjson",
    ):
        return "jsonl"
    raise InvalidInput(
        [FieldProblem("format", "cannot tell from the file name; give csv or jsonl")]
    )


def _asks_dry_run(value: Any) -> bool:
    """Whether a JSON body's ``dry_run`` says true; a value that is no boolean is answered
    by the body's validation (a 422 naming dry_run with every other bad field)."""
    try:
        return _BOOLEAN.validate_python(value)
    except ValidationError:
        return False


def _form_dry_run(fields: dict[str, Any]) -> bool:
    """The multipart ``dry_run`` field, taken out of the batch fields; known before the
    Idempotency-Key is claimed, since a dry run claims none."""
    value = fields.pop("dry_run", False)
    try:
        return _BOOLEAN.validate_python(value)
    except ValidationError as exc:
        raise InvalidInput(
            [FieldProblem("dry_run", "must be true or false", ALLOWED["dry_run"])]
        ) from exc


def _form_settings(fields: dict[str, Any]) -> BatchSettings:
    problems: list[FieldProblem] = []
    for name in _JSON_FIELDS:
        if isinstance(fields.get(name), str):
            try:
                fields[name] = parse_json(fields[name], name, ALLOWED.get(name))
            except InvalidInput as exc:
                problems.extend(exc.fields)
                fields.pop(name)
    settings: BatchSettings | None = None
    try:
        settings = BatchSettings.model_validate(fields)
    except ValidationError as exc:
        problems.extend(field_problems(exc.errors(), ALLOWED))
    if problems or settings is None:
        raise InvalidInput(problems)
    return settings


def _store(
    db: Session,
    tenant: Tenant,
    spec: BatchSettings,
    source: str,
    items: Iterator[RawItem],
    storage: Storage,
    idempotency: Idempotency,
) -> BatchOut:
    """Validate and insert in one worker thread (with the idempotent answer); the session
    dependency commits."""
    batch = service.create_batch(db, tenant.id, spec, source, items, storage, get_settings())
    view = service.batch_view(db, batch)
    idempotency.remember(202, view, f"/v1/batches/{batch.id}")
    return view


def _estimate(
    db: Session,
    tenant: Tenant,
    spec: BatchSettings,
    source: str,
    items: Iterator[RawItem],
    storage: Storage,
) -> BatchEstimate:
    """Validate as ``_store`` does, in one worker thread, and estimate; nothing is written,
    so the commit that follows has nothing to commit."""
    return service.estimate_batch(db, tenant.id, spec, source, items, storage, get_settings())


def _file_digest(upload: UploadFile) -> str:
    """SHA-256 of a spooled upload, read in chunks, rewound for the parser."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: upload.file.read(1 << 20), b""):
        digest.update(chunk)
    upload.file.seek(0)
    return digest.hexdigest()


async def _from_json(
    request: Request, db: Session, tenant: Tenant, storage: Storage, idempotency: Idempotency
) -> BatchOut | BatchEstimate | JSONResponse:
    limit = get_settings().max_request_bytes
    too_large = (
        f"a JSON batch may be at most {limit} bytes; send big catalogs as a CSV or "
        "JSONL file (multipart field 'file') or an s3:// source"
    )
    body = await read_json_object(request, limit, too_large)
    if not _asks_dry_run(body.get("dry_run", False)):
        replay = await idempotency.replay_or_claim(body)
        if replay is not None:
            return replay
    try:
        create = BatchCreate.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    spec = BatchSettings.model_validate(create.model_dump(exclude={"items", "source", "dry_run"}))
    source, items = service.source_items(db, tenant.id, create, storage)
    if create.dry_run:
        return await run_in_threadpool(_estimate, db, tenant, spec, source, items, storage)
    return await run_in_threadpool(_store, db, tenant, spec, source, items, storage, idempotency)


async def _from_multipart(
    request: Request, db: Session, tenant: Tenant, storage: Storage, idempotency: Idempotency
) -> BatchOut | BatchEstimate | JSONResponse:
    form, fields = await read_form(request, max_fields=32)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidInput([FieldProblem("file", "must be an uploaded file", ALLOWED["file"])])
    dry_run = _form_dry_run(fields)
    if idempotency.key is not None and not dry_run:
        digest = await run_in_threadpool(_file_digest, upload)
        request_form = {**fields, "file": [upload.filename, digest]}
        replay = await idempotency.replay_or_claim(request_form)
        if replay is not None:
            return replay
    file_format = _file_format(upload, fields.pop("format", None))
    spec = _form_settings(fields)
    binary: IO[bytes] = upload.file
    items = csv_items(binary) if file_format == "csv" else jsonl_items(binary)
    if dry_run:
        return await run_in_threadpool(_estimate, db, tenant, spec, file_format, items, storage)
    return await run_in_threadpool(
        _store, db, tenant, spec, file_format, items, storage, idempotency
    )


@router.post(
    "",
    status_code=202,
    response_model=BatchOut,
    openapi_extra=_REQUEST_BODY,
    responses=_ESTIMATED
    | authenticated(
        MalformedRequest,
        PayloadTooLarge,
        TooManyItems,
        UnsupportedMediaType,
        IdempotencyKeyReused,
    ),
    summary="Submit a batch (or estimate it with dry_run): JSON items or an s3:// source, "
    "or a CSV/JSONL file (multipart)",
)
async def create_batch(
    request: Request,
    response: Response,
    tenant: CurrentTenant,
    db: DbSession,
    storage: CurrentStorage,
    kind: SubmittedAs,
    idempotency: Annotated[Idempotency, Depends(idempotency_for(ENDPOINT))],
) -> BatchOut | JSONResponse:
    """Every row is validated; a bad row rejects the whole batch unless skip_invalid.

    With an ``Idempotency-Key`` header, a retry of the same request gets the first answer.

    With ``dry_run`` (a JSON field, or a multipart form field like the other options)
    the batch is validated exactly the same way (the same 4xx for bad input) but nothing
    is stored or sent: the answer is a 200 BatchEstimate with the valid items, the rows
    skip_invalid would skip, how many items would reuse a picture already made, the calls
    and credits the rest would cost, and the time they take at the fleet's per-minute
    cap. The reuse count is a prediction; each item checks again when it runs.
    """
    if kind == BodyKind.JSON:
        view = await _from_json(request, db, tenant, storage, idempotency)
    else:
        view = await _from_multipart(request, db, tenant, storage, idempotency)
    if isinstance(view, JSONResponse):
        return view  # the first answer to this Idempotency-Key
    if isinstance(view, BatchEstimate):
        return JSONResponse(view.model_dump(mode="json"))  # 200: nothing was created
    response.headers["Location"] = f"/v1/batches/{view.id}"
    return view


@router.get(
    "",
    response_model=BatchPage,
    summary="The tenant's batches, newest first",
    responses=authenticated(),
)
def list_batches(
    tenant: CurrentTenant,
    db: DbSession,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> BatchPage:
    """Keyset-paginated: follow ``next_cursor`` until it is null."""
    batches, next_cursor = service.list_batches(db, tenant.id, cursor, limit)
    return BatchPage(items=service.batch_views(db, batches), next_cursor=next_cursor)


@router.get(
    "/{batch_id}",
    response_model=BatchOut,
    summary="A batch: counts, progress, ETA",
    responses=authenticated(NotFound),
)
def get_batch(batch_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> BatchOut:
    """A batch of the calling tenant; anyone else's is a 404."""
    return service.batch_view(db, service.get_batch(db, tenant.id, batch_id))


@router.patch(
    "/{batch_id}",
    response_model=BatchOut,
    summary="Change a batch's credit budget",
    responses=authenticated(NotFound),
)
def update_batch(
    batch_id: uuid.UUID, update: BatchUpdate, tenant: CurrentTenant, db: DbSession
) -> BatchOut:
    """Raising (or removing) the budget lets a batch waiting on it go on at once."""
    batch = service.update_budget(db, tenant.id, batch_id, update.credit_budget)
    return service.batch_view(db, batch)


@router.post(
    "/{batch_id}/cancel",
    response_model=BatchOut,
    summary="Cancel a batch",
    responses=authenticated(NotFound),
)
def cancel_batch(
    batch_id: uuid.UUID, tenant: CurrentTenant, db: DbSession, background: BackgroundTasks
) -> BatchOut:
    """Items not yet running are cancelled; running ones finish."""
    batch, held_left = service.cancel_batch(db, tenant.id, batch_id)
    if held_left:  # after the commit: the rows of a big batch, a chunk at a time
        background.add_task(service.finish_cancel, get_sessionmaker(), batch_id)
    return service.batch_view(db, batch)


@router.post(
    "/{batch_id}/retry-failed",
    response_model=BatchOut,
    summary="Retry a batch's failed items",
    responses=authenticated(NotFound, BatchCancelled),
)
def retry_failed(batch_id: uuid.UUID, tenant: CurrentTenant, db: DbSession) -> BatchOut:
    """Failed items run again with fresh attempts, a window at a time like the rest."""
    service.retry_failed(db, tenant.id, batch_id)
    return service.batch_view(db, service.get_batch(db, tenant.id, batch_id))


def manifest_response(
    batch_id: uuid.UUID,
    tenant: Tenant,
    db: Session,
    storage: Storage,
    fmt: ManifestFormat,
    errors_only: bool,
) -> StreamingResponse:
    """A batch's results or errors manifest, streamed (the API's and the dashboard's)."""
    service.get_batch(db, tenant.id, batch_id)  # 404 before streaming starts
    rows = service.manifest_rows(get_sessionmaker(), batch_id, storage, errors_only)
    kind = "errors" if errors_only else "results"
    if fmt == ManifestFormat.CSV:
        body, media_type = service.csv_lines(rows), "text/csv; charset=utf-8"
    else:
        body, media_type = service.jsonl_lines(rows), "application/jsonl; charset=utf-8"
    filename = f"batch-{batch_id}-{kind}.{fmt.value}"
    return StreamingResponse(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/{batch_id}/results",
    summary="Every item: status, outputs (s3 URIs and presigned URLs), error",
    response_class=StreamingResponse,
    responses=authenticated(NotFound),
)
def results(
    batch_id: uuid.UUID,
    tenant: CurrentTenant,
    db: DbSession,
    storage: CurrentStorage,
    format: ManifestFormat = ManifestFormat.JSONL,
) -> StreamingResponse:
    """Streamed by row, so a 100k-item manifest is never whole in memory."""
    return manifest_response(batch_id, tenant, db, storage, format, errors_only=False)


@router.get(
    "/{batch_id}/errors",
    summary="Failed items and rejected rows, by row",
    response_class=StreamingResponse,
    responses=authenticated(NotFound),
)
def errors(
    batch_id: uuid.UUID,
    tenant: CurrentTenant,
    db: DbSession,
    storage: CurrentStorage,
    format: ManifestFormat = ManifestFormat.JSONL,
) -> StreamingResponse:
    """Failed jobs and the rows skip_invalid turned away, in one manifest."""
    return manifest_response(batch_id, tenant, db, storage, format, errors_only=True)
