"""Where images live: an S3 bucket in production, a local folder in the demo."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from relightq.settings import Settings, get_settings


class StorageError(Exception):
    """A stored object could not be read or written."""


@dataclass(frozen=True)
class StoredObject:
    """One object found under a prefix."""

    uri: str
    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class StoredBlob:
    """An object's bytes and the ETag of that version of it."""

    data: bytes
    etag: str


class Storage(Protocol):
    """What jobs need from a store of image bytes."""

    bucket: str

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Write ``data`` at ``key`` (overwriting: keys are deterministic) and return its URI."""
        ...

    def put_uri(self, uri: str, data: bytes, content_type: str) -> str:
        """Write ``data`` at an ``s3://bucket/key`` URI, possibly in a customer's bucket."""
        ...

    def list_objects(self, prefix_uri: str) -> Iterator[StoredObject]:
        """Every object under ``s3://bucket/prefix``, recursively, in key order."""
        ...

    def check_bucket(self, bucket: str) -> None:
        """Raise StorageError unless ``bucket`` exists and relightq can reach it."""
        ...

    def get(self, uri: str) -> bytes:
        """Read the object at ``uri``."""
        ...

    def read(self, uri: str) -> StoredBlob:
        """Read the object at ``uri`` with the ETag of the version read."""
        ...

    def etag(self, uri: str) -> str:
        """The object's ETag, without reading it (HEAD)."""
        ...

    def copy(self, source_uri: str, uri: str) -> None:
        """Copy an object inside the store (server-side: the bytes never pass through
        relightq); copying an object onto itself does nothing."""
        ...

    def url(self, uri: str) -> str:
        """A URL a user can download ``uri`` from."""
        ...

    def delete(self, uri: str) -> None:
        """Remove the object at ``uri`` if it exists."""
        ...


def parse_s3_prefix(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` as (bucket, prefix); the prefix may be empty."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError("expected s3://bucket/prefix/")
    return parsed.netloc, parsed.path.lstrip("/")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` as (bucket, key); raises ValueError when it is not one."""
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key:
        raise ValueError("expected s3://bucket/key")
    return parsed.netloc, key


@contextmanager
def _storage_errors(where: str, *, unreachable: bool = False) -> Iterator[None]:
    """S3's refusals as StorageError naming ``where`` and S3's code.

    With ``unreachable``, transport failures (no endpoint, bad configuration) too; without,
    they propagate, so a job reading or writing its images is retried, not failed.
    """
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise StorageError(f"{where}: {code}") from exc
    except BotoCoreError as exc:
        if not unreachable:
            raise
        raise StorageError(f"{where}: {type(exc).__name__}") from exc


class S3Storage:
    """An S3 bucket (AWS, SeaweedFS, moto, any S3-compatible store) reached through boto3."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.expires = settings.presign_expires_seconds
        self._client = self._make_client(settings, settings.s3_endpoint_url)
        self._presigner = self._make_client(
            settings, settings.s3_public_endpoint_url or settings.s3_endpoint_url
        )

    @staticmethod
    def _make_client(settings: Settings, endpoint_url: str | None) -> Any:
        secret = settings.s3_secret_access_key
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            # Path-style works with SeaweedFS and moto without wildcard DNS.
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=50,
            ),
        )

    def ensure_bucket(self) -> None:
        """Create relightq's bucket unless it already exists; safe to run any number of
        times, also several at once (a one-shot service, a restarted deployment)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            # Created meanwhile by another run: what was asked for.
            with suppress(self._client.exceptions.BucketAlreadyOwnedByYou):
                self._client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Write ``data`` at ``key`` in relightq's bucket."""
        return self.put_uri(f"s3://{self.bucket}/{key}", data, content_type)

    def put_uri(self, uri: str, data: bytes, content_type: str) -> str:
        """Write ``data`` at any ``s3://`` URI relightq's credentials may write."""
        bucket, key = parse_s3_uri(uri)
        with _storage_errors(uri):
            self._client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        return uri

    def list_objects(self, prefix_uri: str) -> Iterator[StoredObject]:
        """Page through ListObjectsV2: S3 hands out 1000 keys a page, in key order."""
        bucket, prefix = parse_s3_prefix(prefix_uri)
        paginator = self._client.get_paginator("list_objects_v2")
        with _storage_errors(prefix_uri, unreachable=True):
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield StoredObject(
                        f"s3://{bucket}/{item['Key']}",
                        item["Key"],
                        item.get("ETag", "").strip('"'),
                        int(item.get("Size", 0)),
                    )

    def check_bucket(self, bucket: str) -> None:
        """HEAD the bucket: missing, forbidden and unreachable all raise StorageError."""
        with _storage_errors(f"s3://{bucket}", unreachable=True):
            self._client.head_bucket(Bucket=bucket)

    def get(self, uri: str) -> bytes:
        """Read any ``s3://`` object relightq's credentials can reach."""
        bucket, key = parse_s3_uri(uri)
        # Missing bucket or key, or no permission: nothing a retry would change.
        with _storage_errors(uri):
            body: bytes = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def read(self, uri: str) -> StoredBlob:
        """Read an object with the ETag of the very version read (one GET, no race)."""
        bucket, key = parse_s3_uri(uri)
        with _storage_errors(uri):
            found = self._client.get_object(Bucket=bucket, Key=key)
            return StoredBlob(found["Body"].read(), str(found.get("ETag", "")).strip('"'))

    def etag(self, uri: str) -> str:
        """HEAD the object for its ETag."""
        bucket, key = parse_s3_uri(uri)
        with _storage_errors(uri):
            found = self._client.head_object(Bucket=bucket, Key=key)
        return str(found.get("ETag", "")).strip('"')

    def copy(self, source_uri: str, uri: str) -> None:
        """boto3's managed copy: CopyObject, or UploadPartCopy in parts past its threshold;
        the content type and metadata go with the bytes."""
        if source_uri == uri:
            return
        source_bucket, source_key = parse_s3_uri(source_uri)
        bucket, key = parse_s3_uri(uri)
        with _storage_errors(source_uri):
            self._client.copy({"Bucket": source_bucket, "Key": source_key}, bucket, key)

    def url(self, uri: str) -> str:
        """A presigned GET URL valid for the configured time."""
        bucket, key = parse_s3_uri(uri)
        url: str = self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.expires
        )
        return url

    def delete(self, uri: str) -> None:
        """Remove an object."""
        bucket, key = parse_s3_uri(uri)
        self._client.delete_object(Bucket=bucket, Key=key)


class LocalStorage:
    """A folder standing in for relightq's bucket (the demo: no server at all).

    It speaks the same ``s3://<bucket>/<key>`` URIs as S3Storage, so jobs, batches and
    their manifests look the same in the demo as in production.
    """

    def __init__(self, root: str | Path, bucket: str) -> None:
        self.root = Path(root).resolve()
        self.bucket = bucket

    def _path(self, uri: str) -> Path:
        bucket, key = parse_s3_uri(uri)
        path = (self.root / key).resolve()
        if bucket != self.bucket or not path.is_relative_to(self.root):
            raise StorageError(f"{uri} is not in the demo's bucket s3://{self.bucket}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Write ``data`` under the root folder."""
        return self.put_uri(f"s3://{self.bucket}/{key}", data, content_type)

    def put_uri(self, uri: str, data: bytes, content_type: str) -> str:
        """Write ``data`` to the file standing for ``uri``."""
        path = self._path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader never sees half an image
        return uri

    def get(self, uri: str) -> bytes:
        """Read a file written by put."""
        try:
            return self._path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"{uri} does not exist") from exc

    def read(self, uri: str) -> StoredBlob:
        """Read a file with its ETag (the MD5 of its bytes, as S3's for a simple upload)."""
        data = self.get(uri)
        return StoredBlob(data, hashlib.md5(data, usedforsecurity=False).hexdigest())

    def etag(self, uri: str) -> str:
        """The MD5 of the file's bytes."""
        return self.read(uri).etag

    def copy(self, source_uri: str, uri: str) -> None:
        """Copy one file to another (atomically, as put)."""
        if source_uri != uri:
            self.put_uri(uri, self.get(source_uri), "application/octet-stream")

    def list_objects(self, prefix_uri: str) -> Iterator[StoredObject]:
        """Files under the prefix, in key order; the ETag is the MD5 of the bytes, as S3's."""
        bucket, prefix = parse_s3_prefix(prefix_uri)
        self.check_bucket(bucket)
        keys = sorted(
            str(path.relative_to(self.root))
            for path in self.root.rglob("*")
            if path.is_file() and not path.name.endswith(".tmp")
        )
        for key in keys:
            if key.startswith(prefix):
                path = self.root / key
                etag = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
                yield StoredObject(f"s3://{bucket}/{key}", key, etag, path.stat().st_size)

    def check_bucket(self, bucket: str) -> None:
        """Only the demo's own bucket exists."""
        if bucket != self.bucket:
            raise StorageError(f"s3://{bucket}: NoSuchBucket")

    def url(self, uri: str) -> str:
        """The file's own file:// URI: the demo has nothing to presign."""
        return self._path(uri).as_uri()

    def delete(self, uri: str) -> None:
        """Remove a file."""
        self._path(uri).unlink(missing_ok=True)


def make_storage(settings: Settings) -> Storage:
    """The store the settings describe."""
    if settings.local_storage_dir:
        return LocalStorage(settings.local_storage_dir, settings.s3_bucket)
    return S3Storage(settings)


@lru_cache
def get_storage() -> Storage:
    """The process-wide store; boto3 clients are thread-safe and costly to build."""
    return make_storage(get_settings())
