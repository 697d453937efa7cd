"""Admission of one call, the same for v1 and v2: auth, 429 burst, request limits, faults, the answer, latency."""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

from . import rules
from .categories import CategoryLimiter, stated_headers
from .config import EmulatorConfig
from .faults import HTML_5XX, INTERNAL_ERROR_BODY, MALFORMED_BODIES, FaultInjector
from .limits import RateLimiter, Refusal, iso_utc
from .reply import Reply, json_error
from .stats import Stats

__all__ = ["Gate", "LateRefusal"]


class LateRefusal(Exception):
    """A limit checked by the answer itself is spent (v2's media minutes); carries the refusal."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal


class Gate:
    """Runs an answer (config -> Reply) behind the checks every call passes, in this order: auth
    (401), 429 burst fault, request limits (429), other faults; then the answer, then latency.

    The two API generations differ only in how an error looks: v2 nests the body under "error"
    (nested_errors) and names the spent limit in X-Ratelimit-Dimensions on a 429
    (dimension_header). `limits` picks the (per minute, per day) request limits of the caller's
    rate-limit category from the config; the embed endpoints share requests_per_minute/_day. With a
    `categories` limiter, a call also takes a slot in each per-modality category it touches
    (`category_limits`, see categories.py); those 429s name `dimension:category` on both generations."""

    def __init__(self, get_config: Callable[[], EmulatorConfig], stats: Stats,
                 limiter: RateLimiter, faults: FaultInjector,
                 stopping: Callable[[], threading.Event], *, nested_errors: bool,
                 dimension_header: bool,
                 limits: Optional[Callable[[EmulatorConfig],
                                           Tuple[Optional[int], Optional[int]]]] = None,
                 categories: Optional[CategoryLimiter] = None):
        self._config = get_config
        self._stats = stats
        self._limiter = limiter
        self._faults = faults
        self._stopping = stopping
        self._nested = nested_errors
        self._dimension_header = dimension_header
        self._limits = limits or (lambda c: (c.requests_per_minute, c.requests_per_day))
        self._categories = categories

    def handle(self, api_key: Optional[str], answer: Callable[[EmulatorConfig], Reply],
               categories: Sequence[str] = ()) -> Reply:
        """`categories`: the rate-limit categories the call touches (text, image, audio, video)."""
        reply = self._handle(self._config(), api_key, answer, categories)
        if reply.action == "respond":
            self._stats.status(reply.status)
        return reply

    def _handle(self, config: EmulatorConfig, api_key: Optional[str],
                answer: Callable[[EmulatorConfig], Reply], categories: Sequence[str] = ()) -> Reply:
        if not api_key or (config.api_keys is not None and api_key not in config.api_keys):
            return self._error(401, "api_key_invalid", rules.api_key_message(missing=not api_key))
        fault = self._faults.request_fault(config)
        if fault is not None and fault.kind == "429_burst":
            self._stats.fault("429_burst")
            return self._burst_reply(fault.retry_after_sec)
        per_minute, per_day = self._limits(config)
        admission, refusal = self._limiter.admit(per_minute, per_day, config.day_length_sec)
        if refusal is not None:
            self._stats.rate_limited(refusal.dimension if self._dimension_header else None)
            return self._refusal_reply(refusal)
        taken = []
        if self._categories is not None and categories and config.category_limits:
            taken, refusal = self._categories.admit(categories, config.category_limits, config.day_length_sec)
            if refusal is not None:
                self._limiter.release(admission)
                self._stats.rate_limited(refusal.dimension)
                return self._refusal_reply(refusal, named=True)
        stated = stated_headers([admission.headers, *(a.headers for _, a in taken)])

        if fault is not None:
            self._stats.fault(fault.kind)
            if fault.kind in ("drop", "hang", "5xx"):
                self._limiter.release(admission)  # only 2xx/4xx answers count
                if taken:
                    self._categories.release(taken)
            if fault.kind == "drop":
                return Reply(action="drop")
            if fault.kind == "hang":
                return Reply(action="hang", hang_sec=config.fault_hang_sec)
            if fault.kind == "5xx":
                reply = (self._error(500, INTERNAL_ERROR_BODY["code"], INTERNAL_ERROR_BODY["message"])
                         if fault.status == 500 else
                         Reply(status=fault.status, body=HTML_5XX[fault.status],
                               content_type="text/html"))
            else:  # malformed: a 200 that claims JSON but is not
                reply = Reply(status=200, body=MALFORMED_BODIES[fault.body_index], headers=stated)
        else:
            try:
                reply = answer(config)
            except LateRefusal as exc:
                self._limiter.release(admission)  # a refused request takes no slot
                if taken:
                    self._categories.release(taken)
                self._stats.rate_limited(exc.refusal.dimension if self._dimension_header else None)
                return self._refusal_reply(exc.refusal)
            reply.headers.update(stated)
        self._sleep(self._faults.latency_sec(config))
        return reply

    def _error(self, status: int, code: str, message: str,
               headers: Optional[Dict[str, str]] = None) -> Reply:
        return json_error(status, code, message, headers, nested=self._nested)

    def _burst_reply(self, retry_after: int) -> Reply:
        message = rules.rate_limit_message("temporary burst limit",
                                           iso_utc(time.time() + retry_after))
        headers = {"Retry-After": str(retry_after)}
        if self._dimension_header:
            headers["X-Ratelimit-Dimensions"] = "rpm"
        return self._error(429, "too_many_requests", message, headers)

    def _refusal_reply(self, refusal: Refusal, named: bool = False) -> Reply:
        headers = dict(refusal.headers)
        if self._dimension_header or named:
            headers["X-Ratelimit-Dimensions"] = refusal.dimension or "rpm"
        return self._error(429, "too_many_requests", refusal.message, headers)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping().wait(seconds)
