"""A thread-safe token bucket that paces calls to a per-minute limit and slows down on 429s (AIMD)."""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

__all__ = ["TokenBucket"]

# After a 429 the pace is cut to this fraction, then creeps back by RECOVERY_STEP per success.
BACKOFF_FACTOR = 0.7
RECOVERY_STEP = 0.02
# Never slow below this fraction of the configured rate: a wrong guess must not stall the job.
MIN_RATE_FRACTION = 0.05


class TokenBucket:
    """Paces callers to `rate_per_minute`, never more than `burst` calls back to back.

    `acquire()` blocks until a call may start and returns the seconds it waited.
    `on_rate_limited(wait)` halts every caller for `wait` seconds (Retry-After) and lowers
    the pace; `on_success()` raises it back toward the configured rate.
    """

    def __init__(self, rate_per_minute: Optional[float], burst: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if rate_per_minute is not None and rate_per_minute <= 0:
            raise ValueError(f"rate_per_minute must be positive, got {rate_per_minute}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.configured_rate = rate_per_minute
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._fraction = 1.0
        self._tokens = self.burst
        self._updated = clock()
        self._paused_until = 0.0

    @property
    def current_rate_per_minute(self) -> Optional[float]:
        if self.configured_rate is None:
            return None
        return self.configured_rate * self._fraction

    def _reserve(self) -> float:
        """Takes a token (possibly going into debt) and returns how long the caller must wait."""
        with self._lock:
            now = self._clock()
            if self.configured_rate is None:
                return max(0.0, self._paused_until - now)
            per_sec = self.configured_rate * self._fraction / 60.0
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * per_sec)
            self._updated = now
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / per_sec
            return max(wait, self._paused_until - now)

    def acquire(self) -> float:
        wait = self._reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def on_rate_limited(self, retry_after_sec: Optional[float] = None) -> None:
        with self._lock:
            self._fraction = max(MIN_RATE_FRACTION, self._fraction * BACKOFF_FACTOR)
            if retry_after_sec:
                self._paused_until = max(self._paused_until, self._clock() + retry_after_sec)

    def on_success(self) -> None:
        if self._fraction < 1.0:
            with self._lock:
                self._fraction = min(1.0, self._fraction + RECOVERY_STEP)
