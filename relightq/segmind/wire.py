"""Segmind's IC-Light request and error format as a server sees it.

Shared by the simulator (which stands in for Segmind) and the Segmind-compatible
endpoint (which stands in front of it), so both accept exactly what Segmind accepts and
refuse the rest in Segmind's words and status codes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, ImageOps
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from relightq.errors import InvalidInput, unstorable_field
from relightq.json_input import parse_json
from relightq.segmind.params import ALLOWED, RelightParams

# What the upstream's front server answers a wrong method with: an HTML page, not JSON.
METHOD_NOT_ALLOWED_HTML = (
    "<html><head><title>405 Not Allowed</title></head>"
    "<body><center><h1>405 Not Allowed</h1></center><hr><center>relightq simulator</center>"
    "</body></html>"
)


def routing_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """A routing or protocol error (unknown path, wrong method, body too large) as the
    upstream answers it."""
    if status == 404:
        return JSONResponse({"error": "Not found"}, 404)
    if status == 405:
        return HTMLResponse(METHOD_NOT_ALLOWED_HTML, 405, headers=headers)
    return JSONResponse({"error": message}, status, headers=headers)


class SubjectImageError(ValueError):
    """The subject image bytes are not an image Pillow can decode."""


def decode_subject(data: bytes) -> Image.Image:
    """Decode and fully load the subject as RGBA, or raise SubjectImageError."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            return upright.convert("RGBA")
    except Exception as exc:  # Pillow raises many types for bad input; all mean "not an image"
        raise SubjectImageError(
            f"subject_image is not an image Pillow can decode ({type(exc).__name__})"
        ) from exc


class Reject(Exception):
    """An early error answer; the handler turns it into `{"error": message}`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers

    def response(self) -> JSONResponse:
        """The JSON error response for this rejection."""
        return JSONResponse({"error": self.message}, self.status, headers=self.headers)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(exc: ValidationError) -> list[str]:
    problems: dict[str, str] = {}
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "body"
        if field in problems:
            continue  # one message per field is enough
        allowed = ALLOWED.get(field, "")
        if err["type"] == "extra_forbidden":
            problems[field] = f"{field} is not a known field"
        elif err["type"] == "missing":
            problems[field] = f"{field} is required: {allowed}"
        else:
            problems[field] = f"{field} must be {allowed} (got {_short(err.get('input'))})"
    return list(problems.values())


async def parse_request(request: Request) -> tuple[RelightParams, str | bytes]:
    """The fields of a JSON or multipart IC-Light request, and its subject (URL or bytes)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, Any] = {}
    if media == "application/json":
        try:
            body = parse_json(await request.body(), "body", document=True)
        except InvalidInput as exc:
            bad = exc.fields[0]
            if bad.field == "body":
                raise Reject(422, f"The JSON body {bad.message}") from exc
            raise Reject(422, f"Invalid parameters: {bad.field} {bad.message}") from exc
        if not isinstance(body, dict):
            raise Reject(422, "JSON body must be an object")
        fields = dict(body)
    elif media == "multipart/form-data":
        try:
            async with request.form() as form:
                for key, value in form.multi_items():
                    fields[key] = await value.read() if isinstance(value, UploadFile) else value
        except Exception as exc:  # malformed multipart surfaces as several Starlette types
            raise Reject(422, f"Invalid multipart body: {exc}") from exc
        # Decoded with whatever charset the request names (utf-7 can spell a lone
        # surrogate): its names and text are checked as JSON text is.
        texts = {name: value if isinstance(value, str) else "" for name, value in fields.items()}
        if problem := unstorable_field(texts):
            raise Reject(422, f"Invalid parameters: {problem.field} {problem.message}")
    else:
        shown = media or "(none)"
        raise Reject(
            406, f"Invalid content type {shown}: use application/json or multipart/form-data"
        )

    subject = fields.pop("subject_image", None)
    problems: list[str] = []
    params: RelightParams | None = None
    try:
        params = RelightParams.model_validate(fields)
    except ValidationError as exc:
        problems = _describe(exc)
    if subject is None or subject in ("", b""):
        problems.append("subject_image is required: an http(s) URL or an uploaded image file")
    elif isinstance(subject, str) and not subject.startswith(("http://", "https://")):
        problems.append(
            f"subject_image must be an http(s) URL or a file upload (got {_short(subject)})"
        )
    elif not isinstance(subject, str | bytes):
        problems.append("subject_image must be an http(s) URL or a file upload")
    if problems or params is None:
        raise Reject(422, "Invalid parameters: " + "; ".join(problems))
    return params, subject
