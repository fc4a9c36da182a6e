"""The `relightq` command line (docs/getting-started.md, docs/operations/index.md).

The operator's commands (api, worker, beat, migrate, keys, buckets, throttle, tenants,
...) are here and import the server's modules only when run; `relightq batch` and
`relightq schedule` (batches.py, schedules.py) are clients of the API, built on
relightq.client.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from relightq.cli.batches import batch_app
from relightq.cli.schedules import schedule_app

app = typer.Typer(help="relightq: relight product images with Segmind IC-Light, queued.")
keys_app = typer.Typer(help="Manage client API keys.")
app.add_typer(keys_app, name="keys")
buckets_app = typer.Typer(
    help="Grant tenants the buckets (besides relightq's own) they may read images from and "
    "write outputs to with relightq's S3 credentials."
)
app.add_typer(buckets_app, name="buckets")
throttle_app = typer.Typer(help="See, pause and resume the fleet's upstream calls.")
app.add_typer(throttle_app, name="throttle")
tenants_app = typer.Typer(help="See tenants and set their monthly credit caps.")
app.add_typer(tenants_app, name="tenants")
app.add_typer(batch_app, name="batch")
app.add_typer(schedule_app, name="schedule")
console = Console()
BEAT_MAX_LOOP_SECONDS = 30


def _logging(level: int | None = None) -> None:
    from relightq.logs import configure
    from relightq.settings import get_settings

    settings = get_settings()
    configure(logging.getLevelName(level) if level else settings.log_level, settings.log_format)


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the REST API."""
    import uvicorn

    _logging()
    # relightq's own request line (api/request_log.py) replaces uvicorn's access log, and
    # log_config=None leaves logging as _logging() set it: uvicorn's own lines (start-up,
    # "Exception in ASGI application" tracebacks) propagate to relightq's handler, so they
    # are redacted and in LOG_FORMAT like every other line, not uvicorn's plain text.
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        proxy_headers=True,
        access_log=False,
        log_config=None,
    )


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Threads per worker (default RELIGHTQ_WORKER_CONCURRENCY).")
    ] = None,
) -> None:
    """Run a Celery worker consuming relight jobs."""
    from relightq.broker import Queue
    from relightq.settings import get_settings
    from worker.tasks import app as celery_app

    _logging()
    get_settings().warn_if_simulated()
    metrics_port = get_settings().worker_metrics_port
    if metrics_port:
        from prometheus_client import start_http_server

        # This process's own counters: upstream latency and calls, webhook deliveries.
        start_http_server(metrics_port)
    threads = concurrency or get_settings().worker_concurrency
    # Threads: each job spends ~30 s waiting on Segmind, so one process can hold many calls.
    celery_app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={threads}",
            f"--queues={Queue.RELIGHT.value},{Queue.CONTROL.value},{Queue.WEBHOOKS.value}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def beat() -> None:
    """Run the Celery beat scheduler (one per deployment)."""
    from worker.tasks import app as celery_app

    _logging()
    celery_app.conf.update(
        # Beat answers `celery inspect ping --destination celerybeat@<host>` (Celery 5.7+;
        # older versions ignore the setting) and goes silent once its scheduler has not
        # ticked for twice the loop interval, which is what the compose healthcheck asks.
        beat_enable_remote_control=True,
        # Ticks at least this often (default 300 s), so a stalled beat shows within a minute.
        beat_max_loop_interval=BEAT_MAX_LOOP_SECONDS,
    )
    celery_app.start(["beat", "--loglevel=INFO"])


@app.command()
def migrate() -> None:
    """Apply database migrations."""
    from relightq.migrate import upgrade
    from relightq.settings import get_settings

    _logging()
    upgrade(get_settings().database_url)
    console.print("[green]database is up to date[/green]")


@app.command()
def simulate(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8090,
    credits: Annotated[float, typer.Option(help="Starting credit balance.")] = 100.0,
    latency: Annotated[float, typer.Option(help="Seconds each relight call takes.")] = 0.0,
) -> None:
    """Run the local Segmind simulator (not IC-Light: a stand-in for tests and demos)."""
    from relightq.simulator.app import serve

    _logging()
    serve(host=host, port=port, credits=credits, latency=latency)


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Folder for the demo's database and results.")] = (
        "relightq-demo"
    ),
) -> None:
    """Relight the sample catalog end to end, with no servers (SQLite, in-process worker)."""
    from relightq.demo.run import run_demo

    _logging(logging.WARNING)
    raise typer.Exit(run_demo(out, console))


@app.command("create-bucket")
def create_bucket() -> None:
    """Create RELIGHTQ_S3_BUCKET if it does not exist (idempotent; any S3-compatible store)."""
    from relightq.settings import get_settings
    from relightq.storage import S3Storage

    storage = S3Storage(get_settings())
    storage.ensure_bucket()
    console.print(f"bucket [bold]{storage.bucket}[/bold] is ready")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name; created if new.")],
    operator: Annotated[
        bool, typer.Option(help="Let this tenant pause and resume the whole fleet.")
    ] = False,
    bucket: Annotated[
        list[str] | None,
        typer.Option(
            metavar="BUCKET",
            help="Also grant the tenant this bucket (see `relightq buckets`). Repeatable.",
        ),
    ] = None,
) -> None:
    """Create an API key for TENANT and print it once (only its hash is stored)."""
    from relightq.db import session_scope
    from relightq.tenants.service import create_key, get_or_create_tenant, grant_bucket

    with session_scope() as session:
        owner = get_or_create_tenant(session, tenant, operator=operator)
        key = create_key(session, owner)
        for name in bucket or []:
            grant_bucket(session, owner, name)
    console.print(key, soft_wrap=True, highlight=False)


@keys_app.command("list")
def keys_list() -> None:
    """Every key by tenant: its prefix (never the key), when made, whether revoked."""
    from relightq.db import session_scope
    from relightq.tenants.service import list_keys

    with session_scope() as session:
        keys = list_keys(session)
    if not keys:
        console.print("No keys.")
    for tenant, key in keys:
        revoked = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        console.print(
            f"{tenant}  {key.prefix}…  {key.created_at:%Y-%m-%d %H:%M}  {revoked}",
            highlight=False,
        )


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[
        str,
        typer.Argument(
            metavar="KEY|PREFIX",
            help="The key, or its prefix as `relightq keys list` shows it.",
            show_default=False,
        ),
    ],
) -> None:
    """Revoke a key at once: the API answers it 401, and dashboard sessions it opened end."""
    from relightq.db import session_scope
    from relightq.tenants.service import revoke_key

    with session_scope() as session:
        revoked = [row.prefix for row in revoke_key(session, key.strip())]
    if not revoked:
        console.print("[red]no active key matches[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {', '.join(p + '…' for p in revoked)}", highlight=False)


BucketNames = Annotated[
    list[str], typer.Argument(metavar="BUCKET...", help="Bucket names.", show_default=False)
]
TenantName = Annotated[str, typer.Argument(metavar="TENANT", help="Tenant name.")]


@buckets_app.command("grant")
def buckets_grant(tenant: TenantName, buckets: BucketNames) -> None:
    """Let TENANT use BUCKET... for subjects, prefixes and outputs (TENANT created if new)."""
    from relightq.db import session_scope
    from relightq.tenants.service import get_or_create_tenant, grant_bucket

    with session_scope() as session:
        owner = get_or_create_tenant(session, tenant)
        for name in buckets:
            grant_bucket(session, owner, name)
    console.print(f"{tenant} may use: {', '.join(buckets)}", highlight=False)


@buckets_app.command("revoke")
def buckets_revoke(tenant: TenantName, buckets: BucketNames) -> None:
    """Take BUCKET... back from TENANT (jobs already accepted still run)."""
    from sqlalchemy import select

    from relightq.db import session_scope
    from relightq.tenants.models import Tenant
    from relightq.tenants.service import revoke_bucket

    with session_scope() as session:
        owner = session.scalar(select(Tenant).where(Tenant.name == tenant))
        if owner is None:
            console.print(f"[red]no tenant named {tenant}[/red]")
            raise typer.Exit(1)
        missing = [name for name in buckets if not revoke_bucket(session, owner, name)]
    if missing:
        console.print(f"{tenant} had no grant for: {', '.join(missing)}", highlight=False)
    console.print(f"{tenant} may no longer use: {', '.join(buckets)}", highlight=False)


@buckets_app.command("list")
def buckets_list() -> None:
    """Every tenant's granted buckets."""
    from relightq.db import session_scope
    from relightq.settings import get_settings
    from relightq.tenants.service import list_grants

    if not get_settings().require_bucket_grants:
        console.print("RELIGHTQ_REQUIRE_BUCKET_GRANTS is off: every tenant may use any bucket.")
    with session_scope() as session:
        grants = list_grants(session)
    if not grants:
        console.print("No bucket grants.")
    for tenant, bucket in grants:
        console.print(f"{tenant}  {bucket}", highlight=False)


def _show_throttle() -> None:
    from relightq.settings import get_settings
    from relightq.throttle.schemas import throttle_view
    from relightq.throttle.service import get_fleet

    view = throttle_view(get_fleet().state(), get_settings())
    # No tenant asks here: a tenant's credits are `relightq tenants list`.
    console.print_json(view.model_dump_json(exclude={"tenant_credits"}))


@throttle_app.command("status")
def throttle_status() -> None:
    """Show whether the fleet runs or is paused (and why), credits and calls in flight."""
    _show_throttle()


@throttle_app.command("pause")
def throttle_pause(
    reason: Annotated[str, typer.Option(help="Why, shown on every waiting job.")] = (
        "paused by an operator"
    ),
) -> None:
    """Stop new upstream calls fleet-wide until `relightq throttle resume`."""
    from relightq.throttle.service import MANUAL, get_fleet, pause_fleet

    pause_fleet(get_fleet(), MANUAL, reason, manual=True)
    _show_throttle()


@throttle_app.command("resume")
def throttle_resume() -> None:
    """Resume upstream calls and wake the jobs that waited."""
    from relightq.throttle.service import get_fleet, resume_fleet

    resume_fleet(get_fleet(), manual=True)
    _show_throttle()


@tenants_app.command("cap")
def tenants_cap(
    tenant: TenantName,
    credits: Annotated[
        str,
        typer.Argument(
            metavar="CREDITS|none",
            help="Credits TENANT may spend per calendar month (UTC), or 'none' for no cap.",
            show_default=False,
        ),
    ],
) -> None:
    """Set TENANT's monthly credit cap. Past it, its jobs wait (never fail); raising or
    removing the cap lets them go on at once, and so does the month turning."""
    from relightq.credits.amounts import as_text
    from relightq.credits.caps import parse_cap, set_monthly_cap, tenant_credits
    from relightq.db import session_scope
    from relightq.errors import NotFound

    try:
        cap = parse_cap(credits)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'CREDITS|none'") from None
    try:
        with session_scope() as session:
            owner = set_monthly_cap(session, tenant, cap)
            month = tenant_credits(session, owner)
    except NotFound as exc:
        console.print(f"[red]{escape(exc.message)}[/red]")
        raise typer.Exit(1) from None
    shown = "none" if cap is None else f"{as_text(cap)} credits a month"
    console.print(
        f"{tenant}: monthly cap {shown}; spent in {month.month:%Y-%m} (UTC) "
        f"{as_text(month.spent_this_month)}, reserved now {as_text(month.reserved)}",
        highlight=False,
    )


@tenants_app.command("list")
def tenants_list() -> None:
    """Every tenant: operator or not, monthly cap, spent this month (UTC), reserved now."""
    from rich.table import Table

    from relightq.credits.amounts import as_text
    from relightq.credits.caps import list_tenants
    from relightq.db import session_scope

    with session_scope() as session:
        rows = list_tenants(session)
    if not rows:
        console.print("No tenants.")
        return
    table = Table(
        "tenant", "operator", "monthly cap", f"spent {rows[0].credits.month:%Y-%m}", "reserved"
    )
    for row in rows:
        month = row.credits
        cap = "none" if month.monthly_cap is None else as_text(month.monthly_cap)
        table.add_row(
            escape(row.name),
            "yes" if row.is_operator else "no",
            cap,
            as_text(month.spent_this_month),
            as_text(month.reserved),
        )
    console.print(table)
