"""`Transport`: the one HTTP connection every version client shares (the SDK's client wrapper).

It holds the base URL, the API key, the timeouts and the pooled `requests` session; it builds the headers
(the key last), sends, turns transport failures and non-2xx answers into `embed_client.errors`, and makes
the JSON calls of the v2 endpoints (`call_json`). What a body holds and how a result is read belong to
the version clients (`embed_client.client`, `embed_client.v2`); they use only this module's public methods.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Optional, Tuple, TypeVar, Union

import requests
from requests.adapters import HTTPAdapter

from embed_client import errors
from embed_client.secrets import check_api_key, redact_url, scrub

__all__ = ["API_KEY_ENV", "DEFAULT_BASE_URL", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_TIMEOUT", "Timeout", "Transport"]

DEFAULT_BASE_URL = "https://api.twelvelabs.io/v1.3"
API_KEY_ENV = "TWELVE_LABS_API_KEY"
# Connect fast or fail; a read may take long on big audio. The SDK's own default is 600 s.
DEFAULT_TIMEOUT = (10.0, 120.0)
# Threads of one worker share the pool; beyond this many, requests waits for a free connection.
DEFAULT_MAX_CONNECTIONS = 64
USER_AGENT = "tl-embed-pipeline/0.1"
# v2 sends JSON with the SDK's (httpx's) Accept header.
_V2_ACCEPT = "*/*"
_JSON = "application/json"

T = TypeVar("T")

Timeout = Union[float, Tuple[float, float]]
# bytes, or a streamed body of known length (embed_client.multipart.StreamingBody).
Body = Any


def _caused_by_timeout(exc: BaseException) -> bool:
    seen = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TimeoutError):  # socket.timeout is TimeoutError
            return True
        stack += [current.__cause__, current.__context__]
        stack += [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        stack.append(getattr(current, "reason", None) if isinstance(getattr(current, "reason", None),
                                                                   BaseException) else None)
    return False


class Transport:
    """A thread-safe connection to `{base_url}`, shared by `EmbedClient`, `client.v2` and `client.tasks`.

    The API key comes from `api_key` or the `TWELVE_LABS_API_KEY` environment variable and is kept out
    of `repr()` and errors. A caller's `session` is used as given (and not closed); otherwise one is made
    with a pool of `max_connections` and no urllib3 retries.
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: Timeout = DEFAULT_TIMEOUT,
        session: Optional[requests.Session] = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_connections = max_connections
        # A key with a line break would go into a header and come back inside http.client's error.
        self._api_key = (check_api_key(api_key, "api_key") if api_key is not None
                         else check_api_key(os.environ.get(API_KEY_ENV), API_KEY_ENV))
        self._own_session = session is None
        self._session = session or self._new_session(max_connections)
        if self._own_session:
            # requests re-reads proxy, netrc and CA settings from the environment on every call
            # (in threaded calls that cost more than the HTTP itself): read them once, for this URL.
            self._session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
            for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
                if os.environ.get(name):
                    self._session.verify = os.environ[name]
                    break
            self._session.trust_env = False
            self._adapter = self._session.get_adapter(self.base_url)

    @staticmethod
    def _new_session(max_connections: int) -> requests.Session:
        session = requests.Session()
        # Retries belong to the caller's policy, not to urllib3.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max_connections, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    @property
    def session(self) -> requests.Session:
        """The pooled session (the caller's, if one was given)."""
        return self._session

    @property
    def has_api_key(self) -> bool:
        return bool(self._api_key)

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r}, api_key={'***' if self._api_key else None})"

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def require_key(self) -> str:
        """The API key, or `errors.AuthError` before anything is sent."""
        if not self._api_key:
            raise errors.AuthError(
                f"No API key: set the {API_KEY_ENV} environment variable or pass api_key.",
                code="api_key_invalid",
            )
        return self._api_key

    def headers(self, accept: str, content_type: Optional[str],
                extra: Optional[Mapping[str, str]] = None) -> dict:
        """The headers of one call, in wire order: User-Agent, Accept, the caller's, Content-Type (if
        any), then the key (so neither a caller's header nor a caller's typo can replace or drop it)."""
        key = self.require_key()
        request_headers = {"User-Agent": USER_AGENT, "Accept": accept, **dict(extra or {})}
        if content_type is not None:
            request_headers["Content-Type"] = content_type
        request_headers["x-api-key"] = key
        return request_headers

    def url(self, path: str, query: Optional[str] = None) -> str:
        return f"{self.base_url}/{path}" + (f"?{query}" if query else "")

    def _send_raw(self, method: str, url: str, body: Optional[Body], headers: dict,
                  timeout: Timeout) -> requests.Response:
        if not self._own_session:
            return self._session.request(method, url, data=body, headers=headers, timeout=timeout)
        # Our own session has no cookies, auth, hooks or redirects to merge: hand the request straight
        # to its pooled adapter (Session.request's merging cost about a third of a call's CPU).
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = url
        prepared.headers = requests.structures.CaseInsensitiveDict(headers)
        if body is not None:
            prepared.headers["Content-Length"] = str(len(body))
        prepared.body = body
        prepared.hooks = {"response": []}
        return self._adapter.send(prepared, stream=False, timeout=timeout, verify=self._session.verify,
                                  cert=None, proxies=self._session.proxies)

    def request(self, method: str, url: str, body: Optional[Body], headers: dict,
                timeout: Optional[Timeout] = None) -> Tuple[requests.Response, bytes]:
        """Sends one request on the pooled session; transport failures become typed errors.

        `body` is bytes, or a `multipart.StreamingBody` (any object with `len()` and `read(n)`), which is
        streamed with its length as Content-Length. Returns the response and its body, whatever the status."""
        shown = redact_url(url)
        try:
            response = self._send_raw(method, url, body, headers, timeout if timeout is not None else self.timeout)
            content = response.content
        except requests.exceptions.Timeout as exc:
            raise errors.EmbedTimeoutError(f"no answer from {shown} in time ({type(exc).__name__})") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            if _caused_by_timeout(exc):
                # A send that stalls (the server stopped reading) surfaces as a connection error.
                raise errors.EmbedTimeoutError(f"{shown} stopped reading the request in time") from None
            raise errors.ConnectionFailedError(
                f"connection to {shown} failed or was dropped ({type(exc).__name__})") from None
        except requests.exceptions.RequestException as exc:
            raise errors.ConnectionFailedError(f"request to {shown} failed ({type(exc).__name__})") from None
        return response, content

    def send(self, method: str, url: str, body: Optional[Body], headers: dict,
             timeout: Optional[Timeout] = None, *,
             conflict_is_final: bool = False) -> Tuple[requests.Response, bytes, errors.RateLimitInfo]:
        """`request`, then a non-2xx answer raised as its typed error; returns the response, its body
        and its rate-limit headers. `conflict_is_final`: a 409 is a `ConflictError` (assets), not a
        retryable `ServerError` (embed)."""
        response, content = self.request(method, url, body, headers, timeout)
        if not 200 <= response.status_code < 300:
            raise errors.error_from_response(response.status_code, content, response.headers,  # scrubbed there
                                             conflict_is_final=conflict_is_final)
        return response, content, errors.RateLimitInfo.from_headers(response.headers)

    def call_json(self, method: str, path: str, body: Optional[Body], parse: Callable[[Any], T], *,
                  query: Optional[str] = None, timeout: Optional[Timeout] = None,
                  headers: Optional[Mapping[str, str]] = None, content_type: Optional[str] = _JSON,
                  conflict_is_final: bool = False) -> T:
        """One v2 (or assets) call: a JSON body (or `content_type`'s) in, JSON out, typed errors, the
        rate-limit headers on the result."""
        request_headers = self.headers(_V2_ACCEPT, content_type if body is not None else None, headers)
        response, content, info = self.send(method, self.url(path, query), body, request_headers, timeout,
                                            conflict_is_final=conflict_is_final)
        try:
            result = parse(json.loads(content))
        except (ValueError, RecursionError) as exc:
            raise errors.MalformedResponseError(
                scrub(f"HTTP {response.status_code} body of {method} {redact_url(self.base_url)}/{path} "
                      f"is not the documented JSON: {exc}"),
                status=response.status_code, rate_limit=info) from None
        try:
            result.rate_limit = info
        except AttributeError:
            pass
        return result
