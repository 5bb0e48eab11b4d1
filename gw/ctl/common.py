"""What every gwctl command shares: the repository root, the error it reports,
how it reaches Redis and how it shows a Redis URL."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parents[2]
DOCTOR_PREFIX = "gwctl-doctor-"      # call-ids of doctor's sample sessions (hidden by `calls`)


class GwctlError(RuntimeError):
    """Something gwctl needs does not answer; the message says what and where."""


def redact_url(url: str) -> str:
    """The URL without its password (what gwctl prints)."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return urlunparse(parsed._replace(netloc=netloc))


def redis_client(url: str, timeout: float = 2.0):
    import redis

    if url.startswith("redis+sentinel://"):
        from kemi import store
        return store.connect(url)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
