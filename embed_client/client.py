"""`EmbedClient`: the TwelveLabs `POST /embed` call with the official SDK's signature and wire format
(`create`, `build_request` + `send`), composed as the SDK's `client.embed` is: `client.v2` (the Embed API
v2's `POST /embed-v2`), `client.tasks` (its async tasks), `client.assets` (`/assets`) and
`client.multipart_upload` (`/assets/multipart-uploads`) share one `Transport` with it."""
from __future__ import annotations

import json
import os
from typing import Any, BinaryIO, Dict, List, Mapping, Optional, Tuple, Union

import requests

from embed_client import errors
from embed_client.assets import AssetsClient
from embed_client.models import V1_MODELS
from embed_client.multipart import FilePart, encode_multipart, guess_content_type, new_boundary
from embed_client.secrets import scrub
from embed_client.transport import (API_KEY_ENV, DEFAULT_BASE_URL, DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT, Timeout,
                                    Transport)
from embed_client.multipart_upload import MultipartUploadClient
from embed_client.types import CreateEmbeddingsResult
from embed_client.v2 import TasksClient, V2Client

__all__ = ["DEFAULT_BASE_URL", "API_KEY_ENV", "EmbedClient", "MODEL_NAMES", "load_file_part"]

MODEL_NAMES = V1_MODELS  # what POST /embed takes (embed_client.models)
TEXT_TRUNCATE_VALUES = ("none", "start", "end")
_V1_ACCEPT = "application/json"

FileInput = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Tuple]


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


def _format_number(value: Any) -> str:
    # The SDK sends Python's str() of the float: 2.5, 0.0, 1e-07.
    return str(float(value))


class EmbedClient:
    """A thread-safe client of `POST {base_url}/embed`, with `v2` and `tasks` for the Embed API v2.

    The API key comes from `api_key` or the `TWELVE_LABS_API_KEY` environment variable. It is
    kept out of `repr()`, errors, logs and pickles; an unpickled client reads the variable again.
    The three share one `Transport` (session, key, timeouts), as the SDK's clients share one wrapper.
    """

    v2: V2Client
    tasks: TasksClient
    assets: AssetsClient
    multipart_upload: MultipartUploadClient

    def __init__(
        self,
        api_key: Optional[str] = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: Timeout = DEFAULT_TIMEOUT,
        session: Optional[requests.Session] = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ):
        self._transport = Transport(api_key=api_key, base_url=base_url, timeout=timeout, session=session,
                                    max_connections=max_connections)
        # Embed API v2: `POST /embed-v2` and, as `tasks`, the async embedding tasks (create, retrieve, list).
        self.v2 = V2Client(self._transport)
        self.tasks = self.v2.tasks
        # Assets (`/assets`: direct and URL uploads, retrieve, list, delete) and multipart uploads
        # (`/assets/multipart-uploads`, plus `put_chunk` to presigned URLs on a session without the key).
        self.assets = AssetsClient(self._transport)
        self.multipart_upload = MultipartUploadClient(self._transport)

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    @property
    def timeout(self) -> Timeout:
        return self._transport.timeout

    @property
    def max_connections(self) -> int:
        return self._transport.max_connections

    @property
    def has_api_key(self) -> bool:
        return self._transport.has_api_key

    @property
    def _session(self) -> requests.Session:
        # Where the session lived before the transport was split out; tests read its proxy settings here.
        return self._transport.session

    def __repr__(self) -> str:
        return f"EmbedClient(base_url={self.base_url!r}, api_key={'***' if self.has_api_key else None})"

    def __getstate__(self) -> Dict[str, Any]:
        return {"base_url": self.base_url, "timeout": self.timeout, "max_connections": self.max_connections}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(base_url=state["base_url"], timeout=state["timeout"],
                      max_connections=state["max_connections"])

    def close(self) -> None:
        self._transport.close()
        self.multipart_upload.close()

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

    def send(
        self,
        fields: List[Tuple[str, str]],
        files: List[Tuple[str, FilePart]],
        timeout: Optional[Timeout] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> CreateEmbeddingsResult:
        """Posts an already built request (see `build_request`) and parses the answer."""
        self._transport.require_key()
        boundary = new_boundary()
        body = encode_multipart(fields, files, boundary)
        request_headers = self._transport.headers(_V1_ACCEPT, f"multipart/form-data; boundary={boundary}", headers)
        response, content, info = self._transport.send("POST", self._transport.url("embed"), body, request_headers,
                                                       timeout)
        try:
            result = CreateEmbeddingsResult.from_json(json.loads(content))
        except ValueError as exc:
            raise errors.MalformedResponseError(
                scrub(f"HTTP {response.status_code} body is not the documented JSON: {exc}"),
                status=response.status_code, rate_limit=info) from None
        result.rate_limit = info
        return result
