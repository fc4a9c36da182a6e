"""A page of batches is counted with a fixed number of SQL statements, however many
batches it holds (it was two or three per batch)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import event

from relightq.batches import service
from relightq.db import session_scope
from tests.conftest import TenantKey


def _submit(api: httpx.Client, count: int) -> list[str]:
    items = [
        {"subject_image": "https://e.com/a.png", "prompt": "x"},
        {"subject_image": "https://e.com/b.png", "prompt": "y"},
    ]
    ids = [api.post("/v1/batches", json={"items": items}).json()["id"] for _ in range(count)]
    api.post(f"/v1/batches/{ids[0]}/cancel")  # statuses differ from batch to batch
    return ids


def _statements_to_view_a_page(tenant_id: uuid.UUID, limit: int) -> tuple[int, list[Any]]:
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])  # (conn, cursor, statement, ...)

    with session_scope() as session:
        connection = session.connection()
        event.listen(connection, "before_cursor_execute", count)
        batches, _ = service.list_batches(session, tenant_id, None, limit)
        views = service.batch_views(session, batches)
        event.remove(connection, "before_cursor_execute", count)
    return len(seen), views


def test_a_page_of_batches_costs_the_same_statements_whatever_its_size(
    api: httpx.Client, tenant: TenantKey
) -> None:
    ids = _submit(api, 6)
    try:
        few, two = _statements_to_view_a_page(tenant.id, 2)
        many, six = _statements_to_view_a_page(tenant.id, 6)
    finally:
        for batch_id in ids:
            api.post(f"/v1/batches/{batch_id}/cancel")

    assert len(two) == 2 and len(six) == 6
    assert few == many <= 2  # the page, then one grouped count for all of it


def test_the_grouped_counts_agree_with_one_batch_at_a_time(
    api: httpx.Client, tenant: TenantKey
) -> None:
    ids = _submit(api, 3)
    try:
        with session_scope() as session:
            # One snapshot for both ways of counting, whatever a worker does meanwhile.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            batches, _ = service.list_batches(session, tenant.id, None, 3)
            together = service.batch_views(session, batches)
            alone = [service.batch_views(session, [b])[0] for b in batches]
    finally:
        for batch_id in ids:
            api.post(f"/v1/batches/{batch_id}/cancel")

    assert [v.model_dump() for v in together] == [v.model_dump() for v in alone]
    assert all(sum(v.counts.model_dump().values()) == 2 for v in together)
