"""relightq's S3 calls against SeaweedFS, the object store docker-compose.yml runs.

The rest of the suite uses moto's server; these tests prove the production store does
what relightq asks of S3: an idempotent bucket, writes and reads, presigned GETs signed
for the host users reach, ListObjectsV2, CopyObject, multipart uploads, and refusal of
wrong or missing credentials.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from pydantic import SecretStr
from typer.testing import CliRunner

from relightq.settings import Settings
from relightq.storage import S3Storage
from tests.support.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedFS, seaweedfs, weed_version

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def store() -> Iterator[SeaweedFS]:
    with seaweedfs() as server:
        yield server


def settings_for(store: SeaweedFS, **values: Any) -> Settings:
    # Workers reach the store at 127.0.0.1, users at localhost: as s3:8333 and the host's
    # localhost:8333 under compose.
    return Settings(
        s3_bucket="relightq",
        s3_endpoint_url=store.s3_url,
        s3_public_endpoint_url=store.s3_url.replace("127.0.0.1", "localhost"),
        s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=SecretStr(SECRET_KEY),
        **values,
    )


def raw_client(store: SeaweedFS, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=store.s3_url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


def test_the_tests_run_the_release_the_compose_file_pins() -> None:
    pinned = re.search(r"chrislusf/seaweedfs:(\S+)", COMPOSE.read_text())
    assert pinned is not None and weed_version() == pinned.group(1)


def test_creating_the_bucket_is_idempotent_as_the_compose_one_shot_runs_it(
    store: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relightq.cli import app
    from relightq.settings import get_settings

    settings = settings_for(store)
    for name, value in {
        "RELIGHTQ_S3_BUCKET": "relightq",
        "RELIGHTQ_S3_ENDPOINT_URL": store.s3_url,
        "RELIGHTQ_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "RELIGHTQ_S3_SECRET_ACCESS_KEY": SECRET_KEY,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        for _ in range(2):  # `docker compose up` runs it on every start
            result = CliRunner().invoke(app, ["create-bucket"])
            assert result.exit_code == 0, result.output
    finally:
        get_settings.cache_clear()
    S3Storage(settings).ensure_bucket()  # and once more from a worker
    buckets = [b["Name"] for b in raw_client(store).list_buckets()["Buckets"]]
    assert buckets.count("relightq") == 1


def test_an_object_written_is_read_back_and_its_presigned_url_works_from_the_users_host(
    store: SeaweedFS,
) -> None:
    storage = S3Storage(settings_for(store))
    storage.ensure_bucket()
    uri = storage.put("outputs/t/j/0.png", b"\x89PNG relit", "image/png")
    assert storage.get(uri) == b"\x89PNG relit"
    url = storage.url(uri)
    assert url.startswith(store.s3_url.replace("127.0.0.1", "localhost"))
    answer = httpx.get(url)
    assert answer.status_code == 200 and answer.content == b"\x89PNG relit"
    assert answer.headers["content-type"] == "image/png"
    # Tampered with, the signature no longer holds.
    assert httpx.get(url.replace("0.png", "1.png")).status_code == 403


def test_a_prefix_lists_page_by_page_and_an_object_copies_server_side(store: SeaweedFS) -> None:
    storage = S3Storage(settings_for(store))
    storage.ensure_bucket()
    for n in range(5):
        storage.put(f"catalog/2026/{n}.png", b"p", "image/png")
    storage.put("catalog/2026-old/x.png", b"p", "image/png")
    listed = [o.uri for o in storage.list_objects("s3://relightq/catalog/2026/")]
    assert listed == [f"s3://relightq/catalog/2026/{n}.png" for n in range(5)]
    client = raw_client(store)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket="relightq", Prefix="catalog/", PaginationConfig={"PageSize": 2}
    )
    assert sum(len(page.get("Contents", [])) for page in pages) == 6
    client.copy_object(
        Bucket="relightq",
        Key="copies/0.png",
        CopySource={"Bucket": "relightq", "Key": "catalog/2026/0.png"},
    )
    assert storage.get("s3://relightq/copies/0.png") == b"p"


def test_a_large_object_goes_up_in_parts(store: SeaweedFS) -> None:
    S3Storage(settings_for(store)).ensure_bucket()
    client = raw_client(store)
    body = bytes(range(256)) * (48 * 1024)  # 12 MiB: three 5 MiB parts
    parts = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    client.upload_fileobj(io.BytesIO(body), "relightq", "big.bin", Config=parts)
    head = client.head_object(Bucket="relightq", Key="big.bin")
    assert head["ContentLength"] == len(body) and head["ETag"].strip('"').endswith("-3")


def test_wrong_or_missing_credentials_are_refused(store: SeaweedFS) -> None:
    S3Storage(settings_for(store)).ensure_bucket()
    with pytest.raises(Exception, match=r"InvalidAccessKeyId|AccessDenied|SignatureDoesNotMatch"):
        raw_client(store, "someone", "else").list_objects_v2(Bucket="relightq")
    assert httpx.get(f"{store.s3_url}/relightq/catalog/2026/0.png").status_code == 403
