"""NUL characters, which PostgreSQL cannot store, are a 422 naming the field, never a 500."""

from __future__ import annotations

import httpx
import pytest

from relightq.errors import NUL_MESSAGE, FieldProblem, unstorable_field
from tests.api.test_jobs import URL, fields_of, job_count
from tests.batches.helpers import csv_file
from tests.conftest import TenantKey
from tests.support.images import product_png


def test_unstorable_field_names_the_first_key_or_string_holding_a_nul() -> None:
    def named(value: object) -> str | None:
        problem = unstorable_field(value)
        return None if problem is None else problem.field

    assert named({"prompt": "ok", "metadata": {"notes": ["a", "b\x00"]}}) == "metadata.notes[1]"
    assert named({"metadata": {"k\x00": 1}}) == "metadata.k\\u0000"
    assert named("\x00") == "body"
    assert named({"prompt": "no nul here", "n": 3, "x": None}) is None
    assert unstorable_field({"a": "\x00"}) == FieldProblem("a", NUL_MESSAGE)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "studio\u0000", "subject_image": URL}, "prompt"),
        ({"prompt": "x", "subject_image": URL, "metadata": {"sku": "a\u0000"}}, "metadata.sku"),
        ({"prompt": "x", "subject_image": URL, "external_id": "\u0000"}, "external_id"),
    ],
)
def test_a_json_job_with_a_nul_is_a_422_naming_the_field_and_stores_nothing(
    api: httpx.Client, tenant: TenantKey, body: dict[str, object], field: str
) -> None:
    assert list(fields_of(api.post("/v1/jobs", json=body))) == [field]
    assert job_count(tenant) == 0


def test_every_json_route_refuses_a_nul(api: httpx.Client) -> None:
    endpoint = api.post(
        "/v1/webhooks/endpoints",
        json={"url": "https://example.com/hook", "description": "shop\u0000"},
    )
    batch = api.post(
        "/v1/batches", json={"defaults": {"prompt": "a\u0000"}, "items": [{"subject_image": URL}]}
    )
    assert list(fields_of(endpoint)) == ["description"]
    assert list(fields_of(batch)) == ["defaults.prompt"]


def test_a_multipart_job_with_a_nul_in_a_field_is_a_422(
    api: httpx.Client, tenant: TenantKey
) -> None:
    response = api.post(
        "/v1/jobs",
        data={"prompt": "studio\x00"},
        files={"subject_image": ("p.png", product_png(), "image/png")},
    )
    assert list(fields_of(response)) == ["prompt"]
    assert job_count(tenant) == 0


def test_a_csv_row_with_a_nul_is_a_row_error(api: httpx.Client, tenant: TenantKey) -> None:
    rows = [{"subject_image": URL, "prompt": "fine"}, {"subject_image": URL, "prompt": "b\x00d"}]
    files = {"file": ("catalog.csv", csv_file(rows), "text/csv")}

    refused = api.post("/v1/batches", files=files)
    kept = api.post("/v1/batches", files=files, data={"skip_invalid": "true"})

    assert list(fields_of(refused)) == ["rows[2].prompt"]
    assert kept.status_code == 202, kept.text
    assert kept.json()["total"] == 1 and kept.json()["rejected"] == 1
