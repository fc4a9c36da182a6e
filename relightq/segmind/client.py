"""A synchronous httpx client for Segmind IC-Light, v1 and v2 (docs/reference/upstream.md).

Why not Segmind's official SDK (``segmind`` on PyPI): relightq decides what to do from
what the SDK hides. ``run_sync`` raises on any non-2xx with the status and text only,
and neither it nor ``submit_async`` exposes the response headers that drive the fleet
(``x-remaining-credits`` for the credit reserve, ``x-rate-limit-reset-at-utc`` for a
429's hold); ``AsyncJob.wait`` blocks a thread sleeping between polls, which is what v2
mode exists to avoid; and it sends the key to whatever host a status URL names. The
wire format is small (one POST, two GETs), so it lives here, tested against the
simulator; the SDK itself is tested against relightq's compatible endpoint instead.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from relightq.credits.amounts import exact
from relightq.logs import redact
from relightq.netguard import BlockedAddress, GuardedTransport
from relightq.segmind.errors import (
    SegmindError,
    SegmindOutOfCredits,
    SegmindRateLimited,
    SegmindRejected,
    SegmindRequestFailed,
    SegmindRequestLost,
    SegmindUnauthorized,
    SegmindUnavailable,
    failure_is_transient,
)
from relightq.segmind.params import RelightParams

RELIGHT_PATH = "/v1/ic-light"
SUBMIT_PATH = "/v2/ic-light"
REQUESTS_PATH = "/v2/requests"
CREDITS_PATH = "/v1/get-user-credits"
PERMANENT_STATUSES = frozenset({400, 403, 404, 405, 409, 410, 413, 415, 422})
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class SubjectUpload:
    """Image bytes sent as a multipart file, for inputs Segmind cannot fetch itself."""

    data: bytes
    filename: str
    content_type: str


@dataclass(frozen=True)
class RelitImage:
    """One output image."""

    data: bytes
    content_type: str


@dataclass(frozen=True)
class RelightResult:
    """The images of one call and the balance Segmind reported after it."""

    images: list[RelitImage]
    remaining_credits: Decimal | None


@dataclass(frozen=True)
class UpstreamRequest:
    """A v2 request Segmind accepted: the receipt a job keeps until it is collected."""

    request_id: str
    status_url: str
    response_url: str
    remaining_credits: Decimal | None = None


@dataclass(frozen=True)
class RequestState:
    """A v2 request's status: QUEUED, PROCESSING or COMPLETED (FAILED raises)."""

    status: str

    @property
    def done(self) -> bool:
        """True once the outputs can be fetched."""
        return self.status == "COMPLETED"


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG or WebP bytes, from their magic numbers."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def parse_reset_at(value: str | None) -> datetime | None:
    """``x-rate-limit-reset-at-utc`` as a datetime: ISO 8601, or epoch seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _error_message(response: httpx.Response, api_key: str = "") -> str:
    """Segmind's ``{"error": ...}`` text, or a short form of an HTML or text body, with
    secrets redacted: it becomes a job's error and the fleet's pause reason, which every
    tenant sees, and an upstream (or a proxy) may echo the key it was sent.

    Redacted before it is shortened, so a cut cannot leave part of a key behind.
    """
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("error"):
            return redact(str(body["error"]), api_key)[:1000]
    except (ValueError, RecursionError):  # not JSON, or too deep to parse: use the text
        pass
    text = redact(re.sub(r"<[^>]+>", " ", response.text), api_key)
    text = " ".join(text.split())[:300]
    return text or response.reason_phrase or f"HTTP {response.status_code}"


def origin_of(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    return url.scheme, url.host.lower(), url.port or DEFAULT_PORTS.get(url.scheme)


def shown_origin(url: httpx.URL) -> str:
    """An origin as a URL prefix, for messages."""
    scheme, host, port = origin_of(url)
    return f"{scheme}://{host}:{port}"


class OriginOnlyTransport(httpx.HTTPTransport):
    """An httpx transport that sends requests to one origin only, refusing any other
    (a redirect hop included) with BlockedAddress before connecting."""

    def __init__(self, origin: httpx.URL) -> None:
        super().__init__()
        self._origin = origin_of(origin)
        self._shown = shown_origin(origin)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` if it is for the origin."""
        if origin_of(request.url) != self._origin:
            raise BlockedAddress(
                f"{shown_origin(request.url)} is not the upstream's origin {self._shown}; "
                "outputs are fetched from the upstream itself only"
            )
        return super().handle_request(request)


class SegmindClient:
    """Calls IC-Light and maps every answer to a result or a typed SegmindError."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 120.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._download_client: httpx.Client | None = None
        self._cdn_client: httpx.Client | None = None
        self._api_key = api_key
        # Connect fails fast; the read timeout covers a ~30 s generation with room to spare.
        self._http = http or httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    def _downloads(self) -> httpx.Client:
        # Output URLs come from the upstream's answer, so they are fetched from the
        # upstream's own origin only (scheme, host and port of the base URL called), on
        # every redirect hop too: another port of its host may be an admin or metadata
        # service that the host's trust must not extend to. No other host is allowed,
        # public or not. Segmind documents v1 IC-Light as answering the image bytes; a
        # JSON list of URLs is tolerated only as an undocumented multi-image form, and the
        # one upstream known to answer one (the simulator) serves them from its own origin.
        # Segmind's CDN URLs belong to its v2 queue API, which this client does not call.
        # Should v1 ever hand out CDN URLs, name those origins here explicitly.
        if self._download_client is None:
            self._download_client = httpx.Client(
                transport=OriginOnlyTransport(httpx.URL(self._base_url)),
                follow_redirects=True,
                max_redirects=5,
                timeout=httpx.Timeout(60.0, connect=10.0),
            )
        return self._download_client

    def close(self) -> None:
        """Release pooled connections."""
        self._http.close()
        if self._download_client is not None:
            self._download_client.close()
        if self._cdn_client is not None:
            self._cdn_client.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"x-api-key": self._api_key}
        try:
            url = path if path.startswith(("http://", "https://")) else self._base_url + path
            return self._http.request(method, url, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise SegmindUnavailable(
                f"Segmind did not answer in time ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise SegmindUnavailable(f"could not reach Segmind ({type(exc).__name__})") from exc

    def _post_request(
        self, path: str, params: RelightParams, subject: str | SubjectUpload
    ) -> httpx.Response:
        """An IC-Light request (v1's call or v2's submit): JSON for a URL subject,
        multipart bytes for an upload; a non-2xx answer raises its SegmindError."""
        fields = params.upstream_fields()
        if isinstance(subject, str):
            response = self._request("POST", path, json={**fields, "subject_image": subject})
        else:
            files = {"subject_image": (subject.filename, subject.data, subject.content_type)}
            data = {name: str(value) for name, value in fields.items()}
            response = self._request("POST", path, data=data, files=files)
        raise_for_status(response, self._api_key)
        return response

    def relight(self, params: RelightParams, subject: str | SubjectUpload) -> RelightResult:
        """One IC-Light call: JSON for a URL subject, multipart bytes for an upload."""
        response = self._post_request(RELIGHT_PATH, params, subject)
        images = self._images(response)
        if not images:
            raise SegmindUnavailable("Segmind answered 200 without an image")
        return RelightResult(images, _remaining_credits(response))

    def submit(self, params: RelightParams, subject: str | SubjectUpload) -> UpstreamRequest:
        """v2: put one IC-Light request in Segmind's queue; answers at once with its id.

        Each accepted submit is a new billable request (Segmind has no idempotency key):
        the caller must record the id before anything else, and never submit twice.
        """
        response = self._post_request(SUBMIT_PATH, params, subject)
        try:
            body = response.json()
            request_id = str(body["request_id"])
        except (ValueError, KeyError, TypeError) as exc:
            # Accepted (and maybe billed) but unreadable: nothing to poll. Transient, and
            # the one case where a retry may pay twice; it has never been seen.
            raise SegmindUnavailable("Segmind accepted a v2 submit without a request_id") from exc
        return UpstreamRequest(
            request_id,
            self._own_url(body.get("status_url"), f"{REQUESTS_PATH}/{request_id}/status"),
            self._own_url(body.get("response_url"), f"{REQUESTS_PATH}/{request_id}"),
            _remaining_credits(response),
        )

    def _own_url(self, given: Any, fallback_path: str) -> str:
        # The key goes with every poll: only ever to the upstream's own origin. A URL
        # naming another host is replaced by the documented path on the base URL.
        if isinstance(given, str):
            try:
                if origin_of(httpx.URL(given)) == origin_of(httpx.URL(self._base_url)):
                    return given
            except (httpx.InvalidURL, TypeError):
                pass
        return self._base_url + fallback_path

    def _get_request(self, url: str) -> tuple[httpx.Response, dict[str, Any]]:
        if origin_of(httpx.URL(url)) != origin_of(httpx.URL(self._base_url)):
            raise SegmindRejected("a v2 request URL is not on the upstream's origin")
        response = self._request("GET", url)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        if body.get("status") == "FAILED":
            # Under HTTP 422 (or any code): the request ran and failed, unbilled.
            error = redact(str(body.get("error") or "the request failed"), self._api_key)
            raise SegmindRequestFailed(error[:1000], transient=failure_is_transient(error))
        if response.status_code == 404:
            raise SegmindRequestLost(_error_message(response, self._api_key), 404)
        raise_for_status(response, self._api_key)
        return response, body

    def status(self, request: UpstreamRequest) -> RequestState:
        """v2: where the request is; raises SegmindRequestFailed on FAILED and
        SegmindRequestLost when Segmind no longer knows it. Free, and safe to repeat."""
        _, body = self._get_request(request.status_url)
        state = str(body.get("status") or "").upper()
        if state not in ("QUEUED", "PROCESSING", "COMPLETED"):
            raise SegmindUnavailable(f"unreadable v2 status {state or '(none)'!r}")
        return RequestState(state)

    def result(self, request: UpstreamRequest) -> RelightResult:
        """v2: the images of a COMPLETED request (fetched from its output URLs)."""
        response, body = self._get_request(request.response_url)
        if str(body.get("status") or "").upper() != "COMPLETED":
            raise SegmindUnavailable("the v2 response was fetched before the request completed")
        output = body.get("output")
        items = output if isinstance(output, list) else [output]
        images = [self._decode(item, cdn=True) for item in items]
        if not images:
            raise SegmindUnavailable("Segmind completed a request without an image")
        remaining = _remaining_credits(response)
        metrics = body.get("metrics")
        if remaining is None and isinstance(metrics, dict):
            try:
                remaining = _amount(metrics["remaining_credits"])
            except (KeyError, TypeError):
                remaining = None
        return RelightResult(images, remaining)

    def _cdn(self) -> httpx.Client:
        # v2 outputs live on Segmind's file store, a host of its own: any public address
        # (checked on every connection and redirect, like webhooks), or the upstream's
        # own host; never a private one, which only a forged answer could name.
        if self._cdn_client is None:
            self._cdn_client = httpx.Client(
                transport=GuardedTransport(frozenset({httpx.URL(self._base_url).host})),
                follow_redirects=True,
                max_redirects=5,
                timeout=httpx.Timeout(60.0, connect=10.0),
            )
        return self._cdn_client

    def get_credits(self) -> Decimal:
        """The account's balance; this endpoint is free."""
        response = self._request("GET", CREDITS_PATH)
        raise_for_status(response, self._api_key)
        try:
            credits = _amount(response.json()["credits"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SegmindUnavailable("unreadable answer from get-user-credits") from exc
        if credits is None:
            raise SegmindUnavailable("unreadable answer from get-user-credits")
        return credits

    def _images(self, response: httpx.Response) -> list[RelitImage]:
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if content_type.startswith("image/"):
            return [RelitImage(response.content, content_type)]
        # How v1 returns several images is undocumented: accept a JSON list of
        # URLs or base64 strings under the usual keys, or a bare list.
        try:
            body = response.json()
        except ValueError as exc:
            sniffed = sniff_image_type(response.content)
            if sniffed:
                return [RelitImage(response.content, sniffed)]
            raise SegmindUnavailable("Segmind answered 200 with neither an image nor JSON") from exc
        return [self._decode(item) for item in _image_items(body)]

    def _decode(self, item: Any, *, cdn: bool = False) -> RelitImage:
        if isinstance(item, dict):
            item = item.get("url") or item.get("image") or item.get("base64") or item.get("data")
        if not isinstance(item, str) or not item:
            raise SegmindUnavailable("Segmind answered an image entry that is not a string")
        if item.startswith(("http://", "https://")):
            try:
                fetched = (self._cdn() if cdn else self._downloads()).get(item)
            except BlockedAddress as exc:
                # Not transient, and a retry would pay for the images again.
                raise SegmindRejected(f"an output URL is not allowed: {exc}") from exc
            except httpx.HTTPError as exc:
                raise SegmindUnavailable(
                    f"could not download an output ({type(exc).__name__})"
                ) from exc
            if fetched.status_code != 200:
                raise SegmindUnavailable(f"output download answered {fetched.status_code}")
            data = fetched.content
        else:
            if item.startswith("data:"):
                item = item.partition(",")[2]
            try:
                data = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise SegmindUnavailable("Segmind answered an image that is not base64") from exc
        content_type = sniff_image_type(data)
        if content_type is None:
            raise SegmindUnavailable("Segmind answered an entry that is not a PNG, JPEG or WebP")
        return RelitImage(data, content_type)


def _image_items(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("images", "image", "output", "outputs", "data"):
            value = body.get(key)
            if isinstance(value, list):
                return value
            if isinstance(value, str):
                return [value]
    raise SegmindUnavailable("Segmind answered JSON without images")


def _remaining_credits(response: httpx.Response) -> Decimal | None:
    return _amount(response.headers.get("x-remaining-credits"))


def _amount(value: object) -> Decimal | None:
    """A balance as Segmind wrote it (header text or JSON number), exactly; else None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        credits = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except ArithmeticError:
        return None
    return exact(credits) if credits.is_finite() else None


def raise_for_status(response: httpx.Response, api_key: str = "") -> None:
    """Map a non-2xx answer to the SegmindError subclass that decides what happens next;
    ``api_key`` (the one sent) is redacted from its message, as is the configured key."""
    status = response.status_code
    if status < 300:
        return
    message = _error_message(response, api_key)
    error: SegmindError
    if status == 401:
        error = SegmindUnauthorized(message, status)
    elif status == 406 and "credit" in message.lower():
        error = SegmindOutOfCredits(message, status)
    elif status == 429:
        error = SegmindRateLimited(
            message, parse_reset_at(response.headers.get("x-rate-limit-reset-at-utc"))
        )
    elif status >= 500 or status == 408:
        error = SegmindUnavailable(message, status)
    else:
        error = SegmindRejected(message, status)
    raise error
