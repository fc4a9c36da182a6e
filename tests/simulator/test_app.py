"""The Segmind simulator, exercised for real over HTTP as the relightq client will see it."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image, ImageStat
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from relightq.simulator.state import SimulatorState

KEY = {"x-api-key": "test-key"}
SMALL = {"width": 256, "height": 320, "highres_scale": 1}  # small outputs keep the suite fast


def png_bytes(
    size: tuple[int, int] = (256, 320), color: tuple[int, int, int] = (128, 128, 128)
) -> bytes:
    """A plain opaque PNG, so any brightness difference comes from the simulated light."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


async def subject_png(request: Request) -> Response:
    return Response(png_bytes(), media_type="image/png")


async def not_an_image(request: Request) -> Response:
    return PlainTextResponse("definitely not pixels")


@pytest.fixture(autouse=True)
def fresh_state(sim_state: SimulatorState) -> None:
    """Every test starts from default settings, a 100-credit balance and empty stats."""
    defaults = SimulatorState()
    for name in (f.name for f in dataclasses.fields(SimulatorState)):
        if name not in ("stats", "outputs", "rng", "_window"):
            setattr(sim_state, name, getattr(defaults, name))
    sim_state.reset()


def relight(sim_url: str, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{sim_url}/v1/ic-light", headers=KEY if headers is None else headers, **kwargs
    )


def json_body(assets_url: str, **fields: Any) -> dict[str, Any]:
    return {"prompt": "soft studio light", "subject_image": f"{assets_url}/subject.png", **fields}


def brightness(image: Image.Image, box: tuple[int, int, int, int]) -> float:
    return float(ImageStat.Stat(image.convert("L").crop(box)).mean[0])


@pytest.mark.parametrize(
    ("fields", "fmt", "content_type", "size"),
    [
        ({}, "WEBP", "image/webp", (768, 960)),
        (
            {"output_format": "jpg", "width": 320, "height": 256, "highres_scale": 2},
            "JPEG",
            "image/jpeg",
            (640, 512),
        ),
        (
            {"output_format": "png", "width": 1024, "height": 256, "highres_scale": 1.2},
            "PNG",
            "image/png",
            (1216, 320),
        ),
    ],
)
def test_answers_200_with_an_image_of_the_final_size_in_the_requested_format(
    sim_url: str,
    assets_url: str,
    fields: dict[str, Any],
    fmt: str,
    content_type: str,
    size: tuple[int, int],
) -> None:
    response = relight(sim_url, json=json_body(assets_url, **fields))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    image = Image.open(io.BytesIO(response.content))
    assert image.format == fmt
    assert image.size == size


@pytest.mark.parametrize(
    ("light_source", "lit", "shaded"),
    [
        ("Left Light", (0, 0, 128, 320), (128, 0, 256, 320)),
        ("Right Light", (128, 0, 256, 320), (0, 0, 128, 320)),
        ("Top Light", (0, 0, 256, 160), (0, 160, 256, 320)),
        ("Bottom Light", (0, 160, 256, 320), (0, 0, 256, 160)),
    ],
)
def test_lights_an_uploaded_subject_visibly_brighter_on_the_lit_side(
    sim_url: str, light_source: str, lit: tuple[int, ...], shaded: tuple[int, ...]
) -> None:
    # Multipart like Segmind's own sample client: every field is a string, the subject a file.
    form = {"prompt": "rim light", "light_source": light_source, "width": "256", "height": "320"}
    form |= {"highres_scale": "1", "output_format": "png", "seed": "7"}
    files = {"subject_image": ("subject.png", png_bytes(), "image/png")}
    response = relight(sim_url, data=form, files=files)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (256, 320)
    assert brightness(image, lit) > brightness(image, shaded) + 40  # type: ignore[arg-type]


def test_no_light_source_gives_an_even_soft_light(sim_url: str, assets_url: str) -> None:
    response = relight(
        sim_url, json=json_body(assets_url, light_source="None", output_format="png", **SMALL)
    )
    image = Image.open(io.BytesIO(response.content))
    left, right = brightness(image, (0, 0, 128, 240)), brightness(image, (128, 0, 256, 240))
    assert abs(left - right) < 3
    assert left > 128  # brighter than the mid-grey subject: the soft light adds some glow


def test_answers_401_without_an_api_key(sim_url: str, assets_url: str) -> None:
    for headers in ({}, {"x-api-key": ""}):
        response = relight(sim_url, headers=headers, json=json_body(assets_url))
        assert response.status_code == 401
        assert "error" in response.json()


def test_answers_401_for_a_key_outside_valid_keys(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.valid_keys = {"good-key"}
    assert (
        relight(sim_url, headers={"x-api-key": "bad-key"}, json=json_body(assets_url)).status_code
        == 401
    )
    assert (
        relight(
            sim_url, headers={"x-api-key": "good-key"}, json=json_body(assets_url, **SMALL)
        ).status_code
        == 200
    )


def test_answers_405_with_html_for_get_on_ic_light(sim_url: str) -> None:
    response = httpx.get(f"{sim_url}/v1/ic-light", headers=KEY)
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("text/html")


def test_answers_404_json_for_unknown_paths(sim_url: str) -> None:
    response = httpx.post(f"{sim_url}/v1/ic-lite", headers=KEY, json={})
    assert response.status_code == 404
    assert response.json() == {"error": "Not found"}


def test_answers_406_not_enough_credits_when_balance_is_short(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.credits = 0.05  # enough for one image at 0.037, not for two
    response = relight(sim_url, json=json_body(assets_url, number_of_images=2, **SMALL))
    assert response.status_code == 406
    assert "not enough credits" in response.json()["error"].lower()
    assert sim_state.credits == 0.05


def test_answers_406_invalid_content_type_without_mentioning_credits(sim_url: str) -> None:
    response = relight(sim_url, content=b"prompt=x", headers={**KEY, "content-type": "text/plain"})
    assert response.status_code == 406
    message = response.json()["error"].lower()
    assert "content type" in message
    assert "credits" not in message


def test_answers_422_naming_each_bad_field(sim_url: str) -> None:
    body = {
        "prompt": "x",
        "cfg": 40,
        "width": 500,
        "light_source": "Sideways",
        "steps": "many",
        "colour": "red",
    }
    response = relight(sim_url, json=body)
    assert response.status_code == 422
    message = response.json()["error"]
    for field in ("cfg", "width", "light_source", "steps", "colour", "subject_image"):
        assert field in message
    assert "1 to 32" in message  # the allowed range is spelled out, not just the field name


def test_answers_422_when_subject_image_cannot_be_fetched_and_charges_nothing(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    missing = relight(
        sim_url, json=json_body(assets_url, subject_image=f"{assets_url}/missing.png")
    )
    assert missing.status_code == 422
    assert missing.json()["error"].startswith("Could not fetch subject_image")
    garbage = relight(sim_url, json=json_body(assets_url, subject_image=f"{assets_url}/notes.txt"))
    assert garbage.status_code == 422
    assert "subject_image" in garbage.json()["error"]
    assert sim_state.credits == 100.0


def test_answers_429_with_a_reset_time_when_rate_limiting_is_injected(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.rate_429_rate = 1.0
    response = relight(sim_url, json=json_body(assets_url))
    assert response.status_code == 429
    reset_at = dt.datetime.strptime(
        response.headers["x-rate-limit-reset-at-utc"], "%Y-%m-%dT%H:%M:%SZ"
    )
    ahead = reset_at.replace(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(0) < ahead < dt.timedelta(seconds=10)


def test_answers_429_beyond_rate_limit_per_minute(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.rate_limit_per_minute = 2
    statuses = [relight(sim_url, json=json_body(assets_url, **SMALL)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = relight(sim_url, json=json_body(assets_url, **SMALL))
    assert "x-rate-limit-reset-at-utc" in limited.headers


def test_answers_500_when_failures_are_injected_at_rate_one(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.fail_500_rate = 1.0
    response = relight(sim_url, json=json_body(assets_url))
    assert response.status_code == 500
    assert response.json() == {"error": "Internal server error"}
    assert sim_state.credits == 100.0


def test_answers_504_after_timeout_seconds_when_timeouts_are_injected(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.timeout_rate, sim_state.timeout_seconds = 1.0, 0.2
    response = relight(sim_url, json=json_body(assets_url))
    assert response.status_code == 504
    assert response.elapsed >= dt.timedelta(seconds=0.2)


def test_returns_several_images_as_base64_json(sim_url: str, assets_url: str) -> None:
    response = relight(
        sim_url, json=json_body(assets_url, number_of_images=3, output_format="jpg", **SMALL)
    )
    assert response.status_code == 200
    images = response.json()["images"]
    assert len(images) == 3
    for encoded in images:
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert (image.format, image.size) == ("JPEG", (256, 320))
    assert float(response.headers["x-remaining-credits"]) == pytest.approx(100 - 3 * 0.037)


def test_returns_several_images_as_urls_served_by_the_simulator(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.multi_image_mode = "url"
    response = relight(sim_url, json=json_body(assets_url, number_of_images=2, **SMALL))
    assert response.status_code == 200
    urls = response.json()["images"]
    assert len(urls) == 2
    for url in urls:
        assert url.startswith(f"{sim_url}/v1/outputs/")
        fetched = httpx.get(url)
        assert fetched.headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(fetched.content)).size == (256, 320)


def test_charges_credits_per_image_and_reports_the_remaining_balance(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.credits = 1.0
    first = relight(sim_url, json=json_body(assets_url, **SMALL))
    assert first.headers["x-remaining-credits"] == "0.963"
    second = relight(sim_url, json=json_body(assets_url, number_of_images=2, **SMALL))
    assert second.headers["x-remaining-credits"] == "0.889"
    assert sim_state.credits == pytest.approx(0.889)


def test_get_user_credits_reports_the_balance_free_and_uncounted(
    sim_url: str, sim_state: SimulatorState
) -> None:
    sim_state.credits = 12.5
    response = httpx.get(f"{sim_url}/v1/get-user-credits", headers=KEY)
    assert response.json() == {
        "credits": 12.5,
        "email": "simulator@relightq.local",
        "simulator": True,
    }
    assert httpx.get(f"{sim_url}/v1/get-user-credits").status_code == 401
    stats = httpx.get(f"{sim_url}/admin/stats").json()
    assert (stats["calls"], stats["credits"]) == (0, 12.5)


def test_stats_record_peak_concurrency_of_overlapping_calls(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.latency = 0.5
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(relight, sim_url, json=json_body(assets_url, **SMALL)) for _ in range(4)
        ]
        assert [f.result().status_code for f in futures] == [200] * 4
    stats = httpx.get(f"{sim_url}/admin/stats").json()
    assert stats["calls"] == 4
    assert stats["peak_concurrency"] == 4
    assert stats["max_calls_per_minute"] == 4
    assert stats["in_flight"] == 0
    assert stats["by_status"] == {"200": 4}
    assert all(e["status"] == 200 and e["images"] == 1 and e["finished_at"] for e in stats["log"])


def test_admin_config_updates_settings_and_reset_clears_stats(
    sim_url: str, assets_url: str
) -> None:
    config = httpx.post(
        f"{sim_url}/admin/config", json={"credits": 5, "valid_keys": ["k1"], "fail_500_rate": 1}
    )
    assert config.status_code == 200
    assert config.json()["valid_keys"] == ["k1"]
    assert config.json()["credits"] == 5
    assert (
        relight(sim_url, headers={"x-api-key": "k1"}, json=json_body(assets_url)).status_code == 500
    )
    assert httpx.post(f"{sim_url}/admin/config", json={"fail_500_rate": 2}).status_code == 422
    stats = httpx.get(f"{sim_url}/admin/stats").json()
    assert (stats["calls"], stats["by_status"]) == (1, {"500": 1})
    httpx.post(f"{sim_url}/admin/reset")
    assert httpx.get(f"{sim_url}/admin/stats").json()["calls"] == 0


def test_banner_says_it_is_the_simulator_not_ic_light(sim_url: str) -> None:
    banner = httpx.get(f"{sim_url}/").json()
    assert "simulator" in banner["service"]
    assert "not IC-Light" in banner["message"]


def test_a_call_the_client_abandons_ends_as_499_and_is_refunded(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.latency = 2.0
    with pytest.raises(httpx.ReadTimeout):
        relight(sim_url, json=json_body(assets_url, **SMALL), timeout=0.3)
    deadline = time.monotonic() + 2
    while sim_state.stats.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = httpx.get(f"{sim_url}/admin/stats").json()
    assert (stats["in_flight"], stats["by_status"]) == (0, {"499": 1})
    assert stats["credits"] == 100.0
