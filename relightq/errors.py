"""The error catalogue: one root carrying an HTTP status and a code, one named subclass per
condition, rendered by the API as a stable JSON shape."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class FieldProblem:
    """One bad input field: where it is, what is wrong, what would be accepted."""

    field: str
    message: str
    allowed: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"field": self.field, "message": self.message, "allowed": self.allowed}


class RelightqError(Exception):
    """The one root of the errors the API answers: each subclass is one condition, with a
    fixed ``code`` and HTTP ``status``, answered as ``{"error": {code, message, fields}}``."""

    code: ClassVar[str] = "bad_request"
    status: ClassVar[int] = 400

    def __init__(
        self,
        message: str,
        fields: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = list(fields or [])
        # Extra response headers, e.g. Retry-After on a 429.
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return self.message

    @classmethod
    def meaning(cls) -> str:
        """The condition in a line: the class docstring's first line."""
        return (cls.__doc__ or "").strip().splitlines()[0]


# 400 -----------------------------------------------------------------------------------


class MalformedRequest(RelightqError):
    """The request could not be parsed at all (e.g. a broken multipart body)."""

    code = "http_error"
    status = 400


# 401 -----------------------------------------------------------------------------------


class Unauthorized(RelightqError):
    """No API key, or one that is unknown or revoked."""

    code = "unauthorized"
    status = 401

    def __init__(self) -> None:
        super().__init__("a valid API key is required (Authorization: Bearer <key> or x-api-key)")


class BadSignature(RelightqError):
    """A trigger event's signature or timestamp does not check out; nothing is stored."""

    code = "bad_signature"
    status = 401

    def __init__(self, why: str) -> None:
        super().__init__(f"signature check failed: {why}")


# 403 -----------------------------------------------------------------------------------


class OperatorRequired(RelightqError):
    """Pausing and resuming the fleet needs an operator key."""

    code = "forbidden"
    status = 403

    def __init__(self) -> None:
        super().__init__(
            "pausing and resuming the fleet needs an operator key "
            "(relightq keys create --tenant NAME --operator)"
        )


# 404 -----------------------------------------------------------------------------------


class NotFound(RelightqError):
    """The thing does not exist, or belongs to another tenant (we do not say which)."""

    code = "not_found"
    status = 404

    def __init__(self, what: str, message: str | None = None) -> None:
        super().__init__(message or f"{what} not found")


# 405 -----------------------------------------------------------------------------------


class MethodNotAllowed(RelightqError):
    """The path exists but does not take this HTTP method."""

    code = "method_not_allowed"
    status = 405


# 409 -----------------------------------------------------------------------------------


class JobRunning(RelightqError):
    """The job is running: it will finish, and cannot be cancelled now."""

    code = "job_running"
    status = 409


class JobFinal(RelightqError):
    """The job already reached a final state other than cancelled."""

    code = "job_final"
    status = 409


class JobNotRetryable(RelightqError):
    """Only failed or cancelled jobs can be retried."""

    code = "job_not_retryable"
    status = 409


class BatchCancelled(RelightqError):
    """The batch was cancelled; its items cannot run again."""

    code = "batch_cancelled"
    status = 409


class RunExists(RelightqError):
    """A schedule run was started at this very moment; try again."""

    code = "run_exists"
    status = 409


class EndpointDisabled(RelightqError):
    """The webhook endpoint is disabled; enable it before redelivering."""

    code = "endpoint_disabled"
    status = 409


class DeliveryInFlight(RelightqError):
    """The webhook delivery is being sent right now."""

    code = "delivery_in_flight"
    status = 409


class NameTaken(RelightqError):
    """A trigger with this name exists already."""

    code = "name_taken"
    status = 409

    def __init__(self, name: str) -> None:
        super().__init__(
            f"a trigger named {name} exists; pick another name", [FieldProblem("name", "is taken")]
        )


# 413 -----------------------------------------------------------------------------------


class PayloadTooLarge(RelightqError):
    """The request body, or an uploaded file, is over its size limit."""

    code = "payload_too_large"
    status = 413


class TooManyItems(RelightqError):
    """A batch holds more items than allowed."""

    code = "too_many_items"
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"a batch holds at most {limit} items",
            [FieldProblem("items", f"more than {limit} items")],
        )


# 415 -----------------------------------------------------------------------------------


class UnsupportedMediaType(RelightqError):
    """The body is neither application/json nor multipart/form-data."""

    code = "unsupported_media_type"
    status = 415

    def __init__(self) -> None:
        super().__init__("send application/json or multipart/form-data")


# 422 -----------------------------------------------------------------------------------


class InvalidInput(RelightqError):
    """Input failed validation; every offending field is listed."""

    code = "validation_error"
    status = 422

    def __init__(self, fields: list[FieldProblem], message: str | None = None) -> None:
        names = ", ".join(p.field for p in fields)
        super().__init__(message or f"invalid input: {names}", fields)


class BatchRejected(InvalidInput):
    """Some batch rows are invalid and ``skip_invalid`` was not set; every listed row is
    named and nothing is stored."""

    def __init__(self, problems: list[FieldProblem], bad_rows: int, rows: int) -> None:
        listed = len({p.field.split(".")[0] for p in problems})
        super().__init__(
            problems,
            f"{bad_rows} of {rows} rows are invalid (the first {listed} are listed); nothing "
            "was stored. Fix them, or send skip_invalid=true (relightq batch submit "
            "--skip-invalid) to run the valid rows.",
        )


class IdempotencyKeyReused(RelightqError):
    """The Idempotency-Key was already used with a different request."""

    code = "idempotency_key_reused"
    status = 422


# 429 -----------------------------------------------------------------------------------


class RateLimited(RelightqError):
    """Too many requests for one API key (or trigger); Retry-After says when to come back."""

    code = "rate_limited"
    status = 429

    def __init__(self, limit: str, retry_after: int, per: str = "API key") -> None:
        super().__init__(
            f"rate limit of {limit} per {per} exceeded; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


# 5xx -----------------------------------------------------------------------------------


class InternalError(RelightqError):
    """A bug, not the client's doing; it has been logged."""

    code = "internal_error"
    status = 500

    def __init__(self) -> None:
        super().__init__("an internal error occurred; it has been logged")


class DatabaseUnavailable(RelightqError):
    """PostgreSQL is unreachable (e.g. restarting); Retry-After says when to retry."""

    code = "database_unavailable"
    status = 503

    def __init__(self) -> None:
        super().__init__("the database is unavailable; retry shortly", headers={"Retry-After": "5"})


class RedisUnavailable(RelightqError):
    """The fleet's Redis is unreachable; Retry-After says when to retry."""

    code = "redis_unavailable"
    status = 503

    def __init__(self) -> None:
        super().__init__(
            "the fleet's Redis is unavailable; retry shortly", headers={"Retry-After": "5"}
        )


def catalogue() -> list[type[RelightqError]]:
    """Every error code's class (a subclass sharing its parent's code, as BatchRejected,
    is the same answer), ordered by status then code."""
    found: dict[str, type[RelightqError]] = {}
    level = RelightqError.__subclasses__()
    while level:  # breadth first: a parent is met before the subclasses sharing its code
        for cls in level:
            found.setdefault(cls.code, cls)
        level = [sub for cls in level for sub in cls.__subclasses__()]
    return sorted(found.values(), key=lambda c: (c.status, c.code))


def catalogue_markdown() -> str:
    """docs/reference/errors.md: every error code, its status and meaning."""
    lines = [
        "# Error codes",
        "",
        "<!-- Generated from relightq/errors.py by `python -m relightq.errors`; "
        "tests/api/test_error_catalogue.py fails when this page drifts. -->",
        "",
        "Every error answer has the same JSON shape (the Segmind-compatible routes under "
        '`/compat/segmind/` keep Segmind\'s own `{"error": message}` instead):',
        "",
        "```json",
        '{"error": {"code": "validation_error", "message": "invalid input: cfg, width",',
        '           "fields": [{"field": "cfg", "message": "Input should be less than or '
        'equal to 32",',
        '                       "allowed": "a number from 1 to 32"}]}}',
        "```",
        "",
        "`fields` lists each offending input field as `{field, message, allowed}`. "
        "The OpenAPI document (`/openapi.json`) lists, per route, which of these it answers.",
        "",
        "| Code | HTTP status | Meaning |",
        "| --- | --- | --- |",
    ]
    for cls in catalogue():
        lines.append(f"| `{cls.code}` | {cls.status} | {cls.meaning()} |")
    return "\n".join(lines) + "\n"


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


def _storable_text(text: str) -> bool:
    # ASCII text holds no surrogate; the regex is only needed past it.
    if text.isascii():
        return "\x00" not in text
    return UNSTORABLE.search(text) is None


def is_storable(value: Any) -> bool:
    """True when no key or string in ``value`` holds NUL or a lone surrogate: the common
    answer, found without naming paths (a batch asks it of every row)."""
    if isinstance(value, str):
        return _storable_text(value)
    if isinstance(value, dict):
        return all(_storable_text(str(key)) and is_storable(item) for key, item in value.items())
    if isinstance(value, list):
        return all(is_storable(item) for item in value)
    return True


def unstorable_field(value: Any, path: str = "", whole: str = "body") -> FieldProblem | None:
    """The first key or string (in document order) holding NUL or a lone surrogate, as a
    problem named by its dotted path below ``path`` (``whole`` names a bare string)."""
    if is_storable(value):
        return None  # the common answer; the walk below names the first one found
    return _first_unstorable(value, path, whole)


def _first_unstorable(value: Any, path: str, whole: str) -> FieldProblem | None:
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
            found = _first_unstorable(item, here, whole)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            where = f"{path}[{index}]" if path else f"[{index}]"
            found = _first_unstorable(item, where, whole)
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


if __name__ == "__main__":
    print(catalogue_markdown(), end="")
