"""The assets service: routing, admission through its own gate (the assets rate-limit category), each endpoint's answer, and chunk PUTs."""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import threading
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Tuple

from python_multipart.multipart import FormParser, parse_options_header

from ..config import EmulatorConfig
from ..faults import FaultInjector
from ..gate import Gate
from ..limits import RateLimiter
from ..reply import Reply, json_error, json_reply
from ..rules import ApiError, MB, invalid_message, not_provided_message, unknown_parameter_message
from ..stats import Stats
from ..tasks import rfc3339
from .check import mime_of, sniff
from .multipart import Session, SessionStore, StorageError
from .spec import (ASSET_TYPES, ASSETS_PATH, CHUNK_PATH, CREATE_FIELDS, DIRECT_MAX_AV,
                   FORM_OVERHEAD, IMAGE_MAX, MULTIPART_FIELDS, MULTIPART_MAX_AV,
                   PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, PRESIGN_MAX_COUNT, UPLOADS_PATH)
from .store import AssetStore

logger = logging.getLogger(__name__)

__all__ = ["AssetService"]

Query = Dict[str, List[str]]
JSON_BODY_MAX = 1 * MB  # emulator choice: the JSON endpoints take small bodies


def _bad(message: str, code: str = "parameter_invalid") -> ApiError:
    return ApiError(400, code, message)


def _assets_limits(config) -> tuple:
    """The assets category's (per minute, per day): `category_limits.assets` when set, else assets_requests_per_minute."""
    own = (config.category_limits or {}).get("assets") or {}
    return own.get("rpm", config.assets_requests_per_minute), own.get("rpd")


def _not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, "resource_not_exist", f"The {kind} `{ident}` does not exist.")


class AssetService:
    """Every /v1.3/assets... call, and the PUTs to the presigned chunk URLs it hands out.

    API calls: route (404/405), then the gate (see gate.py: auth 401, 429 burst fault, the assets
    requests-per-minute limit 429, other faults), then validation (400) and the answer. Errors
    are flat {"code", "message"}, as the OAS declares them. Chunk PUTs skip the gate (object
    storage: no API key, no API limit); they have their own delay and 500 knobs."""

    def __init__(self, get_config: Callable[[], EmulatorConfig], stats: Stats,
                 faults: FaultInjector, stopping: Callable[[], threading.Event]):
        self._config = get_config
        self._stats = stats
        self._faults = faults
        self._stopping = stopping
        self.limiter = RateLimiter()
        self.store = AssetStore(stats)
        self.sessions = SessionStore(lambda: self.store.folder)
        self._gate = Gate(get_config, stats.assets_gate_view(), self.limiter, faults, stopping,
                          nested_errors=False, dimension_header=False,
                          limits=_assets_limits)

    # ---- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        self.store.open(self._config().asset_storage_dir)

    def close(self) -> None:
        self.sessions.clear()
        self.store.close()

    # ---- routing --------------------------------------------------------------------------------

    @staticmethod
    def route(method: str, path: str) -> Tuple[Optional[str], Optional[str], Optional[Reply]]:
        """(endpoint name, asset or upload id, None) or (None, None, a 404/405 reply)."""
        ident = None
        if path == ASSETS_PATH:
            endpoints = {"POST": "create", "GET": "list"}
        elif path == UPLOADS_PATH:
            endpoints = {"POST": "upload_create", "GET": "upload_list"}
        elif path.startswith(UPLOADS_PATH + "/"):
            rest = path[len(UPLOADS_PATH) + 1:].split("/")
            ident = rest[0]
            if len(rest) == 1:
                endpoints = {"GET": "upload_status", "POST": "upload_report"}
            elif len(rest) == 2 and rest[1] == "presigned-urls":
                endpoints = {"POST": "upload_urls"}
            else:
                endpoints = {}
        elif path.startswith(ASSETS_PATH + "/") and "/" not in path[len(ASSETS_PATH) + 1:]:
            ident = path[len(ASSETS_PATH) + 1:]
            endpoints = {"GET": "retrieve", "DELETE": "delete"}
        else:
            endpoints = {}
        if not endpoints:
            return None, None, json_error(404, "resource_not_exist",
                                          f"The requested resource `{path}` does not exist.")
        if method not in endpoints:
            allowed = ", ".join(sorted(endpoints))
            return None, None, json_error(
                405, "method_not_allowed",  # code: emulator choice, none is documented
                f"The {method} method is not allowed on {path}; use {allowed}.", {"Allow": allowed})
        return endpoints[method], urllib.parse.unquote(ident) if ident else None, None

    def handle(self, endpoint: str, ident: Optional[str], query: Query, api_key: Optional[str],
               content_type: Optional[str], body: Any, host: str) -> Reply:
        """One admitted-or-refused API call; `body` is the request body stream (see server.py)."""
        self._stats.asset_request()
        return self._gate.handle(api_key, lambda config: self._answer(
            config, endpoint, ident, query, content_type, body, host))

    def _answer(self, config: EmulatorConfig, endpoint: str, ident: Optional[str], query: Query,
                content_type: Optional[str], body: Any, host: str) -> Reply:
        try:
            if endpoint == "create":
                return self._create(config, content_type, body)
            if endpoint == "list":
                return self._list(query)
            if endpoint == "retrieve":
                return self._retrieve(ident)
            if endpoint == "delete":
                return self._delete(config, ident, query)
            if endpoint == "upload_list":
                return self._upload_list(query)
            if endpoint == "upload_status":
                return self._upload_status(ident, query)
            request = _json_body(body)
            if endpoint == "upload_create":
                return self._upload_create(config, request, host)
            if endpoint == "upload_urls":
                return self._upload_urls(config, ident, request, host)
            return self._upload_report(config, ident, request, host)
        except ApiError as exc:
            return json_reply(exc.status, exc.body())

    # ---- POST /assets (multipart/form-data, streamed to disk) -----------------------------------

    def _create(self, config: EmulatorConfig, content_type: Optional[str], body: Any) -> Reply:
        mime, params = parse_options_header(content_type or "")
        boundary = params.get(b"boundary")
        if mime != b"multipart/form-data" or not boundary:
            raise _bad("The request body must be multipart/form-data.")
        cap = DIRECT_MAX_AV + FORM_OVERHEAD
        if body.length is not None and body.length > cap:
            raise _bad(_size_message(body.length, DIRECT_MAX_AV))
        fields: Dict[str, str] = {}
        files: Dict[str, Any] = {}
        try:
            _parse_form(body, boundary, self.store.folder, cap, fields, files)
            unknown = [name for name in list(fields) + list(files) if name not in CREATE_FIELDS]
            if unknown:
                raise _bad(unknown_parameter_message(unknown[0]), "parameter_unknown")
            method = fields.get("method")
            if method is None:
                raise _bad(not_provided_message("method"), "parameter_not_provided")
            if method not in ("direct", "url"):
                raise _bad(invalid_message("method", "You should use one of the following "
                                           "values: direct, url."))
            user_metadata = _user_metadata(fields.get("user_metadata"), from_form=True)
            for flag in ("enable_hls", "enable_thumbnail"):
                _form_bool(fields.get(flag), flag)
            filename = fields.get("filename") or None
            if method == "url":
                return self._create_url(config, fields, files, filename, user_metadata)
            upload = files.get("file")
            if upload is None:
                if "file" in fields:  # sent as a plain field, not a file part
                    raise _bad(invalid_message("file", "It must be a file part (with a "
                                               "filename)."))
                raise _bad(not_provided_message("file") + " It is required when `method` is "
                           "`direct`.", "parameter_not_provided")
            if "url" in fields:
                raise _bad(invalid_message("url", "It is not allowed when `method` is `direct`."))
            path = _file_path(upload, self.store)
            size = os.path.getsize(path)
            filename = filename or _text(upload.file_name) or "file"
            with open(path, "rb") as f:
                kind, file_type = sniff(f.read(64), filename)
            limit = IMAGE_MAX if kind == "image" else DIRECT_MAX_AV
            if size > limit:
                raise _bad(_size_message(size, limit))
            asset = self.store.add_file(path, filename, kind, file_type, user_metadata,
                                        config.asset_processing_sec)
            return json_reply(201, self.store.summary(asset, "processing"))
        finally:
            for upload in files.values():
                _discard(upload)

    def _create_url(self, config: EmulatorConfig, fields: Dict[str, str], files: Dict[str, Any],
                    filename: Optional[str], user_metadata: Optional[dict]) -> Reply:
        url = (fields.get("url") or "").strip()
        if not url:
            raise _bad(not_provided_message("url") + " It is required when `method` is `url`.",
                       "parameter_not_provided")
        if "file" in files:
            raise _bad(invalid_message("file", "It is not allowed when `method` is `url`."))
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad(invalid_message("url", "It must be a valid http or https URL."))
        filename = filename or os.path.basename(urllib.parse.unquote(parts.path)) or "file"
        asset = self.store.add_url(url, filename, user_metadata, config.asset_processing_sec,
                                   config.fetch_timeout_sec)
        return json_reply(201, self.store.summary(asset, "processing"))

    # ---- GET /assets, GET and DELETE /assets/{asset_id} -----------------------------------------

    def _list(self, query: Query) -> Reply:
        page, limit = _paging(query)
        ids = _multi(query, "asset_ids")
        types = _multi(query, "asset_types")
        for value in types:
            if value not in ASSET_TYPES:
                raise _bad(invalid_message("asset_types", "You should use one of the following "
                                           "values: image, video, audio."))
        filename = (query.get("filename") or [None])[-1]
        rows = self.store.list(asset_ids=ids or None, asset_types=types or None,
                               filename=filename)
        now = self.store.now()
        first = (page - 1) * limit
        return json_reply(200, {"data": [self.store.detail(a, now)
                                         for a in rows[first:first + limit]],
                                "page_info": _page_info(page, limit, len(rows))})

    def _retrieve(self, asset_id: str) -> Reply:
        asset = self.store.get(asset_id)
        if asset is None:
            raise _not_found("asset", asset_id)
        return json_reply(200, self.store.detail(asset, self.store.now()))

    def _delete(self, config: EmulatorConfig, asset_id: str, query: Query) -> Reply:
        force = _query_bool(query, "force")
        # There are no indexes here: `assets_referenced` stands for "indexed assets reference every asset",
        # which the platform answers 409 unless force=true (the OAS names no error code: emulator choice).
        if config.assets_referenced and not force and self.store.get(asset_id) is not None:
            raise ApiError(409, "asset_referenced", f"The asset `{asset_id}` cannot be deleted: indexed assets "
                                                    "reference it. Set `force` to true to delete it anyway.")
        if not self.store.delete(asset_id):
            raise _not_found("asset", asset_id)
        self.sessions.drop_asset(asset_id)
        return Reply(status=200, body=b"", content_type="application/json")

    # ---- multipart sessions -----------------------------------------------------------------------

    def _upload_create(self, config: EmulatorConfig, request: dict, host: str) -> Reply:
        for name in request:
            if name not in MULTIPART_FIELDS:
                raise _bad(unknown_parameter_message(name), "parameter_unknown")
        for name in ("filename", "type", "total_size"):
            if request.get(name) is None:
                raise _bad(not_provided_message(name), "parameter_not_provided")
        filename, kind, total_size = request["filename"], request["type"], request["total_size"]
        if not isinstance(filename, str) or not filename.strip():
            raise _bad(invalid_message("filename", "It must be a non-empty string."))
        if kind not in ASSET_TYPES:
            raise _bad(invalid_message("type", "You should use one of the following values: "
                                       "video, audio, image."))
        if isinstance(total_size, bool) or not isinstance(total_size, int) or total_size < 1:
            raise _bad(invalid_message("total_size", "It must be a positive integer (bytes)."))
        limit = IMAGE_MAX if kind == "image" else MULTIPART_MAX_AV
        if total_size > limit:
            raise _bad(invalid_message("total_size", _size_message(total_size, limit)))
        for flag in ("enable_hls", "enable_thumbnail"):
            if request.get(flag) is not None and not isinstance(request[flag], bool):
                raise _bad(invalid_message(flag, "It must be a boolean."))
        user_metadata = _user_metadata(request.get("user_metadata"), from_form=False)
        asset = self.store.reserve(filename, kind, mime_of(filename), user_metadata)
        session = self.sessions.create(asset.id, filename, kind, total_size,
                                       config.asset_chunk_size, config.asset_session_ttl_sec)
        urls = self.sessions.presign(session, 1, min(config.asset_initial_urls,
                                                     session.total_chunks),
                                     config.asset_url_ttl_sec, _base(host))
        self._stats.asset("sessions_created")
        self._stats.asset("urls_issued", len(urls))
        return json_reply(201, {"upload_id": session.id, "asset_id": asset.id,
                                "upload_urls": urls, "upload_headers": {},
                                "chunk_size": session.chunk_size,
                                "total_chunks": session.total_chunks,
                                "expires_at": rfc3339(session.expires_at)})

    def _session(self, upload_id: str, usable: bool) -> Session:
        """The session; with usable, one that can still take URLs and reports (else 403 expired,
        400 failed)."""
        session = self.sessions.get(upload_id)
        if session is None:
            raise _not_found("upload session", upload_id)
        if usable:
            status = session.status(self.sessions.now())
            if status == "expired":
                raise ApiError(403, "upload_session_expired",  # code: emulator choice
                               f"The upload session `{upload_id}` expired at "
                               f"{rfc3339(session.expires_at)}. Create a new upload session.")
            if status == "failed":
                raise _bad(f"The upload session `{upload_id}` failed. Create a new upload session.")
        return session

    def _upload_urls(self, config: EmulatorConfig, upload_id: str, request: dict,
                     host: str) -> Reply:
        session = self._session(upload_id, usable=True)
        if session.completed_at is not None:
            raise _bad(f"The upload session `{upload_id}` is already completed.")
        for name in ("start", "count"):
            if request.get(name) is None:
                raise _bad(not_provided_message(name), "parameter_not_provided")
            value = request[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise _bad(invalid_message(name, "It must be an integer."))
        start, count = request["start"], request["count"]
        if not 1 <= start <= session.total_chunks:
            raise _bad(invalid_message("start", f"It must be between 1 and "
                                       f"{session.total_chunks} (the total_chunks)."))
        if not 1 <= count <= PRESIGN_MAX_COUNT:
            raise _bad(invalid_message("count", f"It must be between 1 and {PRESIGN_MAX_COUNT}."))
        count = min(count, session.total_chunks - start + 1)
        now = self.sessions.now()
        urls = self.sessions.presign(session, start, count, config.asset_url_ttl_sec, _base(host))
        self._stats.asset("urls_issued", len(urls))
        return json_reply(200, {"upload_id": session.id, "start_index": start, "count": count,
                                "upload_urls": urls, "generated_at": rfc3339(now),
                                "expires_at": urls[0]["expires_at"]})

    def _upload_report(self, config: EmulatorConfig, upload_id: str, request: dict,
                       host: str) -> Reply:
        session = self._session(upload_id, usable=True)
        chunks = request.get("completed_chunks")
        if chunks is None:
            raise _bad(not_provided_message("completed_chunks"), "parameter_not_provided")
        if not isinstance(chunks, list) or not chunks:
            raise _bad(invalid_message("completed_chunks", "It must be a non-empty array."))
        for i, item in enumerate(chunks):
            _check_reported_chunk(item, f"completed_chunks[{i}]", session.total_chunks)
        was_completed = session.completed_at is not None
        processed, duplicates = self.sessions.report(session, chunks)
        self._stats.asset("chunks_reported", processed)
        reply = {"asset_id": session.asset_id, "processed_chunks": processed,
                 "duplicate_chunks": duplicates, "total_completed": len(session.reported())}
        if session.completed_at is not None:
            reply = {"url": f"{_base(host)}{ASSETS_PATH}/{session.asset_id}", **reply}
            if not was_completed:
                self._stats.asset("sessions_completed")
                self.store.complete(session.asset_id,
                                    lambda dest: self.sessions.assemble(session, dest),
                                    config.asset_processing_sec)
        return json_reply(200, reply)

    def _upload_status(self, upload_id: str, query: Query) -> Reply:
        session = self._session(upload_id, usable=False)
        page, limit = _paging(query)
        now = self.sessions.now()
        rows, completed, failed, uploaded = [], 0, 0, 0
        for index in range(1, session.total_chunks + 1):
            chunk = session.chunks.get(index)
            if chunk is not None and chunk.reported_at is not None:
                completed += 1
                uploaded += chunk.size
            elif index in session.failed:
                failed += 1
        first = (page - 1) * limit
        for index in range(first + 1, min(session.total_chunks, first + limit) + 1):
            rows.append(_chunk_info(session, index))
        return json_reply(200, {
            "upload_id": session.id, "status": session.status(now), "uploaded_chunks": rows,
            "chunks_completed": completed, "chunks_failed": failed,
            "chunks_pending": session.total_chunks - completed - failed,
            "page_info": _page_info(page, limit, session.total_chunks),
            "total_size": session.total_size, "uploaded_size": uploaded,
            "created_at": rfc3339(session.created_at), "updated_at": rfc3339(session.updated_at)})

    def _upload_list(self, query: Query) -> Reply:
        page, limit = _paging(query)
        rows = self.sessions.incomplete()
        now = self.sessions.now()
        first = (page - 1) * limit
        data = [{"upload_id": s.id, "status": s.status(now), "total_size": s.total_size,
                 "chunk_size": s.chunk_size, "total_chunks": s.total_chunks,
                 "created_at": rfc3339(s.created_at), "expires_at": rfc3339(s.expires_at)}
                for s in rows[first:first + limit]]
        return json_reply(200, {"data": data, "page_info": _page_info(page, limit, len(rows))})

    # ---- PUT to a presigned chunk URL (object storage: no key, no gate) -------------------------

    def put_chunk(self, method: str, path: str, query: Query, body: Any) -> Reply:
        """The answer to one request on a presigned URL; refusals are S3-style XML. (The HTTP
        layer counts the body bytes it read, refused ones included: chunk_bytes_received.)"""
        try:
            return self._put_chunk(method, path, query, body)
        except StorageError as exc:
            self._stats.asset("chunk_puts_failed" if exc.status >= 500 else "chunk_puts_refused")
            return _storage_error(exc)

    def _put_chunk(self, method: str, path: str, query: Query, body: Any) -> Reply:
        if method != "PUT":
            raise StorageError(405, "MethodNotAllowed", "The specified method is not allowed "
                               "against this resource.")
        parts = path[len(CHUNK_PATH) + 1:].split("/")
        if len(parts) != 2 or not parts[1].isdigit():
            raise StorageError(404, "NoSuchUpload", "The specified upload does not exist.")
        upload_id, index = parts[0], int(parts[1])
        signature = (query.get("X-Amz-Signature") or [""])[-1]
        session, grant = self.sessions.check_grant(upload_id, index, signature)
        expected = session.expected_size(index)
        if body.length is not None and body.length != expected:
            raise StorageError(400, "EntityTooLarge" if body.length > expected else
                               "EntityTooSmall", f"Your proposed upload is {body.length} bytes; "
                               f"this chunk must be exactly {expected} bytes.")
        config = self._config()
        if self._faults.chunk_put_fails(config):
            while body.read(MB):  # the body is taken, then the storage fails
                pass
            raise StorageError(500, "InternalError", "We encountered an internal error. Please "
                               "try again.")
        scratch, etag = self.sessions.receive(session, index, body, expected)
        if config.chunk_put_delay_ms > 0:
            self._stopping().wait(config.chunk_put_delay_ms / 1000.0)
        self.sessions.commit(session, grant, index, scratch, etag, expected)
        self._stats.asset("chunk_puts_accepted")
        self._stats.asset("chunk_bytes_accepted", expected)
        return Reply(status=200, body=b"", content_type="application/xml",
                     headers={"ETag": f'"{etag}"'})


def _storage_error(exc: StorageError) -> Reply:
    request_id = secrets.token_hex(8).upper()
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{exc.code}</Code>'
            f'<Message>{exc.message}</Message><RequestId>{request_id}</RequestId></Error>')
    return Reply(status=exc.status, body=body.encode(), content_type="application/xml")


# ---- request parsing ------------------------------------------------------------------------------

def _parse_form(body: Any, boundary: bytes, folder: str, cap: int, fields: Dict[str, str],
                files: Dict[str, Any]) -> None:
    """Feed the body to the form parser block by block: file parts go to disk in `folder`."""
    def on_field(field) -> None:
        fields[_text(field.field_name) or ""] = (field.value or b"").decode("utf-8", "replace")

    def on_file(file) -> None:
        name = _text(file.field_name) or ""
        if name in files:
            _discard(files[name])
        files[name] = file

    parser = FormParser("multipart/form-data", on_field, on_file, boundary=boundary,
                        config={"MAX_MEMORY_FILE_SIZE": 64 * 1024, "UPLOAD_DIR": folder,
                                "UPLOAD_DELETE_TMP": False})
    total = 0
    try:
        while True:
            block = body.read(MB)
            if not block:
                break
            total += len(block)
            if total > cap:
                raise _bad(_size_message(total, DIRECT_MAX_AV))
            parser.write(block)
        parser.finalize()
    except ValueError as exc:  # python_multipart's errors subclass ValueError
        raise _bad(f"The request body is not valid multipart/form-data ({exc}).") from exc


def _file_path(upload: Any, store: AssetStore) -> str:
    """The path of an uploaded file part on disk (small parts stay in memory: write them out)."""
    if upload.in_memory:
        path = store.scratch()
        with open(path, "wb") as f:
            f.write(upload.file_object.getvalue())
        return path
    upload.file_object.close()
    path = upload.actual_file_name
    return path.decode() if isinstance(path, bytes) else path


def _discard(upload: Any) -> None:
    """Close a parsed file part and remove its scratch file, if it is still there."""
    try:
        upload.file_object.close()
    except Exception:
        pass
    name = getattr(upload, "actual_file_name", None)
    if name:
        try:
            os.unlink(name.decode() if isinstance(name, bytes) else name)
        except OSError:
            pass


def _json_body(body: Any) -> dict:
    raw = body.read(JSON_BODY_MAX + 1)
    if len(raw) > JSON_BODY_MAX:
        raise _bad("The request body is too large.")
    try:
        request = json.loads(raw or b"{}")
    except ValueError:
        raise _bad("The request body is not valid JSON.")
    if not isinstance(request, dict):
        raise _bad("The request body must be a JSON object.")
    return request


def _user_metadata(raw: Any, from_form: bool) -> Optional[dict]:
    """A JSON object of string/number/boolean values (a JSON-encoded string in a form)."""
    if raw is None or (from_form and raw == ""):
        return None
    if from_form:
        try:
            raw = json.loads(raw)
        except ValueError:
            raise _bad(invalid_message("user_metadata", "It must be a JSON-encoded object."))
    if not isinstance(raw, dict) or not all(
            isinstance(v, (str, int, float, bool)) for v in raw.values()):
        raise _bad(invalid_message("user_metadata", "It must be an object whose values are "
                                   "strings, numbers or booleans."))
    return raw


def _form_bool(raw: Optional[str], name: str) -> Optional[bool]:
    if raw is None or raw == "":
        return None
    if raw.lower() not in ("true", "false"):
        raise _bad(invalid_message(name, "It must be true or false."))
    return raw.lower() == "true"


def _query_bool(query: Query, name: str) -> Optional[bool]:
    return _form_bool((query.get(name) or [None])[-1], name)


def _multi(query: Query, name: str) -> List[str]:
    """A repeated query parameter (name=a&name=b; also name[]=, and comma lists)."""
    values = query.get(name, []) + query.get(name + "[]", [])
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _paging(query: Query) -> Tuple[int, int]:
    def number(name: str, default: int, high: Optional[int]) -> int:
        raw = (query.get(name) or [None])[-1]
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise _bad(invalid_message(name, "It must be an integer."))
        if value < 1 or (high is not None and value > high):
            raise _bad(invalid_message(name, f"It must be between 1 and {high}." if high else
                                       "It must be at least 1."))
        return value

    return number("page", 1, None), number("page_limit", PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX)


def _page_info(page: int, limit: int, total: int) -> dict:
    return {"limit_per_page": limit, "page": page,
            "total_page": math.ceil(total / limit) if total else 0, "total_results": total}


def _check_reported_chunk(item: Any, path: str, total_chunks: int) -> None:
    if not isinstance(item, dict):
        raise _bad(invalid_message(path, "It must be an object."))
    for name in ("chunk_index", "proof", "proof_type", "chunk_size"):
        if item.get(name) is None:
            raise _bad(not_provided_message(f"{path}.{name}"), "parameter_not_provided")
    index, size = item["chunk_index"], item["chunk_size"]
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= total_chunks:
        raise _bad(invalid_message(f"{path}.chunk_index", f"It must be an integer between 1 and "
                                   f"{total_chunks}."))
    if not isinstance(item["proof"], str) or not item["proof"].strip():
        raise _bad(invalid_message(f"{path}.proof", "It must be the ETag of the uploaded chunk."))
    if item["proof_type"] != "etag":
        raise _bad(invalid_message(f"{path}.proof_type", "The supported value is `etag`."))
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _bad(invalid_message(f"{path}.chunk_size", "It must be a non-negative integer."))


def _chunk_info(session: Session, index: int) -> dict:
    chunk = session.chunks.get(index)
    if chunk is not None and chunk.reported_at is not None:
        return {"index": index, "status": "completed", "uploaded_at": rfc3339(chunk.reported_at),
                "updated_at": rfc3339(chunk.reported_at)}
    if index in session.failed:
        error, when = session.failed[index]
        return {"index": index, "status": "failed", "uploaded_at": None,
                "updated_at": rfc3339(when), "error": error}
    when = chunk.received_at if chunk is not None else session.created_at
    return {"index": index, "status": "pending", "uploaded_at": None, "updated_at": rfc3339(when)}


def _size_message(size: int, limit: int) -> str:
    return (f"File size ({size / MB:.1f} MB) exceeds maximum limit of "
            f"{_human(limit)}.")


def _human(limit: int) -> str:
    return f"{limit // (1024 * MB)} GB" if limit >= 1024 * MB else f"{limit // MB} MB"


def _base(host: str) -> str:
    return f"http://{host}"


def _text(raw: Optional[bytes]) -> Optional[str]:
    return None if raw is None else raw.decode("utf-8", errors="replace")
