"""The v1 service: POST /v1.3/embed behind the gate (gate.py), its form validation and per-modality embedding."""
from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, List, Optional, Tuple

from . import forms, media, rules, vectors
from .config import EmulatorConfig
from .faults import FaultInjector
from .categories import CategoryLimiter
from .gate import Gate
from .limits import RateLimiter
from .reply import Reply, json_reply
from .rules import ApiError, MediaError
from .stats import Stats, item_key

logger = logging.getLogger(__name__)

__all__ = ["Reply", "json_reply", "EmbedService"]


class EmbedService:
    """Every v1 call: admission (see gate.py), then request validation (400) and per-modality
    processing."""

    def __init__(self, get_config: Callable[[], EmulatorConfig], stats: Stats,
                 limiter: RateLimiter, faults: FaultInjector, stopping: Callable[[], threading.Event],
                 categories: Optional[CategoryLimiter] = None):
        self._stats = stats
        self._faults = faults
        self._categories = categories
        self._gate = Gate(get_config, stats, limiter, faults, stopping,
                          nested_errors=False, dimension_header=False, categories=categories)

    def handle(self, api_key: Optional[str], content_type: Optional[str], body: bytes) -> Reply:
        # The form is read once, before admission, so the call's categories (its modalities) are known;
        # an unreadable form touches none and gets its 400 from the answer.
        try:
            request: object = forms.build_request(forms.parse_multipart(content_type, body))
            categories = tuple(request.modalities())
        except ApiError as exc:
            request, categories = exc, ()
        return self._gate.handle(api_key, lambda config: self._answer(config, request), categories)

    def _answer(self, config: EmulatorConfig, request) -> Reply:
        try:
            if isinstance(request, ApiError):
                raise request
            return self._process(config, request)
        except ApiError as exc:
            return json_reply(exc.status, exc.body())

    # ---- normal processing ------------------------------------------------------------

    def _process(self, config: EmulatorConfig, request: forms.EmbedRequest) -> Reply:
        results: Dict[str, dict] = {}
        embedded: List[str] = []
        keys: List[str] = []
        first_error: Optional[str] = None
        injected = 0
        for modality in request.modalities():
            source = getattr(request, modality) if modality != "text" else None
            error_shape = {"metadata": source.metadata()} if source is not None else {}
            if self._faults.modality_fails(config):
                injected += 1
                results[f"{modality}_embedding"] = {
                    "error_message": f"Failed to create the {modality} embedding "
                                     "(injected fault). Please try again.", **error_shape}
                continue
            try:
                result, key = self._embed_one(config, request, modality)
            except MediaError as exc:
                first_error = first_error or str(exc)
                results[f"{modality}_embedding"] = {"error_message": str(exc), **error_shape}
                continue
            results[f"{modality}_embedding"] = result
            embedded.append(modality)
            keys.append(key)
        if injected:
            self._stats.fault("modality_error", injected)
        # Emulator choice: when no modality succeeds because of its input, the call is a 400
        # with the first failure; injected faults alone still give a 200 with error_messages.
        if not embedded and first_error is not None:
            raise rules.bad_request(first_error)
        if embedded:
            self._stats.embedded(embedded, keys if config.record_keys else [])
        return json_reply(200, {"model_name": request.model_name, **results})

    def _embed_one(self, config: EmulatorConfig, request: forms.EmbedRequest,
                   modality: str) -> Tuple[dict, str]:
        """One modality's result object and its content key; MediaError on bad input."""
        if modality == "text":
            vector = vectors.text_vector(request.text, request.model)
            return ({"segments": [{"float": vector}]},
                    item_key(request.model_name, "text", request.text))
        source: forms.MediaSource = getattr(request, modality)
        limit = rules.IMAGE_MAX_BYTES if modality == "image" else rules.AUDIO_MAX_BYTES[request.model]
        data = source.data if source.url is None else media.fetch_url(
            source.url, source.field, config.fetch_timeout_sec, limit)
        if modality == "image":
            image = media.load_image(data, source.field)
            return ({"segments": [{"float": vectors.image_vector_from_image(image, request.model)}],
                     "metadata": source.metadata()},
                    item_key(request.model_name, "image", data))

        samples, sample_rate = media.load_audio(data, source.field, request.model)
        duration = samples.size / sample_rate
        if self._categories is not None:
            self._categories.add_media("audio", duration, config.day_length_sec)
        offset = request.audio_offset_sec
        if offset >= duration:
            raise MediaError(rules.invalid_message(
                "audio_start_offset_sec",
                f"The offset ({offset:g} s) must be less than the audio duration ({duration:.3f} s)."))
        segments = vectors.audio_segment_vectors_from_samples(
            samples, sample_rate, request.model, offset, config.audio_segment_sec,
            config.max_audio_sec_30)
        return ({"segments": [{"float": v, "start_offset_sec": s, "end_offset_sec": e}
                              for s, e, v in segments],
                 "metadata": source.metadata()},
                item_key(request.model_name, "audio", data, offset))
