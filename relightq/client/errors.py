"""What the client raises when the API answers an error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from relightq.client.retry import retry_after_seconds


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of a request, as the API names it.

    ``field`` is a dotted path such as ``light_source`` or ``rows[2].light_source``;
    ``allowed`` says what the field accepts, when the API says so.
    """

    field: str
    message: str
    allowed: str | None = None


class RelightqAPIError(Exception):
    """The API answered with an error status.

    Every relightq error body is ``{"error": {"code", "message", "fields"}}``; its parts
    are here, with the HTTP status and the ``Retry-After`` the API asked for (seconds).
    An answer without that shape (a gateway's HTML page during a restart, say) has
    ``code`` None and its text, cut to 500 characters, in ``message``.
    """

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        fields: list[FieldError] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []
        self.retry_after = retry_after
        super().__init__(f"{message} (HTTP {status}" + (f", {code})" if code else ")"))

    @property
    def is_json(self) -> bool:
        """Whether the answer had the API's JSON error shape (else it came from elsewhere,
        e.g. a proxy in front of the API)."""
        return self.code is not None


def _field_error(problem: Any) -> FieldError:
    if not isinstance(problem, dict):
        return FieldError(str(problem), "")
    allowed = problem.get("allowed")
    return FieldError(
        str(problem.get("field")),
        str(problem.get("message") or ""),
        None if allowed is None else str(allowed),
    )


def error_from_response(response: httpx.Response) -> RelightqAPIError:
    """The RelightqAPIError an error answer stands for (its body must have been read)."""
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return RelightqAPIError(
            response.status_code, None, response.text[:500], retry_after=retry_after
        )
    fields = error.get("fields")
    return RelightqAPIError(
        response.status_code,
        error["code"],
        str(error.get("message") or "request failed"),
        [_field_error(p) for p in fields] if isinstance(fields, list) else [],
        retry_after,
    )
