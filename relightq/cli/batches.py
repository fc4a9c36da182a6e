"""`relightq batch ...`: submit catalogs, follow them and fetch their manifests.

Built on relightq.client, never the database: it runs from any machine that has an API
key, and sees exactly what every other client sees. What it prints is in render.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column, Table
from rich.text import Text

from relightq.batches.schemas import BatchEstimate, BatchOut, BatchStatus
from relightq.cli.common import (
    DEFAULT_API_URL,
    GAVE_UP,
    GIVE_UP_AFTER,
    INTERRUPTED,
    ApiKey,
    ApiUrl,
    PageCursor,
    PageLimit,
    api_client,
    job_fields_from,
)
from relightq.cli.render import (
    FINAL_STATUSES,
    batches_table,
    console,
    count_of,
    done_count,
    duration,
    err_console,
    fail,
    progress_details,
    say,
    show_batch,
)
from relightq.client import (
    ManifestFormat,
    RelightqAPIError,
    RelightqClient,
    RetryEvent,
    RetryPolicy,
)
from relightq.client.retry import is_transient
from relightq.credits.amounts import as_text

__all__ = ["GAVE_UP", "batch_app"]

batch_app = typer.Typer(
    help="Submit catalogs as batches, follow them and download their manifests "
    "(a client of the relightq API).",
    no_args_is_help=True,
)


class FileFormat(StrEnum):
    """How an uploaded catalog or a downloaded manifest is written."""

    CSV = "csv"
    JSONL = "jsonl"


def _wire_format(file_format: FileFormat) -> ManifestFormat:
    return "csv" if file_format == FileFormat.CSV else "jsonl"


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


# Watching ------------------------------------------------------------------------------------


def _problem(error: BaseException | None) -> str:
    if isinstance(error, RelightqAPIError):
        return f"API answered {error.status}" + (f" {error.code}" if error.code else "")
    return f"could not talk to the API ({type(error).__name__}: {error})"


def _notice(event: RetryEvent) -> None:
    """One stderr line per retry: a watch that is waiting must not look hung or finished."""
    err_console.print(
        Text(f"{_problem(event.error)}; retrying in {round(event.delay, 1):g} s", style="yellow")
    )


def _recovered(attempts: int, seconds: float) -> None:
    err_console.print(Text(f"API answers again after {seconds:.0f} s; watching on", style="green"))


def watch_policy(give_up_after: float) -> RetryPolicy:
    """Retry until the API answers again, or for ``give_up_after`` seconds (0: forever),
    with a notice per retry: the client's policy (Retry-After honoured up to 60 s, else
    backoff of 1-30 s) without its cap on attempts."""
    return RetryPolicy(
        max_attempts=None,
        max_seconds=give_up_after or None,
        on_retry=_notice,
        on_recovered=_recovered,
    )


def fetch_patiently(client: RelightqClient, batch_id: uuid.UUID, give_up_after: float) -> BatchOut:
    """GET one batch while watching: an outage is waited out, with a notice per retry.

    Only answers that mean "later" and transport errors are retried; anything else (401,
    404, ...) fails as any other call does. After ``give_up_after`` seconds (0: never) of
    a continuous outage, exits GAVE_UP.
    """
    try:
        return client.with_retry(watch_policy(give_up_after)).get_batch(batch_id)
    except (RelightqAPIError, httpx.TransportError) as exc:
        if not is_transient(exc):
            raise
        err_console.print(
            Text.assemble(
                ("Error: ", "bold red"),
                (
                    f"gave up watching after {give_up_after:g} s of outage "
                    f"({_problem(exc)}); batch {batch_id} goes on (it was not cancelled).",
                    "red",
                ),
            )
        )
        err_console.print(f"Resume with: relightq batch status {batch_id} --watch", markup=False)
        raise typer.Exit(GAVE_UP) from None


def watch_batch(
    client: RelightqClient, batch: BatchOut, interval: float, give_up_after: float
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
            task = progress.add_task("", total=batch.total, details=progress_details(batch))
            while True:
                details = progress_details(batch)
                progress.update(task, completed=done_count(batch), details=details)
                line = f"{done_count(batch)}/{batch.total} done · {details}"
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
    show_batch(batch)
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


# Commands ------------------------------------------------------------------------------------


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


def _submit(
    client: RelightqClient, source: str, file_format: FileFormat | None, settings: dict[str, Any]
) -> BatchOut:
    """Send SOURCE as a batch: a prefix or a .json file as a JSON body, else an upload."""
    path = Path(source)
    if source.startswith("s3://"):
        return client.create_batch(source=source, **settings)
    if path.suffix.lower() == ".json" and file_format is None:
        return client.create_batch(**_json_batch(path, settings))
    # Streamed from disk as it is sent: never whole in memory.
    fmt = _wire_format(file_format) if file_format else None
    return client.upload_batch(path, format=fmt, **settings)


def _estimate(
    client: RelightqClient, source: str, file_format: FileFormat | None, settings: dict[str, Any]
) -> BatchEstimate:
    """Send SOURCE as ``_submit`` would, as a dry run: checked and estimated, not stored."""
    path = Path(source)
    if source.startswith("s3://"):
        return client.create_batch(source=source, dry_run=True, **settings)
    if path.suffix.lower() == ".json" and file_format is None:
        return client.create_batch(dry_run=True, **_json_batch(path, settings))
    fmt = _wire_format(file_format) if file_format else None
    return client.upload_batch(path, format=fmt, dry_run=True, **settings)


def show_estimate(estimate: BatchEstimate) -> None:
    """A dry run's answer: what the batch would be, cost and take."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rejected = (
        f" ([yellow]{count_of(estimate.rejected, 'invalid row')}[/] would be skipped)"
        if estimate.rejected
        else ""
    )
    grid.add_row("items", f"{estimate.items}{rejected}")
    saved = f", saving {as_text(estimate.credits_saved)} credits" if estimate.would_reuse else ""
    grid.add_row("reuse", f"{count_of(estimate.would_reuse, 'item')} predicted{saved}")
    grid.add_row("calls", str(estimate.calls))
    grid.add_row("credits", f"{as_text(estimate.credits)} credits")
    grid.add_row(
        "time",
        f"at least {duration(estimate.estimated_seconds)} "
        f"at {estimate.max_calls_per_minute} calls/min",
    )
    say("[bold]Dry run[/]: nothing was submitted.")
    console.print(grid)
    say(f"[dim]{estimate.note}[/]")


# What --watch does, for both commands that take it (their help ends with it).
WATCH_HELP = """

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


def _with_watch_help(command: Callable[..., None]) -> Callable[..., None]:
    command.__doc__ = (command.__doc__ or "").rstrip() + WATCH_HELP
    return command


@batch_app.command()
@_with_watch_help
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
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check every row as a submit would and show what the batch would cost "
            "(items, predicted reuse, credits, time at the fleet's cap); submit nothing.",
        ),
    ] = False,
    watch: Watch = False,
    interval: Interval = 1.0,
    give_up_after: GiveUpAfter = GIVE_UP_AFTER,
    *,
    api_key: ApiKey,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Submit a CSV/JSONL/JSON file or an s3:// prefix as a batch.

    Every row is checked first: one bad row rejects the whole batch (nothing is stored)
    unless --skip-invalid. With --dry-run, only checked and estimated: exit 0, nothing
    submitted.

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
    if not source.startswith("s3://") and not Path(source).is_file():
        raise typer.BadParameter(
            f"{source} is not a file (give a CSV/JSONL/JSON file or an s3://bucket/prefix/)",
            param_hint="'SOURCE'",
        )
    with api_client(api_url, api_key) as client:
        if dry_run:
            show_estimate(_estimate(client, source, file_format, settings))
            return
        batch = _submit(client, source, file_format, settings)
        skipped = f", {count_of(batch.rejected, 'invalid row')} skipped" if batch.rejected else ""
        say(f"Submitted batch [bold]{batch.id}[/]: {count_of(batch.total, 'item')}{skipped}.")
        if not watch:
            say(f"Follow it with: relightq batch status {batch.id} --watch")
            return
        # The upload itself is never retried (it would submit twice); the polls after it are.
        finish(watch_batch(client, batch, interval, give_up_after))


@batch_app.command()
@_with_watch_help
def status(
    batch_id: BatchId,
    watch: Watch = False,
    interval: Interval = 1.0,
    give_up_after: GiveUpAfter = GIVE_UP_AFTER,
    *,
    api_key: ApiKey,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Show a batch: counts, credits, ETA."""
    with api_client(api_url, api_key) as client:
        if not watch:
            show_batch(client.get_batch(batch_id))
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
    with api_client(api_url, api_key) as client:
        page = client.list_batches(limit=limit, cursor=cursor or None)
    if not page.items:
        say("No batches.")
        return
    console.print(batches_table(page.items))
    if page.next_cursor:
        say(f"More: relightq batch list --cursor {page.next_cursor}")


@batch_app.command()
def cancel(batch_id: BatchId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Cancel a batch: items not yet running never run; running ones finish."""
    with api_client(api_url, api_key) as client:
        batch = client.cancel_batch(batch_id)
    say(f"Cancelled batch {batch.id}.")
    show_batch(batch)


@batch_app.command("retry-failed")
def retry_failed(batch_id: BatchId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Run a batch's failed items again, with fresh attempts."""
    with api_client(api_url, api_key) as client:
        failed = client.get_batch(batch_id).counts.failed
        if not failed:
            say(f"Batch {batch_id} has no failed items: nothing to retry.")
            return
        batch = client.retry_failed(batch_id)
    say(f"Retrying {count_of(failed, 'failed item')} of batch {batch.id}.")
    show_batch(batch)
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
        batch = client.update_batch(batch_id, credit_budget=value)
    say(f"Batch {batch.id}: credit budget {'none' if value is None else value}.")
    show_batch(batch)


def _format_of(output: Path | None) -> FileFormat:
    suffix = output.suffix.lower() if output else ""
    return FileFormat.JSONL if suffix in (".jsonl", ".ndjson") else FileFormat.CSV


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
    with api_client(api_url, api_key) as client:
        if output is not None:
            # To OUTPUT.part, then renamed: a broken download never looks like a whole one.
            client.download_manifest(batch_id, output, errors=errors, format=_wire_format(fmt))
            err_console.print(f"Wrote the {kind} of batch {batch_id} to {output}.")
            return
        stdout: IO[bytes] = typer.get_binary_stream("stdout")
        for chunk in client.iter_manifest_bytes(batch_id, errors=errors, format=_wire_format(fmt)):
            stdout.write(chunk)
        stdout.flush()
