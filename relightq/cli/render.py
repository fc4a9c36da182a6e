"""How the CLI shows things: Rich output for batches, schedules and the API's errors.

Everything printed by `relightq batch` and `relightq schedule` goes through here, so the
commands themselves are only options, client calls and exit codes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from relightq.batches.schemas import BatchOut, BatchStatus
from relightq.client import RelightqAPIError
from relightq.schedules.models import RunStatus
from relightq.schedules.schemas import RunOut, ScheduleOut

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # unwrapped: errors are grepped

FINAL_STATUSES = (BatchStatus.COMPLETED, BatchStatus.CANCELLED)
RUN_COLORS = {
    RunStatus.SUCCEEDED: "green",
    RunStatus.FAILED: "red",
    RunStatus.SKIPPED: "yellow",
    RunStatus.CANCELLED: "yellow",
    RunStatus.QUEUED: "yellow",
}


# Messages ------------------------------------------------------------------------------------


def say(markup: str) -> None:
    """One message line; left unwrapped so the commands it suggests stay copy-pasteable."""
    console.print(markup, soft_wrap=True, highlight=False)


def fail(message: str) -> NoReturn:
    """Print one error line in red and exit 1 (no traceback: the message says it all)."""
    err_console.print(Text.assemble(("Error: ", "bold red"), (message, "red")))
    raise typer.Exit(1)


def print_api_error(error: RelightqAPIError) -> None:
    """The API's error and every field problem, so a bad row can be fixed at once.

    Errors look like ``{"error": {"code", "message", "fields": [{"field", "message",
    "allowed"}]}}``; an answer without that shape is shown as its text.
    """
    if not error.is_json:
        message = f"the API answered HTTP {error.status}: {error.message}"
        err_console.print(Text.assemble(("Error: ", "bold red"), (message, "red")))
        return
    message = f"{error.message} (HTTP {error.status})"
    err_console.print(Text.assemble(("Error: ", "bold red"), (message, "red")))
    for problem in error.fields:
        err_console.print(
            Text.assemble("  ", (problem.field, "bold red"), (f": {problem.message}", "red"))
        )
        if problem.allowed:
            err_console.print(Text(f"      allowed: {problem.allowed}", style="dim"))


def count_of(n: int, noun: str) -> str:
    """'1 item', '3 items'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


# Batches -------------------------------------------------------------------------------------


def done_count(batch: BatchOut) -> int:
    """Items that are final."""
    return batch.counts.succeeded + batch.counts.failed + batch.counts.cancelled


def duration(seconds: float | None) -> str:
    """``1h05m``, ``3m07s``, ``12s``; ``unknown`` without a pace to go by."""
    if seconds is None:
        return "unknown"  # nothing finished recently, so there is no pace to go by
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def batch_credits(batch: BatchOut) -> str:
    """Credits used, and of what budget."""
    if batch.credit_budget is None:
        return f"{batch.credits_used:.3f} credits"
    return f"{batch.credits_used:.3f}/{batch.credit_budget:g} credits"


def batch_status(batch: BatchOut) -> str:
    """The status as Rich markup, with the waiting reason when there is one."""
    color = {
        BatchStatus.COMPLETED: "green",
        BatchStatus.CANCELLED: "red",
        BatchStatus.WAITING: "yellow",
    }.get(batch.status, "cyan")
    reason = f": {escape(batch.waiting_reason)}" if batch.waiting_reason else ""
    return f"[{color}]{batch.status.value}{reason}[/]"


def progress_details(batch: BatchOut) -> str:
    """What follows the progress bar: failures, waiting items, credits, ETA, status."""
    failed = batch.counts.failed
    return " · ".join(
        (
            f"[bold red]{failed} failed[/]" if failed else "0 failed",
            f"{batch.counts.waiting} waiting",
            batch_credits(batch),
            f"ETA {duration(batch.eta_seconds)}",
            batch_status(batch),
        )
    )


def show_batch(batch: BatchOut) -> None:
    """A batch's state, a few lines."""
    counts = batch.counts
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("batch", str(batch.id) + (f"  {escape(batch.name)}" if batch.name else ""))
    grid.add_row("status", batch_status(batch))
    grid.add_row("done", f"{done_count(batch)}/{batch.total} ({batch.progress:.0%})")
    grid.add_row(
        "items",
        f"{counts.succeeded} succeeded, "
        + (f"[bold red]{counts.failed} failed[/]" if counts.failed else "0 failed")
        + f", {counts.cancelled} cancelled, {counts.running} running, "
        f"{counts.queued} queued, {counts.waiting} waiting",
    )
    if batch.rejected:
        grid.add_row("rejected", f"[yellow]{count_of(batch.rejected, 'row')}[/] (invalid, not run)")
    grid.add_row("credits", batch_credits(batch))
    if batch.status not in FINAL_STATUSES:
        pace = f" at {batch.items_per_minute:g} items/min" if batch.items_per_minute else ""
        grid.add_row("eta", duration(batch.eta_seconds) + pace)
    console.print(grid)


def batches_table(batches: list[BatchOut]) -> Table:
    """Batches, one a row."""
    table = Table("id", "name", "status", "done", "failed", "credits", "created")
    table.columns[0].no_wrap = True
    table.columns[0].min_width = 36  # ids are copied from here: never fold them
    for batch in batches:
        table.add_row(
            str(batch.id),
            escape(batch.name or ""),
            batch_status(batch),
            f"{done_count(batch)}/{batch.total}",
            str(batch.counts.failed),
            f"{batch.credits_used:.3f}",
            batch.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
        )
    return table


# Schedules -----------------------------------------------------------------------------------


def _local(moment: datetime, timezone: str) -> datetime | None:
    """MOMENT in TIMEZONE; None if this machine's zone database lacks it (the API's may be
    newer), in which case UTC alone is shown."""
    try:
        return moment.astimezone(ZoneInfo(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        return None


def when(moment: datetime | None, timezone: str) -> str:
    """A time in UTC and in the schedule's zone, where the cron expression is read."""
    if moment is None:
        return "-"
    utc = f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    local = _local(moment, timezone)
    if timezone == "UTC" or local is None:
        return utc
    return f"{utc} ({local:%Y-%m-%d %H:%M %Z} {timezone})"


def _short_when(moment: datetime | None, timezone: str) -> str:
    """A time in the schedule's zone on two short lines, for narrow table cells."""
    if moment is None:
        return "-"
    local = _local(moment, timezone) or moment.astimezone(UTC)
    return f"{local:%Y-%m-%d}\n{local:%H:%M %Z}"


def run_status(status: RunStatus) -> str:
    """A run's status as Rich markup."""
    return f"[{RUN_COLORS.get(status, 'cyan')}]{status.value}[/]"


def _json(value: Any) -> str:
    return escape(json.dumps(value, ensure_ascii=False))


def describe_action(action: dict[str, Any]) -> str:
    """What a schedule does, in a line of Rich markup."""
    kind = action.get("type")
    if kind == "rerun_batch":
        overrides = action.get("overrides") or {}
        return f"re-run batch {action.get('batch_id')}" + (
            f" with {_json(overrides)}" if overrides else ""
        )
    if kind == "reprocess_prefix":
        text = f"relight new or changed images below {escape(str(action.get('source')))}"
        if action.get("defaults"):
            text += f" with {_json(action['defaults'])}"
        if action.get("output_prefix"):
            text += f", writing to {escape(str(action['output_prefix']))}"
        return text
    if kind == "retry_failed":
        scope = f" of batch {action['batch_id']}" if action.get("batch_id") else ""
        return f"retry jobs that failed in the last {action.get('window_hours'):g} h{scope}"
    return _json(action)  # an action type newer than this client


def _outcome(run: RunOut) -> str:
    """What a run did, as Rich markup: its batches (id, status, progress), else its error,
    else its summary. One column for all three: a run that made batches has no error, and
    the table stays within 80 columns (piped output is that wide)."""
    if run.batches:
        return "\n".join(f"{b.id} {b.status} {b.progress:.0%}" for b in run.batches)
    if run.error:
        return f"[red]{escape(run.error)}[/]"
    return _summary(run) or "-"


def _summary(run: RunOut) -> str:
    """What a run without batches did, e.g. ``jobs=3`` retried or ``items=0 unchanged=12``."""
    return escape(" ".join(f"{key}={value}" for key, value in run.summary.items()))


def show_run(run: RunOut) -> None:
    """A run and the batches it made, a few lines."""
    how = "by hand" if run.manual else "on schedule"
    say(f"Run {run.id} ({how}): {run_status(run.status)}")
    if run.error:
        say(f"  [red]{escape(run.error)}[/]")
    for batch in run.batches:
        say(
            f"  batch {batch.id}: {batch.status}, {count_of(batch.total, 'item')}, "
            f"{batch.progress:.0%} done"
        )
    if not run.batches and not run.error and run.summary:
        say(f"  {_summary(run)}")  # e.g. nothing new below the prefix, or jobs retried


def show_schedule(schedule: ScheduleOut) -> None:
    """A schedule, a few lines."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("schedule", f"{schedule.id}  {escape(schedule.name)}")
    grid.add_row("cron", f"{escape(schedule.cron)} ({escape(schedule.timezone)})")
    grid.add_row("action", describe_action(schedule.action))
    grid.add_row("overlap", schedule.overlap.value)
    grid.add_row("enabled", "yes" if schedule.enabled else "[yellow]no (paused)[/]")
    grid.add_row("next run", when(schedule.next_run_at, schedule.timezone))
    last = schedule.last_run
    if last is None:
        grid.add_row("last run", "-")
    else:
        batches = "".join(f", batch {b.id} {b.progress:.0%}" for b in last.batches)
        error = f": {escape(last.error)}" if last.error else ""
        grid.add_row(
            "last run",
            f"{run_status(last.status)}{error} "
            f"(for {when(last.scheduled_for, schedule.timezone)}){batches}",
        )
    console.print(grid)


def schedules_table(schedules: list[ScheduleOut]) -> Table:
    """Four columns, each id under its name, so the table fits 80 columns (what piped
    output gets) without folding an id."""
    table = Table("name / id", "cron / tz", "next run", "last run")
    table.columns[0].min_width = 36  # ids are copied from here: never fold them
    # The other columns and borders take 68: cron and zone get the rest, at least 12 wide
    # (a long zone name folds there rather than pushing "last run" off the edge).
    table.columns[1].max_width = max(12, console.width - 68)
    table.columns[1].overflow = "fold"
    for schedule in schedules:
        last = schedule.last_run
        table.add_row(
            f"[bold]{escape(schedule.name)}[/]\n{schedule.id}",
            f"{escape(schedule.cron)}\n{escape(schedule.timezone)}",
            _short_when(schedule.next_run_at, schedule.timezone)
            if schedule.enabled
            else "[yellow]paused[/]",
            run_status(last.status) if last else "-",
        )
    return table


def runs_table(runs: list[RunOut]) -> Table:
    """Runs, newest first; batches and errors share a column to fit 80 columns."""
    table = Table("scheduled for", "manual", "status", "batches / error")
    table.columns[3].min_width = 36  # batch ids are copied from here: never fold them
    for item in runs:
        scheduled = item.scheduled_for.astimezone(UTC)
        table.add_row(
            f"{scheduled:%Y-%m-%d}\n{scheduled:%H:%M} UTC",
            "yes" if item.manual else "no",
            run_status(item.status),
            _outcome(item),
        )
    return table
