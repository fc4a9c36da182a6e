"""Every API call as data: what to send and how to read the answer.

Pure functions, no I/O: the sync and the async client both send exactly these, so the
two cannot drift apart. Each builder returns a :class:`Call` whose ``parse`` turns a
successful response into its typed result (the API's own pydantic schemas).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from relightq.batches.schemas import BatchEstimate, BatchOut, BatchPage
from relightq.jobs.schemas import JobOut, JobPage
from relightq.schedules.schemas import RunOut, RunPage, ScheduleOut
from relightq.throttle.schemas import ThrottleOut
from relightq.triggers.schemas import TriggerAccepted, TriggerOut
from relightq.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    EndpointOut,
    EventOut,
    EventPage,
    SecretOut,
)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
M = TypeVar("M", bound=BaseModel)

IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# The API validates and stores every row of a batch before it answers: allow for that.
SUBMIT_TIMEOUT = httpx.Timeout(900.0, connect=10.0)
ManifestFormat = Literal["jsonl", "csv"]
# What an upload may be: its bytes, an open binary file, or a path to one.
FileSource = bytes | IO[bytes] | Path
Id = uuid.UUID | str


@dataclass(frozen=True)
class Upload:
    """One file of a multipart request."""

    field: str
    source: FileSource
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Call(Generic[T_co]):
    """One HTTP request and the parser of its successful answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T_co]
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    data: Mapping[str, str] | None = None
    upload: Upload | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: httpx.Timeout | None = None

    @property
    def retryable(self) -> bool:
        """Safe to send again: a GET, or a POST carrying an Idempotency-Key."""
        return self.method == "GET" or IDEMPOTENCY_HEADER in self.headers


class OpenUpload:
    """An upload's file, open for a request; ``rewind`` readies it for a retry."""

    def __init__(self, upload: Upload, file: IO[bytes] | bytes) -> None:
        self.upload = upload
        self.file = file
        self.start = file.tell() if not isinstance(file, bytes) and file.seekable() else None

    def rewind(self) -> None:
        """Back to where the file was when the request was first sent."""
        if self.start is not None and not isinstance(self.file, bytes):
            self.file.seek(self.start)

    def files(self) -> dict[str, tuple[str, IO[bytes] | bytes, str | None]]:
        """httpx's ``files=`` argument."""
        upload = self.upload
        name = upload.filename
        if name is None:
            source = upload.source
            name = source.name if isinstance(source, Path) else "upload"
            if not isinstance(source, Path | bytes):
                name = Path(str(getattr(source, "name", "upload"))).name
        return {upload.field: (name, self.file, upload.content_type)}


@contextmanager
def opened(upload: Upload | None) -> Iterator[OpenUpload | None]:
    """The upload's file open for the duration (a Path is opened and closed here)."""
    if upload is None:
        yield None
        return
    with ExitStack() as stack:
        source = upload.source
        file = stack.enter_context(source.open("rb")) if isinstance(source, Path) else source
        yield OpenUpload(upload, file)


def request_kwargs(call: Call[Any], files: OpenUpload | None) -> dict[str, Any]:
    """Keyword arguments for httpx's ``build_request`` (sync and async alike)."""
    kwargs: dict[str, Any] = {"params": call.params, "headers": dict(call.headers)}
    if call.json is not None:
        kwargs["json"] = call.json
    if call.content is not None:
        kwargs["content"] = call.content
    if call.data is not None:
        kwargs["data"] = dict(call.data)
    if files is not None:
        kwargs["files"] = files.files()
    if call.timeout is not None:
        kwargs["timeout"] = call.timeout
    return kwargs


# Parsers -----------------------------------------------------------------------------------


def model(schema: type[M]) -> Callable[[httpx.Response], M]:
    """Parse the body as ``schema``."""

    def parse(response: httpx.Response) -> M:
        return schema.model_validate_json(response.content)

    return parse


def models(schema: type[M]) -> Callable[[httpx.Response], list[M]]:
    """Parse the body as a JSON list of ``schema``."""
    adapter = TypeAdapter(list[schema])  # type: ignore[valid-type]

    def parse(response: httpx.Response) -> list[M]:
        parsed: list[M] = adapter.validate_json(response.content)
        return parsed

    return parse


def nothing(response: httpx.Response) -> None:
    """An answer with no body worth reading (204)."""
    return None


def secret(response: httpx.Response) -> str:
    """A SecretOut's secret."""
    return SecretOut.model_validate_json(response.content).secret


# Helpers -----------------------------------------------------------------------------------


def _params(**values: Any) -> dict[str, Any]:
    return {k: str(v) for k, v in values.items() if v is not None}


def _headers(idempotency_key: str | None, wait: int | None = None) -> dict[str, str]:
    headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key is not None else {}
    if wait is not None:
        headers["Prefer"] = f"wait={wait}"
    return headers


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _form(values: Mapping[str, Any]) -> dict[str, str]:
    """Form fields are text: strings as they are, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in _drop_none(values).items()}


# Jobs ----------------------------------------------------------------------------------------


def create_job(
    subject_image: str,
    prompt: str | None,
    fields: Mapping[str, Any],
    idempotency_key: str | None,
    wait: int | None,
) -> Call[JobOut]:
    """POST /v1/jobs with a JSON body: the subject is an http(s) URL or an s3:// URI."""
    body = _drop_none({"prompt": prompt, **fields}) | {"subject_image": subject_image}
    return Call(
        "POST", "/v1/jobs", model(JobOut), json=body, headers=_headers(idempotency_key, wait)
    )


def upload_job(
    image: FileSource,
    prompt: str | None,
    fields: Mapping[str, Any],
    filename: str | None,
    content_type: str | None,
    idempotency_key: str | None,
    wait: int | None,
) -> Call[JobOut]:
    """POST /v1/jobs as multipart: the subject image is uploaded."""
    return Call(
        "POST",
        "/v1/jobs",
        model(JobOut),
        data=_form({"prompt": prompt, **fields}),
        upload=Upload("subject_image", image, filename, content_type),
        headers=_headers(idempotency_key, wait),
    )


def get_job(job_id: Id) -> Call[JobOut]:
    """GET /v1/jobs/{id}."""
    return Call("GET", f"/v1/jobs/{job_id}", model(JobOut))


def list_jobs(
    status: str | None, batch_id: Id | None, cursor: str | None, limit: int | None
) -> Call[JobPage]:
    """GET /v1/jobs: newest first, one page."""
    params = _params(status=status, batch_id=batch_id, cursor=cursor, limit=limit)
    return Call("GET", "/v1/jobs", model(JobPage), params=params)


def cancel_job(job_id: Id) -> Call[JobOut]:
    """POST /v1/jobs/{id}/cancel."""
    return Call("POST", f"/v1/jobs/{job_id}/cancel", model(JobOut))


def retry_job(job_id: Id) -> Call[JobOut]:
    """POST /v1/jobs/{id}/retry."""
    return Call("POST", f"/v1/jobs/{job_id}/retry", model(JobOut))


# Batches -------------------------------------------------------------------------------------


def _batch_body(
    items: Sequence[Mapping[str, Any]] | None, source: str | None, settings: Mapping[str, Any]
) -> dict[str, Any]:
    return _drop_none(settings) | _drop_none(
        {"items": None if items is None else list(items), "source": source}
    )


def create_batch(
    items: Sequence[Mapping[str, Any]] | None,
    source: str | None,
    settings: Mapping[str, Any],
    idempotency_key: str | None,
) -> Call[BatchOut]:
    """POST /v1/batches with a JSON body: inline ``items`` or an s3:// ``source``."""
    return Call(
        "POST",
        "/v1/batches",
        model(BatchOut),
        json=_batch_body(items, source, settings),
        headers=_headers(idempotency_key),
        timeout=SUBMIT_TIMEOUT,
    )


def estimate_batch(
    items: Sequence[Mapping[str, Any]] | None, source: str | None, settings: Mapping[str, Any]
) -> Call[BatchEstimate]:
    """POST /v1/batches with ``dry_run``: checked like a submit, estimated, nothing stored
    (so no Idempotency-Key: there is nothing to create twice)."""
    return Call(
        "POST",
        "/v1/batches",
        model(BatchEstimate),
        json=_batch_body(items, source, settings) | {"dry_run": True},
        timeout=SUBMIT_TIMEOUT,
    )


def upload_batch(
    file: FileSource,
    file_format: str | None,
    settings: Mapping[str, Any],
    filename: str | None,
    idempotency_key: str | None,
) -> Call[BatchOut]:
    """POST /v1/batches as multipart: a CSV or JSONL catalog, streamed from disk."""
    return Call(
        "POST",
        "/v1/batches",
        model(BatchOut),
        data=_form({**settings, "format": file_format}),
        upload=Upload("file", file, filename),
        headers=_headers(idempotency_key),
        timeout=SUBMIT_TIMEOUT,
    )


def estimate_upload(
    file: FileSource, file_format: str | None, settings: Mapping[str, Any], filename: str | None
) -> Call[BatchEstimate]:
    """POST /v1/batches as multipart with the form field ``dry_run``: nothing stored."""
    return Call(
        "POST",
        "/v1/batches",
        model(BatchEstimate),
        data=_form({**settings, "format": file_format, "dry_run": True}),
        upload=Upload("file", file, filename),
        timeout=SUBMIT_TIMEOUT,
    )


def get_batch(batch_id: Id) -> Call[BatchOut]:
    """GET /v1/batches/{id}."""
    return Call("GET", f"/v1/batches/{batch_id}", model(BatchOut))


def list_batches(cursor: str | None, limit: int | None) -> Call[BatchPage]:
    """GET /v1/batches: newest first, one page."""
    return Call("GET", "/v1/batches", model(BatchPage), params=_params(cursor=cursor, limit=limit))


def update_batch(batch_id: Id, credit_budget: float | None) -> Call[BatchOut]:
    """PATCH /v1/batches/{id}: the credit budget (None: no cap)."""
    return Call(
        "PATCH", f"/v1/batches/{batch_id}", model(BatchOut), json={"credit_budget": credit_budget}
    )


def cancel_batch(batch_id: Id) -> Call[BatchOut]:
    """POST /v1/batches/{id}/cancel."""
    return Call("POST", f"/v1/batches/{batch_id}/cancel", model(BatchOut))


def retry_failed(batch_id: Id) -> Call[BatchOut]:
    """POST /v1/batches/{id}/retry-failed."""
    return Call("POST", f"/v1/batches/{batch_id}/retry-failed", model(BatchOut))


def manifest(batch_id: Id, errors: bool, file_format: ManifestFormat) -> Call[None]:
    """GET /v1/batches/{id}/results or /errors, to be streamed."""
    kind = "errors" if errors else "results"
    return Call("GET", f"/v1/batches/{batch_id}/{kind}", nothing, params={"format": file_format})


def manifest_format(path: Path | None, given: ManifestFormat | None) -> ManifestFormat:
    """The format asked for, else the one a file name suggests (.jsonl/.ndjson, else csv)."""
    if given is not None:
        return given
    suffix = path.suffix.lower() if path is not None else ""
    return "jsonl" if suffix in (".jsonl", ".ndjson") else "csv"


# Webhooks ------------------------------------------------------------------------------------


def create_webhook_endpoint(
    url: str, event_types: Sequence[str], description: str | None
) -> Call[EndpointOut]:
    """POST /v1/webhooks/endpoints."""
    body = _drop_none({"url": url, "event_types": list(event_types), "description": description})
    return Call("POST", "/v1/webhooks/endpoints", model(EndpointOut), json=body)


def list_webhook_endpoints() -> Call[list[EndpointOut]]:
    """GET /v1/webhooks/endpoints."""
    return Call("GET", "/v1/webhooks/endpoints", models(EndpointOut))


def get_webhook_endpoint(endpoint_id: Id) -> Call[EndpointOut]:
    """GET /v1/webhooks/endpoints/{id}."""
    return Call("GET", f"/v1/webhooks/endpoints/{endpoint_id}", model(EndpointOut))


def update_webhook_endpoint(endpoint_id: Id, changes: Mapping[str, Any]) -> Call[EndpointOut]:
    """PATCH /v1/webhooks/endpoints/{id}: only the fields given change."""
    body = _drop_none(changes)
    if "event_types" in body:
        body["event_types"] = list(body["event_types"])
    return Call("PATCH", f"/v1/webhooks/endpoints/{endpoint_id}", model(EndpointOut), json=body)


def delete_webhook_endpoint(endpoint_id: Id) -> Call[None]:
    """DELETE /v1/webhooks/endpoints/{id}."""
    return Call("DELETE", f"/v1/webhooks/endpoints/{endpoint_id}", nothing)


def get_webhook_endpoint_secret(endpoint_id: Id) -> Call[str]:
    """GET /v1/webhooks/endpoints/{id}/secret."""
    return Call("GET", f"/v1/webhooks/endpoints/{endpoint_id}/secret", secret)


def rotate_webhook_endpoint_secret(endpoint_id: Id) -> Call[str]:
    """POST /v1/webhooks/endpoints/{id}/rotate-secret."""
    return Call("POST", f"/v1/webhooks/endpoints/{endpoint_id}/rotate-secret", secret)


def get_callback_secret() -> Call[str]:
    """GET /v1/webhooks/callback-secret (made on first use)."""
    return Call("GET", "/v1/webhooks/callback-secret", secret)


def rotate_callback_secret() -> Call[str]:
    """POST /v1/webhooks/callback-secret/rotate."""
    return Call("POST", "/v1/webhooks/callback-secret/rotate", secret)


def list_webhook_events(
    event_type: str | None, cursor: str | None, limit: int | None
) -> Call[EventPage]:
    """GET /v1/webhooks/events: newest first, one page."""
    params = _params(type=event_type, cursor=cursor, limit=limit)
    return Call("GET", "/v1/webhooks/events", model(EventPage), params=params)


def get_webhook_event(event_id: Id) -> Call[EventOut]:
    """GET /v1/webhooks/events/{id}."""
    return Call("GET", f"/v1/webhooks/events/{event_id}", model(EventOut))


def list_webhook_deliveries(
    endpoint_id: Id | None,
    event_id: Id | None,
    status: str | None,
    cursor: str | None,
    limit: int | None,
) -> Call[DeliveryPage]:
    """GET /v1/webhooks/deliveries: newest first, one page."""
    params = _params(
        endpoint_id=endpoint_id, event_id=event_id, status=status, cursor=cursor, limit=limit
    )
    return Call("GET", "/v1/webhooks/deliveries", model(DeliveryPage), params=params)


def get_webhook_delivery(delivery_id: Id) -> Call[DeliveryOut]:
    """GET /v1/webhooks/deliveries/{id}."""
    return Call("GET", f"/v1/webhooks/deliveries/{delivery_id}", model(DeliveryOut))


def redeliver_webhook(delivery_id: Id) -> Call[DeliveryOut]:
    """POST /v1/webhooks/deliveries/{id}/redeliver."""
    return Call("POST", f"/v1/webhooks/deliveries/{delivery_id}/redeliver", model(DeliveryOut))


# Triggers ------------------------------------------------------------------------------------


def create_trigger(spec: Mapping[str, Any]) -> Call[TriggerOut]:
    """POST /v1/triggers."""
    return Call("POST", "/v1/triggers", model(TriggerOut), json=_drop_none(spec))


def list_triggers() -> Call[list[TriggerOut]]:
    """GET /v1/triggers."""
    return Call("GET", "/v1/triggers", models(TriggerOut))


def get_trigger(name: str) -> Call[TriggerOut]:
    """GET /v1/triggers/{name}."""
    return Call("GET", f"/v1/triggers/{name}", model(TriggerOut))


def delete_trigger(name: str) -> Call[None]:
    """DELETE /v1/triggers/{name}."""
    return Call("DELETE", f"/v1/triggers/{name}", nothing)


def send_trigger_event(name: str, body: bytes, headers: Mapping[str, str]) -> Call[TriggerAccepted]:
    """POST /v1/triggers/{name}: a signed event, as the sending system delivers it.

    Not idempotent by header, so never retried by the client: the API itself
    deduplicates by event id (200 with ``duplicate`` true)."""

    def parse(response: httpx.Response) -> TriggerAccepted:
        return TriggerAccepted.model_validate_json(response.content)

    return Call("POST", f"/v1/triggers/{name}", parse, content=body, headers=dict(headers))


# Schedules -----------------------------------------------------------------------------------


def create_schedule(spec: Mapping[str, Any]) -> Call[ScheduleOut]:
    """POST /v1/schedules."""
    return Call("POST", "/v1/schedules", model(ScheduleOut), json=dict(spec))


def list_schedules() -> Call[list[ScheduleOut]]:
    """GET /v1/schedules."""
    return Call("GET", "/v1/schedules", models(ScheduleOut))


def get_schedule(schedule_id: Id) -> Call[ScheduleOut]:
    """GET /v1/schedules/{id}."""
    return Call("GET", f"/v1/schedules/{schedule_id}", model(ScheduleOut))


def update_schedule(schedule_id: Id, changes: Mapping[str, Any]) -> Call[ScheduleOut]:
    """PATCH /v1/schedules/{id}: only the fields given change."""
    return Call(
        "PATCH", f"/v1/schedules/{schedule_id}", model(ScheduleOut), json=_drop_none(changes)
    )


def delete_schedule(schedule_id: Id) -> Call[None]:
    """DELETE /v1/schedules/{id}."""
    return Call("DELETE", f"/v1/schedules/{schedule_id}", nothing)


def pause_schedule(schedule_id: Id) -> Call[ScheduleOut]:
    """POST /v1/schedules/{id}/pause."""
    return Call("POST", f"/v1/schedules/{schedule_id}/pause", model(ScheduleOut))


def resume_schedule(schedule_id: Id) -> Call[ScheduleOut]:
    """POST /v1/schedules/{id}/resume."""
    return Call("POST", f"/v1/schedules/{schedule_id}/resume", model(ScheduleOut))


def run_schedule(schedule_id: Id) -> Call[RunOut]:
    """POST /v1/schedules/{id}/run."""
    return Call("POST", f"/v1/schedules/{schedule_id}/run", model(RunOut))


def list_schedule_runs(schedule_id: Id, cursor: str | None, limit: int | None) -> Call[RunPage]:
    """GET /v1/schedules/{id}/runs: newest first, one page."""
    params = _params(cursor=cursor, limit=limit)
    return Call("GET", f"/v1/schedules/{schedule_id}/runs", model(RunPage), params=params)


# Throttle ------------------------------------------------------------------------------------


def get_throttle() -> Call[ThrottleOut]:
    """GET /v1/throttle."""
    return Call("GET", "/v1/throttle", model(ThrottleOut))


def pause_throttle(reason: str | None) -> Call[ThrottleOut]:
    """POST /v1/throttle/pause (operator keys only)."""
    body = None if reason is None else {"reason": reason}
    return Call("POST", "/v1/throttle/pause", model(ThrottleOut), json=body)


def resume_throttle() -> Call[ThrottleOut]:
    """POST /v1/throttle/resume (operator keys only)."""
    return Call("POST", "/v1/throttle/resume", model(ThrottleOut))
