"""The retry policy (tenacity): retry only what can succeed later, within bounded attempts and a deadline."""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Callable, Optional, TypeVar

import tenacity

from embed_client import errors

__all__ = ["RetryPolicy", "call_with_retries"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Bounds for one item: attempts, a wall-clock deadline, and exponential backoff with jitter."""

    max_attempts: int = 6
    deadline_sec: float = 300.0
    initial_backoff_sec: float = 0.5
    max_backoff_sec: float = 30.0

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.deadline_sec <= 0:
            raise ValueError("deadline_sec must be positive")


def _should_retry(exc: BaseException, started: float, policy: RetryPolicy) -> bool:
    if not isinstance(exc, errors.EmbedError) or not exc.is_retryable:
        return False
    if isinstance(exc, errors.RateLimitError):
        # A quota that resets after our deadline cannot be waited out.
        wait = exc.wait_seconds
        return wait is None or time.monotonic() - started + wait <= policy.deadline_sec
    return True


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    on_retry: Optional[Callable[[errors.EmbedError, float], None]] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Runs `fn` until it succeeds, fails for good, or the policy's bounds are reached.

    `on_retry(error, seconds)` is told of each retry before its backoff sleep. The last error
    is raised with `attempts` set on it.
    """
    started = time.monotonic()
    # Exponential backoff plus up to one initial step of jitter, so retries of many threads spread out.
    backoff = (tenacity.wait_exponential(multiplier=policy.initial_backoff_sec, max=policy.max_backoff_sec)
               + tenacity.wait_random(0, policy.initial_backoff_sec))

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception()
        seconds = min(backoff(state), policy.max_backoff_sec)
        if isinstance(exc, errors.RateLimitError) and exc.wait_seconds is not None:
            # Obey Retry-After, with a little jitter so waiting threads do not all return at once.
            seconds = exc.wait_seconds + random.uniform(0, 0.25)
        remaining = policy.deadline_sec - (time.monotonic() - started)
        return max(0.0, min(seconds, remaining))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None:
            on_retry(state.outcome.exception(), state.next_action.sleep)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts) | tenacity.stop_after_delay(policy.deadline_sec),
        wait=wait,
        retry=tenacity.retry_if_exception(lambda exc: _should_retry(exc, started, policy)),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        return fn()

    try:
        return retrying(attempt)
    except errors.EmbedError as exc:
        exc.attempts = attempts
        raise
