"""`relightq schedule ...`: create, inspect, pause, run and delete cron schedules.

Like `relightq batch`, built on relightq.client: it shares that CLI's options, error
printing and KEY=VALUE parsing (common.py) and its rendering (render.py).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer
from rich.markup import escape

from relightq.cli.common import (
    DEFAULT_API_URL,
    ApiKey,
    ApiUrl,
    PageCursor,
    PageLimit,
    api_client,
    job_fields_from,
)
from relightq.cli.render import (
    console,
    runs_table,
    say,
    schedules_table,
    show_run,
    when,
)
from relightq.cli.render import show_schedule as print_schedule
from relightq.schedules.models import Overlap, RunStatus

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
    body: dict[str, Any] = {
        "name": name,
        "cron": cron,
        "timezone": timezone,
        "action": action,
        "overlap": overlap.value,
        "enabled": not paused,
    }
    with api_client(api_url, api_key) as client:
        schedule = client.create_schedule(**body)
    say(f"Created schedule [bold]{schedule.id}[/] ({escape(schedule.name)}).")
    if schedule.enabled:
        say(f"Next run: {when(schedule.next_run_at, schedule.timezone)}")
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
        schedule = client.update_schedule(schedule_id, **body)
    say(f"Updated schedule [bold]{schedule.id}[/] ({escape(schedule.name)}).")
    print_schedule(schedule)


@schedule_app.command("list")
def list_schedules(*, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Your schedules, oldest first, with their next run time (in their time zone)."""
    with api_client(api_url, api_key) as client:
        schedules = client.list_schedules()
    if not schedules:
        say("No schedules.")
        return
    console.print(schedules_table(schedules))


@schedule_app.command("show")
def show_schedule(
    schedule_id: ScheduleId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL
) -> None:
    """Show a schedule: its action, next run time and latest run."""
    with api_client(api_url, api_key) as client:
        print_schedule(client.get_schedule(schedule_id))


@schedule_app.command()
def pause(schedule_id: ScheduleId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Stop a schedule firing until it is resumed (runs already going carry on)."""
    with api_client(api_url, api_key) as client:
        schedule = client.pause_schedule(schedule_id)
    say(f"Paused schedule {schedule.id}; resume with: relightq schedule resume {schedule.id}")


@schedule_app.command()
def resume(schedule_id: ScheduleId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Fire again from the next cron time on (times missed while paused are not made up)."""
    with api_client(api_url, api_key) as client:
        schedule = client.resume_schedule(schedule_id)
    say(f"Resumed schedule {schedule.id}.")
    say(f"Next run: {when(schedule.next_run_at, schedule.timezone)}")


@schedule_app.command()
def run(schedule_id: ScheduleId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Run a schedule's action now, whatever its cron says (its overlap policy applies).

    Prints the run and the batches it created; exits 1 if the action could not start.
    """
    with api_client(api_url, api_key) as client:
        result = client.run_schedule(schedule_id)
    show_run(result)
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
    with api_client(api_url, api_key) as client:
        page = client.list_schedule_runs(schedule_id, limit=limit, cursor=cursor or None)
    if not page.items:
        say(f"Schedule {schedule_id} has not run yet.")
        return
    console.print(runs_table(page.items))
    if page.next_cursor:
        say(f"More: relightq schedule runs {schedule_id} --cursor {page.next_cursor}")


@schedule_app.command()
def delete(schedule_id: ScheduleId, *, api_key: ApiKey, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Delete a schedule and its run history; the batches it created stay."""
    with api_client(api_url, api_key) as client:
        client.delete_schedule(schedule_id)
    say(f"Deleted schedule {schedule_id}.")
