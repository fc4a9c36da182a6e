"""Million-row catalogs: rows stored with COPY exactly as an INSERT stored them, a rejected
batch storing nothing, paged manifests, and a cancel that answers before its rows are done."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from relightq.batches import bulk, dispatch, service
from relightq.batches.models import Batch, BatchReject
from relightq.batches.schemas import BatchSettings
from relightq.batches.sources import RawItem, csv_items, json_items, jsonl_items
from relightq.db import get_sessionmaker, session_scope
from relightq.jobs.models import FINAL_STATUSES, Job, JobStatus
from relightq.settings import get_settings
from relightq.storage import S3Storage
from tests.batches.helpers import csv_file, jsonl_file, manifest, wait_batch
from tests.batches.test_dispatch import submit_catalog, wait_until
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import SHOP_BUCKET, shop_image

# Text COPY's format must carry through: its delimiters, escapes, NULL marker, quotes and
# text beyond ASCII.
AWKWARD = [
    "tab\there",
    "new\nline",
    "carriage\r\nreturn",
    "back\\slash \\N \\t",
    "\\N",
    "say \"cheese\", then 'smile'",
    "ünïcødé ☃ 😀 中文",
    "{braces} and | pipes",
]


def _items() -> list[dict[str, Any]]:
    """Rows exercising every stored column, two of them bad."""
    rows: list[dict[str, Any]] = []
    for n, text in enumerate(AWKWARD):
        rows.append(
            {
                "subject_image": f"s3://shop/awkward/{n}.png",
                "external_id": f"SKU-{n} {text}",
                "prompt": f"light {text}",
                "metadata": {"note": text, f"key {text}": n, "nested": {"list": [text, 1.5]}},
                "priority": n % 10,
                "reuse": n % 2 == 0,
                "seed": None if n == 3 else n,
                "number_of_images": 1 + n % 2,
                "width": 256 + 64 * (n % 3),
                "callback_url": f"http://127.0.0.1:9/hook/{n}",
            }
        )
    rows.insert(2, {"subject_image": "s3://shop/bad.png", "width": 100, "external_id": "bad\tw"})
    rows.append({"subject_image": "ftp://nowhere", "external_id": "bad \\ src"})
    return rows


def _csv(rows: list[dict[str, Any]]) -> bytes:
    """The rows as CSV: metadata as a JSON cell, an extra metadata.<key> column, None empty."""
    flat = [
        {
            **{k: json.dumps(v) if k == "metadata" else v for k, v in row.items()},
            "metadata.tag": row.get("external_id", ""),
        }
        for row in rows
    ]
    for row in flat:
        if row.get("seed", 0) is None:
            del row["seed"]  # an empty cell takes the default; the JSON rows say null
    return csv_file(flat)


def _source(file_format: str, rows: list[dict[str, Any]]) -> Iterator[RawItem]:
    if file_format == "csv":
        return csv_items(io.BytesIO(_csv(rows)))
    if file_format == "jsonl":
        return jsonl_items(io.BytesIO(jsonl_file(rows)))
    return json_items(rows)


def _ingest(tenant: TenantKey, file_format: str, *, copy: bool) -> uuid.UUID:
    spec = BatchSettings.model_validate(
        {
            "defaults": {"prompt": "studio", "height": 512, "metadata": {"shop": "ünï\t"}},
            "skip_invalid": True,
            "output_prefix": f"s3://{SHOP_BUCKET}/awkward/",
            "key_template": "{external_id}/{row}-{index}.{ext}",
        }
    )
    patch = pytest.MonkeyPatch()
    patch.setattr(service, "release", lambda session, batch_id: 0)  # no worker changes them
    if not copy:
        patch.setattr(bulk, "copies", lambda session: False)
    try:
        with session_scope() as session:
            batch = service.create_batch(
                session,
                tenant.id,
                spec,
                file_format,
                _source(file_format, _items()),
                S3Storage(get_settings()),
                get_settings(),
            )
            return batch.id
    finally:
        patch.undo()


def _stored(session: Session, table: Any, batch_id: uuid.UUID, order: Any) -> list[dict[str, Any]]:
    rows = session.execute(select(table).where(table.c.batch_id == batch_id).order_by(order))
    return [dict(row._mapping) for row in rows]


@pytest.mark.parametrize("file_format", ["csv", "jsonl", "json"])
def test_copy_stores_every_column_as_the_insert_did(
    services: Services, tenant: TenantKey, file_format: str
) -> None:
    shop_image("awkward/bucket.png")  # the output bucket exists
    copied = _ingest(tenant, file_format, copy=True)
    inserted = _ingest(tenant, file_format, copy=False)

    jobs, rejects = Job.__table__, BatchReject.__table__
    with session_scope() as session:
        by_copy = _stored(session, jobs, copied, jobs.c.batch_row)
        by_insert = _stored(session, jobs, inserted, jobs.c.batch_row)
        rejects_by_copy = _stored(session, rejects, copied, rejects.c.row)
        rejects_by_insert = _stored(session, rejects, inserted, rejects.c.row)
    assert len(by_copy) == len(AWKWARD) and len(rejects_by_copy) == 2
    own = {"id", "batch_id", "created_at", "updated_at"}
    for a, b in zip(by_copy, by_insert, strict=True):
        assert {k: v for k, v in a.items() if k not in own} == {
            k: v for k, v in b.items() if k not in own
        }
        assert a["created_at"] == a["updated_at"] and a["dispatched_at"] is None
    for a, b in zip(rejects_by_copy, rejects_by_insert, strict=True):
        assert {k: v for k, v in a.items() if k not in own} == {
            k: v for k, v in b.items() if k not in own
        }

    # And what was stored is what was sent.
    for stored, sent in zip(by_copy, [r for r in _items() if r.get("prompt")], strict=True):
        assert stored["external_id"] == sent["external_id"]
        assert stored["params"]["prompt"] == sent["prompt"]
        # An empty CSV cell takes the default where JSON says null.
        default_seed = 42 if file_format == "csv" else None
        assert stored["params"]["seed"] == (default_seed if sent["seed"] is None else sent["seed"])
        assert stored["params"]["height"] == 512  # the default
        note = sent["metadata"]["note"]
        assert stored["metadata"]["shop"] == "ünï\t"
        assert stored["metadata"]["note"] == note
        assert stored["metadata"][f"key {note}"] == sent["metadata"][f"key {note}"]
        assert stored["metadata"]["nested"] == {"list": [note, 1.5]}
        if file_format == "csv":
            assert stored["metadata"]["tag"] == sent["external_id"]
        assert stored["priority"] == sent["priority"]
        assert stored["reuse"] is sent["reuse"]
        assert stored["callback_url"] == sent["callback_url"]
        assert stored["status"] == JobStatus.QUEUED and stored["attempts"] == 0
        assert stored["output_template"].endswith(
            "/awkward/"
            + sent["external_id"].replace("{", "{{").replace("}", "}}")
            + f"/{stored['batch_row']}-{{index}}.{{ext}}"
        )
    assert [r["row"] for r in rejects_by_copy] == [3, len(_items())]
    assert rejects_by_copy[0]["external_id"] == "bad\tw"
    assert rejects_by_copy[0]["problems"][0]["field"] == "width"
    assert rejects_by_copy[1]["external_id"] == "bad \\ src"
    assert rejects_by_copy[1]["problems"][0]["field"] == "subject_image"


def test_copy_cells_escape_what_text_copy_reads_specially() -> None:
    assert bulk.copy_text("a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert bulk.copy_text("\\N") == "\\\\N"  # the string, never the NULL marker
    assert bulk.copy_text("plain ünï") == "plain ünï"


def _counts(tenant: TenantKey) -> tuple[int, int]:
    with session_scope() as session:
        jobs = session.scalar(select(func.count()).where(Job.tenant_id == tenant.id))
        batches = session.scalar(select(func.count()).where(Batch.tenant_id == tenant.id))
    return int(jobs or 0), int(batches or 0)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_batch_rejected_after_rows_were_copied_stores_nothing(
    api: httpx.Client, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setattr(service, "INSERT_CHUNK", 2)  # many COPY chunks before the bad row
    _, url = shop_image("bulk/reject.png")
    rows: list[dict[str, Any]] = [{"subject_image": url, "external_id": f"S{n}"} for n in range(9)]
    rows.append({"subject_image": url, "width": 7})
    body = csv_file(rows) if kind == "csv" else jsonl_file(rows)
    response = api.post(
        "/v1/batches",
        files={"file": (f"c.{kind}", body)},
        data={"defaults": '{"prompt": "x"}'},
    )
    assert response.status_code == 422, response.text
    assert [p["field"] for p in response.json()["error"]["fields"]] == ["rows[10].width"]
    assert _counts(tenant) == (0, 0)
    # The connection the aborted COPY ran on serves the next request as before.
    rows.pop()
    ok = api.post(
        "/v1/batches",
        files={"file": (f"c.{kind}", csv_file(rows) if kind == "csv" else jsonl_file(rows))},
        data={"defaults": '{"prompt": "x"}'},
    )
    assert ok.status_code == 202, ok.text
    assert _counts(tenant) == (9, 1)


def test_an_idempotent_retry_of_an_upload_stores_the_batch_once(
    api: httpx.Client, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "INSERT_CHUNK", 3)
    _, url = shop_image("bulk/idem.png")
    body = csv_file([{"subject_image": url, "external_id": f"S{n}"} for n in range(8)])
    headers = {"Idempotency-Key": f"bulk-{uuid.uuid4()}"}
    answers = [
        api.post(
            "/v1/batches",
            files={"file": ("c.csv", body)},
            data={"defaults": '{"prompt": "x"}'},
            headers=headers,
        )
        for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    assert _counts(tenant) == (8, 1)


@pytest.mark.usefixtures("celery_worker")
def test_a_manifest_is_read_in_pages_and_streamed_in_pieces(
    api: httpx.Client, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MANIFEST_CHUNK", 3)
    monkeypatch.setattr(service, "STREAM_ROWS", 2)
    _, url = shop_image("bulk/manifest.png")
    rows = [{"subject_image": url, "external_id": f"S{n}\t{AWKWARD[n % 8]}"} for n in range(10)]
    batch_id = api.post(
        "/v1/batches",
        files={"file": ("c.csv", csv_file(rows))},
        data={"defaults": '{"prompt": "x", "number_of_images": 2}'},
    ).json()["id"]
    wait_batch(api, batch_id, "completed")

    results = manifest(api, batch_id)
    assert [r["row"] for r in results] == list(range(1, 11))
    assert [r["external_id"] for r in results] == [r["external_id"] for r in rows]
    assert all(r["status"] == "succeeded" for r in results)
    assert all([o["index"] for o in r["outputs"]] == [0, 1] for r in results)
    as_csv = api.get(f"/v1/batches/{batch_id}/results?format=csv").text
    records = list(csv.DictReader(io.StringIO(as_csv)))
    assert [int(r["row"]) for r in records] == list(range(1, 11))
    assert [r["external_id"] for r in records] == [r["external_id"] for r in rows]
    assert all(len(r["output_s3_uris"].split(" | ")) == 2 for r in records)


def _statuses(batch_id: str) -> dict[str, int]:
    with session_scope() as session:
        rows = session.execute(
            select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
        )
        return {str(status): count for status, count in rows}


@pytest.mark.usefixtures("celery_worker")
def test_a_big_cancel_answers_at_once_and_brings_its_rows_up_to_date_after(
    api: httpx.Client, simulator: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "CANCEL_CHUNK", 4)  # the answer cancels 4 held rows
    monkeypatch.setattr(dispatch, "CANCEL_CHUNK", 4)
    simulator.post("/admin/config", json={"latency": 0.5}).raise_for_status()
    batch_id = submit_catalog(api, 60)
    wait_until(lambda: api.get(f"/v1/batches/{batch_id}").json()["counts"]["running"] > 0)

    answer = api.post(f"/v1/batches/{batch_id}/cancel").json()

    assert answer["status"] == "cancelled"
    counts = answer["counts"]
    # Not yet brought up to date, the held rows already count as cancelled.
    assert counts["queued"] == counts["waiting"] == 0
    assert counts["cancelled"] >= 60 - 2 * get_settings().batch_window_size
    assert sum(counts.values()) == 60
    wait_until(lambda: api.get(f"/v1/batches/{batch_id}").json()["completed_at"] is not None)
    statuses = _statuses(batch_id)
    assert set(statuses) <= {s.value for s in FINAL_STATUSES}, statuses
    assert statuses["cancelled"] > 40
    calls = simulator.get("/admin/stats").json()["calls"]
    assert calls == statuses.get("succeeded", 0) + statuses.get("failed", 0)
    assert api.get(f"/v1/batches/{batch_id}").json()["counts"] == {
        "queued": 0,
        "running": 0,
        "waiting": 0,
        "succeeded": statuses.get("succeeded", 0),
        "failed": statuses.get("failed", 0),
        "cancelled": statuses["cancelled"],
    }


def test_a_cancel_cut_short_is_finished_by_the_sweepers_repair(
    services: Services, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "CANCEL_CHUNK", 5)
    monkeypatch.setattr(dispatch, "CANCEL_CHUNK", 5)
    rows = [{"subject_image": f"s3://shop/cut/{n}.png"} for n in range(23)]
    spec = BatchSettings.model_validate({"defaults": {"prompt": "x"}})
    storage = S3Storage(get_settings())
    with session_scope() as session:
        batch = service.create_batch(
            session, tenant.id, spec, "json", json_items(rows), storage, get_settings()
        )
        # Cancelled in the same transaction: nothing was sent, nothing ran.
        batch, held_left = service.cancel_batch(session, tenant.id, batch.id)
        batch_id = batch.id
        assert held_left and batch.cancelled_at is not None
        assert service.batch_view(session, batch).counts.cancelled == 23
    # The window release sent, and the first chunk of the held ones.
    sent = get_settings().batch_window_size
    assert _statuses(str(batch_id)) == {"cancelled": sent + 5, "queued": 23 - sent - 5}
    # Sent and held items are read by their own indexes, merged back into row order.
    monkeypatch.setattr(service, "MANIFEST_CHUNK", 4)
    rows_read = service.manifest_rows(get_sessionmaker(), batch_id, storage, errors_only=False)
    listed = [(r["row"], r["status"]) for r in rows_read]
    assert [row for row, _ in listed] == list(range(1, 24))
    assert [status for _, status in listed][-1] == "queued"

    # The canceller never came back (its API process died): each sweep does a chunk.
    for _ in range(4):
        with session_scope() as session:
            dispatch.settle_open_batches(session)
    assert _statuses(str(batch_id)) == {"cancelled": 23}
    with session_scope() as session:
        done = session.get(Batch, batch_id)
        assert done is not None and done.completed_at is not None


def test_finish_cancel_cancels_every_held_row_in_chunks(
    services: Services, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "CANCEL_CHUNK", 3)
    rows = [{"subject_image": f"s3://shop/fin/{n}.png"} for n in range(20)]
    spec = BatchSettings.model_validate({"defaults": {"prompt": "x"}})
    with session_scope() as session:
        batch = service.create_batch(
            session,
            tenant.id,
            spec,
            "json",
            json_items(rows),
            S3Storage(get_settings()),
            get_settings(),
        )
        batch, held_left = service.cancel_batch(session, tenant.id, batch.id)
    assert held_left
    service.finish_cancel(get_sessionmaker(), batch.id)
    assert _statuses(str(batch.id)) == {"cancelled": 20}
    with session_scope() as session:
        done = session.get(Batch, batch.id)
        assert done is not None and done.completed_at is not None
