"""Result reuse: a picture already made for the tenant is copied, never bought again, and
a changed picture is never mistaken for it.

Real parts: the API, the suite's Celery worker, the simulator over HTTP (counting the
calls it was paid for), the S3 server, PostgreSQL, and a real HTTP image host whose
bytes change under the same URL. Every setting is the default a user gets.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.batches.helpers import manifest, wait_batch
from tests.conftest import TenantKey, s3_client
from tests.jobs.test_end_to_end import SHOP_BUCKET, download, wait_for
from tests.support.image_server import ImageHost, image_host
from tests.support.images import product_png

pytestmark = pytest.mark.usefixtures("celery_worker")


def paid_calls(simulator: httpx.Client) -> int:
    """Relight calls (v1) and submits (v2) the simulator charged for."""
    return int(simulator.get("/admin/stats").json()["calls"])


def photo(seed: int) -> bytes:
    """A product photo whose bytes differ by ``seed``."""
    image = Image.open(io.BytesIO(product_png()))
    image.paste((seed * 37 % 256, 90, seed * 11 % 256), (0, 0, 96, 96))  # visible in the output
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def put_object(key: str, data: bytes) -> str:
    client: Any = s3_client()
    client.create_bucket(Bucket=SHOP_BUCKET)
    client.put_object(Bucket=SHOP_BUCKET, Key=key, Body=data, ContentType="image/png")
    return f"s3://{SHOP_BUCKET}/{key}"


def relight(api: httpx.Client, subject: str, **fields: Any) -> dict[str, Any]:
    body = {"prompt": "studio light", "subject_image": subject, **fields}
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return wait_for(api, response.json()["id"], "succeeded", "failed", timeout=60)


@pytest.fixture
def host() -> Iterator[ImageHost]:
    with image_host() as served:
        yield served


def test_the_same_picture_again_is_copied_not_bought(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    # The same bytes under two keys: the content is what counts, not the name.
    first = relight(api, put_object(f"reuse/{uuid.uuid4()}/a.png", photo(1)))
    second = relight(api, put_object(f"reuse/{uuid.uuid4()}/b.png", photo(1)))

    assert first["status"] == second["status"] == "succeeded"
    assert paid_calls(simulator) == 1
    assert second["reused_from"] == first["id"]
    assert second["credits_used"] == 0 and second["credits_saved"] == 0.037
    assert second["attempts"] == 0 and second["attempt_log"] == []
    assert first["reused_from"] is None and first["credits_used"] == 0.037
    # Its own objects, with the same pictures in them.
    [made], [copied] = first["outputs"], second["outputs"]
    assert copied["s3_uri"] != made["s3_uri"] and second["id"] in copied["s3_uri"]
    assert copied["sha256"] == made["sha256"]
    original = download(made["url"])
    assert download(copied["url"]) == original
    # Deleting the original's object leaves the copy whole.
    bucket, key = made["s3_uri"][5:].split("/", 1)
    s3_client().delete_object(Bucket=bucket, Key=key)
    fresh = api.get(f"/v1/jobs/{second['id']}").json()["outputs"][0]["url"]
    assert download(fresh) == original


def test_a_changed_image_under_the_same_key_is_relit(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    key = f"reuse/{uuid.uuid4()}/shoe.png"
    first = relight(api, put_object(key, photo(1)))
    second = relight(api, put_object(key, photo(2)))  # the shop replaced the photo

    assert paid_calls(simulator) == 2
    assert second["reused_from"] is None and second["credits_used"] == 0.037
    assert second["outputs"][0]["sha256"] != first["outputs"][0]["sha256"]


def test_a_url_is_reused_only_while_its_strong_etag_vouches_for_the_same_bytes(
    api: httpx.Client, simulator: httpx.Client, host: ImageHost
) -> None:
    url = host.put("/shoe.png", photo(1))
    first = relight(api, url)
    again = relight(api, url)
    assert again["reused_from"] == first["id"] and paid_calls(simulator) == 1

    host.put("/shoe.png", photo(2))  # new bytes, same URL: a new ETag
    changed = relight(api, url)
    assert changed["reused_from"] is None and paid_calls(simulator) == 2
    assert changed["outputs"][0]["sha256"] != first["outputs"][0]["sha256"]

    # The new picture is now the one reused.
    assert relight(api, url)["reused_from"] == changed["id"]
    assert paid_calls(simulator) == 2


@pytest.mark.parametrize("etag", ["weak", "none"])
def test_a_url_without_a_strong_etag_is_relit_every_time(
    api: httpx.Client, simulator: httpx.Client, host: ImageHost, etag: Any
) -> None:
    url = host.put("/mug.png", photo(3), etag=etag)
    jobs = [relight(api, url) for _ in range(2)]
    assert [job["reused_from"] for job in jobs] == [None, None]
    assert paid_calls(simulator) == 2


def test_a_url_whose_bytes_changed_during_the_call_is_not_offered_for_reuse(
    api: httpx.Client, simulator: httpx.Client, host: ImageHost
) -> None:
    simulator.post("/admin/config", json={"latency": 1.0}).raise_for_status()
    url = host.put("/desk.png", photo(6))
    job_id = api.post("/v1/jobs", json={"prompt": "studio light", "subject_image": url}).json()[
        "id"
    ]
    deadline = time.monotonic() + 20
    while paid_calls(simulator) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    host.put("/desk.png", photo(7))  # replaced while Segmind works: which bytes did it read?
    assert wait_for(api, job_id, "succeeded", timeout=30)["status"] == "succeeded"
    simulator.post("/admin/config", json={"latency": 0.0}).raise_for_status()

    host.put("/desk.png", photo(6))  # the first bytes are back, with their first ETag
    again = relight(api, url)

    # Not offered: the ETag after the call was not the one before it.
    assert again["reused_from"] is None
    assert paid_calls(simulator) == 2


def test_a_random_seed_never_reuses(api: httpx.Client, simulator: httpx.Client) -> None:
    subject = put_object(f"reuse/{uuid.uuid4()}/a.png", photo(8))
    jobs = [relight(api, subject, seed=None) for _ in range(2)]
    assert [job["reused_from"] for job in jobs] == [None, None]
    assert paid_calls(simulator) == 2


def test_reuse_false_buys_a_new_picture(api: httpx.Client, simulator: httpx.Client) -> None:
    subject = put_object(f"reuse/{uuid.uuid4()}/a.png", photo(9))
    relight(api, subject)
    fresh = relight(api, subject, reuse=False)
    assert fresh["reused_from"] is None and fresh["reuse"] is False
    assert paid_calls(simulator) == 2
    # The new picture is the one later jobs copy.
    assert relight(api, subject)["reused_from"] == fresh["id"]
    assert paid_calls(simulator) == 2


def test_any_other_parameter_makes_another_picture(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    subject = put_object(f"reuse/{uuid.uuid4()}/a.png", photo(10))
    relight(api, subject)
    for change in ({"seed": 7}, {"prompt": "sunset"}, {"output_format": "png"}, {"cfg": 3}):
        assert relight(api, subject, **change)["reused_from"] is None, change
    assert paid_calls(simulator) == 5


def test_another_tenants_picture_is_never_reused(
    api: httpx.Client,
    simulator: httpx.Client,
    make_tenant: Any,
    services: Any,
) -> None:
    subject = put_object(f"reuse/{uuid.uuid4()}/a.png", photo(11))
    relight(api, subject)
    other: TenantKey = make_tenant()
    headers = {"Authorization": f"Bearer {other.key}"}
    with httpx.Client(base_url=services.api, headers=headers, timeout=30) as theirs:
        assert relight(theirs, subject)["reused_from"] is None
    assert paid_calls(simulator) == 2


def test_a_picture_whose_objects_are_gone_is_bought_again(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    subject = put_object(f"reuse/{uuid.uuid4()}/a.png", photo(12))
    first = relight(api, subject)
    client: Any = s3_client()
    bucket, key = first["outputs"][0]["s3_uri"][5:].split("/", 1)
    client.delete_object(Bucket=bucket, Key=key)  # a lifecycle rule took it

    second = relight(api, subject)
    assert second["status"] == "succeeded" and second["reused_from"] is None
    assert paid_calls(simulator) == 2


def test_a_batch_of_the_same_image_pays_once_and_counts_what_it_saved(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    subject = put_object(f"reuse/{uuid.uuid4()}/a.png", photo(13))
    items = [{"subject_image": subject, "external_id": f"sku-{n}"} for n in range(10)]
    body = {"defaults": {"prompt": "studio light"}, "items": items}
    batch_id = api.post("/v1/batches", json=body).json()["id"]

    batch = wait_batch(api, batch_id, "completed", timeout=90)

    assert paid_calls(simulator) == 1  # twins wait for the one making the picture
    assert batch["counts"]["succeeded"] == 10
    assert batch["reused"] == 9
    assert batch["credits_used"] == 0.037 and batch["credits_saved"] == 0.333
    rows = manifest(api, batch_id)
    assert sum(row["reused_from"] is not None for row in rows) == 9
    assert sum(row["credits_saved"] for row in rows) == pytest.approx(0.333)
    text = api.get(f"/v1/batches/{batch_id}/results", params={"format": "csv"}).text
    header = text.splitlines()[0].split(",")
    assert "credits_saved" in header and "reused_from" in header
    assert "0.037" in text and "0.037000" not in text


def test_a_batch_can_turn_reuse_off(api: httpx.Client, simulator: httpx.Client) -> None:
    subject = put_object(f"reuse/{uuid.uuid4()}/a.png", photo(14))
    relight(api, subject)
    items = [{"subject_image": subject} for _ in range(3)]
    body = {"defaults": {"prompt": "studio light"}, "items": items, "reuse": False}
    batch_id = api.post("/v1/batches", json=body).json()["id"]
    batch = wait_batch(api, batch_id, "completed", timeout=60)
    assert batch["reuse"] is False and batch["reused"] == 0
    assert paid_calls(simulator) == 4
