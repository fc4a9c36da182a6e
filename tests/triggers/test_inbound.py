"""POST /v1/triggers/{name}: signed events from a shop become jobs, once per event."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from relightq.db import session_scope
from relightq.jobs.models import Job
from relightq.triggers.models import Trigger, TriggerEvent
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image, wait_for

pytestmark = pytest.mark.usefixtures("celery_worker")

SHOP_SECRET = "shpss_" + "0123456789abcdef" * 2


def shopify_trigger(api: httpx.Client, **overrides: Any) -> str:
    name = f"shop-{uuid.uuid4().hex[:8]}"
    body = {
        "name": name,
        "scheme": "hmac-sha256",
        "secret": SHOP_SECRET,
        "mapping": {
            "images": "images[].src",
            "external_id": "to_string(id)",
            "fields": {"metadata": "{title: title, vendor: vendor}"},
        },
        "job": {"prompt": "clean studio light", "light_source": "Top Light"},
        **overrides,
    }
    response = api.post("/v1/triggers", json=body)
    assert response.status_code == 201, response.text
    return name


def product_created(*image_urls: str) -> bytes:
    """What Shopify posts for products/create (trimmed)."""
    return json.dumps(
        {
            "id": 788032119674292922,
            "title": "Example T-Shirt",
            "vendor": "Acme",
            "images": [{"id": n, "src": url} for n, url in enumerate(image_urls)],
        }
    ).encode()


def shopify_headers(body: bytes, event_id: str, secret: str = SHOP_SECRET, **extra: str) -> Any:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "X-Shopify-Topic": "products/create",
        "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
        "X-Shopify-Event-Id": event_id,
        "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(),
        **extra,
    }


def jobs_of(tenant: TenantKey) -> int:
    with session_scope() as session:
        return int(
            session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id))
            or 0
        )


def events_of(name: str) -> int:
    with session_scope() as session:
        query = (
            select(func.count())
            .select_from(TriggerEvent)
            .join(Trigger, Trigger.id == TriggerEvent.trigger_id)
            .where(Trigger.name == name)
        )
        return int(session.scalar(query) or 0)


def test_a_shopify_product_created_event_posted_twice_makes_its_jobs_once(
    services: Services, api: httpx.Client, tenant: TenantKey, simulator: httpx.Client
) -> None:
    name = shopify_trigger(api)
    urls = [shop_image(f"shopify/{n}.png")[1] for n in range(2)]
    body = product_created(*urls)
    headers = shopify_headers(body, "evt-1")

    with httpx.Client(base_url=services.api) as shopify:  # no API key: the HMAC vouches
        first = shopify.post(f"/v1/triggers/{name}", content=body, headers=headers)
        again = shopify.post(f"/v1/triggers/{name}", content=body, headers=headers)

    assert first.status_code == 202, first.text
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["jobs"] == first.json()["jobs"] and len(first.json()["jobs"]) == 2
    assert jobs_of(tenant) == 2
    for index, job_id in enumerate(first.json()["jobs"]):
        job = wait_for(api, job_id, "succeeded", "failed")
        assert job["status"] == "succeeded"
        assert job["external_id"] == "788032119674292922"
        assert job["params"]["prompt"] == "clean studio light"
        assert job["params"]["light_source"] == "Top Light"
        assert job["metadata"]["title"] == "Example T-Shirt"
        assert job["metadata"]["trigger"] == {
            "name": name,
            "event_id": "evt-1",
            "image_index": index,
        }


def test_concurrent_deliveries_of_one_event_make_its_jobs_once(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api)
    body = product_created("https://example.com/a.png")
    headers = shopify_headers(body, "evt-race")
    with httpx.Client(base_url=services.api) as shopify, ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda _: shopify.post(f"/v1/triggers/{name}", content=body, headers=headers),
                range(6),
            )
        )
    assert sorted(a.status_code for a in answers) == [200] * 5 + [202]
    assert len({tuple(a.json()["jobs"]) for a in answers}) == 1
    assert jobs_of(tenant) == 1


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h: {**h, "X-Shopify-Hmac-Sha256": base64.b64encode(b"x" * 32).decode()},
        lambda h: {k: v for k, v in h.items() if k != "X-Shopify-Hmac-Sha256"},
        lambda h: {**h, "X-Shopify-Hmac-Sha256": "not base64!"},
        lambda h: {
            **h,
            "X-Shopify-Triggered-At": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        },
        lambda h: {k: v for k, v in h.items() if k != "X-Shopify-Triggered-At"},
    ],
    ids=["wrong", "missing", "garbage", "stale", "no-timestamp"],
)
def test_a_bad_or_missing_signature_is_a_401_and_stores_nothing(
    services: Services,
    api: httpx.Client,
    tenant: TenantKey,
    tamper: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    name = shopify_trigger(api)
    body = product_created("https://example.com/a.png")
    before = events_of(name)

    with httpx.Client(base_url=services.api) as attacker:
        response = attacker.post(
            f"/v1/triggers/{name}", content=body, headers=tamper(shopify_headers(body, "e"))
        )

    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "bad_signature"
    assert jobs_of(tenant) == 0 and events_of(name) == before


def test_a_signature_for_another_body_is_refused(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api)
    signed = shopify_headers(product_created("https://example.com/a.png"), "e1")
    with httpx.Client(base_url=services.api) as attacker:
        response = attacker.post(
            f"/v1/triggers/{name}",
            content=product_created("https://evil.example.com/b.png"),
            headers=signed,
        )
    assert response.status_code == 401 and jobs_of(tenant) == 0


def test_a_standard_webhooks_trigger_is_verified_by_the_reference_scheme(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = f"sw-{uuid.uuid4().hex[:8]}"
    created = api.post(
        "/v1/triggers",
        json={
            "name": name,
            "scheme": "standard-webhooks",
            "mapping": {"images": "data.image_url", "external_id": "data.sku"},
            "job": {"prompt": "soft light"},
        },
    ).json()
    secret = created["secret"]
    assert secret.startswith("whsec_")
    body = json.dumps({"data": {"image_url": "https://example.com/a.png", "sku": "S-1"}})
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(datetime.now(UTC).timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_1", datetime.now(UTC), body),
        "content-type": "application/json",
    }
    with httpx.Client(base_url=services.api) as sender:
        accepted = sender.post(f"/v1/triggers/{name}", content=body, headers=headers)
        forged = sender.post(
            f"/v1/triggers/{name}", content=body.replace("S-1", "S-2"), headers=headers
        )
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["event_id"] == "msg_1"
    assert forged.status_code == 401
    [job_id] = accepted.json()["jobs"]
    assert api.get(f"/v1/jobs/{job_id}").json()["external_id"] == "S-1"
    assert jobs_of(tenant) == 1


def test_an_event_that_maps_to_a_bad_job_is_a_422_naming_the_image_and_field(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api)
    body = product_created("https://example.com/a.png", "ftp://example.com/b.png")
    with httpx.Client(base_url=services.api) as shopify:
        response = shopify.post(
            f"/v1/triggers/{name}", content=body, headers=shopify_headers(body, "e-bad")
        )
    assert response.status_code == 422
    assert [f["field"] for f in response.json()["error"]["fields"]] == ["images[1].subject_image"]
    assert jobs_of(tenant) == 0


def test_triggers_are_managed_per_tenant_with_unique_names(
    api: httpx.Client, make_tenant: Callable[[], TenantKey], services: Services
) -> None:
    name = shopify_trigger(api)
    assert api.get("/v1/triggers").json()[0]["secret"] is None  # shown only at creation
    other = make_tenant()
    with httpx.Client(base_url=services.api, headers={"x-api-key": other.key}) as theirs:
        assert theirs.get(f"/v1/triggers/{name}").status_code == 404
        taken = theirs.post(
            "/v1/triggers",
            json={"name": name, "scheme": "standard-webhooks", "mapping": {"images": "x"}},
        )
        assert taken.status_code == 409
    bad = api.post(
        "/v1/triggers",
        json={"name": "x-1", "scheme": "hmac-sha256", "mapping": {"images": "[["}},
    )
    assert bad.status_code == 422
    assert {f["field"] for f in bad.json()["error"]["fields"]} >= {"mapping.images"}
    assert api.delete(f"/v1/triggers/{name}").status_code == 204
    with httpx.Client(base_url=services.api) as shopify:
        assert shopify.post(f"/v1/triggers/{name}", content=b"{}").status_code == 404


def test_a_trigger_that_could_never_make_a_job_is_refused_when_it_is_created(
    api: httpx.Client,
) -> None:
    base = {"name": f"shop-{uuid.uuid4().hex[:8]}", "scheme": "hmac-sha256", "secret": SHOP_SECRET}
    unknown_field = api.post(
        "/v1/triggers",
        json={**base, "mapping": {"images": "src", "fields": {"bogus": "title"}}, "job": {}},
    )
    no_prompt = api.post(
        "/v1/triggers", json={**base, "mapping": {"images": "src"}, "job": {"width": 512}}
    )
    prompt_mapped = api.post(
        "/v1/triggers",
        json={**base, "mapping": {"images": "src", "fields": {"prompt": "title"}}, "job": {}},
    )

    assert unknown_field.status_code == 422
    assert [f["field"] for f in unknown_field.json()["error"]["fields"]] == ["mapping.fields"]
    assert "bogus" in unknown_field.json()["error"]["fields"][0]["message"]
    assert no_prompt.status_code == 422
    assert [f["field"] for f in no_prompt.json()["error"]["fields"]] == ["job"]
    assert prompt_mapped.status_code == 201, prompt_mapped.text


def test_an_event_whose_images_are_not_urls_is_a_422_and_not_marked_done(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api, mapping={"images": "images[].id"})  # ids, not URLs
    body = product_created("https://example.com/a.png")
    with httpx.Client(base_url=services.api) as shopify:
        response = shopify.post(
            f"/v1/triggers/{name}", content=body, headers=shopify_headers(body, "e-ids")
        )
    assert response.status_code == 422
    assert [f["field"] for f in response.json()["error"]["fields"]] == ["images[0]"]
    assert events_of(name) == 0 and jobs_of(tenant) == 0


def test_nul_characters_in_a_signed_event_are_dropped_not_a_500(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api)
    _, url = shop_image("triggers/nul.png")
    event = json.loads(product_created(url))
    event["title"] = "Mug\u0000 deluxe"
    body = json.dumps(event).encode()
    with httpx.Client(base_url=services.api) as shopify:
        response = shopify.post(
            f"/v1/triggers/{name}", content=body, headers=shopify_headers(body, "e-nul")
        )
    assert response.status_code == 202, response.text
    job = api.get(f"/v1/jobs/{response.json()['jobs'][0]}").json()
    assert job["metadata"]["title"] == "Mug deluxe"


def test_event_ids_longer_than_the_column_stay_distinct(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api)
    _, url = shop_image("triggers/long-id.png")
    body = product_created(url)
    long = "e" * 300
    with httpx.Client(base_url=services.api) as shopify:
        first = shopify.post(
            f"/v1/triggers/{name}", content=body, headers=shopify_headers(body, long + "1")
        )
        second = shopify.post(
            f"/v1/triggers/{name}", content=body, headers=shopify_headers(body, long + "2")
        )
    assert (first.status_code, second.status_code) == (202, 202)
    assert not second.json()["duplicate"]
    assert events_of(name) == 2
