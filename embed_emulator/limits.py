"""Per-minute (sliding 60 s window) and per-day (fixed window) request limits, and the
v2 audio/video minutes per hour and per day (fixed windows).

A request takes a slot when admitted; the server gives the slot back when the
request ends without a 2xx/4xx answer (dropped, hung, 5xx), so only answered
requests count. Refused requests never take a slot.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Dict, Optional, Tuple

from . import rules

__all__ = ["RateLimiter", "MediaMinutesLimiter", "Admission", "Refusal", "iso_utc"]

MINUTE_SEC = 60.0
HOUR_SEC = 3600.0


@dataclass
class Admission:
    """An admitted request: its slot (to give back) and the X-Ratelimit-* headers."""
    stamp: float
    day_start: float
    headers: Dict[str, str] = field(default_factory=dict)


@dataclass
class Refusal:
    """A 429 answer from a spent limit."""
    message: str
    retry_after_sec: int
    headers: Dict[str, str]
    # The v2 X-Ratelimit-Dimensions value: rpm, rpd (requests), dph, dpd (media minutes).
    dimension: str = ""


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _headers(limit: int, used: int, reset_epoch: float) -> Dict[str, str]:
    return {"X-Ratelimit-Limit": str(limit), "X-Ratelimit-Remaining": str(max(0, limit - used)),
            "X-Ratelimit-Used": str(used), "X-Ratelimit-Reset": str(math.ceil(reset_epoch))}


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._epoch = clock()  # start of the first day window when it is not a UTC day
        self._minute: deque = deque()
        self._day_start = 0.0
        self._day_count = 0

    def reset(self) -> None:
        with self._lock:
            self._epoch = self._clock()
            self._minute.clear()
            self._day_count = 0

    def _window_start(self, now: float, day_length: float) -> float:
        if day_length == 86400:
            return math.floor(now / 86400) * 86400  # UTC midnight
        return self._epoch + math.floor((now - self._epoch) / day_length) * day_length

    def admit(self, per_minute: Optional[int], per_day: Optional[int],
              day_length: float) -> Tuple[Optional[Admission], Optional[Refusal]]:
        """Take a slot, or say why not. The daily limit is checked first: when both are
        spent, the far-away daily reset is the one a client needs to know about."""
        with self._lock:
            now = self._clock()
            while self._minute and self._minute[0] <= now - MINUTE_SEC:
                self._minute.popleft()
            day_start = self._window_start(now, day_length)
            if day_start != self._day_start:
                self._day_start, self._day_count = day_start, 0
            day_reset = day_start + day_length

            if per_day is not None and self._day_count >= per_day:
                return None, self._refusal(f"{per_day} requests per day", now, day_reset,
                                           _headers(per_day, self._day_count, day_reset), "rpd")
            if per_minute is not None and len(self._minute) >= per_minute:
                minute_reset = self._minute[0] + MINUTE_SEC
                return None, self._refusal(f"{per_minute} requests per minute", now, minute_reset,
                                           _headers(per_minute, len(self._minute), minute_reset),
                                           "rpm")

            self._minute.append(now)
            self._day_count += 1
            if per_minute is not None:
                headers = _headers(per_minute, len(self._minute), self._minute[0] + MINUTE_SEC)
            elif per_day is not None:
                headers = _headers(per_day, self._day_count, day_reset)
            else:
                headers = {}
            return Admission(now, day_start, headers), None

    @staticmethod
    def _refusal(limit: str, now: float, reset_epoch: float, headers: Dict[str, str],
                 dimension: str = "") -> Refusal:
        return _refusal(limit, now, reset_epoch, headers, dimension)

    def release(self, admission: Admission) -> None:
        """Give a slot back (the request got no 2xx/4xx answer)."""
        with self._lock:
            try:
                self._minute.remove(admission.stamp)
            except ValueError:
                pass  # already slid out of the window
            if admission.day_start == self._day_start and self._day_count > 0:
                self._day_count -= 1


def _refusal(limit: str, now: float, reset_epoch: float, headers: Dict[str, str],
             dimension: str) -> Refusal:
    retry_after = max(1, math.ceil(reset_epoch - now))
    headers = dict(headers, **{"Retry-After": str(retry_after)})
    return Refusal(rules.rate_limit_message(limit, iso_utc(now + retry_after)),
                   retry_after, headers, dimension)


def _format_minutes(value: float) -> str:
    return f"{value:g}"


class MediaMinutesLimiter:
    """Audio/video minutes embedded per hour (the UTC hour) and per day (the same day window as
    RateLimiter: UTC midnight, or day_length_sec from the start).

    Like the documented input-token limits, the request that crosses a limit completes; the
    requests after it get 429 until the window resets (emulator choice: the cost of a request
    is only known after its media is measured)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._epoch = clock()
        self._hour_start = 0.0
        self._hour_sec = 0.0
        self._day_start = 0.0
        self._day_sec = 0.0

    def reset(self) -> None:
        with self._lock:
            self._epoch = self._clock()
            self._hour_sec = self._day_sec = 0.0

    def _roll(self, now: float, day_length: float) -> Tuple[float, float]:
        hour_start = math.floor(now / HOUR_SEC) * HOUR_SEC
        if hour_start != self._hour_start:
            self._hour_start, self._hour_sec = hour_start, 0.0
        if day_length == 86400:
            day_start = math.floor(now / 86400) * 86400
        else:
            day_start = self._epoch + math.floor((now - self._epoch) / day_length) * day_length
        if day_start != self._day_start:
            self._day_start, self._day_sec = day_start, 0.0
        return hour_start + HOUR_SEC, day_start + day_length

    def check(self, per_hour: Optional[float], per_day: Optional[float],
              day_length: float) -> Optional[Refusal]:
        """A 429 refusal when a window's minutes are already spent, else None."""
        if per_hour is None and per_day is None:
            return None
        with self._lock:
            now = self._clock()
            hour_reset, day_reset = self._roll(now, day_length)
            if per_day is not None and self._day_sec >= per_day * 60:
                return _refusal(f"{_format_minutes(per_day)} media minutes per day", now,
                                day_reset, {}, "dpd")
            if per_hour is not None and self._hour_sec >= per_hour * 60:
                return _refusal(f"{_format_minutes(per_hour)} media minutes per hour", now,
                                hour_reset, {}, "dph")
            return None

    def add(self, seconds: float, day_length: float) -> None:
        """Count `seconds` of audio/video embedded now."""
        if seconds <= 0:
            return
        with self._lock:
            self._roll(self._clock(), day_length)
            self._hour_sec += seconds
            self._day_sec += seconds

    def used_sec(self) -> Tuple[float, float]:
        with self._lock:
            return self._hour_sec, self._day_sec
