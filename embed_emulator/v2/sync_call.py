"""POST /v1.3/embed-v2: one synchronous embedding, answered in the call."""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional

import numpy as np

from .. import rules, vectors, video
from ..config import EmulatorConfig
from ..rules import count_tokens, invalid_message
from ..stats import v2_key
from . import fields
from .av import av_entries, av_metadata, data_entry, decode_av, measure_av, media_span, parse_av, wants_audio
from .common import Outcome, parse_common, text_tokens
from .errors import bad, duration_message, too_large
from .sources import document_text, load_image, load_source
from .spec import (AUDIO_TOKENS_PER_SEC, AV_MAX_BYTES, IMAGE_MAX_BYTES, IMAGE_TOKENS, M30, M35, MAX_MEDIA_SOURCES,
                   SYNC_INPUT_TYPES, SYNC_MAX_SEC_35, VIDEO_TOKENS_PER_SEC)

if TYPE_CHECKING:  # the service imports this module to dispatch to it
    from .service import V2Service

_PLACEHOLDER_RE = re.compile(r"<@([^<>\s]+)>")


class SyncCall:
    def __init__(self, service: V2Service, config: EmulatorConfig, request: dict):
        self.service, self.config, self.request = service, config, request
        self.assets = service.asset_lookup

    def run(self) -> Outcome:
        c = parse_common(self.request, SYNC_INPUT_TYPES, ("auto_truncate",))
        if c.model == M35 and c.input_type != "multi_input":
            raise bad(invalid_message("input_type", "Marengo 3.5 accepts only `multi_input` on "
                                      "this endpoint; use marengo3.0 for the other input types."))
        self.c = c
        return getattr(self, "_" + c.input_type)()

    def _result(self, data: List[dict], key: str, metadata: Optional[dict] = None,
                usage: Optional[dict] = None, media_sec: float = 0.0) -> Outcome:
        payload: dict = {"data": data}
        if usage is not None:
            payload["usage"] = usage
        if metadata is not None:
            payload["metadata"] = metadata
        return Outcome(200, payload, input_type=self.c.input_type, key=key, media_sec=media_sec)

    def _text(self) -> Outcome:
        c = self.c
        fields.known(c.obj, ("input_text",), "text")
        text = fields.text(c.obj, "input_text", "text.input_text", required=True)
        text, _ = text_tokens(text, "text.input_text", c.model, False)
        vec = vectors.v2_text(text, c.model)
        return self._result([data_entry(vec, c.dims, False, c.model)], v2_key(c.model, "text", text))

    def _image(self) -> Outcome:
        c = self.c
        fields.known(c.obj, ("media_source",), "image")
        ms = fields.obj(c.obj, "media_source", "image.media_source", required=True)
        source = load_source(self.config, self.assets, ms, "image.media_source", "image", IMAGE_MAX_BYTES)
        image = load_image(source.data, "image.media_source")
        vec = vectors.v2_image(image, c.model)
        return self._result([data_entry(vec, c.dims, False, c.model)],
                            v2_key(c.model, "image", source.data),
                            {"input_type": "image", **source.metadata()})

    def _text_image(self) -> Outcome:
        c = self.c
        fields.known(c.obj, ("input_text", "media_source"), "text_image")
        text = fields.text(c.obj, "input_text", "text_image.input_text", required=True)
        text, _ = text_tokens(text, "text_image.input_text", c.model, False)
        ms = fields.obj(c.obj, "media_source", "text_image.media_source", required=True)
        source = load_source(self.config, self.assets, ms, "text_image.media_source", "image", IMAGE_MAX_BYTES)
        image = load_image(source.data, "text_image.media_source")
        vec = vectors.v2_combine([vectors.v2_text(text, c.model), vectors.v2_image(image, c.model)],
                                 c.model, "text_image")
        return self._result([data_entry(vec, c.dims, False, c.model)],
                            v2_key(c.model, "text_image", text.encode() + b"\0" + source.data),
                            {"input_type": "text_image", **source.metadata()})

    def _audio(self) -> Outcome:
        return self._av("audio")

    def _video(self) -> Outcome:
        return self._av("video")

    def _av(self, kind: str) -> Outcome:
        c = self.c
        spec = parse_av(c.obj, kind, kind, c.model, task=False, uncertainty=False)
        self.service.check_media_minutes(self.config)
        path = f"{kind}.media_source"
        source = load_source(self.config, self.assets, c.obj["media_source"], path, kind, AV_MAX_BYTES)
        duration, probed = measure_av(source.media, path, kind, c.model)
        # The limit applies to the file's duration, whatever start_sec/end_sec select
        # (emulator choice: the platform measures the file).
        if duration > self.config.max_sync_media_sec_30:
            raise too_large(duration_message(duration, self.config.max_sync_media_sec_30))
        span = media_span(spec, duration, kind)
        try:
            content = decode_av(source.media, kind, probed, duration, span, wants_audio(spec))
        except video.VideoError as exc:
            raise bad(invalid_message(path, f"The media could not be decoded: {exc}."))
        data = av_entries(content, spec, c.model, c.dims, False)
        key = v2_key(c.model, kind, source.blocks(),
                     spec.start if spec.start_given else None, spec.end if spec.end_given else None)
        return self._result(data, key, av_metadata(spec, source, duration, span, c.model, None),
                            media_sec=span[1] - span[0])

    def _multi_input(self) -> Outcome:
        c = self.c
        fields.known(c.obj, ("input_text", "media_sources"), "multi_input")
        text = fields.text(c.obj, "input_text", "multi_input.input_text", required=False)
        sources = c.obj.get("media_sources")
        if sources is None:
            sources = []
        if not isinstance(sources, list):
            raise bad(invalid_message("multi_input.media_sources", "It must be an array."))
        if text is None and not sources:
            raise bad("At least one of the following parameters must be provided: "
                      "`multi_input.input_text`, `multi_input.media_sources`.",
                      "parameter_not_provided")
        if len(sources) > MAX_MEDIA_SOURCES:
            raise bad(invalid_message("multi_input.media_sources", f"It can hold at most "
                                      f"{MAX_MEDIA_SOURCES} media sources ({len(sources)} given)."))
        allowed_types = ("image", "video", "audio", "document") if c.model == M35 else ("image",)
        names: Dict[str, int] = {}
        for i, ms in enumerate(sources):
            path = f"multi_input.media_sources[{i}]"
            if not isinstance(ms, dict):
                raise bad(invalid_message(path, "It must be an object."))
            fields.known(ms, ("name", "media_type", "url", "base64_string", "asset_id"), path)
            if ms.get("media_type") is None:
                raise bad(rules.not_provided_message(f"{path}.media_type"),
                          "parameter_not_provided")
            if c.model == M30 and ms["media_type"] in ("video", "audio", "document"):
                raise bad(invalid_message(f"{path}.media_type", "Marengo 3.0 accepts only "
                                          "`image` media sources; use marengo3.5."))
            fields.enum(ms["media_type"], f"{path}.media_type", allowed_types)
            name = ms.get("name")
            if name is not None:
                if not isinstance(name, str) or not name:
                    raise bad(invalid_message(f"{path}.name", "It must be a non-empty string."))
                if name in names:  # emulator choice: names identify sources, so they are unique
                    raise bad(invalid_message(f"{path}.name", f"The name `{name}` is used twice."))
                names[name] = i
        if text is not None:
            for ref in _PLACEHOLDER_RE.findall(text):
                if ref not in names:
                    raise bad(invalid_message("multi_input.input_text", f"The reference `<@{ref}>` "
                                              "matches no media source `name`."))
        if c.uncertainty and text is not None and sources:
            raise bad(invalid_message("embedding_uncertainty", "It is allowed only for a "
                                      "text-only or media-only request."))
        if c.uncertainty and any(ms["media_type"] == "document" for ms in sources):
            raise bad(invalid_message("embedding_uncertainty", "It is not allowed with a "
                                      "document source."))
        truncated = False
        if text is not None:
            text, truncated = text_tokens(text, "multi_input.input_text", c.model,
                                          c.auto_truncate)
        media_types = {ms["media_type"] for ms in sources}
        if len(media_types - {"document"}) > 1 and text is None:
            raise bad(invalid_message("multi_input.input_text", "Combining media sources of "
                                      "different types requires `input_text`."))
        if any(ms["media_type"] in ("audio", "video") for ms in sources):
            self.service.check_media_minutes(self.config)

        parts: List[np.ndarray] = []
        key_parts: List[Iterable[bytes]] = []  # each part's bytes, in blocks
        tokens: Dict[str, int] = {}
        media_sec = 0.0
        text_parts = 0
        has_pdf = False
        if text is not None:
            parts.append(vectors.v2_text(text, c.model))
            key_parts.append([text.encode()])
            tokens["text"] = count_tokens(text)
            text_parts += 1
        for i, ms in enumerate(sources):
            path = f"multi_input.media_sources[{i}]"
            kind = ms["media_type"]
            max_bytes = IMAGE_MAX_BYTES  # 32 MB for every 3.5 source and 3.0 images
            source = load_source(self.config, self.assets, ms, path, kind, max_bytes)
            key_parts.append(source.blocks())
            if kind == "image":
                parts.append(vectors.v2_image(load_image(source.data, path), c.model))
                tokens["image"] = tokens.get("image", 0) + IMAGE_TOKENS
            elif kind in ("audio", "video"):
                duration, probed = measure_av(source.media, path, kind, c.model)
                if duration > SYNC_MAX_SEC_35:
                    raise too_large(f"The `{path}` is too long. "
                                    + duration_message(duration, SYNC_MAX_SEC_35))
                try:
                    content = decode_av(source.media, kind, probed, duration, (0.0, duration))
                except video.VideoError as exc:
                    raise bad(invalid_message(path, f"The video could not be decoded: {exc}."))
                samples, rate = content.audio(0.0, duration)
                audio_vec = vectors.v2_audio(samples, rate, c.model)
                if kind == "video":
                    visual = vectors.v2_visual(content.decoded.frames_between(0.0, duration),
                                               c.model)
                    parts.append(vectors.v2_combine([visual, audio_vec], c.model, "fused")
                                 if content.decoded.has_audio else visual)
                else:
                    parts.append(audio_vec)
                media_sec += duration
                per_sec = VIDEO_TOKENS_PER_SEC if kind == "video" else AUDIO_TOKENS_PER_SEC
                tokens[kind] = tokens.get(kind, 0) + int(math.ceil(duration)) * per_sec
            else:
                if source.data.startswith(b"%PDF"):
                    has_pdf = True
                    if len(sources) > 1 or text is not None:
                        raise bad(invalid_message(path, "A PDF document must be the only "
                                                  "source, without `input_text`."))
                    # Emulator choice: no PDF renderer here.
                    raise bad(invalid_message(path, "PDF documents are not supported by the "
                                              "emulator; send a .txt or .md document."))
                doc_text = document_text(source.data, path)
                parts.append(vectors.v2_text(doc_text, c.model))
                tokens["document"] = tokens.get("document", 0) + count_tokens(doc_text)
                text_parts += 1
        if not has_pdf and text_parts == len(parts) and text_parts > 1:
            raise bad(invalid_message("multi_input", "The content is all text: add an image, "
                                      "video or audio source, or send one text on its own."))
        vec = parts[0] if len(parts) == 1 else vectors.v2_combine(parts, c.model, "multi_input")
        metadata = {"input_type": "multi_input"}
        usage = None
        if c.model == M35:
            metadata["embedding_dimension"] = c.dims
            usage = {"input_tokens": tokens, "truncated": truncated}
            if truncated:
                usage["truncation_reason"] = "model_context_window"
        return self._result([data_entry(vec, c.dims, c.uncertainty, c.model)],
                            v2_key(c.model, "multi_input", _joined(key_parts)),
                            metadata, usage, media_sec)


def _joined(parts: List[Iterable[bytes]]) -> Iterator[bytes]:
    """The parts' bytes separated by NUL bytes, in blocks: b"\\0".join of the parts' bytes."""
    for i, part in enumerate(parts):
        if i:
            yield b"\0"
        yield from part
