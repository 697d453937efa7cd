"""The config file checked against the settings table (transforms.settings.SETTINGS) before anything runs (unknown keys get the nearest known name), and `python -m pipeline config` prints it."""
from __future__ import annotations

import difflib
import math
from typing import Any, Dict, Sequence

from transforms.settings import SETTINGS, ConfigError, Setting

__all__ = ["SETTINGS", "Setting", "check_settings", "reference"]


_BY_KEY = {s.key: s for s in SETTINGS}
_BLOCKS = sorted({s.key.split(".", 1)[0] for s in SETTINGS if "." in s.key})
_TOP = sorted({s.key.split(".", 1)[0] for s in SETTINGS})


def _nearest(name: str, known: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else f"; known: {', '.join(sorted(known))}"


# Old names still read, and the key they became.
_RENAMED = {"calls.max_workers": "calls.worker_processes"}


def _flatten(raw: Dict[str, Any], where: str) -> Dict[str, Any]:
    values: Dict[str, Any] = {}
    for top, value in raw.items():
        top = str(top)
        if top not in _TOP:
            raise ConfigError(f"{where}: unknown setting `{top}`{_nearest(top, _TOP)}")
        if top in _BLOCKS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: `{top}` must be a mapping of settings (e.g. {top}: {{...}})")
            keys = [s.key.split(".", 1)[1] for s in SETTINGS if s.key.startswith(top + ".")]
            for name, inner in value.items():
                renamed = _RENAMED.get(f"{top}.{name}")
                if renamed is not None:
                    if renamed in values or renamed.split(".", 1)[1] in value:
                        raise ConfigError(f"{where}: `{top}.{name}` is the old name of `{renamed}`; give only one")
                    values[renamed] = inner
                    continue
                if top == "api" and name in ("api_key", "key"):
                    raise ConfigError(f"{where}: do not put the API key in a config; use TWELVE_LABS_API_KEY or "
                                      "api.key_file")
                subs = [k.split(".", 1)[1] for k in keys if k.startswith(f"{name}.")]
                if subs:  # a block inside the block (rate_limit.text: {requests_per_minute: ...})
                    if inner is None:
                        continue
                    if not isinstance(inner, dict):
                        raise ConfigError(f"{where}: `{top}.{name}` must be a mapping of settings (e.g. "
                                          f"{top}: {{{name}: {{{subs[0]}: ...}}}})")
                    for sub, leaf in inner.items():
                        if sub not in subs:
                            raise ConfigError(f"{where}: unknown setting `{top}.{name}.{sub}`"
                                              f"{_nearest(str(sub), subs).replace('mean ', f'mean {top}.{name}.')}")
                        values[f"{top}.{name}.{sub}"] = leaf
                    continue
                if name not in keys:
                    raise ConfigError(f"{where}: unknown setting `{top}.{name}`"
                                      f"{_nearest(str(name), keys).replace('mean ', 'mean ' + top + '.')}")
                values[f"{top}.{name}"] = inner
        else:
            values[top] = value
    return values


def _check(setting: Setting, value: Any, where: str) -> Any:
    key, kind = setting.key, setting.kind
    if value is None:
        if setting.optional or setting.default is None:
            return None
        raise ConfigError(f"{where}: `{key}` is empty; leave it out for the default ({setting.default!r})")

    def fail(what: str) -> ConfigError:
        return ConfigError(f"{where}: `{key}` must be {what}, got {value!r}")

    if kind == "bool":
        if not isinstance(value, bool):  # 'false' as a string would read as true: refuse it
            raise fail("true or false (unquoted)")
        return value
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and value != int(value)):
            raise fail("an integer" if kind == "int" else "a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise fail("a finite number")
        value = int(value) if kind == "int" else float(value)
    elif kind in ("str", "path"):
        if not isinstance(value, str) or not value.strip():
            raise fail("a non-empty string")
    elif kind in ("list", "paths"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise fail("a list of strings")
        value = [str(v) for v in value]
    elif kind == "map" and not isinstance(value, dict):
        raise fail("a mapping")
    if setting.choices is not None and value not in setting.choices:
        raise ConfigError(f"{where}: `{key}` must be one of {', '.join(map(str, setting.choices))}, got {value!r}"
                          + (_nearest(str(value), [str(c) for c in setting.choices]) if isinstance(value, str)
                             else ""))
    if setting.low is not None and value < setting.low:
        raise fail(f">= {setting.low:g}")
    if setting.high is not None and value > setting.high:
        raise fail(f"<= {setting.high:g}")
    return value


def check_settings(raw: Dict[str, Any], where: str) -> Dict[str, Any]:
    """JobConfig field -> checked value (defaults filled in) for a parsed YAML config."""
    given = _flatten(raw, where)
    fields: Dict[str, Any] = {}
    for setting in SETTINGS:
        value = given.get(setting.key, setting.default)
        fields[setting.field] = _check(setting, value, where) if setting.key in given else (
            list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value)
    return fields


def _bound(value) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"  # 209715200, not 2.09715e+08


def reference() -> str:
    """Every key, its type, default and meaning: `python -m pipeline config`."""
    lines = ["Config keys (YAML; relative paths are relative to the config file's folder):", ""]
    width = max(len(s.key) for s in SETTINGS) + 2
    for setting in SETTINGS:
        kind = setting.kind
        if setting.choices:
            kind = "|".join(map(str, setting.choices))
        elif setting.low is not None or setting.high is not None:
            low, high = _bound(setting.low), _bound(setting.high)
            kind = f"{kind} {low}..{high}"
        default = "unset" if setting.default is None else repr(setting.default)
        lines.append(f"{setting.key:<{width}}{kind}  (default {default})")
        lines.append(f"{'':<{width}}{setting.doc}")
    return "\n".join(lines)
