"""Benchmarks of the whole pipeline on real processes (one run prints every ratio).

    .venv/bin/python -m bench.pipeline [--jobs 500] [--latency 1.0] [--cap 20] [--api-version v1]

1. Throughput at the cap: with the simulator at latency L and a fleet cap of C concurrent
   calls, achieved upstream throughput / (C / L) for N jobs (goal >= 0.97). One worker
   process with the threads pool carries all C calls: that is the pool measurement.
2. Zero latency: jobs per second through API -> Redis -> worker -> simulator -> S3 -> PG.
3. Credits running out: calls started after the pause was recorded (goal 0) and the time
   from a top-up to the first call after the automatic resume.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.chaos.harness import Deployment, deployment, submit, wait_final


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def throughput_at_cap(d: Deployment, jobs: int, latency: float, cap: int) -> dict[str, Any]:
    """Achieved calls per second divided by the cap's ideal C / L."""
    with d.simulator() as sim:
        sim.post("/admin/config", json={"latency": latency, "credits": 1e6}).raise_for_status()
        sim.post("/admin/reset").raise_for_status()
        ids = submit(d, jobs)
        done = wait_final(d, ids, timeout=jobs * latency / cap * 3 + 60)
        stats = sim.get("/admin/stats").json()
    ok = [c for c in stats["log"] if c["status"] == 200]
    span = max(c["finished_at"] for c in ok) - min(c["started_at"] for c in ok)
    achieved = len(ok) / span
    mean_call = sum(c["finished_at"] - c["started_at"] for c in ok) / len(ok)
    return {
        "jobs": jobs,
        "succeeded": sum(j["status"] == "succeeded" for j in done),
        "latency_s": latency,
        "cap": cap,
        "span_s": round(span, 2),
        "achieved_calls_per_s": round(achieved, 2),
        "ideal_calls_per_s": round(cap / latency, 2),
        "ratio": round(achieved / (cap / latency), 4),
        "mean_call_s": round(mean_call, 3),
        "peak_concurrency": stats["peak_concurrency"],
        "worker_rss_mb": round(_rss_mb(d.processes["worker0"].pid), 1),
    }


def zero_latency(d: Deployment, jobs: int) -> dict[str, Any]:
    """Jobs per second through the whole pipeline when Segmind answers instantly."""
    with d.simulator() as sim:
        sim.post("/admin/config", json={"latency": 0.0, "credits": 1e6}).raise_for_status()
        started = time.monotonic()
        ids = submit(d, jobs)
        done = wait_final(d, ids, timeout=300)
        elapsed = time.monotonic() - started
    return {
        "jobs": jobs,
        "succeeded": sum(j["status"] == "succeeded" for j in done),
        "seconds": round(elapsed, 2),
        "jobs_per_s": round(jobs / elapsed, 2),
    }


def credits_run_out(d: Deployment, jobs: int = 60) -> dict[str, Any]:
    """Calls started after the pause (goal 0) and how fast a top-up resumes the fleet."""
    with d.simulator() as sim, d.api() as api:
        sim.post("/admin/config", json={"latency": 0.3, "credits": 0.037 * 10}).raise_for_status()
        sim.post("/admin/reset").raise_for_status()
        ids = submit(d, jobs)
        while (state := api.get("/v1/throttle").json())["state"] != "paused":
            time.sleep(0.01)
        paused_at = _epoch(state["paused_at"])
        time.sleep(3)
        log = sim.get("/admin/stats").json()["log"]
        after_pause = [c for c in log if c["started_at"] > paused_at]
        # Admitted before the pause but still on the wire: bounded by the cap.
        in_flight_window = [c for c in log if c["started_at"] > paused_at - 0.01]
        failed = [
            j for j in (api.get(f"/v1/jobs/{i}").json() for i in ids) if j["status"] == "failed"
        ]
        topped_up = time.time()
        sim.post("/admin/config", json={"credits": 1000.0}).raise_for_status()
        while not [c for c in sim.get("/admin/stats").json()["log"] if c["started_at"] > topped_up]:
            time.sleep(0.01)
        first_call = min(
            c["started_at"]
            for c in sim.get("/admin/stats").json()["log"]
            if c["started_at"] > topped_up
        )
        done = wait_final(d, ids, timeout=120)
    return {
        "jobs": jobs,
        "calls_started_after_pause": len(after_pause),
        "calls_within_10ms_before_pause": len(in_flight_window) - len(after_pause),
        "jobs_failed_during_pause": len(failed),
        "resume_after_top_up_s": round(first_call - topped_up, 2),
        "all_succeeded": all(j["status"] == "succeeded" for j in done),
        "max_attempts": max(j["attempts"] for j in done),
    }


def main() -> None:
    """Run the three benchmarks on one deployment and print their numbers."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--cap", type=int, default=20)
    parser.add_argument(
        "--api-version", choices=["v1", "v2"], help="Segmind's API (default: relightq's)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relightq-bench-"))
    mode = {"segmind_api_version": args.api_version} if args.api_version else {}
    with deployment(
        workdir,
        workers=1,
        own_postgres=None,
        **mode,
        max_concurrent_calls=str(args.cap),
        worker_concurrency=str(args.cap + 8),
        probe_interval_seconds="0.5",
        probe_max_interval_seconds="1",
    ) as d:
        results = {
            "throughput_at_cap": throughput_at_cap(d, args.jobs, args.latency, args.cap),
            "zero_latency": zero_latency(d, min(args.jobs, 300)),
            "credits_run_out": credits_run_out(d),
        }
    print(json.dumps(results, indent=2))
    t = results["throughput_at_cap"]
    print(
        f"\nthroughput / (C/L) = {t['ratio']:.3f}  (goal >= 0.97; C={t['cap']}, "
        f"L={t['latency_s']}s, {t['jobs']} jobs, one worker process, threads pool, "
        f"RSS {t['worker_rss_mb']} MB)"
    )
    print(f"zero latency: {results['zero_latency']['jobs_per_s']} jobs/s end to end")
    c = results["credits_run_out"]
    print(
        f"after a 406: {c['calls_started_after_pause']} calls started after the pause (goal 0); "
        f"resumed {c['resume_after_top_up_s']} s after the top-up"
    )


if __name__ == "__main__":
    main()
