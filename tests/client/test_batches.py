"""Batches through the sync client: CSV upload, JSON items, manifests, budget, cancel."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import httpx
import pytest

from relightq.batches.schemas import BatchOut, BatchStatus
from relightq.client import RelightqAPIError, RelightqClient
from tests.batches.helpers import catalog, csv_file

pytestmark = pytest.mark.usefixtures("celery_worker")


def test_a_csv_catalog_is_uploaded_run_and_its_manifests_downloaded(
    client: RelightqClient, simulator: httpx.Client, tmp_path: Path
) -> None:
    urls = catalog(2, "client-csv")
    rows: list[dict[str, Any]] = [
        {"subject_image": urls[0], "external_id": "GOOD-1"},
        {"subject_image": urls[1], "external_id": "BAD", "steps": "500"},
        {"subject_image": urls[1], "external_id": "GOOD-2"},
    ]
    source = tmp_path / "catalog.csv"
    source.write_bytes(csv_file(rows))

    batch = client.upload_batch(
        source,
        name="nightly",
        defaults={"prompt": "studio light", "width": 384},
        skip_invalid=True,
        idempotency_key="nightly-2026-12-01",
    )

    assert isinstance(batch, BatchOut) and (batch.total, batch.rejected) == (2, 1)
    assert batch.name == "nightly" and batch.defaults == {"prompt": "studio light", "width": 384}
    done = client.wait_for_batch(batch.id, timeout=60, interval=0.1)
    assert done.status == BatchStatus.COMPLETED and done.counts.succeeded == 2

    rows_out = list(client.iter_manifest(batch.id))
    assert [(r["external_id"], r["status"]) for r in rows_out] == [
        ("GOOD-1", "succeeded"),
        ("GOOD-2", "succeeded"),
    ]
    assert all(r["outputs"] for r in rows_out)
    [rejected] = client.iter_manifest(batch.id, errors=True)
    assert (rejected["row"], rejected["status"], rejected["external_id"]) == (2, "rejected", "BAD")

    written = client.download_manifest(batch.id, tmp_path / "results.csv")
    with written.open(newline="") as file:
        as_csv = list(csv.DictReader(file))
    assert [r["external_id"] for r in as_csv] == ["GOOD-1", "GOOD-2"]
    assert all(r["output_s3_uris"].startswith("s3://") for r in as_csv)
    assert not (tmp_path / "results.csv.part").exists()
    errors_csv = b"".join(client.iter_manifest_bytes(batch.id, errors=True, format="csv"))
    [error_row] = list(csv.DictReader(io.StringIO(errors_csv.decode())))
    assert error_row["external_id"] == "BAD" and error_row["error_code"] == "validation_error"

    # The same key and file again: the first answer, no second batch.
    again = client.upload_batch(
        source,
        name="nightly",
        defaults={"prompt": "studio light", "width": 384},
        skip_invalid=True,
        idempotency_key="nightly-2026-12-01",
    )
    assert again.id == batch.id
    assert [b.id for b in client.iter_batches()] == [batch.id]


def test_a_json_batch_pages_budget_cancel_and_retry_failed(
    client: RelightqClient, simulator: httpx.Client
) -> None:
    simulator.post("/admin/config", json={"latency": 0.3}).raise_for_status()
    [url] = catalog(1, "client-json")
    items = [{"subject_image": url, "external_id": f"J-{n}"} for n in range(30)]
    first = client.create_batch(items=items[:1], defaults={"prompt": "x"}, name="one")
    big = client.create_batch(
        items=items, defaults={"prompt": "x"}, name="thirty", credit_budget=1000
    )

    page = client.list_batches(limit=1)
    assert [b.id for b in page.items] == [big.id] and page.next_cursor
    assert [b.id for b in client.iter_batches(page_size=1)] == [big.id, first.id]

    unbudgeted = client.update_batch(big.id, credit_budget=None)
    assert unbudgeted.credit_budget is None
    cancelled = client.cancel_batch(big.id)
    assert cancelled.status == BatchStatus.CANCELLED
    with pytest.raises(RelightqAPIError) as refused:
        client.update_batch(big.id, credit_budget=-1)
    assert refused.value.status == 422 and refused.value.fields[0].field == "credit_budget"

    simulator.post("/admin/config", json={"fail_500_rate": 1.0, "latency": 0}).raise_for_status()
    [url2] = catalog(1, "client-failing")
    failing = client.create_batch(items=[{"subject_image": url2}], defaults={"prompt": "x"})
    assert client.wait_for_batch(failing.id, timeout=60, interval=0.1).counts.failed == 1
    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    client.retry_failed(failing.id)
    assert client.wait_for_batch(failing.id, timeout=60, interval=0.1).counts.succeeded == 1
