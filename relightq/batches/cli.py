"""`relightq batch ...`: submit catalogs, follow them and fetch their manifests.

A pure HTTP client of the relightq API (httpx), never the database: it runs from any
machine that has an API key, and sees exactly what every other client sees.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column, Table
from rich.text import Text
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from relightq.batches.schemas import BatchOut, BatchPage, BatchStatus

DEFAULT_API_URL = "http://127.0.0.1:8000"
FINAL_STATUSES = (BatchStatus.COMPLETED, BatchStatus.CANCELLED)
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# The API validates and stores every row of an upload before it answers: allow for that.
SUBMIT_TIMEOUT = httpx.Timeout(900.0, connect=10.0)
INTERRUPTED = 130  # what shells report for a command stopped by Ctrl-C
# sysexits.h EX_TEMPFAIL, "try again later": a watch that gave up on an outage, distinct from
# 1 (cancelled, or an error the API answered) since the batch's fate is still unknown.
GAVE_UP = 75
# While watching, answers that mean "come back later": rate limited, the API's own 503
# (database or Redis down), and a gateway's 502/504 while the API behind it restarts.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Transport failures of an API that is restarting or overloaded; not e.g. a bad URL scheme.
TRANSIENT_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
# Retry-After is honoured up to this: a watch that goes silent for longer looks hung.
RETRY_AFTER_MAX = 60.0
# ...and from this, so a server answering Retry-After: 0 is not hammered in a loop.
RETRY_AFTER_MIN = 0.5
# Backoff when no Retry-After is given (a refused connection): 1, 2, 4 ... 30 s, jittered.
FALLBACK_WAIT = wait_exponential_jitter(max=30)
GIVE_UP_AFTER = 600.0

batch_app = typer.Typer(
    help="Submit catalogs as batches, follow them and download their manifests "
    "(a client of the relightq API).",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # unwrapped: errors are grepped


class FileFormat(StrEnum):
    """How an uploaded catalog or a downloaded manifest is written."""

    CSV = "csv"
    JSONL = "jsonl"


# Options every command takes; keyword-only in signatures so --api-key can be required.
ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar="RELIGHTQ_API_URL", help="Base URL of the relightq API.")
]
ApiKey = Annotated[
    str,
    typer.Option("--api-key", envvar="RELIGHTQ_API_KEY", help="Your relightq API key."),
]
# Paging through a listing, as the API pages (next_cursor).
PageLimit = Annotated[int, typer.Option(min=1, max=200, help="How many to show.")]
PageCursor = Annotated[
    str | None, typer.Option(help="Where to go on from (printed under a full page).")
]
BatchId = Annotated[uuid.UUID, typer.Argument(help="The batch id.", show_default=False)]
Watch = Annotated[
    bool, typer.Option("--watch", help="Follow the batch with a progress bar until it is done.")
]
Interval = Annotated[float, typer.Option(min=0.1, help="Seconds between polls while watching.")]
GiveUpAfter = Annotated[
    float,
    typer.Option(
        min=0,
        help="While watching, keep retrying (503, 429, connection errors) for this many "
        "seconds of a continuous outage, then exit 75; 0 waits for the API forever.",
    ),
]


# HTTP helpers ----------------------------------------------------------------------------


def say(markup: str) -> None:
    """One message line; left unwrapped so the commands it suggests stay copy-pasteable."""
    console.print(markup, soft_wrap=True, highlight=False)


def fail(message: str) -> NoReturn:
    """Print one error line in red and exit 1 (no traceback: the message says it all)."""
    err_console.print(Text.assemble(("Error: ", "bold red"), (message, "red")))
    raise typer.Exit(1)


@contextmanager
def api_client(api_url: str, api_key: str) -> Iterator[httpx.Client]:
    """An authenticated client; a network failure becomes a clean error and exit 1."""
    headers = {"Authorization": f"Bearer {api_key}", "User-Agent": "relightq-cli"}
    try:
        with httpx.Client(base_url=api_url, headers=headers, timeout=TIMEOUT) as client:
            yield client
    except httpx.TransportError as exc:
        fail(f"could not talk to the relightq API at {api_url}: {type(exc).__name__} {exc}")


def checked(response: httpx.Response) -> httpx.Response:
    """The response if it succeeded; else print the API's error and every field problem, exit 1.

    Errors look like ``{"error": {"code", "message", "fields": [{"field", "message",
    "allowed"}]}}``; each field problem is printed so a bad row can be fixed at once.
    """
    if response.is_success:
        return response
    response.read()  # a streamed response has not read its body yet
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        fail(f"the API answered HTTP {response.status_code}: {response.text[:500]}")
    message = f"{error.get('message') or 'request failed'} (HTTP {response.status_code})"
    err_console.print(Text.assemble(("Error: ", "bold red"), (message, "red")))
    for problem in error.get("fields") or []:
        err_console.print(
            Text.assemble(
                "  ",
                (str(problem.get("field")), "bold red"),
                (f": {problem.get('message')}", "red"),
            )
        )
        if problem.get("allowed"):
            err_console.print(Text(f"      allowed: {problem['allowed']}", style="dim"))
    raise typer.Exit(1)


def fetch(client: httpx.Client, batch_id: uuid.UUID) -> BatchOut:
    """GET one batch."""
    return BatchOut.model_validate_json(checked(client.get(f"/v1/batches/{batch_id}")).content)


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: the fallback backoff applies
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Unavailable(Exception):
    """The API answered "come back later" (RETRY_STATUSES), maybe saying when."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None  # a gateway's HTML page, say
        code = error.get("code") if isinstance(error, dict) else None
        self.code = code if isinstance(code, str) else None
        super().__init__(
            f"API answered {self.status_code}" + (f" {self.code}" if self.code else "")
        )


def _fetch_once(client: httpx.Client, batch_id: uuid.UUID) -> BatchOut:
    response = client.get(f"/v1/batches/{batch_id}")
    if response.status_code in RETRY_STATUSES:
        raise Unavailable(response)
    return BatchOut.model_validate_json(checked(response).content)


class wait_retry_after(wait_base):
    """Wait what the API's Retry-After asked (bounded), else back off as ``fallback``."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, Unavailable) and error.retry_after is not None:
            return min(max(error.retry_after, RETRY_AFTER_MIN), RETRY_AFTER_MAX)
        return self.fallback(retry_state)


def _problem(error: BaseException | None) -> str:
    if isinstance(error, Unavailable):
        return str(error)
    return f"could not talk to the API ({type(error).__name__}: {error})"


def _notice(retry_state: RetryCallState) -> None:
    """One stderr line per retry: a watch that is waiting must not look hung or finished."""
    error = retry_state.outcome.exception() if retry_state.outcome else None
    delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
    err_console.print(Text(f"{_problem(error)}; retrying in {round(delay, 1):g} s", style="yellow"))


def fetch_patiently(client: httpx.Client, batch_id: uuid.UUID, give_up_after: float) -> BatchOut:
    """GET one batch while watching: an outage is waited out, with a notice per retry.

    Only answers that mean "later" and transport errors are retried; anything else (401,
    404, ...) fails as ``fetch`` does. After ``give_up_after`` seconds (0: never) of a
    continuous outage, exits GAVE_UP.
    """
    retrying = Retrying(
        retry=retry_if_exception_type((Unavailable, *TRANSIENT_ERRORS)),
        wait=wait_retry_after(FALLBACK_WAIT),
        stop=stop_after_delay(give_up_after) if give_up_after else stop_never,
        before_sleep=_notice,
    )
    try:
        for attempt in retrying:
            with attempt:
                batch = _fetch_once(client, batch_id)
    except RetryError as exc:
        err_console.print(
            Text.assemble(
                ("Error: ", "bold red"),
                (
                    f"gave up watching after {give_up_after:g} s of outage "
                    f"({_problem(exc.last_attempt.exception())}); batch {batch_id} goes on "
                    "(it was not cancelled).",
                    "red",
                ),
            )
        )
        err_console.print(f"Resume with: relightq batch status {batch_id} --watch", markup=False)
        raise typer.Exit(GAVE_UP) from None
    state = attempt.retry_state
    if state.attempt_number > 1:
        err_console.print(
            Text(
                f"API answers again after {state.seconds_since_start:.0f} s; watching on",
                style="green",
            )
        )
    return batch


# Display ---------------------------------------------------------------------------------


def count_of(n: int, noun: str) -> str:
    """'1 item', '3 items'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _done(batch: BatchOut) -> int:
    return batch.counts.succeeded + batch.counts.failed + batch.counts.cancelled


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"  # nothing finished recently, so there is no pace to go by
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _credits(batch: BatchOut) -> str:
    if batch.credit_budget is None:
        return f"{batch.credits_used:.3f} credits"
    return f"{batch.credits_used:.3f}/{batch.credit_budget:g} credits"


def _status(batch: BatchOut) -> str:
    """The status as Rich markup, with the waiting reason when there is one."""
    color = {
        BatchStatus.COMPLETED: "green",
        BatchStatus.CANCELLED: "red",
        BatchStatus.WAITING: "yellow",
    }.get(batch.status, "cyan")
    reason = f": {escape(batch.waiting_reason)}" if batch.waiting_reason else ""
    return f"[{color}]{batch.status.value}{reason}[/]"


def _progress_details(batch: BatchOut) -> str:
    failed = batch.counts.failed
    return " · ".join(
        (
            f"[bold red]{failed} failed[/]" if failed else "0 failed",
            f"{batch.counts.waiting} waiting",
            _credits(batch),
            f"ETA {_duration(batch.eta_seconds)}",
            _status(batch),
        )
    )


def show(batch: BatchOut) -> None:
    """A batch's state, a few lines."""
    counts = batch.counts
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("batch", str(batch.id) + (f"  {escape(batch.name)}" if batch.name else ""))
    grid.add_row("status", _status(batch))
    grid.add_row("done", f"{_done(batch)}/{batch.total} ({batch.progress:.0%})")
    grid.add_row(
        "items",
        f"{counts.succeeded} succeeded, "
        + (f"[bold red]{counts.failed} failed[/]" if counts.failed else "0 failed")
        + f", {counts.cancelled} cancelled, {counts.running} running, "
        f"{counts.queued} queued, {counts.waiting} waiting",
    )
    if batch.rejected:
        grid.add_row("rejected", f"[yellow]{count_of(batch.rejected, 'row')}[/] (invalid, not run)")
    grid.add_row("credits", _credits(batch))
    if batch.status not in FINAL_STATUSES:
        pace = f" at {batch.items_per_minute:g} items/min" if batch.items_per_minute else ""
        grid.add_row("eta", _duration(batch.eta_seconds) + pace)
    console.print(grid)


def watch_batch(
    client: httpx.Client, batch: BatchOut, interval: float, give_up_after: float
) -> BatchOut:
    """Poll until the batch is completed or cancelled, drawing a progress bar.

    Off a terminal (CI logs, pipes) a bar cannot redraw, so a plain line is printed
    whenever something changes instead. An outage of the API is waited out (see
    ``fetch_patiently``): only the batch's own end may end the watch with 0 or 1.
    """
    done_width = 2 * len(str(batch.total)) + 1
    # On an 80-column terminal the details would squeeze the bar and the count to nothing:
    # those keep their width and the details wrap onto a second line instead.
    progress = Progress(
        TextColumn(f"[bold]batch {str(batch.id)[:8]}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=20, table_column=Column(min_width=20, no_wrap=True)),
        MofNCompleteColumn(table_column=Column(min_width=done_width, no_wrap=True)),
        TextColumn("{task.fields[details]}", table_column=Column(ratio=1, overflow="fold")),
        console=console,
        disable=not console.is_terminal,
    )
    last_line = ""
    try:
        with progress:
            task = progress.add_task("", total=batch.total, details=_progress_details(batch))
            while True:
                details = _progress_details(batch)
                progress.update(task, completed=_done(batch), details=details)
                line = f"{_done(batch)}/{batch.total} done · {details}"
                if not console.is_terminal and line != last_line:
                    say(line)
                    last_line = line
                if batch.status in FINAL_STATUSES:
                    return batch
                time.sleep(interval)
                batch = fetch_patiently(client, batch.id, give_up_after)
    except KeyboardInterrupt:
        stopped_watching(batch.id)


def stopped_watching(batch_id: uuid.UUID) -> NoReturn:
    """Ctrl-C while watching: say the batch goes on, exit 130 (not click's "Aborted!", 1)."""
    say(f"\nStopped watching; batch {batch_id} goes on (it was not cancelled).")
    say(f"Resume with: relightq batch status {batch_id} --watch")
    raise typer.Exit(INTERRUPTED)


def finish(batch: BatchOut) -> None:
    """Show how a watched batch ended; exit 1 if it was cancelled.

    A completed batch exits 0 even with failed items: the batch did finish, and its errors
    manifest says which items failed and why; that they failed is printed in bold red.
    """
    show(batch)
    if batch.status == BatchStatus.CANCELLED:
        say(f"[red]Batch {batch.id} was cancelled.[/]")
        raise typer.Exit(1)
    failed, rejected = batch.counts.failed, batch.rejected
    if not failed and not rejected:
        say(f"[green]Batch {batch.id} completed: every item succeeded.[/]")
        return
    problems = [f"{count_of(failed, 'item')} failed"] if failed else []
    problems += [f"{count_of(rejected, 'invalid row')} skipped"] if rejected else []
    say(f"[bold {'red' if failed else 'yellow'}]{', '.join(problems)}.[/] See why with:")
    say(f"  relightq batch results {batch.id} --errors -o errors.csv")
    if failed:
        say(f"Run the failed items again with: relightq batch retry-failed {batch.id}")


# Commands --------------------------------------------------------------------------------


def _json_or_text(text: str) -> Any:
    """``512`` is a number and ``{"a": 1}`` an object; text that is not JSON stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def job_fields_from(prompt: str | None, pairs: list[str]) -> dict[str, Any]:
    """Job fields from --prompt and repeated --set KEY=VALUE (VALUE as JSON when it parses)."""
    defaults: dict[str, Any] = {} if prompt is None else {"prompt": prompt}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="'--set'")
        defaults[key.strip()] = _json_or_text(value)
    return defaults


def _json_batch(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """A .json file as the JSON body of POST /v1/batches: a list of items, or an object
    with ``items`` and any batch fields; the command line's options win over the file's.
    Read whole (a JSON body is capped by MAX_REQUEST_BYTES): big catalogs go as JSONL."""
    try:
        loaded = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise typer.BadParameter(
            f"{path} is not valid JSON ({exc})", param_hint="'SOURCE'"
        ) from None
    body: dict[str, Any] = {"items": loaded} if isinstance(loaded, list) else loaded
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise typer.BadParameter(
            f"{path} must hold a JSON list of items or an object with an items list",
            param_hint="'SOURCE'",
        )
    file_defaults = body.get("defaults") if isinstance(body.get("defaults"), dict) else {}
    return body | settings | {"defaults": file_defaults | settings["defaults"]}


@batch_app.command()
def submit(
    source: Annotated[
        str,
        typer.Argument(
            help="A local CSV or JSONL file of items (uploaded), a .json list of items (sent "
            "as a JSON body), or an s3://bucket/prefix/ whose images become the items.",
            show_default=False,
        ),
    ],
    prompt: Annotated[
        str | None, typer.Option(help="The prompt of every item that gives none.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="A default job field for every item, e.g. --set width=512 "
            "--set light_source='Left Light'. VALUE is read as JSON when it parses, else as "
            "text. Repeatable.",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name for the batch.")] = None,
    output_prefix: Annotated[
        str | None, typer.Option(help="An s3://bucket/prefix/ to write outputs to.")
    ] = None,
    key_template: Annotated[
        str | None,
        typer.Option(help="Output keys below --output-prefix, e.g. '{external_id}/{index}.{ext}'."),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(help="Credit budget: the batch waits once it has spent this much."),
    ] = None,
    skip_invalid: Annotated[
        bool,
        typer.Option("--skip-invalid", help="Run the valid rows and report the invalid ones."),
    ] = False,
    file_format: Annotated[
        FileFormat | None,
        typer.Option("--format", help="The file's format if its name does not end in .csv/.jsonl."),
    ] = None,
    watch: Watch = False,
    interval: Interval = 1.0,
    give_up_after: GiveUpAfter = GIVE_UP_AFTER,
    *,
    api_key: ApiKey,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Submit a CSV/JSONL/JSON file or an s3:// prefix as a batch.

    Every row is checked first: one bad row rejects the whole batch (nothing is stored)
    unless --skip-invalid.

    With --watch: exit 0 once the batch completes, even if some items failed (the count is
    shown; list them with `relightq batch results ID --errors`), 1 if it was cancelled, 130
    on Ctrl-C, which stops watching, not the batch.

    While watching, an API that answers 503 (database down), 429 (rate limited) or a
    gateway's 502/504, or that cannot be reached (restarting), is waited out: Retry-After
    is honoured (at most 60 s; backoff of 1-30 s without one) and each retry is noted on
    stderr. After --give-up-after seconds of one continuous outage (default 600; 0 waits
    forever) the watch exits 75: the batch goes on, its end unknown; resume with
    `relightq batch status ID --watch`.
    """
    settings: dict[str, Any] = {"defaults": job_fields_from(prompt, set_ or [])}
    optional = {
        "name": name,
        "output_prefix": output_prefix,
        "key_template": key_template,
        "credit_budget": budget,
    }
    settings |= {key: value for key, value in optional.items() if value is not None}
    if skip_invalid:
        settings["skip_invalid"] = True
    path = Path(source)
    is_prefix = source.startswith("s3://")
    if not is_prefix and not path.is_file():
        raise typer.BadParameter(
            f"{source} is not a file (give a CSV/JSONL/JSON file or an s3://bucket/prefix/)",
            param_hint="'SOURCE'",
        )
    with api_client(api_url, api_key) as client:
        if is_prefix:
            response = client.post(
                "/v1/batches", json={"source": source, **settings}, timeout=SUBMIT_TIMEOUT
            )
        elif path.suffix.lower() == ".json" and file_format is None:
            body = _json_batch(path, settings)
            response = client.post("/v1/batches", json=body, timeout=SUBMIT_TIMEOUT)
        else:
            # Form fields are text: JSON for everything that is not already a string.
            form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()}
            if file_format:
                form["format"] = file_format.value
            with path.open("rb") as file:
                # httpx reads an open file in chunks as it sends: never whole in memory.
                response = client.post(
                    "/v1/batches",
                    files={"file": (path.name, file)},
                    data=form,
                    timeout=SUBMIT_TIMEOUT,
                )
        batch = BatchOut.model_validate_json(checked(response).content)
        skipped = f", {count_of(batch.rejected, 'invalid row')} skipped" if batch.rejected else ""
        say(f"Submitted batch [bold]{batch.id}[/]: {count_of(batch.total, 'item')}{skipped}.")
        if not watch:
            say(f"Follow it with: relightq batch status {batch.id} --watch")
            return
        # The upload itself is never retried (it would submit twice); the polls after it are.
        finish(watch_batch(client, batch, interval, give_up_after))


@batch_app.command()
def status(
    batch_id: BatchId,
    watch: Watch = False,
    interval: Interval = 1.0,
    give_up_after: GiveUpAfter = GIVE_UP_AFTER,
    *,
    api_key: ApiKey,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Show a batch: counts, credits, ETA.

    With --watch: exit 0 once the batch completes, even if some items failed (the count is
    shown; list them with `relightq batch results ID --errors`), 1 if it was cancelled, 130
    on Ctrl-C, which stops watching, not the batch.

    While watching, an API that answers 503 (database down), 429 (rate limited) or a
    gateway's 502/504, or that cannot be reached (restarting), is waited out: Retry-After
    is honoured (at most 60 s; backoff of 1-30 s without one) and each retry is noted on
    stderr. After --give-up-after seconds of one continuous outage (default 600; 0 waits
    forever) the watch exits 75: the batch goes on, its end unknown; resume with
    `relightq batch status ID --watch`.
    """
    with api_client(api_url, api_key) as client:
        if not watch:
            show(fetch(client, batch_id))
            return
        # A watch may start mid-outage (a script resuming one): its first GET waits too.
        try:
            batch = fetch_patiently(client, batch_id, give_up_after)
        except KeyboardInterrupt:
            stopped_watching(batch_id)
        finish(watch_batch(client, batch, interval, give_up_after))


@batch_app.command("list")
def list_batches(
    limit: PageLimit = 20,
    cursor: PageCursor = None,
    *,
    api_key: ApiKey,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Your batches, newest first."""
    params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
    with api_client(api_url, api_key) as client:
        page = BatchPage.model_validate_json(
            checked(client.get("/v1/batches", params=params)).content
        )
    if not page.items:
        say("No batches.")
        return
    table = Table("id", "name", "status", "done", "failed", "credits", "created")
    table.columns[0].no_wrap = True
    table.columns[0].min_width = 36  # ids are copied from here: never fold them
    for batch in page.items:
        table.add_row(
            str(batch.id),
            escape(batch.name or ""),
            _status(batch),
            f"{_done(batch)}/{batch.total}",
            str(batch.counts.failed),
            f"{batch.credits_used:.3f}",
            batch.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)
    if page.next_cursor:
        say(f"More: relightq batch list --cursor {page.next_cursor}")


@batch_app.command()
def cancel(batch_id: BatchId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Cancel a batch: items not yet running never run; running ones finish."""
    with api_client(api_url, api_key) as client:
        response = checked(client.post(f"/v1/batches/{batch_id}/cancel"))
    batch = BatchOut.model_validate_json(response.content)
    say(f"Cancelled batch {batch.id}.")
    show(batch)


@batch_app.command("retry-failed")
def retry_failed(batch_id: BatchId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Run a batch's failed items again, with fresh attempts."""
    with api_client(api_url, api_key) as client:
        failed = fetch(client, batch_id).counts.failed
        if not failed:
            say(f"Batch {batch_id} has no failed items: nothing to retry.")
            return
        response = checked(client.post(f"/v1/batches/{batch_id}/retry-failed"))
    batch = BatchOut.model_validate_json(response.content)
    say(f"Retrying {count_of(failed, 'failed item')} of batch {batch.id}.")
    show(batch)
    say(f"Follow it with: relightq batch status {batch.id} --watch")


@batch_app.command()
def budget(
    batch_id: BatchId,
    credits: Annotated[str, typer.Argument(help="The new credit budget, or 'none' for no cap.")],
    *,
    api_key: ApiKey,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Change a batch's credit budget; raising it lets a batch waiting on it go on."""
    value: float | None = None
    if credits.lower() != "none":
        try:
            value = float(credits)
        except ValueError:
            fail(f"CREDITS must be a number or 'none', not {credits!r}")
    with api_client(api_url, api_key) as client:
        response = checked(client.patch(f"/v1/batches/{batch_id}", json={"credit_budget": value}))
    batch = BatchOut.model_validate_json(response.content)
    say(f"Batch {batch.id}: credit budget {'none' if value is None else value}.")
    show(batch)


def _format_of(output: Path | None) -> FileFormat:
    suffix = output.suffix.lower() if output else ""
    return FileFormat.JSONL if suffix in (".jsonl", ".ndjson") else FileFormat.CSV


def _save(response: httpx.Response, output: Path) -> None:
    """Stream to OUTPUT.part, then rename: a broken download never looks like a whole one."""
    partial = output.with_name(output.name + ".part")
    try:
        with partial.open("wb") as file:
            for chunk in response.iter_bytes():
                file.write(chunk)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)


@batch_app.command()
def results(
    batch_id: BatchId,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="File to write (default: stdout)."),
    ] = None,
    errors: Annotated[
        bool, typer.Option("--errors", help="Only failed items and rejected rows, with why.")
    ] = False,
    file_format: Annotated[
        FileFormat | None,
        typer.Option("--format", help="Default: from the -o extension (.jsonl, else csv)."),
    ] = None,
    *,
    api_key: ApiKey,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Download a batch's manifest: one row per item with its status, outputs and error."""
    kind = "errors" if errors else "results"
    fmt = file_format or _format_of(output)
    url = f"/v1/batches/{batch_id}/{kind}"
    with (
        api_client(api_url, api_key) as client,
        client.stream("GET", url, params={"format": fmt.value}) as response,
    ):
        checked(response)
        if output is not None:
            _save(response, output)
            err_console.print(f"Wrote the {kind} of batch {batch_id} to {output}.")
            return
        stdout: IO[bytes] = typer.get_binary_stream("stdout")
        for chunk in response.iter_bytes():
            stdout.write(chunk)
        stdout.flush()
