"""`client.multipart_upload`: multipart upload sessions for files up to 10 GB (`/assets/multipart-uploads`),
with SDK 1.3.6's method names and wire bytes, plus `put_chunk`, the PUT of one chunk to its presigned URL.

The flow: `create(filename=, type=, total_size=)` gives an `UploadSession` (chunk size, the first presigned
URLs, 1-based chunk indexes); `put_chunk(url, data)` each chunk and keep the ETag it returns;
`get_additional_presigned_urls(upload_id, start=, count=)` for chunks without a URL or whose URL expired;
`report_chunk_batch(upload_id, completed_chunks=[CompletedChunk(index, etag, size), ...])` in batches;
`get_status(upload_id)` until `completed`; then poll `client.assets.retrieve(session.asset_id)`.

A presigned URL points at object storage, not the API: `put_chunk` sends it on a session of its own that
never carries the API key (nor the caller's session, cookies, netrc or proxy credentials), and the URL is
a credential itself: every message, log line and repr shows it through `secrets.redact_url`. Importing
this module adds a filter to urllib3's loggers that masks URL credentials in their DEBUG lines.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import requests
from requests.adapters import HTTPAdapter

from embed_client import errors
from embed_client.assets import _options, build_query, json_body, resource_path
from embed_client.multipart import StreamingBody, _FileSlice, stream_length
from embed_client.secrets import MASK, redact_url, scrub
from embed_client.transport import DEFAULT_MAX_CONNECTIONS, USER_AGENT, Timeout, Transport, _caused_by_timeout
from embed_client.types_assets import (ChunkBatchReport, CompletedChunk, IncompleteUpload, ListBody, Page,
                                       PresignedUrls, UploadSession, UploadStatus)

__all__ = ["MultipartUploadClient", "build_completed_chunks", "chunk_span"]

logger = logging.getLogger(__name__)

_PREFIX = "assets/multipart-uploads"
_OCTET = "application/octet-stream"
_COMPLETED_CHUNK_FIELDS = ("chunk_index", "proof", "proof_type", "chunk_size")
# Object-storage error bodies (S3, GCS XML API): <Code>...</Code><Message>...</Message>.
_XML_CODE = re.compile(rb"<Code>\s*([^<]{1,100}?)\s*</Code>")
_XML_MESSAGE = re.compile(rb"<Message>\s*([^<]{1,500}?)\s*</Message>")
_EXPIRED_CODES = ("ExpiredToken", "RequestExpired", "TokenRefreshRequired")
_EXPIRED_WORDS = re.compile(r"expired|has expired|no longer valid", re.I)


class _RedactUrlsInLogs(logging.Filter):
    """Masks URL credentials (signatures, tokens, user:password@) in a record's message: urllib3 logs each
    request's path and query at DEBUG, and a presigned URL's query is its signature."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot format is not ours to fix
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_LOG_FILTER = _RedactUrlsInLogs()
for _name in ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.connection"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _RedactUrlsInLogs) for f in _logger.filters):
        _logger.addFilter(_LOG_FILTER)


def chunk_span(chunk_index: int, chunk_size: int, total_size: int) -> tuple:
    """(offset, length) of 1-based chunk `chunk_index` of a `total_size`-byte file cut in `chunk_size` pieces."""
    if chunk_index < 1 or chunk_size <= 0:
        raise ValueError("chunk_index is 1-based and chunk_size must be positive")
    offset = (chunk_index - 1) * chunk_size
    if offset >= total_size:
        raise ValueError(f"chunk {chunk_index} starts past the end of a {total_size}-byte file")
    return offset, min(chunk_size, total_size - offset)


def _chunk_json(chunk: Any) -> Dict[str, Any]:
    if isinstance(chunk, CompletedChunk):
        return chunk.to_json()
    if hasattr(chunk, "model_dump"):  # the SDK's pydantic CompletedChunk (v2)
        chunk = chunk.model_dump(by_alias=True, exclude_unset=True)
    elif hasattr(chunk, "dict") and not isinstance(chunk, Mapping):  # pydantic v1
        chunk = chunk.dict(by_alias=True, exclude_unset=True)
    if not isinstance(chunk, Mapping):
        raise errors.BadRequestError(f"a completed chunk must be a CompletedChunk or a mapping, not "
                                     f"{type(chunk).__name__}", code="parameter_invalid")
    given = dict(chunk)
    given.setdefault("proof_type", "etag")
    missing = [name for name in _COMPLETED_CHUNK_FIELDS if given.get(name) is None]
    if missing:
        raise errors.BadRequestError(f"a completed chunk needs {', '.join(missing)}", code="parameter_not_provided")
    # The SDK model's field order, whatever order the mapping had; unknown keys after, as given.
    return {**{name: given[name] for name in _COMPLETED_CHUNK_FIELDS}, **given}


def build_completed_chunks(completed_chunks: Sequence[Any]) -> List[Dict[str, Any]]:
    """The `completed_chunks` array: `[{"chunk_index", "proof", "proof_type": "etag", "chunk_size"}, ...]`."""
    if isinstance(completed_chunks, (str, bytes, Mapping)) or not hasattr(completed_chunks, "__iter__"):
        raise errors.BadRequestError("`completed_chunks` must be a list of chunks", code="parameter_invalid")
    return [_chunk_json(chunk) for chunk in completed_chunks]


def _storage_error(status: int, content: bytes, headers: Mapping[str, str], url: str) -> errors.EmbedError:
    code_match = _XML_CODE.search(content or b"")
    message_match = _XML_MESSAGE.search(content or b"")
    code = code_match.group(1).decode("utf-8", "replace") if code_match else None
    detail = message_match.group(1).decode("utf-8", "replace") if message_match else None
    if detail is None and content and not content.lstrip().startswith(b"<"):
        detail = content[:300].decode("utf-8", "replace").strip() or None
    detail = _mask_url_secrets(detail, url) if detail else None
    shown = redact_url(url)
    message = f"PUT to {shown} answered HTTP {status}" + (f" {code}" if code else "") + (
        f": {detail}" if detail else "")
    info = errors.RateLimitInfo.from_headers(headers)
    if status == 403 or code in _EXPIRED_CODES or (status == 400 and detail and _EXPIRED_WORDS.search(detail)):
        cls = errors.PresignedUrlExpiredError
        message += " (the presigned URL expired, was used already or does not match: ask for a fresh one)"
    elif status == 429:
        cls = errors.RateLimitError
    elif status >= 500 or status == 408:
        cls = errors.ServerError
    elif status == 404:
        cls = errors.NotFoundError
    elif status == 401:
        cls = errors.AuthError
    else:
        cls = errors.BadRequestError
    return cls(message, status=status, code=code, rate_limit=info)


def _mask_url_secrets(text: str, url: str) -> str:
    """`text` with every value of the URL that `redact_url` masks replaced too (a storage error may quote the
    signature or the credential it was given, e.g. S3's <SignatureProvided>), then scrubbed."""
    redacted = redact_url(url) or ""
    if redacted != url and "?" in url:
        for piece in re.split(r"[&;]", url.split("?", 1)[1].split("#", 1)[0]):
            name, eq, value = piece.partition("=")
            if eq and value and f"{name}={MASK}" in redacted:
                for form in {value, requests.utils.unquote(value)}:
                    if len(form) >= 4:
                        text = text.replace(form, MASK)
    return scrub(text)


class MultipartUploadClient:
    """`client.multipart_upload`: the SDK's `create`, `get_additional_presigned_urls`, `report_chunk_batch`,
    `get_status` and `list_incomplete_uploads` over the shared `Transport`, and `put_chunk` for the chunk
    PUTs, on an object-storage session of its own.

    Every API call takes the SDK's `request_options`; failures raise `errors.EmbedError` subclasses
    (404 `NotFoundError`, 409 `ConflictError`, 429 `RateLimitError`, 5xx `ServerError`)."""

    def __init__(self, transport: Transport, max_connections: Optional[int] = None):
        self._transport = transport
        self._storage = self._new_storage_session(max_connections or transport.max_connections
                                                  or DEFAULT_MAX_CONNECTIONS)

    @staticmethod
    def _new_storage_session(max_connections: int) -> requests.Session:
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max_connections, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # No environment credentials (netrc) and no cookies go to object storage; proxies and CA bundles
        # from the environment are read per call below.
        session.trust_env = False
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            if os.environ.get(name):
                session.verify = os.environ[name]
                break
        return session

    def __repr__(self) -> str:
        return f"MultipartUploadClient({self._transport!r})"

    def close(self) -> None:
        self._storage.close()

    def _call(self, method: str, path: str, body, parse, options: Dict[str, Any], query: Optional[str] = None):
        return self._transport.call_json(method, path, body, parse, query=query,
                                         timeout=options.get("timeout_in_seconds"),
                                         headers=options.get("additional_headers"), conflict_is_final=True)

    # ---- the API calls ----

    def create(
        self,
        *,
        filename: str,
        type: str,
        total_size: int,
        enable_hls: Optional[bool] = None,
        enable_thumbnail: Optional[bool] = None,
        user_metadata: Optional[Mapping[str, Any]] = None,
        request_options: Optional[Mapping[str, Any]] = None,
    ) -> UploadSession:
        """`POST /assets/multipart-uploads` (201): a session for a `type` (video, audio, image) file of
        `total_size` bytes. The platform picks `chunk_size`; the session lasts 24 hours."""
        if not isinstance(filename, str) or not filename:
            raise errors.BadRequestError("The `filename` parameter is required.", code="parameter_not_provided")
        if not isinstance(type, str) or not type:
            raise errors.BadRequestError("The `type` parameter is required (video, audio or image).",
                                         code="parameter_not_provided")
        if isinstance(total_size, bool) or not isinstance(total_size, int) or total_size <= 0:
            raise errors.BadRequestError("The `total_size` parameter must be a positive number of bytes.",
                                         code="parameter_invalid")
        options = _options(request_options)
        body = json_body([("filename", filename), ("type", type), ("total_size", total_size),
                          ("enable_hls", enable_hls), ("enable_thumbnail", enable_thumbnail),
                          ("user_metadata", None if user_metadata is None else dict(user_metadata))],
                         options.get("additional_body_parameters"))
        return self._call("POST", _PREFIX, body, UploadSession.from_json, options,
                          build_query((), options.get("additional_query_parameters")))

    def get_additional_presigned_urls(self, upload_id: str, *, start: int, count: int,
                                      request_options: Optional[Mapping[str, Any]] = None) -> PresignedUrls:
        """`POST /assets/multipart-uploads/{upload_id}/presigned-urls`: fresh URLs (valid one hour) for
        chunks `start` .. `start + count - 1` (1-based; at most 50 per call)."""
        options = _options(request_options)
        path = resource_path(_PREFIX, upload_id, "upload_id", "/presigned-urls")
        body = json_body([("start", start), ("count", count)], options.get("additional_body_parameters"))
        return self._call("POST", path, body, PresignedUrls.from_json, options,
                          build_query((), options.get("additional_query_parameters")))

    def report_chunk_batch(self, upload_id: str, *, completed_chunks: Sequence[Any],
                           request_options: Optional[Mapping[str, Any]] = None) -> ChunkBatchReport:
        """`POST /assets/multipart-uploads/{upload_id}`: reports uploaded chunks, in batches and any order.

        Body: `{"completed_chunks": [{"chunk_index": 1, "proof": "<etag>", "proof_type": "etag",
        "chunk_size": <bytes sent>}, ...]}`. Items are `CompletedChunk`s, mappings with those keys
        (`proof_type` defaults to `etag`) or the SDK's models. When every chunk is reported the session
        becomes `completed`."""
        options = _options(request_options)
        path = resource_path(_PREFIX, upload_id, "upload_id")
        body = json_body([("completed_chunks", build_completed_chunks(completed_chunks))],
                         options.get("additional_body_parameters"))
        return self._call("POST", path, body, ChunkBatchReport.from_json, options,
                          build_query((), options.get("additional_query_parameters")))

    def get_status(self, upload_id: str, *, page: Optional[int] = None, page_limit: Optional[int] = None,
                   request_options: Optional[Mapping[str, Any]] = None) -> UploadStatus:
        """`GET /assets/multipart-uploads/{upload_id}`: the session's status (active, completed, failed,
        expired), counts and sizes, and one page (default 1) of `uploaded_chunks`."""
        options = _options(request_options)
        path = resource_path(_PREFIX, upload_id, "upload_id")
        query = build_query([("page", 1 if page is None else page), ("page_limit", page_limit)],
                            options.get("additional_query_parameters"))
        return self._call("GET", path, None, UploadStatus.from_json, options, query)

    def list_incomplete_uploads(self, *, page: Optional[int] = None, page_limit: Optional[int] = None,
                                request_options: Optional[Mapping[str, Any]] = None) -> Page[IncompleteUpload]:
        """`GET /assets/multipart-uploads`: the sessions not yet completed, from `page` (default 1) on, a
        page at a time as the iteration goes (the first page is fetched now)."""
        options = _options(request_options)
        number = 1 if page is None else page
        query = build_query([("page", number), ("page_limit", page_limit)],
                            options.get("additional_query_parameters"))
        result = self._call("GET", _PREFIX, None, ListBody.parser(IncompleteUpload.from_json), options, query)
        return Page(result.items, result.page_info, number, result.rate_limit,
                    lambda: self.list_incomplete_uploads(page=number + 1, page_limit=page_limit,
                                                         request_options=request_options))

    # ---- the chunk PUT to object storage ----

    def put_chunk(self, url: str, data: Union[bytes, bytearray, memoryview, Any], *,
                  headers: Optional[Mapping[str, str]] = None, timeout: Optional[Timeout] = None,
                  length: Optional[int] = None) -> str:
        """PUTs one chunk to its presigned `url` and returns the ETag the storage answered, with its
        surrounding double quotes stripped (as the SDK reports it; `"abc"` -> `abc`): use it as the
        chunk's `proof`.

        `data` is bytes (a bytearray or memoryview is sent without a copy: keep it unchanged until this returns),
        or a binary file object streamed from its current position: `length` bytes of it
        (e.g. `f.seek(offset); put_chunk(url, f, length=size)`, see `chunk_span`), or all that is left
        when `length` is None. `headers` are the session's `upload_headers` (Content-Type defaults to
        application/octet-stream). Nothing else is sent: no API key, no cookies, no caller session.

        Raises `PresignedUrlExpiredError` on a 403 (or an expired-token answer): the URL expired or was
        used; retry only with a fresh URL. 5xx, timeouts and dropped connections raise the retryable
        `ServerError`, `EmbedTimeoutError`, `ConnectionFailedError` (the same URL may be retried while it
        is valid; a file object must be rewound first). No message shows the URL's signature."""
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise errors.BadRequestError(f"a presigned URL must be an http(s) URL, got {redact_url(str(url))!r}",
                                         code="invalid_url")
        if any(c in url for c in "\r\n\t "):
            raise errors.BadRequestError(f"the presigned URL {redact_url(url)!r} holds whitespace or a line break",
                                         code="invalid_url")
        body, size = self._chunk_body(data, length)
        request_headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        for name, value in (headers or {}).items():
            if name.lower() in ("x-api-key", "content-length", "host"):
                if name.lower() == "x-api-key":
                    raise errors.BadRequestError("put_chunk never sends an x-api-key header to object storage",
                                                 code="parameter_invalid")
                continue
            if self._transport.has_api_key and scrub(str(value)) != str(value):
                raise errors.BadRequestError(f"the `{name}` header holds a secret; it is not sent to object storage",
                                             code="parameter_invalid")
            request_headers[name] = str(value)
        if not any(name.lower() == "content-type" for name in request_headers):
            request_headers["Content-Type"] = _OCTET
        request_headers["Content-Length"] = str(size)
        shown = redact_url(url)
        logger.debug("PUT %d bytes to %s", size, shown)
        failure: Optional[errors.EmbedError] = None
        try:
            response = self._send(url, body, request_headers, timeout)
            content = response.content
        except requests.exceptions.Timeout as exc:
            failure = errors.EmbedTimeoutError(f"no answer from {shown} in time ({type(exc).__name__})")
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            failure = (errors.EmbedTimeoutError(f"{shown} stopped reading the chunk in time")
                       if _caused_by_timeout(exc) else
                       errors.ConnectionFailedError(f"PUT to {shown} failed or was dropped ({type(exc).__name__})"))
        except requests.exceptions.RequestException as exc:
            failure = errors.ConnectionFailedError(f"PUT to {shown} failed ({type(exc).__name__})")
        if failure is not None:
            # Raised outside the except block: the requests exception (whose text holds the whole URL)
            # must not ride along as __context__.
            logger.info("chunk PUT failed: %s", failure.message)  # the uploader retries; its caller decides
            raise failure
        if not 200 <= response.status_code < 300:
            error = _storage_error(response.status_code, content, response.headers, url)
            logger.info("chunk PUT failed: %s", error.message)
            raise error
        etag = (response.headers.get("ETag") or "").strip().strip('"')
        if not etag:
            raise errors.MalformedResponseError(f"PUT to {shown} answered HTTP {response.status_code} without an "
                                                f"ETag", status=response.status_code)
        return etag

    @staticmethod
    def _chunk_body(data: Any, length: Optional[int]):
        if isinstance(data, (bytes, bytearray, memoryview)):
            # Sent as they are, not copied (a chunk is megabytes; the caller keeps them unchanged until we return).
            if not isinstance(data, bytes):
                data = memoryview(data)
                data = data.cast("B") if data.contiguous else memoryview(data.tobytes())
            size = data.nbytes if isinstance(data, memoryview) else len(data)
            if length is not None and length != size:
                raise errors.BadRequestError(f"`length` is {length} but the data has {size} bytes",
                                             code="parameter_invalid")
            return data, size
        if isinstance(data, str) or not hasattr(data, "read"):
            raise TypeError(f"chunk data must be bytes or a binary file object, not {type(data).__name__}")
        if length is None:
            total = stream_length(data)
            if total is None:
                raise TypeError("a chunk's file object must have a known length (a real file, or seekable), "
                                "or pass `length`")
            length = total - data.tell()
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise errors.BadRequestError("`length` must be a non-negative number of bytes", code="parameter_invalid")
        return StreamingBody([_FileSlice(data, None, length)]), length

    def _send(self, url: str, body: Any, headers: Dict[str, str], timeout: Optional[Timeout]) -> requests.Response:
        prepared = requests.PreparedRequest()
        prepared.method = "PUT"
        prepared.url = url
        prepared.headers = requests.structures.CaseInsensitiveDict(headers)
        prepared.body = body
        prepared.hooks = {"response": []}
        session = self._storage
        proxies = requests.utils.get_environ_proxies(url)
        return session.get_adapter(url).send(prepared, stream=False,
                                             timeout=timeout if timeout is not None else self._transport.timeout,
                                             verify=session.verify, cert=None, proxies=proxies)
