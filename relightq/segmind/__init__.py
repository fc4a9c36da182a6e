"""The Segmind IC-Light upstream: request fields, client and errors."""

from __future__ import annotations

from functools import lru_cache

from relightq.segmind.client import SegmindClient
from relightq.settings import get_settings


@lru_cache
def get_segmind_client() -> SegmindClient:
    """One pooled client per process (built lazily, so after a prefork worker forks)."""
    settings = get_settings()
    settings.warn_if_simulated()
    return SegmindClient(
        settings.effective_segmind_url,
        settings.effective_segmind_key,
        timeout=settings.segmind_timeout_seconds,
    )
