"""Verifying the webhooks relightq sends (Standard Webhooks signatures)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["WebhookVerificationError", "verify_webhook"]


def verify_webhook(secret: str, body: bytes | str, headers: Mapping[str, str]) -> dict[str, Any]:
    """The event a webhook request carries, once its signature is checked.

    ``secret`` is the endpoint's ``whsec_...`` secret (or the callback secret for
    deliveries to a job's ``callback_url``); ``body`` the raw request body, exactly as
    received; ``headers`` the request's headers (``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature``; any case). Raises :class:`WebhookVerificationError` if the
    signature does not match or the timestamp is more than 5 minutes off.

    The event is ``{"type": "job.succeeded", "timestamp": ..., "data": {...}}``; the same
    ``webhook-id`` arrives on every retry of one event, so deduplicate on it.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    payload = Webhook(secret).verify(body, lowered)
    if not isinstance(payload, dict):
        raise WebhookVerificationError("the payload is not a JSON object")
    return payload
