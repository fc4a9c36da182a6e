"""Lone UTF-16 surrogates, which JSON can spell but no UTF-8 text holds, are a 422 naming
the field wherever client JSON (or form text) is decoded, never a 500."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from relightq.db import session_scope
from relightq.errors import SURROGATE_MESSAGE, InvalidInput, storable, unstorable_field
from relightq.json_input import parse_json
from relightq.triggers.models import Trigger
from tests.api.test_jobs import URL, fields_of, job_count
from tests.batches.helpers import csv_file, jsonl_file, manifest
from tests.conftest import TenantKey
from tests.support.images import product_png

# JSON as a client writes it: json.dumps escapes a lone surrogate as \udfff.
LONE = "\udfff"


def surrogate_problem(response: httpx.Response) -> str:
    """The one field a 422 names for a lone surrogate."""
    fields = fields_of(response)
    assert len(fields) == 1, fields
    [(name, problem)] = fields.items()
    assert problem["message"] == SURROGATE_MESSAGE
    return name


def post_json(api: httpx.Client, path: str, body: bytes) -> httpx.Response:
    # Not json=: httpx writes JSON as UTF-8 text, which a lone surrogate cannot be.
    return api.post(path, content=body, headers={"content-type": "application/json"})


def trigger_count(tenant: TenantKey) -> int:
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).select_from(Trigger).where(Trigger.tenant_id == tenant.id)
        )
        return int(count or 0)


def trigger_spec(**mapping: Any) -> dict[str, Any]:
    return {
        "name": f"t-{uuid.uuid4().hex[:8]}",
        "scheme": "standard-webhooks",
        "mapping": {"images": "images[].src", **mapping},
        "job": {"prompt": "studio light"},
    }


def test_unstorable_field_names_nul_and_surrogates_with_keys_escaped() -> None:
    problem = unstorable_field({"a": "ok", "m": {"k": ["x", "y\ud800z"]}})
    assert problem is not None
    assert (problem.field, problem.message) == ("m.k[1]", SURROGATE_MESSAGE)
    key = unstorable_field({"metadata": {"s\udc00": 1}})
    assert key is not None and key.field == "metadata.s\\udc00"
    assert unstorable_field("\x00") is not None
    # A pair is one character once decoded: nothing wrong with it.
    assert unstorable_field(json.loads('{"emoji": "\\ud83d\\ude00"}')) is None
    assert storable({"t\x00": ["a\x00b", "c\udfffd"]}) == {"t": ["ab", "c\ufffdd"]}


@pytest.mark.parametrize(
    ("text", "field", "document", "named"),
    [
        ('{"prompt": "\\ud800"}', "body", True, "prompt"),
        (b'{"prompt": "\xed\xbf\xbf"}', "body", True, "prompt"),  # what surrogatepass reads
        ('"\\udfff"', "body", True, "body"),
        ('{"sku": "\\udfff"}', "metadata", False, "metadata.sku"),
        ('{"sku": "\\u0000"}', "metadata", False, "metadata.sku"),
    ],
)
def test_parse_json_refuses_what_cannot_be_stored_naming_it(
    text: str | bytes, field: str, document: bool, named: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_json(text, field, document=document)
    assert [p.field for p in refused.value.fields] == [named]
    assert parse_json(text, field, clean=True) is not None


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        ({"images": LONE}, "mapping.images"),
        ({"external_id": "\ud800"}, "mapping.external_id"),
        ({"fields": {"prompt": f"title{LONE}"}}, "mapping.fields.prompt"),
        ({"fields": {LONE: "title"}}, "mapping.fields.\\udfff"),
    ],
)
def test_a_trigger_with_a_lone_surrogate_in_its_mapping_is_a_422_naming_it(
    api: httpx.Client, tenant: TenantKey, mapping: dict[str, Any], field: str
) -> None:
    body = json.dumps(trigger_spec(**mapping)).encode()
    assert b"\\ud" in body  # the escape, as any JSON client writes it

    assert surrogate_problem(post_json(api, "/v1/triggers", body)) == field
    assert trigger_count(tenant) == 0


def test_raw_surrogate_bytes_and_utf16_bodies_are_refused_too(
    api: httpx.Client, tenant: TenantKey
) -> None:
    spec = trigger_spec()
    # Bytes json.loads decodes with surrogatepass, no escape to look for.
    raw = json.dumps(spec).replace('"images[].src"', '"\xed\xa0\x80"').encode("latin-1")
    # JSON may come in UTF-16, which json.loads detects: every escape is spread over NULs.
    utf16 = json.dumps(trigger_spec(images=LONE)).encode("utf-16")
    nul16 = json.dumps({**trigger_spec(), "job": {"prompt": "a\x00"}}).encode("utf-16")

    assert surrogate_problem(post_json(api, "/v1/triggers", raw)) == "mapping.images"
    assert surrogate_problem(post_json(api, "/v1/triggers", utf16)) == "mapping.images"
    assert list(fields_of(post_json(api, "/v1/triggers", nul16))) == ["job.prompt"]
    assert trigger_count(tenant) == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/jobs", {"prompt": "x", "subject_image": URL, "external_id": LONE}, "external_id"),
        ("/v1/jobs", {"prompt": "x", "subject_image": URL, "metadata": {"k": LONE}}, "metadata.k"),
        (
            "/v1/jobs",
            {"prompt": "x", "subject_image": URL, "metadata": {LONE: 1}},
            "metadata.\\udfff",
        ),
        (
            "/v1/batches",
            {
                "skip_invalid": True,
                "defaults": {"prompt": "x"},
                "items": [
                    {"subject_image": URL},
                    {"subject_image": URL, "external_id": LONE},
                ],
            },
            "items[1].external_id",
        ),
        (
            "/v1/webhooks/endpoints",
            {"url": "https://example.com/h", "description": LONE},
            "description",
        ),
        ("/v1/schedules", {"name": LONE}, "name"),
    ],
)
def test_every_json_route_refuses_a_lone_surrogate_naming_the_field(
    api: httpx.Client, tenant: TenantKey, path: str, body: dict[str, Any], field: str
) -> None:
    assert surrogate_problem(post_json(api, path, json.dumps(body).encode())) == field
    assert job_count(tenant) == 0


def test_a_json_text_form_field_with_a_lone_surrogate_is_a_422_naming_it(
    api: httpx.Client, tenant: TenantKey
) -> None:
    metadata = json.dumps({"sku": LONE})  # the form field is JSON text, escape and all
    job = api.post(
        "/v1/jobs",
        data={"prompt": "x", "metadata": metadata},
        files={"subject_image": ("p.png", product_png(), "image/png")},
    )
    batch = api.post(
        "/v1/batches",
        data={"defaults": json.dumps({"prompt": LONE})},
        files={"file": ("c.csv", csv_file([{"subject_image": URL, "prompt": "x"}]), "text/csv")},
    )

    assert surrogate_problem(job) == "metadata.sku"
    assert surrogate_problem(batch) == "defaults.prompt"
    assert job_count(tenant) == 0


def multipart(fields: dict[str, bytes], charset: str) -> tuple[bytes, str]:
    """A form whose text parts are in ``charset``, which Starlette decodes them with."""
    boundary = "relightq-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value
        for name, value in fields.items()
    ]
    file = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="subject_image"; '
        'filename="p.png"\r\nContent-Type: image/png\r\n\r\n'
    ).encode() + product_png()
    body = b"\r\n".join([*parts, file, f"--{boundary}--\r\n".encode()])
    return body, f"multipart/form-data; boundary={boundary}; charset={charset}"


def test_a_form_field_that_decodes_to_a_lone_surrogate_is_a_422(
    api: httpx.Client, tenant: TenantKey
) -> None:
    # "+2AA-" is UTF-7 for U+D800 alone.
    body, content_type = multipart({"prompt": b"studio +2AA-"}, "utf-7")

    response = api.post("/v1/jobs", content=body, headers={"content-type": content_type})

    assert surrogate_problem(response) == "prompt"
    assert job_count(tenant) == 0


def test_jsonl_rows_and_csv_metadata_cells_with_a_lone_surrogate_are_row_errors(
    api: httpx.Client, tenant: TenantKey
) -> None:
    jsonl = jsonl_file(
        [
            {"subject_image": URL, "prompt": "fine"},
            {"subject_image": URL, "prompt": f"b{LONE}d", "external_id": "SKU-2"},
        ]
    )
    csv_rows = [{"subject_image": URL, "prompt": "x", "metadata": json.dumps({"k": LONE})}]

    refused = api.post("/v1/batches", files={"file": ("c.jsonl", jsonl, "application/jsonl")})
    kept = api.post(
        "/v1/batches",
        files={"file": ("c.jsonl", jsonl, "application/jsonl")},
        data={"skip_invalid": "true"},
    )
    cell = api.post("/v1/batches", files={"file": ("c.csv", csv_file(csv_rows), "text/csv")})

    assert surrogate_problem(refused) == "rows[2].prompt"
    assert kept.status_code == 202, kept.text
    assert (kept.json()["total"], kept.json()["rejected"]) == (1, 1)
    [rejected] = manifest(api, kept.json()["id"], "errors")
    assert rejected["row"] == 2, rejected
    assert surrogate_problem(cell) == "rows[1].metadata.k"
