"""POST /compat/segmind/v1/ic-light answers exactly like Segmind, with relightq behind it."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from relightq.credits.caps import set_monthly_cap
from relightq.db import session_scope
from relightq.jobs.models import Job
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import shop_image
from tests.support.images import product_png

pytestmark = pytest.mark.usefixtures("celery_worker")

NODE_CLIENT = Path(__file__).parent / "node"
PATH = "/compat/segmind/v1/ic-light"


def jobs_of(tenant: TenantKey) -> int:
    with session_scope() as session:
        count = session.scalar(select(func.count()).where(Job.tenant_id == tenant.id))
        return int(count or 0)


@pytest.fixture(scope="session")
def node_client() -> Path:
    """Segmind's Node example with its real dependencies from the npm registry."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are required (.ci/run installs them)")
    if not (NODE_CLIENT / "node_modules" / "axios").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True, timeout=300
        )
    return NODE_CLIENT / "client.js"


def test_segminds_own_node_client_works_unchanged_but_for_url_and_key(
    node_client: Path,
    services: Services,
    tenant: TenantKey,
    simulator: httpx.Client,
    tmp_path: Path,
) -> None:
    photo, out = tmp_path / "product.png", tmp_path / "relit.png"
    photo.write_bytes(product_png())

    done = subprocess.run(
        ["node", str(node_client), services.api + PATH, tenant.key, str(photo), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["status"] == 200 and answer["contentType"] == "image/png"
    assert float(answer["remainingCredits"]) < 100
    with Image.open(out) as image:
        assert (image.format, image.size) == ("PNG", (768, 960))
    assert simulator.get("/admin/stats").json()["calls"] == 1
    [job] = httpx.get(f"{services.api}/v1/jobs", headers={"x-api-key": tenant.key}).json()["items"]
    assert job["status"] == "succeeded" and job["priority"] == 9


def test_segminds_published_example_with_an_image_url_works_unchanged(
    node_client: Path, services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    _, url = shop_image("compat/documented.png")

    done = subprocess.run(
        ["node", str(node_client.with_name("documented.js")), services.api + PATH, tenant.key, url],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["status"] == 200 and answer["contentType"] == "image/webp"
    assert answer["riff"] is True  # a WebP file begins RIFF....WEBP
    assert float(answer["remainingCredits"]) < 100


def test_json_with_an_image_url_gets_the_image(
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    _, url = shop_image("compat/json.png")
    response = httpx.post(
        services.api + PATH,
        json={"prompt": "studio", "subject_image": url, "output_format": "jpg"},
        headers={"x-api-key": tenant.key},
        timeout=60,
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert "x-remaining-credits" in response.headers
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x", "subject_image": "https://example.com/a.png", "steps": 500},
        {"prompt": "x", "subject_image": "ftp://example.com/a.png"},
        {"subject_image": "https://example.com/a.png", "light_source": "Moon"},
        {"prompt": "x"},
    ],
)
def test_bad_parameters_get_segminds_own_answer_and_no_job(
    services: Services, tenant: TenantKey, simulator: httpx.Client, body: dict[str, Any]
) -> None:
    ours = httpx.post(services.api + PATH, json=body, headers={"x-api-key": tenant.key})
    segminds = simulator.post("/v1/ic-light", json=body, headers={"x-api-key": "k"})

    assert (ours.status_code, ours.json()) == (segminds.status_code, segminds.json())
    assert ours.status_code == 422 and jobs_of(tenant) == 0


def test_a_lone_surrogate_gets_a_422_in_segminds_shape_and_no_job(
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    body = json.dumps({"prompt": "studio \udfff", "subject_image": "https://example.com/a.png"})
    json_headers = {"x-api-key": tenant.key, "content-type": "application/json"}
    boundary = "b0undary"
    # Starlette decodes form text with the charset the request names: in UTF-7 "+2AA-" is
    # U+D800 alone.
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nstudio +2AA-\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="subject_image"\r\n\r\n'
        f"https://example.com/a.png\r\n--{boundary}--\r\n"
    ).encode()
    form_type = f"multipart/form-data; boundary={boundary}; charset=utf-7"

    ours = httpx.post(services.api + PATH, content=body.encode(), headers=json_headers)
    segminds = simulator.post("/v1/ic-light", content=body.encode(), headers=json_headers)
    ours_form = httpx.post(
        services.api + PATH,
        content=form,
        headers={"x-api-key": tenant.key, "content-type": form_type},
    )

    assert (ours.status_code, ours.json()) == (segminds.status_code, segminds.json())
    assert ours.status_code == 422 and ours.json()["error"].startswith(
        "Invalid parameters: prompt must not contain unpaired UTF-16 surrogates"
    )
    assert (ours_form.status_code, ours_form.json()) == (422, ours.json())
    assert jobs_of(tenant) == 0


def test_keys_and_content_types_are_refused_as_segmind_refuses_them(
    services: Services, tenant: TenantKey
) -> None:
    missing = httpx.post(services.api + PATH, json={"prompt": "x"})
    wrong = httpx.post(services.api + PATH, json={"prompt": "x"}, headers={"x-api-key": "nope"})
    text = httpx.post(services.api + PATH, content=b"prompt=x", headers={"x-api-key": tenant.key})

    assert (missing.status_code, missing.json()) == (401, {"error": "Missing x-api-key header"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "Invalid API key"})
    assert text.status_code == 406 and "content type" in text.json()["error"]


def test_an_upstream_refusal_comes_back_with_its_status_and_message(
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    body = {"prompt": "x", "subject_image": f"{services.simulator}/no-such-image.png"}

    response = httpx.post(services.api + PATH, json=body, headers={"x-api-key": tenant.key})

    segminds = simulator.post("/v1/ic-light", json=body, headers={"x-api-key": "k"})
    assert (response.status_code, response.json()) == (segminds.status_code, segminds.json())


def test_while_credits_are_out_it_answers_406_instead_of_hanging(
    services: Services, tenant: TenantKey, operator: TenantKey, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"credits": 0.0}).raise_for_status()
    _, url = shop_image("compat/no-credits.png")
    body = {"prompt": "x", "subject_image": url}
    headers = {"x-api-key": tenant.key}

    started = time.monotonic()
    first = httpx.post(services.api + PATH, json=body, headers=headers, timeout=60)
    second = httpx.post(services.api + PATH, json=body, headers=headers, timeout=60)
    elapsed = time.monotonic() - started

    assert (first.status_code, first.json()) == (406, {"error": "Not enough credits"})
    assert (second.status_code, second.json()) == (406, {"error": "Not enough credits"})
    assert elapsed < 15
    jobs = httpx.get(f"{services.api}/v1/jobs", headers=headers).json()["items"]
    assert [j["status"] for j in jobs] == ["cancelled"]  # the second made no job at all
    with httpx.Client(base_url=services.api, headers={"x-api-key": operator.key}) as ops:
        ops.post("/v1/throttle/resume").raise_for_status()


def test_a_tenant_past_its_monthly_cap_gets_406_at_once_and_nothing_runs_later(
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    with session_scope() as session:
        set_monthly_cap(session, tenant.name, Decimal("0.01"))  # less than one image
    _, url = shop_image("compat/capped.png")
    headers = {"x-api-key": tenant.key}

    started = time.monotonic()
    answer = httpx.post(
        services.api + PATH, json={"prompt": "x", "subject_image": url}, headers=headers, timeout=60
    )

    assert (answer.status_code, answer.json()) == (406, {"error": "Not enough credits"})
    assert time.monotonic() - started < 15
    jobs = httpx.get(f"{services.api}/v1/jobs", headers=headers).json()["items"]
    assert [j["status"] for j in jobs] == ["cancelled"]  # a caller who left is never billed
    assert simulator.get("/admin/stats").json()["calls"] == 0


def test_a_call_caught_by_a_refused_segmind_key_gets_401_at_once_and_never_runs(
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"valid_keys": ["not-ours"]}).raise_for_status()
    _, url = shop_image("compat/refused-key.png")
    headers = {"x-api-key": tenant.key}

    started = time.monotonic()
    caught = httpx.post(
        services.api + PATH, json={"prompt": "x", "subject_image": url}, headers=headers
    )

    assert (caught.status_code, caught.json()) == (401, {"error": "Invalid API key"})
    assert time.monotonic() - started < 15  # not the 300 s wait
    jobs = httpx.get(f"{services.api}/v1/jobs", headers=headers).json()["items"]
    assert [j["status"] for j in jobs] == ["cancelled"]  # it will not run once the key works


def test_an_operators_pause_gets_503_with_retry_after_not_a_hang(
    services: Services, tenant: TenantKey, operator: TenantKey, simulator: httpx.Client
) -> None:
    _, url = shop_image("compat/operator-pause.png")
    with httpx.Client(base_url=services.api, headers={"x-api-key": operator.key}) as ops:
        ops.post("/v1/throttle/pause", json={"reason": "maintenance"}).raise_for_status()

    response = httpx.post(
        services.api + PATH,
        json={"prompt": "x", "subject_image": url},
        headers={"x-api-key": tenant.key},
    )

    assert response.status_code == 503 and "paused" in response.json()["error"]
    assert response.headers["retry-after"] == "60"
    assert jobs_of(tenant) == 0


def test_routing_errors_under_the_compat_prefix_are_answered_in_segminds_shape(
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    headers = {"x-api-key": tenant.key}
    for method, path in (("GET", "/v1/ic-light"), ("POST", "/v1/no-such-model")):
        ours = httpx.request(method, services.api + "/compat/segmind" + path, headers=headers)
        segminds = simulator.request(method, path, headers={"x-api-key": "k"})
        assert (ours.status_code, ours.text) == (segminds.status_code, segminds.text)
    too_big = httpx.post(
        services.api + PATH,
        content=b"x" * (30 * 2**20),
        headers={**headers, "content-type": "application/json"},
    )
    assert too_big.status_code == 413 and set(too_big.json()) == {"error"}


def test_an_uploaded_file_that_is_not_an_image_gets_segminds_words(
    services: Services, tenant: TenantKey, simulator: httpx.Client
) -> None:
    files = {"subject_image": ("p.png", b"not an image at all", "image/png")}
    data = {"prompt": "x"}

    ours = httpx.post(
        services.api + PATH, data=data, files=files, headers={"x-api-key": tenant.key}
    )
    segminds = simulator.post("/v1/ic-light", data=data, files=files, headers={"x-api-key": "k"})

    assert (ours.status_code, ours.json()) == (segminds.status_code, segminds.json())


def test_prefer_wait_returns_the_final_job_or_the_usual_202(
    api: httpx.Client, simulator: httpx.Client
) -> None:
    _, url = shop_image("compat/prefer.png")
    body = {"prompt": "x", "subject_image": url}

    quick = api.post("/v1/jobs", json=body, headers={"Prefer": "wait=20"})
    simulator.post("/admin/config", json={"latency": 3.0}).raise_for_status()
    # The same picture again would be a copy, done at once: this one asks for a new one.
    slow = api.post(
        "/v1/jobs", json={**body, "reuse": False}, headers={"Prefer": "respond-async, wait=1"}
    )

    assert quick.status_code == 200 and quick.json()["status"] == "succeeded"
    assert quick.json()["outputs"][0]["url"]
    assert quick.headers["preference-applied"] == "wait=20"
    assert slow.status_code == 202 and slow.json()["status"] in ("queued", "running")
    assert slow.headers["preference-applied"] == "wait=1"
