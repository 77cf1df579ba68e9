"""Process-wide wiring: which Redis to use (explicit URL or the embedded one)."""

from __future__ import annotations

import functools
import os

from core.embedded_redis import EmbeddedRedis
from core.settings import get_settings

__all__ = ["embedded_redis", "redis_url"]


@functools.cache
def embedded_redis() -> EmbeddedRedis:
    return EmbeddedRedis(get_settings().var_dir)


def redis_url() -> str:
    """``ORDERSYNC_REDIS_URL`` as-is, else the embedded server (found or started)."""
    explicit = get_settings().redis_url
    if explicit:
        return explicit
    url = embedded_redis().ensure()
    # child processes (worker, beat, web started by `ordersync up`) use the same server
    os.environ["ORDERSYNC_REDIS_URL"] = url
    return url
