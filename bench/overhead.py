"""Orchestration cost: relightq side by side with a bare Celery pipeline, in one run.

    .venv/bin/python -m bench.overhead [--jobs 600] [--latency 0] [--cap 20] [--clients 8]

Both do the same work against the same simulator, moto S3 server, PostgreSQL and Redis
server (the deployment's), with the same number of worker threads:

1. Bare Celery (this module's own tiny Celery app, its worker a separate process: threads
   pool, acks_late, prefetch 1): per job INSERT a row in a scratch database and
   ``.delay(id)``; the task reads the subject from S3, POSTs it to the simulator's
   ``/v1/ic-light`` as relightq sends stored subjects (multipart), puts the image in S3
   and marks the row done.
2. relightq single jobs: N jobs POSTed over HTTP by ``--clients`` threads.
3. relightq one batch of N items.
4. All three again with the simulator answering after ``--slow-latency`` seconds (1 s)
   and C = ``--cap`` calls in flight (the bare worker gets C threads): jobs/s as a share
   of the ideal C / L, submission included (``--slow-jobs``, 200 each).

Every relightq job asks for a new picture (``reuse: false``): a copy would skip the
work the bare pipeline does. Jobs/s run from the first submit to the last job finished
(its ``finished_at`` in PostgreSQL); CPU is user + system seconds of each process (and
its children) over that span, per job; the submitting side is the CPU time of the
submitting threads alone (not of the waiting). Optionally (``--acceptance``) the API's
acceptance rate with the worker stopped (SIGSTOP), which the singles run also reports
with the worker busy. ``--profile DIR`` records py-spy samples of the API and worker
during relightq's runs, to see where their CPU goes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
from celery import Celery

if TYPE_CHECKING:
    from tests.chaos.harness import Deployment

# The bare pipeline's own app: the bench process submits with it, and
# `python -m celery -A bench.overhead worker` runs it; both read its settings from here.
BROKER_ENV = "OVERHEAD_BROKER_URL"
DATABASE_ENV = "OVERHEAD_DATABASE_URL"
S3_ENV = "OVERHEAD_S3_URL"
SIMULATOR_ENV = "OVERHEAD_SIMULATOR_URL"
BUCKET_ENV = "OVERHEAD_BUCKET"
SUBJECT_BUCKET, SUBJECT_KEY = "shop", "p.png"
FIELDS = {"prompt": "studio", "width": 256, "height": 256, "highres_scale": 1}
FINAL = ("succeeded", "failed", "cancelled")
THROUGHPUT_GOAL, CPU_GOAL, LATENCY_GOAL = 0.85, 2.0, 0.97

app = Celery("bench_overhead")
app.conf.update(
    broker_url=os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/15"),
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_local = threading.local()
_shared: dict[str, Any] = {}
_shared_lock = threading.Lock()


def _s3() -> Any:
    with _shared_lock:
        if "s3" not in _shared:
            import boto3

            _shared["s3"] = boto3.client(
                "s3",
                endpoint_url=os.environ[S3_ENV],
                region_name="us-east-1",
                aws_access_key_id="chaos",
                aws_secret_access_key="chaos",
            )
            _shared["http"] = httpx.Client(base_url=os.environ[SIMULATOR_ENV], timeout=60)
        return _shared["s3"]


def _connection() -> psycopg.Connection[Any]:
    connection: psycopg.Connection[Any] | None = getattr(_local, "connection", None)
    if connection is None or connection.closed:
        connection = psycopg.connect(os.environ[DATABASE_ENV], autocommit=True)
        _local.connection = connection
    return connection


@app.task(name="bench.overhead.relight_bare")
def relight_bare(job_id: int) -> None:
    """Subject from S3 -> the simulator's v1 call -> the image to S3 -> the row done."""
    s3 = _s3()
    http: httpx.Client = _shared["http"]
    subject = s3.get_object(Bucket=SUBJECT_BUCKET, Key=SUBJECT_KEY)["Body"].read()
    response = http.post(
        "/v1/ic-light",
        headers={"x-api-key": "bare-celery"},
        data={name: str(value) for name, value in FIELDS.items()},
        files={"subject_image": (SUBJECT_KEY, subject, "image/png")},
    )
    response.raise_for_status()
    key = f"bare/{job_id}.webp"
    s3.put_object(
        Bucket=os.environ[BUCKET_ENV], Key=key, Body=response.content, ContentType="image/webp"
    )
    _connection().execute(
        "UPDATE bare_jobs SET status = 'succeeded', output_key = %s, "
        "finished_at = clock_timestamp() WHERE id = %s",
        (key, job_id),
    )


# --- measuring -------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system seconds of ``pid``, its reaped children and its living descendants."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    stack = [pid]
    while stack:
        current = stack.pop()
        with suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15]) / tick
            stack.extend(_children(current))
    return total


class Cpu:
    """CPU seconds of some processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        self.used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}


def _per_job_ms(seconds: float, jobs: int) -> float:
    return round(seconds / jobs * 1000, 2)


def _wait_count(query: str, params: tuple[Any, ...], url: str, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as connection:
        while True:
            row = connection.execute(query, params).fetchone()
            if row and row[0] >= want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{row and row[0]} of {want} done after {timeout}s")
            time.sleep(0.05)


def _scalar(connection: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = connection.execute(query, params).fetchone()
    assert row is not None
    return row[0]


# --- the bare Celery pipeline --------------------------------------------------------


class BarePipeline:
    """A scratch database with one table and this module's Celery worker process."""

    def __init__(self, workdir: Path, env: dict[str, str], threads: int) -> None:
        self.database = f"relightq_overhead_{uuid.uuid4().hex[:8]}"
        self.url = f"postgresql://postgres@127.0.0.1:5432/{self.database}"
        self.env = {**env, DATABASE_ENV: self.url}
        self.workdir = workdir
        self.threads = threads
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BarePipeline:
        with psycopg.connect(SHARED_ADMIN, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {self.database}")
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(
                "CREATE TABLE bare_jobs (id bigserial PRIMARY KEY, status text NOT NULL, "
                "output_key text, created_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
                "finished_at timestamptz)"
            )
        log_path = self.workdir / "bare-worker.log"
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.overhead",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(self.threads),
                "--prefetch-multiplier",
                "1",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "WARNING",
            ],
            env=self.env,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        # At WARNING Celery prints no "ready." line: a warm-up job done says it is.
        self.run(3, timeout=60)

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()
        with psycopg.connect(SHARED_ADMIN, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")

    def run(self, jobs: int, timeout: float = 600) -> dict[str, Any]:
        """Submit ``jobs`` (INSERT + .delay, one thread) and wait for every row done."""
        assert self.process is not None
        cpu = Cpu({"worker": self.process.pid})
        with psycopg.connect(self.url, autocommit=True) as connection:
            first = _scalar(connection, "SELECT coalesce(max(id), 0) FROM bare_jobs")
            cpu.start()
            started = time.time()
            submit_cpu = time.thread_time()
            for _ in range(jobs):
                row = connection.execute(
                    "INSERT INTO bare_jobs (status) VALUES ('queued') RETURNING id"
                ).fetchone()
                assert row is not None
                relight_bare.delay(row[0])
            submit_cpu = time.thread_time() - submit_cpu
            submitted = time.time()
            _wait_count(
                "SELECT count(*) FROM bare_jobs WHERE id > %s AND status = 'succeeded'",
                (first,),
                self.url,
                jobs,
                timeout,
            )
            cpu.stop()
            last = _scalar(
                connection,
                "SELECT extract(epoch FROM max(finished_at)) FROM bare_jobs WHERE id > %s",
                first,
            )
        elapsed = float(last) - started
        return {
            "jobs": jobs,
            "seconds": round(elapsed, 2),
            "jobs_per_s": round(jobs / elapsed, 2),
            "submit_jobs_per_s": round(jobs / (submitted - started), 1),
            "cpu_ms_per_job": {
                "worker": _per_job_ms(cpu.used["worker"], jobs),
                "submitter": _per_job_ms(submit_cpu, jobs),
            },
        }


SHARED_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


# --- relightq ------------------------------------------------------------------------


def _relightq_pids(d: Deployment) -> dict[str, int]:
    return {
        name: process.pid
        for name, process in d.processes.items()
        if name == "api" or name.startswith("worker")
    }


def _post_singles(d: Deployment, jobs: int, clients: int) -> tuple[list[str], float, float]:
    """POST ``jobs`` single jobs from ``clients`` threads: ids, seconds, submit CPU s."""
    body = {**FIELDS, "subject_image": f"s3://{SUBJECT_BUCKET}/{SUBJECT_KEY}", "reuse": False}
    ids: list[str] = []
    cpu: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    shares = [jobs // clients + (n < jobs % clients) for n in range(clients)]

    def client(count: int) -> None:
        try:
            with d.api() as api:
                started = time.thread_time()
                mine = [
                    api.post("/v1/jobs", json=body).raise_for_status().json()["id"]
                    for _ in range(count)
                ]
                used = time.thread_time() - started
            with lock:
                ids.extend(mine)
                cpu.append(used)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in shares if n]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return ids, time.monotonic() - started, sum(cpu)


def _finished(d: Deployment, where: str, params: tuple[Any, ...], jobs: int) -> dict[str, Any]:
    url = d.env["RELIGHTQ_DATABASE_URL"].replace("+psycopg", "")
    _wait_count(
        f"SELECT count(*) FROM jobs WHERE {where} AND status IN {FINAL}", params, url, jobs, 600
    )
    ((succeeded, last),) = d.sql(
        f"SELECT count(*) FILTER (WHERE status = 'succeeded'), "
        f"extract(epoch FROM max(finished_at)) FROM jobs WHERE {where}",
        *params,
    )
    return {"succeeded": succeeded, "last_finished": float(last)}


def relightq_singles(d: Deployment, jobs: int, clients: int) -> dict[str, Any]:
    """N single jobs over HTTP from ``clients`` threads, until every one is final."""
    cpu = Cpu(_relightq_pids(d))
    cpu.start()
    started = time.time()
    ids, submit_s, submit_cpu = _post_singles(d, jobs, clients)
    done = _finished(d, "id::text = ANY(%s)", (ids,), jobs)
    cpu.stop()
    return _relightq_result(jobs, started, done, cpu, submit_cpu, submit_s)


def relightq_batch(d: Deployment, jobs: int) -> dict[str, Any]:
    """One batch of N items (each a new picture), until every item is final."""
    subject = {"subject_image": f"s3://{SUBJECT_BUCKET}/{SUBJECT_KEY}"}
    body = {"items": [subject] * jobs, "defaults": FIELDS, "reuse": False}
    cpu = Cpu(_relightq_pids(d))
    with d.api() as api:
        cpu.start()
        started = time.time()
        submit_cpu = time.thread_time()
        batch = api.post("/v1/batches", json=body).raise_for_status().json()
        submit_cpu = time.thread_time() - submit_cpu
        submit_s = time.time() - started
    done = _finished(d, "batch_id = %s", (batch["id"],), jobs)
    cpu.stop()
    return _relightq_result(jobs, started, done, cpu, submit_cpu, submit_s)


def _relightq_result(
    jobs: int,
    started: float,
    done: dict[str, Any],
    cpu: Cpu,
    submit_cpu: float,
    submit_s: float,
) -> dict[str, Any]:
    elapsed = done["last_finished"] - started
    workers = sum(used for name, used in cpu.used.items() if name.startswith("worker"))
    return {
        "jobs": jobs,
        "succeeded": done["succeeded"],
        "seconds": round(elapsed, 2),
        "jobs_per_s": round(jobs / elapsed, 2),
        "submit_jobs_per_s": round(jobs / submit_s, 1),
        "cpu_ms_per_job": {
            "api": _per_job_ms(cpu.used["api"], jobs),
            "worker": _per_job_ms(workers, jobs),
            "submitter": _per_job_ms(submit_cpu, jobs),
        },
    }


def acceptance_idle(d: Deployment, jobs: int, clients: int) -> dict[str, Any]:
    """Single jobs accepted per second with the worker stopped (SIGSTOP): the API alone."""
    workers = [name for name in d.processes if name.startswith("worker")]
    for name in workers:
        d.signal(name, signal.SIGSTOP)
    try:
        cpu = Cpu({"api": d.pid("api")})
        cpu.start()
        _, seconds, submit_cpu = _post_singles(d, jobs, clients)
        cpu.stop()
    finally:
        for name in workers:
            d.signal(name, signal.SIGCONT)
    return {
        "jobs": jobs,
        "clients": clients,
        "jobs_per_s": round(jobs / seconds, 1),
        "cpu_ms_per_job": {
            "api": _per_job_ms(cpu.used["api"], jobs),
            "submitter": _per_job_ms(submit_cpu, jobs),
        },
    }


class Profiles:
    """py-spy sampling the API and every worker of a deployment while in use (or nothing)."""

    def __init__(self, d: Deployment, folder: Path | None, run: str, fmt: str) -> None:
        self.d, self.folder, self.run, self.format = d, folder, run, fmt
        self.recorders: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Profiles:
        if self.folder is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, pid in _relightq_pids(self.d).items():
            out = self.folder / f"{self.run}-{name}.{self.format.replace('flamegraph', 'svg')}"
            self.recorders.append(
                subprocess.Popen(
                    [
                        str(Path(sys.executable).with_name("py-spy")),
                        "record",
                        "--pid",
                        str(pid),
                        "--subprocesses",
                        "--rate",
                        "200",
                        "--format",
                        self.format,
                        "--nonblocking",
                        # Only samples holding the GIL: where the CPU goes, not the waits.
                        "--gil",
                        "-o",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1)  # py-spy attaches
        return self

    def __exit__(self, *_: object) -> None:
        for recorder in self.recorders:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its flame graph on SIGINT
        for recorder in self.recorders:
            recorder.wait(60)


def at_latency(
    d: Deployment, workdir: Path, env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """Each side at L seconds per call with C calls in flight (the bare worker gets C
    threads, relightq its fleet cap of C): jobs/s as a share of the ideal C / L."""
    with d.simulator() as sim:
        sim.post("/admin/config", json={"latency": args.slow_latency}).raise_for_status()
    ideal = args.cap / args.slow_latency
    try:
        with BarePipeline(workdir, env, args.cap) as bare:
            runs = {"bare_celery": bare.run(args.slow_jobs)}
        runs["relightq_singles"] = relightq_singles(d, args.slow_jobs, args.clients)
        runs["relightq_batch"] = relightq_batch(d, args.slow_jobs)
    finally:
        with d.simulator() as sim:
            sim.post("/admin/config", json={"latency": args.latency}).raise_for_status()
    for run in runs.values():
        run["of_ideal"] = round(run["jobs_per_s"] / ideal, 3)
    return {"latency_s": args.slow_latency, "cap": args.cap, "jobs": args.slow_jobs, **runs}


# --- the run ---------------------------------------------------------------------------


def _ratios(bare: dict[str, Any], rq: dict[str, Any]) -> dict[str, float]:
    b, r = bare["cpu_ms_per_job"], rq["cpu_ms_per_job"]
    return {
        "throughput": round(rq["jobs_per_s"] / bare["jobs_per_s"], 3),
        "cpu_with_submitters": round(
            (r["api"] + r["worker"] + r["submitter"]) / (b["worker"] + b["submitter"]), 2
        ),
        "cpu_processes_only": round((r["api"] + r["worker"]) / b["worker"], 2),
    }


def _table(results: dict[str, Any]) -> str:
    bare = results["bare_celery"]
    rows = [("bare Celery", bare, None)]
    rows += [
        (f"relightq {kind}", results[key], results["ratios"][kind])
        for kind, key in (("singles", "relightq_singles"), ("batch", "relightq_batch"))
    ]
    lines = [
        f"{'pipeline':<18} {'jobs/s':>7} {'CPU ms/job: api':>16} {'worker':>7} "
        f"{'submitter':>9} {'total':>6}  ratios",
    ]
    for label, r, ratio in rows:
        cpu = r["cpu_ms_per_job"]
        total = sum(cpu.values())
        text = (
            f"{label:<18} {r['jobs_per_s']:>7} {cpu.get('api', 0):>16} {cpu['worker']:>7} "
            f"{cpu['submitter']:>9} {total:>6.2f}"
        )
        if ratio:
            text += (
                f"  throughput {ratio['throughput']} (goal >= {THROUGHPUT_GOAL}), CPU "
                f"{ratio['cpu_with_submitters']} with submitters / "
                f"{ratio['cpu_processes_only']} processes only (goal <= {CPU_GOAL})"
            )
        lines.append(text)
    return "\n".join(lines)


def main() -> None:
    """Run the bare pipeline, relightq's singles and one batch on one deployment."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--cap", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--api-version",
        choices=["v1", "v2"],
        default="v1",
        help="Segmind's API relightq uses (v1, one call per job, as the bare pipeline)",
    )
    parser.add_argument(
        "--slow-jobs",
        type=int,
        default=200,
        help="jobs of each side at --slow-latency (0: skip), measured against C/L",
    )
    parser.add_argument("--slow-latency", type=float, default=1.0)
    parser.add_argument(
        "--acceptance", action="store_true", help="also the API's rate with the worker stopped"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record py-spy profiles of the API and the worker into this folder "
        "during relightq's runs (py-spy must be installed; it slows what it samples)",
    )
    parser.add_argument(
        "--profile-format",
        choices=["flamegraph", "raw", "speedscope"],
        default="flamegraph",
        help="py-spy's output: an SVG flame graph, collapsed stacks (raw) or speedscope JSON",
    )
    args = parser.parse_args()
    # Here, not at the top: a worker importing this module needs none of the harness.
    from tests.chaos.harness import BUCKET, deployment
    from tests.support.images import product_png

    threads = args.cap + 8  # as bench.pipeline runs relightq's worker
    workdir = Path(tempfile.mkdtemp(prefix="relightq-overhead-"))
    with deployment(
        workdir,
        workers=1,
        own_postgres=None,
        segmind_api_version=args.api_version,
        max_concurrent_calls=str(args.cap),
        worker_concurrency=str(threads),
        probe_interval_seconds="0.5",
        probe_max_interval_seconds="1",
    ) as d:
        with d.simulator() as sim:
            sim.post(
                "/admin/config", json={"latency": args.latency, "credits": 1e7}
            ).raise_for_status()
        s3 = d.s3()
        with suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=SUBJECT_BUCKET)
        s3.put_object(
            Bucket=SUBJECT_BUCKET, Key=SUBJECT_KEY, Body=product_png(), ContentType="image/png"
        )
        broker = f"redis://127.0.0.1:{d.redis_port}/1"
        app.conf.update(broker_url=broker)
        env = {
            **os.environ,
            BROKER_ENV: broker,
            S3_ENV: d.s3_url,
            SIMULATOR_ENV: d.simulator_url,
            BUCKET_ENV: BUCKET,
        }
        # Warm-ups: the first jobs of each side build clients and connections.
        relightq_singles(d, 10, 2)
        with BarePipeline(workdir, env, threads) as bare:
            results: dict[str, Any] = {
                "jobs": args.jobs,
                "latency_s": args.latency,
                "cap": args.cap,
                "worker_threads": threads,
                "clients": args.clients,
                "api_version": args.api_version,
                "bare_celery": bare.run(args.jobs),
            }
        with Profiles(d, args.profile, "singles", args.profile_format):
            results["relightq_singles"] = relightq_singles(d, args.jobs, args.clients)
        with Profiles(d, args.profile, "batch", args.profile_format):
            results["relightq_batch"] = relightq_batch(d, args.jobs)
        results["ratios"] = {
            "singles": _ratios(results["bare_celery"], results["relightq_singles"]),
            "batch": _ratios(results["bare_celery"], results["relightq_batch"]),
        }
        if args.slow_jobs:
            results["at_latency"] = at_latency(d, workdir, env, args)
        if args.acceptance:
            with Profiles(d, args.profile, "acceptance", args.profile_format):
                results["acceptance_workers_stopped"] = acceptance_idle(d, args.jobs, args.clients)
    print(json.dumps(results, indent=2))
    print()
    print(_table(results))
    if "at_latency" in results:
        slow = results["at_latency"]
        print(
            f"At L = {slow['latency_s']} s, C = {slow['cap']} ({slow['jobs']} jobs, submission "
            f"included), jobs/s / (C/L): bare {slow['bare_celery']['of_ideal']}, relightq "
            f"singles {slow['relightq_singles']['of_ideal']}, batch "
            f"{slow['relightq_batch']['of_ideal']} (goal >= {LATENCY_GOAL})"
        )
    if "acceptance_workers_stopped" in results:
        a = results["acceptance_workers_stopped"]
        print(
            f"API acceptance, {a['clients']} clients: {a['jobs_per_s']} jobs/s with the worker "
            f"stopped, {results['relightq_singles']['submit_jobs_per_s']} with it busy "
            "(goal >= 400 idle)"
        )


if __name__ == "__main__":
    main()
