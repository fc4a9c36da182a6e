"""`relightq demo`: the sample catalog relit end to end on a laptop, with no servers.

State goes to a SQLite file, Celery runs on its in-memory broker with a worker thread in
this process, results land in a local folder standing in for the bucket, and calls go to
the simulator unless RELIGHTQ_SEGMIND_API_KEY is set. The job path is the production one:
the same service creates the jobs, the same Celery task and runner execute them.
"""

from __future__ import annotations

import csv
import os
import time
from contextlib import ExitStack
from decimal import Decimal
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

    from relightq.batches.schemas import BatchSettings
    from relightq.batches.service import (
        batch_view,
        create_batch,
        csv_lines,
        get_batch,
        manifest_rows,
    )
    from relightq.batches.sources import csv_items
    from relightq.db import get_sessionmaker, session_scope
    from relightq.migrate import upgrade
    from relightq.settings import get_settings
    from relightq.storage import get_storage
    from relightq.tenants.service import get_or_create_tenant
    from worker.tasks import app

    settings = get_settings()
    storage = get_storage()
    upgrade(settings.database_url)
    stack.enter_context(
        start_worker(
            app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            queues=["relight", "control", "webhooks"],
        )
    )
    with session_scope() as session:
        tenant_id = get_or_create_tenant(session, "demo").id
    # The catalog goes where a shop would put it, and a CSV lists it: the batch path.
    catalog_csv = out_dir / "catalog.csv"
    with catalog_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["external_id", "subject_image", "prompt", "light_source"])
        images = sorted(CATALOG_DIR.glob("*.png"))
        for path, (prompt, light) in zip(images, LOOKS * len(images), strict=False):
            key = f"inputs/{tenant_id}/catalog/{path.name}"
            uri = storage.put(key, path.read_bytes(), "image/png")
            writer.writerow([path.stem, uri, prompt, light])
    started = time.monotonic()
    with session_scope() as session, catalog_csv.open("rb") as handle:
        spec = BatchSettings(name="demo catalog", key_template="{external_id}.{ext}")
        batch_id = create_batch(
            session, tenant_id, spec, "csv", csv_items(handle), storage, settings
        ).id
    console.print(f"Submitted a batch of {len(images)} items from {catalog_csv}")

    columns = (
        *Progress.get_default_columns()[:1],
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("relighting", total=len(images))
        while True:
            with session_scope() as session:
                view = batch_view(session, get_batch(session, tenant_id, batch_id))
            progress.update(bar, completed=round(view.progress * view.total))
            if view.completed_at or time.monotonic() - started > TIMEOUT_SECONDS:
                break
            time.sleep(0.2)
    elapsed = time.monotonic() - started

    rows = list(manifest_rows(get_sessionmaker(), batch_id, storage, errors_only=False))
    (out_dir / "results.csv").write_text("".join(csv_lines(rows)))
    # Friendly copies named by SKU; the bucket keeps the batch's keys.
    results_dir = out_dir / "results"
    results_dir.mkdir(exist_ok=True)
    table = Table("SKU", "status", "result")
    for row in rows:
        result = (row["error"] or {}).get("message") or ""
        if row["outputs"]:
            uri = row["outputs"][0]["s3_uri"]
            copy = results_dir / f"{row['external_id']}{Path(uri).suffix}"
            copy.write_bytes(storage.get(uri))
            result = str(copy)
        table.add_row(row["external_id"], row["status"], result)
    console.print(table)
    succeeded = sum(row["status"] == "succeeded" for row in rows)
    from relightq.credits.amounts import as_text

    reused = [row for row in rows if row["reused_from"]]
    if reused:
        # A second demo run finds the first one's pictures: copied, not bought again.
        saved = sum((row["credits_saved"] for row in reused), Decimal(0))
        console.print(
            f"{len(reused)} of them were already made by an earlier run: copied, not bought "
            f"again ({as_text(saved)} credits saved)."
        )
    console.print(
        f"[bold]{succeeded}/{len(rows)} relit in {elapsed:.1f} s.[/bold] "
        f"Results: {results_dir}/, manifest: {out_dir / 'results.csv'} (bucket: "
        f"{out_dir / 'bucket'}, database: {out_dir / 'relightq.db'})"
    )
    return 0 if rows and succeeded == len(rows) else 1
