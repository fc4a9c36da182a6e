"""Logging: every line carries the job, batch and tenant it is about, and no secret.

Ids are bound with ``bound(job_id=..., ...)`` (contextvars, so they follow the work
through threads); a filter on the handler adds them to every record and redacts the
Segmind key, relightq API keys (``rq_...``) and webhook secrets (``whsec_...``) from the
formatted message, whatever logger wrote it - belt and braces behind never logging them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

CONTEXT_FIELDS = ("tenant_id", "batch_id", "job_id", "delivery_id")
# The default is never mutated: every change sets a new dict.
_context: ContextVar[dict[str, str]] = ContextVar("relightq_log_context", default={})  # noqa: B039
SECRET_PATTERNS = re.compile(r"rq_[A-Za-z0-9_\-]{16,}|whsec_[A-Za-z0-9+/=]{16,}")
REDACTED = "[redacted]"


@contextmanager
def bound(**ids: object) -> Iterator[None]:
    """Attach ids to every log line written inside the block."""
    token = _context.set({**_context.get(), **{k: str(v) for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**ids: object) -> None:
    """Add ids inside an enclosing ``bound`` block (which undoes them on exit)."""
    _context.set({**_context.get(), **{k: str(v) for k, v in ids.items() if v}})


# One mutable dict per API request: ``note`` fills it from wherever the request's work
# runs (a dependency in a worker thread gets a copy of the context, not of the dict), so
# the request's own log line can carry the tenant found while serving it.
_request: ContextVar[dict[str, str] | None] = ContextVar("relightq_log_request", default=None)


@contextmanager
def request_scope() -> Iterator[dict[str, str]]:
    """Collect ids noted while serving one request; yields them."""
    ids: dict[str, str] = {}
    token = _request.set(ids)
    try:
        yield ids
    finally:
        _request.reset(token)


def note(**ids: object) -> None:
    """Add ids to the current request's lines (or, outside a request, like ``bind``)."""
    request = _request.get()
    if request is None:
        bind(**ids)
    else:
        request.update({k: str(v) for k, v in ids.items() if v})


# Shorter values would blank out ordinary words wherever they occur.
MIN_SECRET_LENGTH = 6


def _secret_values() -> list[str]:
    from relightq.settings import get_settings

    key = get_settings().segmind_api_key
    return [key.get_secret_value()] if key else []


def redact(text: str, *secrets: str) -> str:
    """``text`` with every known secret replaced, and ``secrets`` too (e.g. the key a
    client was built with, which need not be the configured one)."""
    for secret in (*_secret_values(), *secrets):
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, REDACTED)
    return SECRET_PATTERNS.sub(REDACTED, text)


class ContextFilter(logging.Filter):
    """Adds the bound ids to the record and redacts its message (and traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = {**_context.get(), **(_request.get() or {})}
        for name in CONTEXT_FIELDS:
            setattr(record, name, context.get(name, ""))
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class TextFormatter(logging.Formatter):
    """``time level logger: message [job_id=... batch_id=...]``."""

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, "")
        )
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"
        line = f"{line} [{ids}]" if ids else line
        return f"{line}\n{record.exc_text}" if record.exc_text else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({n: getattr(record, n) for n in CONTEXT_FIELDS if getattr(record, n, "")})
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry)


def configure(level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Send every logger's records through one redacting, id-carrying handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    unconfigure()
    handler.relightq = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO: with Segmind's v2 API that is each poll of each
    # request, ~7 lines per job. relightq logs the submit and the outcome itself; httpx
    # keeps its warnings, and LOG_LEVEL=DEBUG brings its requests back.
    if logging.getLevelName(level.upper()) != logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    # Python's warnings go to stderr as bare text otherwise, past the format and redaction.
    logging.captureWarnings(True)


def unconfigure() -> None:
    """Remove the handler ``configure`` installed."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "relightq", False):
            root.removeHandler(old)
    logging.captureWarnings(False)
