"""Embed API v2 (`POST /embed-v2`, `/embed-v2/tasks`): request bodies byte for byte as SDK 1.3.6 sends them.

Input objects are plain dicts in the wire shape, e.g. `video={"media_source": {"url": ...},
"segmentation": {"strategy": "dynamic", "dynamic": {"min_duration_sec": 4}}}`; the SDK's pydantic
request types are accepted too. Dicts are written in the SDK models' field order whatever order
they were given in, keys whose value is None are left out (as unset), `start_sec`/`end_sec` are
floats and segment lengths, sentence counts and `embedding_dimension` are ints, as pydantic makes
them. A pydantic model is written exactly as the SDK serializes it.

The JSON is compact UTF-8 (`separators=(",", ":")`, `ensure_ascii=False`, no NaN), as httpx
encodes it. Nothing here sends: the calls are `V2Client` (`client.v2`) and `TasksClient` (`client.tasks`).
"""
from __future__ import annotations

import base64
import json
import os
import urllib.parse
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from embed_client import errors
from embed_client.models import V2_MODELS

__all__ = [
    "MODEL_NAMES_V2",
    "SYNC_INPUT_TYPES",
    "TASK_INPUT_TYPES",
    "TASK_STATUSES",
    "build_create_body",
    "build_extra_query",
    "build_list_query",
    "build_task_create_body",
    "build_task_path",
    "media_source",
    "multi_input_source",
]

MODEL_NAMES_V2 = V2_MODELS  # what /embed-v2 and its tasks take (embed_client.models)
SYNC_INPUT_TYPES = ("text", "image", "text_image", "audio", "video", "multi_input")
TASK_INPUT_TYPES = ("audio", "video", "document", "image")
TASK_STATUSES = ("processing", "ready", "failed")

FileLike = Union[str, os.PathLike, bytes, bytearray, memoryview, Any]

# ---- field order and types of the SDK 1.3.6 request models (twelvelabs/types/*_request.py) ----
# A spec maps each known key, in declaration order, to how its value is written: None (as given),
# _FLOAT / _INT (pydantic's coercion of a number), a nested spec (an object), or (_LIST, spec).
_FLOAT = "float"
_INT = "int"
_LIST = "list"

_MEDIA_SOURCE = {"base64_string": None, "url": None, "asset_id": None}
_MULTI_SOURCE = {"name": None, "media_type": None, "url": None, "base64_string": None, "asset_id": None}
_ALIASES = {"base_64_string": "base64_string"}  # the SDK's Python name of the field

# One spec for every segmentation shape: {strategy, fixed|dynamic} (3.0), {temporal: {...}} (3.5),
# {spatial: {...}} / {sequential: {...}} (documents). No model has two of them, so one order serves.
_SEGMENTATION: Dict[str, Any] = {
    "strategy": None,
    "temporal": None,  # set below: the same spec, nested
    "spatial": {"strategy": None},
    "sequential": {"strategy": None, "max_sentences": _INT, "overlap_sentences": _INT},
    "dynamic": {"min_duration_sec": _INT},
    "fixed": {"duration_sec": _INT},
}
_SEGMENTATION["temporal"] = _SEGMENTATION

_TIME_BASED_METADATA = {"start": _FLOAT, "end": _FLOAT, "text": None}

_MEDIA_FIELDS = {
    "media_source": _MEDIA_SOURCE,
    "start_sec": _FLOAT,
    "end_sec": _FLOAT,
    "segmentation": _SEGMENTATION,
    "embedding_option": None,
    "embedding_scope": None,
    "embedding_type": None,
}

_SYNC_INPUTS = {
    "text": {"input_text": None},
    "image": {"media_source": _MEDIA_SOURCE},
    "text_image": {"media_source": _MEDIA_SOURCE, "input_text": None},
    "audio": _MEDIA_FIELDS,
    "video": _MEDIA_FIELDS,
    "multi_input": {"input_text": None, "media_sources": (_LIST, _MULTI_SOURCE)},
}

_ASYNC_MEDIA_FIELDS = dict(_MEDIA_FIELDS, time_based_metadata=(_LIST, _TIME_BASED_METADATA))
_TASK_INPUTS = {
    "audio": _ASYNC_MEDIA_FIELDS,
    "video": _ASYNC_MEDIA_FIELDS,
    "document": {"media_source": _MEDIA_SOURCE, "segmentation": _SEGMENTATION, "embedding_option": None,
                 "embedding_type": None, "embedding_scope": None},
    "image": {"media_source": _MEDIA_SOURCE, "embedding_option": None, "embedding_type": None,
              "embedding_scope": None},
}


def _invalid(message: str, code: str = "parameter_invalid") -> errors.BadRequestError:
    return errors.BadRequestError(message, code=code)


def _is_model(value: Any) -> bool:
    """A pydantic model instance (v2 or v1), without importing pydantic."""
    cls = type(value)
    return not isinstance(value, type) and (
        hasattr(cls, "model_fields") or (hasattr(cls, "__fields__") and hasattr(cls, "dict")))


def _model_to_dict(value: Any) -> Dict[str, Any]:
    """A pydantic request model as the SDK writes it (by alias, unset fields left out)."""
    if type(value).__module__.startswith("twelvelabs."):
        # UniversalBaseModel.dict: by alias, exclude_unset, and the SDK's own field conversions.
        return value.dict(by_alias=True)
    if hasattr(value, "model_dump"):
        return value.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return value.dict(by_alias=True, exclude_unset=True)


def _plain(value: Any) -> Any:
    """A value with any nested pydantic model turned into its dict, everything else as given."""
    if _is_model(value):
        return _plain(_model_to_dict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _canonical(value: Any, spec: Any) -> Any:
    if spec is None:
        return _plain(value)
    if spec == _FLOAT:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if spec == _INT:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if isinstance(spec, tuple):  # (_LIST, item spec)
        if isinstance(value, (list, tuple)):
            return [_canonical(item, spec[1]) for item in value]
        return _plain(value)
    if _is_model(value):
        value = _model_to_dict(value)
    if not isinstance(value, Mapping):
        return value  # not ours to judge: the server answers 400
    given = {_ALIASES.get(k, k): v for k, v in value.items()}
    out: Dict[str, Any] = {}
    for key, child in spec.items():
        if given.get(key) is not None:
            out[key] = _canonical(given[key], child)
    for key, item in given.items():
        if key not in spec and item is not None:
            out[key] = _plain(item)
    return out


def _input_object(name: str, value: Any, spec: Dict[str, Any]) -> Any:
    if _is_model(value):
        return _model_to_dict(value)  # exactly as the SDK writes its own model
    if not isinstance(value, Mapping):
        example = next(iter(spec))
        raise _invalid(f"`{name}` must be an object such as {{\"{example}\": ...}}, "
                       f"got {type(value).__name__}")
    return _canonical(value, spec)


def _dimension(value: Any) -> Any:
    # The OpenAPI file declares a string enum; the SDK (and the service) take an int.
    if isinstance(value, bool):
        raise _invalid("The `embedding_dimension` parameter must be an integer (128, 256 or 512).")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, int):
        return value
    raise _invalid("The `embedding_dimension` parameter must be an integer (128, 256 or 512).")


def _check_names(input_type: Any, model_name: Any) -> None:
    if not isinstance(input_type, str) or not input_type:
        raise _invalid("The `input_type` parameter must be a non-empty string.", "parameter_not_provided"
                       if not input_type else "parameter_invalid")
    if not isinstance(model_name, str) or not model_name:
        raise _invalid("The `model_name` parameter must be a non-empty string.", "parameter_not_provided"
                       if not model_name else "parameter_invalid")


def _encode(body: Dict[str, Any], additional_body_parameters: Optional[Mapping[str, Any]]) -> bytes:
    if additional_body_parameters:
        # As the SDK: a known key keeps its place with the new value, a new one goes last.
        body = {**body, **_plain(dict(additional_body_parameters))}
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except ValueError as exc:
        raise _invalid(f"The request holds a number JSON cannot carry (NaN or Infinity): {exc}") from None
    except TypeError as exc:
        raise _invalid(f"The request holds a value JSON cannot carry: {exc}") from None


def _build(input_type: str, model_name: str, head: List[Tuple[str, Any]], inputs: List[Tuple[str, Any]],
           specs: Dict[str, Dict[str, Any]], additional_body_parameters: Optional[Mapping[str, Any]]) -> bytes:
    _check_names(input_type, model_name)
    if input_type in specs and dict(inputs).get(input_type) is None:
        raise _invalid(f"The `{input_type}` parameter is required when `input_type` is `{input_type}`.",
                       "parameter_not_provided")
    body: Dict[str, Any] = {"input_type": input_type, "model_name": model_name}
    for name, value in head:
        if value is not None:
            body[name] = _dimension(value) if name == "embedding_dimension" else value
    for name, value in inputs:
        if value is not None:
            body[name] = _input_object(name, value, specs[name])
    return _encode(body, additional_body_parameters)


def build_create_body(
    input_type: str,
    model_name: str,
    *,
    text: Any = None,
    image: Any = None,
    text_image: Any = None,
    audio: Any = None,
    video: Any = None,
    multi_input: Any = None,
    auto_truncate: Optional[bool] = None,
    embedding_uncertainty: Optional[bool] = None,
    embedding_dimension: Optional[int] = None,
    additional_body_parameters: Optional[Mapping[str, Any]] = None,
) -> bytes:
    """The JSON body of `POST /embed-v2`, in the SDK's key order (None means: not sent)."""
    return _build(
        input_type, model_name,
        [("auto_truncate", auto_truncate), ("embedding_uncertainty", embedding_uncertainty),
         ("embedding_dimension", embedding_dimension)],
        [("text", text), ("image", image), ("text_image", text_image), ("audio", audio), ("video", video),
         ("multi_input", multi_input)],
        _SYNC_INPUTS, additional_body_parameters)


def build_task_create_body(
    input_type: str,
    model_name: str,
    *,
    audio: Any = None,
    video: Any = None,
    image: Any = None,
    document: Any = None,
    embedding_uncertainty: Optional[bool] = None,
    embedding_dimension: Optional[int] = None,
    additional_body_parameters: Optional[Mapping[str, Any]] = None,
) -> bytes:
    """The JSON body of `POST /embed-v2/tasks`, in the SDK's key order (None means: not sent)."""
    return _build(
        input_type, model_name,
        [("embedding_uncertainty", embedding_uncertainty), ("embedding_dimension", embedding_dimension)],
        [("audio", audio), ("video", video), ("document", document), ("image", image)],
        _TASK_INPUTS, additional_body_parameters)


def _query_value(value: Any) -> str:
    # httpx's primitive_value_to_str: JSON-style booleans, str() of the rest.
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def build_list_query(
    started_at: Optional[str] = None,
    ended_at: Optional[str] = None,
    status: Optional[str] = None,
    page: Optional[int] = None,
    page_limit: Optional[int] = None,
    additional_query_parameters: Optional[Mapping[str, Any]] = None,
) -> str:
    """The query string of `GET /embed-v2/tasks` as the SDK sends it (page defaults to 1)."""
    params: Dict[str, Any] = {"started_at": started_at, "ended_at": ended_at, "status": status,
                              "page": 1 if page is None else page, "page_limit": page_limit}
    params.update(additional_query_parameters or {})
    pairs: List[Tuple[str, str]] = []
    for name, value in params.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        pairs.extend((name, _query_value(v)) for v in values)
    return urllib.parse.urlencode(pairs)


def _read_bytes(file: FileLike) -> bytes:
    if isinstance(file, (bytes, bytearray, memoryview)):
        return bytes(file)
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return f.read()
    if hasattr(file, "read"):
        data = file.read()
        if isinstance(data, str):
            raise TypeError("file objects must be opened in binary mode")
        return data
    raise TypeError(f"unsupported file input of type {type(file).__name__}")


def media_source(url: Optional[str] = None, file: Optional[FileLike] = None,
                 asset_id: Optional[str] = None) -> Dict[str, str]:
    """A `media_source` object: exactly one of a URL, a file (path, bytes or binary file object,
    sent inline as `base64_string`) or the id of a ready asset."""
    given = [name for name, value in (("url", url), ("file", file), ("asset_id", asset_id)) if value is not None]
    if len(given) != 1:
        raise _invalid("A media source needs exactly one of `url`, `file` or `asset_id`"
                       + (f" (got {', '.join(given)})." if given else "."),
                       "parameter_not_provided" if not given else "parameter_invalid")
    if file is not None:
        return {"base64_string": base64.b64encode(_read_bytes(file)).decode("ascii")}
    if url is not None:
        return {"url": url}
    return {"asset_id": asset_id}


def multi_input_source(media_type: str, *, url: Optional[str] = None, file: Optional[FileLike] = None,
                       asset_id: Optional[str] = None, name: Optional[str] = None) -> Dict[str, str]:
    """One entry of `multi_input.media_sources` (name, media_type, then the source), as the SDK orders it.

    `name` is what the text refers to as `<@name>`."""
    source: Dict[str, str] = {}
    if name is not None:
        source["name"] = name
    source["media_type"] = media_type
    found = media_source(url=url, file=file, asset_id=asset_id)
    for key in ("url", "base64_string", "asset_id"):
        if key in found:
            source[key] = found[key]
    return source


def build_extra_query(additional_query_parameters: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The query string of a call's `additional_query_parameters` (None: no query at all)."""
    if not additional_query_parameters:
        return None
    return urllib.parse.urlencode([(k, _query_value(v)) for k, v in additional_query_parameters.items()
                                   if v is not None])


def build_task_path(task_id: str) -> str:
    """The path of `GET /embed-v2/tasks/{task_id}`, the id quoted whole (a `/` or `?` stays inside it)."""
    if not isinstance(task_id, str) or not task_id.strip():
        raise _invalid("The `task_id` parameter must be a non-empty string.")
    return "embed-v2/tasks/" + urllib.parse.quote(task_id, safe="")
