"""The synchronous client: :mod:`relightq.client.calls` sent with ``httpx.Client``."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx
from tenacity import Retrying

from relightq.batches.schemas import BatchEstimate, BatchOut, BatchPage
from relightq.client import calls
from relightq.client.calls import (
    DEFAULT_TIMEOUT,
    Call,
    FileSource,
    Id,
    ManifestFormat,
    OpenUpload,
    opened,
    request_kwargs,
)
from relightq.client.common import (
    DEFAULT_API_URL,
    USER_AGENT,
    Page,
    auth_headers,
    batch_is_final,
    job_is_final,
    partial_path,
)
from relightq.client.errors import error_from_response
from relightq.client.retry import RetryPolicy
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
)

T = TypeVar("T")


class RelightqClient:
    """A synchronous client of the relightq API.

    ``base_url`` and ``api_key`` default to ``RELIGHTQ_API_URL`` and ``RELIGHTQ_API_KEY``.
    GETs and POSTs that carry an ``idempotency_key`` are retried as ``retry`` says
    (:class:`RetryPolicy`: 429/502/503/504 and transport errors, Retry-After honoured);
    every other request is sent once. An error answer raises
    :class:`~relightq.client.RelightqAPIError`; a network failure that is not retried
    (or still fails after the retries) raises ``httpx.TransportError``.

    Use it as a context manager, or call :meth:`close`, to release its connections.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        user_agent: str = USER_AGENT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = base_url or os.environ.get("RELIGHTQ_API_URL") or DEFAULT_API_URL
        key = api_key if api_key is not None else os.environ.get("RELIGHTQ_API_KEY", "")
        self.base_url = url
        self.retry = retry if retry is not None else RetryPolicy()
        self._http = httpx.Client(
            base_url=url,
            headers=auth_headers(key, user_agent),
            timeout=timeout,
            transport=transport,
        )
        self._owns_http = True

    # Lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> RelightqClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (a client made by :meth:`with_retry` leaves them open)."""
        if self._owns_http:
            self._http.close()

    def with_retry(self, retry: RetryPolicy) -> RelightqClient:
        """The same client (same connections) with another retry policy."""
        clone = copy.copy(self)
        clone.retry = retry
        clone._owns_http = False
        return clone

    # Sending -----------------------------------------------------------------------------

    def _attempt(self, call: Call[Any], files: OpenUpload | None, stream: bool) -> httpx.Response:
        if files is not None:
            files.rewind()
        request = self._http.build_request(call.method, call.path, **request_kwargs(call, files))
        response = self._http.send(request, stream=stream)
        if response.is_success:
            return response
        try:
            response.read()
        finally:
            response.close()
        raise error_from_response(response)

    def _send(self, call: Call[Any], files: OpenUpload | None, stream: bool) -> httpx.Response:
        if not call.retryable or self.retry.max_attempts == 1:
            return self._attempt(call, files, stream)
        for attempt in Retrying(**self.retry.tenacity_kwargs()):
            with attempt:
                response = self._attempt(call, files, stream)
        self.retry.recovered(attempt.retry_state)
        return response

    def _run(self, call: Call[T]) -> T:
        with opened(call.upload) as files:
            response = self._send(call, files, stream=False)
        return call.parse(response)

    @contextmanager
    def _stream(self, call: Call[Any]) -> Iterator[httpx.Response]:
        response = self._send(call, None, stream=True)
        try:
            yield response
        finally:
            response.close()

    def _paginate(self, page: Callable[[str | None], Call[Page[T]]]) -> Iterator[T]:
        cursor: str | None = None
        while True:
            current = self._run(page(cursor))
            yield from current.items
            if not current.next_cursor:
                return
            cursor = current.next_cursor

    # Jobs --------------------------------------------------------------------------------

    def create_job(
        self,
        subject_image: str,
        prompt: str | None = None,
        *,
        idempotency_key: str | None = None,
        wait: int | None = None,
        **fields: Any,
    ) -> JobOut:
        """Submit a job for an image at an http(s) URL or an s3:// URI.

        ``fields`` are the other job fields (``external_id``, ``metadata``,
        ``callback_url``, ``priority``, ``light_source``, ``width`` ...). With
        ``idempotency_key`` a retry (automatic or yours) creates nothing more and gets the
        first answer. With ``wait`` (seconds, up to 60) the API answers once the job is
        final, or with the job as it is then.
        """
        return self._run(calls.create_job(subject_image, prompt, fields, idempotency_key, wait))

    def upload_job(
        self,
        image: FileSource,
        prompt: str | None = None,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        idempotency_key: str | None = None,
        wait: int | None = None,
        **fields: Any,
    ) -> JobOut:
        """Submit a job uploading the image itself (bytes, an open binary file or a path).

        As :meth:`create_job` otherwise; the API caps uploads (RELIGHTQ_MAX_UPLOAD_BYTES).
        """
        call = calls.upload_job(
            image, prompt, fields, filename, content_type, idempotency_key, wait
        )
        return self._run(call)

    def get_job(self, job_id: Id) -> JobOut:
        """A job, with presigned URLs of its outputs."""
        return self._run(calls.get_job(job_id))

    def list_jobs(
        self,
        *,
        status: str | None = None,
        batch_id: Id | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> JobPage:
        """One page of your jobs, newest first; pass ``next_cursor`` as ``cursor``."""
        return self._run(calls.list_jobs(status, batch_id, cursor, limit))

    def iter_jobs(
        self, *, status: str | None = None, batch_id: Id | None = None, page_size: int = 100
    ) -> Iterator[JobOut]:
        """Every job (of a status, of a batch), newest first, page after page."""
        return self._paginate(lambda c: calls.list_jobs(status, batch_id, c, page_size))

    def cancel_job(self, job_id: Id) -> JobOut:
        """Cancel a job not yet running (a running one is a 409: it will finish)."""
        return self._run(calls.cancel_job(job_id))

    def retry_job(self, job_id: Id) -> JobOut:
        """Run a failed or cancelled job again, with fresh attempts."""
        return self._run(calls.retry_job(job_id))

    def wait_for_job(self, job_id: Id, *, timeout: float = 600, interval: float = 1) -> JobOut:
        """Poll a job until it succeeded, failed or was cancelled; TimeoutError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job_is_final(job):
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:g} s")
            time.sleep(interval)

    # Batches -----------------------------------------------------------------------------

    @overload
    def create_batch(
        self,
        *,
        items: Sequence[Mapping[str, Any]] | None = None,
        source: str | None = None,
        idempotency_key: str | None = None,
        dry_run: Literal[False] = False,
        **settings: Any,
    ) -> BatchOut: ...

    @overload
    def create_batch(
        self,
        *,
        items: Sequence[Mapping[str, Any]] | None = None,
        source: str | None = None,
        idempotency_key: str | None = None,
        dry_run: Literal[True],
        **settings: Any,
    ) -> BatchEstimate: ...

    def create_batch(
        self,
        *,
        items: Sequence[Mapping[str, Any]] | None = None,
        source: str | None = None,
        idempotency_key: str | None = None,
        dry_run: bool = False,
        **settings: Any,
    ) -> BatchOut | BatchEstimate:
        """Submit a batch as JSON: ``items`` (each like a job) or an s3:// ``source``
        prefix whose images become the items.

        ``settings`` are the batch fields: ``defaults`` (job fields for every item),
        ``name``, ``output_prefix``, ``key_template``, ``credit_budget``, ``reuse``,
        ``skip_invalid``, ``metadata``, ``callback_url``.

        With ``dry_run=True`` the batch is checked the same way but nothing is stored:
        the answer is a :class:`BatchEstimate` (items, predicted reuse, credits, time).
        """
        if dry_run:
            return self._run(calls.estimate_batch(items, source, settings))
        return self._run(calls.create_batch(items, source, settings, idempotency_key))

    @overload
    def upload_batch(
        self,
        file: FileSource,
        *,
        format: ManifestFormat | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        dry_run: Literal[False] = False,
        **settings: Any,
    ) -> BatchOut: ...

    @overload
    def upload_batch(
        self,
        file: FileSource,
        *,
        format: ManifestFormat | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        dry_run: Literal[True],
        **settings: Any,
    ) -> BatchEstimate: ...

    def upload_batch(
        self,
        file: FileSource,
        *,
        format: ManifestFormat | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        dry_run: bool = False,
        **settings: Any,
    ) -> BatchOut | BatchEstimate:
        """Submit a CSV or JSONL catalog (bytes, an open binary file or a path), streamed.

        ``format`` is needed only when the file name does not end in .csv or .jsonl;
        ``settings`` and ``dry_run`` as for :meth:`create_batch`.
        """
        if dry_run:
            return self._run(calls.estimate_upload(file, format, settings, filename))
        return self._run(calls.upload_batch(file, format, settings, filename, idempotency_key))

    def get_batch(self, batch_id: Id) -> BatchOut:
        """A batch: counts, progress, credits, ETA."""
        return self._run(calls.get_batch(batch_id))

    def list_batches(self, *, cursor: str | None = None, limit: int | None = None) -> BatchPage:
        """One page of your batches, newest first."""
        return self._run(calls.list_batches(cursor, limit))

    def iter_batches(self, *, page_size: int = 100) -> Iterator[BatchOut]:
        """Every batch, newest first, page after page."""
        return self._paginate(lambda c: calls.list_batches(c, page_size))

    def update_batch(self, batch_id: Id, *, credit_budget: float | None) -> BatchOut:
        """Change a batch's credit budget (None: no cap); raising it wakes the batch."""
        return self._run(calls.update_batch(batch_id, credit_budget))

    def cancel_batch(self, batch_id: Id) -> BatchOut:
        """Cancel a batch: items not yet running never run; running ones finish."""
        return self._run(calls.cancel_batch(batch_id))

    def retry_failed(self, batch_id: Id) -> BatchOut:
        """Run a batch's failed items again, with fresh attempts."""
        return self._run(calls.retry_failed(batch_id))

    def wait_for_batch(
        self, batch_id: Id, *, timeout: float = 3600, interval: float = 2
    ) -> BatchOut:
        """Poll a batch until it is completed or cancelled; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            batch = self.get_batch(batch_id)
            if batch_is_final(batch):
                return batch
            if time.monotonic() >= deadline:
                raise TimeoutError(f"batch {batch_id} is still {batch.status} after {timeout:g} s")
            time.sleep(interval)

    def iter_manifest_bytes(
        self, batch_id: Id, *, errors: bool = False, format: ManifestFormat = "jsonl"
    ) -> Iterator[bytes]:
        """A batch's results (or, with ``errors``, its errors) manifest as it streams in."""
        with self._stream(calls.manifest(batch_id, errors, format)) as response:
            yield from response.iter_bytes()

    def iter_manifest(self, batch_id: Id, *, errors: bool = False) -> Iterator[dict[str, Any]]:
        """A manifest's rows (JSONL), one dict per item, never the whole file in memory."""
        with self._stream(calls.manifest(batch_id, errors, "jsonl")) as response:
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def download_manifest(
        self,
        batch_id: Id,
        path: str | os.PathLike[str],
        *,
        errors: bool = False,
        format: ManifestFormat | None = None,
    ) -> Path:
        """Stream a manifest to ``path`` (format from its extension unless given: .jsonl
        or .ndjson, else csv) by way of ``path.part``: a broken download never looks whole.
        """
        target = Path(path)
        fmt = calls.manifest_format(target, format)
        partial = partial_path(target)
        with self._stream(calls.manifest(batch_id, errors, fmt)) as response:
            try:
                with partial.open("wb") as file:
                    for chunk in response.iter_bytes():
                        file.write(chunk)
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
        return target

    # Webhooks ----------------------------------------------------------------------------

    def create_webhook_endpoint(
        self, url: str, *, event_types: Sequence[str] = (), description: str | None = None
    ) -> EndpointOut:
        """Register a URL for some event types (none: all); the answer has its secret."""
        return self._run(calls.create_webhook_endpoint(url, event_types, description))

    def list_webhook_endpoints(self) -> list[EndpointOut]:
        """Your endpoints, oldest first (without secrets)."""
        return self._run(calls.list_webhook_endpoints())

    def get_webhook_endpoint(self, endpoint_id: Id) -> EndpointOut:
        """One endpoint: whether it is enabled and, if not, why."""
        return self._run(calls.get_webhook_endpoint(endpoint_id))

    def update_webhook_endpoint(
        self,
        endpoint_id: Id,
        *,
        url: str | None = None,
        event_types: Sequence[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> EndpointOut:
        """Change an endpoint; only what is given changes (``enabled=True`` re-enables)."""
        changes = {
            "url": url,
            "event_types": event_types,
            "description": description,
            "enabled": enabled,
        }
        return self._run(calls.update_webhook_endpoint(endpoint_id, changes))

    def delete_webhook_endpoint(self, endpoint_id: Id) -> None:
        """Remove an endpoint and its pending deliveries."""
        self._run(calls.delete_webhook_endpoint(endpoint_id))

    def get_webhook_endpoint_secret(self, endpoint_id: Id) -> str:
        """An endpoint's ``whsec_`` signing secret."""
        return self._run(calls.get_webhook_endpoint_secret(endpoint_id))

    def rotate_webhook_endpoint_secret(self, endpoint_id: Id) -> str:
        """A new signing secret for an endpoint; the old one stops at once."""
        return self._run(calls.rotate_webhook_endpoint_secret(endpoint_id))

    def get_callback_secret(self) -> str:
        """The secret deliveries to your ``callback_url``s are signed with."""
        return self._run(calls.get_callback_secret())

    def rotate_callback_secret(self) -> str:
        """A new callback_url secret."""
        return self._run(calls.rotate_callback_secret())

    def list_webhook_events(
        self, *, type: str | None = None, cursor: str | None = None, limit: int | None = None
    ) -> EventPage:
        """One page of events, newest first, each with its deliveries."""
        return self._run(calls.list_webhook_events(type, cursor, limit))

    def iter_webhook_events(
        self, *, type: str | None = None, page_size: int = 100
    ) -> Iterator[EventOut]:
        """Every event (of a type), newest first."""
        return self._paginate(lambda c: calls.list_webhook_events(type, c, page_size))

    def get_webhook_event(self, event_id: Id) -> EventOut:
        """One event: its payload and every delivery."""
        return self._run(calls.get_webhook_event(event_id))

    def list_webhook_deliveries(
        self,
        *,
        endpoint_id: Id | None = None,
        event_id: Id | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> DeliveryPage:
        """One page of deliveries, newest first, each with every try."""
        call = calls.list_webhook_deliveries(endpoint_id, event_id, status, cursor, limit)
        return self._run(call)

    def iter_webhook_deliveries(
        self,
        *,
        endpoint_id: Id | None = None,
        event_id: Id | None = None,
        status: str | None = None,
        page_size: int = 100,
    ) -> Iterator[DeliveryOut]:
        """Every delivery (to an endpoint, of an event, in a status), newest first."""
        return self._paginate(
            lambda c: calls.list_webhook_deliveries(endpoint_id, event_id, status, c, page_size)
        )

    def get_webhook_delivery(self, delivery_id: Id) -> DeliveryOut:
        """One delivery: status, next try, every attempt."""
        return self._run(calls.get_webhook_delivery(delivery_id))

    def redeliver_webhook(self, delivery_id: Id) -> DeliveryOut:
        """Send a delivery again (same webhook-id), with a fresh round of retries."""
        return self._run(calls.redeliver_webhook(delivery_id))

    # Triggers ----------------------------------------------------------------------------

    def create_trigger(
        self,
        name: str,
        *,
        scheme: str,
        mapping: Mapping[str, Any],
        job: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TriggerOut:
        """Define a trigger at /v1/triggers/{name}; the answer shows its secret once.

        ``options``: ``secret``, ``signature_header``, ``event_id_header``,
        ``timestamp_header``, ``tolerance_seconds``.
        """
        spec = {"name": name, "scheme": scheme, "mapping": dict(mapping), "job": job, **options}
        return self._run(calls.create_trigger(spec))

    def list_triggers(self) -> list[TriggerOut]:
        """Your triggers, by name (without secrets)."""
        return self._run(calls.list_triggers())

    def get_trigger(self, name: str) -> TriggerOut:
        """One trigger."""
        return self._run(calls.get_trigger(name))

    def delete_trigger(self, name: str) -> None:
        """Remove a trigger; events sent to it afterwards get 404."""
        self._run(calls.delete_trigger(name))

    def send_trigger_event(
        self, name: str, body: bytes, headers: Mapping[str, str]
    ) -> TriggerAccepted:
        """Deliver a signed event to a trigger as its sender would (the signature, not
        the API key, authenticates it); never retried by the client."""
        return self._run(calls.send_trigger_event(name, body, headers))

    # Schedules ---------------------------------------------------------------------------

    def create_schedule(
        self,
        name: str,
        *,
        cron: str,
        action: Mapping[str, Any],
        timezone: str = "UTC",
        overlap: str = "skip",
        enabled: bool = True,
    ) -> ScheduleOut:
        """A cron schedule (five fields, read in ``timezone``) running ``action``:
        ``{"type": "rerun_batch", "batch_id", "overrides"}``, ``{"type":
        "reprocess_prefix", "source", "defaults", ...}`` or ``{"type": "retry_failed",
        "window_hours", "batch_id"}``."""
        spec = {
            "name": name,
            "cron": cron,
            "timezone": timezone,
            "action": dict(action),
            "overlap": overlap,
            "enabled": enabled,
        }
        return self._run(calls.create_schedule(spec))

    def list_schedules(self) -> list[ScheduleOut]:
        """Your schedules, oldest first, with next run time and latest run."""
        return self._run(calls.list_schedules())

    def get_schedule(self, schedule_id: Id) -> ScheduleOut:
        """One schedule."""
        return self._run(calls.get_schedule(schedule_id))

    def update_schedule(
        self,
        schedule_id: Id,
        *,
        name: str | None = None,
        cron: str | None = None,
        timezone: str | None = None,
        action: Mapping[str, Any] | None = None,
        overlap: str | None = None,
    ) -> ScheduleOut:
        """Change a schedule in place (its history stays); only what is given changes."""
        changes = {
            "name": name,
            "cron": cron,
            "timezone": timezone,
            "action": None if action is None else dict(action),
            "overlap": overlap,
        }
        return self._run(calls.update_schedule(schedule_id, changes))

    def delete_schedule(self, schedule_id: Id) -> None:
        """Delete a schedule and its history (its batches stay)."""
        self._run(calls.delete_schedule(schedule_id))

    def pause_schedule(self, schedule_id: Id) -> ScheduleOut:
        """Stop a schedule firing until resumed."""
        return self._run(calls.pause_schedule(schedule_id))

    def resume_schedule(self, schedule_id: Id) -> ScheduleOut:
        """Fire again from the next cron time on."""
        return self._run(calls.resume_schedule(schedule_id))

    def run_schedule(self, schedule_id: Id) -> RunOut:
        """Run a schedule's action now (its overlap policy applies)."""
        return self._run(calls.run_schedule(schedule_id))

    def list_schedule_runs(
        self, schedule_id: Id, *, cursor: str | None = None, limit: int | None = None
    ) -> RunPage:
        """One page of a schedule's runs, newest first."""
        return self._run(calls.list_schedule_runs(schedule_id, cursor, limit))

    def iter_schedule_runs(self, schedule_id: Id, *, page_size: int = 100) -> Iterator[RunOut]:
        """Every run of a schedule, newest first."""
        return self._paginate(lambda c: calls.list_schedule_runs(schedule_id, c, page_size))

    # Throttle ----------------------------------------------------------------------------

    def get_throttle(self) -> ThrottleOut:
        """The fleet: running or paused (and why), credits, calls in flight."""
        return self._run(calls.get_throttle())

    def pause_throttle(self, reason: str | None = None) -> ThrottleOut:
        """Stop new upstream calls fleet-wide (operator keys only; else a 403)."""
        return self._run(calls.pause_throttle(reason))

    def resume_throttle(self) -> ThrottleOut:
        """Resume upstream calls and wake the jobs that waited (operator keys only)."""
        return self._run(calls.resume_throttle())
