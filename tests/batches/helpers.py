"""Submitting batches and waiting on them, as a client would."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import httpx

from tests.jobs.test_end_to_end import shop_image


def wait_batch(
    api: httpx.Client, batch_id: str, *statuses: str, timeout: float = 60
) -> dict[str, Any]:
    """Poll GET /v1/batches/{id} until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        batch: dict[str, Any] = api.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch stayed {batch['status']}: {batch}")
        time.sleep(0.1)


def catalog(count: int, folder: str = "catalog") -> list[str]:
    """``count`` product photos in the customer's bucket; their presigned URLs."""
    return [shop_image(f"{folder}/sku-{n}.png")[1] for n in range(count)]


def csv_file(rows: list[dict[str, Any]]) -> bytes:
    """A CSV with a header of every key used."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def jsonl_file(rows: list[Any]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def manifest(api: httpx.Client, batch_id: str, kind: str = "results") -> list[dict[str, Any]]:
    """The JSONL manifest as a list of rows."""
    response = api.get(f"/v1/batches/{batch_id}/{kind}")
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]
