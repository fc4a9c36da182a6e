"""JSON nested too deeply is a 422 naming the field wherever JSON comes in, never a 500,
and nothing is stored for it; a bug anywhere else is still the stable JSON error shape."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api.app import create_app
from relightq.batches.models import Batch
from relightq.db import session_scope
from relightq.json_input import MAX_DEPTH, nesting_depth, parse_json
from relightq.serving import serve_in_thread
from tests.api.test_jobs import URL, fields_of, job_count
from tests.batches.helpers import csv_file
from tests.conftest import Services, TenantKey
from tests.support.images import product_png

# Past what Python's own parser can read (RecursionError), as in the audit: ~200 KB.
ABYSS = "[" * 100_000 + "]" * 100_000
# As deep, but a CSV cell the csv module still reads (its field limit is 128 KiB).
CSV_ABYSS = "[" * 50_000 + "]" * 50_000
# Parses, but deeper than relightq keeps (pydantic cannot even serialize ~1000 levels back).
DEEP = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)


def with_metadata(nested: str, **fields: str) -> str:
    """A job body whose metadata holds ``nested`` (a JSON text) under one key."""
    head = json.dumps({"prompt": "studio", "subject_image": URL, **fields})[:-1]
    return f'{head}, "metadata": {{"deep": {nested}}}}}'


def problem_of(response: httpx.Response, field: str) -> dict[str, Any]:
    """The one problem of a 422 naming ``field``, saying it nests too deeply."""
    fields = fields_of(response)
    assert list(fields) == [field], fields
    assert "nests too deeply" in fields[field]["message"]
    return fields[field]


def batch_count(tenant: TenantKey) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(Batch.tenant_id == tenant.id)) or 0


def test_depth_counts_levels_of_arrays_and_objects() -> None:
    assert nesting_depth("x") == 0
    assert nesting_depth({"a": [1, {"b": []}], "c": {}}) == 4
    assert parse_json(DEEP[1:-1], "body") == json.loads(DEEP[1:-1])  # exactly the limit


@pytest.mark.parametrize("nested", [ABYSS, DEEP], ids=["abyss", "deep"])
def test_a_json_job_nested_too_deeply_is_a_422_naming_the_body_and_stores_nothing(
    api: httpx.Client, tenant: TenantKey, nested: str
) -> None:
    response = api.post(
        "/v1/jobs", content=with_metadata(nested), headers={"content-type": "application/json"}
    )
    assert problem_of(response, "body")["allowed"] == "a JSON object"
    assert job_count(tenant) == 0


@pytest.mark.parametrize("nested", [ABYSS, DEEP], ids=["abyss", "deep"])
def test_a_multipart_job_with_metadata_nested_too_deeply_is_a_422_naming_metadata(
    api: httpx.Client, tenant: TenantKey, nested: str
) -> None:
    response = api.post(
        "/v1/jobs",
        data={"prompt": "studio", "metadata": f'{{"deep": {nested}}}'},
        files={"subject_image": ("p.png", product_png(), "image/png")},
    )
    problem_of(response, "metadata")
    assert job_count(tenant) == 0


def test_a_json_batch_nested_too_deeply_is_a_422_naming_the_body(
    api: httpx.Client, tenant: TenantKey
) -> None:
    body = json.dumps({"defaults": {"prompt": "x"}, "items": []})[:-1] + f', "name": {ABYSS}}}'
    response = api.post("/v1/batches", content=body, headers={"content-type": "application/json"})
    problem_of(response, "body")
    assert batch_count(tenant) == 0


def test_multipart_batch_defaults_nested_too_deeply_are_a_422_naming_defaults(
    api: httpx.Client, tenant: TenantKey
) -> None:
    response = api.post(
        "/v1/batches",
        data={"defaults": f'{{"prompt": "x", "metadata": {{"deep": {ABYSS}}}}}'},
        files={"file": ("catalog.csv", csv_file([{"subject_image": URL}]), "text/csv")},
    )
    problem_of(response, "defaults")
    assert batch_count(tenant) == 0


@pytest.mark.parametrize("nested", [ABYSS, DEEP], ids=["abyss", "deep"])
def test_a_jsonl_row_nested_too_deeply_is_a_row_error_and_the_batch_rolls_back(
    api: httpx.Client, tenant: TenantKey, nested: str
) -> None:
    rows = [
        json.dumps({"subject_image": URL, "prompt": "fine"}),
        with_metadata(nested),
        json.dumps({"subject_image": URL, "prompt": "fine too"}),
    ]
    files = {"file": ("catalog.jsonl", "\n".join(rows).encode(), "application/jsonl")}

    refused = api.post("/v1/batches", files=files)
    assert batch_count(tenant) == 0 and job_count(tenant) == 0  # the whole batch rolled back
    kept = api.post("/v1/batches", files=files, data={"skip_invalid": "true"})

    problem_of(refused, "rows[2].item")
    assert kept.status_code == 202, kept.text
    assert (kept.json()["total"], kept.json()["rejected"]) == (2, 1)


def test_a_csv_metadata_cell_nested_too_deeply_is_a_row_error(
    api: httpx.Client, tenant: TenantKey
) -> None:
    rows = [
        {"subject_image": URL, "metadata": '{"sku": "A1"}'},
        {"subject_image": URL, "metadata": f'{{"deep": {CSV_ABYSS}}}'},
    ]
    files = {"file": ("catalog.csv", csv_file(rows), "text/csv")}
    response = api.post("/v1/batches", files=files, data={"defaults": '{"prompt": "x"}'})

    assert problem_of(response, "rows[2].metadata")["allowed"]
    assert batch_count(tenant) == 0 and job_count(tenant) == 0


def test_a_csv_cell_past_the_csv_readers_limit_is_a_row_error(
    api: httpx.Client, tenant: TenantKey
) -> None:
    rows = [
        {"subject_image": URL, "metadata": f'{{"deep": {ABYSS}}}'},
        {"subject_image": URL, "metadata": '{"sku": "A1"}'},
    ]
    files = {"file": ("catalog.csv", csv_file(rows), "text/csv")}
    data = {"defaults": '{"prompt": "x"}', "skip_invalid": "true"}

    kept = api.post("/v1/batches", files=files, data=data)

    assert kept.status_code == 202, kept.text
    assert (kept.json()["total"], kept.json()["rejected"]) == (1, 1)
    errors = api.get(f"/v1/batches/{kept.json()['id']}/errors").text
    assert "cannot be read as CSV" in errors and "field limit" in errors


def test_the_segmind_compatible_endpoint_answers_a_422_in_segminds_shape(
    services: Services, tenant: TenantKey
) -> None:
    response = httpx.post(
        f"{services.api}/compat/segmind/v1/ic-light",
        content=with_metadata(ABYSS),
        headers={"x-api-key": tenant.key, "content-type": "application/json"},
        timeout=30,
    )

    assert response.status_code == 422, response.text
    assert "nests too deeply" in response.json()["error"]
    assert job_count(tenant) == 0


def test_routes_whose_body_fastapi_reads_answer_a_4xx_in_the_error_shape(
    api: httpx.Client,
) -> None:
    response = api.post(
        "/v1/schedules", content=ABYSS, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"]


def test_an_unexpected_error_is_a_500_in_the_error_shape_without_its_text(
    tenant: TenantKey, caplog: pytest.LogCaptureFixture, database: str
) -> None:
    app = create_app()

    @app.get("/v1/test-bug")
    def bug() -> None:
        raise RuntimeError("connection to db at postgres://admin:hunter2@db failed")

    caplog.set_level(logging.ERROR)
    with serve_in_thread(app) as url:
        response = httpx.get(f"{url}/v1/test-bug")

    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "an internal error occurred; it has been logged",
            "fields": [],
        }
    }
    assert "hunter2" not in response.text
    logged = [r for r in caplog.records if r.name == "api.errors"]
    assert logged and logged[0].exc_info and "GET /v1/test-bug" in logged[0].getMessage()
