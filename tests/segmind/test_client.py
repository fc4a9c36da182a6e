"""SegmindClient against the simulator over HTTP: every status code maps to its decision."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from relightq.segmind.client import (
    RELIGHT_PATH,
    SegmindClient,
    SubjectUpload,
    parse_reset_at,
    raise_for_status,
)
from relightq.segmind.errors import (
    SegmindOutOfCredits,
    SegmindRateLimited,
    SegmindRejected,
    SegmindRequestFailed,
    SegmindUnauthorized,
    SegmindUnavailable,
    failure_is_transient,
)
from relightq.segmind.params import RelightParams
from relightq.serving import free_port, serve_in_thread
from tests.conftest import Services
from tests.segmind.echo_upstream import echoing_upstream
from tests.support.images import product_png

UPLOAD = SubjectUpload(product_png(), "shoe.png", "image/png")


@pytest.fixture
def client(services: Services, simulator: httpx.Client) -> Iterator[SegmindClient]:
    segmind = SegmindClient(services.simulator, "test-key", timeout=10)
    yield segmind
    segmind.close()


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize(
    ("fmt", "pil", "mime"),
    [("webp", "WEBP", "image/webp"), ("jpg", "JPEG", "image/jpeg"), ("png", "PNG", "image/png")],
)
def test_200_single_image_of_the_final_size_and_format(
    client: SegmindClient, fmt: str, pil: str, mime: str
) -> None:
    params = RelightParams(prompt="p", width=320, height=384, highres_scale=2, output_format=fmt)
    result = client.relight(params, UPLOAD)
    [image] = result.images
    assert image.content_type == mime
    assert opened(image.data).format == pil
    assert opened(image.data).size == (640, 768)
    assert result.remaining_credits is not None and result.remaining_credits < 100


def test_url_subject_is_sent_as_json_and_fetched_by_upstream(
    client: SegmindClient, services: Services
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    png = product_png()
    app = Starlette(routes=[Route("/shoe.png", lambda _: Response(png, media_type="image/png"))])
    from relightq.serving import serve_in_thread

    with serve_in_thread(app) as base:
        result = client.relight(RelightParams(prompt="p"), f"{base}/shoe.png")
    assert opened(result.images[0].data).size == (768, 960)


@pytest.mark.parametrize("mode", ["base64", "url"])
def test_several_images_come_back_as_a_json_list_in_either_form(
    client: SegmindClient, simulator: httpx.Client, mode: str
) -> None:
    simulator.post("/admin/config", json={"multi_image_mode": mode}).raise_for_status()
    result = client.relight(RelightParams(prompt="p", number_of_images=3), UPLOAD)
    assert len(result.images) == 3
    assert all(opened(i.data).format == "WEBP" for i in result.images)


def test_401_is_unauthorized(services: Services, simulator: httpx.Client) -> None:
    simulator.post("/admin/config", json={"valid_keys": ["right"]}).raise_for_status()
    with pytest.raises(SegmindUnauthorized):
        SegmindClient(services.simulator, "wrong").relight(RelightParams(prompt="p"), UPLOAD)


def test_406_not_enough_credits_is_out_of_credits(
    client: SegmindClient, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"credits": 0.01}).raise_for_status()
    with pytest.raises(SegmindOutOfCredits, match=r"(?i)not enough credits"):
        client.relight(RelightParams(prompt="p"), UPLOAD)


def test_406_invalid_content_type_is_a_permanent_rejection(services: Services) -> None:
    response = httpx.post(
        services.simulator + RELIGHT_PATH,
        content=b"prompt=x",
        headers={"x-api-key": "k", "content-type": "text/plain"},
    )
    assert response.status_code == 406
    with pytest.raises(SegmindRejected) as info:
        raise_for_status(response)
    assert info.value.status == 406


def test_422_bad_parameters_is_a_permanent_rejection_with_segminds_message(
    client: SegmindClient,
) -> None:
    params = RelightParams.model_construct(
        **{**RelightParams(prompt="p").model_dump(), "steps": 500}
    )
    with pytest.raises(SegmindRejected, match="steps") as info:
        client.relight(params, UPLOAD)
    assert info.value.status == 422


def test_404_and_405_are_permanent_rejections(services: Services) -> None:
    with pytest.raises(SegmindRejected) as not_found:
        SegmindClient(services.simulator + "/nowhere", "k").relight(
            RelightParams(prompt="p"), UPLOAD
        )
    assert not_found.value.status == 404
    response = httpx.get(services.simulator + RELIGHT_PATH, headers={"x-api-key": "k"})
    with pytest.raises(SegmindRejected) as not_allowed:
        raise_for_status(response)
    assert not_allowed.value.status == 405
    assert "<" not in not_allowed.value.message  # HTML reduced to text


def test_429_carries_the_reset_time(client: SegmindClient, simulator: httpx.Client) -> None:
    simulator.post("/admin/config", json={"rate_429_rate": 1.0}).raise_for_status()
    with pytest.raises(SegmindRateLimited) as info:
        client.relight(RelightParams(prompt="p"), UPLOAD)
    assert info.value.reset_at is not None


def test_500_is_transient(client: SegmindClient, simulator: httpx.Client) -> None:
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    with pytest.raises(SegmindUnavailable) as info:
        client.relight(RelightParams(prompt="p"), UPLOAD)
    assert info.value.status == 500


def test_a_timeout_is_transient(services: Services, simulator: httpx.Client) -> None:
    config = {"timeout_rate": 1.0, "timeout_seconds": 5}
    simulator.post("/admin/config", json=config).raise_for_status()
    impatient = SegmindClient(services.simulator, "k", timeout=0.5)
    with pytest.raises(SegmindUnavailable, match="in time"):
        impatient.relight(RelightParams(prompt="p"), UPLOAD)


def test_a_refused_connection_is_transient() -> None:
    nobody = SegmindClient(f"http://127.0.0.1:{free_port()}", "k")
    with pytest.raises(SegmindUnavailable, match="could not reach"):
        nobody.relight(RelightParams(prompt="p"), UPLOAD)


def test_the_key_never_appears_in_an_error(services: Services, simulator: httpx.Client) -> None:
    simulator.post("/admin/config", json={"valid_keys": ["right"]}).raise_for_status()
    with pytest.raises(SegmindUnauthorized) as info:
        SegmindClient(services.simulator, "sk-SECRET-123").relight(
            RelightParams(prompt="p"), UPLOAD
        )
    assert "sk-SECRET-123" not in repr(info.value) + str(info.value)


def test_credits_are_read_from_get_user_credits(
    client: SegmindClient, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"credits": 12.5}).raise_for_status()
    assert client.get_credits() == 12.5
    assert simulator.get("/admin/stats").json()["calls"] == 0  # free, not a relight call


@pytest.mark.parametrize(
    ("header", "epoch"),
    [("2026-11-25T04:40:00Z", 1795581600.0), ("1795581600", 1795581600.0), ("soon", None)],
)
def test_reset_header_parses_iso_or_epoch(header: str, epoch: float | None) -> None:
    parsed = parse_reset_at(header)
    assert (parsed.timestamp() if parsed else None) == epoch


ECHOED_KEY = "sg_echoed_7e3b9c1d5a2f4e8b"


@pytest.fixture
def echoing_client() -> Iterator[SegmindClient]:
    """A client with a key of its own (not the configured one) on an upstream quoting it."""
    with serve_in_thread(echoing_upstream()) as url:
        segmind = SegmindClient(url, ECHOED_KEY, timeout=10)
        yield segmind
        segmind.close()


@pytest.mark.parametrize(
    ("prompt", "error"),
    [
        ("reject", SegmindRejected),  # 422 JSON
        ("unauthorized", SegmindUnauthorized),  # 401 JSON
        ("proxy", SegmindUnavailable),  # 502 HTML
        ("long", SegmindRejected),  # the key across the 1000-character cut
    ],
)
def test_an_upstream_quoting_the_key_never_gets_it_into_an_error_message(
    echoing_client: SegmindClient, prompt: str, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        echoing_client.relight(RelightParams(prompt=prompt), "https://example.com/shoe.png")

    message = str(caught.value)
    assert ECHOED_KEY[:6] not in message, message  # not whole, and no piece left by a cut
    assert "[reda" in message  # "[redacted]", perhaps cut short itself


def test_the_credits_probe_never_gets_the_quoted_key_into_its_error(
    echoing_client: SegmindClient,
) -> None:
    with pytest.raises(SegmindUnauthorized, match=r"API key \[redacted\] is not valid"):
        echoing_client.get_credits()


@contextmanager
def image_server() -> Iterator[tuple[str, list[str]]]:
    """A server on its own port answering every GET with a PNG; yields its URL and the
    paths it was asked for."""
    asked: list[str] = []
    png = product_png()

    async def image(request: Request) -> Response:
        asked.append(request.url.path)
        return Response(png, media_type="image/png")

    with serve_in_thread(Starlette(routes=[Route("/{path:path}", image)])) as url:
        yield url, asked


@contextmanager
def upstream_answering(*urls: str, redirect_to: str = "") -> Iterator[tuple[str, list[str]]]:
    """An upstream answering IC-Light with JSON naming ``urls`` (``{origin}`` in one is its
    own base URL), serving its own /outputs (or redirecting them to ``redirect_to``);
    yields its URL and the output paths it was asked for."""
    asked: list[str] = []
    png = product_png()
    base: list[str] = []

    async def relight(_: Request) -> JSONResponse:
        return JSONResponse({"images": [url.format(origin=base[0]) for url in urls]})

    async def output(request: Request) -> Response:
        asked.append(request.url.path)
        if redirect_to:
            return RedirectResponse(redirect_to + request.url.path, 302)
        return Response(png, media_type="image/png")

    app = Starlette(
        routes=[
            Route(RELIGHT_PATH, relight, methods=["POST"]),
            Route("/outputs/{name}", output),
        ]
    )
    with serve_in_thread(app) as url:
        base.append(url)
        yield url, asked


def test_an_output_url_on_the_upstreams_own_origin_is_fetched() -> None:
    with upstream_answering("{origin}/outputs/a.png", "{origin}/outputs/b.png") as (url, asked):
        segmind = SegmindClient(url, "k")
        result = segmind.relight(RelightParams(prompt="p"), UPLOAD)
        segmind.close()
    assert [image.content_type for image in result.images] == ["image/png", "image/png"]
    assert asked == ["/outputs/a.png", "/outputs/b.png"]


def test_an_output_url_on_another_port_of_the_upstreams_host_is_refused_unfetched() -> None:
    with (
        image_server() as (elsewhere, fetched),
        upstream_answering("{origin}/outputs/a.png", f"{elsewhere}/outputs/b.png") as (url, _),
    ):
        assert httpx.URL(elsewhere).host == httpx.URL(url).host
        segmind = SegmindClient(url, "k")
        with pytest.raises(SegmindRejected) as refused:
            segmind.relight(RelightParams(prompt="p"), UPLOAD)
        segmind.close()
    message = str(refused.value)
    assert f"{elsewhere} is not the upstream's origin {url}" in message, message
    assert fetched == []


@pytest.mark.parametrize(
    "other",
    [
        "http://localhost:{port}/outputs/a.png",  # the same address by another name
        "https://127.0.0.1:{port}/outputs/a.png",  # the same host and port, another scheme
        "http://[::1]:9/internal-admin.png",
    ],
)
def test_an_output_url_off_the_upstreams_origin_is_refused(other: str) -> None:
    with upstream_answering("{origin}/outputs/x.png") as (url, asked):
        answer = other.format(port=httpx.URL(url).port)
        with upstream_answering(answer) as (liar, _):
            segmind = SegmindClient(liar, "k")
            with pytest.raises(SegmindRejected, match="is not the upstream's origin"):
                segmind.relight(RelightParams(prompt="p"), UPLOAD)
            segmind.close()
    assert asked == []


def test_an_output_redirected_off_the_upstreams_origin_is_refused_at_the_hop() -> None:
    with (
        image_server() as (elsewhere, fetched),
        upstream_answering("{origin}/outputs/a.png", redirect_to=elsewhere) as (url, asked),
    ):
        segmind = SegmindClient(url, "k")
        with pytest.raises(SegmindRejected, match=f"{elsewhere} is not the upstream's origin"):
            segmind.relight(RelightParams(prompt="p"), UPLOAD)
        segmind.close()
    assert asked == ["/outputs/a.png"] and fetched == []


@contextmanager
def v2_upstream(
    *, status_url: str = "", output: str = "{origin}/outputs/a.png", failed_error: str = ""
) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An upstream speaking v2: one request ``r1``, COMPLETED with ``output`` (or FAILED
    with ``failed_error``); yields its URL and each (path, x-api-key) it was asked for."""
    seen: list[tuple[str, str]] = []
    base: list[str] = []

    async def record(request: Request) -> None:
        seen.append((request.url.path, request.headers.get("x-api-key", "")))

    async def submit(request: Request) -> JSONResponse:
        await record(request)
        return JSONResponse(
            {
                "request_id": "r1",
                "status": "QUEUED",
                "status_url": status_url or f"{base[0]}/v2/requests/r1/status",
                "response_url": f"{base[0]}/v2/requests/r1",
            }
        )

    async def state(request: Request) -> JSONResponse:
        await record(request)
        if failed_error:
            return JSONResponse({"status": "FAILED", "error": failed_error}, 422)
        return JSONResponse({"status": "COMPLETED"})

    async def result(request: Request) -> JSONResponse:
        await record(request)
        return JSONResponse({"status": "COMPLETED", "output": output.format(origin=base[0])})

    async def image(request: Request) -> Response:
        await record(request)
        return Response(product_png(), media_type="image/png")

    app = Starlette(
        routes=[
            Route("/v2/ic-light", submit, methods=["POST"]),
            Route("/v2/requests/r1/status", state),
            Route("/v2/requests/r1", result),
            Route("/outputs/{name}", image),
        ]
    )
    with serve_in_thread(app) as url:
        base.append(url)
        yield url, seen


def test_v2_submits_polls_and_collects_the_output() -> None:
    with v2_upstream() as (url, seen):
        segmind = SegmindClient(url, "k")
        request = segmind.submit(RelightParams(prompt="p"), UPLOAD)
        assert segmind.status(request).done
        result = segmind.result(request)
        segmind.close()
    assert request.request_id == "r1"
    assert [image.content_type for image in result.images] == ["image/png"]
    assert [path for path, _ in seen] == [
        "/v2/ic-light",
        "/v2/requests/r1/status",
        "/v2/requests/r1",
        "/outputs/a.png",
    ]


def test_v2_never_sends_the_key_to_a_status_url_on_another_host() -> None:
    with (
        image_server() as (elsewhere, asked),
        v2_upstream(status_url=f"{elsewhere}/steal") as (url, seen),
    ):
        segmind = SegmindClient(url, "secret-key")
        request = segmind.submit(RelightParams(prompt="p"), UPLOAD)
        assert segmind.status(request).done
        segmind.close()
    # Polled on the upstream's own documented path instead, with the key.
    assert request.status_url == f"{url}/v2/requests/r1/status"
    assert ("/v2/requests/r1/status", "secret-key") in seen
    assert asked == []


def test_v2_refuses_an_output_url_on_a_private_address_unfetched() -> None:
    with v2_upstream(output="http://10.255.255.1/outputs/a.png") as (url, seen):
        segmind = SegmindClient(url, "k")
        request = segmind.submit(RelightParams(prompt="p"), UPLOAD)
        with pytest.raises(SegmindRejected) as refused:
            segmind.result(request)
        segmind.close()
    assert "an output URL is not allowed" in str(refused.value)
    assert "/outputs/a.png" not in [path for path, _ in seen]


def test_v2_failed_is_classified_and_its_error_never_carries_the_key() -> None:
    with v2_upstream(failed_error="Invalid image for key secret-key") as (url, _):
        segmind = SegmindClient(url, "secret-key")
        request = segmind.submit(RelightParams(prompt="p"), UPLOAD)
        with pytest.raises(SegmindRequestFailed) as failed:
            segmind.status(request)
        segmind.close()
    assert failed.value.transient is False  # "invalid": the request's own fault
    assert "secret-key" not in failed.value.message


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        ("Inference timed out", True),
        ("CUDA out of memory, please retry", True),
        ("Internal server error", True),
        ("something never seen before", True),
        ("Prompt is Mandatory and must be string", False),
        ("Could not fetch subject_image: HTTP 404", False),
        ("subject_image is not an image Pillow can decode (UnidentifiedImageError)", False),
        ("NSFW content detected", False),
    ],
)
def test_a_failed_requests_error_decides_whether_it_is_retried(error: str, transient: bool) -> None:
    assert failure_is_transient(error) is transient
