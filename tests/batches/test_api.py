"""POST /v1/batches from each source, validation of every row, manifests, cancel and retry."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest

from relightq.db import session_scope
from relightq.jobs.models import Job
from relightq.settings import get_settings
from tests.batches.helpers import catalog, csv_file, jsonl_file, manifest, wait_batch
from tests.conftest import TenantKey, s3_client
from tests.jobs.test_end_to_end import SHOP_BUCKET, download, shop_image

pytestmark = pytest.mark.usefixtures("celery_worker")


def _jobs_of(tenant: TenantKey) -> int:
    with session_scope() as session:
        return session.query(Job).filter(Job.tenant_id == tenant.id).count()


def test_a_json_batch_runs_every_item_with_defaults_and_overrides(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    urls = catalog(3)
    body = {
        "name": "spring catalog",
        "defaults": {"prompt": "soft daylight", "width": 384, "height": 512},
        "items": [
            {"subject_image": urls[0], "external_id": "SKU-0"},
            {"subject_image": urls[1], "external_id": "SKU-1", "light_source": "Left Light"},
            {"subject_image": urls[2], "external_id": "SKU-2", "metadata": {"color": "red"}},
        ],
    }
    response = api.post("/v1/batches", json=body)

    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["location"] == f"/v1/batches/{batch['id']}"
    assert batch["total"] == 3 and batch["name"] == "spring catalog"
    done = wait_batch(api, batch["id"], "completed")
    assert done["counts"]["succeeded"] == 3 and done["progress"] == 1.0
    assert done["credits_used"] > 0 and done["eta_seconds"] == 0
    rows = manifest(api, batch["id"])
    assert [r["external_id"] for r in rows] == ["SKU-0", "SKU-1", "SKU-2"]
    assert [r["row"] for r in rows] == [1, 2, 3]
    jobs = api.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["items"]
    by_sku = {j["external_id"]: j for j in jobs}
    assert by_sku["SKU-1"]["params"]["light_source"] == "Left Light"
    assert by_sku["SKU-0"]["params"]["light_source"] == "None"
    assert by_sku["SKU-0"]["params"]["prompt"] == "soft daylight"
    assert by_sku["SKU-2"]["metadata"] == {"color": "red"}
    assert all(j["priority"] == 4 for j in jobs)


def test_a_csv_upload_becomes_a_batch_with_outputs_in_the_customer_bucket(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    urls = catalog(2, "csv")
    rows = [
        {"subject_image": urls[0], "external_id": "SHOE-1", "metadata.season": "fall"},
        {"subject_image": urls[1], "external_id": "SHOE-2", "prompt": "neon"},
    ]
    response = api.post(
        "/v1/batches",
        files={"file": ("catalog.csv", csv_file(rows), "text/csv")},
        data={
            "defaults": '{"prompt": "studio", "output_format": "png"}',
            "output_prefix": f"s3://{SHOP_BUCKET}/relit/",
            "key_template": "{external_id}/{index}.{ext}",
        },
    )

    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    assert response.json()["source"] == "csv"
    wait_batch(api, batch_id, "completed")
    results = manifest(api, batch_id)
    assert [r["outputs"][0]["s3_uri"] for r in results] == [
        f"s3://{SHOP_BUCKET}/relit/SHOE-1/0.png",
        f"s3://{SHOP_BUCKET}/relit/SHOE-2/0.png",
    ]
    stored = s3_client().get_object(Bucket=SHOP_BUCKET, Key="relit/SHOE-1/0.png")["Body"].read()
    assert stored[:4] == b"\x89PNG"
    assert (
        download(results[1]["outputs"][0]["url"])
        == s3_client().get_object(Bucket=SHOP_BUCKET, Key="relit/SHOE-2/0.png")["Body"].read()
    )
    job = api.get(f"/v1/jobs/{results[0]['job_id']}").json()
    assert job["metadata"] == {"season": "fall"}


def test_a_jsonl_upload_becomes_a_batch(api: httpx.Client, simulator: httpx.Client) -> None:
    urls = catalog(2, "jsonl")
    body = jsonl_file([{"subject_image": u, "prompt": "warm"} for u in urls])

    response = api.post("/v1/batches", files={"file": ("items.jsonl", body)})

    assert response.status_code == 202, response.text
    done = wait_batch(api, response.json()["id"], "completed")
    assert done["counts"]["succeeded"] == 2 and done["source"] == "jsonl"


def test_an_s3_prefix_is_listed_recursively_for_images(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    shop_image("prefix-run/shoes/a.png")
    shop_image("prefix-run/shoes/deep/b.png")
    s3_client().put_object(Bucket=SHOP_BUCKET, Key="prefix-run/readme.txt", Body=b"not an image")
    body = {
        "source": f"s3://{SHOP_BUCKET}/prefix-run/",
        "defaults": {"prompt": "sunset"},
        "key_template": "{source_name}-{index}.{ext}",
    }

    response = api.post("/v1/batches", json=body)

    assert response.status_code == 202, response.text
    batch = wait_batch(api, response.json()["id"], "completed")
    assert batch["total"] == 2 and batch["counts"]["succeeded"] == 2
    results = manifest(api, batch["id"])
    assert [r["source"] for r in results] == [
        f"s3://{SHOP_BUCKET}/prefix-run/shoes/a.png",
        f"s3://{SHOP_BUCKET}/prefix-run/shoes/deep/b.png",
    ]
    prefix = f"s3://relightq-test/outputs/{api_tenant(api)}/batches/{batch['id']}/"
    assert [r["outputs"][0]["s3_uri"] for r in results] == [
        prefix + "a-0.webp",
        prefix + "b-0.webp",
    ]


def test_a_prefix_without_its_closing_slash_is_the_folder_not_its_siblings(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    shop_image("slashless/2026/a.png")
    shop_image("slashless/2026-old/b.png")  # shares the characters, not the folder
    body = {
        "source": f"s3://{SHOP_BUCKET}/slashless/2026",
        "defaults": {"prompt": "sunset"},
        "key_template": "{source_key}-{index}.{ext}",
    }

    response = api.post("/v1/batches", json=body)

    assert response.status_code == 202, response.text
    batch = wait_batch(api, response.json()["id"], "completed")
    [result] = manifest(api, batch["id"])
    assert result["source"] == f"s3://{SHOP_BUCKET}/slashless/2026/a.png"
    assert result["outputs"][0]["s3_uri"].endswith(f"/batches/{batch['id']}/a.png-0.webp")


def api_tenant(api: httpx.Client) -> str:
    jobs = api.get("/v1/jobs", params={"limit": 1}).json()["items"]
    subject: str = jobs[0]["outputs"][0]["s3_uri"]
    return subject.split("/")[4]


def test_a_batch_with_bad_rows_is_rejected_whole_listing_every_bad_row(
    api: httpx.Client, tenant: TenantKey
) -> None:
    rows: list[dict[str, Any]] = [
        {"subject_image": "https://example.com/a.png"},
        {"subject_image": "ftp://example.com/b.png"},
        {"subject_image": "https://example.com/c.png", "steps": 500},
        {"subject_image": "https://example.com/d.png", "light_source": "Moon Light"},
    ]

    response = api.post(
        "/v1/batches",
        files={"file": ("bad.csv", csv_file(rows))},
        data={"defaults": '{"prompt": "x"}'},
    )

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    fields = [f["field"] for f in error["fields"]]
    assert fields == ["rows[2].subject_image", "rows[3].steps", "rows[4].light_source"]
    assert "3 of 4 rows are invalid" in error["message"]
    assert _jobs_of(tenant) == 0
    assert api.get("/v1/batches").json()["items"] == []


def test_a_row_with_a_bad_metadata_cell_lists_its_other_problems_too(
    api: httpx.Client, tenant: TenantKey
) -> None:
    rows: list[dict[str, Any]] = [
        {"subject_image": "ftp://example.com/b.png", "steps": 500, "metadata": "{bad"},
    ]

    response = api.post("/v1/batches", files={"file": ("bad.csv", csv_file(rows))})

    assert response.status_code == 422, response.text
    fields = sorted(f["field"] for f in response.json()["error"]["fields"])
    assert fields == [
        "rows[1].metadata",
        "rows[1].prompt",
        "rows[1].steps",
        "rows[1].subject_image",
    ]
    assert _jobs_of(tenant) == 0


def test_skip_invalid_runs_the_good_rows_and_reports_the_bad_ones(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    [url] = catalog(1, "skip")
    items = [{"subject_image": url, "external_id": "GOOD"}, {"external_id": "NO-IMAGE"}, 7]

    response = api.post(
        "/v1/batches", json={"defaults": {"prompt": "x"}, "items": items, "skip_invalid": True}
    )

    assert response.status_code == 202, response.text
    batch = wait_batch(api, response.json()["id"], "completed")
    assert batch["total"] == 1 and batch["rejected"] == 2
    errors = manifest(api, batch["id"], "errors")
    assert [(e["row"], e["status"], e["external_id"]) for e in errors] == [
        (2, "rejected", "NO-IMAGE"),
        (3, "rejected", None),
    ]
    assert "subject_image" in errors[0]["error"]["message"]
    as_csv = api.get(f"/v1/batches/{batch['id']}/errors", params={"format": "csv"}).text
    parsed = list(csv.DictReader(io.StringIO(as_csv)))
    assert [p["row"] for p in parsed] == ["2", "3"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": [], "defaults": {"prompt": "x"}}, "items"),
        ({"defaults": {"prompt": "x"}}, "body"),
        (
            {"items": [{"subject_image": "https://e.com/a.png"}], "defaults": {"steps": 0}},
            "defaults.steps",
        ),
        (
            {
                "items": [{"subject_image": "https://e.com/a.png", "prompt": "x"}],
                "key_template": "{sku}",
            },
            "key_template",
        ),
        (
            {
                "items": [{"subject_image": "https://e.com/a.png", "prompt": "x"}],
                "output_prefix": "bucket/x",
            },
            "output_prefix",
        ),
        (
            {
                "items": [{"subject_image": "https://e.com/a.png", "prompt": "x"}],
                "credit_budget": 0,
            },
            "credit_budget",
        ),
        ({"source": "s3://relightq-test/inputs/", "defaults": {"prompt": "x"}}, "source"),
        ({"source": "s3://no-such-bucket/photos/", "defaults": {"prompt": "x"}}, "source"),
        (
            {
                "items": [{"subject_image": "https://e.com/a.png", "prompt": "x"}],
                "output_prefix": "s3://no-such-bucket/relit/",
            },
            "output_prefix",
        ),
        (
            {
                "items": [{"subject_image": "https://e.com/a.png", "prompt": "x"}],
                "output_prefix": "s3://relightq-test/outputs/someone-else/",
            },
            "output_prefix",
        ),
    ],
)
def test_bad_batch_settings_name_the_field(
    api: httpx.Client, tenant: TenantKey, body: dict[str, Any], field: str
) -> None:
    response = api.post("/v1/batches", json=body)

    assert response.status_code == 422, response.text
    assert field in [f["field"] for f in response.json()["error"]["fields"]]
    assert _jobs_of(tenant) == 0


def test_colliding_output_keys_are_row_errors(api: httpx.Client, tenant: TenantKey) -> None:
    items = [
        {"subject_image": "https://e.com/a.png", "external_id": "SAME"},
        {"subject_image": "https://e.com/b.png", "external_id": "SAME"},
    ]
    body = {"items": items, "defaults": {"prompt": "x"}, "key_template": "{external_id}.{ext}"}

    response = api.post("/v1/batches", json=body)

    assert response.status_code == 422
    [problem] = response.json()["error"]["fields"]
    assert problem["field"] == "rows[2].key_template" and "row 1" in problem["message"]


def test_an_output_key_with_dot_dot_segments_is_a_row_error(
    api: httpx.Client, tenant: TenantKey
) -> None:
    items = [
        {"subject_image": "https://e.com/a.png", "external_id": "ok"},
        {"subject_image": "https://e.com/b.png", "external_id": "../../inputs/OTHER/x"},
        {"subject_image": "https://e.com/c.png", "external_id": "a//b"},
    ]
    body = {"items": items, "defaults": {"prompt": "x"}, "key_template": "{external_id}.{ext}"}

    response = api.post("/v1/batches", json=body)

    assert response.status_code == 422
    fields = [p["field"] for p in response.json()["error"]["fields"]]
    assert fields == ["rows[2].key_template", "rows[3].key_template"]
    assert _jobs_of(tenant) == 0


def test_another_tenants_batch_is_not_found(
    api: httpx.Client, make_tenant: Any, services: Any
) -> None:
    other = make_tenant()
    items = [{"subject_image": "https://e.com/a.png", "prompt": "x"}]
    with httpx.Client(base_url=services.api, headers={"x-api-key": other.key}) as theirs:
        batch_id = theirs.post("/v1/batches", json={"items": items}).json()["id"]
        theirs.post(f"/v1/batches/{batch_id}/cancel")

    for path in ("", "/results", "/errors"):
        assert api.get(f"/v1/batches/{batch_id}{path}").status_code == 404
    assert api.post(f"/v1/batches/{batch_id}/cancel").status_code == 404


@pytest.mark.parametrize(
    ("files", "data", "field"),
    [
        ({}, {"defaults": "{}"}, "file"),
        (
            {"file": ("c.csv", b"subject_image\nhttps://e.com/a.png\n")},
            {"defaults": "{nope"},
            "defaults",
        ),
        ({"file": ("c.csv", b"subject_image,colour\nhttps://e.com/a.png,red\n")}, {}, "columns"),
        ({"file": ("c.csv", b"external_id\nSKU-1\n")}, {}, "columns"),
        ({"file": ("c.csv", b"subject_image,prompt\nhttps://e.com/\xff.png,x\n")}, {}, "file"),
        ({"file": ("c.txt", b"subject_image,prompt\n")}, {}, "format"),
        ({"file": ("c.csv", b"")}, {}, "file"),
    ],
)
def test_bad_uploads_name_the_field_and_store_nothing(
    api: httpx.Client,
    tenant: TenantKey,
    files: dict[str, Any],
    data: dict[str, str],
    field: str,
) -> None:
    response = api.post("/v1/batches", files=files or {"other": ("x", b"x")}, data=data)

    assert response.status_code == 422, response.text
    assert field in [f["field"] for f in response.json()["error"]["fields"]]
    assert _jobs_of(tenant) == 0 and api.get("/v1/batches").json()["items"] == []


def test_too_many_items_is_a_413_and_stores_nothing(
    api: httpx.Client, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "max_batch_items", 3)
    rows = [{"subject_image": f"https://e.com/{n}.png", "prompt": "x"} for n in range(4)]

    response = api.post("/v1/batches", files={"file": ("c.csv", csv_file(rows))})

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_items"
    assert _jobs_of(tenant) == 0


def test_a_rejected_batch_lists_a_bounded_number_of_problems_with_an_exact_count(
    api: httpx.Client, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "max_reported_row_errors", 5)
    rows = [{"subject_image": "not a url", "prompt": "x"} for _ in range(5000)]

    response = api.post("/v1/batches", files={"file": ("c.csv", csv_file(rows))})

    assert response.status_code == 422
    error = response.json()["error"]
    assert len(error["fields"]) == 5 and "5000 of 5000 rows are invalid" in error["message"]
    assert _jobs_of(tenant) == 0


def test_batches_are_listed_newest_first_with_a_cursor(api: httpx.Client) -> None:
    items = [{"subject_image": "https://e.com/a.png", "prompt": "x"}]
    ids = [
        api.post("/v1/batches", json={"items": items, "name": f"b{n}"}).json()["id"]
        for n in range(3)
    ]
    for batch_id in ids:
        api.post(f"/v1/batches/{batch_id}/cancel")

    first = api.get("/v1/batches", params={"limit": 2}).json()
    second = api.get("/v1/batches", params={"limit": 2, "cursor": first["next_cursor"]}).json()

    assert [b["id"] for b in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None
    assert api.get("/v1/batches", params={"cursor": "garbage"}).status_code == 422


def test_a_prefix_without_images_is_a_422(api: httpx.Client, tenant: TenantKey) -> None:
    shop_image("has-images/a.png")
    s3_client().put_object(Bucket=SHOP_BUCKET, Key="no-images/notes.txt", Body=b"text")
    body = {"source": f"s3://{SHOP_BUCKET}/no-images/", "defaults": {"prompt": "x"}}

    response = api.post("/v1/batches", json=body)

    assert response.status_code == 422
    [problem] = response.json()["error"]["fields"]
    assert problem["field"] == "items" and "no items" in problem["message"]


def test_a_repeated_column_or_an_infinite_budget_is_refused(
    api: httpx.Client, tenant: TenantKey
) -> None:
    repeated = api.post(
        "/v1/batches",
        files={"file": ("c.csv", b"subject_image,prompt,prompt\nhttps://e.com/a.png,x,y\n")},
    )
    infinite = api.post(
        "/v1/batches",
        content=b'{"defaults": {"prompt": "x"}, "items": [], "credit_budget": 1e309}',
        headers={"content-type": "application/json"},
    )

    assert repeated.status_code == 422
    assert "repeated columns: prompt" in repeated.json()["error"]["fields"][0]["message"]
    assert infinite.status_code == 422
    assert [f["field"] for f in infinite.json()["error"]["fields"]] == ["credit_budget"]
    assert _jobs_of(tenant) == 0
