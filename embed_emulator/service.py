"""One POST /v1.3/embed call, start to finish, independent of the HTTP plumbing.

Order: auth (401), 429 burst fault, rate limits (429), other faults, request validation
(400), then per-modality processing. The answer is a Reply the HTTP layer acts on.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from . import forms, media, rules, vectors
from .config import EmulatorConfig
from .faults import HTML_5XX, INTERNAL_ERROR_BODY, MALFORMED_BODIES, FaultInjector
from .limits import RateLimiter, iso_utc
from .reply import Reply, json_reply
from .rules import ApiError, MediaError
from .stats import Stats, item_key

logger = logging.getLogger(__name__)

__all__ = ["Reply", "json_reply", "EmbedService"]


class EmbedService:
    def __init__(self, get_config: Callable[[], EmulatorConfig], stats: Stats,
                 limiter: RateLimiter, faults: FaultInjector, stopping: Callable[[], threading.Event]):
        self._config = get_config
        self._stats = stats
        self._limiter = limiter
        self._faults = faults
        self._stopping = stopping

    def handle(self, api_key: Optional[str], content_type: Optional[str], body: bytes) -> Reply:
        reply = self._handle(self._config(), api_key, content_type, body)
        if reply.action == "respond":
            self._stats.status(reply.status)
        return reply

    def _handle(self, config: EmulatorConfig, api_key, content_type, body) -> Reply:
        if not api_key or (config.api_keys is not None and api_key not in config.api_keys):
            return json_reply(401, {"code": "api_key_invalid",
                                    "message": rules.api_key_message(missing=not api_key)})
        fault = self._faults.request_fault(config)
        if fault is not None and fault.kind == "429_burst":
            self._stats.fault("429_burst")
            return self._burst_reply(fault.retry_after_sec)
        admission, refusal = self._limiter.admit(config.requests_per_minute,
                                                 config.requests_per_day, config.day_length_sec)
        if refusal is not None:
            self._stats.rate_limited()
            return json_reply(429, {"code": "too_many_requests", "message": refusal.message},
                              refusal.headers)

        if fault is not None:
            self._stats.fault(fault.kind)
            if fault.kind in ("drop", "hang", "5xx"):
                self._limiter.release(admission)  # only 2xx/4xx answers count
            if fault.kind == "drop":
                return Reply(action="drop")
            if fault.kind == "hang":
                return Reply(action="hang", hang_sec=config.fault_hang_sec)
            if fault.kind == "5xx":
                reply = (json_reply(500, INTERNAL_ERROR_BODY) if fault.status == 500 else
                         Reply(status=fault.status, body=HTML_5XX[fault.status],
                               content_type="text/html"))
            else:  # malformed: a 200 that claims JSON but is not
                reply = Reply(status=200, body=MALFORMED_BODIES[fault.body_index],
                              headers=dict(admission.headers))
        else:
            try:
                reply = self._process(config, content_type, body)
            except ApiError as exc:
                reply = json_reply(exc.status, exc.body())
            reply.headers.update(admission.headers)
        self._sleep(self._faults.latency_sec(config))
        return reply

    def _burst_reply(self, retry_after: int) -> Reply:
        message = rules.rate_limit_message("temporary burst limit",
                                           iso_utc(time.time() + retry_after))
        return json_reply(429, {"code": "too_many_requests", "message": message},
                          {"Retry-After": str(retry_after)})

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping().wait(seconds)

    # ---- normal processing ------------------------------------------------------------

    def _process(self, config: EmulatorConfig, content_type, body: bytes) -> Reply:
        request = forms.build_request(forms.parse_multipart(content_type, body))
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
