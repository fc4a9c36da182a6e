"""POST /v1/triggers/{name}: signed events from a shop become jobs, once per event."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from standardwebhooks.webhooks import Webhook

from relightq.db import get_engine, session_scope
from relightq.jobs.models import Job
from relightq.settings import get_settings
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


def keys_of(name: str) -> list[str]:
    """Every key the trigger's events are known by (event ids and body digests)."""
    with session_scope() as session:
        query = (
            select(TriggerEvent.event_id)
            .join(Trigger, Trigger.id == TriggerEvent.trigger_id)
            .where(Trigger.name == name)
        )
        return sorted(session.scalars(query))


def events_of(name: str) -> int:
    """How many events the trigger made jobs for (one event id each)."""
    return len([key for key in keys_of(name) if not key.startswith("body:")])


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


@pytest.mark.parametrize("reuse", [True, False])
def test_a_product_updated_with_the_same_photo_copies_its_picture_unless_the_trigger_says_not(
    services: Services, api: httpx.Client, simulator: httpx.Client, reuse: bool
) -> None:
    name = shopify_trigger(
        api, job={"prompt": "clean studio light", "light_source": "Top Light", "reuse": reuse}
    )
    [url] = [shop_image(f"shopify/{uuid.uuid4().hex}.png")[1]]
    jobs = []
    with httpx.Client(base_url=services.api) as shopify:
        for event_id in ("evt-created", "evt-updated"):  # two events, the same photo
            body = json.dumps({"id": 7, "title": event_id, "images": [{"src": url}]}).encode()
            answer = shopify.post(
                f"/v1/triggers/{name}", content=body, headers=shopify_headers(body, event_id)
            )
            [job_id] = answer.json()["jobs"]
            jobs.append(wait_for(api, job_id, "succeeded", "failed"))

    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"]
    assert jobs[1]["reuse"] is reuse
    assert (jobs[1]["reused_from"] == jobs[0]["id"]) is reuse
    assert simulator.get("/admin/stats").json()["calls"] == (1 if reuse else 2)


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
            "X-Shopify-Triggered-At": (datetime.now(UTC) - timedelta(days=2)).isoformat(),
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


def test_a_signed_event_nested_too_deep_is_a_422_naming_the_body(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api)
    for body in (b"[" * 5000 + b"]" * 5000, b'{"images": ' + b"[" * 100 + b"]" * 100 + b"}"):
        with httpx.Client(base_url=services.api) as shopify:
            response = shopify.post(
                f"/v1/triggers/{name}", content=body, headers=shopify_headers(body, "e-deep")
            )
        assert response.status_code == 422, response.text
        [problem] = response.json()["error"]["fields"]
        assert problem["field"] == "body" and "nests too deeply" in problem["message"]
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


def test_lone_surrogates_in_a_signed_event_become_u_fffd_not_a_500(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api)
    _, url = shop_image("triggers/surrogate.png")
    event = json.loads(product_created(url))
    event["title"] = "Mug\udfff deluxe"  # json.dumps escapes it, as a sender's JSON would
    event["vendor\ud800"] = "kept apart"
    body = json.dumps(event).encode()
    with httpx.Client(base_url=services.api) as shopify:
        response = shopify.post(
            f"/v1/triggers/{name}", content=body, headers=shopify_headers(body, "e-surrogate")
        )
    assert response.status_code == 202, response.text
    job = api.get(f"/v1/jobs/{response.json()['jobs'][0]}").json()
    assert job["metadata"]["title"] == "Mug\ufffd deluxe"


def test_event_ids_longer_than_the_column_stay_distinct(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api)
    _, url = shop_image("triggers/long-id.png")
    # Two bodies: the same body is one event whatever ids it comes with.
    body, other = product_created(url), product_created(url, url)
    long = "e" * 300
    with httpx.Client(base_url=services.api) as shopify:
        first = shopify.post(
            f"/v1/triggers/{name}", content=body, headers=shopify_headers(body, long + "1")
        )
        second = shopify.post(
            f"/v1/triggers/{name}", content=other, headers=shopify_headers(other, long + "2")
        )
    assert (first.status_code, second.status_code) == (202, 202)
    assert not second.json()["duplicate"]
    assert events_of(name) == 2


def post_event(services: Services, name: str, body: bytes, headers: Any) -> httpx.Response:
    with httpx.Client(base_url=services.api) as sender:  # no API key: the signature vouches
        return sender.post(f"/v1/triggers/{name}", content=body, headers=headers)


def test_a_signed_body_resent_with_another_event_id_or_none_makes_its_jobs_once(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    # The HMAC covers only the body: the event id header is the sender's word, not signed.
    name = shopify_trigger(api)
    body = product_created("https://example.com/a.png")
    no_id = {k: v for k, v in shopify_headers(body, "-").items() if k != "X-Shopify-Event-Id"}

    first = post_event(services, name, body, shopify_headers(body, "evt-1"))
    renamed = post_event(services, name, body, shopify_headers(body, "evt-2"))
    anonymous = post_event(services, name, body, no_id)

    assert [r.status_code for r in (first, renamed, anonymous)] == [202, 200, 200], first.text
    assert renamed.json()["duplicate"] and anonymous.json()["duplicate"]
    assert renamed.json()["jobs"] == anonymous.json()["jobs"] == first.json()["jobs"]
    assert jobs_of(tenant) == 1
    assert events_of(name) == 1  # the repeats stored no ids of their own


def test_concurrent_resends_of_one_body_under_new_ids_make_one_set_of_jobs_and_store_nothing(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api)
    body = product_created("https://example.com/a.png")
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda n: post_event(services, name, body, shopify_headers(body, f"evt-{n}")),
                range(6),
            )
        )

    assert sorted(a.status_code for a in answers) == [200] * 5 + [202]
    assert len({tuple(a.json()["jobs"]) for a in answers}) == 1
    assert jobs_of(tenant) == 1
    [first] = [a for a in answers if a.status_code == 202]
    digest = hashlib.sha256(body).hexdigest()
    assert keys_of(name) == sorted([f"body:sha256:{digest}", first.json()["event_id"]])


def test_an_event_id_that_looks_like_a_body_digest_cannot_claim_a_later_body(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api)
    earlier = product_created("https://example.com/a.png")
    later = product_created("https://example.com/b.png")
    squatter = f"body:sha256:{hashlib.sha256(later).hexdigest()}"

    post_event(services, name, earlier, shopify_headers(earlier, squatter))
    answer = post_event(services, name, later, shopify_headers(later, "evt-later"))

    assert answer.status_code == 202, answer.text
    assert jobs_of(tenant) == 2


def test_a_shopify_retry_hours_later_with_its_original_triggered_at_is_accepted(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    # Shopify retries 8 times over 4 hours, each with the X-Shopify-Triggered-At of the
    # first try; the hmac-sha256 default tolerance covers that window.
    name = shopify_trigger(api)
    body = product_created("https://example.com/a.png")
    triggered_at = (datetime.now(UTC) - timedelta(hours=4, minutes=30)).isoformat()

    answer = post_event(
        services,
        name,
        body,
        shopify_headers(body, "evt-late", **{"X-Shopify-Triggered-At": triggered_at}),
    )

    assert answer.status_code == 202, answer.text
    assert api.get(f"/v1/triggers/{name}").json()["tolerance_seconds"] == 6 * 3600


def standard_trigger(api: httpx.Client, **overrides: Any) -> tuple[str, str]:
    """A standard-webhooks trigger's name and secret."""
    name = f"sw-{uuid.uuid4().hex[:8]}"
    created = api.post(
        "/v1/triggers",
        json={
            "name": name,
            "scheme": "standard-webhooks",
            "mapping": {"images": "data.image_url"},
            "job": {"prompt": "soft light"},
            **overrides,
        },
    )
    assert created.status_code == 201, created.text
    return name, str(created.json()["secret"])


def standard_headers(secret: str, body: str, sent_at: datetime, msg_id: str = "msg_1") -> Any:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, sent_at, body),
        "content-type": "application/json",
    }


@pytest.mark.parametrize("minutes", [-20, 20], ids=["20-min-old", "20-min-ahead"])
def test_a_standard_webhooks_trigger_honours_its_own_tolerance_both_ways(
    services: Services, api: httpx.Client, tenant: TenantKey, minutes: int
) -> None:
    patient, patient_secret = standard_trigger(api, tolerance_seconds=3600)
    strict, strict_secret = standard_trigger(api)  # the default: 300 s, the spec's 5 minutes
    body = json.dumps({"data": {"image_url": "https://example.com/a.png"}})
    sent_at = datetime.now(UTC) + timedelta(minutes=minutes)

    accepted = post_event(
        services, patient, body.encode(), standard_headers(patient_secret, body, sent_at)
    )
    refused = post_event(
        services, strict, body.encode(), standard_headers(strict_secret, body, sent_at)
    )

    assert accepted.status_code == 202, accepted.text
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "bad_signature"
    assert "300 s" in refused.json()["error"]["message"]
    assert api.get(f"/v1/triggers/{strict}").json()["tolerance_seconds"] == 300
    assert jobs_of(tenant) == 1


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h: {**h, "webhook-signature": "v1"},
        lambda h: {**h, "webhook-signature": "v1,not base64!"},
        lambda h: {**h, "webhook-signature": "v2," + h["webhook-signature"][3:]},
        lambda h: {**h, "webhook-signature": ",,, ,"},
        lambda h: {**h, "webhook-timestamp": "yesterday"},
        lambda h: {**h, "webhook-timestamp": "nan"},
        lambda h: {**h, "webhook-timestamp": "1e400"},
        lambda h: {**h, "webhook-timestamp": "-99999999999999999999"},
        lambda h: {k: v for k, v in h.items() if k != "webhook-id"},
        lambda h: {**h, "webhook-id": ""},
    ],
    ids=[
        "no-comma",
        "garbage",
        "other-version",
        "commas",
        "word-time",
        "nan",
        "inf",
        "huge-past",
        "no-id",
        "empty-id",
    ],
)
def test_malformed_standard_webhooks_headers_are_a_401_never_a_500(
    services: Services,
    api: httpx.Client,
    tenant: TenantKey,
    tamper: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    name, secret = standard_trigger(api)
    body = json.dumps({"data": {"image_url": "https://example.com/a.png"}})

    answer = post_event(
        services, name, body.encode(), tamper(standard_headers(secret, body, datetime.now(UTC)))
    )

    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "bad_signature"
    assert jobs_of(tenant) == 0 and events_of(name) == 0


def test_a_standard_webhooks_body_that_is_not_utf8_is_a_401(
    services: Services, api: httpx.Client
) -> None:
    name, secret = standard_trigger(api)
    headers = standard_headers(secret, "{}", datetime.now(UTC))
    answer = post_event(services, name, b"\xff\xfe{}", headers)
    assert answer.status_code == 401, answer.text


def test_one_of_several_signatures_matching_is_enough(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    # A sender rotating its secret signs with the old and the new one.
    name, secret = standard_trigger(api)
    body = json.dumps({"data": {"image_url": "https://example.com/a.png"}})
    headers = standard_headers(secret, body, datetime.now(UTC))
    wrong = base64.b64encode(b"x" * 32).decode()
    headers["webhook-signature"] = f"v1,{wrong} v1a,abc {headers['webhook-signature']}"

    assert post_event(services, name, body.encode(), headers).status_code == 202


def inserts_waiting_on_a_lock(table: str) -> int:
    """How many sessions' INSERT INTO ``table`` are blocked on a lock right now."""
    with session_scope() as session:
        return int(
            session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE :insert"
                ),
                {"insert": f"INSERT INTO {table} %"},
            )
            or 0
        )


def test_triggers_created_with_one_name_at_once_give_one_201_and_409s(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    spec = {
        "name": name,
        "scheme": "standard-webhooks",
        "mapping": {"images": "data.image_url"},
        "job": {"prompt": "soft light"},
    }
    creations = 8
    # Holding the tenant row makes every creation's INSERT wait (its foreign key check,
    # or the first one's uncommitted name), so all of them are past any look-before-insert
    # before the first commits: the race at its widest, every time.
    with get_engine().connect() as holder, ThreadPoolExecutor(creations) as pool:
        holder.execute(text("SELECT id FROM tenants WHERE id = :id FOR UPDATE"), {"id": tenant.id})
        pending = [pool.submit(api.post, "/v1/triggers", json=spec) for _ in range(creations)]
        deadline = time.monotonic() + 10
        while inserts_waiting_on_a_lock("triggers") < creations:
            assert time.monotonic() < deadline, "the creations never all reached the INSERT"
            time.sleep(0.02)
        holder.rollback()
        answers = [p.result() for p in pending]

    assert sorted(a.status_code for a in answers) == [201] + [409] * 7, [a.text for a in answers]
    for taken in (a for a in answers if a.status_code == 409):
        assert taken.json()["error"]["code"] == "name_taken"
        assert taken.json()["error"]["fields"][0]["field"] == "name"
    assert [t["name"] for t in api.get("/v1/triggers").json()] == [name]


def test_an_s3_image_of_another_tenant_is_a_422_naming_the_image(
    services: Services, api: httpx.Client, tenant: TenantKey
) -> None:
    name = shopify_trigger(api)
    bucket = get_settings().s3_bucket
    theirs = f"s3://{bucket}/inputs/{uuid.uuid4()}/{uuid.uuid4()}/subject.png"
    body = product_created("https://example.com/a.png", theirs)

    answer = post_event(services, name, body, shopify_headers(body, "e-theirs"))

    assert answer.status_code == 422, answer.text
    [problem] = answer.json()["error"]["fields"]
    assert problem["field"] == "images[1].subject_image"
    assert "outside your own" in problem["message"]
    assert jobs_of(tenant) == 0 and events_of(name) == 0


@pytest.mark.usefixtures("low_rate_limit")
def test_each_trigger_gets_its_own_rate_limit_then_a_429_with_retry_after(
    services: Services, api: httpx.Client
) -> None:
    busy, quiet = shopify_trigger(api), shopify_trigger(api)
    body = product_created("https://example.com/a.png")
    forged = {**shopify_headers(body, "e"), "X-Shopify-Hmac-Sha256": "AAAA"}

    # Forged events count too: the limit protects the service, before any signature check.
    answers = [post_event(services, busy, body, forged).status_code for _ in range(2)]
    answers += [post_event(services, busy, body, shopify_headers(body, "e")).status_code]
    answers += [post_event(services, busy, body, shopify_headers(body, "e")).status_code]
    answers += [post_event(services, busy, body, shopify_headers(body, "e")).status_code]
    refused = post_event(services, busy, body, shopify_headers(body, "e"))
    other = post_event(services, quiet, body, shopify_headers(body, "e"))

    assert answers == [401, 401, 202, 200, 200]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "per trigger" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert other.status_code == 202, other.text


def test_the_openapi_lists_the_duplicate_answer_of_a_trigger(services: Services) -> None:
    spec = httpx.get(f"{services.api}/openapi.json").json()
    responses = spec["paths"]["/v1/triggers/{name}"]["post"]["responses"]
    assert {"200", "202", "401", "429"} <= responses.keys()
    schema = responses["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/TriggerAccepted")
