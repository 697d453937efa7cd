"""Every config key in one table: its type, range, default and meaning. The config is checked against it
before anything runs (unknown keys get the nearest known name), and `python -m pipeline config` prints it."""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Dict, Optional, Sequence, Tuple

from transforms.settings import ConfigError

__all__ = ["SETTINGS", "Setting", "check_settings", "reference"]


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str                    # dotted path in the YAML file
    field: str                  # the JobConfig attribute it fills
    kind: str                   # str | int | float | bool | list | map | path | paths
    default: Any
    doc: str
    choices: Optional[Tuple[Any, ...]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    optional: bool = False      # None allowed (and the default)


SETTINGS: Tuple[Setting, ...] = (
    Setting("model", "model", "str", "marengo3.0", "the embedding model",
            choices=("marengo3.0", "marengo3.5", "marengo2.7", "Marengo-retrieval-2.7")),
    Setting("manifests", "manifests", "paths", [], "manifest paths or globs (JSONL, CSV, Parquet; any FileSystems "
            "scheme); relative to this file's folder"),
    Setting("columns", "columns", "map", {}, "manifest column -> field (id, text, image_file, ...), e.g. "
            "{description: text}"),
    Setting("samples", "samples", "path", None, "folder of generated sample media and manifests (local config)",
            optional=True),
    Setting("output.path", "output", "path", "output", "output folder (local or any FileSystems URL)"),
    Setting("output.flush_sec", "flush_sec", "float", None, "commit a piece at least this often (unset: 5 s plus a "
            "journal of every result on local outputs, a piece per call's results on object stores; 0: a piece "
            "per call's results everywhere)", low=0, optional=True),
    Setting("output.rows_per_piece", "rows_per_piece", "int", 4096, "commit a piece when it holds this many "
            "items", low=1),
    Setting("api.base_url", "base_url", "str", "embedded", "API base URL ending in /v1.3, or `embedded` for the "
            "in-process emulator"),
    Setting("api.key_file", "key_file", "path", None, "file holding the API key (else TWELVE_LABS_API_KEY)",
            optional=True),
    Setting("api.version", "api_version", "str", "auto", "v1, v2, or auto (v1 where it can, v2 for video and "
            "marengo3.5)", choices=("auto", "v1", "v2")),
    Setting("api.connect_timeout_sec", "connect_timeout_sec", "float", 10.0, "seconds to connect", low=0.001),
    Setting("api.read_timeout_sec", "read_timeout_sec", "float", 120.0, "seconds to wait for an answer",
            low=0.001),
    Setting("calls.requests_per_minute", "requests_per_minute", "float", None, "the account's limit, shared by "
            "all workers (unset: learned from the first 429 that states it)", low=0.001, optional=True),
    Setting("calls.requests_per_day", "requests_per_day", "int", None, "the account's daily quota (for "
            "--dry-run's estimate)", low=1, optional=True),
    Setting("calls.max_calls", "max_calls", "int", None, "a budget of calls for this run; the rest is deferred",
            low=0, optional=True),
    Setting("calls.worker_processes", "max_workers", "int", 1, "worker processes sharing the limit: each paces "
            "to requests_per_minute / worker_processes (without Redis) and takes its share of max_calls "
            "(formerly calls.max_workers, still read)", low=1),
    Setting("calls.max_in_flight", "max_in_flight", "int", 8, "concurrent calls per worker process", low=1,
            high=1024),
    Setting("calls.pack", "pack", "bool", True, "v1: pack up to one text, image and audio per call"),
    Setting("calls.max_attempts", "max_attempts", "int", 6, "attempts per call (retries of what can succeed "
            "later)", low=1, high=100),
    Setting("calls.item_deadline_sec", "item_deadline_sec", "float", 300.0, "wall-clock bound on one item's "
            "retries", low=0.001),
    Setting("calls.outage_after_failures", "outage_after_failures", "int", 20, "stop calling after this many "
            "attempts in a row fail for the service's reason (0: never)", low=0),
    Setting("calls.task_deadline_sec", "task_deadline_sec", "float", 3600.0, "v2 tasks: poll this long in one "
            "run, then defer (the task is kept)", low=0.001),
    Setting("calls.task_poll_sec", "task_poll_sec", "float", 5.0, "v2 tasks: first wait between polls "
            "(grows 1.5x to 60 s)", low=0.001),
    Setting("calls.max_tasks_in_flight", "max_tasks_in_flight", "int", 32, "v2 tasks polled at once per worker",
            low=1, high=4096),
    Setting("calls.media_minutes_per_hour", "media_minutes_per_hour", "float", None, "v2: the account's audio/"
            "video minutes per hour, shared by all workers", low=0.001, optional=True),
    Setting("embedding.dimension", "embedding_dimension", "int", None, "marengo3.5: vector size",
            choices=(128, 256, 512), optional=True),
    Setting("embedding.options", "embedding_options", "list", None, "v2 audio/video: some of visual, audio, "
            "transcription", optional=True),
    Setting("embedding.scopes", "embedding_scopes", "list", None, "v2 audio/video: some of clip, asset",
            optional=True),
    Setting("embedding.type", "embedding_type", "list", None, "v2: separate_embedding and/or fused_embedding",
            optional=True),
    Setting("embedding.segmentation", "segmentation", "map", None, "v2: {strategy: fixed, duration_sec: 2..10} or "
            "{strategy: dynamic, min_duration_sec: 2..5}", optional=True),
    Setting("rate_limit.backend", "rate_limit_backend", "str", "local", "local (each worker paces to its share) "
            "or redis (one limit shared through Redis)", choices=("local", "redis")),
    Setting("rate_limit.redis_url", "redis_url", "str", None, "redis://HOST:PORT/DB for the redis backend",
            optional=True),
    Setting("rate_limit.key", "rate_limit_key", "str", "tl-embed:ratelimit", "the Redis key of the shared limit"),
    Setting("exit_codes.dead_letters", "dead_letters_exit_code", "int", 3, "the exit status of a run whose new "
            "dead letters are its only problem (README \"Exit codes\"); the sample config sets 0, its bad rows are "
            "on purpose", choices=(0, 3)),
    Setting("beam.args", "beam_args", "list", [], "flags for Beam (--runner=..., --setup_file=...)"),
    Setting("emulator", "emulator", "map", {}, "the embedded emulator's knobs (python -m embed_emulator --help)"),
)
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


def reference() -> str:
    """Every key, its type, default and meaning: `python -m pipeline config`."""
    lines = ["Config keys (YAML; relative paths are relative to the config file's folder):", ""]
    width = max(len(s.key) for s in SETTINGS) + 2
    for setting in SETTINGS:
        kind = setting.kind
        if setting.choices:
            kind = "|".join(map(str, setting.choices))
        elif setting.low is not None or setting.high is not None:
            low = "" if setting.low is None else f"{setting.low:g}"
            high = "" if setting.high is None else f"{setting.high:g}"
            kind = f"{kind} {low}..{high}"
        default = "unset" if setting.default is None else repr(setting.default)
        lines.append(f"{setting.key:<{width}}{kind}  (default {default})")
        lines.append(f"{'':<{width}}{setting.doc}")
    return "\n".join(lines)
