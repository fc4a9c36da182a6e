"""The balance Segmind reports, and the warning before it runs out.

Segmind sends the account's balance in ``x-remaining-credits`` on every call (v1), on
the v2 submit and result, and the free credits probe reads it while the fleet is paused.
Every report lands here: the newest is kept in ``upstream_state`` (an older report
arriving late never overwrites it), and when it falls below
``RELIGHTQ_CREDIT_WARN_BELOW`` the operator hears of it once: a ``credits.low`` webhook
event (Standard Webhooks, to every endpoint that subscribes to it) and the
``relightq_credits_low_warnings_total`` counter. The warning re-arms when a report is at
or above the threshold again (a top-up), so each crossing warns exactly once, however
many workers report at once: the crossing is one conditional UPDATE of one row.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from sqlalchemy import or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from relightq.credits.amounts import as_text
from relightq.db import session_scope, table_of, typed_param, utcnow
from relightq.jobs.models import UpstreamState
from relightq.metrics import CREDITS_LOW_WARNINGS
from relightq.settings import Settings
from relightq.webhooks.events import emit_to_subscribers
from relightq.webhooks.models import EventType

log = logging.getLogger(__name__)


_STATE = table_of(UpstreamState)
# Built once (every success runs one): keep the reported balance unless a newer is known.
_KEEP = (
    update(_STATE)
    .where(
        _STATE.c.id == 1,
        or_(
            _STATE.c.credits_seen_at.is_(None),
            _STATE.c.credits_seen_at <= typed_param("seen_at", _STATE.c.credits_seen_at),
        ),
    )
    .values(
        remaining_credits=typed_param("remaining", _STATE.c.remaining_credits),
        credits_seen_at=typed_param("seen_at", _STATE.c.credits_seen_at),
    )
)
_KEEP_AND_REARM = _KEEP.values(credits_low_since=None)


def record_balance(
    session: Session, remaining: Decimal, seen_at: datetime, settings: Settings
) -> bool:
    """Keep a reported balance (unless a newer one is known) and warn on a crossing;
    True when this report sent the ``credits.low`` warning."""
    threshold = settings.credit_warn_below
    at_or_above = threshold is not None and remaining >= threshold
    # A top-up re-arms the warning, in the same write.
    newest = session.execute(
        _KEEP_AND_REARM if at_or_above else _KEEP,
        {"remaining": remaining, "seen_at": seen_at},
    )
    if not newest.rowcount or threshold is None or at_or_above:  # type: ignore[attr-defined]
        return False
    crossed = session.execute(
        update(UpstreamState)
        .where(UpstreamState.id == 1, UpstreamState.credits_low_since.is_(None))
        .values(credits_low_since=seen_at)
    )
    if not crossed.rowcount:  # type: ignore[attr-defined]
        return False  # warned already for this crossing
    data = {
        "credits": float(remaining),  # JSON numbers with exact text
        "threshold": float(threshold),
        "seen_at": seen_at.isoformat(),
    }
    emit_to_subscribers(session, EventType.CREDITS_LOW, data)
    CREDITS_LOW_WARNINGS.inc()
    log.warning(
        "Segmind balance %s is below RELIGHTQ_CREDIT_WARN_BELOW (%s): credits.low sent",
        as_text(remaining),
        as_text(threshold),
    )
    return True


def report_balance(remaining: Decimal, settings: Settings) -> bool:
    """:func:`record_balance` in a transaction of its own (a v2 submit, the probe); best
    effort: with PostgreSQL down the submit and the probe go on, and a later report warns."""
    try:
        with session_scope() as session:
            return record_balance(session, remaining, utcnow(), settings)
    except SQLAlchemyError:
        log.warning("balance of %s not recorded: PostgreSQL unavailable", remaining, exc_info=True)
        return False
