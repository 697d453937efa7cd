"""Keeping secrets out of what the job writes: the API key checked before use and masked wherever a
server might echo it, and credentials inside media URLs redacted before a URL is stored or printed."""
from __future__ import annotations

import re
import threading
from typing import Optional, Set
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["InvalidApiKey", "MASK", "check_api_key", "redact_url", "register_secret", "scrub"]

MASK = "***"
# Query parameters that carry credentials in presigned or shared URLs (S3, GCS, Azure SAS, tokens).
_SECRET_PARAM = re.compile(r"sig|token|key|secret|password|passwd|credential", re.I)
_USERINFO_IN_TEXT = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@\"'<>]+@")
_SECRET_PARAM_IN_TEXT = re.compile(
    r"([?&][^=&#\s\"'<>]*(?:sig|token|key|secret|password|passwd|credential)[^=&#\s\"'<>]*=)"
    r"[^&#\s\"'<>]+", re.I)

_SECRETS: Set[str] = set()
_SECRETS_LOCK = threading.Lock()


class InvalidApiKey(ValueError):
    """The key cannot be sent as a header (a second line, a control or non-ASCII character)."""


def check_api_key(raw: Optional[str], source: str) -> Optional[str]:
    """The key with surrounding whitespace (a trailing newline, CRLF, a BOM) removed, or an error that
    says what is wrong and where, without any character of the key."""
    if raw is None:
        return None
    key = raw.strip().lstrip("\ufeff").strip()
    if not key:
        return None
    for position, char in enumerate(key, 1):
        if not "\x21" <= char <= "\x7e":
            what = "a line break" if char in "\r\n" else (
                "a space" if char.isspace() else "a character that cannot be sent in an HTTP header")
            raise InvalidApiKey(
                f"The API key from {source} has {what} (character {position} of {len(key)}): "
                "the key must be one line of printable ASCII; fix it there (the key is not shown)")
    register_secret(key)
    return key


def register_secret(secret: str) -> None:
    """Masks `secret` in every message this process scrubs from now on."""
    if secret and len(secret) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.add(secret)


def redact_url(url: Optional[str]) -> Optional[str]:
    """The URL with its user:password@ and credential-bearing query values replaced by ***."""
    if not url or ("@" not in url and "?" not in url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query and _SECRET_PARAM.search(query):
        pairs = parse_qsl(query, keep_blank_values=True)
        if pairs:
            query = "&".join(f"{name}={MASK if _SECRET_PARAM.search(name) else value}" for name, value in pairs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: Optional[str]) -> Optional[str]:
    """Text (a server's message, an error, a log line) with known secrets and URL credentials masked."""
    if not text:
        return text
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "@" in text:
        text = _USERINFO_IN_TEXT.sub(lambda m: m.group(1) + MASK + "@", text)
    if "=" in text:
        text = _SECRET_PARAM_IN_TEXT.sub(lambda m: m.group(1) + MASK, text)
    return text
