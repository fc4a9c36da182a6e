"""The error catalogue: pinned codes, a docs page that cannot drift, and an OpenAPI that
lists each route's error answers from the classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from api.errors import error_responses
from relightq.errors import (
    BatchRejected,
    InvalidInput,
    JobFinal,
    JobRunning,
    NotFound,
    RelightqError,
    catalogue,
    catalogue_markdown,
)
from tests.conftest import Services

ERRORS_PAGE = Path(__file__).parents[2] / "docs" / "reference" / "errors.md"


def test_the_codes_and_statuses_are_pinned_so_a_rename_is_deliberate() -> None:
    assert sorted((cls.code, cls.status) for cls in catalogue()) == [
        ("bad_signature", 401),
        ("batch_cancelled", 409),
        ("database_unavailable", 503),
        ("delivery_in_flight", 409),
        ("endpoint_disabled", 409),
        ("forbidden", 403),
        ("http_error", 400),
        ("idempotency_key_reused", 422),
        ("internal_error", 500),
        ("job_final", 409),
        ("job_not_retryable", 409),
        ("job_running", 409),
        ("method_not_allowed", 405),
        ("name_taken", 409),
        ("not_found", 404),
        ("payload_too_large", 413),
        ("rate_limited", 429),
        ("redis_unavailable", 503),
        ("run_exists", 409),
        ("too_many_items", 413),
        ("unauthorized", 401),
        ("unsupported_media_type", 415),
        ("validation_error", 422),
    ]


def test_every_error_class_has_one_code_and_status_and_a_meaning() -> None:
    def every(cls: type[RelightqError]) -> list[type[RelightqError]]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in every(child))]

    by_code: dict[str, int] = {}
    for cls in every(RelightqError)[1:]:
        assert cls.meaning(), f"{cls.__name__} has no docstring"
        assert by_code.setdefault(cls.code, cls.status) == cls.status, cls.__name__
    assert issubclass(BatchRejected, InvalidInput)  # the same answer, a sharper message


def test_an_error_carries_its_class_code_and_status() -> None:
    error = JobRunning("the job is running")

    assert (error.code, error.status, error.message, error.fields) == (
        "job_running",
        409,
        "the job is running",
        [],
    )
    assert str(NotFound("job")) == "job not found"


def test_the_errors_reference_page_is_generated_from_the_catalogue() -> None:
    # Regenerate with: .venv/bin/python -m relightq.errors > docs/reference/errors.md
    assert ERRORS_PAGE.read_text() == catalogue_markdown()


def test_error_responses_group_codes_by_status() -> None:
    responses = error_responses(NotFound, JobRunning, JobFinal)

    assert sorted(responses) == [404, 409]
    assert "`job_final`" in responses[409]["description"]
    assert "`job_running`" in responses[409]["description"]


@pytest.fixture(scope="module")
def spec(services: Services) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{services.api}/openapi.json").json()
    return document


def test_the_openapi_lists_each_routes_error_answers(spec: dict[str, Any]) -> None:
    cancel = spec["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    create = spec["paths"]["/v1/batches"]["post"]["responses"]
    event = spec["paths"]["/v1/triggers/{name}"]["post"]["responses"]

    assert {"401", "404", "409", "422", "429", "503"} <= set(cancel)
    assert "`job_running`" in cancel["409"]["description"]
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    assert cancel["409"]["content"]["application/json"]["schema"] == error_body
    assert {"413", "415", "422"} <= set(create)
    assert "`too_many_items`" in create["413"]["description"]
    assert "`idempotency_key_reused`" in create["422"]["description"]
    assert "`bad_signature`" in event["401"]["description"]


def test_every_documented_error_code_is_in_the_catalogue(spec: dict[str, Any]) -> None:
    codes = {cls.code for cls in catalogue()}
    for path, methods in spec["paths"].items():
        if path.startswith("/compat/"):
            continue  # Segmind's own answers
        for operation in methods.values():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                described = response["description"]
                named = {part.split("`")[1] for part in described.split("; ") if "`" in part}
                assert named and named <= codes, (path, status, described)
