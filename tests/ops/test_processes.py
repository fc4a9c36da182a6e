"""`relightq api`, `relightq worker` and `relightq beat` as real processes, started as an
operator starts them: what they log, what a worker serves on its metrics port, and the
beat healthcheck of docker-compose.yml.

They share the suite's PostgreSQL, S3 server and simulator, but get a Redis server of
their own, so the suite's in-process worker never takes their jobs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from relightq.serving import free_port
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image
from tests.test_compose import services as compose_services

RELIGHTQ = str(Path(sys.executable).with_name("relightq"))
STARTUP_SECONDS = 30.0


@dataclass(frozen=True)
class Processes:
    """The running processes' addresses, environment and log files."""

    env: dict[str, str]
    workdir: Path
    api_url: str
    metrics_url: str

    def log(self, name: str) -> str:
        """Everything process ``name`` has written so far (stdout and stderr)."""
        return (self.workdir / f"{name}.log").read_text(errors="replace")


def wait_until(check: Callable[[], bool], what: str, timeout: float = STARTUP_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up in {timeout} s")
        time.sleep(0.1)


def start(env: dict[str, str], workdir: Path, name: str, *command: str) -> subprocess.Popen[bytes]:
    """``command`` as process ``name``, writing stdout and stderr to ``name``.log."""
    with (workdir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, so stopping it stops its children too
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's group (only what this module started), SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@pytest.fixture(scope="module")
def processes(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """A Redis server, `relightq api` (LOG_FORMAT=json) and `relightq worker` (with its
    metrics port), as separate processes."""
    workdir = tmp_path_factory.mktemp("processes")
    redis_port, api_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "RELIGHTQ_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "RELIGHTQ_LOG_FORMAT": "json",
        "RELIGHTQ_WORKER_METRICS_PORT": str(metrics_port),
        "RELIGHTQ_WORKER_CONCURRENCY": "2",
    }
    env.pop("RELIGHTQ_REDIS_URL", None)
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    redis_args = ["--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
    started = [start(env, workdir, "redis", server, *redis_args)]
    try:
        client = redis.Redis(port=redis_port)
        wait_until(lambda: bool(client.ping()), "redis")
        client.set("relightq:throttle:epoch", 1)  # warm fleet: no cold-start wait
        started.append(start(env, workdir, "api", RELIGHTQ, "api", "--port", str(api_port)))
        started.append(start(env, workdir, "worker", RELIGHTQ, "worker"))
        processes = Processes(
            env, workdir, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}"
        )
        api_up = lambda: httpx.get(f"{processes.api_url}/healthz").status_code == 200  # noqa: E731
        wait_until(api_up, f"relightq api\n{processes.log('api')}")
        wait_until(lambda: "ready." in processes.log("worker"), "relightq worker")
        yield processes
    finally:
        for process in reversed(started):
            stop(process)


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line as the JSON object it must be (a plain-text line fails the test)."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            parsed = json.loads(line)  # raises on a plain-text line
            assert isinstance(parsed, dict), line
            lines.append(parsed)
    return lines


def test_the_api_process_with_json_logs_prints_only_json_lines_uvicorns_included(
    processes: Processes,
) -> None:
    # uvicorn's own warning for a request it cannot parse, and an ordinary request.
    host, port = processes.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        raw.recv(1024)
    httpx.get(f"{processes.api_url}/v1/jobs")  # 401, logged by relightq.api
    # The request line is written once the answer is out: wait for it too, not only the
    # warning (under load it lands a moment after the client got its 401).
    wait_until(
        lambda: all(
            text in processes.log("api") for text in ("Invalid HTTP request", "GET /v1/jobs 401 ")
        ),
        "uvicorn's warning and the request's line",
        10,
    )

    lines = json_lines(processes.log("api"))

    uvicorn = [line for line in lines if str(line["logger"]).startswith("uvicorn")]
    assert any("Uvicorn running on" in str(line["message"]) for line in uvicorn), lines
    assert any("Invalid HTTP request" in str(line["message"]) for line in uvicorn), lines
    assert any(
        line["logger"] == "relightq.api" and str(line["message"]).startswith("GET /v1/jobs 401 ")
        for line in lines
    )


def test_a_worker_process_serves_upstream_latency_and_calls_on_its_metrics_port(
    processes: Processes, make_tenant: Callable[[], TenantKey], simulator: httpx.Client
) -> None:
    tenant = make_tenant()
    _, url = shop_image("catalog/worker-metrics.png")
    headers = {"x-api-key": tenant.key}
    with httpx.Client(base_url=processes.api_url, headers=headers, timeout=30) as api:
        job_id = api.post("/v1/jobs", json={"prompt": "studio", "subject_image": url}).json()["id"]
        wait_until(
            lambda: api.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded",
            f"job {job_id} in the worker process\n{processes.log('worker')[-3000:]}",
        )

    scrape = httpx.get(f"{processes.metrics_url}/metrics").text

    assert 'relightq_upstream_calls_total{status="200"} 1.0' in scrape, scrape
    assert "relightq_upstream_call_seconds_bucket{" in scrape
    counts = [
        float(line.split()[-1])
        for line in scrape.splitlines()
        if line.startswith("relightq_upstream_call_seconds_count{")
    ]
    assert sum(counts) == 1  # this process made the one call, and only it timed it
    assert simulator.get("/admin/stats").json()["calls"] >= 1  # the call really went out


def test_beat_answers_the_compose_healthcheck_while_it_runs_and_not_once_stopped(
    processes: Processes,
) -> None:
    healthcheck = compose_services()["beat"]["healthcheck"]["test"]
    assert healthcheck[0] == "CMD-SHELL"
    # Compose turns $$ into $; the container's HOSTNAME is the host name beat answers as.
    command = healthcheck[1].replace("$$", "$")
    env = {
        **processes.env,
        "HOSTNAME": socket.gethostname(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    beat = start(env, processes.workdir, "beat", RELIGHTQ, "beat")
    try:
        wait_until(lambda: "beat pidbox: Connected" in processes.log("beat"), "relightq beat")
        alive = subprocess.run(
            command, shell=True, env=env, cwd=processes.workdir, capture_output=True, text=True
        )
    finally:
        stop(beat)
    quick = command.replace("--timeout 10", "--timeout 2")  # nobody answers: no need to wait
    gone = subprocess.run(
        quick, shell=True, env=env, cwd=processes.workdir, capture_output=True, text=True
    )

    assert alive.returncode == 0 and "pong" in alive.stdout, alive.stdout + alive.stderr
    assert gone.returncode != 0
