"""The job's configuration: a YAML file, command-line overrides, and Beam's own flags passed through."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from transforms.models import MODEL_DIMS
from transforms.settings import SETTINGS, ConfigError, Setting

__all__ = ["EMBEDDED", "JobConfig", "load_config", "parse_args"]

# `api.base_url: embedded` starts the local emulator in-process: no key, no network.
EMBEDDED = "embedded"
_SECRET_FLAGS = ("--api-key", "--api_key", "--apikey", "--key", "--twelve-labs-api-key", "--x-api-key")


_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": List[str], "map": Dict[str, Any],
          "path": str, "paths": List[str]}


def _setting_field(setting: Setting) -> Tuple[str, Any, Any]:
    kind = Optional[_TYPES[setting.kind]] if setting.optional else _TYPES[setting.kind]
    if isinstance(setting.default, (list, dict)):  # a fresh copy per config
        return setting.field, kind, dataclasses.field(default_factory=lambda d=setting.default: copy.deepcopy(d))
    return setting.field, kind, dataclasses.field(default=setting.default)


# The job's configuration: a field for every setting of the table (transforms.settings.SETTINGS, where each key's
# type, range and default is written once), plus what only the command line sets.
JobConfig = dataclasses.make_dataclass(
    "JobConfig",
    [("manifests", List[str]), ("output", str)]
    + [_setting_field(s) for s in SETTINGS if s.field not in ("manifests", "output")]
    + [("dry_run", bool, False),             # --dry-run: plan, call nothing
       ("retry_dead_letters", bool, False),  # re-drive earlier runs' permanent call failures
       ("json_output", bool, False),         # print the plan or summary as JSON
       ("no_wait", bool, False),             # submit the job and exit (Flex Template launches)
       ("config_path", Optional[str], None)])
JobConfig.__module__ = __name__  # pickled by reference (make_dataclass names no module before Python 3.12)


def _resolve_path(value: Optional[str], base: str) -> Optional[str]:
    if value is None or "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def load_config(path: str) -> JobConfig:
    """Reads a YAML config; relative paths in it are relative to the config file's folder."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file (a relative --config is relative to where you stand)")
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; name a YAML config file")
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}:{line} is not valid YAML ({getattr(exc, 'problem', None) or exc})")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping")
    from pipeline.settings import check_settings

    root = os.path.dirname(os.path.abspath(path))
    fields = check_settings(raw, path)
    fields["manifests"] = [_resolve_path(m, root) for m in fields["manifests"]]
    for name in ("output", "key_file", "samples", "index_path"):
        fields[name] = _resolve_path(fields[name], root)
    fields["beam_args"] = [_resolve_beam_arg(a, root) for a in fields["beam_args"]]
    fields["columns"] = check_columns(fields["columns"], f"{path}: columns")
    fields["emulator"] = _check_emulator(fields["emulator"], path)
    return JobConfig(config_path=os.path.abspath(path), **fields)


def _check_emulator(knobs: Dict[str, Any], path: str) -> Dict[str, Any]:
    import difflib

    from embed_emulator.config import EmulatorConfig

    known = [f.name for f in dataclasses.fields(EmulatorConfig)]
    for name in knobs:
        if name not in known:
            near = difflib.get_close_matches(str(name), known, n=1)
            raise ConfigError(f"{path}: unknown setting `emulator.{name}`"
                              + (f" (did you mean emulator.{near[0]}?)" if near else ""))
    return dict(knobs)


_PATH_FLAGS = ("--setup_file", "--requirements_file", "--extra_package")


def _resolve_beam_arg(arg: str, base: str) -> str:
    """`--setup_file=./setup.py` in a config means the file beside the config's project, not the caller's."""
    name, _, value = arg.partition("=")
    if name in _PATH_FLAGS and value:
        return f"{name}={_resolve_path(value, base)}"
    return arg


def check_columns(columns: Any, where: str) -> Dict[str, str]:
    """`columns:` maps manifest columns onto the job's fields; every target must be one."""
    import difflib

    from transforms.records import INPUT_FIELDS

    if not isinstance(columns, dict):
        raise ConfigError(f"{where} must map manifest columns to fields, e.g. {{description: text}}")
    for source, target in columns.items():
        if target not in INPUT_FIELDS:
            near = difflib.get_close_matches(str(target), INPUT_FIELDS, n=1)
            raise ConfigError(f"{where} maps {source!r} to {target!r}, which is not a manifest field"
                              + (f" (did you mean {near[0]}?)" if near else f"; use one of {', '.join(INPUT_FIELDS)}"))
    targets = list(columns.values())
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise ConfigError(f"{where} maps two columns to {twice[0]!r}; keep one")
    return {str(k): str(v) for k, v in columns.items()}


def _is_secret_flag(arg: str) -> bool:
    name = arg.split("=", 1)[0].lower()
    if not name.startswith("--"):
        return False
    normalized = name.replace("-", "_").strip("_")
    # Any spelling of an API key flag (--api-key, --twelve_labs_api_key, --x_api_key, ...).
    return name in _SECRET_FLAGS or "api_key" in normalized or "apikey" in normalized


def _refuse_secret_flags(argv: Sequence[str]) -> None:
    for arg in argv:
        if _is_secret_flag(arg):
            raise SystemExit(
                f"error: {arg.split('=', 1)[0]} is refused: a key on the command line lands in shell history, "
                "process lists and logs. Set TWELVE_LABS_API_KEY in the environment, or name a file holding "
                "the key in the config as `api.key_file`.")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Embed the texts, images and audio listed in manifests with the TwelveLabs embed API "
                    "and write segment vectors to Parquet. Unknown flags go to Beam (--runner, ...).",
        epilog="examples:\n"
               "  python -m pipeline --config configs/local.yaml\n"
               "  python -m pipeline --config configs/twelvelabs.yaml --manifest 'data/*.jsonl' --output out/\n"
               "  python -m pipeline --config configs/twelvelabs.yaml --manifest big.csv --dry-run\n"
               "  python -m pipeline --config configs/local.yaml --no-pack --direct_num_workers=2\n"
               "  python -m pipeline search --text 'a dog in a park' -k 5   (nearest rows of an output)\n"
               "  python -m pipeline config   (every config key: type, range, default, meaning)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    parser.add_argument("--manifest", action="append", help="manifest path or glob; repeat for several "
                        "(replaces the config's list)")
    parser.add_argument("--output", help="output folder (local or any Beam FileSystems URL)")
    parser.add_argument("--model", choices=list(MODEL_DIMS))
    parser.add_argument("--api-version", choices=["auto", "v1", "v2"],
                        help="v1 (POST /embed, packed), v2 (POST /embed-v2 and tasks), or auto (default: v1 where "
                             "the model and modality allow it, v2 for video and marengo3.5)")
    parser.add_argument("--embedding-dimension", type=int, choices=[128, 256, 512],
                        help="marengo3.5 only: the vector size")
    parser.add_argument("--base-url", help="API base URL, or 'embedded' for the in-process emulator")
    parser.add_argument("--requests-per-minute", type=float, help="the account's limit, shared by all workers")
    parser.add_argument("--max-in-flight", type=int, help="concurrent calls per worker process")
    parser.add_argument("--no-pack", action="store_true", help="one item per call instead of packing")
    parser.add_argument("--json", action="store_true", help="print the plan (--dry-run) or the summary as JSON")
    parser.add_argument("--no-wait", action="store_true",
                        help="submit the job and exit without waiting (a Dataflow Flex Template launch must); the "
                             "next run finalizes this one's output; the output's claim covers the submission only")
    parser.add_argument("--retry-dead-letters", action="store_true",
                        help="call again the items an earlier run's API refused for good (by default they are "
                             "reported again without a call until their content changes)")
    parser.add_argument("--column", action="append", metavar="COLUMN=FIELD",
                        help="map a manifest column onto a field, e.g. --column description=text (repeatable; "
                             "adds to the config's `columns:`)")
    parser.add_argument("--max-calls", type=int, help="make at most this many calls, defer the rest to the next run")
    parser.add_argument("--dry-run", action="store_true", help="read, validate, skip, dedup and pack; print the "
                        "plan (calls needed, time at the rate and daily quota) and call nothing")
    return parser


def parse_args(argv: Sequence[str]) -> Tuple[JobConfig, List[str]]:
    """Returns the config with overrides applied, and the flags left for Beam."""
    _refuse_secret_flags(argv)
    args, beam_args = build_arg_parser().parse_known_args(list(argv))
    config = load_config(args.config)
    here = os.getcwd()
    if args.manifest:
        config.manifests = [_resolve_path(m, here) for m in args.manifest]
    if args.output:
        config.output = _resolve_path(args.output, here)
    if args.model:
        config.model = args.model
    if args.api_version:
        config.api_version = args.api_version
    if args.embedding_dimension is not None:
        config.embedding_dimension = args.embedding_dimension
    if args.base_url:
        config.base_url = args.base_url
    if args.requests_per_minute is not None:
        config.requests_per_minute = args.requests_per_minute
    if args.max_in_flight is not None:
        config.max_in_flight = args.max_in_flight
    if args.no_pack:
        config.pack = False
    if args.retry_dead_letters:
        config.retry_dead_letters = True
    if args.json:
        config.json_output = True
    if args.no_wait:
        config.no_wait = True
    if args.column:
        pairs = {}
        for given in args.column:
            source, sep, target = given.partition("=")
            if not sep or not source or not target:
                raise ConfigError(f"--column {given!r}: write COLUMN=FIELD, e.g. --column description=text")
            pairs[source] = target
        config.columns = check_columns({**config.columns, **pairs}, "--column")
    if args.max_calls is not None:
        config.max_calls = args.max_calls
    if args.dry_run:
        config.dry_run = True
    config.beam_args = config.beam_args + beam_args
    return config, beam_args
