"""What both v2 POSTs share: the top-level request fields, the text token limit and the outcome of a call."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from .. import rules
from ..rules import count_tokens, invalid_message, truncate_text
from . import fields
from .errors import bad
from .spec import DIMENSIONS, FULL_DIMENSION, M30, M35, MODELS, TEXT_TOKEN_LIMITS


@dataclass
class Outcome:
    """A successful v2 answer and what it counts."""
    status: int
    payload: dict
    input_type: str = ""
    key: Optional[str] = None
    media_sec: float = 0.0
    task_created: bool = False


@dataclass
class Common:
    model: str
    input_type: str
    dims: int
    uncertainty: bool
    auto_truncate: bool
    obj: dict


def parse_common(request: dict, input_types: Sequence[str], extra_fields: Sequence[str]) -> Common:
    allowed = ("input_type", "model_name", "embedding_uncertainty", "embedding_dimension",
               *extra_fields, *input_types)
    model = request.get("model_name")
    if model is None:
        raise bad(rules.not_provided_message("model_name"), "parameter_not_provided")
    fields.enum(model, "model_name", MODELS)
    input_type = request.get("input_type")
    if input_type is None:
        raise bad(rules.not_provided_message("input_type"), "parameter_not_provided")
    fields.enum(input_type, "input_type", input_types)
    fields.known(request, allowed, "")
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
    uncertainty = fields.boolean(request, "embedding_uncertainty", "embedding_uncertainty")
    auto_truncate = fields.boolean(request, "auto_truncate", "auto_truncate")
    # Emulator choice: asking 3.0 for a 3.5-only feature is a 400, like embedding_dimension.
    if model == M30 and uncertainty:
        raise bad(invalid_message("embedding_uncertainty", "It requires marengo3.5."))
    if model == M30 and auto_truncate:
        raise bad(invalid_message("auto_truncate", "It requires marengo3.5."))
    for other in input_types:
        if other != input_type and request.get(other) is not None:
            raise bad(invalid_message(other, f"It is not allowed when `input_type` is "
                                      f"`{input_type}`."))
    obj = fields.obj(request, input_type, input_type, required=True)
    return Common(model, input_type, dims, uncertainty, auto_truncate, obj)


def text_tokens(text: str, path: str, model: str, auto_truncate: bool) -> Tuple[str, bool]:
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
