"""docker-compose.yml: accepted by Compose, pinned to the production shape (docs/operations/)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from relightq.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"

# Services that run once and exit; everything else must stay up.
ONE_SHOT = {"migrate", "create-bucket"}
APP_SERVICES = {"migrate", "create-bucket", "api", "worker", "beat", "simulator"}
DOCKERFILE = ROOT / "Dockerfile"
WAITS_FOR_EVERYTHING = {"api", "worker", "beat"}


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) if it works, else `docker-compose` (v1), else None."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=60
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


@cache
def compose() -> dict[str, Any]:
    """The compose file as YAML (anchors and merge keys resolved, variables not)."""
    with COMPOSE_FILE.open() as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    """Service name to its definition."""
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def long_running() -> dict[str, dict[str, Any]]:
    """The services that are meant to stay up."""
    return {name: svc for name, svc in services().items() if name not in ONE_SHOT}


def conditions(service: str) -> dict[str, str]:
    """What ``service`` waits for: dependency name to condition (long syntax only)."""
    depends = services()[service].get("depends_on", {})
    assert isinstance(depends, dict), f"{service}: use the long depends_on syntax with conditions"
    return {dep: spec["condition"] for dep, spec in depends.items()}


def test_compose_file_is_accepted_by_docker_compose_config() -> None:
    command = compose_command()
    if command is None:
        reason = "neither `docker compose` nor `docker-compose` is installed"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it (apt-get install docker-compose)")
        pytest.skip(f"{reason} (apt-get install docker-compose to run this check)")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--profile", "simulator", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{' '.join(command)} config failed:\n{result.stderr}"


def test_file_uses_the_compose_specification() -> None:
    assert "version" not in compose()


def test_expected_services_exist() -> None:
    expected = {"postgres", "redis", "s3", "create-bucket", "migrate", "api", "worker", "beat"}
    assert expected | {"simulator"} <= set(services())


def test_redis_keeps_queued_messages() -> None:
    redis = services()["redis"]
    command = redis["command"]
    text = command if isinstance(command, str) else " ".join(command)
    assert "--appendonly yes" in text
    assert "--maxmemory-policy noeviction" in text
    assert any(str(v).endswith(":/data") for v in redis.get("volumes", []))


def test_postgres_is_16_with_a_named_volume() -> None:
    postgres = services()["postgres"]
    assert postgres["image"].startswith("postgres:16")
    volumes = [str(v).split(":")[0] for v in postgres.get("volumes", [])]
    assert any(v in compose().get("volumes", {}) for v in volumes)


@pytest.mark.parametrize("service", sorted(WAITS_FOR_EVERYTHING))
def test_app_services_wait_for_healthy_stores_and_migrations(service: str) -> None:
    waits = conditions(service)
    assert waits.get("postgres") == "service_healthy"
    assert waits.get("redis") == "service_healthy"
    assert waits.get("migrate") == "service_completed_successfully"
    assert waits.get("s3") == "service_healthy"
    assert waits.get("create-bucket") == "service_completed_successfully"


def test_migrate_waits_for_healthy_postgres() -> None:
    assert services()["migrate"]["command"] == ["migrate"]
    assert conditions("migrate").get("postgres") == "service_healthy"


def test_simulator_is_behind_its_profile() -> None:
    simulator = services()["simulator"]
    assert simulator.get("profiles") == ["simulator"]
    # Nothing may require it, or a deployment with a real Segmind key could not start.
    for name in services():
        if name != "simulator":
            assert "simulator" not in services()[name].get("depends_on", {}), name


def test_only_the_simulator_is_behind_a_profile() -> None:
    profiled = {name for name, svc in services().items() if svc.get("profiles")}
    assert profiled == {"simulator"}


def test_long_running_services_restart() -> None:
    for name, svc in long_running().items():
        assert svc.get("restart") == "unless-stopped", name
    for name in ONE_SHOT:
        assert services()[name].get("restart", "no") == "no", name


def test_long_running_services_are_healthchecked_or_wait_on_healthy_ones() -> None:
    for name, svc in long_running().items():
        if "healthcheck" in svc:
            continue
        waits = conditions(name)
        assert waits, f"{name} has neither a healthcheck nor healthy dependencies"
        assert set(waits.values()) <= {"service_healthy", "service_completed_successfully"}, name


def test_service_healthy_targets_define_a_healthcheck() -> None:
    for name in services():
        for dep, condition in conditions(name).items():
            if condition == "service_healthy":
                assert "healthcheck" in services()[dep], f"{name} waits on {dep}: no healthcheck"


def test_app_services_share_one_image_built_once_tagged_with_the_package_version() -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    app = {name: services()[name] for name in APP_SERVICES}
    assert {svc["image"] for svc in app.values()} == {f"relightq:{version}"}
    assert any("build" in svc for svc in app.values())


# A tag that names one release (maybe with a variant such as -alpine) and maybe a digest.
TAG = re.compile(
    r"^(?P<name>[\w./-]+):(?P<version>\d+(?:\.\d+)*)(?:-[\w.-]+)?(@sha256:[0-9a-f]{64})?$"
)
# Projects whose releases have two numbers (PostgreSQL 16.10, SeaweedFS 4.48); for the
# rest two numbers name a series that floats (python:3.11 moves with every 3.11.x).
TWO_PART_RELEASES = {"postgres", "chrislusf/seaweedfs"}


def image_is_pinned(image: str) -> bool:
    """True for an image with a release tag (and maybe a digest), never `latest` or none."""
    match = TAG.match(image)
    if match is None:
        return False
    parts = match["version"].count(".") + 1
    return parts >= (2 if match["name"] in TWO_PART_RELEASES else 3)


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("postgres:16.10", True),
        ("redis:7.4.11-alpine", True),
        ("chrislusf/seaweedfs:4.48@sha256:" + "a" * 64, True),
        ("postgres", False),
        ("postgres:16", False),  # a major version floats across releases
        ("redis:latest", False),
        ("minio/minio", False),
        ("python:3.11-slim", False),
        ("python:3.11.13-slim-bookworm", True),
        ("relightq:0.1.0", True),
    ],
)
def test_the_pin_rule_tells_floating_images_from_pinned_ones(image: str, pinned: bool) -> None:
    assert image_is_pinned(image) is pinned


def test_every_image_is_pinned_to_a_release_in_one_place() -> None:
    images = compose()["x-images"]
    assert all(image_is_pinned(image) for image in images.values()), images
    # Every service runs one of them, so upgrading is an edit of that block alone.
    for name, svc in services().items():
        assert svc["image"] in images.values(), name


def test_the_dockerfile_builds_on_a_pinned_base_image() -> None:
    bases = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert bases and all(image_is_pinned(base) for base in bases), bases


def test_workers_can_scale_and_beat_is_single() -> None:
    assert "container_name" not in services()["worker"]
    assert services()["worker"]["command"] == ["worker"]
    assert services()["beat"]["command"] == ["beat"]
    assert "deploy" not in services()["beat"] or services()["beat"]["deploy"].get("replicas") == 1


def test_app_services_share_the_relightq_environment() -> None:
    required = {
        "RELIGHTQ_DATABASE_URL",
        "RELIGHTQ_BROKER_URL",
        "RELIGHTQ_S3_BUCKET",
        "RELIGHTQ_S3_ENDPOINT_URL",
        "RELIGHTQ_SEGMIND_API_KEY",
        "RELIGHTQ_SEGMIND_BASE_URL",
        "RELIGHTQ_SIMULATOR_URL",
    }
    for name in WAITS_FOR_EVERYTHING | {"migrate"}:
        env = services()[name]["environment"]
        assert isinstance(env, dict), name
        assert required <= set(env), name
    # An empty key selects the simulator; a real one comes from the host, never the file.
    assert services()["api"]["environment"]["RELIGHTQ_SEGMIND_API_KEY"] == (
        "${RELIGHTQ_SEGMIND_API_KEY:-}"
    )


def test_every_setting_can_be_set_from_the_host() -> None:
    # Set in the file, or a bare key that compose fills from the host's environment (or
    # .env) when it is set there, leaving relightq's own default when it is not.
    env = services()["api"]["environment"]
    settable = {f"RELIGHTQ_{name.upper()}" for name in Settings.model_fields}
    assert settable - set(env) == {"RELIGHTQ_LOCAL_STORAGE_DIR"}  # the demo's, not compose's
    assert env["RELIGHTQ_OUTBOUND_ALLOW"] is None and env["RELIGHTQ_RATE_LIMIT"] is None


def test_workers_serve_their_own_metrics() -> None:
    worker = services()["worker"]
    assert worker["environment"]["RELIGHTQ_WORKER_METRICS_PORT"] == "9101"
    assert "9101" in [str(port) for port in worker.get("expose", [])]


def test_beat_is_healthchecked_by_pinging_it_as_celerybeat_on_its_host() -> None:
    # `relightq beat` enables Celery's beat remote control: it answers as celerybeat@<host>
    # while its scheduler ticks (tests/ops/test_processes.py runs this very command).
    check = services()["beat"]["healthcheck"]
    assert check["test"][0] == "CMD-SHELL"
    assert "inspect ping --destination celerybeat@$$HOSTNAME" in check["test"][1]
    assert "start_period" in check and "interval" in check


def _seconds(duration: str) -> float:
    """A Compose duration such as "160s" or "2m40s" in seconds."""
    import re

    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_docker_waits_for_a_stopping_worker_longer_than_the_worker_waits_for_its_calls() -> None:
    # Otherwise Docker's SIGKILL ends calls already paid for, and their jobs run again.
    grace = _seconds(services()["worker"]["stop_grace_period"])
    assert grace >= Settings().worker_shutdown_grace_seconds + 10
