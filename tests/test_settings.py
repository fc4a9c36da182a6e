"""Settings: the RELIGHTQ_ prefix, the simulator fallback and the timeout order."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from relightq.settings import SEGMIND_PUBLIC_URL, Settings


def test_without_a_key_calls_go_to_the_simulator_and_it_says_so_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(segmind_api_key=None, simulator_url="http://127.0.0.1:9")
    assert settings.uses_simulator
    assert settings.effective_segmind_url == "http://127.0.0.1:9"
    with caplog.at_level(logging.WARNING):
        settings.warn_if_simulated()
    assert "SIMULATOR" in caplog.text


def test_with_a_key_calls_go_to_segmind_and_the_key_stays_hidden() -> None:
    settings = Settings(segmind_api_key="sg_live_secret")  # type: ignore[arg-type]
    assert settings.effective_segmind_url == SEGMIND_PUBLIC_URL
    assert settings.effective_segmind_key == "sg_live_secret"
    assert "sg_live_secret" not in repr(settings) + str(settings.model_dump())


def test_env_vars_carry_the_relightq_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELIGHTQ_S3_BUCKET", "catalog-bucket")
    monkeypatch.setenv("RELIGHTQ_SEGMIND_BASE_URL", "https://segmind.internal")
    settings = Settings()
    assert (settings.s3_bucket, settings.segmind_base_url) == (
        "catalog-bucket",
        "https://segmind.internal",
    )


def test_timeouts_out_of_order_are_refused_at_start_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELIGHTQ_JOB_LEASE_SECONDS", "100")
    with pytest.raises(ValidationError, match="RELIGHTQ_BROKER_VISIBILITY_TIMEOUT_SECONDS"):
        Settings()


def test_a_mistyped_cidr_in_the_outbound_allow_list_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match=r"10\.0\.0\.0/33"):
        Settings(outbound_allow="hooks.internal,10.0.0.0/33")
    assert Settings(outbound_allow="hooks.internal, 10.0.0.0/8").outbound_allow
