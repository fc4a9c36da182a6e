"""Keyset pagination newest first: an opaque cursor names the last row of a page."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_

from relightq.errors import FieldProblem, InvalidInput

Row = TypeVar("Row")


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """An opaque position after the row (created_at, id)."""
    raw = json.dumps([created_at.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names, or InvalidInput naming the ``cursor`` field."""
    try:
        created, row_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), uuid.UUID(row_id)
    except (ValueError, TypeError, RecursionError) as exc:  # a forged one may nest deep
        raise InvalidInput(
            [FieldProblem("cursor", "is not a cursor this API gave out", "a next_cursor value")]
        ) from exc


def newest_first(query: Select[Any], model: Any, cursor: str | None, limit: int) -> Select[Any]:
    """``query`` ordered newest first, after ``cursor``, one row past ``limit``.

    The extra row tells whether a next page exists (stable under concurrent inserts).
    """
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    if cursor:
        created, row_id = decode_cursor(cursor)
        query = query.where(
            or_(model.created_at < created, and_(model.created_at == created, model.id < row_id))
        )
    return query


def page(rows: list[Row], limit: int) -> tuple[list[Row], str | None]:
    """The page and the cursor of the next one (None on the last page)."""
    if len(rows) <= limit:
        return rows, None
    last: Any = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)
