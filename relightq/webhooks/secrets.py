"""Signing secrets and signatures in the Standard Webhooks format.

Signing uses the reference ``standardwebhooks`` library, so what relightq sends is
exactly what every Standard Webhooks verifier (Svix's included) accepts.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64 random bytes


def new_secret() -> str:
    """A fresh ``whsec_``-prefixed base64 secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature_headers(secret: str, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """The webhook-id, webhook-timestamp and webhook-signature headers for ``body``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, timestamp, body),
    }
