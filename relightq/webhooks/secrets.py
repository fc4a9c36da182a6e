"""Signing secrets and signatures in the Standard Webhooks format.

Signing uses the reference ``standardwebhooks`` library, so what relightq sends is
exactly what every Standard Webhooks verifier (Svix's included) accepts.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import datetime

from sqlalchemy import func, update
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from relightq.tenants.models import Tenant

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


def ensure_callback_secret(session: Session, tenant_id: uuid.UUID) -> str:
    """The tenant's callback_url signing secret, made on first use by whoever asks first.

    One conditional UPDATE: two first uses at once (a delivery and the tenant reading it)
    agree on one secret instead of the later write replacing the one already handed out.
    """
    secret = session.scalar(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(callback_secret=func.coalesce(Tenant.callback_secret, new_secret()))
        .returning(Tenant.callback_secret)
    )
    assert secret is not None
    return str(secret)
