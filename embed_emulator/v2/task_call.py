"""POST /v1.3/embed-v2/tasks: checks a task's input and hands its embedding to the task store (../tasks.py)."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .. import vectors, video
from ..config import EmulatorConfig
from ..rules import count_tokens, invalid_message, truncate_text
from ..stats import v2_key
from ..tasks import TaskFailure
from . import fields
from .av import (av_entries, av_metadata, av_usage, data_entry, decode_av, measure_av, media_span, parse_av,
                 wants_audio)
from .common import Outcome, parse_common
from .errors import V2Error, bad
from .sources import document_text, load_image, load_source
from .spec import (AV_MAX_BYTES, BASE64_MAX, IMAGE_MAX_BYTES, IMAGE_TOKENS, M30, M35, TASK_ASSET_MAX_BYTES,
                   TASK_DOCUMENT_MAX_BYTES, TASK_FETCH_MAX_BYTES, TASK_INPUT_TYPES, TASK_MAX_SEC, TASK_MIN_SEC, TEXT_TOKEN_LIMITS)

if TYPE_CHECKING:  # the service imports this module to dispatch to it
    from .service import V2Service

_SENTENCE_RE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


class TaskCall:
    def __init__(self, service: V2Service, config: EmulatorConfig, request: dict):
        self.service, self.config, self.request = service, config, request
        self.assets = service.asset_lookup

    def run(self) -> Outcome:
        c = parse_common(self.request, TASK_INPUT_TYPES, ())
        if c.model == M30 and c.input_type in ("image", "document"):
            raise bad(invalid_message("input_type", f"`{c.input_type}` requires marengo3.5."))
        self.c = c
        try:
            return getattr(self, "_" + c.input_type)()
        except V2Error as exc:
            if exc.status == 413:  # the tasks endpoint answers no 413: a measured overage is a 400
                exc.status, exc.code = 400, "parameter_invalid"
            raise

    def _created(self, work, metadata: dict, list_metadata: dict, key: str,
                 media_sec: float = 0.0) -> Outcome:
        c, config = self.c, self.config
        task = self.service.tasks.create(
            model_name=c.model, input_type=c.input_type, metadata=metadata,
            list_metadata=list_metadata, key=key, work=work,
            ready_after_sec=config.task_ready_after_sec, failure_rate=config.task_failure_rate)
        payload = {"_id": task.id, "status": "processing", "data": None}
        if c.model == M35:
            payload["metadata"] = {"embedding_dimension": c.dims}
        return Outcome(202, payload, input_type=c.input_type, key=key, media_sec=media_sec,
                       task_created=True)

    def _audio(self) -> Outcome:
        return self._av("audio")

    def _video(self) -> Outcome:
        return self._av("video")

    def _av(self, kind: str) -> Outcome:
        c = self.c
        spec = parse_av(c.obj, kind, kind, c.model, task=True, uncertainty=c.uncertainty)
        self.service.check_media_minutes(self.config)
        path = f"{kind}.media_source"
        # An asset is opened by path, never read whole: it may be as large as an asset can be.
        source = load_source(self.config, self.assets, c.obj["media_source"], path, kind,
                             AV_MAX_BYTES if "base64_string" in c.obj["media_source"] else
                             TASK_FETCH_MAX_BYTES, fetch_max=TASK_FETCH_MAX_BYTES,
                             asset_max=TASK_ASSET_MAX_BYTES)
        duration, probed = measure_av(source.media, path, kind, c.model, metadata_only=True)
        if duration < TASK_MIN_SEC or duration > TASK_MAX_SEC:
            raise bad(invalid_message(path, f"The duration ({duration:.1f} seconds) must be "
                                      f"between {TASK_MIN_SEC:g} seconds and "
                                      f"{TASK_MAX_SEC / 3600:g} hours."))
        span = media_span(spec, duration, kind)
        model, dims, uncertainty, data = c.model, c.dims, c.uncertainty, source.media

        def work():
            try:
                content = decode_av(data, kind, probed, duration, span, wants_audio(spec))
            except video.VideoError as exc:
                raise TaskFailure(f"The media could not be decoded: {exc}.")
            entries = av_entries(content, spec, model, dims, uncertainty)
            usage = av_usage(kind, span[1] - span[0]) if model == M35 else None
            return entries, usage

        metadata = av_metadata(spec, source, duration, span, c.model, c.dims)
        if kind == "video":
            listed = {**source.metadata(), "video_clip_length": spec.seconds,
                      "video_embedding_scope": spec.scopes, "video_embedding_option": spec.options,
                      "duration": round(duration, 6)}
        else:
            listed = {**source.metadata(), "audio_embedding_option": spec.options,
                      "audio_embedding_scope": spec.scopes, "duration": round(duration, 6),
                      "start_offset_sec": round(span[0], 6), "end_offset_sec": round(span[1], 6)}
        key = v2_key(c.model, kind, source.blocks(),
                     spec.start if spec.start_given else None, spec.end if spec.end_given else None)
        return self._created(work, metadata, listed, key, media_sec=span[1] - span[0])

    def _image(self) -> Outcome:
        c = self.c
        fields.known(c.obj, ("media_source", "embedding_option", "embedding_type", "embedding_scope"),
                     "image")
        fields.enum_list(c.obj, "embedding_option", "image.embedding_option", ("visual",), ("visual",))
        fields.enum_list(c.obj, "embedding_type", "image.embedding_type", ("separate_embedding",),
                         ("separate_embedding",))
        fields.enum_list(c.obj, "embedding_scope", "image.embedding_scope", ("asset",), ("asset",))
        ms = fields.obj(c.obj, "media_source", "image.media_source", required=True)
        source = load_source(self.config, self.assets, ms, "image.media_source", "image", IMAGE_MAX_BYTES)
        image = load_image(source.data, "image.media_source")
        model, dims, uncertainty = c.model, c.dims, c.uncertainty

        def work():
            vec = vectors.v2_image(image, model)
            return ([data_entry(vec, dims, uncertainty, model, option="visual", scope="asset")],
                    {"input_tokens": {"image": IMAGE_TOKENS}, "truncated": False})

        metadata = {"input_type": "image", **source.metadata(), "embedding_options": ["visual"],
                    "embedding_scopes": ["asset"], "embedding_dimension": c.dims}
        listed = {**source.metadata(), "image_embedding_option": ["visual"],
                  "image_embedding_scope": ["asset"]}
        return self._created(work, metadata, listed, v2_key(c.model, "image", source.data))

    def _document(self) -> Outcome:
        c = self.c
        fields.known(c.obj, ("media_source", "segmentation", "embedding_option", "embedding_type",
                             "embedding_scope"), "document")
        ms = fields.obj(c.obj, "media_source", "document.media_source", required=True)
        source = load_source(self.config, self.assets, ms, "document.media_source", "document",
                             TASK_DOCUMENT_MAX_BYTES if "base64_string" not in ms else
                             BASE64_MAX["document"], fetch_max=TASK_FETCH_MAX_BYTES)
        if source.data.startswith(b"%PDF"):
            # Emulator choice: no PDF renderer here; txt/md documents are embedded.
            raise bad(invalid_message("document.media_source", "PDF documents are not "
                                      "supported by the emulator; send a .txt or .md document."))
        text = document_text(source.data, "document.media_source")
        options = fields.enum_list(c.obj, "embedding_option", "document.embedding_option",
                                   ("visual", "text"), ("text",))
        if options != ["text"]:
            raise bad(invalid_message("document.embedding_option", "A plain text or Markdown "
                                      "document accepts only `text`."))
        fields.enum_list(c.obj, "embedding_type", "document.embedding_type", ("separate_embedding",),
                         ("separate_embedding",))
        scopes = fields.enum_list(c.obj, "embedding_scope", "document.embedding_scope",
                                  ("local", "asset"), ("asset",))
        if c.uncertainty and scopes != ["local"]:
            raise bad(invalid_message("embedding_uncertainty", "For a plain text or Markdown "
                                      "document, `document.embedding_scope` must be [\"local\"]."))
        seg = fields.obj(c.obj, "segmentation", "document.segmentation")
        max_sentences = overlap = 0
        if seg is not None:
            fields.known(seg, ("spatial", "sequential"), "document.segmentation")
            if seg.get("spatial") is not None:
                raise bad(invalid_message("document.segmentation.spatial", "A plain text or "
                                          "Markdown document has no pages."))
        if "local" in scopes:
            sequential = fields.obj(seg or {}, "sequential", "document.segmentation.sequential",
                                    required=True)
            spath = "document.segmentation.sequential"
            fields.known(sequential, ("strategy", "max_sentences", "overlap_sentences"), spath)
            fields.enum(sequential.get("strategy"), f"{spath}.strategy", ("sentence",))
            max_sentences = fields.int_in(sequential, "max_sentences", f"{spath}.max_sentences", 1,
                                          2147483647)
            if sequential.get("overlap_sentences") is not None:  # must be < max_sentences
                overlap = fields.int_in(sequential, "overlap_sentences", f"{spath}.overlap_sentences",
                                        0, max_sentences - 1)
        elif seg is not None and seg.get("sequential") is not None:
            raise bad(invalid_message("document.segmentation.sequential", "It requires `local` "
                                      "in `document.embedding_scope`."))
        model, dims, uncertainty = c.model, c.dims, c.uncertainty

        def work():
            entries = []
            if "local" in scopes:
                sentences = [s.strip() for s in _SENTENCE_RE.findall(text) if s.strip()]
                step = max(1, max_sentences - overlap)
                for index, first in enumerate(range(0, max(1, len(sentences) - overlap), step)):
                    chunk = " ".join(sentences[first:first + max_sentences])
                    if count_tokens(chunk) > TEXT_TOKEN_LIMITS[M35]:
                        raise TaskFailure(f"Chunk {index} ({count_tokens(chunk)} tokens) exceeds "
                                          f"the model context window of "
                                          f"{TEXT_TOKEN_LIMITS[M35]} tokens.")
                    entries.append(data_entry(vectors.v2_text(chunk, model), dims, uncertainty, model,
                                              option="text", scope="chunk", chunk_index=index))
            if "asset" in scopes:
                whole = truncate_text(text, TEXT_TOKEN_LIMITS[M35], "end")
                entries.append(data_entry(vectors.v2_text(whole, model), dims, uncertainty, model,
                                          option="text", scope="asset"))
            return entries, {"input_tokens": {"document": count_tokens(text)}, "truncated": False}

        metadata = {"input_type": "document", **source.metadata(), "embedding_options": options,
                    "embedding_scopes": scopes, "embedding_dimension": c.dims}
        listed = {**source.metadata(), "document_embedding_option": options,
                  "document_embedding_scope": scopes}
        return self._created(work, metadata, listed, v2_key(c.model, "document", source.data))
