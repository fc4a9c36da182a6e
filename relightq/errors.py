"""One error type carrying an HTTP status, rendered by the API as a stable JSON shape."""

from __future__ import annotations

import re
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
SURROGATE_MESSAGE = (
    "must not contain unpaired UTF-16 surrogates (\\ud800 to \\udfff): they are not text"
)
# PostgreSQL cannot store NUL. A lone surrogate (json.loads turns a "\udfff" escape, or
# bytes decoded with surrogatepass, into one) is no Unicode character at all: it cannot be
# encoded as UTF-8 to be stored, hashed, sent on, or even echoed back in an error.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_message(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None when it can."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    return NUL_MESSAGE if found.group() == "\x00" else SURROGATE_MESSAGE


def shown(text: str) -> str:
    """``text`` with its NULs and surrogates as JSON escapes: fit to name a field by."""
    return UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def unstorable_field(value: Any, path: str = "", whole: str = "body") -> FieldProblem | None:
    """The first key or string (in document order) holding NUL or a lone surrogate, as a
    problem named by its dotted path below ``path`` (``whole`` names a bare string)."""
    if isinstance(value, str):
        message = unstorable_message(value)
        return None if message is None else FieldProblem(path or whole, message)
    if isinstance(value, dict):
        for key, item in value.items():
            text = str(key)
            here = f"{path}.{shown(text)}" if path else shown(text)
            message = unstorable_message(text)
            if message is not None:
                return FieldProblem(here, message)
            found = unstorable_field(item, here)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = unstorable_field(item, f"{path}[{index}]" if path else f"[{index}]")
            if found:
                return found
    return None


def storable(value: Any) -> Any:
    """``value`` with NUL dropped from its keys and strings and each lone surrogate made
    U+FFFD: for text a sender cannot be asked to fix. A surrogate is replaced rather than
    dropped so that removing it cannot join two pieces of text into a new word."""
    if isinstance(value, str):
        return UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", value)
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    return value
