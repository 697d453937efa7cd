"""`client.assets`: upload media as assets (`POST /assets`, direct or by URL), retrieve, list and delete them,
over the shared `Transport`, byte for byte as SDK 1.3.6's `client.assets` sends them.

A direct upload is streamed: the multipart/form-data body is produced from the file object in 64 KiB
pieces with a precomputed Content-Length (`multipart.stream_multipart`), so a 200 MB file is never held
in memory. An asset is usable once `retrieve(id).status == "ready"`; poll it.

The `build_*` functions make the wire form (no HTTP); `multipart_upload` uses the JSON and query helpers.
"""
from __future__ import annotations

import io
import json
import os
import pathlib
import urllib.parse
from contextlib import ExitStack
from typing import Any, BinaryIO, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from embed_client import errors
from embed_client.multipart import StreamFilePart, StreamingBody, guess_content_type, new_boundary, stream_multipart
from embed_client.transport import Transport
from embed_client.types_assets import Asset, ListBody, Page

__all__ = ["ASSET_METHODS", "AssetsClient", "build_asset_form", "build_query", "json_body", "resource_path"]

ASSET_METHODS = ("direct", "url")

# path, bytes, a binary file object, or (filename, content[, content_type]) with content one of those.
AssetFile = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Tuple]


def _invalid(message: str, code: str = "parameter_invalid") -> errors.BadRequestError:
    return errors.BadRequestError(message, code=code)


def _options(request_options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    return dict(request_options or {})


def _form_value(value: Any) -> str:
    # httpx's primitive_value_to_str, as the SDK's form fields are written.
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    return str(value)


def build_query(params: Sequence[Tuple[str, Any]],
                additional_query_parameters: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """A query string as the SDK sends it: None values left out, lists as repeated keys, booleans as
    `true`/`false`, then the call's additional parameters. None when nothing is left."""
    merged: Dict[str, Any] = dict(params)
    merged.update(additional_query_parameters or {})
    pairs: List[Tuple[str, str]] = []
    for name, value in merged.items():
        if value is None:
            continue
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            pairs.append((name, _form_value(item)))
    return urllib.parse.urlencode(pairs) if pairs else None


def json_body(fields: Sequence[Tuple[str, Any]],
              additional_body_parameters: Optional[Mapping[str, Any]] = None) -> bytes:
    """A JSON body as the SDK (httpx) writes it: fields in order, None left out (as unset), the call's
    additional parameters merged last, compact UTF-8."""
    body: Dict[str, Any] = {name: value for name, value in fields if value is not None}
    body.update(additional_body_parameters or {})
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise _invalid(f"The request holds a value JSON cannot carry: {exc}") from None


def resource_path(prefix: str, resource_id: str, name: str, suffix: str = "") -> str:
    """`{prefix}/{id}{suffix}` with the id quoted whole (a `/` or `?` stays inside it)."""
    if not isinstance(resource_id, str) or not resource_id.strip():
        raise _invalid(f"The `{name}` parameter must be a non-empty string.", "parameter_not_provided")
    return f"{prefix}/{urllib.parse.quote(resource_id, safe='')}{suffix}"


def _file_part(file: AssetFile, opened: ExitStack) -> StreamFilePart:
    """(filename, content, content_type) as httpx's FileField names them: a file object by its `name`,
    bytes as `upload`, a tuple as given (content type guessed from the filename when absent)."""
    if isinstance(file, tuple):
        if not 2 <= len(file) <= 3:
            raise _invalid("A file tuple is (filename, content) or (filename, content, content_type).")
        filename, content = file[0], file[1]
        content_type = file[2] if len(file) == 3 else None
        if isinstance(content, (str, os.PathLike)):
            content = opened.enter_context(open(content, "rb"))
        _check_content(content)
        return filename, content, content_type if content_type is not None else (
            guess_content_type(filename) if filename else None)
    if isinstance(file, (str, os.PathLike)):
        # Unlike the SDK (where a str is the content itself), a str is a path: the file is opened and streamed.
        file = opened.enter_context(open(file, "rb"))
    _check_content(file)
    if isinstance(file, (bytes, bytearray, memoryview)):
        return "upload", bytes(file), "application/octet-stream"
    filename = pathlib.Path(str(getattr(file, "name", "upload"))).name
    return filename, file, guess_content_type(filename) if filename else None


def _check_content(content: Any) -> None:
    if isinstance(content, (bytes, bytearray, memoryview)):
        return
    if not hasattr(content, "read"):
        raise TypeError(f"unsupported file input of type {type(content).__name__}")
    if isinstance(content, io.TextIOBase):
        raise TypeError("file objects must be opened in binary mode")


def build_asset_form(
    method: str,
    *,
    file: Optional[AssetFile] = None,
    url: Optional[str] = None,
    filename: Optional[str] = None,
    enable_hls: Optional[bool] = None,
    enable_thumbnail: Optional[bool] = None,
    user_metadata: Union[str, Mapping[str, Any], None] = None,
    additional_body_parameters: Optional[Mapping[str, Any]] = None,
    boundary: Optional[str] = None,
    opened: Optional[ExitStack] = None,
) -> Tuple[str, StreamingBody]:
    """The multipart/form-data of `POST /assets` as (content type, streamed body), in the SDK's order:
    method, url, filename, enable_hls, enable_thumbnail, user_metadata, the additional parameters, then
    the `file` part. None means not sent. A file given as a path is opened on `opened` (close it after
    sending); a file object is sent whole from its start, as httpx sends it.

    `user_metadata` is the JSON string the API takes; a mapping is sent as `json.dumps(mapping)`."""
    if method not in ASSET_METHODS:
        raise _invalid("The `method` parameter is invalid. You should use one of the following values: "
                       "`direct`, `url`.", "parameter_invalid" if method else "parameter_not_provided")
    if method == "direct" and file is None:
        raise _invalid("The `file` parameter is required when `method` is `direct`.", "parameter_not_provided")
    if method == "url" and not url:
        raise _invalid("The `url` parameter is required when `method` is `url`.", "parameter_not_provided")
    if user_metadata is not None and not isinstance(user_metadata, str):
        try:
            user_metadata = json.dumps(dict(user_metadata), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _invalid(f"The `user_metadata` parameter cannot be written as JSON: {exc}") from None
    data: Dict[str, Any] = {}
    for name, value in (("method", method), ("url", url), ("filename", filename), ("enable_hls", enable_hls),
                        ("enable_thumbnail", enable_thumbnail), ("user_metadata", user_metadata)):
        if value is not None:
            data[name] = value
    data.update(additional_body_parameters or {})
    fields: List[Tuple[str, str]] = []
    for name, value in data.items():
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            fields.append((name, _form_value(item)))
    files: List[Tuple[str, StreamFilePart]] = []
    if file is not None:
        files.append(("file", _file_part(file, opened if opened is not None else ExitStack())))
    boundary = boundary or new_boundary()
    return f"multipart/form-data; boundary={boundary}", stream_multipart(fields, files, boundary)


class AssetsClient:
    """`client.assets`: create (direct upload or URL), retrieve, list and delete assets.

    Every call takes the SDK's `request_options` (`timeout_in_seconds`, `additional_headers`,
    `additional_query_parameters`, `additional_body_parameters`); retries are the caller's policy
    (`embed_client.retry`). Failures raise `errors.EmbedError` subclasses: 404 `NotFoundError`,
    409 `ConflictError`, 429 `RateLimitError` (with its `RateLimitInfo`), 5xx `ServerError`."""

    def __init__(self, transport: Transport):
        self._transport = transport

    def __repr__(self) -> str:
        return f"AssetsClient({self._transport!r})"

    def _call(self, method: str, path: str, body, parse, options: Dict[str, Any], *, query: Optional[str] = None,
              content_type: Optional[str] = None):
        return self._transport.call_json(method, path, body, parse, query=query,
                                         timeout=options.get("timeout_in_seconds"),
                                         headers=options.get("additional_headers"), content_type=content_type,
                                         conflict_is_final=True)

    def create(
        self,
        *,
        method: str,
        file: Optional[AssetFile] = None,
        url: Optional[str] = None,
        filename: Optional[str] = None,
        enable_hls: Optional[bool] = None,
        enable_thumbnail: Optional[bool] = None,
        user_metadata: Union[str, Mapping[str, Any], None] = None,
        request_options: Optional[Mapping[str, Any]] = None,
    ) -> Asset:
        """`POST /assets` (201): upload a file (`method="direct"`, `file`: a path, bytes, a binary file
        object or a (filename, content[, content_type]) tuple; streamed, up to 200 MB of video/audio) or
        have the platform fetch `url` (`method="url"`). Returns the asset, usually `processing`: poll
        `retrieve` until it is `ready` (or `failed`) before using its id."""
        options = _options(request_options)
        self._transport.require_key()
        with ExitStack() as opened:
            content_type, body = build_asset_form(
                method, file=file, url=url, filename=filename, enable_hls=enable_hls,
                enable_thumbnail=enable_thumbnail, user_metadata=user_metadata,
                additional_body_parameters=options.get("additional_body_parameters"), opened=opened)
            return self._call("POST", "assets", body, Asset.from_json, options, content_type=content_type,
                              query=build_query((), options.get("additional_query_parameters")))

    def retrieve(self, asset_id: str, *, request_options: Optional[Mapping[str, Any]] = None) -> Asset:
        """`GET /assets/{asset_id}`: the asset with its status (`processing`, `ready`, `failed` + `error`),
        size and duration. An unknown id raises `errors.NotFoundError`."""
        options = _options(request_options)
        return self._call("GET", resource_path("assets", asset_id, "asset_id"), None, Asset.from_json, options,
                          query=build_query((), options.get("additional_query_parameters")))

    def delete(self, asset_id: str, *, force: Optional[bool] = None,
               request_options: Optional[Mapping[str, Any]] = None) -> None:
        """`DELETE /assets/{asset_id}` (200). When indexed assets reference it the API answers 409
        (`errors.ConflictError`) unless `force=True`."""
        options = _options(request_options)
        path = resource_path("assets", asset_id, "asset_id")
        query = build_query([("force", force)], options.get("additional_query_parameters"))
        headers = self._transport.headers("*/*", None, options.get("additional_headers"))
        self._transport.send("DELETE", self._transport.url(path, query), None, headers,
                             options.get("timeout_in_seconds"), conflict_is_final=True)

    def list(
        self,
        *,
        page: Optional[int] = None,
        page_limit: Optional[int] = None,
        asset_ids: Union[str, Sequence[str], None] = None,
        asset_types: Union[str, Sequence[str], None] = None,
        filename: Optional[str] = None,
        request_options: Optional[Mapping[str, Any]] = None,
    ) -> Page[Asset]:
        """`GET /assets`, newest first: the assets from `page` (default 1) on, a page at a time as the
        iteration goes (the first page is fetched now). `asset_ids` and `asset_types` (image, video,
        audio) filter; `filename` matches case-insensitively and partially."""
        options = _options(request_options)
        number = 1 if page is None else page
        query = build_query([("page", number), ("page_limit", page_limit), ("asset_ids", asset_ids),
                             ("asset_types", asset_types), ("filename", filename)],
                            options.get("additional_query_parameters"))
        result = self._call("GET", "assets", None, ListBody.parser(Asset.from_json), options, query=query)
        return Page(result.items, result.page_info, number, result.rate_limit,
                    lambda: self.list(page=number + 1, page_limit=page_limit, asset_ids=asset_ids,
                                      asset_types=asset_types, filename=filename, request_options=request_options))
