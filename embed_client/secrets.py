"""Keeping secrets out of what the job writes: the API key checked before use and masked wherever a
server might echo it, and credentials inside media URLs redacted before a URL is stored or printed."""
from __future__ import annotations

import re
import threading
from typing import Optional, Set
from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = ["InvalidApiKey", "MASK", "check_api_key", "redact_url", "register_secret", "scrub"]

MASK = "***"
# Query parameters that carry credentials in presigned or shared URLs: any name holding one of these words,
# matched case-insensitively after percent-decoding. That covers S3 (X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token, AWSAccessKeyId, Signature), GCS (X-Goog-Signature, X-Goog-Credential), Azure SAS
# (sig), CloudFront (Signature, Key-Pair-Id) and bearer tokens (token, access_token, auth, api_key).
_SECRET_WORDS = "sig|token|key|secret|password|passwd|credential|auth"
_SECRET_PARAM = re.compile(_SECRET_WORDS, re.I)
_USERINFO_IN_TEXT = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@\"'<>]+@")
_SECRET_PARAM_IN_TEXT = re.compile(
    r"([?&;][^=&;#\s\"'<>]*(?:" + _SECRET_WORDS + r")[^=&;#\s\"'<>]*=)"
    r"[^&;#\s\"'<>]+", re.I)

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


def _is_secret_param(raw_name: str) -> bool:
    return bool(_SECRET_PARAM.search(raw_name) or _SECRET_PARAM.search(unquote_plus(raw_name)))


def redact_url(url: Optional[str]) -> Optional[str]:
    """The URL with its user:password@ and the values of credential-bearing query parameters (signatures,
    credentials, tokens, keys) replaced by ***; every other byte is kept as it was (no re-encoding).

    Used wherever a URL may be shown: a presigned upload URL is itself a credential."""
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
    if query and ("%" in query or _SECRET_PARAM.search(query)):
        pieces = []
        for piece in re.split(r"([&;])", query):
            name, eq, _value = piece.partition("=")
            pieces.append(f"{name}={MASK}" if eq and _is_secret_param(name) else piece)
        query = "".join(pieces)
    fragment = scrub(parts.fragment) if "=" in parts.fragment else parts.fragment
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


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
