"""Segmind v1 (a blocking call per job) against v2 (a request submitted once, then polled),
measured on real processes in one run.

    .venv/bin/python -m bench.upstream_modes [--latency 10] [--in-flight 20] [--many 200]

1. SIGKILL with ``--in-flight`` calls or requests in flight, in each mode: a worker holding
   them is killed and a new one starts on the same host. Reports the upstream calls
   started again for jobs that had one already (Segmind bills a generation it started:
   these are paid twice; goal 0 in v2), the seconds from the kill until every job
   succeeded, and the seconds from sending a submit to its request id committed (a bound
   on the only window in which a v2 job can still pay twice).
2. Memory: worker RSS idle, then with ``--in-flight`` v1 calls in flight (one thread each)
   and with ``--many`` v2 requests in flight (the default 16 threads).

The deployment is tests/chaos/harness.py's (relightq's defaults) with a plan as large as
the calls in flight, so the fleet's cap never holds anything back.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx

from relightq.serving import free_port
from tests.chaos.harness import Deployment, default_settings, deployment, submit, wait_final


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _stats(d: Deployment) -> dict[str, Any]:
    with d.simulator() as sim:
        return dict(sim.get("/admin/stats").json())


def _wait_in_flight(d: Deployment, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _stats(d)["in_flight"] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(d.log_tail())
        time.sleep(0.05)


def _configure(d: Deployment, latency: float) -> None:
    with d.simulator() as sim:
        sim.post("/admin/config", json={"latency": latency, "credits": 1e6}).raise_for_status()
        sim.post("/admin/reset").raise_for_status()


def _receipt_seconds(metrics: str) -> tuple[int, float]:
    """(count, mean seconds) of relightq_upstream_receipt_seconds from a worker's /metrics."""
    count = re.search(r"^relightq_upstream_receipt_seconds_count (\S+)", metrics, re.M)
    total = re.search(r"^relightq_upstream_receipt_seconds_sum (\S+)", metrics, re.M)
    if not count or not total or float(count.group(1)) == 0:
        return 0, 0.0
    return int(float(count.group(1))), float(total.group(1)) / float(count.group(1))


def _deployment(
    workdir: Path, mode: str, cap: int, threads: int, **settings: str
) -> AbstractContextManager[Deployment]:
    """relightq's defaults but the mode, a plan of ``cap`` calls, and ``threads`` per worker;
    no worker started yet."""
    workdir.mkdir(parents=True, exist_ok=True)
    return deployment(
        workdir,
        workers=0,
        own_postgres=None,
        segmind_api_version=mode,
        max_concurrent_calls=str(cap),
        max_calls_per_minute="100000",
        worker_concurrency=str(threads),
        **settings,
    )


def sigkill(mode: str, latency: float, in_flight: int, workdir: Path) -> dict[str, Any]:
    """Kill the worker holding ``in_flight`` calls; a new one starts on the same host."""
    metrics_port = str(free_port())
    with _deployment(
        workdir / f"kill-{mode}",
        mode,
        in_flight,
        in_flight + 4,
        worker_metrics_port=metrics_port,
    ) as d:
        d.start_worker("worker0")
        _configure(d, latency)
        ids = submit(d, in_flight)
        _wait_in_flight(d, in_flight)
        time.sleep(1.0)  # every call or request well under way
        receipts = _receipt_seconds(_scrape(d))
        killed = time.monotonic()
        d.kill("worker0")
        d.start_worker("worker1")
        jobs = wait_final(d, ids, timeout=10 * latency + 120)
        recovered = time.monotonic() - killed
        stats = _stats(d)
    succeeded = sum(j["status"] == "succeeded" for j in jobs)
    return {
        "mode": mode,
        "jobs": len(ids),
        "succeeded": succeeded,
        "upstream_calls_started": stats["calls"],
        "paid_twice": stats["calls"] - len(ids),
        "recovered_s": round(recovered, 2),
        "recovered_over_latency": round(recovered / latency, 2),
        "receipt_commits": receipts[0],
        "receipt_window_ms": round(receipts[1] * 1000, 2),
    }


def memory(mode: str, count: int, latency: float, workdir: Path) -> dict[str, Any]:
    """Worker RSS idle and with ``count`` calls (v1) or requests (v2) in flight."""
    # v1 needs a thread per call; v2 runs on the default thread count.
    threads = count + 4 if mode == "v1" else default_settings().worker_concurrency
    with _deployment(workdir / f"rss-{mode}", mode, count, threads) as d:
        d.start_worker("worker0")
        _configure(d, latency)
        warm = submit(d, 4)  # load every module a job touches before measuring
        wait_final(d, warm, timeout=latency + 60)
        _configure(d, latency)
        idle = _rss_mb(d.pid("worker0"))
        ids = submit(d, count)
        _wait_in_flight(d, count)
        time.sleep(2.0)
        busy = _rss_mb(d.pid("worker0"))
        with d.simulator() as sim:
            sim.post("/admin/config", json={"latency": 0.0}).raise_for_status()
        wait_final(d, ids, timeout=latency + 120)
    return {
        "mode": mode,
        "in_flight": count,
        "threads": threads,
        "rss_idle_mb": round(idle, 1),
        "rss_in_flight_mb": round(busy, 1),
        "mb_per_in_flight": round((busy - idle) / count, 3),
    }


def _scrape(d: Deployment) -> str:
    port = d.env.get("RELIGHTQ_WORKER_METRICS_PORT")
    if not port:
        return ""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=10.0)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--many", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="relightq-bench-"))
    results = {
        "latency_s": args.latency,
        "sigkill": [sigkill(m, args.latency, args.in_flight, workdir) for m in ("v1", "v2")],
        "memory": [
            memory("v1", args.in_flight, 60.0, workdir),
            memory("v2", args.many, 60.0, workdir),
        ],
    }
    print(json.dumps(results, indent=2))
    print()
    print(f"| SIGKILL, {args.in_flight} in flight, L = {args.latency:g} s | v1 | v2 | goal (v2) |")
    print("|---|---|---|---|")
    v1, v2 = results["sigkill"]
    print(f"| calls paid twice | {v1['paid_twice']} | {v2['paid_twice']} | 0 |")
    print(
        f"| kill → all succeeded | {v1['recovered_s']} s ({v1['recovered_over_latency']} × L) "
        f"| {v2['recovered_s']} s ({v2['recovered_over_latency']} × L) | |"
    )
    print(
        f"| submit sent → request id committed (bounds the window) | | "
        f"{v2['receipt_window_ms']} ms mean | |"
    )
    m1, m2 = results["memory"]
    print()
    print("| worker RSS | idle | in flight | per call/request |")
    print("|---|---|---|---|")
    for m in (m1, m2):
        print(
            f"| {m['mode']}, {m['in_flight']} in flight | {m['rss_idle_mb']} MB | "
            f"{m['rss_in_flight_mb']} MB | {m['mb_per_in_flight']} MB |"
        )


if __name__ == "__main__":
    main()
