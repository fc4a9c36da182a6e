"""POST /v1/batches with dry_run: validated like a submit, estimated, nothing stored.

Subjects are served by the suite's image host on loopback (allowed by the suite's
RELIGHTQ_OUTBOUND_ALLOW), with a strong, weak or no ETag; the "earlier pictures" a dry
run predicts reuse from are succeeded jobs written straight into the database, and once
a job the worker really ran.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from relightq.batches.models import Batch, BatchReject
from relightq.batches.schemas import BatchEstimate
from relightq.broker import broker_backlog
from relightq.cli import app
from relightq.client import AsyncRelightqClient, RelightqClient
from relightq.credits.estimate import validators
from relightq.credits.reuse import locator, reuse_key, url_identity
from relightq.db import session_scope, utcnow
from relightq.idempotency.models import IdempotencyKey
from relightq.jobs.models import Job, JobStatus
from relightq.jobs.schemas import JobCreate
from relightq.segmind.params import RelightParams
from relightq.settings import get_settings
from relightq.storage import S3Storage
from tests.batches.helpers import csv_file
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import SHOP_BUCKET, shop_image, wait_for
from tests.support.image_server import EtagKind, ImageHost, image_host
from tests.support.images import product_png

PROMPT = "soft studio light"


@pytest.fixture
def host() -> Iterator[ImageHost]:
    with image_host() as served:
        yield served


@pytest.fixture
def cap(monkeypatch: pytest.MonkeyPatch) -> int:
    """The fleet's per-minute cap for this test (the suite's is 100000: every estimate
    would round to nothing)."""
    monkeypatch.setattr(get_settings(), "max_calls_per_minute", 6)
    return 6


# Helpers -------------------------------------------------------------------------------------


def params_of(**fields: Any) -> dict[str, Any]:
    """A batch item's parameters exactly as its job would store them."""
    body = {"prompt": PROMPT, "subject_image": "http://example.com/x.png", **fields}
    return JobCreate.model_validate(body).relight_params().model_dump()


def image(host: ImageHost, name: str, etag: EtagKind = "strong", data: bytes | None = None) -> str:
    """A subject on the image host (its bytes differ by name unless given); its URL."""
    return host.put(f"/{name}", data if data is not None else name.encode(), etag)


def etag_of(url: str) -> str:
    """The ETag the host answers now, as a worker saw it when it made a picture."""
    etag: str = httpx.head(url).headers["etag"]
    return etag


def made_before(
    tenant_id: uuid.UUID,
    subject: str,
    etag: str,
    params: dict[str, Any] | None = None,
    status: JobStatus = JobStatus.SUCCEEDED,
) -> None:
    """A job of the tenant that made a picture of ``subject`` (as it was at ``etag``)."""
    params = params or params_of()
    key = reuse_key(url_identity(subject, etag), RelightParams.model_validate(params))
    with session_scope() as session:
        session.add(
            Job(
                tenant_id=tenant_id,
                status=status,
                params=params,
                subject_image=subject,
                reuse=True,
                reuse_key=key,
                subject_locator=locator(subject, etag),
                credits_used=Decimal("0.037"),
                finished_at=utcnow(),
            )
        )


def stored(tenant: TenantKey) -> tuple[int, int, int, int]:
    """The tenant's jobs, batches, rejected rows and idempotency records."""
    with session_scope() as session:

        def count(query: Any) -> int:
            return int(session.scalar(query) or 0)

        return (
            count(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id)),
            count(select(func.count()).select_from(Batch).where(Batch.tenant_id == tenant.id)),
            count(
                select(func.count())
                .select_from(BatchReject)
                .join(Batch, Batch.id == BatchReject.batch_id)
                .where(Batch.tenant_id == tenant.id)
            ),
            count(
                select(func.count())
                .select_from(IdempotencyKey)
                .where(IdempotencyKey.tenant_id == tenant.id)
            ),
        )


def dry_run(api: httpx.Client, **body: Any) -> dict[str, Any]:
    """A JSON dry run with the suite's prompt as default; must answer 200."""
    body.setdefault("defaults", {"prompt": PROMPT})
    response = api.post("/v1/batches", json={**body, "dry_run": True})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# Counts, credits, time; nothing stored ------------------------------------------------------


def test_a_dry_run_answers_counts_credits_and_time_and_stores_nothing(
    api: httpx.Client, tenant: TenantKey, host: ImageHost, cap: int
) -> None:
    items = [{"subject_image": image(host, f"sku-{n}.png")} for n in range(9)]
    before, messages = stored(tenant), broker_backlog(get_settings())

    response = api.post(
        "/v1/batches",
        json={"defaults": {"prompt": PROMPT}, "items": items, "dry_run": True},
        headers={"Idempotency-Key": "nightly-dry"},
    )

    assert response.status_code == 200, response.text
    assert "location" not in response.headers
    estimate = response.json()
    assert estimate == {
        "dry_run": True,
        "items": 9,
        "rejected": 0,
        "would_reuse": 0,
        "calls": 9,
        "credits": 0.333,
        "credits_saved": 0,
        "max_calls_per_minute": cap,
        "estimated_seconds": 90.0,
        "note": estimate["note"],
    }
    assert "prediction" in estimate["note"]
    # Exact decimals: 9 x 0.037 is 0.333 in the JSON text, not 0.33299999999999996.
    assert '"credits":0.333,' in response.text
    assert stored(tenant) == before == (0, 0, 0, 0)
    assert broker_backlog(get_settings()) <= messages
    assert host.gets == 0  # HEADs only: a dry run reads no image
    # The key was not used: a real submit with it and another body is no reuse of it.
    real = api.post(
        "/v1/batches",
        json={"defaults": {"prompt": PROMPT}, "items": items[:1]},
        headers={"Idempotency-Key": "nightly-dry"},
    )
    assert real.status_code == 202, real.text


def test_credits_count_every_image_an_item_asks_for(
    api: httpx.Client, host: ImageHost, cap: int
) -> None:
    items = [
        {"subject_image": image(host, "a.png"), "number_of_images": 3},
        {"subject_image": image(host, "b.png")},
    ]

    estimate = dry_run(api, items=items)

    assert (estimate["calls"], estimate["credits"]) == (2, 0.148)  # 4 images x 0.037
    assert estimate["estimated_seconds"] == 20.0


def test_skip_invalid_counts_the_rows_it_would_skip_and_stores_none(
    api: httpx.Client, tenant: TenantKey, host: ImageHost
) -> None:
    items = [
        {"subject_image": image(host, "good.png")},
        {"subject_image": image(host, "bad.png"), "steps": 500},
        {"subject_image": "ftp://nope"},
    ]

    estimate = dry_run(api, items=items, skip_invalid=True)

    assert (estimate["items"], estimate["rejected"], estimate["calls"]) == (1, 2, 1)
    assert stored(tenant) == (0, 0, 0, 0)


# The same validation as a submit -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"defaults": {"prompt": PROMPT}, "items": [{"subject_image": "u", "steps": 500}]},
        {"defaults": {"prompt": PROMPT, "width": 7}, "items": [{"subject_image": "http://x/"}]},
        {"items": [{"subject_image": "http://x/"}], "output_prefix": "http://not-s3/"},
        {"defaults": {"prompt": PROMPT}, "items": []},
        {"defaults": {"prompt": PROMPT}, "source": f"s3://{SHOP_BUCKET}/", "items": []},
        {"defaults": {"prompt": PROMPT}, "items": [{"subject_image": "s3://relightq-test/x"}]},
        {"defaults": {"prompt": PROMPT}, "source": "s3://no-such-bucket/x/"},
    ],
    ids=[
        "row-field",
        "defaults",
        "output-prefix",
        "no-items",
        "two-sources",
        "foreign-s3",
        "unlistable-prefix",
    ],
)
def test_invalid_input_gets_the_same_422_as_a_real_submit(
    api: httpx.Client, tenant: TenantKey, body: dict[str, Any]
) -> None:
    real = api.post("/v1/batches", json=body)
    dry = api.post("/v1/batches", json={**body, "dry_run": True})

    assert real.status_code == dry.status_code == 422, (real.text, dry.text)
    assert dry.json()["error"] == real.json()["error"]
    assert dry.json()["error"]["fields"]
    assert stored(tenant) == (0, 0, 0, 0)


def test_a_dry_run_that_is_no_boolean_is_a_422_naming_it(api: httpx.Client) -> None:
    body = {"defaults": {"prompt": PROMPT}, "items": [{"subject_image": "http://x/"}]}

    response = api.post("/v1/batches", json={**body, "dry_run": "perhaps"})

    assert response.status_code == 422, response.text
    assert [f["field"] for f in response.json()["error"]["fields"]] == ["dry_run"]


def test_too_many_items_is_the_same_413(
    api: httpx.Client, host: ImageHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "max_batch_items", 2)
    body = {
        "defaults": {"prompt": PROMPT},
        "items": [{"subject_image": image(host, f"{n}.png")} for n in range(3)],
    }

    real = api.post("/v1/batches", json=body)
    dry = api.post("/v1/batches", json={**body, "dry_run": True})

    assert real.status_code == dry.status_code == 413
    assert dry.json()["error"] == real.json()["error"]


# Uploads and prefixes -----------------------------------------------------------------------


def test_a_csv_upload_dry_run_is_a_form_field(
    api: httpx.Client, tenant: TenantKey, host: ImageHost
) -> None:
    rows = [
        {"subject_image": image(host, "shoe-1.png"), "external_id": "SHOE-1"},
        {"subject_image": image(host, "shoe-2.png"), "external_id": "SHOE-2", "steps": "500"},
        {"subject_image": image(host, "shoe-3.png"), "external_id": "SHOE-3"},
    ]
    upload = {"file": ("catalog.csv", csv_file(rows), "text/csv")}
    defaults = {"defaults": f'{{"prompt": "{PROMPT}"}}'}

    response = api.post(
        "/v1/batches",
        files=upload,
        data={**defaults, "skip_invalid": "true", "dry_run": "true"},
        headers={"Idempotency-Key": "csv-dry"},
    )

    assert response.status_code == 200, response.text
    estimate = response.json()
    assert (estimate["items"], estimate["rejected"], estimate["credits"]) == (2, 1, 0.074)
    assert stored(tenant) == (0, 0, 0, 0)

    # Without skip_invalid, the same 422 a real upload gets, naming the row's field.
    real = api.post("/v1/batches", files=upload, data=defaults)
    dry = api.post("/v1/batches", files=upload, data={**defaults, "dry_run": "true"})
    assert real.status_code == dry.status_code == 422
    assert dry.json()["error"] == real.json()["error"]
    assert "rows[2].steps" in [f["field"] for f in dry.json()["error"]["fields"]]

    wrong = api.post("/v1/batches", files=upload, data={**defaults, "dry_run": "perhaps"})
    assert wrong.status_code == 422
    assert [f["field"] for f in wrong.json()["error"]["fields"]] == ["dry_run"]
    assert stored(tenant) == (0, 0, 0, 0)


def test_an_s3_prefix_dry_run_lists_and_predicts_from_s3_etags(
    api: httpx.Client, tenant: TenantKey
) -> None:
    folder = f"dry-{uuid.uuid4().hex[:8]}"
    made_uri, _ = shop_image(f"{folder}/shoes/a.png")
    shop_image(f"{folder}/shoes/b.png")
    shop_image(f"{folder}/deep/c.png")
    made_before(tenant.id, made_uri, S3Storage(get_settings()).etag(made_uri))

    estimate = dry_run(api, source=f"s3://{SHOP_BUCKET}/{folder}/")

    assert (estimate["items"], estimate["would_reuse"], estimate["calls"]) == (3, 1, 2)
    assert (estimate["credits"], estimate["credits_saved"]) == (0.074, 0.037)
    assert stored(tenant) == (1, 0, 0, 0)  # the earlier job alone


# Predicting reuse ----------------------------------------------------------------------------


def test_reuse_is_predicted_from_earlier_pictures_with_the_same_validator_and_params(
    api: httpx.Client,
    tenant: TenantKey,
    make_tenant: Any,
    host: ImageHost,
    cap: int,
) -> None:
    strong = image(host, "strong.png")
    made_before(tenant.id, strong, etag_of(strong))
    weak = image(host, "weak.png", "weak")
    made_before(tenant.id, weak, etag_of(weak))  # no worker records one; paid anyway
    untagged = image(host, "untagged.png")
    made_before(tenant.id, untagged, etag_of(untagged))
    image(host, "untagged.png", "none")  # the host sends no ETag any more
    changed = image(host, "changed.png")
    made_before(tenant.id, changed, etag_of(changed))
    image(host, "changed.png", data=b"another picture under the same URL")
    other_light = image(host, "other-light.png")
    made_before(tenant.id, other_light, etag_of(other_light), params_of(light_source="Left Light"))
    failed = image(host, "failed.png")
    made_before(tenant.id, failed, etag_of(failed), status=JobStatus.FAILED)
    others = image(host, "someone-elses.png")
    made_before(make_tenant().id, others, etag_of(others))
    items = [{"subject_image": url} for url in (strong, weak, untagged, changed, failed, others)]
    items += [
        {"subject_image": other_light},  # made in another light: another picture
        {"subject_image": other_light, "light_source": "Left Light"},
    ]
    heads = host.heads

    estimate = dry_run(api, items=items)

    # strong.png, and other-light.png in the light it was made in.
    assert (estimate["items"], estimate["would_reuse"], estimate["calls"]) == (8, 2, 6)
    assert (estimate["credits"], estimate["credits_saved"]) == (0.222, 0.074)
    assert estimate["estimated_seconds"] == 60.0
    assert host.heads - heads == 7  # one HEAD a subject


@pytest.mark.usefixtures("celery_worker")
def test_a_picture_the_worker_made_is_predicted_reused(
    api: httpx.Client, host: ImageHost, simulator: httpx.Client
) -> None:
    photo = image(host, "made-by-the-worker.png", data=product_png())
    response = api.post("/v1/jobs", json={"prompt": PROMPT, "subject_image": photo})
    assert response.status_code == 202, response.text
    assert wait_for(api, response.json()["id"], "succeeded", "failed")["status"] == "succeeded"

    estimate = dry_run(api, items=[{"subject_image": photo}, {"subject_image": photo, "seed": 7}])

    assert (estimate["would_reuse"], estimate["calls"], estimate["credits_saved"]) == (1, 1, 0.037)


def test_the_same_picture_twice_in_one_dry_run_is_paid_once(
    api: httpx.Client, host: ImageHost
) -> None:
    photo = image(host, "twin.png")
    untagged = image(host, "twin-untagged.png", "none")
    items = [
        {"subject_image": photo},
        {"subject_image": photo, "external_id": "again"},
        {"subject_image": photo, "light_source": "Top Light"},  # another picture
        {"subject_image": photo},
        {"subject_image": untagged},
        {"subject_image": untagged},  # no identity: each one paid
    ]

    estimate = dry_run(api, items=items)

    assert (estimate["would_reuse"], estimate["calls"]) == (2, 4)
    assert (estimate["credits"], estimate["credits_saved"]) == (0.148, 0.074)
    assert host.heads == 2  # one HEAD a subject


def test_reuse_off_or_a_random_seed_predicts_no_reuse(
    api: httpx.Client, tenant: TenantKey, host: ImageHost
) -> None:
    photo = image(host, "made.png")
    made_before(tenant.id, photo, etag_of(photo))
    made_before(tenant.id, photo, etag_of(photo), params_of(seed=None))
    heads = host.heads

    assert dry_run(api, items=[{"subject_image": photo}])["would_reuse"] == 1
    off = dry_run(api, items=[{"subject_image": photo}], reuse=False)
    item_off = dry_run(api, items=[{"subject_image": photo, "reuse": False}])
    random = dry_run(api, items=[{"subject_image": photo, "seed": None}] * 2)

    assert (off["would_reuse"], off["calls"], off["credits"]) == (0, 1, 0.037)
    assert (item_off["would_reuse"], item_off["calls"]) == (0, 1)
    assert (random["would_reuse"], random["calls"]) == (0, 2)
    assert host.heads - heads == 1  # only the first asked: the others would not look


def test_a_large_dry_run_heads_its_subjects_concurrently(
    api: httpx.Client, host: ImageHost
) -> None:
    items = [{"subject_image": image(host, f"bulk-{n}.png")} for n in range(600)]

    started = time.monotonic()
    estimate = dry_run(api, items=items)

    assert (estimate["items"], estimate["calls"]) == (600, 600)
    assert estimate["credits"] == float(Decimal("0.037") * 600)
    assert host.heads == 600
    assert time.monotonic() - started < 30


def test_subjects_not_checked_by_the_deadline_are_predicted_paid(host: ImageHost) -> None:
    photo = image(host, "fast.png")
    # A server that accepts the connection and never answers.
    silent = socket.create_server(("127.0.0.1", 0))
    slow = f"http://127.0.0.1:{silent.getsockname()[1]}/slow.png"
    try:
        started = time.monotonic()
        found = validators([photo, slow, photo], S3Storage(get_settings()), deadline=0.5)
        waited = time.monotonic() - started
    finally:
        silent.close()

    assert found == {photo: etag_of(photo)}  # slow.png: no validator, so paid
    assert waited < 3  # its HEAD was not waited for


# Client and CLI ------------------------------------------------------------------------------


def test_the_clients_dry_run_returns_an_estimate(
    services: Services, tenant: TenantKey, host: ImageHost, tmp_path: Path
) -> None:
    photo = image(host, "client.png")
    made_before(tenant.id, photo, etag_of(photo))
    catalog = tmp_path / "catalog.jsonl"
    other = image(host, "client-other.png")
    catalog.write_text(f'{{"subject_image": "{photo}"}}\n{{"subject_image": "{other}"}}\n')

    with RelightqClient(services.api, tenant.key) as client:
        estimate = client.create_batch(
            items=[{"subject_image": photo}], defaults={"prompt": PROMPT}, dry_run=True
        )
        uploaded = client.upload_batch(catalog, defaults={"prompt": PROMPT}, dry_run=True)

    async def from_async() -> BatchEstimate:
        async with AsyncRelightqClient(services.api, tenant.key) as client:
            return await client.create_batch(
                items=[{"subject_image": photo}], defaults={"prompt": PROMPT}, dry_run=True
            )

    assert isinstance(estimate, BatchEstimate) and estimate.would_reuse == 1
    assert estimate.credits == 0 and estimate.credits_saved == Decimal("0.037")
    assert (uploaded.items, uploaded.would_reuse, uploaded.calls) == (2, 1, 1)
    assert asyncio.run(from_async()) == estimate
    assert stored(tenant) == (1, 0, 0, 0)


def test_cli_submit_dry_run_prints_the_estimate_and_submits_nothing(
    services: Services, tenant: TenantKey, host: ImageHost, tmp_path: Path, cap: int
) -> None:
    rows = [
        {"subject_image": image(host, f"cli-{n}.png"), "external_id": f"S-{n}"} for n in range(9)
    ]
    catalog = tmp_path / "catalog.csv"
    catalog.write_bytes(csv_file(rows))
    env = {"RELIGHTQ_API_URL": services.api, "RELIGHTQ_API_KEY": tenant.key}

    result = CliRunner().invoke(
        app, ["batch", "submit", str(catalog), "--prompt", PROMPT, "--dry-run"], env=env
    )

    assert result.exit_code == 0, result.output
    assert "Dry run" in result.output and "nothing was submitted" in result.output
    assert "0.333 credits" in result.output
    assert "1m30s" in result.output and "6 calls/min" in result.output
    assert "prediction" in result.output
    assert stored(tenant) == (0, 0, 0, 0)

    bad = CliRunner().invoke(
        app, ["batch", "submit", str(catalog), "--set", "steps=500", "--dry-run"], env=env
    )
    assert bad.exit_code == 1, bad.output
    assert "steps" in bad.output
    assert stored(tenant) == (0, 0, 0, 0)
