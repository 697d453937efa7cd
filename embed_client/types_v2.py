"""Typed results of the Embed API v2 (`/embed-v2`, `/embed-v2/tasks`), mirroring SDK 1.3.6's models.

Parsers accept unknown fields (kept in `extra`) and raise ValueError when a body is not the
documented shape; the client turns that into `errors.MalformedResponseError`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from embed_client.secrets import scrub

__all__ = [
    "EmbeddingData",
    "EmbeddingTask",
    "EmbeddingsV2Result",
    "MediaEmbeddingTask",
    "TaskCreated",
    "UsageV2",
]


class _Malformed(ValueError):
    """A 2xx body whose shape is not the documented one."""


def _object(obj: Any, where: str) -> Dict[str, Any]:
    if not isinstance(obj, dict):
        raise _Malformed(f"{where} is not an object")
    return obj


def _opt_float(value: Any, where: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(f"{where} is not a number")
    if value != value:
        raise _Malformed(f"{where} is NaN")
    return float(value)


def _opt_int(value: Any, where: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(f"{where} is not an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise _Malformed(f"{where} is not an integer")
        value = int(value)
    return value


def _opt_str(value: Any, where: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Malformed(f"{where} is not a string")
    return value


def _opt_dict(value: Any, where: str) -> Optional[Dict[str, Any]]:
    if value is None:
        return None
    return _object(value, where)


def _vector(value: Any, where: str) -> List[float]:
    if not isinstance(value, list):
        raise _Malformed(f"{where} is not a list of numbers")
    try:
        # sum() walks the list in C and fails on strings, None and nested lists: a fast type check.
        total = sum(value)
    except TypeError:
        raise _Malformed(f"{where} is not a list of numbers") from None
    if total != total or total in (float("inf"), float("-inf")):
        if any(x != x or x in (float("inf"), float("-inf")) for x in value):
            raise _Malformed(f"{where} holds NaN or Infinity")
    return value


def _extras(obj: Dict[str, Any], known: tuple) -> Dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in known}


def _task_id(obj: Dict[str, Any], where: str, required: bool) -> Optional[str]:
    # The wire name is `_id` (the SDK's alias of `id`); `id` is accepted as well.
    value = obj.get("_id", obj.get("id"))
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _Malformed(f"{where}._id is missing")
    return value


@dataclasses.dataclass
class EmbeddingData:
    """One vector: `data[i]` of a sync result or of a ready task."""

    embedding: List[float]
    embedding_option: Optional[str] = None
    embedding_scope: Optional[str] = None
    start_sec: Optional[float] = None
    end_sec: Optional[float] = None
    embedding_uncertainty: Optional[List[float]] = None
    start_page_number: Optional[int] = None
    end_page_number: Optional[int] = None
    quadrant: Optional[str] = None
    chunk_index: Optional[int] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    _KNOWN = ("embedding", "embedding_option", "embedding_scope", "start_sec", "end_sec",
              "embedding_uncertainty", "start_page_number", "end_page_number", "quadrant", "chunk_index")

    @classmethod
    def from_json(cls, obj: Any, where: str = "data[]") -> "EmbeddingData":
        obj = _object(obj, where)
        if "embedding" not in obj:
            raise _Malformed(f"{where}.embedding is missing")
        uncertainty = obj.get("embedding_uncertainty")
        return cls(
            embedding=_vector(obj.get("embedding"), f"{where}.embedding"),
            embedding_option=_opt_str(obj.get("embedding_option"), f"{where}.embedding_option"),
            embedding_scope=_opt_str(obj.get("embedding_scope"), f"{where}.embedding_scope"),
            start_sec=_opt_float(obj.get("start_sec"), f"{where}.start_sec"),
            end_sec=_opt_float(obj.get("end_sec"), f"{where}.end_sec"),
            embedding_uncertainty=None if uncertainty is None else _vector(
                uncertainty, f"{where}.embedding_uncertainty"),
            start_page_number=_opt_int(obj.get("start_page_number"), f"{where}.start_page_number"),
            end_page_number=_opt_int(obj.get("end_page_number"), f"{where}.end_page_number"),
            quadrant=_opt_str(obj.get("quadrant"), f"{where}.quadrant"),
            chunk_index=_opt_int(obj.get("chunk_index"), f"{where}.chunk_index"),
            extra=_extras(obj, cls._KNOWN),
        )


def _data_list(value: Any, where: str, required: bool) -> Optional[List[EmbeddingData]]:
    if value is None:
        if required:
            raise _Malformed(f"{where} is missing")
        return None
    if not isinstance(value, list):
        raise _Malformed(f"{where} is not a list")
    return [EmbeddingData.from_json(item, f"{where}[{i}]") for i, item in enumerate(value)]


@dataclasses.dataclass
class UsageV2:
    """`usage` (Marengo 3.5): input tokens by content type, and whether the text was truncated."""

    input_tokens: Dict[str, int] = dataclasses.field(default_factory=dict)
    truncated: bool = False
    truncation_reason: Optional[str] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    _KNOWN = ("input_tokens", "truncated", "truncation_reason")

    @classmethod
    def from_json(cls, obj: Any, where: str = "usage") -> Optional["UsageV2"]:
        if obj is None:
            return None
        obj = _object(obj, where)
        tokens = obj.get("input_tokens")
        if tokens is None:
            tokens = {}
        tokens = _object(tokens, f"{where}.input_tokens")
        parsed = {}
        for name, count in tokens.items():
            parsed[name] = _opt_int(count, f"{where}.input_tokens.{name}")
        truncated = obj.get("truncated", False)
        if truncated is None:
            truncated = False
        if not isinstance(truncated, bool):
            raise _Malformed(f"{where}.truncated is not a boolean")
        return cls(
            input_tokens=parsed,
            truncated=truncated,
            truncation_reason=_opt_str(obj.get("truncation_reason"), f"{where}.truncation_reason"),
            extra=_extras(obj, cls._KNOWN),
        )


@dataclasses.dataclass
class EmbeddingsV2Result:
    """The 200 body of `POST /embed-v2`: `data` (order not guaranteed), `usage`, `metadata`."""

    data: List[EmbeddingData]
    usage: Optional[UsageV2] = None
    metadata: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    # The response's rate-limit headers (an errors.RateLimitInfo), for pacing.
    rate_limit: Any = dataclasses.field(default=None, repr=False, compare=False)

    _KNOWN = ("data", "usage", "metadata")

    @classmethod
    def from_json(cls, obj: Any) -> "EmbeddingsV2Result":
        obj = _object(obj, "body")
        return cls(
            data=_data_list(obj.get("data"), "data", required=True),
            usage=UsageV2.from_json(obj.get("usage")),
            metadata=_opt_dict(obj.get("metadata"), "metadata"),
            extra=_extras(obj, cls._KNOWN),
        )


@dataclasses.dataclass
class TaskCreated:
    """The 202 body of `POST /embed-v2/tasks`."""

    id: str
    status: str
    data: Optional[List[EmbeddingData]] = None
    metadata: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    rate_limit: Any = dataclasses.field(default=None, repr=False, compare=False)

    _KNOWN = ("_id", "id", "status", "data", "metadata")

    @classmethod
    def from_json(cls, obj: Any) -> "TaskCreated":
        obj = _object(obj, "body")
        status = obj.get("status")
        if not isinstance(status, str):
            raise _Malformed("status is missing")
        return cls(
            id=_task_id(obj, "body", required=True),
            status=status,
            data=_data_list(obj.get("data"), "data", required=False),
            metadata=_opt_dict(obj.get("metadata"), "metadata"),
            extra=_extras(obj, cls._KNOWN),
        )


@dataclasses.dataclass
class EmbeddingTask:
    """The 200 body of `GET /embed-v2/tasks/{task_id}`: status, and the vectors once `ready`."""

    id: str
    status: str  # processing | ready | failed
    created_at: Optional[str] = None
    updated_at: Optional[str] = None
    data: Optional[List[EmbeddingData]] = None
    usage: Optional[UsageV2] = None
    metadata: Optional[Dict[str, Any]] = None
    error_message: Optional[str] = None  # `error.message` when failed, scrubbed of secrets
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    rate_limit: Any = dataclasses.field(default=None, repr=False, compare=False)

    _KNOWN = ("_id", "id", "status", "created_at", "updated_at", "data", "usage", "metadata", "error")

    @property
    def is_done(self) -> bool:
        return self.status in ("ready", "failed")

    @classmethod
    def from_json(cls, obj: Any) -> "EmbeddingTask":
        obj = _object(obj, "body")
        status = obj.get("status")
        if not isinstance(status, str):
            raise _Malformed("status is missing")
        error = obj.get("error")
        message = None
        if isinstance(error, dict) and error.get("message") is not None:
            message = scrub(str(error["message"]))
        elif isinstance(error, str):
            message = scrub(error)
        elif error is not None and not isinstance(error, dict):
            raise _Malformed("error is not an object")
        return cls(
            id=_task_id(obj, "body", required=True),
            status=status,
            created_at=_opt_str(obj.get("created_at"), "created_at"),
            updated_at=_opt_str(obj.get("updated_at"), "updated_at"),
            data=_data_list(obj.get("data"), "data", required=False),
            usage=UsageV2.from_json(obj.get("usage")),
            metadata=_opt_dict(obj.get("metadata"), "metadata"),
            error_message=message,
            extra=_extras(obj, cls._KNOWN),
        )


@dataclasses.dataclass
class MediaEmbeddingTask:
    """One entry of `GET /embed-v2/tasks`: no vectors; `<type>_embedding` metadata is in `extra`."""

    id: Optional[str] = None
    model_name: Optional[str] = None
    status: Optional[str] = None
    created_at: Optional[str] = None
    updated_at: Optional[str] = None
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    _KNOWN = ("_id", "id", "model_name", "status", "created_at", "updated_at")

    @classmethod
    def from_json(cls, obj: Any, where: str = "data[]") -> "MediaEmbeddingTask":
        obj = _object(obj, where)
        return cls(
            id=_task_id(obj, where, required=False),
            model_name=_opt_str(obj.get("model_name"), f"{where}.model_name"),
            status=_opt_str(obj.get("status"), f"{where}.status"),
            created_at=_opt_str(obj.get("created_at"), f"{where}.created_at"),
            updated_at=_opt_str(obj.get("updated_at"), f"{where}.updated_at"),
            extra=_extras(obj, cls._KNOWN),
        )


def parse_task_list(obj: Any):
    """The 200 body of `GET /embed-v2/tasks` as (tasks, page_info dict)."""
    obj = _object(obj, "body")
    raw = obj.get("data")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise _Malformed("data is not a list")
    tasks = [MediaEmbeddingTask.from_json(item, f"data[{i}]") for i, item in enumerate(raw)]
    page_info = obj.get("page_info")
    page_info = {} if page_info is None else dict(_object(page_info, "page_info"))
    return tasks, page_info
