"""The `relightq` command line."""

from __future__ import annotations

import httpx
from sqlalchemy import select
from typer.testing import CliRunner

from relightq.cli import app
from relightq.db import session_scope
from relightq.tenants.models import ApiKey
from tests.conftest import Services

runner = CliRunner()


def test_keys_create_prints_a_working_key_once_and_stores_only_its_hash(
    services: Services,
) -> None:
    result = runner.invoke(app, ["keys", "create", "--tenant", "cli-shop"])
    assert result.exit_code == 0, result.output
    key = result.output.strip()
    assert key.startswith("rq_") and len(key) > 40
    with httpx.Client(base_url=services.api, headers={"x-api-key": key}) as client:
        assert client.get("/v1/jobs").status_code == 200
    with session_scope() as session:
        stored = [(k.key_hash, k.prefix) for k in session.scalars(select(ApiKey))]
    assert all(key not in stored_hash for stored_hash, _ in stored)
    assert any(prefix == key[:10] for _, prefix in stored)


def test_migrate_is_idempotent(services: Services) -> None:
    assert runner.invoke(app, ["migrate"]).exit_code == 0


def test_every_command_of_the_spec_exists() -> None:
    result = runner.invoke(app, ["--help"])
    for command in (
        "api",
        "worker",
        "beat",
        "migrate",
        "simulate",
        "demo",
        "keys",
        "create-bucket",
    ):
        assert command in result.output


def test_create_bucket_is_idempotent(services: Services) -> None:
    for _ in range(2):
        result = runner.invoke(app, ["create-bucket"])
        assert result.exit_code == 0, result.output
