"""A whole deployment as real processes on this machine, for chaos tests and benchmarks.

Its own Redis server (so FLUSHALL and restarts touch nobody else), its own PostgreSQL
database (on a PostgreSQL cluster of its own when it is to be restarted), moto's S3
server, the simulator, the API, workers and beat, each started with the `relightq`
command exactly as an operator would, with relightq's DEFAULT settings: leases, timeouts,
retry schedules, sweep and probe intervals are what a user gets without tuning. Only the
plan's limits are set (a 4-call cap, no per-minute limit: the simulator has none) and the
API's per-key rate limit, which the harness's polling of every job would exceed.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import redis
from moto.server import ThreadedMotoServer

from relightq.serving import free_port
from relightq.settings import Settings
from tests.support.private_postgres import PrivatePostgres

RELIGHTQ = str(Path(sys.executable).with_name("relightq"))
# moto's server logs every request; captured by pytest that alone starves a 2-core machine.
logging.getLogger("werkzeug").setLevel(logging.WARNING)
BUCKET = "relightq-chaos"


def _wait(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up in {timeout}s")
        time.sleep(0.1)


@dataclass
class Deployment:
    """Handles to every process and client of one chaos deployment."""

    workdir: Path
    env: dict[str, str]
    redis_port: int
    api_url: str
    simulator_url: str
    s3_url: str
    key: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, IO[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str, ready_line: str | None = None) -> None:
        """Start `relightq ARGS` as process ``name``, logging to the work dir."""
        log = (self.workdir / f"{name}.log").open("ab")
        self.logs[name] = log
        self.processes[name] = subprocess.Popen(
            [RELIGHTQ, *args],
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if ready_line:
            path = self.workdir / f"{name}.log"
            _wait(lambda: ready_line in path.read_text(errors="replace"), name)

    def start_worker(self, name: str) -> None:
        """A `relightq worker` process, waited for until Celery says it is ready."""
        self.start(name, "worker", ready_line="ready.")

    def kill(self, name: str) -> None:
        """SIGKILL: no cleanup, no acks, as when a machine dies."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def terminate(self, *names: str, timeout: float = 200) -> float:
        """SIGTERM to each, as Kubernetes or `docker compose stop` sends; seconds until the
        last one exited."""
        processes = [self.processes.pop(name) for name in names]
        started = time.monotonic()
        for process in processes:
            os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout)
        return time.monotonic() - started

    def signal(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to process ``name`` and leave it running (or stopping)."""
        self.processes[name].send_signal(sig)

    def pid(self, name: str) -> int:
        """The PID of process ``name`` (a worker's leases name it)."""
        return self.processes[name].pid

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``query`` on the deployment's database (for what the API does not show)."""
        with psycopg.connect(self.env["RELIGHTQ_DATABASE_URL"].replace("+psycopg", "")) as c:
            return c.execute(query, params).fetchall()

    def stop_all(self) -> None:
        """Terminate every process."""
        for name in list(self.processes):
            process = self.processes.pop(name)
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)
        for log in self.logs.values():
            log.close()

    def redis(self) -> redis.Redis:
        """A client for the deployment's own Redis server."""
        return redis.Redis(port=self.redis_port)

    def api(self) -> httpx.Client:
        """An HTTP client authenticated with the deployment's operator key."""
        return httpx.Client(base_url=self.api_url, headers={"x-api-key": self.key}, timeout=30)

    def s3(self) -> Any:
        """A boto3 client for the deployment's S3 server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            region_name="us-east-1",
            aws_access_key_id="chaos",
            aws_secret_access_key="chaos",
        )

    def simulator(self) -> httpx.Client:
        """An HTTP client for the simulator's admin API."""
        return httpx.Client(base_url=self.simulator_url, timeout=30)

    def held_by(self, worker: str) -> set[str]:
        """Running jobs whose lease names ``worker``'s process."""
        pid = f"|{self.pid(worker)}|"
        rows = self.sql("SELECT id, lease_holder FROM jobs WHERE status = 'running'")
        return {str(job_id) for job_id, holder in rows if holder and pid in holder}

    @property
    def api_version(self) -> str:
        """The Segmind API the workers use (v1 calls, or v2 requests polled)."""
        return (
            self.env.get("RELIGHTQ_SEGMIND_API_VERSION") or default_settings().segmind_api_version
        )

    def claimed_since(self, ids: set[str] | list[str], epoch: float) -> set[str]:
        """Jobs a worker claimed after ``epoch`` (each claim sets started_at), or final."""
        rows = self.sql(
            "SELECT id FROM jobs WHERE id::text = ANY(%s) AND (started_at > to_timestamp(%s) "
            "OR status IN ('succeeded', 'failed', 'cancelled'))",
            list(ids),
            epoch,
        )
        return {str(job_id) for (job_id,) in rows}

    def attempts(self, ids: set[str] | list[str]) -> dict[str, int]:
        """Each job's attempt count (a takeover claims the job again: one more)."""
        rows = self.sql("SELECT id, attempts FROM jobs WHERE id::text = ANY(%s)", list(ids))
        return {str(job_id): attempts for job_id, attempts in rows}

    def log_tail(self, lines: int = 40) -> str:
        """The end of every process log, for failure messages."""
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)


SHARED_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def default_settings() -> Settings:
    """relightq's settings as a deployment of this harness gets them: the defaults, with
    no RELIGHTQ_* variable of this process (the test suite sets some) and no .env file."""
    saved = {
        name: os.environ.pop(name) for name in list(os.environ) if name.startswith("RELIGHTQ_")
    }
    try:
        return Settings(_env_file=None)  # type: ignore[call-arg]
    finally:
        os.environ.update(saved)


@contextmanager
def deployment(
    workdir: Path, workers: int = 2, *, own_postgres: PrivatePostgres | None = None, **settings: str
) -> Iterator[Deployment]:
    """Start a full deployment; ``settings`` override RELIGHTQ_* values (without prefix).

    ``own_postgres``: keep the database on that cluster (one a test may stop and restart)
    instead of the machine's shared server.
    """
    database = f"relightq_chaos_{uuid.uuid4().hex[:8]}"
    admin_url = own_postgres.conninfo() if own_postgres else SHARED_POSTGRES
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {database}")
    database_url = (
        own_postgres.url(database)
        if own_postgres
        else f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    )
    redis_port, api_port, sim_port, s3_port = (free_port() for _ in range(4))
    redis_server = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELIGHTQ_")}
    env.update(
        RELIGHTQ_DATABASE_URL=database_url,
        RELIGHTQ_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        RELIGHTQ_S3_BUCKET=BUCKET,
        RELIGHTQ_S3_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
        RELIGHTQ_S3_ACCESS_KEY_ID="chaos",
        RELIGHTQ_S3_SECRET_ACCESS_KEY="chaos",
        RELIGHTQ_SIMULATOR_URL=f"http://127.0.0.1:{sim_port}",
        # The plan: 4 calls at once, no per-minute limit (the simulator enforces none).
        RELIGHTQ_MAX_CONCURRENT_CALLS="4",
        RELIGHTQ_MAX_CALLS_PER_MINUTE="100000",
        # The harness polls every job several times a second: far past a client's limit.
        RELIGHTQ_RATE_LIMIT="1000000/minute",
    )
    env.update({f"RELIGHTQ_{k.upper()}": v for k, v in settings.items()})
    d = Deployment(
        workdir,
        env,
        redis_port,
        f"http://127.0.0.1:{api_port}",
        f"http://127.0.0.1:{sim_port}",
        f"http://127.0.0.1:{s3_port}",
    )
    try:
        _wait(lambda: redis.Redis(port=redis_port).ping(), "redis")
        subprocess.run([RELIGHTQ, "migrate"], env=env, check=True, capture_output=True)
        subprocess.run([RELIGHTQ, "create-bucket"], env=env, check=True, capture_output=True)
        d.key = subprocess.run(
            # Its photos live in the "shop" bucket: granted, as an operator would.
            [RELIGHTQ, "keys", "create", "--tenant", "chaos", "--operator", "--bucket", "shop"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        d.start("simulator", "simulate", "--port", str(sim_port))
        _wait(lambda: httpx.get(d.simulator_url).status_code == 200, "simulator")
        d.start("api", "api", "--port", str(api_port))
        _wait(lambda: httpx.get(d.api_url + "/healthz").status_code == 200, "api")
        for n in range(workers):
            d.start_worker(f"worker{n}")
        d.start("beat", "beat")
        yield d
    finally:
        d.stop_all()
        redis_server.terminate()
        redis_server.wait(10)
        moto.stop()
        if own_postgres is None or own_postgres.is_running():
            with psycopg.connect(admin_url, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def submit(d: Deployment, count: int, **fields: Any) -> list[str]:
    """Post ``count`` jobs with a catalog image uploaded to the customer's bucket.

    Every job is the same picture, which result reuse would make once and copy; these
    jobs are here to make calls, so each asks for a new picture (``reuse: false``) unless
    ``fields`` says otherwise."""
    from tests.support.images import product_png

    s3 = d.s3()
    with suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket="shop")
    s3.put_object(Bucket="shop", Key="p.png", Body=product_png(), ContentType="image/png")
    body = {
        "prompt": "studio",
        "subject_image": "s3://shop/p.png",
        "width": 256,
        "height": 256,
        "highres_scale": 1,
        "reuse": False,
        **fields,
    }
    with d.api() as api:
        return [
            api.post("/v1/jobs", json=body).raise_for_status().json()["id"] for _ in range(count)
        ]


def wait_final(d: Deployment, ids: list[str], timeout: float = 120) -> list[dict[str, Any]]:
    """Every job once it is succeeded, failed or cancelled."""
    final = {"succeeded", "failed", "cancelled"}
    deadline = time.monotonic() + timeout
    with d.api() as api:
        while True:
            jobs = [api.get(f"/v1/jobs/{i}").json() for i in ids]
            if all(j.get("status") in final for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                counts: dict[str, int] = {}
                for j in jobs:
                    counts[j.get("status", "?")] = counts.get(j.get("status", "?"), 0) + 1
                raise AssertionError(f"not final after {timeout}s: {counts}\n{d.log_tail()}")
            time.sleep(0.25)
