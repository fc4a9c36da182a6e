"""Benchmarks of the credit economy on real processes (one run prints every ratio).

    .venv/bin/python -m bench.credits [--rows 10000] [--changed 0.01] [--cap 20]
        [--budget-items 200] [--budget-images 10] [--budget-latency 0.5]
        [--budget-caps 4,20,50] [--only nightly|budget]

1. Nightly export: N distinct product photos in the shop's bucket, submitted as one CSV
   batch (subject_image = the s3:// URI, external_id = the SKU) with default settings
   (reuse on, seed 42); then a fraction of the photos is replaced with new bytes under the
   same keys and the same CSV is submitted again as a new batch. Reports the credits of
   the second run / the first (goal <= 0.011), the upstream calls of the second / the
   first, both runs' times, and, row by row from the results manifest, that every changed
   row was relit (reused_from null) and every unchanged one copied its own first-run job.
2. Budget overshoot: a batch of M distinct photos with a credit budget of exactly K images
   at several fleet caps (the whole window busy, simulator latency ~0.5 s). Reports
   credits_used / budget, calls made against calls allowed, overshoot =
   max(0, credits_used - budget) (goal 0), what the simulator charged against the
   budget, and how many claims the reservation refused (a refusal costs no call).

Each measure runs on its own deployment of tests/chaos/harness.py (relightq's defaults)
with only the fleet cap and the worker's threads raised, as bench/pipeline.py does, and
the simulator at latency 0 for the nightly runs. The process logs stay in the work
directory printed first.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

from relightq.credits.amounts import as_text
from relightq.credits.budgets import BUDGET_SPENT
from tests.chaos.harness import Deployment, default_settings, deployment

CREDITS_RATIO_GOAL = Decimal("0.011")
SHOP = "shop"
# The job fields every item shares: small pictures keep the simulator's rendering cheap.
DEFAULTS = {"prompt": "studio", "width": 256, "height": 256, "highres_scale": 1}
SIMULATOR_CREDITS = 1_000_000
FINAL = {"completed", "cancelled"}


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _json(response: httpx.Response) -> Any:
    """A response's JSON with every number read exactly (credits are exact decimals)."""
    response.raise_for_status()
    return json.loads(response.text, parse_float=Decimal)


def photo(n: int, version: int) -> bytes:
    """A small PNG product photo whose pixels are unique to row ``n`` and ``version``."""
    background = (n % 256, (n // 256) % 256, 40 if version == 0 else 200)
    image = Image.new("RGB", (64, 80), background)
    draw = ImageDraw.Draw(image)
    draw.ellipse((16, 20, 48, 60), fill=(200, 40, 40) if version == 0 else (40, 40, 200))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def put_photos(d: Deployment, keys: dict[str, bytes]) -> float:
    """Upload ``keys`` to the shop's bucket (8 at a time); the seconds it took."""
    s3 = d.s3()
    started = time.monotonic()

    def put(item: tuple[str, bytes]) -> None:
        s3.put_object(Bucket=SHOP, Key=item[0], Body=item[1], ContentType="image/png")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, keys.items()))
    return time.monotonic() - started


def _sku(n: int) -> str:
    return f"SKU-{n:06d}"


def _key(n: int) -> str:
    return f"catalog/{_sku(n)}.png"


def write_catalog(path: Path, rows: int) -> None:
    """The shop's nightly export: a SKU and its photo's s3:// URI per row."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["external_id", "subject_image"])
        for n in range(rows):
            writer.writerow([_sku(n), f"s3://{SHOP}/{_key(n)}"])


def _sim(d: Deployment) -> dict[str, Any]:
    """The simulator's counters without its per-call log (10k entries is a lot of JSON)."""
    with d.simulator() as sim:
        stats = _json(sim.get("/admin/stats"))
    stats.pop("log", None)
    return dict(stats)


def _charged(stats: dict[str, Any]) -> Decimal:
    """What the simulator took from its balance since the last reset (to six places)."""
    return (SIMULATOR_CREDITS - Decimal(stats["credits"])).quantize(Decimal("0.000001"))


def _reset_sim(d: Deployment, latency: float) -> None:
    with d.simulator() as sim:
        config = {"latency": latency, "credits": SIMULATOR_CREDITS}
        sim.post("/admin/config", json=config).raise_for_status()
        sim.post("/admin/reset").raise_for_status()


def _wait_batch(d: Deployment, batch_id: str, timeout: float) -> tuple[dict[str, Any], float]:
    """The batch once completed or cancelled, and the monotonic time that was seen."""
    deadline = time.monotonic() + timeout
    shown = time.monotonic()
    with d.api() as api:
        while True:
            batch = _json(api.get(f"/v1/batches/{batch_id}"))
            if batch["status"] in FINAL:
                return batch, time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError(f"batch not final after {timeout}s: {batch}\n{d.log_tail()}")
            if time.monotonic() - shown > 30:
                shown = time.monotonic()
                _log(f"batch {batch_id}: {batch['status']} {batch['counts']}")
            time.sleep(0.2)


def _manifest(d: Deployment, batch_id: str) -> list[dict[str, Any]]:
    with d.api() as api:
        api.timeout = 300
        response = api.get(f"/v1/batches/{batch_id}/results", params={"format": "jsonl"})
        response.raise_for_status()
    return [json.loads(line, parse_float=Decimal) for line in response.text.splitlines() if line]


def run_catalog(d: Deployment, catalog: Path, rows: int) -> dict[str, Any]:
    """Submit the catalog CSV as a new batch and wait for it; what it spent and took."""
    _reset_sim(d, 0.0)
    with d.api() as api, catalog.open("rb") as handle:
        api.timeout = 300
        started = time.monotonic()
        created = _json(
            api.post(
                "/v1/batches",
                files={"file": (catalog.name, handle, "text/csv")},
                data={"defaults": json.dumps(DEFAULTS)},
            )
        )
        accepted = time.monotonic()
    _log(f"batch {created['id']}: {created['total']} rows accepted in {accepted - started:.1f} s")
    batch, seen = _wait_batch(d, created["id"], timeout=rows / 2 + 300)
    stats = _sim(d)
    server_s = (
        _epoch(batch["completed_at"]) - _epoch(batch["created_at"])
        if batch["completed_at"]
        else None
    )
    return {
        "batch_id": batch["id"],
        "rows": batch["total"],
        "status": batch["status"],
        "counts": batch["counts"],
        "credits_used": batch["credits_used"],
        "credits_saved": batch["credits_saved"],
        "reused": batch["reused"],
        "simulator_calls": stats["calls"],
        "simulator_calls_by_api": stats["by_api"],
        "simulator_charged": _charged(stats),
        "accept_s": round(accepted - started, 2),
        "seconds": round(seen - started, 2),
        "server_seconds": None if server_s is None else round(server_s, 2),
        "items_per_s": round(rows / (seen - started), 2),
    }


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def nightly(workdir: Path, rows: int, changed: float, cap: int, seed: int) -> dict[str, Any]:
    """The same catalog twice, with ``changed`` of its photos replaced in between."""
    (workdir / "nightly").mkdir(parents=True, exist_ok=True)
    with deployment(
        workdir / "nightly",
        workers=1,
        own_postgres=None,
        max_concurrent_calls=str(cap),
        worker_concurrency=str(cap + 8),
    ) as d:
        d.s3().create_bucket(Bucket=SHOP)
        upload_s = put_photos(d, {_key(n): photo(n, 0) for n in range(rows)})
        _log(f"{rows} photos uploaded in {upload_s:.1f} s")
        catalog = d.workdir / "catalog.csv"
        write_catalog(catalog, rows)
        first = run_catalog(d, catalog, rows)
        _log(f"first run: {json.dumps(first, default=_num)}")
        first_rows = {r["external_id"]: r for r in _manifest(d, first["batch_id"])}

        replaced = sorted(random.Random(seed).sample(range(rows), round(rows * changed)))
        put_photos(d, {_key(n): photo(n, 1) for n in replaced})
        second = run_catalog(d, catalog, rows)
        _log(f"second run: {json.dumps(second, default=_num)}")
        second_rows = _manifest(d, second["batch_id"])

    changed_skus = {_sku(n) for n in replaced}
    relit_changed = reused_unchanged = wrong_source = not_succeeded = 0
    for row in second_rows:
        not_succeeded += row["status"] != "succeeded"
        if row["external_id"] in changed_skus:
            relit_changed += row["reused_from"] is None
        elif row["reused_from"] is not None:
            reused_unchanged += 1
            # The picture copied must be this SKU's own from the first run.
            wrong_source += row["reused_from"] != first_rows[row["external_id"]]["job_id"]
    first_reused = sum(r["reused_from"] is not None for r in first_rows.values())
    credits_ratio = second["credits_used"] / first["credits_used"]
    return {
        "rows": rows,
        "changed": len(replaced),
        "cap": cap,
        "first": first,
        "second": second,
        "credits_ratio": credits_ratio.quantize(Decimal("0.000001")),
        "credits_ratio_goal": CREDITS_RATIO_GOAL,
        "calls_ratio": round(second["simulator_calls"] / first["simulator_calls"], 6),
        "second_over_first_time": round(second["seconds"] / first["seconds"], 3),
        "first_run_reused": first_reused,
        "changed_rows_relit": relit_changed,
        "unchanged_rows_reused": reused_unchanged,
        "unchanged_rows": rows - len(replaced),
        "reused_from_another_sku": wrong_source,
        "second_run_not_succeeded": not_succeeded,
    }


def _dispatched(d: Deployment, batch_id: str) -> int:
    """Items handed to the broker and not final (held items wait undispatched)."""
    rows = d.sql(
        "SELECT count(*) FROM jobs WHERE batch_id = %s AND dispatched_at IS NOT NULL"
        " AND status NOT IN ('succeeded', 'failed', 'cancelled')",
        batch_id,
    )
    return int(rows[0][0])


def _settled(d: Deployment, batch_id: str, timeout: float = 180) -> dict[str, Any]:
    """The batch once its budget stopped it: waiting, no item dispatched and unfinished, no
    call on the wire, and nothing changed for 3 s."""
    deadline = time.monotonic() + timeout
    last: tuple[Any, ...] | None = None
    quiet_since = time.monotonic()
    with d.api() as api:
        while True:
            batch = _json(api.get(f"/v1/batches/{batch_id}"))
            stats = _sim(d)
            dispatched = _dispatched(d, batch_id)
            now = (batch["status"], json.dumps(batch["counts"]), stats["calls"], dispatched)
            if now != last:
                last, quiet_since = now, time.monotonic()
            idle = not dispatched and not stats["in_flight"]
            quiet = time.monotonic() - quiet_since >= 3
            if batch["status"] in ("waiting", *FINAL) and idle and quiet:
                return dict(batch)
            if time.monotonic() > deadline:
                raise AssertionError(f"budget batch never settled: {batch}\n{d.log_tail()}")
            time.sleep(0.2)


def budget_run(workdir: Path, cap: int, items: int, images: int, latency: float) -> dict[str, Any]:
    """A batch of ``items`` distinct photos with a budget of exactly ``images`` images."""
    price = default_settings().segmind_credits_per_image
    budget = price * images
    (workdir / f"budget-c{cap}").mkdir(parents=True, exist_ok=True)
    with deployment(
        workdir / f"budget-c{cap}",
        workers=1,
        own_postgres=None,
        max_concurrent_calls=str(cap),
        worker_concurrency=str(cap + 8),
    ) as d:
        d.s3().create_bucket(Bucket=SHOP)
        # Rows far past any catalog's, so no photo is one already relit: every item calls.
        put_photos(d, {f"budget/{n}.png": photo(100_000 + n, 0) for n in range(items)})
        _reset_sim(d, latency)
        body = {
            "items": [
                {"subject_image": f"s3://{SHOP}/budget/{n}.png", "external_id": f"B-{n}"}
                for n in range(items)
            ],
            "defaults": DEFAULTS,
            "credit_budget": float(budget),
        }
        with d.api() as api:
            created = _json(api.post("/v1/batches", json=body))
        batch = _settled(d, created["id"])
        stats = _sim(d)
        held = d.sql(
            "SELECT count(*), coalesce(sum(credits_reserved), 0), coalesce(sum(credits_used), 0)"
            " FROM jobs WHERE batch_id = %s AND credits_reserved > 0",
            created["id"],
        )[0]
        used_rows = d.sql(
            "SELECT coalesce(sum(credits_used), 0), count(*) FILTER (WHERE attempts > 0)"
            " FROM jobs WHERE batch_id = %s",
            created["id"],
        )[0]
        with d.api() as api:
            api.post(f"/v1/batches/{created['id']}/cancel").raise_for_status()
        # A refusal makes no attempt row (no call): the worker's log line is its only trace.
        worker_log = (d.workdir / "worker0.log").read_text(errors="replace")
        refusals = worker_log.count(f"-> waiting {BUDGET_SPENT}")
    charged = _charged(stats)
    used = batch["credits_used"]
    return {
        "cap": cap,
        "window": 2 * cap,
        "items": items,
        "latency_s": latency,
        "budget": budget,
        "status": batch["status"],
        "waiting_reason": batch["waiting_reason"],
        "counts": batch["counts"],
        "credits_used": used,
        "jobs_credits_used_sum": used_rows[0],
        "items_with_an_attempt": used_rows[1],
        "items_refused_at_reservation": batch["counts"]["waiting"],
        "refusals": refusals,
        "used_over_budget": (used / budget).quantize(Decimal("0.000001")),
        "overshoot": max(Decimal(0), used - budget),
        "calls_allowed": int(budget // price),
        "simulator_calls": stats["calls"],
        "simulator_calls_ok": stats["by_status"].get("200", 0),
        "simulator_peak_concurrency": stats["peak_concurrency"],
        "simulator_charged": charged,
        "charged_over_budget": (charged / budget).quantize(Decimal("0.000001")),
        "reservations_left": {"jobs": held[0], "credits": held[1]},
    }


def _num(value: Any) -> Any:
    """Decimals as JSON numbers (six places at most: their text is exact)."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def main() -> None:
    """Run the benchmarks and print their numbers."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--cap", type=int, default=20, help="the nightly run's fleet cap")
    parser.add_argument("--seed", type=int, default=17, help="which photos change")
    parser.add_argument("--budget-items", type=int, default=200)
    parser.add_argument("--budget-images", type=int, default=10)
    parser.add_argument("--budget-latency", type=float, default=0.5)
    parser.add_argument("--budget-caps", default="4,20,50")
    parser.add_argument("--only", choices=["nightly", "budget"])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relightq-bench-"))
    _log(f"process logs in {workdir}")
    results: dict[str, Any] = {}
    if args.only != "budget":
        results["nightly"] = nightly(workdir, args.rows, args.changed, args.cap, args.seed)
        print(json.dumps({"nightly": results["nightly"]}, indent=2, default=_num), flush=True)
    if args.only != "nightly":
        results["budget"] = []
        for cap in (int(c) for c in args.budget_caps.split(",")):
            run = budget_run(
                workdir, cap, args.budget_items, args.budget_images, args.budget_latency
            )
            results["budget"].append(run)
            print(json.dumps({"budget": run}, indent=2, default=_num), flush=True)

    print()
    if "nightly" in results:
        n = results["nightly"]
        first, second = n["first"], n["second"]
        print(
            f"nightly export, {n['rows']} rows, {n['changed']} photos changed: credits "
            f"{as_text(second['credits_used'])} / {as_text(first['credits_used'])} = "
            f"{as_text(n['credits_ratio'])} (goal <= {CREDITS_RATIO_GOAL}); calls "
            f"{second['simulator_calls']} / {first['simulator_calls']} = {n['calls_ratio']}"
        )
        print(
            f"  second run {second['seconds']} s ({second['items_per_s']} items/s), first "
            f"{first['seconds']} s ({first['items_per_s']} items/s); reused "
            f"{second['reused']}; changed rows relit {n['changed_rows_relit']}/{n['changed']}, "
            f"unchanged reused {n['unchanged_rows_reused']}/{n['unchanged_rows']}, "
            f"from another SKU {n['reused_from_another_sku']}"
        )
    for b in results.get("budget", []):
        print(
            f"budget {as_text(b['budget'])} ({b['calls_allowed']} images), cap {b['cap']}, "
            f"{b['items']} items: credits_used {as_text(b['credits_used'])} "
            f"({as_text(b['used_over_budget'])} of the budget), "
            f"overshoot {as_text(b['overshoot'])} "
            f"(goal 0), calls {b['simulator_calls']} / {b['calls_allowed']} allowed, simulator "
            f"charged {as_text(b['simulator_charged'])}; {b['refusals']} claims refused at the "
            f"reservation ({b['items_refused_at_reservation']} items)"
        )


if __name__ == "__main__":
    main()
