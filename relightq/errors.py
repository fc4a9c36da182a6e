"""One error type carrying an HTTP status, rendered by the API as a stable JSON shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FieldProblem:
    """One bad input field: where it is, what is wrong, what would be accepted."""

    field: str
    message: str
    allowed: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"field": self.field, "message": self.message, "allowed": self.allowed}


@dataclass
class RelightqError(Exception):
    """Base error; the API answers ``status`` with ``{"error": {code, message, fields}}``."""

    message: str
    status: int = 400
    code: str = "bad_request"
    fields: list[FieldProblem] = field(default_factory=list)
    # Extra response headers, e.g. Retry-After on a 429.
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


class NotFound(RelightqError):
    """The thing does not exist, or belongs to another tenant (we do not say which)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found", 404, "not_found")


class Unauthorized(RelightqError):
    """No API key, or one that is unknown or revoked."""

    def __init__(self) -> None:
        super().__init__(
            "a valid API key is required (Authorization: Bearer <key> or x-api-key)",
            401,
            "unauthorized",
        )


class InvalidInput(RelightqError):
    """Input failed validation; every offending field is listed."""

    def __init__(self, fields: list[FieldProblem]) -> None:
        names = ", ".join(p.field for p in fields)
        super().__init__(f"invalid input: {names}", 422, "validation_error", fields)


def field_problems(errors: Any, allowed: dict[str, str]) -> list[FieldProblem]:
    """Pydantic/FastAPI error dicts as FieldProblems, one per field, with allowed values."""
    problems: dict[str, FieldProblem] = {}
    for error in errors:
        loc = [
            str(part)
            for part in error.get("loc", ())
            if part not in ("body", "query", "path", "header")
        ]
        name = ".".join(loc) or "body"
        if error.get("type") == "json_invalid":
            name = "body"  # FastAPI locates a JSON syntax error by character offset
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "missing":
            message = "is required"
        elif error.get("type") == "extra_forbidden":
            message = "is not a known field"
        top = loc[0] if loc else name
        if name not in problems:
            problems[name] = FieldProblem(name, message, allowed.get(top))
    return list(problems.values())


class RateLimited(RelightqError):
    """Too many requests for one API key (or trigger); Retry-After says when to come back."""

    def __init__(self, limit: str, retry_after: int, per: str = "API key") -> None:
        super().__init__(
            f"rate limit of {limit} per {per} exceeded; retry in {retry_after} s",
            429,
            "rate_limited",
            headers={"Retry-After": str(retry_after)},
        )


NUL_MESSAGE = "must not contain NUL (\\u0000) characters"


def nul_field(value: Any, path: str = "") -> str | None:
    """The dotted path of the first key or string holding a NUL character, or None."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return here.replace("\x00", "\\u0000")
            found = nul_field(item, here)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_field(item, f"{path}[{index}]" if path else f"[{index}]")
            if found:
                return found
    return None
