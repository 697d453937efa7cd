"""Typed results of the assets endpoints (`/assets`, `/assets/multipart-uploads`), per the OpenAPI document
and SDK 1.3.6's models.

Parsers accept unknown fields (kept in `extra`) and raise ValueError when a body is not the documented
shape; the client turns that into `errors.MalformedResponseError`. Date-times stay the RFC 3339 strings
the API sent. A presigned URL is a credential: every `repr` here shows it with its signature redacted.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, TypeVar

from embed_client.secrets import redact_url, scrub
from embed_client.types_v2 import _Malformed, _extras, _object, _opt_dict, _opt_float, _opt_int, _opt_str, _task_id

__all__ = [
    "Asset",
    "ChunkBatchReport",
    "ChunkInfo",
    "CompletedChunk",
    "IncompleteUpload",
    "Page",
    "PresignedUrl",
    "PresignedUrls",
    "UploadSession",
    "UploadStatus",
]

T = TypeVar("T")

ASSET_STATUSES = ("processing", "ready", "failed")
UPLOAD_STATUSES = ("active", "completed", "failed", "expired")


def _list(value: Any, where: str, item: Callable[[Any, str], T]) -> List[T]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed(f"{where} is not a list")
    return [item(entry, f"{where}[{i}]") for i, entry in enumerate(value)]


def _str_dict(value: Any, where: str) -> Dict[str, str]:
    if value is None:
        return {}
    value = _object(value, where)
    return {str(k): str(v) for k, v in value.items()}


@dataclasses.dataclass
class Asset:
    """An asset: the 201 body of `POST /assets` (`Asset`) or the 200 body of `GET /assets/{id}` and of
    `GET /assets` entries (`AssetDetail`: also `size`, `duration`, `hls`, `thumbnail`,
    `technical_metadata` and, when `failed`, `error`).

    `id` is `_id` on the wire. `error` is `error.message`, scrubbed of secrets."""

    id: str
    status: Optional[str] = None  # processing | ready | failed
    method: Optional[str] = None  # direct | url | multipart
    filename: Optional[str] = None
    file_type: Optional[str] = None  # MIME type
    created_at: Optional[str] = None
    size: Optional[int] = None
    duration: Optional[float] = None
    error: Optional[str] = None
    user_metadata: Optional[Dict[str, Any]] = None
    source: Optional[Dict[str, Any]] = None
    hls: Optional[Dict[str, Any]] = dataclasses.field(default=None, repr=False)
    thumbnail: Optional[Dict[str, Any]] = dataclasses.field(default=None, repr=False)
    technical_metadata: Optional[Dict[str, Any]] = dataclasses.field(default=None, repr=False)
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    rate_limit: Any = dataclasses.field(default=None, repr=False, compare=False)

    _KNOWN = ("_id", "id", "status", "method", "filename", "file_type", "created_at", "size", "duration", "error",
              "user_metadata", "source", "hls", "thumbnail", "technical_metadata")

    @property
    def is_ready(self) -> bool:
        return self.status == "ready"

    @property
    def is_done(self) -> bool:
        """`ready` or `failed`: polling can stop."""
        return self.status in ("ready", "failed")

    @classmethod
    def from_json(cls, obj: Any, where: str = "body") -> "Asset":
        obj = _object(obj, where)
        error = obj.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            error = None if message is None else scrub(str(message))
        elif isinstance(error, str):
            error = scrub(error)
        elif error is not None:
            raise _Malformed(f"{where}.error is not an object")
        return cls(
            id=_task_id(obj, where, required=True),
            status=_opt_str(obj.get("status"), f"{where}.status"),
            method=_opt_str(obj.get("method"), f"{where}.method"),
            filename=_opt_str(obj.get("filename"), f"{where}.filename"),
            file_type=_opt_str(obj.get("file_type"), f"{where}.file_type"),
            created_at=_opt_str(obj.get("created_at"), f"{where}.created_at"),
            size=_opt_int(obj.get("size"), f"{where}.size"),
            duration=_opt_float(obj.get("duration"), f"{where}.duration"),
            error=error,
            user_metadata=_opt_dict(obj.get("user_metadata"), f"{where}.user_metadata"),
            source=_opt_dict(obj.get("source"), f"{where}.source"),
            hls=_opt_dict(obj.get("hls"), f"{where}.hls"),
            thumbnail=_opt_dict(obj.get("thumbnail"), f"{where}.thumbnail"),
            technical_metadata=_opt_dict(obj.get("technical_metadata"), f"{where}.technical_metadata"),
            extra=_extras(obj, cls._KNOWN),
        )


@dataclasses.dataclass
class PresignedUrl:
    """One chunk's upload URL (`PresignedURLChunk`): 1-based `chunk_index`, single use, valid one hour.

    The URL is a credential: `repr` shows it redacted; pass `url` only to `put_chunk`."""

    chunk_index: int
    url: str
    expires_at: Optional[str] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    _KNOWN = ("chunk_index", "url", "expires_at")

    def __repr__(self) -> str:
        return (f"PresignedUrl(chunk_index={self.chunk_index!r}, url={redact_url(self.url)!r}, "
                f"expires_at={self.expires_at!r})")

    @classmethod
    def from_json(cls, obj: Any, where: str = "upload_urls[]") -> "PresignedUrl":
        obj = _object(obj, where)
        index = _opt_int(obj.get("chunk_index"), f"{where}.chunk_index")
        url = _opt_str(obj.get("url"), f"{where}.url")
        if index is None or not url:
            raise _Malformed(f"{where} needs chunk_index and url")
        return cls(chunk_index=index, url=url, expires_at=_opt_str(obj.get("expires_at"), f"{where}.expires_at"),
                   extra=_extras(obj, cls._KNOWN))


def _urls(value: Any, where: str) -> List[PresignedUrl]:
    return _list(value, where, PresignedUrl.from_json)


@dataclasses.dataclass
class UploadSession:
    """The 201 body of `POST /assets/multipart-uploads` (`CreateAssetUploadResponse`).

    PUT chunk `i` (1-based) as bytes `[(i-1)*chunk_size, min(i*chunk_size, total_size))` to its URL, with
    `upload_headers`. The first `upload_urls` may not cover every chunk: ask for the rest with
    `get_additional_presigned_urls`. The session is valid until `expires_at` (24 hours)."""

    upload_id: str
    asset_id: Optional[str] = None
    upload_urls: List[PresignedUrl] = dataclasses.field(default_factory=list)
    upload_headers: Dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    chunk_size: Optional[int] = None
    total_chunks: Optional[int] = None
    expires_at: Optional[str] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    rate_limit: Any = dataclasses.field(default=None, repr=False, compare=False)

    _KNOWN = ("upload_id", "asset_id", "upload_urls", "upload_headers", "chunk_size", "total_chunks", "expires_at")

    def url_for(self, chunk_index: int) -> Optional[PresignedUrl]:
        """The URL of a chunk among `upload_urls`, if the session holds one."""
        return next((u for u in self.upload_urls if u.chunk_index == chunk_index), None)

    @classmethod
    def from_json(cls, obj: Any) -> "UploadSession":
        obj = _object(obj, "body")
        upload_id = _opt_str(obj.get("upload_id"), "upload_id")
        if not upload_id:
            raise _Malformed("upload_id is missing")
        return cls(
            upload_id=upload_id,
            asset_id=_opt_str(obj.get("asset_id"), "asset_id"),
            upload_urls=_urls(obj.get("upload_urls"), "upload_urls"),
            upload_headers=_str_dict(obj.get("upload_headers"), "upload_headers"),
            chunk_size=_opt_int(obj.get("chunk_size"), "chunk_size"),
            total_chunks=_opt_int(obj.get("total_chunks"), "total_chunks"),
            expires_at=_opt_str(obj.get("expires_at"), "expires_at"),
            extra=_extras(obj, cls._KNOWN),
        )


@dataclasses.dataclass
class PresignedUrls:
    """The 200 body of `POST /assets/multipart-uploads/{upload_id}/presigned-urls`."""

    upload_urls: List[PresignedUrl] = dataclasses.field(default_factory=list)
    upload_id: Optional[str] = None
    start_index: Optional[int] = None
    count: Optional[int] = None
    generated_at: Optional[str] = None
    expires_at: Optional[str] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    rate_limit: Any = dataclasses.field(default=None, repr=False, compare=False)

    _KNOWN = ("upload_urls", "upload_id", "start_index", "count", "generated_at", "expires_at")

    @classmethod
    def from_json(cls, obj: Any) -> "PresignedUrls":
        obj = _object(obj, "body")
        return cls(
            upload_urls=_urls(obj.get("upload_urls"), "upload_urls"),
            upload_id=_opt_str(obj.get("upload_id"), "upload_id"),
            start_index=_opt_int(obj.get("start_index"), "start_index"),
            count=_opt_int(obj.get("count"), "count"),
            generated_at=_opt_str(obj.get("generated_at"), "generated_at"),
            expires_at=_opt_str(obj.get("expires_at"), "expires_at"),
            extra=_extras(obj, cls._KNOWN),
        )


@dataclasses.dataclass(frozen=True)
class CompletedChunk:
    """One entry of `completed_chunks` in `POST /assets/multipart-uploads/{upload_id}`: the chunk's
    1-based index, the ETag its PUT answered (`proof`, as `put_chunk` returns it: quotes stripped, as
    the SDK sends it), `proof_type` `etag`, and the bytes sent (`chunk_size`; the last may be shorter)."""

    chunk_index: int
    proof: str
    chunk_size: int
    proof_type: str = "etag"

    def to_json(self) -> Dict[str, Any]:
        # The SDK model's field order.
        return {"chunk_index": self.chunk_index, "proof": self.proof, "proof_type": self.proof_type,
                "chunk_size": self.chunk_size}


@dataclasses.dataclass
class ChunkBatchReport:
    """The 200 body of `POST /assets/multipart-uploads/{upload_id}` (`ReportChunkBatchResponse`)."""

    url: Optional[str] = None
    asset_id: Optional[str] = None
    processed_chunks: Optional[int] = None
    duplicate_chunks: Optional[int] = None
    total_completed: Optional[int] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    rate_limit: Any = dataclasses.field(default=None, repr=False, compare=False)

    _KNOWN = ("url", "asset_id", "processed_chunks", "duplicate_chunks", "total_completed")

    def __repr__(self) -> str:
        return (f"ChunkBatchReport(url={redact_url(self.url)!r}, asset_id={self.asset_id!r}, "
                f"processed_chunks={self.processed_chunks!r}, duplicate_chunks={self.duplicate_chunks!r}, "
                f"total_completed={self.total_completed!r})")

    @classmethod
    def from_json(cls, obj: Any) -> "ChunkBatchReport":
        obj = _object(obj, "body")
        return cls(
            url=_opt_str(obj.get("url"), "url"),
            asset_id=_opt_str(obj.get("asset_id"), "asset_id"),
            processed_chunks=_opt_int(obj.get("processed_chunks"), "processed_chunks"),
            duplicate_chunks=_opt_int(obj.get("duplicate_chunks"), "duplicate_chunks"),
            total_completed=_opt_int(obj.get("total_completed"), "total_completed"),
            extra=_extras(obj, cls._KNOWN),
        )


@dataclasses.dataclass
class ChunkInfo:
    """One entry of `uploaded_chunks` (`ChunkInfo`): `index` (1-based), `status` completed|pending|failed,
    and `error` when failed."""

    index: Optional[int] = None
    status: Optional[str] = None
    uploaded_at: Optional[str] = None
    updated_at: Optional[str] = None
    error: Optional[str] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    _KNOWN = ("index", "status", "uploaded_at", "updated_at", "error")

    @classmethod
    def from_json(cls, obj: Any, where: str = "uploaded_chunks[]") -> "ChunkInfo":
        obj = _object(obj, where)
        error = obj.get("error")
        return cls(
            index=_opt_int(obj.get("index"), f"{where}.index"),
            status=_opt_str(obj.get("status"), f"{where}.status"),
            uploaded_at=_opt_str(obj.get("uploaded_at"), f"{where}.uploaded_at"),
            updated_at=_opt_str(obj.get("updated_at"), f"{where}.updated_at"),
            error=None if error is None else scrub(str(error)),
            extra=_extras(obj, cls._KNOWN),
        )


@dataclasses.dataclass
class UploadStatus:
    """The 200 body of `GET /assets/multipart-uploads/{upload_id}` (`GetUploadStatusResponse`), one page of
    `uploaded_chunks`. `completed` means the platform received the file, not that the asset is ready:
    then poll the asset."""

    upload_id: Optional[str] = None
    status: Optional[str] = None  # active | completed | failed | expired
    uploaded_chunks: List[ChunkInfo] = dataclasses.field(default_factory=list)
    chunks_completed: Optional[int] = None
    chunks_failed: Optional[int] = None
    chunks_pending: Optional[int] = None
    total_size: Optional[int] = None
    uploaded_size: Optional[int] = None
    created_at: Optional[str] = None
    updated_at: Optional[str] = None
    page_info: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    rate_limit: Any = dataclasses.field(default=None, repr=False, compare=False)

    _KNOWN = ("upload_id", "status", "uploaded_chunks", "chunks_completed", "chunks_failed", "chunks_pending",
              "total_size", "uploaded_size", "created_at", "updated_at", "page_info")

    @property
    def is_completed(self) -> bool:
        return self.status == "completed"

    @classmethod
    def from_json(cls, obj: Any) -> "UploadStatus":
        obj = _object(obj, "body")
        page_info = obj.get("page_info")
        return cls(
            upload_id=_opt_str(obj.get("upload_id"), "upload_id"),
            status=_opt_str(obj.get("status"), "status"),
            uploaded_chunks=_list(obj.get("uploaded_chunks"), "uploaded_chunks", ChunkInfo.from_json),
            chunks_completed=_opt_int(obj.get("chunks_completed"), "chunks_completed"),
            chunks_failed=_opt_int(obj.get("chunks_failed"), "chunks_failed"),
            chunks_pending=_opt_int(obj.get("chunks_pending"), "chunks_pending"),
            total_size=_opt_int(obj.get("total_size"), "total_size"),
            uploaded_size=_opt_int(obj.get("uploaded_size"), "uploaded_size"),
            created_at=_opt_str(obj.get("created_at"), "created_at"),
            updated_at=_opt_str(obj.get("updated_at"), "updated_at"),
            page_info={} if page_info is None else dict(_object(page_info, "page_info")),
            extra=_extras(obj, cls._KNOWN),
        )


@dataclasses.dataclass
class IncompleteUpload:
    """One entry of `GET /assets/multipart-uploads` (`IncompleteUploadSummary`)."""

    upload_id: str
    status: Optional[str] = None
    total_size: Optional[int] = None
    chunk_size: Optional[int] = None
    total_chunks: Optional[int] = None
    created_at: Optional[str] = None
    expires_at: Optional[str] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    _KNOWN = ("upload_id", "status", "total_size", "chunk_size", "total_chunks", "created_at", "expires_at")

    @classmethod
    def from_json(cls, obj: Any, where: str = "data[]") -> "IncompleteUpload":
        obj = _object(obj, where)
        upload_id = _opt_str(obj.get("upload_id"), f"{where}.upload_id")
        if not upload_id:
            raise _Malformed(f"{where}.upload_id is missing")
        return cls(
            upload_id=upload_id,
            status=_opt_str(obj.get("status"), f"{where}.status"),
            total_size=_opt_int(obj.get("total_size"), f"{where}.total_size"),
            chunk_size=_opt_int(obj.get("chunk_size"), f"{where}.chunk_size"),
            total_chunks=_opt_int(obj.get("total_chunks"), f"{where}.total_chunks"),
            created_at=_opt_str(obj.get("created_at"), f"{where}.created_at"),
            expires_at=_opt_str(obj.get("expires_at"), f"{where}.expires_at"),
            extra=_extras(obj, cls._KNOWN),
        )


class Page(Generic[T]):
    """One page of a list endpoint (`GET /assets`, `GET /assets/multipart-uploads`); iterating it walks
    this page and the following ones.

    Paging follows the SDK's SyncPager (as `TaskPage` does): after each page it asks for `page + 1` and
    stops at the first page whose `data` is empty."""

    def __init__(self, items: List[T], page_info: Dict[str, Any], page: int, rate_limit: Any,
                 get_next: Callable[[], "Page[T]"]):
        self.items = items
        self.page_info = page_info
        self.page = page
        self.rate_limit = rate_limit
        self._get_next = get_next

    def __repr__(self) -> str:
        return f"Page(page={self.page}, items={len(self.items)}, page_info={self.page_info!r})"

    def next_page(self) -> "Page[T]":
        return self._get_next()

    def iter_pages(self) -> Iterator["Page[T]"]:
        page = self
        while True:
            yield page
            page = page.next_page()
            if not page.items:
                return

    def __iter__(self) -> Iterator[T]:
        for page in self.iter_pages():
            yield from page.items


class ListBody(Generic[T]):
    """A list endpoint's 200 body `{data: [...], page_info: {...}}`, parsed with `item`."""

    __slots__ = ("items", "page_info", "rate_limit")

    def __init__(self, items: List[T], page_info: Dict[str, Any]):
        self.items, self.page_info, self.rate_limit = items, page_info, None

    @classmethod
    def parser(cls, item: Callable[[Any, str], T]) -> Callable[[Any], "ListBody[T]"]:
        def parse(obj: Any) -> "ListBody[T]":
            obj = _object(obj, "body")
            page_info = obj.get("page_info")
            return cls(_list(obj.get("data"), "data", item),
                       {} if page_info is None else dict(_object(page_info, "page_info")))
        return parse
