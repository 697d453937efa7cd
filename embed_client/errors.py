"""Typed errors of the embed API: what failed, whether a retry can help, and the rate-limit state.

Errors carry the status, the API's `code` and `message` and the parsed rate-limit headers,
never the request (so never the API key).
"""
from __future__ import annotations

import dataclasses
import email.utils
import time
from typing import Mapping, Optional

__all__ = [
    "AuthError",
    "BadRequestError",
    "ConnectionFailedError",
    "EmbedError",
    "EmbedTimeoutError",
    "MalformedResponseError",
    "RateLimitError",
    "RateLimitInfo",
    "ServerError",
    "error_from_response",
]

# A 429 whose reset is further away than this is a spent quota, not a request to slow down.
QUOTA_WAIT_THRESHOLD_SEC = 300.0


def _parse_number(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class RateLimitInfo:
    """The `X-Ratelimit-*` and `Retry-After` headers of one response."""

    limit: Optional[int] = None
    remaining: Optional[int] = None
    used: Optional[int] = None
    reset_at: Optional[float] = None  # UTC epoch seconds
    retry_after_sec: Optional[float] = None
    received_at: float = dataclasses.field(default_factory=time.time)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> "RateLimitInfo":
        lower = {k.lower(): v for k, v in headers.items()}
        as_int = lambda name: (lambda n: None if n is None else int(n))(_parse_number(lower.get(name)))
        retry_after = _parse_number(lower.get("retry-after"))
        if retry_after is None and lower.get("retry-after"):
            # Retry-After may also be an HTTP date.
            try:
                when = email.utils.parsedate_to_datetime(lower["retry-after"]).timestamp()
                retry_after = max(0.0, when - time.time())
            except (TypeError, ValueError):
                retry_after = None
        return cls(
            limit=as_int("x-ratelimit-limit"),
            remaining=as_int("x-ratelimit-remaining"),
            used=as_int("x-ratelimit-used"),
            reset_at=_parse_number(lower.get("x-ratelimit-reset")),
            retry_after_sec=retry_after,
        )

    def wait_seconds(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds until a retry may succeed: Retry-After, else the reset time; None if unknown."""
        if self.retry_after_sec is not None:
            return max(0.0, self.retry_after_sec - ((now or time.time()) - self.received_at))
        if self.reset_at is not None:
            return max(0.0, self.reset_at - (now or time.time()))
        return None


class EmbedError(Exception):
    """Base of every error the client raises."""

    is_retryable = False

    def __init__(self, message: str, *, status: Optional[int] = None, code: Optional[str] = None,
                 rate_limit: Optional[RateLimitInfo] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.rate_limit = rate_limit or RateLimitInfo()

    def __str__(self) -> str:
        parts = [p for p in (str(self.status) if self.status else None, self.code) if p]
        return f"{' '.join(parts)}: {self.message}" if parts else self.message

    def __reduce__(self):
        return (_rebuild_error, (type(self), self.message, self.status, self.code, self.rate_limit))


def _rebuild_error(cls, message, status, code, rate_limit):
    return cls(message, status=status, code=code, rate_limit=rate_limit)


class BadRequestError(EmbedError):
    """The request can never succeed as sent (400 and other 4xx), or failed local validation."""


class AuthError(EmbedError):
    """401/403: the key is missing, wrong or not allowed; nothing else will work either."""


class RateLimitError(EmbedError):
    """429: slow down, or (when the reset is far away) the daily quota is spent."""

    @property
    def wait_seconds(self) -> Optional[float]:
        return self.rate_limit.wait_seconds()

    @property
    def is_quota_exhausted(self) -> bool:
        wait = self.wait_seconds
        return wait is not None and wait > QUOTA_WAIT_THRESHOLD_SEC

    @property
    def is_retryable(self) -> bool:  # type: ignore[override]
        return not self.is_quota_exhausted


class ServerError(EmbedError):
    """5xx (and 408/409): the service failed this time."""

    is_retryable = True


class EmbedTimeoutError(EmbedError):
    """No answer within the connect or read timeout."""

    is_retryable = True


class ConnectionFailedError(EmbedError):
    """The connection could not be made, or was dropped before a full answer."""

    is_retryable = True


class MalformedResponseError(EmbedError):
    """A 2xx whose body is not the documented JSON."""

    is_retryable = True


# Statuses that mean "try again later" although they are 4xx.
_RETRYABLE_4XX = {408, 409}
_MAX_MESSAGE_CHARS = 500


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> EmbedError:
    """Maps a non-2xx response to its typed error."""
    import json

    code = None
    message = None
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            code = parsed.get("code") if isinstance(parsed.get("code"), str) else None
            message = parsed.get("message") if isinstance(parsed.get("message"), str) else None
    except ValueError:
        pass
    if message is None:
        text = body.decode("utf-8", "replace").strip()
        message = text[:_MAX_MESSAGE_CHARS] or f"HTTP {status} with an empty body"
    from embed_client.secrets import scrub

    message = scrub(message)  # a server may quote the request's key or a signed URL back
    info = RateLimitInfo.from_headers(headers)
    if status == 429:
        cls = RateLimitError
    elif status in (401, 403):
        cls = AuthError
    elif status >= 500 or status in _RETRYABLE_4XX:
        cls = ServerError
    else:
        cls = BadRequestError
    return cls(message, status=status, code=code, rate_limit=info)
