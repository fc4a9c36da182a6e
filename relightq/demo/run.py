"""`relightq demo`: the sample catalog relit end to end on a laptop, with no servers.

State goes to a SQLite file, Celery runs on its in-memory broker with a worker thread in
this process, results land in a local folder standing in for the bucket, and calls go to
the simulator unless RELIGHTQ_SEGMIND_API_KEY is set. The job path is the production one:
the same service creates the jobs, the same Celery task and runner execute them.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
TIMEOUT_SECONDS = 300

# One look per product, so the results show every light direction.
LOOKS: list[tuple[str, str]] = [
    ("warm morning sunlight through a window, wooden table", "Left Light"),
    ("cool studio softbox, seamless white backdrop", "Right Light"),
    ("dramatic spotlight from above, dark background", "Top Light"),
    ("neon city glow at night, reflections", "Bottom Light"),
    ("bright outdoor daylight, soft shadows", "None"),
    ("golden hour backlight, warm haze", "Left Light"),
]


def _configure(out_dir: Path, simulator_url: str | None) -> None:
    """Point every setting at the demo's folder before anything reads them."""
    os.environ["RELIGHTQ_DATABASE_URL"] = f"sqlite:///{out_dir / 'relightq.db'}"
    os.environ["RELIGHTQ_BROKER_URL"] = "memory://"
    os.environ["RELIGHTQ_LOCAL_STORAGE_DIR"] = str(out_dir / "bucket")
    if simulator_url:
        os.environ["RELIGHTQ_SIMULATOR_URL"] = simulator_url
        # The simulator has no plan limits; real Segmind keeps the configured ones.
        os.environ.setdefault("RELIGHTQ_MAX_CALLS_PER_MINUTE", "600")
        os.environ.setdefault("RELIGHTQ_MAX_CONCURRENT_CALLS", "4")
    from relightq.settings import get_settings

    get_settings.cache_clear()


def run_demo(out: str, console: Console) -> int:
    """Relight the sample catalog; print where the results are and how long it took."""
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]relightq demo")
    console.print(
        "Demo mode, for trying relightq on a laptop: SQLite state, an in-process broker and "
        "worker, and a local folder as the bucket. Production runs the API, workers, "
        "PostgreSQL, Redis and S3 (see README)."
    )
    with ExitStack() as stack:
        simulator_url = None
        if not os.environ.get("RELIGHTQ_SEGMIND_API_KEY"):
            from relightq.serving import serve_in_thread
            from relightq.simulator.app import SimulatorState, create_app

            state = SimulatorState(credits=100.0, latency=0.5)
            simulator_url = stack.enter_context(serve_in_thread(create_app(state)))
            console.print(
                f"[bold yellow]No RELIGHTQ_SEGMIND_API_KEY: using the local SIMULATOR at "
                f"{simulator_url}, not Segmind. Images get a synthetic light effect, "
                "not IC-Light.[/bold yellow]"
            )
        _configure(out_dir, simulator_url)
        return _relight_catalog(out_dir, console, stack)
    return 1  # pragma: no cover - ExitStack never swallows


def _relight_catalog(out_dir: Path, console: Console, stack: ExitStack) -> int:
    from celery.contrib.testing.worker import start_worker

    from relightq.db import session_scope
    from relightq.jobs.models import FINAL_STATUSES, Job, JobStatus
    from relightq.jobs.schemas import JobOptions
    from relightq.jobs.service import create_job_with_upload
    from relightq.migrate import upgrade
    from relightq.segmind.params import EXTENSIONS
    from relightq.settings import get_settings
    from relightq.storage import get_storage
    from relightq.tenants.service import get_or_create_tenant
    from worker.tasks import app

    settings = get_settings()
    upgrade(settings.database_url)
    stack.enter_context(
        start_worker(
            app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            queues=["relight", "control"],
        )
    )
    images = sorted(CATALOG_DIR.glob("*.png"))
    started = time.monotonic()
    job_ids: list[uuid.UUID] = []
    with session_scope() as session:
        tenant = get_or_create_tenant(session, "demo")
        for path, (prompt, light) in zip(images, LOOKS * len(images), strict=False):
            options = JobOptions(prompt=prompt, light_source=light, external_id=path.stem)
            job = create_job_with_upload(
                session, tenant.id, options, path.read_bytes(), get_storage()
            )
            job_ids.append(job.id)
    console.print(f"Submitted {len(job_ids)} jobs from {CATALOG_DIR}")

    columns = (
        *Progress.get_default_columns()[:1],
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("relighting", total=len(job_ids))
        while True:
            with session_scope() as session:
                jobs = session.query(Job).filter(Job.id.in_(job_ids)).all()
            done = sum(job.status in FINAL_STATUSES for job in jobs)
            progress.update(bar, completed=done)
            if done == len(job_ids) or time.monotonic() - started > TIMEOUT_SECONDS:
                break
            time.sleep(0.2)
    elapsed = time.monotonic() - started

    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    with session_scope() as session:
        jobs = list(
            session.scalars(
                select(Job).where(Job.id.in_(job_ids)).options(selectinload(Job.outputs))
            )
        )
    # Friendly copies named by SKU; the bucket keeps the deterministic per-job keys.
    results_dir = out_dir / "results"
    results_dir.mkdir(exist_ok=True)
    table = Table("SKU", "light", "status", "result")
    for job in sorted(jobs, key=lambda j: j.external_id or ""):
        result = job.error_message or ""
        if job.outputs:
            output = job.outputs[0]
            copy = results_dir / f"{job.external_id}.{EXTENSIONS[output.content_type]}"
            copy.write_bytes(get_storage().get(output.uri))
            result = str(copy)
        table.add_row(job.external_id, job.params["light_source"], job.status, result)
    console.print(table)
    succeeded = sum(job.status == JobStatus.SUCCEEDED for job in jobs)
    console.print(
        f"[bold]{succeeded}/{len(jobs)} relit in {elapsed:.1f} s.[/bold] "
        f"Results: {results_dir}/ (bucket: {out_dir / 'bucket'}, database: "
        f"{out_dir / 'relightq.db'})"
    )
    return 0 if succeeded == len(jobs) else 1
