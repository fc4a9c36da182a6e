"""Forget every process-wide object built from settings, after tests change the env."""

from __future__ import annotations

from relightq.db import get_engine, get_sessionmaker
from relightq.segmind import get_segmind_client
from relightq.settings import get_settings
from relightq.storage import get_storage
from relightq.throttle.service import get_fleet


def reset_caches() -> None:
    """Rebuild settings, storage and the Segmind client on next use."""
    for cached in (
        get_settings,
        get_storage,
        get_segmind_client,
        get_sessionmaker,
        get_engine,
        get_fleet,
    ):
        cached.cache_clear()
    try:
        from worker.tasks import _build_deps
    except ImportError:
        return
    _build_deps.cache_clear()
