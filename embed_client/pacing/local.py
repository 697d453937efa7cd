"""A thread-safe token bucket that paces calls to a per-minute limit and slows down on 429s (AIMD)."""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Optional, Tuple

__all__ = ["MediaMinutesBudget", "TokenBucket", "cut_unstated", "observed_limit", "recovered"]

_LOGGER = logging.getLogger(__name__)

# After a 429 the pace is cut to this fraction, then creeps back by RECOVERY_STEP per success.
BACKOFF_FACTOR = 0.7
RECOVERY_STEP = 0.02
# Never slow below this fraction of the configured rate: a wrong guess must not stall the job.
MIN_RATE_FRACTION = 0.05
# After a 429 that states no limit, the pace climbs back fast to this fraction of the rate that drew it
# (the ceiling), then probes above it slowly: a configured rate above the real limit converges under
# it instead of a sawtooth of 429 bursts and full stops.
CEILING_MARGIN = 0.95
PROBE_PER_MINUTE = 0.01  # above the ceiling, the pace rises by 1% of the rate per minute
# 429s within this long of a cut (or of its Retry-After) are the same event and cut no further.
CUT_QUIET_SEC = 2.0
# A 429 that states no limit, after this long watching and when the calls that got through in the last
# minute are between this share of what we sent and all of it, teaches the limit: the pace holds just under
# it instead of cutting and climbing back (a burst 429 at the start, or one far under the pace, only cuts).
OBSERVE_MIN_SEC = 30.0
OBSERVED_SHARE_MIN = 0.5
# With no configured rate, a 429 that states the per-minute limit (X-Ratelimit-Limit) sets the
# pace to it times this margin; one that does not (a burst) only pauses callers for Retry-After.
LEARNED_RATE_MARGIN = 0.95
# Calls are paced this much under the rate: a burst token plus late threads catching up would
# otherwise put rate + 1 calls into some minute of a sliding-window limit (seen as one 429 in 1000).
PACE_MARGIN = 0.99


# ---- how the pace learns, shared with the Redis bucket (embed_client.pacing.redis_gcra) ----------------
# Paces are fractions of the configured rate; these functions hold no state, so a bucket kept in Redis
# decides exactly as the local one does.

def observed_limit(successes_last_minute: int, watched_sec: float, sending_per_minute: float) -> Optional[float]:
    """The calls that got through in the last 60 s, when that reads as a per-minute limit: watched for at
    least OBSERVE_MIN_SEC, at least 10 calls, and well under what we were sending (not a passing burst 429)."""
    observed = float(successes_last_minute)
    if watched_sec < OBSERVE_MIN_SEC or observed < 10:
        return None
    if not OBSERVED_SHARE_MIN * sending_per_minute <= observed < sending_per_minute:
        return None
    return observed


def cut_unstated(fraction: float, observed_per_minute: Optional[float],
                 configured_rate: float) -> Tuple[float, float]:
    """A 429 that states no limit: (new fraction, new ceiling). What got through in the last minute, when
    it reads as the limit, is held just under; otherwise cut by BACKOFF_FACTOR, to climb back fast to
    CEILING_MARGIN of the pace that drew the 429."""
    if observed_per_minute is not None:
        held = max(MIN_RATE_FRACTION, observed_per_minute * CEILING_MARGIN / configured_rate)
        return held, held
    return (max(MIN_RATE_FRACTION, fraction * BACKOFF_FACTOR),
            max(MIN_RATE_FRACTION, fraction * CEILING_MARGIN))


def recovered(fraction: float, ceiling: float, configured_rate: Optional[float]) -> Tuple[float, float]:
    """A success: (new fraction, new ceiling). Fast back to the ceiling; above it, a step per call that adds
    up to PROBE_PER_MINUTE of the rate a minute, the ceiling following."""
    per_minute = max(1.0, (configured_rate or 1.0) * fraction)
    step = RECOVERY_STEP if fraction < ceiling else PROBE_PER_MINUTE / per_minute
    fraction = min(1.0, fraction + step)
    return fraction, max(ceiling, fraction)


class TokenBucket:
    """Paces callers to `rate_per_minute`, never more than `burst` calls back to back.

    `acquire()` blocks until a call may start and returns the seconds it waited.
    `on_rate_limited(wait)` halts every caller for `wait` seconds (Retry-After) and lowers
    the pace; `on_success()` raises it back toward the configured rate. With no rate given,
    calls are not paced until the first 429, which sets the rate from what got through.
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
        self._ceiling = 1.0  # as a fraction of configured_rate
        self._last_cut = float("-inf")
        self._recent: collections.deque = collections.deque(maxlen=100_000)  # success times, last minute
        self._watch_start = 0.0
        self._tokens = self.burst
        self._updated = clock()
        self._paused_until = 0.0
        self.learned = False

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
            per_sec = self.configured_rate * self._fraction * PACE_MARGIN / 60.0
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

    def ready_in(self) -> float:
        """Seconds until a call could start, without taking a turn (a scheduler's peek)."""
        with self._lock:
            now = self._clock()
            paused = max(0.0, self._paused_until - now)
            if self.configured_rate is None:
                return paused
            per_sec = self.configured_rate * self._fraction * PACE_MARGIN / 60.0
            tokens = min(self.burst, self._tokens + (now - self._updated) * per_sec)
            return max(paused, 0.0 if tokens >= 1.0 else (1.0 - tokens) / per_sec)

    def on_stated(self, limit_per_minute: Optional[float] = None, remaining: Optional[int] = None,
                  reset_in_sec: Optional[float] = None) -> None:
        """An answer (a success too) stated the per-minute limit: pace just under it before any 429, and
        with nothing remaining in the window, wait for its reset instead of drawing the 429."""
        with self._lock:
            # Only a limit under the pace teaches: one equal to the configured rate is already paced under.
            if limit_per_minute and (self.configured_rate is None
                                     or limit_per_minute < self.configured_rate * self._fraction):
                self.configured_rate = max(1.0, limit_per_minute * LEARNED_RATE_MARGIN)
                self._fraction = self._ceiling = 1.0
                self.learned = True
                self._tokens, self._updated = min(self._tokens, 0.0), self._clock()
            if remaining == 0 and reset_in_sec:
                self._paused_until = max(self._paused_until, self._clock() + reset_in_sec)

    def on_rate_limited(self, retry_after_sec: Optional[float] = None,
                        limit_per_minute: Optional[float] = None) -> None:
        """A 429: pause for `retry_after_sec`; slow down, or with no rate yet, learn the stated limit."""
        with self._lock:
            stated = None if not limit_per_minute else max(1.0, limit_per_minute * LEARNED_RATE_MARGIN)
            if stated is not None and (self.configured_rate is None or stated < self.configured_rate * self._fraction):
                # The server said what its limit is: pace just under it, with no cut and no sawtooth.
                self.configured_rate = stated
                self._fraction = self._ceiling = 1.0
                self.learned = True
                self._tokens, self._updated = 0.0, self._clock()
            elif self.configured_rate is not None and stated is None:
                now = self._clock()
                # The calls in flight when the limit is crossed all come back 429 together: one event, one cut.
                if now - self._last_cut >= max(CUT_QUIET_SEC, retry_after_sec or 0.0):
                    self._fraction, self._ceiling = cut_unstated(self._fraction, self._observed_per_minute(now),
                                                                 self.configured_rate)
                    self._last_cut = now
            if retry_after_sec:
                self._paused_until = max(self._paused_until, self._clock() + retry_after_sec)

    def _observed_per_minute(self, now: float) -> Optional[float]:
        """Calls that got through in the last 60 s, when that reads as a per-minute limit: we have watched
        for at least OBSERVE_MIN_SEC and it is well under what we were sending (not a passing burst 429)."""
        while self._recent and self._recent[0] < now - 60.0:
            self._recent.popleft()
        if not self._recent:
            return None
        return observed_limit(len(self._recent), now - self._watch_start, (self.configured_rate or 0.0) * self._fraction)

    def on_success(self) -> None:
        if self.configured_rate is not None:
            now = self._clock()
            with self._lock:
                if not self._watch_start:
                    self._watch_start = now
                self._recent.append(now)
        if self._fraction < 1.0:
            with self._lock:
                self._fraction, self._ceiling = recovered(self._fraction, self._ceiling, self.configured_rate)


class MediaMinutesBudget:
    """Paces audio/video minutes to a per-hour limit (the API's DPH dimension), one process's share.

    `acquire(minutes)` blocks until that much media fits: minutes refill at `per_hour / 3600` a second
    up to an hour's worth, and a clip longer than that waits for a full hour's budget and then goes
    into debt, so the long-run rate holds. Media of unknown length is charged after its call, with
    `charge(minutes)`.
    """

    def __init__(self, minutes_per_hour: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if minutes_per_hour <= 0:
            raise ValueError(f"minutes_per_hour must be positive, got {minutes_per_hour}")
        self.per_sec = minutes_per_hour * PACE_MARGIN / 3600.0
        self.capacity = float(minutes_per_hour)
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._minutes = self.capacity
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._minutes = min(self.capacity, self._minutes + (now - self._updated) * self.per_sec)
        self._updated = now

    def acquire(self, minutes: float) -> float:
        with self._lock:
            self._refill()
            need = min(max(0.0, minutes), self.capacity)
            wait = 0.0 if self._minutes >= need else (need - self._minutes) / self.per_sec
            self._minutes -= max(0.0, minutes)
        if wait > 0:
            self._sleep(wait)
        return wait

    def charge(self, minutes: float) -> None:
        with self._lock:
            self._refill()
            self._minutes -= max(0.0, minutes)
