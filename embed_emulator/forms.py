"""Turn a multipart/form-data body into a validated EmbedRequest (request-level 400s)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from python_multipart.multipart import FormParser, parse_options_header

from . import rules
from .rules import bad_request

__all__ = ["Part", "MediaSource", "EmbedRequest", "parse_multipart", "build_request"]

# A bad body already gets a 400 naming the parse error; the parser's own error-level log
# lines about it would only be noise on stderr.
logging.getLogger("python_multipart").setLevel(logging.CRITICAL)

# Keep uploads in memory: they are at most a few tens of MB.
_PARSER_CONFIG = {"MAX_MEMORY_FILE_SIZE": float("inf")}


@dataclass
class Part:
    name: str
    filename: Optional[str]
    data: bytes


@dataclass
class MediaSource:
    """Where one modality's input comes from: a URL to fetch, or uploaded bytes."""
    field: str  # the field that won: image_url / image_file / audio_url / audio_file
    url: Optional[str] = None
    data: Optional[bytes] = None
    filename: Optional[str] = None

    def metadata(self) -> dict:
        if self.url is not None:
            return {"input_url": self.url}
        return {"input_filename": self.filename} if self.filename is not None else {}


@dataclass
class EmbedRequest:
    model_name: str  # as sent; echoed back
    model: str       # canonical model, picks rules and vectors
    text: Optional[str] = None  # already truncated
    image: Optional[MediaSource] = None
    audio: Optional[MediaSource] = None
    audio_offset_sec: float = 0.0

    def modalities(self) -> List[str]:
        return [m for m in rules.MODALITIES if getattr(self, m) is not None]


def parse_multipart(content_type: Optional[str], body: bytes) -> List[Part]:
    """All parts of the body, in order; a body that is not multipart/form-data is a 400."""
    mime, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise bad_request("The request body must be multipart/form-data.")
    parts: List[Part] = []

    def on_field(field) -> None:
        parts.append(Part(_text(field.field_name), None, field.value or b""))

    def on_file(file) -> None:
        parts.append(Part(_text(file.field_name), _text(file.file_name),
                          file.file_object.getvalue()))

    parser = FormParser("multipart/form-data", on_field, on_file, boundary=boundary,
                        config=_PARSER_CONFIG)
    try:
        parser.write(body)
        parser.finalize()
    except ValueError as exc:  # python_multipart's errors subclass ValueError
        raise bad_request(f"The request body is not valid multipart/form-data ({exc}).") from exc
    return parts


def build_request(parts: List[Part]) -> EmbedRequest:
    """Validate fields in the API's order: unknown, model, inputs, then values."""
    fields: Dict[str, str] = {}
    files: Dict[str, Tuple[Optional[str], bytes]] = {}
    for part in parts:
        if part.name in rules.FILE_FIELDS:
            files[part.name] = (part.filename, part.data)
        elif part.name in rules.TEXT_FIELDS:
            fields[part.name] = part.data.decode("utf-8", errors="replace")
        else:
            raise bad_request(rules.unknown_parameter_message(part.name), "parameter_unknown")

    if "model_name" not in fields:
        raise bad_request(rules.not_provided_message("model_name"), "parameter_not_provided")
    model = rules.canonical_model(fields["model_name"])
    if model is None:
        raise bad_request(rules.model_name_message())
    if not any(f in fields or f in files for f in rules.INPUT_FIELDS):
        raise bad_request(rules.not_provided_message(), "parameter_not_provided")

    truncate = fields.get("text_truncate", rules.DEFAULT_TEXT_TRUNCATE).strip()
    if truncate not in rules.TEXT_TRUNCATE_VALUES:
        raise bad_request(rules.text_truncate_message())
    offset = rules.parse_offset(fields.get("audio_start_offset_sec"))

    request = EmbedRequest(model_name=fields["model_name"], model=model, audio_offset_sec=offset)
    if "text" in fields:
        request.text = _checked_text(fields["text"], model, truncate)
    request.image = _source("image", fields, files)
    request.audio = _source("audio", fields, files)
    return request


def _checked_text(text: str, model: str, truncate: str) -> str:
    if not text.strip():
        raise bad_request(rules.invalid_message("text", "The text must not be empty."))
    limit = rules.TEXT_TOKEN_LIMITS[model]
    if model == "marengo3.0":
        truncate = "end"  # documented: 3.0 ignores text_truncate and cuts the end
    if truncate == "none" and rules.count_tokens(text) > limit:
        raise bad_request(rules.token_limit_message(limit))
    return rules.truncate_text(text, limit, truncate)


def _source(modality: str, fields: Dict[str, str], files) -> Optional[MediaSource]:
    """URL wins over file when both are given (documented)."""
    url_field, file_field = f"{modality}_url", f"{modality}_file"
    if url_field in fields:
        return MediaSource(field=url_field, url=fields[url_field].strip())
    if file_field in files:
        filename, data = files[file_field]
        return MediaSource(field=file_field, data=data, filename=filename)
    return None


def _text(raw: Optional[bytes]) -> Optional[str]:
    return None if raw is None else raw.decode("utf-8", errors="replace")
