"""What a batch would cost before anything is stored: predicted reuse, credits and time.

A dry run predicts reuse the way a worker decides it (:mod:`.reuse`), from what can be
known without reading any image: an item reuses when reuse is on for it, its seed is
fixed, its subject has a validator now (an http(s) URL's strong ETag, an ``s3://``
object's ETag) and either a succeeded job of the tenant has the same subject locator
and parameters, or an earlier item of the same batch does (a worker makes such a twin
wait and copy). Everything else is predicted paid. It stays a prediction: a subject may
change, or an earlier picture be made or removed, before the item runs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from relightq.credits.amounts import ZERO
from relightq.credits.reuse import canonical_params, locator, strong_etag
from relightq.jobs.models import Job, JobStatus
from relightq.segmind.params import RelightParams
from relightq.settings import Settings
from relightq.storage import Storage

log = logging.getLogger(__name__)

# HEADs made at once: a 10,000-item catalog is checked in seconds, and no customer server
# (or S3) sees more than this many requests from one dry run at a time.
HEAD_WORKERS = 16
# A dry run answers in about this long at most, however slow the customer's servers:
# subjects not checked by then are predicted paid (the estimate errs towards paying).
HEAD_DEADLINE_SECONDS = 120.0
# Locators asked about per query (an IN list PostgreSQL plans with the partial index).
LOOKUP_CHUNK = 1000


@dataclass(frozen=True)
class PlannedItem:
    """One valid item of a batch as a dry run sees it."""

    subject_image: str
    params: dict[str, Any]  # RelightParams.model_dump(), as a job stores it
    reuse: bool  # the item's and the batch's reuse, both on


@dataclass(frozen=True)
class Estimate:
    """A batch's predicted calls, reuse, credits and time."""

    items: int
    would_reuse: int
    credits: Decimal
    credits_saved: Decimal
    max_calls_per_minute: int

    @property
    def calls(self) -> int:
        """Items predicted to call Segmind."""
        return self.items - self.would_reuse

    @property
    def estimated_seconds(self) -> float:
        """The calls at the fleet's per-minute cap: the least time they can take."""
        return self.calls / self.max_calls_per_minute * 60


def item_cost(params: dict[str, Any], settings: Settings) -> Decimal:
    """What one item's call costs: its images at the price per image."""
    return int(params.get("number_of_images") or 1) * settings.segmind_credits_per_image


def validator(subject_image: str, storage: Storage) -> str | None:
    """What vouches for the subject's content now, as a worker would ask for it; None
    when there is none (no strong ETag, the HEAD failed): such an item is paid."""
    try:
        if subject_image.startswith("s3://"):
            return storage.etag(subject_image) or None
        return strong_etag(subject_image)
    except Exception as exc:  # any failure only predicts a paid item, never fails the run
        log.info("no reuse predicted for %s: %s", subject_image, type(exc).__name__)
        return None


def validators(
    subjects: Iterable[str], storage: Storage, deadline: float = HEAD_DEADLINE_SECONDS
) -> dict[str, str | None]:
    """Each distinct subject's validator, asked for ``HEAD_WORKERS`` at a time; those not
    known within ``deadline`` seconds are left out (no validator: predicted paid)."""
    distinct = list(dict.fromkeys(subjects))
    if not distinct:
        return {}
    pool = ThreadPoolExecutor(min(HEAD_WORKERS, len(distinct)), thread_name_prefix="dry-run")
    try:
        asked = {pool.submit(validator, subject, storage): subject for subject in distinct}
        done, late = wait(asked, timeout=deadline)
    finally:
        # HEADs under way end by their own timeout in the background; none is waited for.
        pool.shutdown(wait=False, cancel_futures=True)
    if late:
        log.warning("dry run: %d subjects not checked within %g s", len(late), deadline)
    return {asked[future]: future.result() for future in done}


def picture(params: dict[str, Any]) -> str | None:
    """The parameters as the worker's reuse key reads them (validated, JSON, sorted), so
    ``2`` and ``2.0`` are the same picture; None for parameters no job could have."""
    try:
        return canonical_params(RelightParams.model_validate(params))
    except ValidationError:
        return None


def made_pictures(
    session: Session, tenant_id: uuid.UUID, locators: Iterable[str]
) -> set[tuple[str, str]]:
    """(locator, picture) of the tenant's succeeded jobs at any of ``locators``."""
    wanted = list(dict.fromkeys(locators))
    made: set[tuple[str, str]] = set()
    for start in range(0, len(wanted), LOOKUP_CHUNK):
        rows = session.execute(
            select(Job.subject_locator, Job.params)
            .where(
                Job.tenant_id == tenant_id,
                Job.subject_locator.in_(wanted[start : start + LOOKUP_CHUNK]),
                Job.status == JobStatus.SUCCEEDED,
            )
            .distinct()
        )
        for found_locator, params in rows:
            made_as = picture(params)
            if found_locator is not None and made_as is not None:
                made.add((found_locator, made_as))
    return made


def _reusable(item: PlannedItem) -> bool:
    # A random seed never makes the same picture twice: the worker does not even look.
    return item.reuse and item.params.get("seed") is not None


def _identities(items: Sequence[PlannedItem], storage: Storage) -> list[tuple[str, str] | None]:
    """Per item, the (locator, picture) a worker would look up, or None when it would not
    look (reuse off, random seed, no validator)."""
    found = validators((item.subject_image for item in items if _reusable(item)), storage)
    identities: list[tuple[str, str] | None] = []
    for item in items:
        etag = found.get(item.subject_image) if _reusable(item) else None
        made_as = picture(item.params) if etag else None
        identities.append(
            (locator(item.subject_image, etag), made_as) if etag and made_as else None
        )
    return identities


def estimate(
    session: Session,
    tenant_id: uuid.UUID,
    items: Sequence[PlannedItem],
    storage: Storage,
    settings: Settings,
) -> Estimate:
    """Predict which of ``items`` reuse a picture, and what the others cost and take."""
    identities = _identities(items, storage)
    known = made_pictures(session, tenant_id, (i[0] for i in identities if i is not None))
    reused, credits, saved = 0, ZERO, ZERO
    for item, identity in zip(items, identities, strict=True):
        cost = item_cost(item.params, settings)
        if identity is not None and identity in known:
            reused += 1
            saved += cost
            continue
        credits += cost
        if identity is not None:
            known.add(identity)  # its twins later in the batch wait for it and copy it
    return Estimate(
        items=len(items),
        would_reuse=reused,
        credits=credits,
        credits_saved=saved,
        max_calls_per_minute=settings.max_calls_per_minute,
    )
