"""A typed Python client of the relightq API, sync and async.

    from relightq.client import RelightqClient

    with RelightqClient("https://relightq.example.com", api_key) as client:
        job = client.create_job(url, "soft studio light", external_id="SKU-1", wait=30)

:class:`RelightqClient` (``httpx.Client``) and :class:`AsyncRelightqClient`
(``httpx.AsyncClient``) send the same requests, built once in
:mod:`relightq.client.calls`, and return the API's own pydantic models (``JobOut``,
``BatchOut``, ...). Errors raise :class:`RelightqAPIError`; idempotent requests are
retried per :class:`RetryPolicy`. See docs/client.md.
"""

from relightq.client._async import AsyncRelightqClient
from relightq.client._sync import RelightqClient
from relightq.client.calls import FileSource, ManifestFormat
from relightq.client.common import DEFAULT_API_URL
from relightq.client.errors import FieldError, RelightqAPIError
from relightq.client.retry import RETRY_STATUSES, RetryEvent, RetryPolicy, is_transient
from relightq.client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "DEFAULT_API_URL",
    "RETRY_STATUSES",
    "AsyncRelightqClient",
    "FieldError",
    "FileSource",
    "ManifestFormat",
    "RelightqAPIError",
    "RelightqClient",
    "RetryEvent",
    "RetryPolicy",
    "WebhookVerificationError",
    "is_transient",
    "verify_webhook",
]
