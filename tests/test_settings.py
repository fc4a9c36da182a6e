"""Settings: the RELIGHTQ_ prefix, the simulator fallback and the timeout order."""

from __future__ import annotations

import logging
from decimal import Decimal

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
    monkeypatch.setenv("RELIGHTQ_BROKER_VISIBILITY_TIMEOUT_SECONDS", "200")
    with pytest.raises(ValidationError, match="RELIGHTQ_BROKER_VISIBILITY_TIMEOUT_SECONDS"):
        Settings()


def test_a_shutdown_grace_shorter_than_a_call_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="RELIGHTQ_WORKER_SHUTDOWN_GRACE_SECONDS"):
        Settings(worker_shutdown_grace_seconds=60)


def test_the_default_lease_is_short_and_renewed_so_recovery_takes_seconds() -> None:
    # The guarantee "taken over within 45 s at defaults" rests on these two numbers:
    # a lease that runs out 30 s after its last renewal, found by a look every 5 s.
    from relightq.leases import RENEWALS_PER_LEASE

    settings = Settings()
    assert settings.job_lease_seconds == 30
    assert settings.job_lease_seconds * (1 + 1 / RENEWALS_PER_LEASE) <= 45


def test_a_mistyped_cidr_in_the_outbound_allow_list_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match=r"10\.0\.0\.0/33"):
        Settings(outbound_allow="hooks.internal,10.0.0.0/33")
    assert Settings(outbound_allow="hooks.internal, 10.0.0.0/8").outbound_allow


@pytest.mark.parametrize("value", ["20/second;1000/hour", "20/second,1000/hour", "5/minute|6/hour"])
def test_a_rate_limit_listing_several_rates_is_refused_at_start(value: str) -> None:
    # The limiter applies one rate: a list would silently lose all but its first.
    with pytest.raises(ValidationError, match="lists 2 rates; give one"):
        Settings(rate_limit=value)
    assert Settings(rate_limit="20/second").rate_limit == "20/second"
    assert Settings(rate_limit="").rate_limit == ""  # no limit


def test_a_rate_limit_that_is_not_a_rate_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="not a rate such as 1200/minute"):
        Settings(rate_limit="lots")


@pytest.mark.parametrize(
    "variable",
    ["RELIGHTQ_MAX_REQUEST_BYTES", "RELIGHTQ_MAX_UPLOAD_BYTES", "RELIGHTQ_MAX_BATCH_ITEMS"],
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_size_limits_of_zero_or_less_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match="greater than"):
        Settings()


@pytest.mark.parametrize("value", ["", "none", "None"])
def test_an_empty_low_balance_threshold_turns_the_warning_off(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RELIGHTQ_CREDIT_WARN_BELOW", value)
    assert Settings().credit_warn_below is None


def test_credit_amounts_are_exact_decimals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELIGHTQ_CREDIT_WARN_BELOW", "2.5")
    monkeypatch.setenv("RELIGHTQ_SEGMIND_CREDITS_PER_IMAGE", "0.037")
    settings = Settings()
    assert str(settings.credit_warn_below) == "2.5"
    assert settings.segmind_credits_per_image * 10 == Decimal(
        "0.37"
    )  # 0.37000000000000005 as floats
