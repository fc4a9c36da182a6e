"""`relightq schedule ...`: create, inspect, pause, run and delete cron schedules.

Like `relightq batch`, a pure HTTP client of the relightq API: it shares that CLI's
options, error printing and KEY=VALUE parsing rather than growing its own.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from relightq.batches.cli import (
    DEFAULT_API_URL,
    ApiKey,
    ApiUrl,
    PageCursor,
    PageLimit,
    api_client,
    checked,
    console,
    count_of,
    job_fields_from,
    say,
)
from relightq.schedules.models import Overlap, RunStatus
from relightq.schedules.schemas import RunOut, RunPage, ScheduleOut

schedule_app = typer.Typer(
    help="Run batches on a cron schedule: re-run a batch, relight what is new below an "
    "s3:// prefix, or retry failed jobs (a client of the relightq API).",
    no_args_is_help=True,
)

ScheduleId = Annotated[
    uuid.UUID, typer.Argument(metavar="ID", help="The schedule id.", show_default=False)
]
# Named after the flags so a usage error points at the ones to fix.
ACTION_HINT = "'--rerun-batch' / '--prefix' / '--retry-failed-hours'"
# Which extra options each action takes; the others would be silently dropped, so they fail.
ACTION_OPTIONS: dict[str, set[str]] = {
    "--rerun-batch": {"--prompt", "--set"},
    "--prefix": {"--prompt", "--set", "--output-prefix", "--key-template"},
    "--retry-failed-hours": {"--batch"},
}
RUN_COLORS = {
    RunStatus.SUCCEEDED: "green",
    RunStatus.FAILED: "red",
    RunStatus.SKIPPED: "yellow",
    RunStatus.CANCELLED: "yellow",
    RunStatus.QUEUED: "yellow",
}


# Display ---------------------------------------------------------------------------------


def _local(moment: datetime, timezone: str) -> datetime | None:
    """MOMENT in TIMEZONE; None if this machine's zone database lacks it (the API's may be
    newer), in which case UTC alone is shown."""
    try:
        return moment.astimezone(ZoneInfo(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _when(moment: datetime | None, timezone: str) -> str:
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


def _run_status(status: RunStatus) -> str:
    return f"[{RUN_COLORS.get(status, 'cyan')}]{status.value}[/]"


def _json(value: Any) -> str:
    return escape(json.dumps(value, ensure_ascii=False))


def _describe(action: dict[str, Any]) -> str:
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


def _show_run(run: RunOut) -> None:
    how = "by hand" if run.manual else "on schedule"
    say(f"Run {run.id} ({how}): {_run_status(run.status)}")
    if run.error:
        say(f"  [red]{escape(run.error)}[/]")
    for batch in run.batches:
        say(
            f"  batch {batch.id}: {batch.status}, {count_of(batch.total, 'item')}, "
            f"{batch.progress:.0%} done"
        )
    if not run.batches and not run.error and run.summary:
        say(f"  {_summary(run)}")  # e.g. nothing new below the prefix, or jobs retried


def _show(schedule: ScheduleOut) -> None:
    """A schedule, a few lines."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("schedule", f"{schedule.id}  {escape(schedule.name)}")
    grid.add_row("cron", f"{escape(schedule.cron)} ({escape(schedule.timezone)})")
    grid.add_row("action", _describe(schedule.action))
    grid.add_row("overlap", schedule.overlap.value)
    grid.add_row("enabled", "yes" if schedule.enabled else "[yellow]no (paused)[/]")
    grid.add_row("next run", _when(schedule.next_run_at, schedule.timezone))
    last = schedule.last_run
    if last is None:
        grid.add_row("last run", "-")
    else:
        batches = "".join(f", batch {b.id} {b.progress:.0%}" for b in last.batches)
        error = f": {escape(last.error)}" if last.error else ""
        grid.add_row(
            "last run",
            f"{_run_status(last.status)}{error} "
            f"(for {_when(last.scheduled_for, schedule.timezone)}){batches}",
        )
    console.print(grid)


def _schedules_table(schedules: list[ScheduleOut]) -> Table:
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
            _run_status(last.status) if last else "-",
        )
    return table


def _runs_table(runs: list[RunOut]) -> Table:
    """Runs, newest first; batches and errors share a column to fit 80 columns."""
    table = Table("scheduled for", "manual", "status", "batches / error")
    table.columns[3].min_width = 36  # batch ids are copied from here: never fold them
    for item in runs:
        scheduled = item.scheduled_for.astimezone(UTC)
        table.add_row(
            f"{scheduled:%Y-%m-%d}\n{scheduled:%H:%M} UTC",
            "yes" if item.manual else "no",
            _run_status(item.status),
            _outcome(item),
        )
    return table


def _schedule(response: httpx.Response) -> ScheduleOut:
    """The schedule a successful answer carries (else the API's error, exit 1)."""
    return ScheduleOut.model_validate_json(checked(response).content)


# Commands --------------------------------------------------------------------------------

# The action flags, shared by create and update.
RerunBatchOption = Annotated[
    uuid.UUID | None,
    typer.Option(
        "--rerun-batch",
        metavar="BATCH_ID",
        help="Action: run this batch's items again as a new batch.",
        rich_help_panel="Action (exactly one)",
    ),
]

PrefixOption = Annotated[
    str | None,
    typer.Option(
        "--prefix",
        metavar="S3_PREFIX",
        help="Action: relight images below this s3://bucket/prefix/ that are new or "
        "changed since the last run.",
        rich_help_panel="Action (exactly one)",
    ),
]

RetryHoursOption = Annotated[
    float | None,
    typer.Option(
        "--retry-failed-hours",
        metavar="HOURS",
        help="Action: retry your jobs that failed in the last HOURS.",
        rich_help_panel="Action (exactly one)",
    ),
]

PromptOption = Annotated[
    str | None,
    typer.Option(
        help="--prefix: the prompt of every image; --rerun-batch: a new prompt.",
        rich_help_panel="Action options",
    ),
]

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="A job field: a default for --prefix, an override for --rerun-batch, e.g. "
        "--set width=512. VALUE is read as JSON when it parses, else as text. Repeatable.",
        rich_help_panel="Action options",
    ),
]

OutputPrefixOption = Annotated[
    str | None,
    typer.Option(
        help="--prefix: an s3://bucket/prefix/ to write outputs to.",
        rich_help_panel="Action options",
    ),
]

KeyTemplateOption = Annotated[
    str | None,
    typer.Option(
        help="--prefix: output keys below --output-prefix, e.g. '{external_id}.{ext}'.",
        rich_help_panel="Action options",
    ),
]

BatchOption = Annotated[
    uuid.UUID | None,
    typer.Option(
        "--batch",
        metavar="BATCH_ID",
        help="--retry-failed-hours: only this batch's jobs.",
        rich_help_panel="Action options",
    ),
]


def _action(
    rerun_batch: uuid.UUID | None,
    prefix: str | None,
    retry_hours: float | None,
    batch: uuid.UUID | None,
    prompt: str | None,
    pairs: list[str],
    output_prefix: str | None,
    key_template: str | None,
) -> dict[str, Any]:
    """The API's action object from the flags; exactly one action, with only its options."""
    chosen = [
        flag
        for flag, value in (
            ("--rerun-batch", rerun_batch),
            ("--prefix", prefix),
            ("--retry-failed-hours", retry_hours),
        )
        if value is not None
    ]
    if len(chosen) != 1:
        got = f" (got {', '.join(chosen)})" if chosen else ""
        raise typer.BadParameter(
            "give exactly one action: --rerun-batch BATCH_ID, --prefix s3://bucket/prefix/ "
            f"or --retry-failed-hours HOURS{got}",
            param_hint=ACTION_HINT,
        )
    given = {
        "--prompt": prompt is not None,
        "--set": bool(pairs),
        "--output-prefix": output_prefix is not None,
        "--key-template": key_template is not None,
        "--batch": batch is not None,
    }
    stray = [name for name, on in given.items() if on and name not in ACTION_OPTIONS[chosen[0]]]
    if stray:
        raise typer.BadParameter(
            f"{', '.join(stray)} cannot go with {chosen[0]}", param_hint=f"'{stray[0]}'"
        )
    if rerun_batch is not None:
        return {
            "type": "rerun_batch",
            "batch_id": str(rerun_batch),
            "overrides": job_fields_from(prompt, pairs),
        }
    if prefix is not None:
        action: dict[str, Any] = {
            "type": "reprocess_prefix",
            "source": prefix,
            "defaults": job_fields_from(prompt, pairs),
        }
        optional = {"output_prefix": output_prefix, "key_template": key_template}
        return action | {key: value for key, value in optional.items() if value is not None}
    return {
        "type": "retry_failed",
        "window_hours": retry_hours,
        "batch_id": None if batch is None else str(batch),
    }


@schedule_app.command()
def create(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="A name for the schedule.", show_default=False)
    ],
    cron: Annotated[
        str,
        typer.Option(
            help="Five cron fields, read in --timezone, e.g. '0 3 * * *' (03:00 daily).",
            show_default=False,
        ),
    ],
    timezone: Annotated[
        str, typer.Option(help="IANA time zone of the cron times, e.g. Europe/Paris.")
    ] = "UTC",
    overlap: Annotated[
        Overlap,
        typer.Option(help="A due run while the previous one still goes: skip it or queue it."),
    ] = Overlap.SKIP,
    paused: Annotated[
        bool, typer.Option("--paused", help="Create it paused (resume to start it).")
    ] = False,
    rerun_batch: RerunBatchOption = None,
    prefix: PrefixOption = None,
    retry_failed_hours: RetryHoursOption = None,
    prompt: PromptOption = None,
    set_: SetOption = None,
    output_prefix: OutputPrefixOption = None,
    key_template: KeyTemplateOption = None,
    batch: BatchOption = None,
    *,
    api_key: ApiKey,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Create a schedule: a cron expression in a time zone and one action to run at its times.

    Prints the schedule id and its next run time, in UTC and in its time zone.
    """
    action = _action(
        rerun_batch,
        prefix,
        retry_failed_hours,
        batch,
        prompt,
        set_ or [],
        output_prefix,
        key_template,
    )
    body = {
        "name": name,
        "cron": cron,
        "timezone": timezone,
        "action": action,
        "overlap": overlap.value,
        "enabled": not paused,
    }
    with api_client(api_url, api_key) as client:
        schedule = _schedule(client.post("/v1/schedules", json=body))
    say(f"Created schedule [bold]{schedule.id}[/] ({escape(schedule.name)}).")
    if schedule.enabled:
        say(f"Next run: {_when(schedule.next_run_at, schedule.timezone)}")
    else:
        say(f"It is paused; start it with: relightq schedule resume {schedule.id}")
    say(f"Run it now with: relightq schedule run {schedule.id}")


@schedule_app.command()
def update(
    schedule_id: ScheduleId,
    name: Annotated[str | None, typer.Option(help="A new name.", show_default=False)] = None,
    cron: Annotated[
        str | None, typer.Option(help="New cron fields (moves the next run).", show_default=False)
    ] = None,
    timezone: Annotated[
        str | None, typer.Option(help="A new IANA time zone.", show_default=False)
    ] = None,
    overlap: Annotated[
        Overlap | None, typer.Option(help="skip or queue.", show_default=False)
    ] = None,
    rerun_batch: RerunBatchOption = None,
    prefix: PrefixOption = None,
    retry_failed_hours: RetryHoursOption = None,
    prompt: PromptOption = None,
    set_: SetOption = None,
    output_prefix: OutputPrefixOption = None,
    key_template: KeyTemplateOption = None,
    batch: BatchOption = None,
    *,
    api_key: ApiKey,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Change a schedule in place, keeping its history: only what is given changes.

    An action flag replaces the whole action (with its options, as for create).
    """
    body: dict[str, Any] = {
        key: value
        for key, value in {
            "name": name,
            "cron": cron,
            "timezone": timezone,
            "overlap": None if overlap is None else overlap.value,
        }.items()
        if value is not None
    }
    action_flags = (rerun_batch, prefix, retry_failed_hours, batch, prompt, set_)
    if any(v is not None for v in action_flags) or output_prefix or key_template:
        body["action"] = _action(
            rerun_batch,
            prefix,
            retry_failed_hours,
            batch,
            prompt,
            set_ or [],
            output_prefix,
            key_template,
        )
    if not body:
        raise typer.BadParameter(
            "give something to change: --name, --cron, --timezone, --overlap or an action",
            param_hint="'--cron'",
        )
    with api_client(api_url, api_key) as client:
        schedule = _schedule(client.patch(f"/v1/schedules/{schedule_id}", json=body))
    say(f"Updated schedule [bold]{schedule.id}[/] ({escape(schedule.name)}).")
    _show(schedule)


@schedule_app.command("list")
def list_schedules(*, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Your schedules, oldest first, with their next run time (in their time zone)."""
    with api_client(api_url, api_key) as client:
        response = checked(client.get("/v1/schedules"))
    schedules = [ScheduleOut.model_validate(item) for item in response.json()]
    if not schedules:
        say("No schedules.")
        return
    console.print(_schedules_table(schedules))


@schedule_app.command("show")
def show_schedule(
    schedule_id: ScheduleId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL
) -> None:
    """Show a schedule: its action, next run time and latest run."""
    with api_client(api_url, api_key) as client:
        _show(_schedule(client.get(f"/v1/schedules/{schedule_id}")))


@schedule_app.command()
def pause(schedule_id: ScheduleId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Stop a schedule firing until it is resumed (runs already going carry on)."""
    with api_client(api_url, api_key) as client:
        schedule = _schedule(client.post(f"/v1/schedules/{schedule_id}/pause"))
    say(f"Paused schedule {schedule.id}; resume with: relightq schedule resume {schedule.id}")


@schedule_app.command()
def resume(schedule_id: ScheduleId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Fire again from the next cron time on (times missed while paused are not made up)."""
    with api_client(api_url, api_key) as client:
        schedule = _schedule(client.post(f"/v1/schedules/{schedule_id}/resume"))
    say(f"Resumed schedule {schedule.id}.")
    say(f"Next run: {_when(schedule.next_run_at, schedule.timezone)}")


@schedule_app.command()
def run(schedule_id: ScheduleId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Run a schedule's action now, whatever its cron says (its overlap policy applies).

    Prints the run and the batches it created; exits 1 if the action could not start.
    """
    with api_client(api_url, api_key) as client:
        response = checked(client.post(f"/v1/schedules/{schedule_id}/run"))
    result = RunOut.model_validate_json(response.content)
    _show_run(result)
    for batch in result.batches:
        say(f"Follow it with: relightq batch status {batch.id} --watch")
    if result.status == RunStatus.FAILED:
        raise typer.Exit(1)


@schedule_app.command()
def runs(
    schedule_id: ScheduleId,
    limit: PageLimit = 20,
    cursor: PageCursor = None,
    *,
    api_key: ApiKey,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """A schedule's run history, newest first, with the batches each run created."""
    params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
    with api_client(api_url, api_key) as client:
        response = checked(client.get(f"/v1/schedules/{schedule_id}/runs", params=params))
    page = RunPage.model_validate_json(response.content)
    if not page.items:
        say(f"Schedule {schedule_id} has not run yet.")
        return
    console.print(_runs_table(page.items))
    if page.next_cursor:
        say(f"More: relightq schedule runs {schedule_id} --cursor {page.next_cursor}")


@schedule_app.command()
def delete(schedule_id: ScheduleId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Delete a schedule and its run history; the batches it created stay."""
    with api_client(api_url, api_key) as client:
        checked(client.delete(f"/v1/schedules/{schedule_id}"))
    say(f"Deleted schedule {schedule_id}.")
