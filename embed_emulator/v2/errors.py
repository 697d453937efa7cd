"""The error answers of Embed API v2 (V2Error and its builders) and their message wording."""
from __future__ import annotations

from typing import Dict, Optional

from ..gate import LateRefusal
from ..reply import Reply, json_error
from ..rules import MB


class V2Error(Exception):
    """An error answer: status, code, message (sent nested) and extra headers."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Optional[Dict[str, str]] = None, flat: bool = False):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.flat = flat

    def reply(self) -> Reply:
        return json_error(self.status, self.code, self.message, self.headers, nested=not self.flat)


class MediaRefused(LateRefusal):
    """The media-minute limits are spent; carries the refusal."""


def error_reply(status: int, code: str, message: str,
                headers: Optional[Dict[str, str]] = None) -> Reply:
    return V2Error(status, code, message, headers).reply()


def bad(message: str, code: str = "parameter_invalid") -> V2Error:
    return V2Error(400, code, message)


def too_large(message: str) -> V2Error:
    # Emulator choice: the code of a 413 is not documented.
    return V2Error(413, "content_too_large", message)


def megabytes(n: int) -> str:
    return f"{n / MB:.1f} MB"


def size_message(size: int, limit: int, prefix: str = "") -> str:
    """In the style of the documented "File size (33.6 MB) exceeds maximum limit of 32 MB"."""
    return f"{prefix}File size ({megabytes(size)}) exceeds maximum limit of {limit // MB} MB."


def duration_message(seconds: float, limit: float) -> str:
    """The documented wording: "Duration (35.0 seconds) exceeds maximum limit of 30 seconds
    (0 minutes)"."""
    return (f"Duration ({seconds:.1f} seconds) exceeds maximum limit of {limit:g} seconds "
            f"({int(limit // 60)} minutes).")
