"""Typed results of `POST /embed`, mirroring the official SDK's models and tolerating unknown fields."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from embed_client.secrets import scrub

__all__ = [
    "AudioEmbeddingResult",
    "AudioSegment",
    "BaseEmbeddingMetadata",
    "BaseSegment",
    "CreateEmbeddingsResult",
    "ImageEmbeddingResult",
    "TextEmbeddingResult",
]


class _Malformed(ValueError):
    """A 200 body whose shape is not the documented one."""


def _opt_float(value: Any, where: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(f"{where} is not a number")
    return float(value)


def _extras(obj: Dict[str, Any], known: tuple) -> Dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in known}


@dataclasses.dataclass
class BaseSegment:
    float_: Optional[List[float]] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    _KNOWN = ("float",)

    @classmethod
    def _parse(cls, obj: Any, where: str) -> "BaseSegment":
        if not isinstance(obj, dict):
            raise _Malformed(f"{where} is not an object")
        vector = obj.get("float")
        if vector is not None:
            if not isinstance(vector, list):
                raise _Malformed(f"{where}.float is not a list of numbers")
            try:
                # sum() walks the list in C and fails on strings, None and nested lists: a fast type check.
                total = sum(vector)
            except TypeError:
                raise _Malformed(f"{where}.float is not a list of numbers") from None
            if total != total and any(x != x for x in vector):
                raise _Malformed(f"{where}.float holds NaN")
        return cls(float_=vector, extra=_extras(obj, cls._KNOWN))


@dataclasses.dataclass
class AudioSegment(BaseSegment):
    start_offset_sec: Optional[float] = None
    end_offset_sec: Optional[float] = None

    _KNOWN = ("float", "start_offset_sec", "end_offset_sec")

    @classmethod
    def _parse(cls, obj: Any, where: str) -> "AudioSegment":
        base = BaseSegment._parse(obj, where)
        return cls(
            float_=base.float_,
            start_offset_sec=_opt_float(obj.get("start_offset_sec"), f"{where}.start_offset_sec"),
            end_offset_sec=_opt_float(obj.get("end_offset_sec"), f"{where}.end_offset_sec"),
            extra=_extras(obj, cls._KNOWN),
        )


@dataclasses.dataclass
class BaseEmbeddingMetadata:
    input_url: Optional[str] = None
    input_filename: Optional[str] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def _parse(cls, obj: Any, where: str) -> Optional["BaseEmbeddingMetadata"]:
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise _Malformed(f"{where} is not an object")
        return cls(
            input_url=obj.get("input_url"),
            input_filename=obj.get("input_filename"),
            extra=_extras(obj, ("input_url", "input_filename")),
        )


@dataclasses.dataclass
class TextEmbeddingResult:
    segments: Optional[List[BaseSegment]] = None
    error_message: Optional[str] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    _SEGMENT = BaseSegment
    _KNOWN = ("segments", "error_message")

    @classmethod
    def _parse(cls, obj: Any, where: str):
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise _Malformed(f"{where} is not an object")
        raw_segments = obj.get("segments")
        segments = None
        if raw_segments is not None:
            if not isinstance(raw_segments, list):
                raise _Malformed(f"{where}.segments is not a list")
            segments = [
                cls._SEGMENT._parse(s, f"{where}.segments[{i}]") for i, s in enumerate(raw_segments)
            ]
        error = obj.get("error_message")
        kwargs = dict(segments=segments, error_message=None if error is None else scrub(str(error)))
        if "metadata" in cls._KNOWN:
            kwargs["metadata"] = BaseEmbeddingMetadata._parse(obj.get("metadata"), f"{where}.metadata")
        return cls(extra=_extras(obj, cls._KNOWN), **kwargs)


@dataclasses.dataclass
class ImageEmbeddingResult(TextEmbeddingResult):
    metadata: Optional[BaseEmbeddingMetadata] = None

    _KNOWN = ("segments", "error_message", "metadata")


@dataclasses.dataclass
class AudioEmbeddingResult(TextEmbeddingResult):
    segments: Optional[List[AudioSegment]] = None
    metadata: Optional[BaseEmbeddingMetadata] = None

    _SEGMENT = AudioSegment
    _KNOWN = ("segments", "error_message", "metadata")


@dataclasses.dataclass
class CreateEmbeddingsResult:
    model_name: str
    text_embedding: Optional[TextEmbeddingResult] = None
    image_embedding: Optional[ImageEmbeddingResult] = None
    audio_embedding: Optional[AudioEmbeddingResult] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    # The response's rate-limit headers (an errors.RateLimitInfo), for pacing.
    rate_limit: Any = dataclasses.field(default=None, repr=False, compare=False)

    _KNOWN = ("model_name", "text_embedding", "image_embedding", "audio_embedding")

    @classmethod
    def from_json(cls, obj: Any) -> "CreateEmbeddingsResult":
        """Parses a 200 body; raises ValueError when it is not the documented shape."""
        if not isinstance(obj, dict):
            raise _Malformed("body is not a JSON object")
        model_name = obj.get("model_name")
        if not isinstance(model_name, str):
            raise _Malformed("model_name is missing")
        return cls(
            model_name=model_name,
            text_embedding=TextEmbeddingResult._parse(obj.get("text_embedding"), "text_embedding"),
            image_embedding=ImageEmbeddingResult._parse(obj.get("image_embedding"), "image_embedding"),
            audio_embedding=AudioEmbeddingResult._parse(obj.get("audio_embedding"), "audio_embedding"),
            extra=_extras(obj, cls._KNOWN),
        )
