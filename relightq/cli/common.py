"""What `relightq batch` and `relightq schedule` share: the API options, a client of the
API (relightq.client) whose errors end the command cleanly, and KEY=VALUE job fields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import httpx
import typer

from relightq.cli.render import fail, print_api_error
from relightq.client import DEFAULT_API_URL, RelightqAPIError, RelightqClient, RetryPolicy

__all__ = ["DEFAULT_API_URL"]

TIMEOUT = httpx.Timeout(60.0, connect=10.0)
USER_AGENT = "relightq-cli"
INTERRUPTED = 130  # what shells report for a command stopped by Ctrl-C
# sysexits.h EX_TEMPFAIL, "try again later": a watch that gave up on an outage, distinct from
# 1 (cancelled, or an error the API answered) since the batch's fate is still unknown.
GAVE_UP = 75
GIVE_UP_AFTER = 600.0

# Options every command takes; keyword-only in signatures so --api-key can be required.
ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar="RELIGHTQ_API_URL", help="Base URL of the relightq API.")
]
ApiKey = Annotated[
    str,
    typer.Option("--api-key", envvar="RELIGHTQ_API_KEY", help="Your relightq API key."),
]
# Paging through a listing, as the API pages (next_cursor).
PageLimit = Annotated[int, typer.Option(min=1, max=200, help="How many to show.")]
PageCursor = Annotated[
    str | None, typer.Option(help="Where to go on from (printed under a full page).")
]


@contextmanager
def api_client(api_url: str, api_key: str) -> Iterator[RelightqClient]:
    """A client that sends each request once; an error the API answers is printed with
    every field problem, a network failure as one line, and either exits 1.

    Commands that wait out outages (``--watch``) retry through ``client.with_retry``.
    """
    try:
        with RelightqClient(
            api_url,
            api_key,
            retry=RetryPolicy.never(),
            timeout=TIMEOUT,
            user_agent=USER_AGENT,
        ) as client:
            yield client
    except RelightqAPIError as exc:
        print_api_error(exc)
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        fail(f"could not talk to the relightq API at {api_url}: {type(exc).__name__} {exc}")


def _json_or_text(text: str) -> Any:
    """``512`` is a number and ``{"a": 1}`` an object; text that is not JSON stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def job_fields_from(prompt: str | None, pairs: list[str]) -> dict[str, Any]:
    """Job fields from --prompt and repeated --set KEY=VALUE (VALUE as JSON when it parses)."""
    defaults: dict[str, Any] = {} if prompt is None else {"prompt": prompt}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="'--set'")
        defaults[key.strip()] = _json_or_text(value)
    return defaults
