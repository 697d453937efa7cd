"""Audio and video inputs of v2: their request fields, segments, decoding and data entries."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import soundfile

from .. import media, rules, vectors, video
from ..rules import invalid_message
from . import fields
from .errors import bad
from .sources import Source, head_of, load_audio, probe_video
from .spec import (AUDIO_TOKENS_PER_SEC, AV_OPTIONS, DYNAMIC_RANGE, EMBEDDING_TYPES, FIXED_RANGE, M35,
                   VIDEO_TOKENS_PER_SEC)


# Inline bytes, or the path of an asset's file (Source.media).
Media = Union[bytes, str]


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
        fields.known(seg, ("temporal",), seg_path)
        seg, seg_path = seg["temporal"], f"{seg_path}.temporal"
        if not isinstance(seg, dict):
            raise bad(invalid_message(seg_path, "It must be an object."))
        strategies = ("fixed", "dynamic")
    else:
        if "temporal" in seg:
            raise bad(invalid_message(seg_path, "The `temporal` object requires marengo3.5; "
                                      "with marengo3.0, set `strategy` directly."))
        strategies = ("fixed", "dynamic") if kind == "video" else ("fixed",)
    strategy = fields.enum(seg.get("strategy"), f"{seg_path}.strategy", strategies)
    fields.known(seg, ("strategy", strategy), seg_path)
    settings = seg.get(strategy)
    sub_path = f"{seg_path}.{strategy}"
    if not isinstance(settings, dict):
        raise bad(rules.not_provided_message(sub_path), "parameter_not_provided")
    if strategy == "fixed":
        fields.known(settings, ("duration_sec",), sub_path)
        return "fixed", fields.int_in(settings, "duration_sec", f"{sub_path}.duration_sec", *FIXED_RANGE)
    fields.known(settings, ("min_duration_sec",), sub_path)
    return "dynamic", fields.int_in(settings, "min_duration_sec", f"{sub_path}.min_duration_sec",
                                    *DYNAMIC_RANGE)


def parse_av(obj: dict, path: str, kind: str, model: str, task: bool,
             uncertainty: bool) -> AVSpec:
    allowed = ["media_source", "start_sec", "end_sec", "segmentation", "embedding_option",
               "embedding_scope", "embedding_type"]
    if task:
        allowed.append("time_based_metadata")
    fields.known(obj, allowed, path)
    fields.obj(obj, "media_source", f"{path}.media_source", required=True)
    start = fields.number(obj, "start_sec", f"{path}.start_sec")
    end = fields.number(obj, "end_sec", f"{path}.end_sec")
    if start is not None and start < 0:
        raise bad(invalid_message(f"{path}.start_sec", "It must be greater than or equal to 0."))
    if end is not None and end <= (start or 0.0):
        raise bad(invalid_message(f"{path}.end_sec", "It must be greater than `start_sec`."))
    strategy, seconds = _segmentation(obj, path, kind, model, task)
    options_allowed = AV_OPTIONS[kind]
    if model == M35:  # transcription is 3.0 only
        options_allowed = tuple(o for o in options_allowed if o != "transcription")
    options = fields.enum_list(obj, "embedding_option", f"{path}.embedding_option", options_allowed,
                               options_allowed)
    scopes = fields.enum_list(obj, "embedding_scope", f"{path}.embedding_scope",
                              ("clip", "local", "asset") if task else ("clip", "asset"),
                              ("clip", "asset"))
    types = fields.enum_list(obj, "embedding_type", f"{path}.embedding_type", EMBEDDING_TYPES,
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
            fields.known(entry, ("start", "end", "text"), entry_path)
            s = fields.number(entry, "start", f"{entry_path}.start")
            e = fields.number(entry, "end", f"{entry_path}.end")
            text = fields.text(entry, "text", f"{entry_path}.text", required=True)
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


def media_span(spec: AVSpec, duration: float, path: str) -> Tuple[float, float]:
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
        entries.append(data_entry(vec, dims, uncertainty, model, option=option, scope=scope,
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


def data_entry(vec: np.ndarray, dims: int, uncertainty: bool, model: str, option=None, scope=None,
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


def measure_av(data: Media, path: str, kind: str, model: str,
               metadata_only: bool = False) -> Tuple[float, Any]:
    """(duration, probe result): the metadata and playability checks, on the bytes or on an
    asset's file (Source.media). With metadata_only (task creation), audio is not decoded: its
    header gives the duration and a first block of samples shows it plays; the probe result is
    then None and decode_av decodes later."""
    if kind == "video":
        info = probe_video(data, path, model)
        return info.duration, info
    if not metadata_only:
        samples, rate = load_audio(data, path)
        return samples.size / rate, (samples, rate)
    if media.sniff_audio(head_of(data)) is None:
        raise bad(invalid_message(path, "The audio must be in WAV, MP3 or FLAC format."))
    try:
        target = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
        with soundfile.SoundFile(target) as f:
            frames, rate = f.frames, f.samplerate
            first = f.read(1024, dtype="float32")
    except Exception:
        raise bad(invalid_message(path, "The audio could not be decoded."))
    if frames <= 0 or len(first) == 0:
        raise bad(invalid_message(path, "The audio contains no samples."))
    return frames / rate, None


def decode_av(data: Media, kind: str, probed: Any, duration: float, span: Tuple[float, float],
              want_audio: bool = True) -> AVContent:
    """Decode the span of the bytes or of an asset's file (opened by path, never read whole:
    only the decoded content, 2 small frames and 16000 mono samples per second, is kept)."""
    if kind == "video":
        try:
            decoded = video.decode(data, span[0], span[1], audio=want_audio)
        except OSError as exc:  # the asset's file went away (deleted) before it was opened
            raise video.VideoError(f"the file could not be read ({exc.__class__.__name__})")
        return AVContent(duration=duration, span=span, decoded=decoded)
    if probed is None:
        try:
            probed = media.decode_audio(data)
        except Exception as exc:
            raise video.VideoError(f"the audio does not decode ({exc.__class__.__name__})")
    samples, rate = probed
    return AVContent(duration=duration, span=span, samples=samples, rate=rate)


def wants_audio(spec: "AVSpec") -> bool:
    return any(option != "visual" for option in spec.options)
