"""Benchmark of million-row catalogs on real processes (one run prints every ratio).

    .venv/bin/python -m bench.batch_ingest [--rows 1000000] [--format both] [--latency 0.2]

For each file format asked (CSV, JSONL or both, one batch after the other):

1. Accepting the catalog: the time from the first byte of the upload to the 202 (goal
   <= 60 s for a million rows on this 2-core machine), and the API process's RSS growth
   while it reads, validates and stores the rows (goal <= 100 MB).
2. The broker stays short: messages in Redis right after the 202 / the batch window.
3. Fairness: seconds a single job submitted behind the running batch takes to succeed
   (median of 5), as a multiple of the upstream latency (goal <= 2).
4. A fleet pause with the batch queued: upstream calls started during the pause (goal
   0), the largest broker backlog seen (goal <= the window), and attempts spent minus
   calls made (goal 0: a pause burns no attempts).
5. The results manifest of every row streamed in the batch's own format: time (goal
   <= 60 s) and API RSS growth.
6. Cancelling the batch: the time to the answer (goal <= 10 s), and until every held row
   is brought up to date (the batch completed).
Every goal is printed as measured / goal (1 or less meets it). The deployment is thrown
away at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.pipeline import _rss_mb
from relightq.broker import broker_backlog
from relightq.settings import Settings
from tests.chaos.harness import Deployment, deployment
from tests.support.images import product_png

ACCEPT_GOAL_S = 60.0
RSS_GOAL_MB = 100.0
MANIFEST_GOAL_S = 60.0
CANCEL_GOAL_S = 10.0
SINGLE_JOB_GOAL_LATENCIES = 2.0
SINGLE_JOB_TRIALS = 5
FORMATS = ("csv", "jsonl")
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/jsonl"}


class PeakRss:
    """The highest RSS of a process, sampled every 20 ms while in use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = _rss_mb(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return round(self.peak - self.start, 1)


def write_catalog(path: Path, rows: int, file_format: str) -> None:
    """A shop export: SKU, image, a prompt override on every tenth row, a collection."""
    with path.open("w", newline="") as handle:
        if file_format == "csv":
            writer = csv.writer(handle)
            writer.writerow(["external_id", "subject_image", "prompt", "metadata.collection"])
            for n in range(rows):
                prompt = "sunset on a beach" if n % 10 == 0 else ""
                writer.writerow([f"SKU-{n:07d}", "s3://shop/p.png", prompt, f"c{n % 40}"])
            return
        for n in range(rows):
            item: dict[str, Any] = {
                "external_id": f"SKU-{n:07d}",
                "subject_image": "s3://shop/p.png",
            }
            if n % 10 == 0:
                item["prompt"] = "sunset on a beach"
            item["metadata"] = {"collection": f"c{n % 40}"}
            handle.write(json.dumps(item) + "\n")


def ingest(d: Deployment, path: Path, file_format: str) -> dict[str, Any]:
    api_pid = d.processes["api"].pid
    with d.api() as api, path.open("rb") as handle, PeakRss(api_pid) as rss:
        api.timeout = 600
        started = time.monotonic()
        response = api.post(
            "/v1/batches",
            files={"file": (path.name, handle, MEDIA_TYPES[file_format])},
            # One photo on every row: each item buys its picture, as distinct photos would.
            data={
                "defaults": json.dumps({"prompt": "studio", "width": 256, "height": 256}),
                "reuse": "false",
            },
        )
        elapsed = time.monotonic() - started
    response.raise_for_status()
    batch = response.json()
    return {
        "rows": batch["total"],
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "accept_s": round(elapsed, 2),
        "accept_ratio_to_goal": round(elapsed / ACCEPT_GOAL_S, 3),
        "rows_per_s": round(batch["total"] / elapsed),
        "api_rss_growth_mb": rss.growth_mb,
        "rss_ratio_to_goal": round(rss.growth_mb / RSS_GOAL_MB, 3),
        "batch_id": batch["id"],
    }


def single_job_behind(d: Deployment, batch_id: str, window: int, latency: float) -> dict[str, Any]:
    """Seconds from posting one job to its success while the big batch runs, a few times.

    Measured once the batch is flowing (2 windows done): a brand-new fleet admits no call
    for its first two heartbeats (the warm-up that lets live holders re-assert their
    slots after a Redis loss), which would be timed instead of the batch's competition.
    """
    body = {
        "prompt": "now",
        "subject_image": "s3://shop/p.png",
        "width": 256,
        "height": 256,
        "reuse": False,  # a copy of the batch's picture would not wait at all
    }
    times: list[float] = []
    with d.api() as api:
        deadline = time.monotonic() + 120
        while api.get(f"/v1/batches/{batch_id}").json()["counts"]["succeeded"] < 2 * window:
            assert time.monotonic() < deadline, "the batch never started"
            time.sleep(0.5)  # each look counts a million rows
        for _ in range(SINGLE_JOB_TRIALS):
            started = time.monotonic()
            job_id = api.post("/v1/jobs", json=body).raise_for_status().json()["id"]
            while api.get(f"/v1/jobs/{job_id}").json()["status"] != "succeeded":
                if time.monotonic() - started > 120:
                    raise AssertionError("the single job never ran")
                time.sleep(0.02)
            times.append(time.monotonic() - started)
    median = statistics.median(times)
    return {
        "median_s": round(median, 2),
        "max_s": round(max(times), 2),
        "median_in_upstream_latencies": round(median / latency, 2),
        "ratio_to_goal": round(median / latency / SINGLE_JOB_GOAL_LATENCIES, 3),
    }


def pause_with_batch_queued(
    d: Deployment, batch_id: str, window: int, calls_at_start: int
) -> dict[str, Any]:
    """Pause, watch for a few seconds, resume; the operator key is the deployment's.
    ``calls_at_start``: the simulator's calls before this batch (earlier batches')."""
    settings = Settings(broker_url=d.env["RELIGHTQ_BROKER_URL"])
    engine = create_engine(d.env["RELIGHTQ_DATABASE_URL"])
    attempts_sql = text("SELECT coalesce(sum(attempts), 0) FROM jobs WHERE batch_id = :b")
    with d.api() as api, d.simulator() as sim:
        api.post("/v1/throttle/pause", json={"reason": "bench"}).raise_for_status()
        deadline = time.monotonic() + 60
        while api.get(f"/v1/batches/{batch_id}").json()["counts"]["running"]:
            assert time.monotonic() < deadline, "items kept running after the pause"
            time.sleep(0.05)
        calls_before = sim.get("/admin/stats").json()["calls"]
        backlog = []
        for _ in range(50):  # five seconds
            backlog.append(broker_backlog(settings))
            time.sleep(0.1)
        calls_after = sim.get("/admin/stats").json()["calls"]
        batch = api.get(f"/v1/batches/{batch_id}").json()
        with engine.connect() as connection:
            attempts = int(connection.execute(attempts_sql, {"b": batch_id}).scalar_one())
        api.post("/v1/throttle/resume").raise_for_status()
    engine.dispose()
    return {
        "calls_during_pause": calls_after - calls_before,
        "max_broker_backlog": max(backlog),
        "window": window,
        "waiting_items": batch["counts"]["waiting"],
        "batch_status": batch["status"],
        # Every call since calls_at_start was one of this batch's items or a single job.
        "attempts_minus_calls": attempts - (calls_before - calls_at_start - SINGLE_JOB_TRIALS),
    }


def manifest(d: Deployment, batch_id: str, file_format: str) -> dict[str, Any]:
    with d.api() as api, PeakRss(d.processes["api"].pid) as rss:
        api.timeout = 600
        started = time.monotonic()
        lines = 0
        url = f"/v1/batches/{batch_id}/results?format={file_format}"
        with api.stream("GET", url) as response:
            for _ in response.iter_lines():
                lines += 1
        elapsed = time.monotonic() - started
    return {
        "rows": lines - (file_format == "csv"),  # a CSV's header
        "seconds": round(elapsed, 2),
        "ratio_to_goal": round(elapsed / MANIFEST_GOAL_S, 3),
        "api_rss_growth_mb": rss.growth_mb,
    }


def cancel(d: Deployment, batch_id: str) -> dict[str, Any]:
    """The cancel's answer time, and how long until every held row is cancelled."""
    with d.api() as api:
        api.timeout = 600
        started = time.monotonic()
        answer = api.post(f"/v1/batches/{batch_id}/cancel").raise_for_status().json()
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 600
        while api.get(f"/v1/batches/{batch_id}").json()["completed_at"] is None:
            assert time.monotonic() < deadline, "the cancelled batch never completed"
            time.sleep(0.5)
        settled = time.monotonic() - started
    return {
        "answer_s": round(elapsed, 2),
        "ratio_to_goal": round(elapsed / CANCEL_GOAL_S, 3),
        "status": answer["status"],
        "cancelled_in_answer": answer["counts"]["cancelled"],
        "all_rows_cancelled_s": round(settled, 1),
    }


def one_format(
    d: Deployment, workdir: Path, file_format: str, rows: int, latency: float
) -> dict[str, Any]:
    """Every measure for one batch of ``rows`` in ``file_format``."""
    with d.simulator() as sim:
        calls_at_start = sim.get("/admin/stats").json()["calls"]
    path = workdir / f"catalog.{file_format}"
    write_catalog(path, rows, file_format)
    results: dict[str, Any] = {"ingest": ingest(d, path, file_format)}
    path.unlink()
    settings = Settings(
        broker_url=d.env["RELIGHTQ_BROKER_URL"],
        max_concurrent_calls=int(d.env["RELIGHTQ_MAX_CONCURRENT_CALLS"]),
    )
    window = settings.batch_window_size
    results["broker"] = {"backlog": broker_backlog(settings), "window": window}
    batch_id = results["ingest"]["batch_id"]
    results["single_job"] = single_job_behind(d, batch_id, window, latency)
    results["pause"] = pause_with_batch_queued(d, batch_id, window, calls_at_start)
    results["manifest"] = manifest(d, batch_id, file_format)
    results["cancel"] = cancel(d, batch_id)
    return results


def report(file_format: str, results: dict[str, Any], latency: float) -> None:
    """The lines of one format's run, each goal as measured / goal."""
    i, m, c = results["ingest"], results["manifest"], results["cancel"]
    name = file_format.upper()
    print(
        f"\n{name}: {i['rows']} rows ({i['file_mb']} MB) accepted in {i['accept_s']} s: "
        f"{i['accept_ratio_to_goal']:.2f} of the {ACCEPT_GOAL_S:.0f} s goal "
        f"({i['rows_per_s']} rows/s)"
    )
    print(
        f"{name}: API RSS growth while accepting: {i['api_rss_growth_mb']} MB: "
        f"{i['rss_ratio_to_goal']:.2f} of the {RSS_GOAL_MB:.0f} MB goal"
    )
    b = results["broker"]
    print(f"{name}: broker backlog after the 202: {b['backlog']} messages / window {b['window']}")
    j = results["single_job"]
    print(
        f"{name}: a single job behind the running batch succeeded in {j['median_s']} s median "
        f"(max {j['max_s']} s of {SINGLE_JOB_TRIALS}): {j['median_in_upstream_latencies']} x "
        f"the upstream latency of {latency} s: {j['ratio_to_goal']:.2f} of the "
        f"{SINGLE_JOB_GOAL_LATENCIES:.0f} x goal"
    )
    p = results["pause"]
    print(
        f"{name}: paused with the batch queued: {p['calls_during_pause']} calls in 5 s "
        f"(goal 0), broker backlog at most {p['max_broker_backlog']} / window {p['window']}, "
        f"{p['attempts_minus_calls']} attempts burned (goal 0)"
    )
    print(
        f"{name}: results manifest: {m['rows']} rows in {m['seconds']} s: "
        f"{m['ratio_to_goal']:.2f} of the {MANIFEST_GOAL_S:.0f} s goal, "
        f"API RSS growth {m['api_rss_growth_mb']} MB"
    )
    print(
        f"{name}: cancel answered in {c['answer_s']} s: {c['ratio_to_goal']:.2f} of the "
        f"{CANCEL_GOAL_S:.0f} s goal; every held row cancelled {c['all_rows_cancelled_s']} s "
        "after the request"
    )


def main() -> None:
    """Run the benchmarks on one deployment and print their numbers."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--format", choices=(*FORMATS, "both"), default="both")
    args = parser.parse_args()
    formats = FORMATS if args.format == "both" else (args.format,)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, deployment(Path(tmp), workers=1) as d:
        s3 = d.s3()
        s3.create_bucket(Bucket="shop")
        s3.put_object(Bucket="shop", Key="p.png", Body=product_png(), ContentType="image/png")
        with d.simulator() as sim:
            sim.post("/admin/config", json={"latency": args.latency, "credits": 1e9})
        for file_format in formats:
            results[file_format] = one_format(d, Path(tmp), file_format, args.rows, args.latency)
    print(json.dumps(results, indent=2))
    for file_format in formats:
        report(file_format, results[file_format], args.latency)


if __name__ == "__main__":
    main()
