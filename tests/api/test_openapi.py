"""The generated OpenAPI at /docs documents what the routes read from headers themselves."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Services


@pytest.fixture(scope="module")
def spec(services: Services) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{services.api}/openapi.json").json()
    return document


def header_names(operation: dict[str, Any]) -> set[str]:
    return {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}


def test_submitting_routes_document_idempotency_key_and_prefer_wait(spec: dict[str, Any]) -> None:
    jobs = spec["paths"]["/v1/jobs"]["post"]
    batches = spec["paths"]["/v1/batches"]["post"]

    assert {"Idempotency-Key", "Prefer"} <= header_names(jobs)
    assert "Idempotency-Key" in header_names(batches)
    assert {"200", "202"} <= set(jobs["responses"])
    assert "Preference-Applied" in jobs["responses"]["200"]["headers"]


def test_the_segmind_compatible_route_documents_its_body_key_and_segminds_answers(
    spec: dict[str, Any],
) -> None:
    compat = spec["paths"]["/compat/segmind/v1/ic-light"]["post"]

    assert header_names(compat) == {"x-api-key"}
    content = compat["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    for media in content.values():
        assert {"prompt", "subject_image", "light_source"} <= set(media["schema"]["properties"])
    assert {"200", "401", "406", "422", "503", "504"} <= set(compat["responses"])
    assert set(compat["responses"]["200"]["content"]) == {"image/webp", "image/jpeg", "image/png"}
