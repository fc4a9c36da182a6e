"""What the sync and async clients share besides the calls themselves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from relightq.batches.schemas import BatchOut, BatchStatus
from relightq.jobs.models import FINAL_STATUSES as JOB_FINAL_STATUSES
from relightq.jobs.schemas import JobOut

DEFAULT_API_URL = "http://127.0.0.1:8000"
USER_AGENT = "relightq-python"
BATCH_FINAL_STATUSES = (BatchStatus.COMPLETED, BatchStatus.CANCELLED)

T_co = TypeVar("T_co", covariant=True)


class Page(Protocol[T_co]):
    """A page of a listing: its items, and the cursor of the next page (None: the last)."""

    @property
    def items(self) -> Sequence[T_co]: ...  # pragma: no cover - a protocol

    @property
    def next_cursor(self) -> str | None: ...  # pragma: no cover - a protocol


def auth_headers(api_key: str, user_agent: str) -> dict[str, str]:
    """The headers every request carries."""
    headers = {"User-Agent": user_agent}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def job_is_final(job: JobOut) -> bool:
    """Succeeded, failed or cancelled: the job will not change by itself any more."""
    return job.status in JOB_FINAL_STATUSES


def batch_is_final(batch: BatchOut) -> bool:
    """Completed or cancelled."""
    return batch.status in BATCH_FINAL_STATUSES


def partial_path(target: Path) -> Path:
    """Where a download goes until it is whole."""
    return target.with_name(target.name + ".part")
