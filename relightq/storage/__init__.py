"""Where images live: an S3 bucket in production, a local folder in the demo."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from relightq.settings import Settings, get_settings


class StorageError(Exception):
    """A stored object could not be read or written."""


class Storage(Protocol):
    """What jobs need from a store of image bytes."""

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Write ``data`` at ``key`` (overwriting: keys are deterministic) and return its URI."""
        ...

    def get(self, uri: str) -> bytes:
        """Read the object at ``uri``."""
        ...

    def url(self, uri: str) -> str:
        """A URL a user can download ``uri`` from."""
        ...

    def delete(self, uri: str) -> None:
        """Remove the object at ``uri`` if it exists."""
        ...


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` as (bucket, key); raises ValueError when it is not one."""
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key:
        raise ValueError("expected s3://bucket/key")
    return parsed.netloc, key


class S3Storage:
    """An S3 (or MinIO, or moto) bucket reached through boto3."""

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
            # Path-style works with MinIO and moto without wildcard DNS.
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=50,
            ),
        )

    def ensure_bucket(self) -> None:
        """Create relightq's bucket unless it already exists."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Write ``data`` at ``key`` in relightq's bucket."""
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return f"s3://{self.bucket}/{key}"

    def get(self, uri: str) -> bytes:
        """Read any ``s3://`` object relightq's credentials can reach."""
        bucket, key = parse_s3_uri(uri)
        try:
            body: bytes = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            # Missing bucket or key, or no permission: nothing a retry would change.
            code = exc.response.get("Error", {}).get("Code", "error")
            raise StorageError(f"{uri}: {code}") from exc
        return body

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
    """A folder standing in for the bucket (the demo: no server at all)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        path = Path(parsed.path).resolve()
        if parsed.scheme != "file" or not path.is_relative_to(self.root):
            raise StorageError(f"{uri} is not inside {self.root}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Write ``data`` under the root folder."""
        path = (self.root / key).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader never sees half an image
        return path.as_uri()

    def get(self, uri: str) -> bytes:
        """Read a file written by put."""
        try:
            return self._path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"{uri} does not exist") from exc

    def url(self, uri: str) -> str:
        """The file:// URI itself."""
        return uri

    def delete(self, uri: str) -> None:
        """Remove a file."""
        self._path(uri).unlink(missing_ok=True)


def make_storage(settings: Settings) -> Storage:
    """The store the settings describe."""
    if settings.local_storage_dir:
        return LocalStorage(settings.local_storage_dir)
    return S3Storage(settings)


@lru_cache
def get_storage() -> Storage:
    """The process-wide store; boto3 clients are thread-safe and costly to build."""
    return make_storage(get_settings())
