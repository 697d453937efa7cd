"""Typed errors of the embed API: what failed, whether a retry can help, and the rate-limit state.

Errors carry the status, the API's `code` and `message` and the parsed rate-limit headers,
never the request (so never the API key).
"""
from __future__ import annotations

import dataclasses
import email.utils
import json
import math
import time
from typing import Any, Dict, Mapping, Optional

from embed_client.secrets import scrub

__all__ = [
    "AuthError",
    "BadRequestError",
    "ConflictError",
    "ConnectionFailedError",
    "ContentTooLargeError",
    "EmbedError",
    "EmbedTimeoutError",
    "MalformedResponseError",
    "NotFoundError",
    "PresignedUrlExpiredError",
    "RateLimitError",
    "RateLimitInfo",
    "ServerError",
    "error_from_response",
]

# A 429 whose reset is further away than this is a spent quota, not a request to slow down.
QUOTA_WAIT_THRESHOLD_SEC = 300.0
# No wait a server asks for is believed beyond this (2 days): inf, 1e308 or a typo must not stall a job
# forever or turn into Infinity/NaN downstream.
MAX_WAIT_SEC = 172800.0
# Counts (limit, remaining, used) beyond this are nonsense; it keeps int() of them bounded.
_MAX_COUNT = 10 ** 15
_MAX_DIMENSIONS_CHARS = 200


def _parse_number(value: Optional[str]) -> Optional[float]:
    """A header's number; None when absent, unparsable, NaN or infinite."""
    if value is None:
        return None
    try:
        number = float(value.strip())
    except (ValueError, TypeError, AttributeError):
        return None
    return number if math.isfinite(number) else None


def _clamp(value: Optional[float], low: float, high: float) -> Optional[float]:
    return None if value is None else min(max(value, low), high)


@dataclasses.dataclass(frozen=True)
class RateLimitInfo:
    """The `X-Ratelimit-*` and `Retry-After` headers of one response."""

    limit: Optional[int] = None
    remaining: Optional[int] = None
    used: Optional[int] = None
    reset_at: Optional[float] = None  # UTC epoch seconds
    retry_after_sec: Optional[float] = None  # clamped to [0, MAX_WAIT_SEC]
    received_at: float = dataclasses.field(default_factory=time.time)
    # X-Ratelimit-Dimensions (v2): which limit was hit, e.g. "rpm" or "tpm:video".
    dimensions: Optional[str] = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> "RateLimitInfo":
        lower = {k.lower(): v for k, v in headers.items()}

        def as_int(name: str) -> Optional[int]:
            number = _clamp(_parse_number(lower.get(name)), 0, _MAX_COUNT)
            return None if number is None else int(number)

        raw_retry = lower.get("retry-after")
        retry_after = _parse_number(raw_retry)
        if retry_after is None and raw_retry and raw_retry.strip() and not _looks_numeric(raw_retry):
            # Retry-After may also be an HTTP date.
            try:
                when = email.utils.parsedate_to_datetime(raw_retry).timestamp()
                retry_after = when - time.time() if math.isfinite(when) else None
            except (TypeError, ValueError, IndexError, OverflowError):
                retry_after = None
        reset_at = _parse_number(lower.get("x-ratelimit-reset"))
        dimensions = lower.get("x-ratelimit-dimensions")
        dimensions = (dimensions.strip()[:_MAX_DIMENSIONS_CHARS] or None) if dimensions else None
        return cls(
            limit=as_int("x-ratelimit-limit"),
            remaining=as_int("x-ratelimit-remaining"),
            used=as_int("x-ratelimit-used"),
            reset_at=None if reset_at is None else max(0.0, reset_at),
            retry_after_sec=_clamp(retry_after, 0.0, MAX_WAIT_SEC),
            dimensions=dimensions,
        )

    def wait_seconds(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds until a retry may succeed: Retry-After, else the reset time; None if unknown.

        Always finite, within [0, MAX_WAIT_SEC]."""
        if self.retry_after_sec is not None:
            wait = self.retry_after_sec - ((now or time.time()) - self.received_at)
        elif self.reset_at is not None:
            wait = self.reset_at - (now or time.time())
        else:
            return None
        if not math.isfinite(wait):
            return None
        return min(max(0.0, wait), MAX_WAIT_SEC)


def _looks_numeric(text: str) -> bool:
    """True for a number Python cannot use (inf, nan, 1e999): not to be read as an HTTP date."""
    try:
        float(text.strip())
        return True
    except ValueError:
        return False


class EmbedError(Exception):
    """Base of every error the client raises."""

    is_retryable = False

    def __init__(self, message: str, *, status: Optional[int] = None, code: Optional[str] = None,
                 rate_limit: Optional[RateLimitInfo] = None, details: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.rate_limit = rate_limit or RateLimitInfo()
        # v2 errors' `error.details` (scrubbed), when the server sent an object there.
        self.details = details

    def __str__(self) -> str:
        parts = [p for p in (str(self.status) if self.status else None, self.code) if p]
        return f"{' '.join(parts)}: {self.message}" if parts else self.message

    def __reduce__(self):
        return (_rebuild_error, (type(self), self.message, self.status, self.code, self.rate_limit,
                                 self.details))


def _rebuild_error(cls, message, status, code, rate_limit, details=None):
    extra = {} if details is None else {"details": details}
    return cls(message, status=status, code=code, rate_limit=rate_limit, **extra)


class BadRequestError(EmbedError):
    """The request can never succeed as sent (400 and other 4xx), or failed local validation."""


class NotFoundError(BadRequestError):
    """404: the resource (for example an embedding task id) does not exist, or no longer does."""


class ContentTooLargeError(BadRequestError):
    """413: the media is measurably too large (size, duration or pages); sending it again cannot help."""


class ConflictError(BadRequestError):
    """409 from the assets endpoints: the resource's state forbids the call (e.g. `DELETE /assets/{id}` of
    an asset that indexed assets reference; only `force=True` helps). Sending it again cannot help.

    The embed endpoints' 409 stays a retryable `ServerError` (see `error_from_response`)."""


class PresignedUrlExpiredError(EmbedError):
    """A presigned chunk URL was refused (403, or an expired-token answer): it expired (one hour), was
    already used, or its signature does not match. The same URL will not work again: ask for a fresh one
    (`client.multipart_upload.get_additional_presigned_urls`) and PUT the chunk to that."""

    is_retryable = False
    needs_fresh_url = True


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


def _scrubbed_details(details: Any) -> Optional[Dict[str, Any]]:
    if not isinstance(details, dict):
        return None
    try:
        return json.loads(scrub(json.dumps(details, ensure_ascii=False)))
    except (TypeError, ValueError, RecursionError):
        return None


def error_from_response(status: int, body: bytes, headers: Mapping[str, str], *,
                        conflict_is_final: bool = False) -> EmbedError:
    """Maps a non-2xx response to its typed error.

    Reads the v2 body `{"error": {"code", "message", "details"?}}` and the flat v1 `{code, message}`.
    A 409 is a retryable `ServerError` (the embed endpoints), or with `conflict_is_final` (the assets
    endpoints) a `ConflictError`.
    """
    code = None
    message = None
    details = None
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            inner = parsed.get("error")
            source = inner if isinstance(inner, dict) else parsed
            code = source.get("code") if isinstance(source.get("code"), str) else None
            message = source.get("message") if isinstance(source.get("message"), str) else None
            details = _scrubbed_details(source.get("details"))
            if message is None and isinstance(inner, str):
                message = inner
            if code is None and isinstance(parsed.get("code"), str):
                code = parsed["code"]
    except (ValueError, RecursionError):
        pass
    if message is None:
        text = body.decode("utf-8", "replace").strip()
        message = text[:_MAX_MESSAGE_CHARS] or f"HTTP {status} with an empty body"
    message = scrub(message)  # a server may quote the request's key or a signed URL back
    info = RateLimitInfo.from_headers(headers)
    if status == 429:
        cls = RateLimitError
    elif status == 409 and conflict_is_final:
        cls = ConflictError
    elif status in (401, 403):
        cls = AuthError
    elif status >= 500 or status in _RETRYABLE_4XX:
        cls = ServerError
    elif status == 404:
        cls = NotFoundError
    elif status == 413:
        cls = ContentTooLargeError
    else:
        cls = BadRequestError
    return cls(message, status=status, code=code, rate_limit=info, details=details)
