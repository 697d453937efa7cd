"""Reading one JSON field of a v2 request body, with the 400 each wrong shape gets."""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence

from .. import rules
from ..rules import invalid_message
from .errors import bad


def obj(parent: dict, name: str, path: str, required: bool = False) -> Optional[dict]:
    value = parent.get(name)
    if value is None:
        if required:
            raise bad(rules.not_provided_message(path), "parameter_not_provided")
        return None
    if not isinstance(value, dict):
        raise bad(invalid_message(path, "It must be an object."))
    return value


def known(obj: dict, allowed: Sequence[str], path: str) -> None:
    for name in obj:
        if name not in allowed:
            raise bad(rules.unknown_parameter_message(f"{path}.{name}" if path else name),
                      "parameter_unknown")


def boolean(obj: dict, name: str, path: str) -> bool:
    value = obj.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(invalid_message(path, "It must be a boolean."))
    return value


def text(obj: dict, name: str, path: str, required: bool) -> Optional[str]:
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


def number(obj: dict, name: str, path: str) -> Optional[float]:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(invalid_message(path, "It must be a number."))
    return float(value)


def int_in(obj: dict, name: str, path: str, low: int, high: int) -> int:
    value = obj.get(name)
    if value is None:
        raise bad(rules.not_provided_message(path), "parameter_not_provided")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad(invalid_message(path, f"It must be an integer between {low} and {high}."))
    return value


def enum_list(obj: dict, name: str, path: str, allowed: Sequence[str],
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


def enum(value: Any, path: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise bad(invalid_message(path, "You should use one of the following values: "
                                  + ", ".join(f"`{v}`" for v in allowed) + "."))
    return value
