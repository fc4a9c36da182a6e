"""/dashboard: server-rendered pages over the same services as the API.

Logged in with an API key (exchanged for a session cookie); a tenant sees only its own
batches and jobs. No front-end build: Jinja templates, a little inline CSS, and a dozen
lines of plain JavaScript that refresh progress bars from a JSON endpoint.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from api.batches import ManifestFormat, manifest_response
from api.deps import CurrentStorage, DbSession
from relightq.batches import service as batches
from relightq.batches.schemas import BatchOut, BatchStatus
from relightq.credits.amounts import as_text
from relightq.errors import NotFound
from relightq.jobs import service as jobs
from relightq.jobs.models import JobStatus, UpstreamState
from relightq.logs import note
from relightq.settings import get_settings
from relightq.storage import Storage
from relightq.tenants import sessions
from relightq.tenants.ratelimit import check_rate
from relightq.tenants.sessions import LoggedIn
from relightq.throttle.schemas import throttle_view
from relightq.throttle.service import MANUAL, get_fleet, pause_fleet, resume_fleet
from relightq.webhooks import service as webhooks

COOKIE = "relightq_session"
GALLERY_PAGE = 60
router = APIRouter(prefix="/dashboard", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return "done"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _utc(moment: datetime | None) -> str:
    # Every time on the dashboard: date, time and zone, whatever zone the value came in.
    if moment is None:
        return "—"
    if moment.tzinfo is None:  # stored as UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def batch_state(view: BatchOut) -> tuple[str, str]:
    """What the dashboard calls a batch, and its CSS status class.

    The API's ``completed`` means only that every item is final: shown as such, a batch
    whose items all failed looked like a success. So a completed batch is "failed" when
    items failed and none succeeded, "partly failed" when some of each, "cancelled" when
    its items were all cancelled; the live refresh takes the same words from here.
    """
    counts = view.counts
    if view.status != BatchStatus.COMPLETED:
        label = view.status.value
    elif counts.failed:
        label = "partly failed" if counts.succeeded else "failed"
    elif counts.cancelled and not counts.succeeded:
        label = "cancelled"
    else:
        label = "completed"
    return label, label.replace(" ", "-")


templates.env.filters["duration"] = _duration
templates.env.filters["utc"] = _utc
templates.env.filters["batch_state"] = batch_state
# Credits are exact decimals: shown as they are (0.333, 12), never rounded to places.
templates.env.filters["credits"] = as_text


def logged_in(request: Request, db: DbSession) -> LoggedIn:
    """The session's tenant, counted against its rate limit; or a redirect to log in."""
    who = sessions.current(db, request.cookies.get(COOKIE))
    if who is None:
        raise HTTPException(303, "log in first", headers={"Location": "/dashboard/login"})
    # A session stands for its tenant, not for the key it was opened with (that key is not
    # kept), so pages count against RATE_LIMIT per tenant: every browser session of one
    # tenant shares it, apart from the keys' own limits, so opening more sessions or tabs
    # does not buy more requests.
    check_rate(f"dashboard-session:{who.tenant.id}")
    note(tenant_id=who.tenant.id)
    return who


User = Annotated[LoggedIn, Depends(logged_in)]


def _check_csrf(user: LoggedIn, token: str) -> None:
    if not hmac.compare_digest(user.csrf_token, token):
        raise HTTPException(403, "the form is stale or not from this dashboard; reload it")


def _page(request: Request, name: str, user: LoggedIn | None, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {
            "tenant": user.tenant if user else None,
            "csrf_token": user.csrf_token if user else "",
            **context,
        },
    )


def _image_url(uri: str, storage: Storage) -> str:
    return storage.url(uri) if uri.startswith("s3://") else uri


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html", None)


@router.post("/login", response_model=None)
def login(request: Request, db: DbSession, api_key: Annotated[str, Form()] = "") -> Response:
    token = sessions.log_in(db, api_key.strip())
    if token is None:
        page = _page(request, "login.html", None, error="That API key is not valid.")
        page.status_code = 401
        return page
    response = RedirectResponse("/dashboard/batches", 303)
    secure = request.url.scheme == "https"
    response.set_cookie(
        COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/dashboard"
    )
    return response


@router.post("/logout")
def logout(
    request: Request, user: User, db: DbSession, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    _check_csrf(user, csrf_token)
    sessions.log_out(db, request.cookies.get(COOKIE))
    response = RedirectResponse("/dashboard/login", 303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


@router.get("", include_in_schema=False)
@router.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    return RedirectResponse("/dashboard/batches", 303)


@router.get("/batches", response_class=HTMLResponse)
def batch_list(
    request: Request, user: User, db: DbSession, cursor: str | None = None
) -> HTMLResponse:
    # Counted before listing: a batch committed in between is listed and the count can
    # only be lower, so the page never misses one (a created_at comparison would: a
    # 100k-row upload gets its created_at long before it commits).
    known = batches.count_batches(db, user.tenant.id) if cursor is None else None
    found, next_cursor = batches.list_batches(db, user.tenant.id, cursor=cursor, limit=50)
    views = batches.batch_views(db, found)
    return _page(
        request,
        "batches.html",
        user,
        batches=views,
        next_cursor=next_cursor,
        # Only the first page watches for newer batches: it shows the newest.
        known_batches=known,
        section="batches",
    )


@router.get("/progress.json")
def progress(user: User, db: DbSession, ids: str = "", known: int | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {}
    if known is not None:
        # How many batches the list page has not shown: submitted since it loaded.
        answer["newer_batches"] = max(0, batches.count_batches(db, user.tenant.id) - known)
    wanted: dict[uuid.UUID, str] = {}
    for raw in ids.split(",")[:100]:
        with suppress(ValueError):
            wanted.setdefault(uuid.UUID(raw), raw)
    found = batches.get_batches(db, user.tenant.id, list(wanted))
    for view in batches.batch_views(db, found):
        state, state_class = batch_state(view)
        answer[wanted[view.id]] = {
            "progress": view.progress,
            "status": view.status.value,
            "state": state,
            "state_class": state_class,
            "succeeded": view.counts.succeeded,
            "failed": view.counts.failed,
            "waiting": view.counts.waiting,
            "queued": view.counts.queued + view.counts.running,
            "credits": as_text(view.credits_used),
            "credits_saved": as_text(view.credits_saved),
            "reused": view.reused,
            # A budget spent or a monthly cap reached while the page is open says so too.
            "waiting_reason": view.waiting_reason or "",
            "eta": _duration(view.eta_seconds),
        }
    return answer


ERROR_TITLES = {403: "Not allowed", 404: "Not found", 413: "Too large", 429: "Slow down"}


def error_page(
    request: Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    """An error under /dashboard as a page, not the API's JSON (a malformed id: not found);
    ``headers`` such as Retry-After are kept."""
    if status == 422:
        status, message = 404, "Nothing here: the address is not one the dashboard made."
    title = ERROR_TITLES.get(status, "Something went wrong")
    page = templates.TemplateResponse(
        request,
        "error.html",
        {"tenant": None, "csrf_token": "", "title": title, "message": message},
        status_code=status,
        headers=dict(headers or {}),
    )
    return page


def _not_found(request: Request, user: LoggedIn, what: str) -> HTMLResponse:
    page = _page(request, "not_found.html", user, what=what)
    page.status_code = 404
    return page


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
def batch_page(
    request: Request,
    batch_id: uuid.UUID,
    user: User,
    db: DbSession,
    storage: CurrentStorage,
    after: Annotated[int, Query(ge=0)] = 0,
) -> HTMLResponse:
    try:
        batch = batches.get_batch(db, user.tenant.id, batch_id)
    except NotFound:
        return _not_found(request, user, "Batch")
    rows = batches.gallery(db, batch.id, after, GALLERY_PAGE)
    items = [
        {
            "id": job.id,
            "row": job.batch_row,
            "external_id": job.external_id,
            "status": job.status,
            "before": _image_url(job.subject_image, storage),
            "after": storage.url(job.outputs[0].uri) if job.outputs else None,
        }
        for job in rows
    ]
    next_after = rows[-1].batch_row if len(rows) == GALLERY_PAGE else None
    view = batches.batch_view(db, batch)
    return _page(
        request,
        "batch.html",
        user,
        batch=view,
        items=items,
        next_after=next_after,
        section="batches",
    )


@router.post("/batches/{batch_id}/retry-failed")
def batch_retry(
    batch_id: uuid.UUID, user: User, db: DbSession, csrf_token: Annotated[str, Form()] = ""
) -> RedirectResponse:
    _check_csrf(user, csrf_token)
    batches.retry_failed(db, user.tenant.id, batch_id)
    return RedirectResponse(f"/dashboard/batches/{batch_id}", 303)


@router.get("/batches/{batch_id}/{kind}.csv")
def batch_manifest(
    batch_id: uuid.UUID, kind: str, user: User, db: DbSession, storage: CurrentStorage
) -> StreamingResponse:
    if kind not in ("results", "errors"):
        raise HTTPException(404, "no such manifest")
    return manifest_response(
        batch_id, user.tenant, db, storage, ManifestFormat.CSV, errors_only=kind == "errors"
    )


@router.get("/jobs", response_class=HTMLResponse)
def job_list(
    request: Request,
    user: User,
    db: DbSession,
    status: str = "",
    cursor: str | None = None,
) -> HTMLResponse:
    wanted = JobStatus(status) if status in {s.value for s in JobStatus} else None
    found, next_cursor = jobs.list_jobs(db, user.tenant.id, wanted, None, cursor, 50)
    return _page(
        request,
        "jobs.html",
        user,
        jobs=found,
        status=status,
        next_cursor=next_cursor,
        section="jobs",
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request, job_id: uuid.UUID, user: User, db: DbSession, storage: CurrentStorage
) -> HTMLResponse:
    try:
        job = jobs.get_job(db, user.tenant.id, job_id)
    except NotFound:
        return _not_found(request, user, "Job")
    deliveries = webhooks.job_deliveries(db, user.tenant.id, job.id)
    return _page(
        request,
        "job.html",
        user,
        job=jobs.job_view(job, storage),
        before=_image_url(job.subject_image, storage),
        deliveries=deliveries,
        section="jobs",
    )


@router.post("/jobs/{job_id}/retry")
def job_retry(
    job_id: uuid.UUID, user: User, db: DbSession, csrf_token: Annotated[str, Form()] = ""
) -> RedirectResponse:
    _check_csrf(user, csrf_token)
    jobs.retry_job(db, user.tenant.id, job_id)
    return RedirectResponse(f"/dashboard/jobs/{job_id}", 303)


@router.get("/throttle", response_class=HTMLResponse)
def throttle_page(request: Request, user: User, db: DbSession) -> HTMLResponse:
    # The fleet's state as GET /v1/throttle shows it; the low-balance warning lives with
    # the reported balance in PostgreSQL (relightq.credits.balance), not in the fleet.
    state = throttle_view(get_fleet().state(), get_settings())
    upstream = db.get(UpstreamState, 1)
    low_since = upstream.credits_low_since if upstream is not None else None
    # With the threshold unset nothing clears the mark, so only a threshold in force warns.
    warn_below = state.limits.credit_warn_below
    low_balance = low_since if warn_below is not None else None
    return _page(
        request,
        "throttle.html",
        user,
        state=state,
        low_balance_since=low_balance,
        warn_below=warn_below,
        section="throttle",
    )


@router.post("/throttle/{action}")
async def throttle_action(
    action: str,
    user: User,
    csrf_token: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> RedirectResponse:
    _check_csrf(user, csrf_token)
    if not user.tenant.is_operator:
        raise HTTPException(403, "only operators can pause or resume the fleet")
    if action == "pause":
        text = reason.strip()[:500] or f"paused from the dashboard by {user.tenant.name}"
        await run_in_threadpool(pause_fleet, get_fleet(), MANUAL, text, manual=True)
    elif action == "resume":
        await run_in_threadpool(resume_fleet, get_fleet(), manual=True)
    else:
        raise HTTPException(404, "no such action")
    return RedirectResponse("/dashboard/throttle", 303)
