"""Embed API v2: POST /v1.3/embed-v2 (sync), POST/GET /v1.3/embed-v2/tasks (async tasks) and
GET /v1.3/embed-v2/tasks/{id}, independent of the HTTP plumbing.

Facts come from /work/shared/reference/API-V2-FACTS.md; lines marked "emulator choice" are
behaviour the public docs leave open. Order of one call, as on v1: route (404/405), auth (401),
429 burst fault, request limits (429 rpm/rpd, shared with v1), other faults, validation (400),
media-minute limits (429 dph/dpd, only for calls that embed audio or video), media checks
(400/413), processing. Errors are nested, {"error": {"code", "message"}}, except the list
endpoint's 400, which the spec declares flat ({"code", "message"}).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile
from PIL import Image

from . import media, rules, vectors, video
from .config import EmulatorConfig
from .faults import HTML_5XX, MALFORMED_BODIES, FaultInjector
from .limits import MediaMinutesLimiter, RateLimiter, Refusal, iso_utc
from .rules import MB, MediaError, count_tokens, invalid_message, truncate_text
from .reply import Reply, json_reply
from .stats import Stats, v2_key
from .tasks import TaskFailure, TaskStore, rfc3339, total_pages

logger = logging.getLogger(__name__)

__all__ = ["V2Service", "V2_PATH", "TASKS_PATH", "V2Error", "MODELS"]

API_PREFIX = "/v1.3"
V2_PATH = API_PREFIX + "/embed-v2"
TASKS_PATH = V2_PATH + "/tasks"

MODELS = ("marengo3.0", "marengo3.5")
M30, M35 = MODELS
SYNC_INPUT_TYPES = ("text", "image", "text_image", "audio", "video", "multi_input")
TASK_INPUT_TYPES = ("audio", "video", "document", "image")
DIMENSIONS = (128, 256, 512)
FULL_DIMENSION = 512
TEXT_TOKEN_LIMITS = {M30: 500, M35: 2000}
MAX_MEDIA_SOURCES = 10

IMAGE_MAX_BYTES = 32 * MB            # 3.0 image; every 3.5 media source
AV_MAX_BYTES = 36 * MB               # 3.0 sync audio/video, decoded
BASE64_MAX = {"image": 32 * MB, "audio": 36 * MB, "video": 36 * MB, "document": 32 * MB}
TASK_FETCH_MAX_BYTES = 200 * MB      # emulator choice: a URL task reads at most this much
TASK_DOCUMENT_MAX_BYTES = 512 * MB
IMAGE_MIN_SIDE = 128
SYNC_MAX_SEC_35 = 30.0
TASK_MIN_SEC, TASK_MAX_SEC = 4.0, 4 * 3600.0
VIDEO_MIN_SIDE, VIDEO_MAX_LONG, VIDEO_MAX_SHORT, VIDEO_MAX_ASPECT = 360, 5184, 2160, 2.4
FIXED_RANGE, DYNAMIC_RANGE = (2, 10), (2, 5)

AV_OPTIONS = {"audio": ("audio", "transcription"), "video": ("visual", "audio", "transcription")}
EMBEDDING_TYPES = ("separate_embedding", "fused_embedding")

# usage.input_tokens (3.5 only). Emulator choice: the real per-modality rates are not published.
IMAGE_TOKENS = 258
AUDIO_TOKENS_PER_SEC = 25
VIDEO_TOKENS_PER_SEC = 258

LIST_DEFAULT_RANGE_SEC = 7 * 86400.0
PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX = 10, 50

_PLACEHOLDER_RE = re.compile(r"<@([^<>\s]+)>")
_SENTENCE_RE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


# ---- errors ---------------------------------------------------------------------------------

class V2Error(Exception):
    """An error answer: status, code, message (sent nested) and extra headers."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Optional[Dict[str, str]] = None, flat: bool = False):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.flat = flat

    def reply(self) -> Reply:
        body = {"code": self.code, "message": self.message}
        return json_reply(self.status, body if self.flat else {"error": body}, self.headers)


class _MediaRefused(Exception):
    """The media-minute limits are spent; carries the refusal."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal


def error_reply(status: int, code: str, message: str,
                headers: Optional[Dict[str, str]] = None) -> Reply:
    return V2Error(status, code, message, headers).reply()


def bad(message: str, code: str = "parameter_invalid") -> V2Error:
    return V2Error(400, code, message)


def too_large(message: str) -> V2Error:
    # Emulator choice: the code of a 413 is not documented.
    return V2Error(413, "content_too_large", message)


def _mb(n: int) -> str:
    return f"{n / MB:.1f} MB"


def size_message(size: int, limit: int, prefix: str = "") -> str:
    """In the style of the documented "File size (33.6 MB) exceeds maximum limit of 32 MB"."""
    return f"{prefix}File size ({_mb(size)}) exceeds maximum limit of {limit // MB} MB."


def duration_message(seconds: float, limit: float) -> str:
    """The documented wording: "Duration (35.0 seconds) exceeds maximum limit of 30 seconds
    (0 minutes)"."""
    return (f"Duration ({seconds:.1f} seconds) exceeds maximum limit of {limit:g} seconds "
            f"({int(limit // 60)} minutes).")


# ---- JSON field helpers ---------------------------------------------------------------------

def _obj(parent: dict, name: str, path: str, required: bool = False) -> Optional[dict]:
    value = parent.get(name)
    if value is None:
        if required:
            raise bad(rules.not_provided_message(path), "parameter_not_provided")
        return None
    if not isinstance(value, dict):
        raise bad(invalid_message(path, "It must be an object."))
    return value


def _known(obj: dict, allowed: Sequence[str], path: str) -> None:
    for name in obj:
        if name not in allowed:
            raise bad(rules.unknown_parameter_message(f"{path}.{name}" if path else name),
                      "parameter_unknown")


def _bool(obj: dict, name: str, path: str) -> bool:
    value = obj.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(invalid_message(path, "It must be a boolean."))
    return value


def _text(obj: dict, name: str, path: str, required: bool) -> Optional[str]:
    value = obj.get(name)
    if value is None:
        if required:
            raise bad(rules.not_provided_message(path), "parameter_not_provided")
        return None
    if not isinstance(value, str):
        raise bad(invalid_message(path, "It must be a string."))
    if not value.strip():
        raise bad(invalid_message(path, "It must not be empty."))
    return value


def _number(obj: dict, name: str, path: str) -> Optional[float]:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(invalid_message(path, "It must be a number."))
    return float(value)


def _int_in(obj: dict, name: str, path: str, low: int, high: int) -> int:
    value = obj.get(name)
    if value is None:
        raise bad(rules.not_provided_message(path), "parameter_not_provided")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad(invalid_message(path, f"It must be an integer between {low} and {high}."))
    return value


def _enum_list(obj: dict, name: str, path: str, allowed: Sequence[str],
               default: Sequence[str]) -> List[str]:
    value = obj.get(name)
    if value is None:
        return list(default)
    if not isinstance(value, list) or not value:
        raise bad(invalid_message(path, "It must be a non-empty array."))
    out: List[str] = []
    for item in value:
        if item not in allowed:
            raise bad(invalid_message(path, "You should use one of the following values: "
                                      + ", ".join(f"`{v}`" for v in allowed) + "."))
        if item not in out:  # emulator choice: a repeated value counts once
            out.append(item)
    return out


def _enum(value: Any, path: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise bad(invalid_message(path, "You should use one of the following values: "
                                  + ", ".join(f"`{v}`" for v in allowed) + "."))
    return value


# ---- media sources --------------------------------------------------------------------------

@dataclass
class Source:
    data: bytes
    url: Optional[str] = None
    filename: Optional[str] = None

    def metadata(self) -> dict:
        if self.url is not None:
            return {"input_url": self.url}
        return {"input_filename": self.filename} if self.filename else {}


def load_source(config: EmulatorConfig, ms: dict, path: str, kind: str, max_bytes: int,
                fetch_max: Optional[int] = None) -> Source:
    """The bytes of one media source (url, base64_string or asset_id), with the size checks
    that need no decoding: 413 for a measured overage."""
    given = [k for k in ("url", "base64_string", "asset_id") if ms.get(k) is not None]
    if len(given) != 1:
        raise bad(invalid_message(path, "Provide exactly one of `url`, `base64_string` or "
                                  "`asset_id`."))
    which = given[0]
    value = ms[which]
    field_path = f"{path}.{which}"
    if not isinstance(value, str) or not value.strip():
        raise bad(invalid_message(field_path, "It must be a non-empty string."))
    if which == "base64_string":
        limit = BASE64_MAX.get(kind, max_bytes)
        if len(value) > limit:
            raise too_large(f"The `{field_path}` is too large. Base64 string size "
                            f"({_mb(len(value))}) exceeds maximum limit of {limit // MB} MB.")
        try:
            data = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise bad(invalid_message(field_path, "It is not valid base64."))
        source = Source(data)
    elif which == "url":
        cap = max_bytes if fetch_max is None else fetch_max
        try:
            data = media.fetch_url(value, field_path, config.fetch_timeout_sec, cap)
        except MediaError as exc:
            raise bad(str(exc))
        if len(data) > cap:
            if fetch_max is not None:  # emulator limit, not the API's
                raise bad(invalid_message(field_path, f"The emulator reads at most "
                                          f"{cap // MB} MB from a URL."))
            raise too_large(f"The file at `{field_path}` is too large. File size (more than "
                            f"{max_bytes // MB} MB) exceeds maximum limit of {max_bytes // MB} MB.")
        source = Source(data, url=value)
    else:
        assets = config.assets or {}
        if value not in assets:
            raise bad(f"The asset `{value}` does not exist.", "resource_not_exist")
        try:
            with open(assets[value], "rb") as f:
                data = f.read()
        except OSError:
            raise bad(f"The asset `{value}` is not ready.", "resource_not_exist")
        source = Source(data, filename=os.path.basename(assets[value]))
    if not source.data:
        raise bad(invalid_message(field_path, "The file is empty."))
    if len(source.data) > max_bytes:
        raise too_large(size_message(len(source.data), max_bytes,
                                     f"The `{path}` is too large. "))
    return source


def load_image(data: bytes, path: str) -> Image.Image:
    if media.sniff_image(data) is None:
        raise bad(invalid_message(path, "The image must be in JPEG or PNG format."))
    try:
        width, height = Image.open(io.BytesIO(data)).size
    except Exception:
        raise bad(invalid_message(path, "The image could not be decoded."))
    if min(width, height) < IMAGE_MIN_SIDE:
        raise bad(invalid_message(
            path, f"The image must be at least {IMAGE_MIN_SIDE}x{IMAGE_MIN_SIDE} pixels."))
    try:
        return media.decode_image(data)
    except Exception:
        raise bad(invalid_message(path, "The image could not be decoded."))


def load_audio(data: bytes, path: str) -> Tuple[np.ndarray, int]:
    if media.sniff_audio(data) is None:
        raise bad(invalid_message(path, "The audio must be in WAV, MP3 or FLAC format."))
    try:
        samples, rate = media.decode_audio(data)
    except Exception:
        raise bad(invalid_message(path, "The audio could not be decoded."))
    if samples.size == 0:
        raise bad(invalid_message(path, "The audio contains no samples."))
    return samples, rate


def probe_video(data: bytes, path: str, model: str) -> video.VideoInfo:
    try:
        info = video.probe(data)
    except video.VideoError as exc:
        raise bad(invalid_message(path, f"The video could not be decoded: {exc}."))
    if model == M30:
        short, long_ = sorted((info.width, info.height))
        if short < VIDEO_MIN_SIDE or long_ > VIDEO_MAX_LONG or short > VIDEO_MAX_SHORT:
            raise bad(invalid_message(
                path, f"The video resolution ({info.width}x{info.height}) must be between "
                f"{VIDEO_MIN_SIDE}x{VIDEO_MIN_SIDE} and {VIDEO_MAX_LONG}x{VIDEO_MAX_SHORT}."))
        if long_ / short > VIDEO_MAX_ASPECT:
            raise bad(invalid_message(
                path, f"The video aspect ratio ({info.width}:{info.height}) must be between "
                f"1:{VIDEO_MAX_ASPECT} and {VIDEO_MAX_ASPECT}:1."))
    if info.duration <= 0:
        raise bad(invalid_message(path, "The video has no duration."))
    return info


# ---- audio/video requests -------------------------------------------------------------------

@dataclass
class AVSpec:
    kind: str                      # audio | video
    start: float
    end: Optional[float]
    strategy: str                  # fixed | dynamic
    seconds: int                   # window length (dynamic: min_duration_sec, see windows())
    options: List[str]
    scopes: List[str]              # as requested (clip / local / asset)
    types: List[str]
    time_based: List[dict] = field(default_factory=list)
    start_given: bool = False
    end_given: bool = False


def _segmentation(obj: dict, path: str, kind: str, model: str, task: bool) -> Tuple[str, int]:
    seg = obj.get("segmentation")
    if task and model == M35:
        default = ("dynamic", 2)
    else:
        default = ("dynamic", 4) if kind == "video" else ("fixed", 6)
    if seg is None:
        return default
    seg_path = f"{path}.segmentation"
    if not isinstance(seg, dict):
        raise bad(invalid_message(seg_path, "It must be an object."))
    if task and model == M35:
        if "temporal" not in seg:
            raise bad(invalid_message(seg_path, "With marengo3.5, put the settings in the "
                                      "`temporal` object."))
        _known(seg, ("temporal",), seg_path)
        seg, seg_path = seg["temporal"], f"{seg_path}.temporal"
        if not isinstance(seg, dict):
            raise bad(invalid_message(seg_path, "It must be an object."))
        strategies = ("fixed", "dynamic")
    else:
        if "temporal" in seg:
            raise bad(invalid_message(seg_path, "The `temporal` object requires marengo3.5; "
                                      "with marengo3.0, set `strategy` directly."))
        strategies = ("fixed", "dynamic") if kind == "video" else ("fixed",)
    strategy = _enum(seg.get("strategy"), f"{seg_path}.strategy", strategies)
    _known(seg, ("strategy", strategy), seg_path)
    settings = seg.get(strategy)
    sub_path = f"{seg_path}.{strategy}"
    if not isinstance(settings, dict):
        raise bad(rules.not_provided_message(sub_path), "parameter_not_provided")
    if strategy == "fixed":
        _known(settings, ("duration_sec",), sub_path)
        return "fixed", _int_in(settings, "duration_sec", f"{sub_path}.duration_sec", *FIXED_RANGE)
    _known(settings, ("min_duration_sec",), sub_path)
    return "dynamic", _int_in(settings, "min_duration_sec", f"{sub_path}.min_duration_sec",
                              *DYNAMIC_RANGE)


def parse_av(obj: dict, path: str, kind: str, model: str, task: bool,
             uncertainty: bool) -> AVSpec:
    allowed = ["media_source", "start_sec", "end_sec", "segmentation", "embedding_option",
               "embedding_scope", "embedding_type"]
    if task:
        allowed.append("time_based_metadata")
    _known(obj, allowed, path)
    _obj(obj, "media_source", f"{path}.media_source", required=True)
    start = _number(obj, "start_sec", f"{path}.start_sec")
    end = _number(obj, "end_sec", f"{path}.end_sec")
    if start is not None and start < 0:
        raise bad(invalid_message(f"{path}.start_sec", "It must be greater than or equal to 0."))
    if end is not None and end <= (start or 0.0):
        raise bad(invalid_message(f"{path}.end_sec", "It must be greater than `start_sec`."))
    strategy, seconds = _segmentation(obj, path, kind, model, task)
    options_allowed = AV_OPTIONS[kind]
    if model == M35:  # transcription is 3.0 only
        options_allowed = tuple(o for o in options_allowed if o != "transcription")
    options = _enum_list(obj, "embedding_option", f"{path}.embedding_option", options_allowed,
                         options_allowed)
    scopes = _enum_list(obj, "embedding_scope", f"{path}.embedding_scope",
                        ("clip", "local", "asset") if task else ("clip", "asset"),
                        ("clip", "asset"))
    types = _enum_list(obj, "embedding_type", f"{path}.embedding_type", EMBEDDING_TYPES,
                       ("separate_embedding",))
    if "fused_embedding" in types and len(options) < 2:
        raise bad(invalid_message(f"{path}.embedding_type", "`fused_embedding` requires at "
                                  "least two values in `embedding_option`."))
    time_based: List[dict] = []
    if obj.get("time_based_metadata") is not None:
        tbm_path = f"{path}.time_based_metadata"
        if model != M35:
            raise bad(invalid_message(tbm_path, "It requires marengo3.5."))
        if "fused_embedding" not in types:
            raise bad(invalid_message(tbm_path, "It requires `fused_embedding` in "
                                      "`embedding_type`."))
        entries = obj["time_based_metadata"]
        if not isinstance(entries, list):
            raise bad(invalid_message(tbm_path, "It must be an array."))
        for i, entry in enumerate(entries):
            entry_path = f"{tbm_path}[{i}]"
            if not isinstance(entry, dict):
                raise bad(invalid_message(entry_path, "It must be an object."))
            _known(entry, ("start", "end", "text"), entry_path)
            s = _number(entry, "start", f"{entry_path}.start")
            e = _number(entry, "end", f"{entry_path}.end")
            text = _text(entry, "text", f"{entry_path}.text", required=True)
            if s is None or e is None:
                raise bad(rules.not_provided_message(f"{entry_path}.start"),
                          "parameter_not_provided")
            if e < s:
                raise bad(invalid_message(f"{entry_path}.end", "It must not be before `start`."))
            time_based.append({"start": s, "end": e, "text": text})
    if task and model == M35 and "fused_embedding" in types and not time_based:
        raise bad(invalid_message(f"{path}.embedding_type", "With marengo3.5, "
                                  "`fused_embedding` requires `time_based_metadata`."))
    if uncertainty and "asset" in scopes:
        raise bad(invalid_message(f"{path}.embedding_scope", "With `embedding_uncertainty`, "
                                  "the scope must exclude `asset` (it defaults to "
                                  "[\"clip\", \"asset\"])."))
    return AVSpec(kind=kind, start=start or 0.0, end=end, strategy=strategy, seconds=seconds,
                  options=options, scopes=scopes, types=types, time_based=time_based,
                  start_given=start is not None, end_given=end is not None)


def windows(start: float, end: float, length: float) -> List[Tuple[float, float]]:
    """Fixed windows of `length` over [start, end), the last one shorter (a tail under 1 ms
    joins the one before). Dynamic segmentation uses the same windows of min_duration_sec:
    emulator choice, there is no scene detection (real segments follow scene changes and may
    be longer than the minimum)."""
    count = max(1, math.ceil((end - start - 1e-3) / length))
    return [(start + i * length, end if i == count - 1 else start + (i + 1) * length)
            for i in range(count)]


@dataclass
class AVContent:
    """Decoded audio/video, ready for vectors: frames (video only) and mono audio."""
    duration: float
    span: Tuple[float, float]
    decoded: Optional[video.Decoded] = None      # video
    samples: Optional[np.ndarray] = None         # audio file
    rate: int = 16000

    def audio(self, start: float, end: float) -> Tuple[np.ndarray, int]:
        if self.decoded is not None:
            return self.decoded.audio_between(start, end), video.AUDIO_RATE
        lo, hi = int(round(start * self.rate)), int(round(end * self.rate))
        return self.samples[lo:hi], self.rate


def _span(spec: AVSpec, duration: float, path: str) -> Tuple[float, float]:
    if spec.start >= duration:
        raise bad(invalid_message(f"{path}.start_sec", f"It ({spec.start:g} s) must be less "
                                  f"than the media duration ({duration:.3f} s)."))
    end = duration if spec.end is None else min(spec.end, duration)  # emulator choice: clamp
    return spec.start, end


def _option_vector(content: AVContent, option: str, start: float, end: float,
                   model: str) -> np.ndarray:
    if option == "visual":
        return vectors.v2_visual(content.decoded.frames_between(start, end), model)
    samples, rate = content.audio(start, end)
    if option == "audio":
        return vectors.v2_audio(samples, rate, model)
    return vectors.v2_transcription(samples, rate, model)


def av_entries(content: AVContent, spec: AVSpec, model: str, dims: int,
               uncertainty: bool) -> List[dict]:
    """The data entries of an audio/video input: per option, one per segment (clip/local
    scope) and one for the whole span (asset scope); fused entries when requested."""
    span_start, span_end = content.span
    bounds: List[Tuple[str, float, float]] = []
    if "clip" in spec.scopes or "local" in spec.scopes:
        bounds += [("clip", s, e) for s, e in windows(span_start, span_end, spec.seconds)]
    if "asset" in spec.scopes:
        bounds.append(("asset", span_start, span_end))
    entries: List[dict] = []
    cache: Dict[Tuple[str, float, float], np.ndarray] = {}

    def option_vector(option: str, s: float, e: float) -> np.ndarray:
        key = (option, s, e)
        if key not in cache:
            cache[key] = _option_vector(content, option, s, e, model)
        return cache[key]

    def add(vec: np.ndarray, option: str, scope: str, s: float, e: float) -> None:
        entries.append(_entry(vec, dims, uncertainty, model, option=option, scope=scope,
                              start=round(s, 6), end=round(e, 6)))

    if "separate_embedding" in spec.types:
        for option in spec.options:
            for scope, s, e in bounds:
                add(option_vector(option, s, e), option, scope, s, e)
    if "fused_embedding" in spec.types:
        for scope, s, e in bounds:
            parts = [option_vector(option, s, e) for option in spec.options]
            parts += [vectors.v2_text(entry["text"], model) for entry in spec.time_based
                      if entry["start"] < e and entry["end"] >= s]
            add(vectors.v2_combine(parts, model, "fused"), "fused", scope, s, e)
    return entries


def _entry(vec: np.ndarray, dims: int, uncertainty: bool, model: str, option=None, scope=None,
           start=None, end=None, **extra) -> dict:
    entry = {"embedding": vectors.prefix(vec, dims)}
    if uncertainty:
        entry["embedding_uncertainty"] = vectors.prefix(vectors.v2_uncertainty(vec, model), dims)
    entry.update({"embedding_option": option, "embedding_scope": scope, "start_sec": start,
                  "end_sec": end})
    entry.update(extra)
    return entry


def av_metadata(spec: AVSpec, source: Source, duration: float, span: Tuple[float, float],
                model: str, dims: Optional[int]) -> dict:
    meta = {"input_type": spec.kind, **source.metadata(), "embedding_options": spec.options,
            "embedding_scopes": spec.scopes, "duration": round(duration, 6),
            "start_offset_sec": round(span[0], 6), "end_offset_sec": round(span[1], 6)}
    if spec.kind == "video":
        meta["clip_length"] = spec.seconds
    if model == M35:
        meta["embedding_dimension"] = dims
    return meta


def av_usage(kind: str, seconds: float) -> dict:
    per_sec = VIDEO_TOKENS_PER_SEC if kind == "video" else AUDIO_TOKENS_PER_SEC
    return {"input_tokens": {kind: int(math.ceil(seconds)) * per_sec}, "truncated": False}


def measure_av(data: bytes, path: str, kind: str, model: str,
               metadata_only: bool = False) -> Tuple[float, Any]:
    """(duration, probe result): the metadata and playability checks. With metadata_only (task
    creation), audio is not decoded: its header gives the duration and a first block of
    samples shows it plays; the probe result is then None and decode_av decodes later."""
    if kind == "video":
        info = probe_video(data, path, model)
        return info.duration, info
    if not metadata_only:
        samples, rate = load_audio(data, path)
        return samples.size / rate, (samples, rate)
    if media.sniff_audio(data) is None:
        raise bad(invalid_message(path, "The audio must be in WAV, MP3 or FLAC format."))
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            frames, rate = f.frames, f.samplerate
            first = f.read(1024, dtype="float32")
    except Exception:
        raise bad(invalid_message(path, "The audio could not be decoded."))
    if frames <= 0 or len(first) == 0:
        raise bad(invalid_message(path, "The audio contains no samples."))
    return frames / rate, None


def decode_av(data: bytes, kind: str, probed: Any, duration: float, span: Tuple[float, float],
              want_audio: bool = True) -> AVContent:
    if kind == "video":
        decoded = video.decode(data, span[0], span[1], audio=want_audio)
        return AVContent(duration=duration, span=span, decoded=decoded)
    if probed is None:
        try:
            probed = media.decode_audio(data)
        except Exception as exc:
            raise video.VideoError(f"the audio does not decode ({exc.__class__.__name__})")
    samples, rate = probed
    return AVContent(duration=duration, span=span, samples=samples, rate=rate)


def _wants_audio(spec: "AVSpec") -> bool:
    return any(option != "visual" for option in spec.options)


# ---- the service ----------------------------------------------------------------------------

@dataclass
class _Outcome:
    """A successful v2 answer and what it counts."""
    status: int
    payload: dict
    input_type: str = ""
    key: Optional[str] = None
    media_sec: float = 0.0
    task_created: bool = False


class V2Service:
    def __init__(self, get_config: Callable[[], EmulatorConfig], stats: Stats,
                 limiter: RateLimiter, media_limiter: MediaMinutesLimiter, faults: FaultInjector,
                 tasks: TaskStore, stopping: Callable[[], threading.Event]):
        self._config = get_config
        self._stats = stats
        self._limiter = limiter
        self._media = media_limiter
        self._faults = faults
        self._tasks = tasks
        self._stopping = stopping

    # ---- routing ------------------------------------------------------------------------

    @staticmethod
    def route(method: str, path: str) -> Tuple[Optional[str], Optional[str], Optional[Reply]]:
        """(endpoint name, task id, None) or (None, None, a 404/405 reply)."""
        if path == V2_PATH:
            endpoints = {"POST": "embed"}
        elif path == TASKS_PATH:
            endpoints = {"POST": "create", "GET": "list"}
        elif path.startswith(TASKS_PATH + "/") and "/" not in path[len(TASKS_PATH) + 1:]:
            endpoints = {"GET": "retrieve"}
        else:
            return None, None, error_reply(404, "resource_not_exist",
                                           f"The requested resource `{path}` does not exist.")
        if method not in endpoints:
            allowed = ", ".join(sorted(endpoints))
            return None, None, error_reply(
                405, "method_not_allowed",  # code: emulator choice, none is documented
                f"The {method} method is not allowed on {path}; use {allowed}.",
                {"Allow": allowed})
        task_id = path[len(TASKS_PATH) + 1:] if endpoints.get("GET") == "retrieve" else None
        return endpoints[method], task_id, None

    def handle(self, endpoint: str, task_id: Optional[str], query: Dict[str, List[str]],
               api_key: Optional[str], body: bytes) -> Reply:
        config = self._config()
        reply = self._handle(config, endpoint, task_id, query, api_key, body)
        if reply.action == "respond":
            self._stats.status(reply.status)
        return reply

    def _handle(self, config: EmulatorConfig, endpoint: str, task_id: Optional[str],
                query: Dict[str, List[str]], api_key: Optional[str], body: bytes) -> Reply:
        if not api_key or (config.api_keys is not None and api_key not in config.api_keys):
            return error_reply(401, "api_key_invalid", rules.api_key_message(missing=not api_key))
        fault = self._faults.request_fault(config)
        if fault is not None and fault.kind == "429_burst":
            self._stats.fault("429_burst")
            message = rules.rate_limit_message("temporary burst limit",
                                               iso_utc(time.time() + fault.retry_after_sec))
            return error_reply(429, "too_many_requests", message,
                               {"Retry-After": str(fault.retry_after_sec),
                                "X-Ratelimit-Dimensions": "rpm"})
        admission, refusal = self._limiter.admit(config.requests_per_minute,
                                                 config.requests_per_day, config.day_length_sec)
        if refusal is not None:
            self._stats.rate_limited()
            return self._refusal_reply(refusal)
        if fault is not None:
            self._stats.fault(fault.kind)
            if fault.kind in ("drop", "hang", "5xx"):
                self._limiter.release(admission)  # only 2xx/4xx answers count
            if fault.kind == "drop":
                return Reply(action="drop")
            if fault.kind == "hang":
                return Reply(action="hang", hang_sec=config.fault_hang_sec)
            if fault.kind == "5xx":
                reply = (error_reply(500, "internal_error",
                                     "An internal error occurred. Please try again later.")
                         if fault.status == 500 else
                         Reply(status=fault.status, body=HTML_5XX[fault.status],
                               content_type="text/html"))
            else:
                reply = Reply(status=200, body=MALFORMED_BODIES[fault.body_index],
                              headers=dict(admission.headers))
        else:
            try:
                outcome = self._dispatch(config, endpoint, task_id, query, body)
                reply = json_reply(outcome.status, outcome.payload)
                self._count(config, outcome)
            except _MediaRefused as exc:
                self._limiter.release(admission)  # a refused request takes no slot
                self._stats.rate_limited()
                return self._refusal_reply(exc.refusal)
            except V2Error as exc:
                reply = exc.reply()
            reply.headers.update(admission.headers)
        self._sleep(self._faults.latency_sec(config))
        return reply

    @staticmethod
    def _refusal_reply(refusal: Refusal) -> Reply:
        headers = dict(refusal.headers)
        headers["X-Ratelimit-Dimensions"] = refusal.dimension or "rpm"
        return error_reply(429, "too_many_requests", refusal.message, headers)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping().wait(seconds)

    def _count(self, config: EmulatorConfig, outcome: _Outcome) -> None:
        if outcome.media_sec > 0:
            self._media.add(outcome.media_sec, config.day_length_sec)
            self._stats.media(outcome.media_sec)
        if outcome.task_created:
            self._stats.task("created", outcome.key if config.record_keys else None)
        elif outcome.input_type:
            self._stats.embedded([outcome.input_type],
                                 [outcome.key] if config.record_keys and outcome.key else [])

    def _media_gate(self, config: EmulatorConfig) -> None:
        refusal = self._media.check(config.media_minutes_per_hour, config.media_minutes_per_day,
                                    config.day_length_sec)
        if refusal is not None:
            raise _MediaRefused(refusal)

    def _dispatch(self, config, endpoint, task_id, query, body) -> _Outcome:
        if endpoint == "retrieve":
            self._stats.task("polled")
            return self._retrieve(config, task_id)
        if endpoint == "list":
            return self._list(config, query)
        request = _json_body(body)
        if endpoint == "embed":
            return SyncCall(self, config, request).run()
        return TaskCall(self, config, request).run()

    # ---- tasks: retrieve and list -------------------------------------------------------

    def _retrieve(self, config: EmulatorConfig, task_id: str) -> _Outcome:
        found = self._tasks.get(task_id, config.task_retention_sec)
        if found is None:
            raise V2Error(404, "resource_not_exist",
                          f"The embedding task `{task_id}` does not exist.")
        task, status = found
        payload = {"_id": task.id, "status": status, "created_at": rfc3339(task.created_at),
                   "updated_at": rfc3339(task.updated_at()),
                   "data": task.data if status == "ready" else None,
                   "metadata": task.metadata}
        if status == "ready" and task.usage is not None:
            payload["usage"] = task.usage
        if status == "failed":
            payload["error"] = {"message": task.error}
        return _Outcome(200, payload)

    def _list(self, config: EmulatorConfig, query: Dict[str, List[str]]) -> _Outcome:
        def one(name: str) -> Optional[str]:
            values = query.get(name)
            return values[-1] if values else None

        def flat_bad(message: str) -> V2Error:  # the spec declares this endpoint's 400 flat
            return V2Error(400, "parameter_invalid", message, flat=True)

        now = time.time()
        started = _parse_time(one("started_at"), "started_at", flat_bad)
        ended = _parse_time(one("ended_at"), "ended_at", flat_bad)
        if started is None:
            started = (ended if ended is not None else now) - LIST_DEFAULT_RANGE_SEC
        if ended is None:
            ended = max(now, started) + 1.0
        status = one("status")
        if status is not None and status not in ("processing", "ready", "failed"):
            raise flat_bad(invalid_message("status", "You should use one of the following "
                                           "values: `processing`, `ready`, `failed`."))
        page = _parse_int(one("page"), "page", 1, 1, None, flat_bad)
        limit = _parse_int(one("page_limit"), "page_limit", PAGE_LIMIT_DEFAULT, 1,
                           PAGE_LIMIT_MAX, flat_bad)
        rows, total = self._tasks.list(started_at=started, ended_at=ended, status=status,
                                       page=page, page_limit=limit,
                                       retention_sec=config.task_retention_sec)
        data = []
        for task, current in rows:
            data.append({"_id": task.id, "model_name": task.model_name, "status": current,
                         "created_at": rfc3339(task.created_at),
                         "updated_at": rfc3339(task.updated_at()),
                         f"{task.input_type}_embedding": {"metadata": task.list_metadata}})
        return _Outcome(200, {"data": data, "page_info": {
            "limit_per_page": limit, "page": page, "total_page": total_pages(total, limit),
            "total_results": total}})


def _json_body(body: bytes) -> dict:
    try:
        request = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        raise bad("The request body is not valid JSON.")
    if not isinstance(request, dict):
        raise bad("The request body must be a JSON object.")
    return request


def _parse_time(raw: Optional[str], name: str, error) -> Optional[float]:
    if raw is None or raw == "":
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise error(invalid_message(name, "It must be a date and time in the RFC 3339 format "
                                    "(YYYY-MM-DDTHH:mm:ssZ)."))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _parse_int(raw: Optional[str], name: str, default: int, low: int, high: Optional[int],
               error) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise error(invalid_message(name, f"It must be an integer {bound}."))
    return value


# ---- the top-level fields both POSTs share --------------------------------------------------

@dataclass
class _Common:
    model: str
    input_type: str
    dims: int
    uncertainty: bool
    auto_truncate: bool
    obj: dict


def _common(request: dict, input_types: Sequence[str], extra_fields: Sequence[str]) -> _Common:
    allowed = ("input_type", "model_name", "embedding_uncertainty", "embedding_dimension",
               *extra_fields, *input_types)
    model = request.get("model_name")
    if model is None:
        raise bad(rules.not_provided_message("model_name"), "parameter_not_provided")
    _enum(model, "model_name", MODELS)
    input_type = request.get("input_type")
    if input_type is None:
        raise bad(rules.not_provided_message("input_type"), "parameter_not_provided")
    _enum(input_type, "input_type", input_types)
    _known(request, allowed, "")
    dims = FULL_DIMENSION
    raw_dims = request.get("embedding_dimension")
    if raw_dims is not None:
        if model != M35:
            raise bad(invalid_message("embedding_dimension", "It requires marengo3.5."))
        # The spec declares a string enum; the SDK sends an int. Both are accepted.
        if isinstance(raw_dims, str) and raw_dims.strip().isdigit():
            raw_dims = int(raw_dims)
        if isinstance(raw_dims, bool) or raw_dims not in DIMENSIONS:
            raise bad(invalid_message("embedding_dimension", "You should use one of the "
                                      "following values: 128, 256, 512."))
        dims = int(raw_dims)
    uncertainty = _bool(request, "embedding_uncertainty", "embedding_uncertainty")
    auto_truncate = _bool(request, "auto_truncate", "auto_truncate")
    # Emulator choice: asking 3.0 for a 3.5-only feature is a 400, like embedding_dimension.
    if model == M30 and uncertainty:
        raise bad(invalid_message("embedding_uncertainty", "It requires marengo3.5."))
    if model == M30 and auto_truncate:
        raise bad(invalid_message("auto_truncate", "It requires marengo3.5."))
    for other in input_types:
        if other != input_type and request.get(other) is not None:
            raise bad(invalid_message(other, f"It is not allowed when `input_type` is "
                                      f"`{input_type}`."))
    obj = _obj(request, input_type, input_type, required=True)
    return _Common(model, input_type, dims, uncertainty, auto_truncate, obj)


def _text_tokens(text: str, path: str, model: str, auto_truncate: bool) -> Tuple[str, bool]:
    """(the text to embed, whether it was truncated)."""
    limit = TEXT_TOKEN_LIMITS[model]
    if count_tokens(text) <= limit:
        return text, False
    if model == M35 and auto_truncate:
        return truncate_text(text, limit, "end"), True
    reason = f"The text token length should be less than or equal to {limit}."
    if model == M35:
        reason += " Set `auto_truncate` to true to truncate it."
    raise bad(invalid_message(path, reason))


# ---- POST /embed-v2 ------------------------------------------------------------------------

class SyncCall:
    def __init__(self, service: V2Service, config: EmulatorConfig, request: dict):
        self.service, self.config, self.request = service, config, request

    def run(self) -> _Outcome:
        c = _common(self.request, SYNC_INPUT_TYPES, ("auto_truncate",))
        if c.model == M35 and c.input_type != "multi_input":
            raise bad(invalid_message("input_type", "Marengo 3.5 accepts only `multi_input` on "
                                      "this endpoint; use marengo3.0 for the other input types."))
        self.c = c
        return getattr(self, "_" + c.input_type)()

    def _result(self, data: List[dict], key: str, metadata: Optional[dict] = None,
                usage: Optional[dict] = None, media_sec: float = 0.0) -> _Outcome:
        payload: dict = {"data": data}
        if usage is not None:
            payload["usage"] = usage
        if metadata is not None:
            payload["metadata"] = metadata
        return _Outcome(200, payload, input_type=self.c.input_type, key=key, media_sec=media_sec)

    def _text(self) -> _Outcome:
        c = self.c
        _known(c.obj, ("input_text",), "text")
        text = _text(c.obj, "input_text", "text.input_text", required=True)
        text, _ = _text_tokens(text, "text.input_text", c.model, False)
        vec = vectors.v2_text(text, c.model)
        return self._result([_entry(vec, c.dims, False, c.model)], v2_key(c.model, "text", text))

    def _image(self) -> _Outcome:
        c = self.c
        _known(c.obj, ("media_source",), "image")
        ms = _obj(c.obj, "media_source", "image.media_source", required=True)
        source = load_source(self.config, ms, "image.media_source", "image", IMAGE_MAX_BYTES)
        image = load_image(source.data, "image.media_source")
        vec = vectors.v2_image(image, c.model)
        return self._result([_entry(vec, c.dims, False, c.model)],
                            v2_key(c.model, "image", source.data),
                            {"input_type": "image", **source.metadata()})

    def _text_image(self) -> _Outcome:
        c = self.c
        _known(c.obj, ("input_text", "media_source"), "text_image")
        text = _text(c.obj, "input_text", "text_image.input_text", required=True)
        text, _ = _text_tokens(text, "text_image.input_text", c.model, False)
        ms = _obj(c.obj, "media_source", "text_image.media_source", required=True)
        source = load_source(self.config, ms, "text_image.media_source", "image", IMAGE_MAX_BYTES)
        image = load_image(source.data, "text_image.media_source")
        vec = vectors.v2_combine([vectors.v2_text(text, c.model), vectors.v2_image(image, c.model)],
                                 c.model, "text_image")
        return self._result([_entry(vec, c.dims, False, c.model)],
                            v2_key(c.model, "text_image", text.encode() + b"\0" + source.data),
                            {"input_type": "text_image", **source.metadata()})

    def _audio(self) -> _Outcome:
        return self._av("audio")

    def _video(self) -> _Outcome:
        return self._av("video")

    def _av(self, kind: str) -> _Outcome:
        c = self.c
        spec = parse_av(c.obj, kind, kind, c.model, task=False, uncertainty=False)
        self.service._media_gate(self.config)
        path = f"{kind}.media_source"
        source = load_source(self.config, c.obj["media_source"], path, kind, AV_MAX_BYTES)
        duration, probed = measure_av(source.data, path, kind, c.model)
        # The limit applies to the file's duration, whatever start_sec/end_sec select
        # (emulator choice: the platform measures the file).
        if duration > self.config.max_sync_media_sec_30:
            raise too_large(duration_message(duration, self.config.max_sync_media_sec_30))
        span = _span(spec, duration, kind)
        try:
            content = decode_av(source.data, kind, probed, duration, span, _wants_audio(spec))
        except video.VideoError as exc:
            raise bad(invalid_message(path, f"The media could not be decoded: {exc}."))
        data = av_entries(content, spec, c.model, c.dims, False)
        key = v2_key(c.model, kind, source.data,
                     spec.start if spec.start_given else None, spec.end if spec.end_given else None)
        return self._result(data, key, av_metadata(spec, source, duration, span, c.model, None),
                            media_sec=span[1] - span[0])

    def _multi_input(self) -> _Outcome:
        c = self.c
        _known(c.obj, ("input_text", "media_sources"), "multi_input")
        text = _text(c.obj, "input_text", "multi_input.input_text", required=False)
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
            _known(ms, ("name", "media_type", "url", "base64_string", "asset_id"), path)
            if ms.get("media_type") is None:
                raise bad(rules.not_provided_message(f"{path}.media_type"),
                          "parameter_not_provided")
            if c.model == M30 and ms["media_type"] in ("video", "audio", "document"):
                raise bad(invalid_message(f"{path}.media_type", "Marengo 3.0 accepts only "
                                          "`image` media sources; use marengo3.5."))
            _enum(ms["media_type"], f"{path}.media_type", allowed_types)
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
            text, truncated = _text_tokens(text, "multi_input.input_text", c.model,
                                           c.auto_truncate)
        media_types = {ms["media_type"] for ms in sources}
        if len(media_types - {"document"}) > 1 and text is None:
            raise bad(invalid_message("multi_input.input_text", "Combining media sources of "
                                      "different types requires `input_text`."))
        if any(ms["media_type"] in ("audio", "video") for ms in sources):
            self.service._media_gate(self.config)

        parts: List[np.ndarray] = []
        key_parts: List[bytes] = []
        tokens: Dict[str, int] = {}
        media_sec = 0.0
        text_parts = 0
        has_pdf = False
        if text is not None:
            parts.append(vectors.v2_text(text, c.model))
            key_parts.append(text.encode())
            tokens["text"] = count_tokens(text)
            text_parts += 1
        for i, ms in enumerate(sources):
            path = f"multi_input.media_sources[{i}]"
            kind = ms["media_type"]
            max_bytes = IMAGE_MAX_BYTES  # 32 MB for every 3.5 source and 3.0 images
            source = load_source(self.config, ms, path, kind, max_bytes)
            key_parts.append(source.data)
            if kind == "image":
                parts.append(vectors.v2_image(load_image(source.data, path), c.model))
                tokens["image"] = tokens.get("image", 0) + IMAGE_TOKENS
            elif kind in ("audio", "video"):
                duration, probed = measure_av(source.data, path, kind, c.model)
                if duration > SYNC_MAX_SEC_35:
                    raise too_large(f"The `{path}` is too long. "
                                    + duration_message(duration, SYNC_MAX_SEC_35))
                try:
                    content = decode_av(source.data, kind, probed, duration, (0.0, duration))
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
                doc_text = _document_text(source.data, path)
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
        return self._result([_entry(vec, c.dims, c.uncertainty, c.model)],
                            v2_key(c.model, "multi_input", b"\0".join(key_parts)),
                            metadata, usage, media_sec)


def _document_text(data: bytes, path: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad(invalid_message(path, "The document must be a PDF, plain text or Markdown "
                                  "file (UTF-8)."))
    if not text.strip():
        raise bad(invalid_message(path, "The document has no content to embed."))
    return text


# ---- POST /embed-v2/tasks ------------------------------------------------------------------

class TaskCall:
    def __init__(self, service: V2Service, config: EmulatorConfig, request: dict):
        self.service, self.config, self.request = service, config, request

    def run(self) -> _Outcome:
        c = _common(self.request, TASK_INPUT_TYPES, ())
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
                 media_sec: float = 0.0) -> _Outcome:
        c, config = self.c, self.config
        task = self.service._tasks.create(
            model_name=c.model, input_type=c.input_type, metadata=metadata,
            list_metadata=list_metadata, key=key, work=work,
            ready_after_sec=config.task_ready_after_sec, failure_rate=config.task_failure_rate)
        payload = {"_id": task.id, "status": "processing", "data": None}
        if c.model == M35:
            payload["metadata"] = {"embedding_dimension": c.dims}
        return _Outcome(202, payload, input_type=c.input_type, key=key, media_sec=media_sec,
                        task_created=True)

    def _audio(self) -> _Outcome:
        return self._av("audio")

    def _video(self) -> _Outcome:
        return self._av("video")

    def _av(self, kind: str) -> _Outcome:
        c = self.c
        spec = parse_av(c.obj, kind, kind, c.model, task=True, uncertainty=c.uncertainty)
        self.service._media_gate(self.config)
        path = f"{kind}.media_source"
        source = load_source(self.config, c.obj["media_source"], path, kind,
                             AV_MAX_BYTES if "base64_string" in c.obj["media_source"] else
                             TASK_FETCH_MAX_BYTES, fetch_max=TASK_FETCH_MAX_BYTES)
        duration, probed = measure_av(source.data, path, kind, c.model, metadata_only=True)
        if duration < TASK_MIN_SEC or duration > TASK_MAX_SEC:
            raise bad(invalid_message(path, f"The duration ({duration:.1f} seconds) must be "
                                      f"between {TASK_MIN_SEC:g} seconds and "
                                      f"{TASK_MAX_SEC / 3600:g} hours."))
        span = _span(spec, duration, kind)
        model, dims, uncertainty, data = c.model, c.dims, c.uncertainty, source.data

        def work():
            try:
                content = decode_av(data, kind, probed, duration, span, _wants_audio(spec))
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
        key = v2_key(c.model, kind, source.data,
                     spec.start if spec.start_given else None, spec.end if spec.end_given else None)
        return self._created(work, metadata, listed, key, media_sec=span[1] - span[0])

    def _image(self) -> _Outcome:
        c = self.c
        _known(c.obj, ("media_source", "embedding_option", "embedding_type", "embedding_scope"),
               "image")
        _enum_list(c.obj, "embedding_option", "image.embedding_option", ("visual",), ("visual",))
        _enum_list(c.obj, "embedding_type", "image.embedding_type", ("separate_embedding",),
                   ("separate_embedding",))
        _enum_list(c.obj, "embedding_scope", "image.embedding_scope", ("asset",), ("asset",))
        ms = _obj(c.obj, "media_source", "image.media_source", required=True)
        source = load_source(self.config, ms, "image.media_source", "image", IMAGE_MAX_BYTES)
        image = load_image(source.data, "image.media_source")
        model, dims, uncertainty = c.model, c.dims, c.uncertainty

        def work():
            vec = vectors.v2_image(image, model)
            return ([_entry(vec, dims, uncertainty, model, option="visual", scope="asset")],
                    {"input_tokens": {"image": IMAGE_TOKENS}, "truncated": False})

        metadata = {"input_type": "image", **source.metadata(), "embedding_options": ["visual"],
                    "embedding_scopes": ["asset"], "embedding_dimension": c.dims}
        listed = {**source.metadata(), "image_embedding_option": ["visual"],
                  "image_embedding_scope": ["asset"]}
        return self._created(work, metadata, listed, v2_key(c.model, "image", source.data))

    def _document(self) -> _Outcome:
        c = self.c
        _known(c.obj, ("media_source", "segmentation", "embedding_option", "embedding_type",
                       "embedding_scope"), "document")
        ms = _obj(c.obj, "media_source", "document.media_source", required=True)
        source = load_source(self.config, ms, "document.media_source", "document",
                             TASK_DOCUMENT_MAX_BYTES if "base64_string" not in ms else
                             BASE64_MAX["document"], fetch_max=TASK_FETCH_MAX_BYTES)
        if source.data.startswith(b"%PDF"):
            # Emulator choice: no PDF renderer here; txt/md documents are embedded.
            raise bad(invalid_message("document.media_source", "PDF documents are not "
                                      "supported by the emulator; send a .txt or .md document."))
        text = _document_text(source.data, "document.media_source")
        options = _enum_list(c.obj, "embedding_option", "document.embedding_option",
                             ("visual", "text"), ("text",))
        if options != ["text"]:
            raise bad(invalid_message("document.embedding_option", "A plain text or Markdown "
                                      "document accepts only `text`."))
        _enum_list(c.obj, "embedding_type", "document.embedding_type", ("separate_embedding",),
                   ("separate_embedding",))
        scopes = _enum_list(c.obj, "embedding_scope", "document.embedding_scope",
                            ("local", "asset"), ("asset",))
        if c.uncertainty and scopes != ["local"]:
            raise bad(invalid_message("embedding_uncertainty", "For a plain text or Markdown "
                                      "document, `document.embedding_scope` must be [\"local\"]."))
        seg = _obj(c.obj, "segmentation", "document.segmentation")
        max_sentences = overlap = 0
        if seg is not None:
            _known(seg, ("spatial", "sequential"), "document.segmentation")
            if seg.get("spatial") is not None:
                raise bad(invalid_message("document.segmentation.spatial", "A plain text or "
                                          "Markdown document has no pages."))
        if "local" in scopes:
            sequential = _obj(seg or {}, "sequential", "document.segmentation.sequential",
                              required=True)
            spath = "document.segmentation.sequential"
            _known(sequential, ("strategy", "max_sentences", "overlap_sentences"), spath)
            _enum(sequential.get("strategy"), f"{spath}.strategy", ("sentence",))
            max_sentences = _int_in(sequential, "max_sentences", f"{spath}.max_sentences", 1,
                                    2147483647)
            if sequential.get("overlap_sentences") is not None:  # must be < max_sentences
                overlap = _int_in(sequential, "overlap_sentences", f"{spath}.overlap_sentences",
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
                    entries.append(_entry(vectors.v2_text(chunk, model), dims, uncertainty, model,
                                          option="text", scope="chunk", chunk_index=index))
            if "asset" in scopes:
                whole = truncate_text(text, TEXT_TOKEN_LIMITS[M35], "end")
                entries.append(_entry(vectors.v2_text(whole, model), dims, uncertainty, model,
                                      option="text", scope="asset"))
            return entries, {"input_tokens": {"document": count_tokens(text)}, "truncated": False}

        metadata = {"input_type": "document", **source.metadata(), "embedding_options": options,
                    "embedding_scopes": scopes, "embedding_dimension": c.dims}
        listed = {**source.metadata(), "document_embedding_option": options,
                  "document_embedding_scope": scopes}
        return self._created(work, metadata, listed, v2_key(c.model, "document", source.data))
