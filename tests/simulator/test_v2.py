"""The simulator's Segmind v2 (submit and poll) API, exercised for real over HTTP."""

from __future__ import annotations

import dataclasses
import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from relightq.simulator import state as state_module
from relightq.simulator.state import DEFAULT_FAILED_ERROR, SimulatorState
from tests.simulator.test_app import KEY, SMALL, png_bytes

# Fields the fresh_state fixture leaves alone: objects shared with the running server.
SHARED = {"stats", "outputs", "rng", "_window", "requests", "request_outputs", "_ended"}


@pytest.fixture(autouse=True)
def fresh_state(sim_state: SimulatorState, sim_url: str) -> None:
    """Default settings, 100 credits, no known requests and empty stats for every test."""
    defaults = SimulatorState()
    for name in (f.name for f in dataclasses.fields(SimulatorState)):
        if name not in SHARED:
            setattr(sim_state, name, getattr(defaults, name))
    # Through the server, so its own loop cancels whatever a previous test left running.
    httpx.post(f"{sim_url}/admin/forget").raise_for_status()
    httpx.post(f"{sim_url}/admin/reset").raise_for_status()


def body(assets_url: str, **fields: Any) -> dict[str, Any]:
    return {
        "prompt": "soft studio light",
        "subject_image": f"{assets_url}/subject.png",
        **SMALL,
        **fields,
    }


def submit(sim_url: str, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{sim_url}/v2/ic-light", headers=KEY if headers is None else headers, **kwargs
    )


def status(sim_url: str, request_id: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(
        f"{sim_url}/v2/requests/{request_id}/status", headers=KEY if headers is None else headers
    )


def result(sim_url: str, request_id: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(
        f"{sim_url}/v2/requests/{request_id}", headers=KEY if headers is None else headers
    )


def accepted(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"])


def wait_final(sim_url: str, request_id: str, timeout: float = 10.0) -> httpx.Response:
    """Poll the status until the request is COMPLETED or FAILED; return that answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = status(sim_url, request_id)
        if answer.json().get("status") in ("COMPLETED", "FAILED"):
            return answer
        assert answer.status_code == 200, answer.text
        assert time.monotonic() < deadline, f"{request_id} still {answer.json()}"
        time.sleep(0.02)


def stats(sim_url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{sim_url}/admin/stats").json())


def image_at(url: str) -> Image.Image:
    fetched = httpx.get(url)
    assert fetched.status_code == 200, fetched.text
    return Image.open(io.BytesIO(fetched.content))


def assert_failed(answer: httpx.Response, request_id: str) -> str:
    """The FAILED body on HTTP 422; returns its error message."""
    assert answer.status_code == 422, answer.text
    payload = answer.json()
    assert set(payload) == {"request_id", "status", "error", "metrics"}
    assert (payload["request_id"], payload["status"]) == (request_id, "FAILED")
    assert set(payload["metrics"]) == {"inference_time", "queue_time", "total_time"}
    return str(payload["error"])


def test_submit_answers_queued_with_absolute_urls_and_reserves_the_cost(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.latency = 0.5
    response = submit(sim_url, json=body(assets_url))
    request_id = accepted(response)
    assert uuid.UUID(request_id).version == 4
    assert response.json() == {
        "request_id": request_id,
        "status": "QUEUED",
        "status_url": f"{sim_url}/v2/requests/{request_id}/status",
        "response_url": f"{sim_url}/v2/requests/{request_id}",
    }
    assert response.headers["x-remaining-credits"] == "99.963"
    assert sim_state.credits == pytest.approx(99.963)  # charged while still pending
    pending = result(sim_url, request_id)
    assert pending.status_code == 200
    assert pending.json() == {"request_id": request_id, "status": "PROCESSING"}


def test_a_request_completes_after_latency_and_its_output_downloads(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.latency = 0.4
    request_id = accepted(submit(sim_url, json=body(assets_url, output_format="png")))
    final = wait_final(sim_url, request_id)
    assert final.status_code == 200
    assert final.json() == {"request_id": request_id, "status": "COMPLETED"}

    answer = result(sim_url, request_id)
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert (payload["request_id"], payload["status"]) == (request_id, "COMPLETED")
    assert isinstance(payload["output"], str)
    assert payload["output"].startswith(f"{sim_url}/v1/outputs/")
    metrics = payload["metrics"]
    assert metrics["total_time"] >= 0.4  # the whole request takes latency, like a v1 call
    assert metrics["total_time"] == pytest.approx(
        metrics["queue_time"] + metrics["inference_time"], abs=0.002
    )
    assert metrics["cost"] == pytest.approx(0.037)
    assert metrics["remaining_credits"] == pytest.approx(99.963)
    assert answer.headers["x-remaining-credits"] == "99.963"
    image = image_at(payload["output"])
    assert (image.format, image.size) == ("PNG", (256, 320))


def test_an_uploaded_subject_is_relit_and_logged_without_a_subject_url(
    sim_url: str, sim_state: SimulatorState
) -> None:
    form = {"prompt": "rim light", "light_source": "Left Light", "width": "320"}
    form |= {"height": "256", "highres_scale": "2", "output_format": "jpg"}
    files = {"subject_image": ("subject.png", png_bytes(), "image/png")}
    request_id = accepted(submit(sim_url, data=form, files=files))
    assert wait_final(sim_url, request_id).json()["status"] == "COMPLETED"
    image = image_at(result(sim_url, request_id).json()["output"])
    assert (image.format, image.size) == ("JPEG", (640, 512))
    (entry,) = stats(sim_url)["log"]
    assert (entry["api"], entry["request_id"], entry["subject"]) == ("v2", request_id, None)


def test_several_images_come_as_a_list_of_urls(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    request_id = accepted(submit(sim_url, json=body(assets_url, number_of_images=2)))
    wait_final(sim_url, request_id)
    payload = result(sim_url, request_id).json()
    assert isinstance(payload["output"], list)
    assert len(set(payload["output"])) == 2
    for url in payload["output"]:
        image = image_at(url)
        assert (image.format, image.size) == ("WEBP", (256, 320))
    assert payload["metrics"]["cost"] == pytest.approx(2 * 0.037)
    assert sim_state.credits == pytest.approx(100 - 2 * 0.037)
    assert stats(sim_url)["log"][0]["images"] == 2


def test_outputs_outlive_the_v1_output_pool(
    sim_url: str, assets_url: str, sim_state: SimulatorState, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = accepted(submit(sim_url, json=body(assets_url)))
    wait_final(sim_url, request_id)
    url = result(sim_url, request_id).json()["output"]
    # v1 "url" mode outputs push the oldest of their own pool out; never a v2 output.
    monkeypatch.setattr(state_module, "OUTPUT_LIMIT", 1)
    sim_state.multi_image_mode = "url"
    many = body(assets_url, number_of_images=3)
    v1 = httpx.post(f"{sim_url}/v1/ic-light", headers=KEY, json=many)
    assert v1.status_code == 200, v1.text
    assert httpx.get(v1.json()["images"][0]).status_code == 404  # the v1 pool did evict
    assert image_at(url).size == (256, 320)


def test_concurrent_submits_never_overdraw_the_balance(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.credits, sim_state.latency = 0.1, 0.3  # pays for two images at 0.037
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: submit(sim_url, json=body(assets_url)), range(6)))
    assert sorted(a.status_code for a in answers) == [200, 200, 406, 406, 406, 406]
    assert sim_state.credits == pytest.approx(0.1 - 2 * 0.037)
    assert len(sim_state.requests) == 2


def test_answers_406_at_submit_when_the_balance_is_short(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.credits = 0.05  # one image at 0.037, not two
    response = submit(sim_url, json=body(assets_url, number_of_images=2))
    assert response.status_code == 406
    assert response.json() == {"error": "Not enough credits"}
    assert "x-remaining-credits" not in response.headers
    assert (sim_state.credits, sim_state.requests) == (0.05, {})
    assert stats(sim_url)["by_status"] == {"406": 1}


def test_answers_401_without_a_valid_key_on_submit_and_polls(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    for headers in ({}, {"x-api-key": ""}):
        refused = submit(sim_url, headers=headers, json=body(assets_url))
        assert refused.status_code == 401
        assert "error" in refused.json()
    request_id = accepted(submit(sim_url, json=body(assets_url)))
    sim_state.valid_keys = {"good-key"}
    for headers in ({}, {"x-api-key": "bad-key"}):
        assert status(sim_url, request_id, headers).status_code == 401
        assert result(sim_url, request_id, headers).status_code == 401
    assert status(sim_url, request_id, {"x-api-key": "good-key"}).status_code in (200, 422)
    assert sim_state.credits == pytest.approx(99.963)  # the refused submits cost nothing


def test_answers_429_at_submit_beyond_the_per_minute_limit_and_polls_are_free(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.rate_limit_per_minute = 2
    answers = [submit(sim_url, json=body(assets_url)) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert "x-rate-limit-reset-at-utc" in answers[2].headers
    assert answers[2].json() == {"error": "Rate limit exceeded"}
    # Polling does not spend the per-minute allowance.
    request_id = accepted(answers[0])
    for _ in range(5):
        assert status(sim_url, request_id).status_code == 200
    assert len(sim_state.requests) == 2


@pytest.mark.parametrize(
    ("setting", "code", "header"),
    [("fail_500_rate", 500, None), ("rate_429_rate", 429, "x-rate-limit-reset-at-utc")],
)
def test_injected_submit_faults_refuse_the_submit(
    sim_url: str,
    assets_url: str,
    sim_state: SimulatorState,
    setting: str,
    code: int,
    header: str | None,
) -> None:
    setattr(sim_state, setting, 1.0)
    response = submit(sim_url, json=body(assets_url))
    assert response.status_code == code
    assert "error" in response.json()
    if header:
        assert header in response.headers
    assert (sim_state.credits, sim_state.requests) == (100.0, {})


def test_answers_422_at_submit_for_invalid_parameters(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    response = submit(sim_url, json=body(assets_url, cfg=40, light_source="Sideways"))
    assert response.status_code == 422
    message = response.json()["error"]
    assert "cfg" in message and "light_source" in message
    missing = submit(sim_url, json={"prompt": "x"})
    assert missing.status_code == 422
    assert "subject_image" in missing.json()["error"]
    assert (sim_state.credits, sim_state.requests) == (100.0, {})
    assert stats(sim_url)["by_status"] == {"422": 2}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("missing.png", "Could not fetch subject_image: HTTP 404"),
        ("notes.txt", "subject_image is not an image Pillow can decode"),
    ],
)
def test_a_bad_subject_ends_failed_on_http_422_and_is_refunded(
    sim_url: str, assets_url: str, sim_state: SimulatorState, path: str, expected: str
) -> None:
    response = submit(sim_url, json=body(assets_url, subject_image=f"{assets_url}/{path}"))
    request_id = accepted(response)  # the subject is only fetched after the submit
    assert response.headers["x-remaining-credits"] == "99.963"
    error = assert_failed(wait_final(sim_url, request_id), request_id)
    assert error.startswith(expected)
    assert assert_failed(result(sim_url, request_id), request_id) == error
    assert sim_state.credits == 100.0
    (entry,) = stats(sim_url)["log"]
    assert (entry["status"], entry["images"]) == (422, 0)
    assert entry["subject"] == f"{assets_url}/{path}"


def test_failed_rate_one_fails_every_request_with_failed_error(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.failed_rate = 1.0
    first = accepted(submit(sim_url, json=body(assets_url)))
    assert assert_failed(wait_final(sim_url, first), first) == DEFAULT_FAILED_ERROR
    sim_state.failed_error = "Model overloaded"
    second = accepted(submit(sim_url, json=body(assets_url)))
    assert assert_failed(wait_final(sim_url, second), second) == "Model overloaded"
    assert sim_state.credits == 100.0
    assert stats(sim_url)["by_status"] == {"422": 2}


def test_failed_rate_zero_fails_none(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    ids = [accepted(submit(sim_url, json=body(assets_url))) for _ in range(3)]
    assert [wait_final(sim_url, i).status_code for i in ids] == [200] * 3


def test_timeout_rate_fails_the_request_after_timeout_seconds(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.timeout_rate, sim_state.timeout_seconds = 1.0, 0.5
    started = time.monotonic()
    request_id = accepted(submit(sim_url, json=body(assets_url)))
    assert time.monotonic() - started < 0.4  # the submit itself answers at once
    final = wait_final(sim_url, request_id)
    assert time.monotonic() - started >= 0.5
    assert assert_failed(final, request_id) == "Inference timed out"
    assert final.json()["metrics"]["total_time"] >= 0.5
    assert sim_state.credits == 100.0


def test_unknown_ids_answer_404(sim_url: str) -> None:
    for request_id in (str(uuid.uuid4()), "not-a-uuid"):
        for answer in (status(sim_url, request_id), result(sim_url, request_id)):
            assert answer.status_code == 404
            assert answer.json() == {"error": f"Request {request_id} not found"}


def test_forget_makes_requests_404_and_a_pending_one_stays_charged(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    done = accepted(submit(sim_url, json=body(assets_url)))
    wait_final(sim_url, done)
    sim_state.latency = 5.0
    pending, kept = (accepted(submit(sim_url, json=body(assets_url))) for _ in range(2))
    output = result(sim_url, done).json()["output"]
    task = sim_state.requests[pending].task
    assert task is not None

    forgot = httpx.post(f"{sim_url}/admin/forget", json={"request_ids": [done, pending, "x"]})
    assert forgot.json() == {"forgotten": 2}
    for request_id in (done, pending):
        assert status(sim_url, request_id).status_code == 404
        assert result(sim_url, request_id).status_code == 404
    assert httpx.get(output).status_code == 404  # its output went with it
    deadline = time.monotonic() + 2
    while not task.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert task.cancelled()  # its work stopped rather than running on for nobody
    assert status(sim_url, kept).json()["status"] == "PROCESSING"
    assert sim_state.credits == pytest.approx(100 - 3 * 0.037)  # no refund for the lost one
    snapshot = stats(sim_url)
    assert snapshot["in_flight"] == 1  # the forgotten one stopped; `kept` still runs
    assert [e["status"] for e in snapshot["log"]] == [200, 404, 0]

    assert httpx.post(f"{sim_url}/admin/forget").json() == {"forgotten": 1}
    assert status(sim_url, kept).status_code == 404
    assert (stats(sim_url)["in_flight"], sim_state.requests) == (0, {})
    assert httpx.post(f"{sim_url}/admin/forget", json={"request_ids": 3}).status_code == 422


def test_a_request_expires_request_ttl_seconds_after_it_ends(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.request_ttl_seconds = 1.0
    sim_state.latency = 0.5
    request_id = accepted(submit(sim_url, json=body(assets_url)))
    time.sleep(1.2)  # longer than the TTL, but the request ended only 0.7 s ago
    assert status(sim_url, request_id).json()["status"] == "COMPLETED"
    output = result(sim_url, request_id).json()["output"]
    time.sleep(0.5)
    assert status(sim_url, request_id).status_code == 404
    assert result(sim_url, request_id).status_code == 404
    assert httpx.get(output).status_code == 404


def test_expired_requests_and_outputs_are_dropped_without_any_further_call(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    ids = [accepted(submit(sim_url, json=body(assets_url, number_of_images=2))) for _ in range(5)]
    for request_id in ids:
        wait_final(sim_url, request_id)
    assert len(sim_state.request_outputs) > 0
    # Shortened only once every request has ended: a TTL shorter than a slow
    # machine's polling would drop a request before the test saw it end.
    sim_state.request_ttl_seconds = 0.2
    deadline = time.monotonic() + 5  # the background sweep runs every second
    while (sim_state.requests or sim_state.request_outputs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (sim_state.requests, sim_state.request_outputs) == ({}, {})


def test_final_requests_beyond_the_limit_are_dropped_oldest_first(
    sim_url: str, assets_url: str, sim_state: SimulatorState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "FINAL_REQUEST_LIMIT", 3)
    ids = []
    for _ in range(5):
        ids.append(accepted(submit(sim_url, json=body(assets_url))))
        wait_final(sim_url, ids[-1])
    assert [status(sim_url, i).status_code for i in ids] == [404, 404, 200, 200, 200]
    assert len(sim_state.requests) == 3
    assert len(sim_state.request_outputs) == 3


def test_stats_count_pending_requests_as_in_flight_and_count_polls_by_api(
    sim_url: str, assets_url: str, sim_state: SimulatorState
) -> None:
    sim_state.latency = 0.6
    ids = [accepted(submit(sim_url, json=body(assets_url))) for _ in range(3)]
    busy = stats(sim_url)
    assert (busy["in_flight"], busy["peak_concurrency"], busy["calls"]) == (3, 3, 3)
    assert busy["max_calls_per_minute"] == 3
    assert submit(sim_url, headers={}, json=body(assets_url)).status_code == 401
    v1 = httpx.post(f"{sim_url}/v1/ic-light", headers=KEY, json=body(assets_url), timeout=10)
    assert v1.status_code == 200
    for request_id in ids:
        wait_final(sim_url, request_id)
    polls_before = stats(sim_url)["polls"]
    result(sim_url, ids[0])
    status(sim_url, str(uuid.uuid4()))  # a 404 is a poll too

    snapshot = stats(sim_url)
    assert snapshot["polls"] == polls_before + 2
    assert snapshot["by_api"] == {"v1": 1, "v2": 4}
    assert (snapshot["calls"], snapshot["in_flight"]) == (5, 0)
    assert snapshot["peak_concurrency"] == 4  # three pending requests and the v1 call
    assert snapshot["by_status"] == {"200": 4, "401": 1}
    v2_log = [e for e in snapshot["log"] if e["api"] == "v2"]
    assert [e["request_id"] for e in v2_log] == [*ids, None]
    assert [e["status"] for e in v2_log] == [200, 200, 200, 401]
    assert all(e["finished_at"] - e["started_at"] >= 0.6 for e in v2_log[:3])
    assert v2_log[0]["subject"] == f"{assets_url}/subject.png"
    (v1_entry,) = [e for e in snapshot["log"] if e["api"] == "v1"]
    assert v1_entry["subject"] == f"{assets_url}/subject.png"

    cleared = httpx.post(f"{sim_url}/admin/reset").json()
    assert (cleared["polls"], cleared["by_api"], cleared["calls"]) == (0, {"v1": 0, "v2": 0}, 0)


def test_config_accepts_and_validates_the_v2_settings(sim_url: str) -> None:
    update = {"failed_rate": 0.25, "failed_error": "GPU lost", "request_ttl_seconds": 60}
    config = httpx.post(f"{sim_url}/admin/config", json=update)
    assert config.status_code == 200
    assert {k: config.json()[k] for k in update} == update
    for bad in ({"failed_rate": 1.5}, {"request_ttl_seconds": -1}, {"failed_error": ""}):
        assert httpx.post(f"{sim_url}/admin/config", json=bad).status_code == 422


def test_banner_lists_the_v2_routes(sim_url: str) -> None:
    endpoints = httpx.get(f"{sim_url}/").json()["endpoints"]
    for route in (
        "POST /v2/ic-light",
        "GET /v2/requests/{id}/status",
        "GET /v2/requests/{id}",
        "POST /admin/forget",
    ):
        assert route in endpoints
