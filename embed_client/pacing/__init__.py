"""How calls are paced: the `Pacer` protocol both buckets implement, and the choice between them.

`local.TokenBucket` paces one process (`local.MediaMinutesBudget` meters media minutes per hour);
`redis_gcra.RedisTokenBucket` shares one limit among every worker through Redis. Callers depend on the
protocol and on `make_pacer`; the bucket modules import only downward (`redis_gcra` uses `local`'s
constants and its fallback bucket), never this chooser.
"""
from __future__ import annotations

import logging
import threading
import urllib.parse
from typing import Optional, Protocol, runtime_checkable

from embed_client.pacing.local import TokenBucket
from embed_client.pacing.redis_gcra import RedisTokenBucket, connect, redacted_url

__all__ = ["BACKENDS", "Pacer", "make_pacer"]

_LOGGER = logging.getLogger(__name__)


@runtime_checkable
class Pacer(Protocol):
    """Paces calls to a rate: every caller takes a turn, 429s slow it, successes restore it."""

    def acquire(self) -> float:
        """Blocks until a call may start; returns the seconds waited."""

    def on_rate_limited(self, retry_after_sec: Optional[float] = None,
                        limit_per_minute: Optional[float] = None) -> None:
        """A 429: pause for Retry-After, slow down or learn the stated limit."""

    def on_success(self) -> None:
        """A call got through."""


BACKENDS = ("local", "redis")
_WARNED_URLS: set = set()
_WARNED_LOCK = threading.Lock()


def make_pacer(rate_per_minute: Optional[float], backend: str = "local", redis_url: Optional[str] = None,
                max_workers: int = 1, key: str = "tl-embed:ratelimit", burst: float = 1.0):
    """The bucket a worker process paces its calls with. `rate_per_minute` is the limit for the
    whole job (None: no pace).

    - backend "local": a `TokenBucket` at `rate_per_minute / max_workers`, this process's share.
    - backend "redis": an `embed_client.pacing.redis_gcra.RedisTokenBucket` at `rate_per_minute`, shared by
      every worker that uses the same `redis_url` and `key` (so `max_workers` need not be exact).
      If Redis cannot be reached (or the `redis` package is missing), logs one warning per URL and
      process and returns the local bucket above: slower than it could be, never over the limit as
      long as `max_workers` is right, and never a failed job.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown rate limit backend {backend!r}; use one of {list(BACKENDS)}")
    if max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, got {max_workers}")
    share = None if rate_per_minute is None else rate_per_minute / max_workers
    if backend == "local":
        return TokenBucket(share, burst=burst)
    if not redis_url:
        raise ValueError("the redis rate limit backend needs a redis_url (redis://HOST:PORT/DB)")
    shown = redacted_url(redis_url)
    try:
        client = connect(redis_url)
        client.ping()
        return RedisTokenBucket(rate_per_minute, redis_url, key=key, burst=burst,
                                max_workers=max_workers, client=client)
    except Exception as exc:  # ImportError, ConnectionError, TimeoutError, auth, a bad URL: all mean "no Redis"
        with _WARNED_LOCK:
            first = shown not in _WARNED_URLS
            _WARNED_URLS.add(shown)
        if first:
            limit = "unlimited" if rate_per_minute is None else f"{rate_per_minute:g}/{max_workers} = {share:g}"
            _LOGGER.warning("Redis at %s unreachable: %s; falling back to a per-worker share of the limit: "
                            "%s per minute", shown, _redact(str(exc), redis_url), limit)
        return TokenBucket(share, burst=burst)


def _redact(text: str, redis_url: str) -> str:
    """An error message without the URL's password, should the client have quoted it."""
    try:
        password = urllib.parse.urlsplit(redis_url).password
    except ValueError:
        return text
    return text.replace(password, "***") if password else text
