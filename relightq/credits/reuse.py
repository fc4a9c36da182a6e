"""Result reuse: a picture already made for the tenant is copied, not bought again.

IC-Light with a fixed seed is reproducible: the same subject image, the same parameters
and the same seed make the same picture. So a job whose subject content and every
parameter match an earlier succeeded job of the same tenant copies that job's outputs
(a server-side S3 copy to its own keys) and succeeds with 0 credits, ``reused_from``
naming the source.

What "the same subject" means is the whole risk: a false reuse hands a customer the
wrong picture, which is worse than paying. So the identity is the image's content, never
its name alone:

- stored bytes (an upload, an ``s3://`` object): the SHA-256 of the bytes the worker read
  and would send Segmind;
- an http(s) URL, which Segmind fetches itself: the URL with the **strong** ETag its
  server answers to a HEAD (RFC 9110 8.8.3: a strong validator changes whenever the
  bytes do). The HEAD is made before the call and again after it; a picture whose ETag
  changed meanwhile is not offered for reuse. A server without a strong ETag (none, or a
  weak ``W/``) gives no identity: the job is relit every time.

A null seed (random) never reuses and is never reused. ``reuse: false`` on a job, batch,
trigger or schedule buys a new picture.

Two identical jobs at once: the first marks the picture as being made (its
``reuse_key``, under a PostgreSQL advisory lock on the key); the other waits for it
(``TWIN_WAIT_SECONDS`` at a time) and then copies its outputs instead of paying too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import httpx
from sqlalchemy import Executable, func, select
from sqlalchemy.orm import Session

from relightq.db import utcnow
from relightq.jobs.models import Job, JobOutput, JobStatus
from relightq.netguard import BlockedAddress, GuardedTransport
from relightq.segmind.params import RelightParams

log = logging.getLogger(__name__)

# How long a job waits for an identical job that is making the same picture, before it
# looks again (then copies it, or makes it itself if that one failed).
TWIN_WAIT_SECONDS = 5.0
HEAD_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


@dataclass(frozen=True)
class SubjectIdentity:
    """What a subject image is (``digest``) and where it was with which validator
    (``locator``), both SHA-256 hex."""

    digest: str
    locator: str


def _sha256(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def locator(subject_image: str, validator: str) -> str:
    """The subject's address with the validator it had: equal locators, equal content."""
    return _sha256("locator", subject_image, validator)


def stored_identity(subject_image: str, data: bytes, etag: str) -> SubjectIdentity:
    """Stored bytes: their SHA-256 (the ETag only locates them, for estimates)."""
    return SubjectIdentity(
        _sha256("bytes", hashlib.sha256(data).hexdigest()), locator(subject_image, etag)
    )


def url_identity(url: str, etag: str) -> SubjectIdentity:
    """A URL's content as its strong ETag vouches for it."""
    found = locator(url, etag)
    return SubjectIdentity(_sha256("url", found), found)


def canonical_params(params: RelightParams) -> str:
    """Every upstream parameter as one text (JSON, keys sorted), so ``2`` and ``2.0`` are
    the same picture."""
    return json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def reuse_key(identity: SubjectIdentity, params: RelightParams) -> str | None:
    """The picture's identity: its subject and every upstream parameter; None when the
    seed is random (no two calls make the same picture)."""
    if params.seed is None:
        return None
    return _sha256("picture", identity.digest, canonical_params(params))


@lru_cache(maxsize=1)
def _head_client() -> httpx.Client:
    # Subject URLs are the customer's: public addresses only (or what the operator
    # allows), checked on every connection and redirect, as webhooks are.
    return httpx.Client(
        transport=GuardedTransport(), follow_redirects=True, max_redirects=5, timeout=HEAD_TIMEOUT
    )


def strong_etag(url: str, client: httpx.Client | None = None) -> str | None:
    """The strong ETag a HEAD of ``url`` answers, or None (weak, missing, any failure)."""
    try:
        response = (client or _head_client()).head(url)
    except (httpx.HTTPError, BlockedAddress) as exc:
        log.info("no reuse for %s: HEAD failed (%s)", url, type(exc).__name__)
        return None
    etag = response.headers.get("etag")
    if response.status_code != 200 or not etag or etag.startswith("W/"):
        return None
    return etag


@dataclass(frozen=True)
class Source:
    """An earlier succeeded job whose outputs make the same picture."""

    job_id: uuid.UUID
    outputs: list[JobOutput]


@dataclass(frozen=True)
class Twin:
    """Another job is making the same picture right now."""

    job_id: uuid.UUID


def _lock_key(tenant_id: uuid.UUID, key: str) -> int:
    # pg_advisory_xact_lock takes a signed 64-bit key.
    digest = hashlib.sha256(f"{tenant_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def find_or_mark(
    session: Session,
    job_id: uuid.UUID,
    tenant_id: uuid.UUID,
    key: str,
    mark: Executable,
) -> Source | Twin | None:
    """An earlier picture to copy, or a job making it now; else run ``mark`` (records
    this job's ``reuse_key``, so a twin arriving next waits for it) and answer None."""
    if session.get_bind().dialect.name == "postgresql":
        # Serialises lookups of one picture: of two twins, exactly one goes on to pay.
        session.execute(select(func.pg_advisory_xact_lock(_lock_key(tenant_id, key))))
    same = (Job.tenant_id == tenant_id) & (Job.reuse_key == key) & (Job.id != job_id)
    source_id = session.scalar(
        select(Job.id)
        .where(same, Job.status == JobStatus.SUCCEEDED)
        .order_by(Job.finished_at.desc())
        .limit(1)
    )
    if source_id is not None:
        outputs = list(
            session.scalars(
                select(JobOutput).where(JobOutput.job_id == source_id).order_by(JobOutput.index)
            )
        )
        session.expunge_all()
        if outputs:
            return Source(source_id, outputs)
    twin = session.scalar(
        select(Job.id)
        .where(same, Job.status == JobStatus.RUNNING, Job.lease_expires_at > utcnow())
        .limit(1)
    )
    if twin is not None:
        return Twin(twin)
    session.execute(mark)
    return None


def value_of(outputs: list[JobOutput], price: Decimal) -> Decimal:
    """What copied outputs would have cost from Segmind."""
    return price * len(outputs)
