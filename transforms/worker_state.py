"""Per worker process: the rate-limit bucket and the quota state every DoFn instance and thread shares."""
from __future__ import annotations

import logging
import threading
from typing import Dict, Optional, Tuple

from embed_client.pacing import make_bucket
from embed_client.ratelimit import MediaMinutesBudget, TokenBucket
from transforms.call_settings import CallSettings

__all__ = ["QuotaState", "WaitMeter", "process_bucket", "process_media_budget", "process_quota", "process_wait_meter"]

_LOGGER = logging.getLogger(__name__)

_BUCKETS: Dict[Tuple, TokenBucket] = {}
_BUCKETS_LOCK = threading.Lock()


def process_bucket(settings: CallSettings) -> TokenBucket:
    """One bucket per process and endpoint, shared by every DoFn instance and thread in it."""
    key = (settings.base_url, settings.requests_per_minute, settings.max_workers, settings.rate_limit_backend,
           settings.redis_url, settings.rate_limit_key)
    with _BUCKETS_LOCK:
        if key not in _BUCKETS:
            _BUCKETS[key] = make_bucket(settings.requests_per_minute, backend=settings.rate_limit_backend,
                                        redis_url=settings.redis_url, max_workers=settings.max_workers,
                                        key=settings.rate_limit_key)
        return _BUCKETS[key]


class QuotaState:
    """Per process and run: once the quota or the call budget is spent, nothing more is called."""

    def __init__(self, max_calls: Optional[int], outage_after: int = 0):
        self._lock = threading.Lock()
        self.max_calls = max_calls
        self.calls = 0
        self.stopped: Optional[str] = None
        self.resets_at: Optional[float] = None
        # Consecutive attempts that failed for the service's reason (refused, timed out, 5xx, no endpoint).
        self.outage_after = outage_after
        self.service_failures = 0
        self.last_service_error: Optional[str] = None

    def service_result(self, failed: bool, error: Optional[str] = None) -> None:
        """Counts an attempt's outcome; past `outage_after` failures in a row, calling stops for this run."""
        with self._lock:
            if not failed:
                self.service_failures = 0
                return
            self.service_failures += 1
            self.last_service_error = error
            if self.outage_after and self.service_failures >= self.outage_after and not self.stopped:
                self.stopped = "service_unavailable"
                _LOGGER.warning("the API failed %d attempts in a row (last: %s): calling stops and the rest is "
                                "deferred to the next run", self.service_failures, error)

    def take_call(self) -> bool:
        """Counts a call against the budget; False when it may not be made."""
        with self._lock:
            if self.stopped:
                return False
            if self.max_calls is not None and self.calls >= self.max_calls:
                self.stopped = "max_calls"
                _LOGGER.warning("the run's budget of %d calls is spent; the rest is deferred to the next run",
                                self.max_calls)
                return False
            self.calls += 1
            return True

    def stop(self, reason: str, resets_at: Optional[float]) -> None:
        with self._lock:
            if not self.stopped:
                from transforms.items import iso_utc

                _LOGGER.warning("the API quota is spent (resets at %s); the rest is deferred to the next run",
                                iso_utc(resets_at) or "an unknown time")
                self.stopped, self.resets_at = reason, resets_at


_QUOTAS: Dict[Tuple, QuotaState] = {}


def process_quota(settings: CallSettings) -> QuotaState:
    key = (settings.run_id, settings.base_url)
    with _BUCKETS_LOCK:
        if key not in _QUOTAS:
            budget = None if settings.max_calls is None else settings.max_calls // settings.max_workers
            _QUOTAS[key] = QuotaState(budget, settings.outage_after_failures)
        return _QUOTAS[key]


_MEDIA_BUDGETS: Dict[Tuple, MediaMinutesBudget] = {}


def process_media_budget(settings: CallSettings) -> Optional[MediaMinutesBudget]:
    """This process's share of the per-hour media minutes, or None when not configured."""
    if settings.media_minutes_per_hour is None:
        return None
    key = (settings.base_url, settings.media_minutes_per_hour, settings.max_workers)
    with _BUCKETS_LOCK:
        if key not in _MEDIA_BUDGETS:
            _MEDIA_BUDGETS[key] = MediaMinutesBudget(settings.media_minutes_per_hour / settings.max_workers)
        return _MEDIA_BUDGETS[key]


class WaitMeter:
    """Wall seconds during which at least one caller of this process waited for its turn at the limit
    (thread-seconds add up every waiting thread and can exceed the run's length)."""

    def __init__(self, clock=None):
        import time

        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._waiting = 0
        self._since = 0.0
        self._total = 0.0

    def wait(self, acquire) -> float:
        with self._lock:
            if self._waiting == 0:
                self._since = self._clock()
            self._waiting += 1
        try:
            return acquire()
        finally:
            with self._lock:
                self._waiting -= 1
                if self._waiting == 0:
                    self._total += self._clock() - self._since

    def take(self) -> float:
        """The wall seconds gathered since the last take (each second is reported once, whoever takes it)."""
        with self._lock:
            total, self._total = self._total, 0.0
            return total


_METERS: Dict[Tuple, WaitMeter] = {}


def process_wait_meter(settings: CallSettings) -> WaitMeter:
    key = (settings.run_id, settings.base_url)
    with _BUCKETS_LOCK:
        if key not in _METERS:
            _METERS[key] = WaitMeter()
        return _METERS[key]
