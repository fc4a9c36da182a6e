"""API keys: listed by prefix only, and revoked at once everywhere they were used."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from typer.testing import CliRunner

from relightq.cli import app
from tests.conftest import Services, TenantKey

runner = CliRunner()


def test_a_revoked_key_is_refused_and_ends_the_dashboard_sessions_it_opened(
    services: Services, make_tenant: Callable[[], TenantKey]
) -> None:
    tenant, other = make_tenant(), make_tenant()
    with httpx.Client(base_url=services.api) as browser:
        logged_in = browser.post("/dashboard/login", data={"api_key": tenant.key})
        assert logged_in.status_code == 303
        assert browser.get("/dashboard/jobs").status_code == 200

        listed = runner.invoke(app, ["keys", "list"])
        revoked = runner.invoke(app, ["keys", "revoke", tenant.key[:10]])

        after = browser.get("/dashboard/jobs")
    assert listed.exit_code == 0 and f"{tenant.name}  {tenant.key[:10]}…" in listed.output
    assert tenant.key not in listed.output  # only its prefix is ever shown
    assert revoked.exit_code == 0, revoked.output
    assert after.status_code == 303 and after.headers["location"] == "/dashboard/login"
    assert (
        httpx.get(f"{services.api}/v1/jobs", headers={"x-api-key": tenant.key}).status_code == 401
    )
    # Another tenant's key is untouched.
    assert httpx.get(f"{services.api}/v1/jobs", headers={"x-api-key": other.key}).status_code == 200
    assert "revoked" in runner.invoke(app, ["keys", "list"]).output


def test_revoking_by_the_whole_key_works_and_an_unknown_key_exits_1(
    services: Services, make_tenant: Callable[[], TenantKey]
) -> None:
    tenant = make_tenant()

    assert runner.invoke(app, ["keys", "revoke", tenant.key]).exit_code == 0
    again = runner.invoke(app, ["keys", "revoke", tenant.key])

    assert again.exit_code == 1 and "no active key matches" in again.output
    assert (
        httpx.get(f"{services.api}/v1/jobs", headers={"x-api-key": tenant.key}).status_code == 401
    )


def test_a_key_used_a_moment_ago_is_refused_at_once_when_revoked(
    services: Services, make_tenant: Callable[[], TenantKey]
) -> None:
    # The API keeps the keys it checked (relightq.tenants.known_keys); a revoke's commit
    # makes every process forget them.
    tenant = make_tenant()
    headers = {"x-api-key": tenant.key}
    with httpx.Client(base_url=services.api, headers=headers) as client:
        assert [client.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]
        assert runner.invoke(app, ["keys", "revoke", tenant.key[:10]]).exit_code == 0
        assert client.get("/v1/jobs").status_code == 401


def test_a_tenant_made_operator_is_one_at_its_next_request(
    services: Services, make_tenant: Callable[[], TenantKey]
) -> None:
    tenant = make_tenant()
    headers = {"x-api-key": tenant.key}
    with httpx.Client(base_url=services.api, headers=headers) as client:
        assert client.post("/v1/throttle/pause").status_code == 403
        made = runner.invoke(app, ["keys", "create", "--tenant", tenant.name, "--operator"])
        assert made.exit_code == 0, made.output
        try:
            assert client.post("/v1/throttle/pause").status_code == 200
        finally:
            client.post("/v1/throttle/resume")


def test_a_known_key_is_not_looked_up_again_until_the_credentials_change(
    database: str, make_tenant: Callable[[], TenantKey]
) -> None:
    from relightq.db import session_scope
    from relightq.tenants import known_keys
    from relightq.tenants.service import authenticate, revoke_key

    class NoDatabase:
        def __init__(self) -> None:
            self.info: dict[str, object] = {}

        def execute(self, *_: object) -> None:
            raise AssertionError("looked up")

    tenant = make_tenant()
    with session_scope() as session:
        assert authenticate(session, tenant.key).id == tenant.id  # type: ignore[union-attr]
    kept = authenticate(NoDatabase(), tenant.key)  # type: ignore[arg-type]
    assert kept is not None and (kept.id, kept.name) == (tenant.id, tenant.name)
    # Redis lost the generation (flushed): a new one is drawn, nothing kept is trusted.
    redis_client = known_keys._redis()
    assert redis_client is not None
    redis_client.delete(known_keys.GENERATION_KEY)
    with pytest.raises(AssertionError, match="looked up"):
        authenticate(NoDatabase(), tenant.key)  # type: ignore[arg-type]
    with session_scope() as session:
        assert authenticate(session, tenant.key) is not None

    before = known_keys.current_generation()
    with session_scope() as session:
        revoke_key(session, tenant.key)
        session.rollback()  # a revoke that never commits changes nothing
    assert known_keys.current_generation() == before
    with session_scope() as session:
        revoke_key(session, tenant.key)
    assert known_keys.current_generation() != before
    with session_scope() as session:
        assert authenticate(session, tenant.key) is None
