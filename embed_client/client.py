"""`EmbedClient`: the TwelveLabs `POST /embed` call with the official SDK's signature and wire format,
and the Embed API v2 (`create_v2`, `tasks`; request bodies in `embed_client.v2`)."""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar, Union

import requests
from requests.adapters import HTTPAdapter

from embed_client import errors, v2
from embed_client.secrets import check_api_key, redact_url, scrub
from embed_client.multipart import FilePart, encode_multipart, guess_content_type, new_boundary
from embed_client.types import CreateEmbeddingsResult
from embed_client.types_v2 import EmbeddingsV2Result, TaskCreated

__all__ = ["DEFAULT_BASE_URL", "API_KEY_ENV", "EmbedClient", "MODEL_NAMES", "load_file_part"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.twelvelabs.io/v1.3"
API_KEY_ENV = "TWELVE_LABS_API_KEY"
MODEL_NAMES = ("marengo3.0", "marengo2.7", "Marengo-retrieval-2.7")
TEXT_TRUNCATE_VALUES = ("none", "start", "end")
# Connect fast or fail; a read may take long on big audio. The SDK's own default is 600 s.
DEFAULT_TIMEOUT = (10.0, 120.0)
# Threads of one worker share the pool; beyond this many, requests waits for a free connection.
DEFAULT_MAX_CONNECTIONS = 64
_USER_AGENT = "tl-embed-pipeline/0.1"
# v2 sends JSON with the SDK's (httpx's) Accept header.
_V2_ACCEPT = "*/*"
_JSON = "application/json"

T = TypeVar("T")

FileInput = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Tuple]
Timeout = Union[float, Tuple[float, float]]


def load_file_part(value: FileInput) -> FilePart:
    """Reads a path, binary file object, bytes or (name, content[, type]) tuple into a file part."""
    if isinstance(value, tuple):
        filename, content = value[0], value[1]
        content_type = value[2] if len(value) > 2 and value[2] else None
        _, data, guessed = load_file_part(content)
        filename = filename or "upload"
        return filename, data, content_type or guess_content_type(filename)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "upload", bytes(value), "application/octet-stream"
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:
            data = f.read()
        filename = os.path.basename(os.fspath(value))
        return filename, data, guess_content_type(filename)
    if hasattr(value, "read"):
        data = value.read()
        if isinstance(data, str):
            raise TypeError("file objects must be opened in binary mode")
        filename = os.path.basename(str(getattr(value, "name", "upload"))) or "upload"
        return filename, data, guess_content_type(filename)
    raise TypeError(f"unsupported file input of type {type(value).__name__}")


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


def _format_number(value: Any) -> str:
    # The SDK sends Python's str() of the float: 2.5, 0.0, 1e-07.
    return str(float(value))


class EmbedClient:
    """A thread-safe client of `POST {base_url}/embed`.

    The API key comes from `api_key` or the `TWELVE_LABS_API_KEY` environment variable. It is
    kept out of `repr()`, errors, logs and pickles; an unpickled client reads the variable again.
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
        self._lock = threading.Lock()
        # v2 async embedding tasks: create, retrieve, list.
        self.tasks = v2.TasksClient(self)

    @staticmethod
    def _new_session(max_connections: int) -> requests.Session:
        session = requests.Session()
        # Retries belong to the caller's policy, not to urllib3.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max_connections, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    @property
    def has_api_key(self) -> bool:
        return bool(self._api_key)

    def __repr__(self) -> str:
        return f"EmbedClient(base_url={self.base_url!r}, api_key={'***' if self._api_key else None})"

    def __getstate__(self) -> Dict[str, Any]:
        return {"base_url": self.base_url, "timeout": self.timeout, "max_connections": self.max_connections}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(base_url=state["base_url"], timeout=state["timeout"],
                      max_connections=state["max_connections"])

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def __enter__(self) -> "EmbedClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build_request(
        self,
        model_name: str,
        *,
        text: Optional[str] = None,
        text_truncate: Optional[str] = None,
        audio_url: Optional[str] = None,
        audio_file: Optional[FileInput] = None,
        audio_start_offset_sec: Optional[float] = None,
        image_url: Optional[str] = None,
        image_file: Optional[FileInput] = None,
        additional_body_parameters: Optional[Mapping[str, Any]] = None,
    ) -> Tuple[List[Tuple[str, str]], List[Tuple[str, FilePart]]]:
        """Validates the inputs and returns the form fields and file parts, in wire order."""
        if model_name not in MODEL_NAMES:
            raise errors.BadRequestError(
                "The `model_name` parameter is invalid. You should use one of the following values: "
                + ", ".join(f"`{m}`" for m in MODEL_NAMES) + ".",
                code="parameter_invalid",
            )
        if text_truncate is not None and text_truncate not in TEXT_TRUNCATE_VALUES:
            raise errors.BadRequestError(
                "The `text_truncate` parameter is invalid. You should use one of the following "
                "values: `none`, `start`, `end`.",
                code="parameter_invalid",
            )
        has_image = image_url is not None or image_file is not None
        has_audio = audio_url is not None or audio_file is not None
        if text is None and not has_image and not has_audio:
            raise errors.BadRequestError(
                "At least one of `text`, `image_url`, `image_file`, `audio_url` or `audio_file` "
                "must be provided.",
                code="parameter_not_provided",
            )
        fields: List[Tuple[str, str]] = [("model_name", model_name)]
        if text is not None:
            fields.append(("text", text))
        if image_url is not None:
            fields.append(("image_url", image_url))
        if audio_url is not None:
            fields.append(("audio_url", audio_url))
        if audio_start_offset_sec is not None:
            fields.append(("audio_start_offset_sec", _format_number(audio_start_offset_sec)))
        # SDK 1.3.6 sends text_truncate only as an additional body parameter: after the fields.
        extra = dict(additional_body_parameters or {})
        if text_truncate is not None:
            extra.setdefault("text_truncate", text_truncate)
        for name, value in extra.items():
            fields.append((name, _format_number(value) if isinstance(value, float) else str(value)))
        files: List[Tuple[str, FilePart]] = []
        # The URL wins when both are given, so the file is not uploaded at all.
        if image_file is not None and image_url is None:
            files.append(("image_file", load_file_part(image_file)))
        if audio_file is not None and audio_url is None:
            files.append(("audio_file", load_file_part(audio_file)))
        return fields, files

    def create(
        self,
        model_name: str,
        *,
        text: Optional[str] = None,
        text_truncate: Optional[str] = None,
        audio_url: Optional[str] = None,
        audio_file: Optional[FileInput] = None,
        audio_start_offset_sec: Optional[float] = None,
        image_url: Optional[str] = None,
        image_file: Optional[FileInput] = None,
        request_options: Optional[Mapping[str, Any]] = None,
        **kwargs: Any,
    ) -> CreateEmbeddingsResult:
        """Creates embeddings for up to one text, one image and one audio in one call.

        Extra keyword arguments are sent as additional form fields. Raises an
        `errors.EmbedError` subclass on every failure.
        """
        options = dict(request_options or {})
        extra = dict(options.get("additional_body_parameters") or {})
        extra.update(kwargs)
        fields, files = self.build_request(
            model_name, text=text, text_truncate=text_truncate, audio_url=audio_url,
            audio_file=audio_file, audio_start_offset_sec=audio_start_offset_sec,
            image_url=image_url, image_file=image_file, additional_body_parameters=extra,
        )
        return self.send(fields, files, timeout=options.get("timeout_in_seconds"),
                         headers=options.get("additional_headers"))

    def _send_raw(self, method: str, url: str, body: Optional[bytes], headers: Dict[str, str],
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

    def _post(self, url: str, body: bytes, headers: Dict[str, str], timeout: Timeout) -> requests.Response:
        return self._send_raw("POST", url, body, headers, timeout)

    def _request(self, method: str, url: str, body: Optional[bytes], headers: Dict[str, str],
                 timeout: Optional[Timeout] = None) -> Tuple[requests.Response, bytes]:
        """Sends one request on the pooled session; transport failures become typed errors.

        Returns the response and its body, whatever the status."""
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

    def _require_key(self) -> str:
        if not self._api_key:
            raise errors.AuthError(
                f"No API key: set the {API_KEY_ENV} environment variable or pass api_key.",
                code="api_key_invalid",
            )
        return self._api_key

    def send(
        self,
        fields: List[Tuple[str, str]],
        files: List[Tuple[str, FilePart]],
        timeout: Optional[Timeout] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> CreateEmbeddingsResult:
        """Posts an already built request (see `build_request`) and parses the answer."""
        self._require_key()
        boundary = new_boundary()
        body = encode_multipart(fields, files, boundary)
        request_headers = {
            "User-Agent": _USER_AGENT,
            "Accept": "application/json",
            **dict(headers or {}),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "x-api-key": self._api_key,
        }
        url = f"{self.base_url}/embed"
        response, content = self._request("POST", url, body, request_headers, timeout)
        if not 200 <= response.status_code < 300:
            raise errors.error_from_response(response.status_code, content, response.headers)  # scrubbed there
        info = errors.RateLimitInfo.from_headers(response.headers)
        try:
            result = CreateEmbeddingsResult.from_json(json.loads(content))
        except ValueError as exc:
            raise errors.MalformedResponseError(
                scrub(f"HTTP {response.status_code} body is not the documented JSON: {exc}"),
                status=response.status_code, rate_limit=info) from None
        result.rate_limit = info
        return result

    # ---------------------------------------------------------------- Embed API v2

    # The exact JSON bytes of a `POST /embed-v2`, for `send_v2` (built once, resent as is on a retry).
    build_create_v2 = staticmethod(v2.build_create_body)
    build_v2_body = build_create_v2

    def send_v2(self, body: bytes, timeout: Optional[Timeout] = None,
                headers: Optional[Mapping[str, str]] = None) -> EmbeddingsV2Result:
        """Posts a body built by `build_create_v2` (the same bytes may be sent again on a retry)."""
        return self._call_v2("POST", "embed-v2", body, EmbeddingsV2Result.from_json, timeout=timeout,
                             headers=headers)

    def create_v2(
        self,
        input_type: str,
        model_name: str,
        *,
        text: Any = None,
        image: Any = None,
        text_image: Any = None,
        audio: Any = None,
        video: Any = None,
        multi_input: Any = None,
        auto_truncate: Optional[bool] = None,
        embedding_uncertainty: Optional[bool] = None,
        embedding_dimension: Optional[int] = None,
        request_options: Optional[Mapping[str, Any]] = None,
    ) -> EmbeddingsV2Result:
        """`POST /embed-v2`: embeddings of one input, returned at once.

        Inputs are dicts in the wire shape (or the SDK's request models); None means not sent.
        `request_options` takes the SDK's `timeout_in_seconds`, `additional_headers` and
        `additional_body_parameters` (retries are the caller's policy). Raises an
        `errors.EmbedError` subclass on every failure.
        """
        options = dict(request_options or {})
        body = self.build_create_v2(
            input_type, model_name, text=text, image=image, text_image=text_image, audio=audio, video=video,
            multi_input=multi_input, auto_truncate=auto_truncate, embedding_uncertainty=embedding_uncertainty,
            embedding_dimension=embedding_dimension,
            additional_body_parameters=options.get("additional_body_parameters"))
        return self.send_v2(body, timeout=options.get("timeout_in_seconds"), headers=options.get("additional_headers"))

    # The exact JSON bytes of a `POST /embed-v2/tasks`, for `send_task_create`.
    build_task_create = staticmethod(v2.build_task_create_body)

    def send_task_create(self, body: bytes, timeout: Optional[Timeout] = None,
                         headers: Optional[Mapping[str, str]] = None) -> TaskCreated:
        """Posts a body built by `build_task_create`; the service answers 202 with the task id."""
        return self._call_v2("POST", "embed-v2/tasks", body, TaskCreated.from_json, timeout=timeout,
                             headers=headers)

    def _call_v2(self, method: str, path: str, body: Optional[bytes], parse: Callable[[Any], T], *,
                 query: Optional[str] = None, timeout: Optional[Timeout] = None,
                 headers: Optional[Mapping[str, str]] = None) -> T:
        """One v2 call: JSON in and out, typed errors, the rate-limit headers on the result."""
        key = self._require_key()
        request_headers = {"User-Agent": _USER_AGENT, "Accept": _V2_ACCEPT, **dict(headers or {})}
        if body is not None:
            request_headers["Content-Type"] = _JSON
        request_headers["x-api-key"] = key
        url = f"{self.base_url}/{path}" + (f"?{query}" if query else "")
        response, content = self._request(method, url, body, request_headers, timeout)
        if not 200 <= response.status_code < 300:
            raise errors.error_from_response(response.status_code, content, response.headers)  # scrubbed there
        info = errors.RateLimitInfo.from_headers(response.headers)
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
