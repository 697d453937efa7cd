"""What a calling step needs to know: the model, endpoint, pacing, retry bounds and how to find the key."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple

from apache_beam.io.filesystems import FileSystems

from embed_client import API_KEY_ENV, EmbedClient
from embed_client.retry import RetryPolicy
from embed_client.secrets import InvalidApiKey, check_api_key, redact_url
from transforms.models import API_VERSIONS, MODEL_DIMS, MODELS, V1_MODELS, V2_MODELS, uses_v2
from transforms.models import model as lookup_model

__all__ = ["DEFAULTS", "RATE_LIMIT_CATEGORIES", "SETTINGS", "Setting", "ApiKeyRejected", "CallSettings",
           "CategoryLimit", "ConfigError", "EmbeddingSettings", "category_limits_from", "limits_in_force", "make_client",
           "resolve_api_key", "settings_from"]

_OPTIONS = ("visual", "audio", "transcription")
_SCOPES = ("clip", "asset")
_TYPES = ("separate_embedding", "fused_embedding")


# Every setting once: its config key, the field it fills, type, range, default and meaning. The job's config
# (pipeline.config.JobConfig), the calling step's CallSettings and the public TwelveLabsOptions take their
# defaults from here; `python -m pipeline config` prints it.
@dataclasses.dataclass(frozen=True)
class Setting:
    key: str                    # dotted path in the YAML file
    field: str                  # the JobConfig (and CallSettings, TwelveLabsOptions) attribute it fills
    kind: str                   # str | int | float | bool | list | map | path | paths
    default: Any
    doc: str
    choices: Optional[Tuple[Any, ...]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    optional: bool = False      # None allowed (and the default)


# The embed endpoints' rate-limit categories (the platform's rate-limits page; assets is the fifth, with its own
# `assets.requests_per_minute`), and what each may state. Any one set turns on per-category pacing: one bucket
# each, at its own rate or else calls.requests_per_minute.
RATE_LIMIT_CATEGORIES = ("text", "image", "audio", "video")
_CATEGORY_LIMITS = (
    ("requests_per_minute", "float", 0.001, "the account's {category} embeddings per minute, shared by all workers "
     "(unset: calls.requests_per_minute, one bucket per category; none set: one bucket for all)"),
    ("requests_per_day", "int", 1, "the account's {category} embeddings per day (--dry-run's days estimate; else "
     "calls.requests_per_day)"),
    ("media_minutes_per_hour", "float", 0.001, "{category} minutes per hour, shared by all workers (unset: "
     "calls.media_minutes_per_hour, v2)"),
    ("media_minutes_per_day", "float", 0.001, "{category} minutes per day (shown with the limits in force; "
     "nothing is paced or estimated from it)"),
)

SETTINGS: Tuple[Setting, ...] = (
    Setting("model", "model", "str", "marengo3.0", "the embedding model", choices=tuple(MODEL_DIMS)),
    Setting("manifests", "manifests", "paths", [], "manifest paths or globs (JSONL, CSV, Parquet; any FileSystems "
            "scheme); relative to this file's folder"),
    Setting("columns", "columns", "map", {}, "manifest column -> field (id, text, image_file, ...), e.g. "
            "{description: text}"),
    Setting("samples", "samples", "path", None, "folder of generated sample media and manifests (local config)",
            optional=True),
    Setting("output.path", "output", "path", "output", "output folder (local or any FileSystems URL)"),
    Setting("output.flush_sec", "flush_sec", "float", None, "commit a piece at least this often (unset: 5 s plus a "
            "journal of every result, beside a local output or on the worker's disk for an object store; 0: a "
            "piece per call's results, no journal)", low=0, optional=True),
    Setting("output.rows_per_piece", "rows_per_piece", "int", 4096, "commit a piece when it holds this many "
            "items", low=1),
    Setting("api.base_url", "base_url", "str", "embedded", "API base URL ending in /v1.3, or `embedded` for the "
            "in-process emulator"),
    Setting("api.key_file", "key_file", "path", None, "file holding the API key (else TWELVE_LABS_API_KEY)",
            optional=True),
    Setting("api.version", "api_version", "str", "auto", "v1, v2, or auto (v1 where it can, v2 for video and "
            "marengo3.5)", choices=API_VERSIONS),
    Setting("api.connect_timeout_sec", "connect_timeout_sec", "float", 10.0, "seconds to connect", low=0.001),
    Setting("api.read_timeout_sec", "read_timeout_sec", "float", 120.0, "seconds to wait for an answer",
            low=0.001),
    Setting("calls.requests_per_minute", "requests_per_minute", "float", None, "the account's limit, shared by "
            "all workers (unset: learned from the first 429 that states it)", low=0.001, optional=True),
    Setting("calls.requests_per_day", "requests_per_day", "int", None, "the account's daily quota (for "
            "--dry-run's days estimate; with rate_limit.<category>.*, each category's unless it sets its own)",
            low=1, optional=True),
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
            choices=tuple(sorted({d for m in MODELS for d in m.dimension_choices})), optional=True),
    Setting("embedding.options", "embedding_options", "list", None, "v2 audio/video: some of visual, audio, "
            "transcription", optional=True),
    Setting("embedding.scopes", "embedding_scopes", "list", None, "v2 audio/video: some of clip, asset",
            optional=True),
    Setting("embedding.type", "embedding_type", "list", None, "v2: separate_embedding and/or fused_embedding",
            optional=True),
    Setting("embedding.segmentation", "segmentation", "map", None, "v2: {strategy: fixed, duration_sec: 2..10} or "
            "{strategy: dynamic, min_duration_sec: 2..5}", optional=True),
    Setting("assets.upload", "asset_upload", "str", "auto", "local or FileSystems audio/video files through the "
            "Assets API: auto (files past the inline base64 limit) or always (every audio/video file)",
            choices=("auto", "always")),
    Setting("assets.delete_after_run", "delete_assets_after_run", "bool", False, "delete the assets this job "
            "uploaded once the run's vectors are committed (false: keep them, so a rerun with other options or a "
            "moved row reuses them without uploading again; never deletes an `asset_id` row's asset)"),
    Setting("assets.direct_upload_max_bytes", "direct_upload_max_bytes", "int", 200 * 1024 * 1024, "files up to "
            "this size are uploaded in one request, larger ones by a multipart session that resumes chunk by chunk "
            "after a kill (0: every upload multipart; the platform takes up to 200 MB in one request)", low=0,
            high=200 * 1024 * 1024),
    Setting("assets.max_parallel_chunks", "max_parallel_chunks", "int", 4, "chunk PUTs of multipart uploads "
            "in flight per worker process", low=1, high=64),
    Setting("assets.requests_per_minute", "assets_requests_per_minute", "float", None, "the account's limit of "
            "the assets category (create, status, report, delete), shared by all workers (unset: not paced)",
            low=0.001, optional=True),
    Setting("assets.ready_timeout_sec", "asset_ready_timeout_sec", "float", 1800.0, "wait this long in one run "
            "for an uploaded asset to be ready, then defer its item (the asset is kept)", low=0.001),
    Setting("assets.poll_sec", "asset_poll_sec", "float", 2.0, "first wait between polls of an asset's status "
            "(grows 1.5x to 30 s)", low=0.001),
    Setting("rate_limit.backend", "rate_limit_backend", "str", "local", "local (each worker paces to its share) "
            "or redis (one limit shared through Redis)", choices=("local", "redis")),
    Setting("rate_limit.redis_url", "redis_url", "str", None, "redis://HOST:PORT/DB for the redis backend",
            optional=True),
    Setting("rate_limit.key", "rate_limit_key", "str", "tl-embed:ratelimit", "the Redis key of the shared limit"),
    Setting("exit_codes.dead_letters", "dead_letters_exit_code", "int", 3, "the exit status of a run whose new "
            "dead letters are its only problem (README \"Exit codes\"); the sample config sets 0, its bad rows are "
            "on purpose", choices=(0, 3)),
    *(Setting(f"rate_limit.{category}.{name}", f"{category}_{name}", kind, None, doc.format(category=category),
              low=low, optional=True)
      for category in RATE_LIMIT_CATEGORIES
      for name, kind, low, doc in _CATEGORY_LIMITS
      if category in ("audio", "video") or not name.startswith("media_")),
    Setting("calls.pack_waits_for_every_category", "pack_waits_for_every_category", "bool", False, "v1 with "
            "per-category limits: a packed call waits until every category it touches has a turn (true), or sends "
            "the items whose categories have one now and keeps the rest for later (false)"),
    Setting("index.lancedb", "index_lancedb", "bool", False, "keep a LanceDB table of the output's segments in "
            "step with the Parquet after every run (README \"A vector index beside the Parquet\"); `search` "
            "queries it"),
    Setting("index.path", "index_path", "path", None, "where the LanceDB table lives (unset: OUTPUT/lancedb; a "
            "local folder or s3://)", optional=True),
    Setting("index.ann_min_rows", "index_ann_min_rows", "int", 100_000, "build an ANN index once the table holds "
            "this many rows (below it LanceDB's exact search is fast enough)", low=1),
    Setting("beam.args", "beam_args", "list", [], "flags for Beam (--runner=..., --setup_file=...)"),
    Setting("emulator", "emulator", "map", {}, "the embedded emulator's knobs (python -m embed_emulator --help)"),
)
# The default of each field, for the dataclasses that carry settings.
DEFAULTS: Dict[str, Any] = {s.field: s.default for s in SETTINGS}


class ConfigError(ValueError):
    """A setting that cannot work, found before any call; the message names the setting and the fix."""


@dataclasses.dataclass(frozen=True)
class EmbeddingSettings:
    """v2's `embedding` block: the vector size (3.5) and what audio/video calls ask for (None: the API default)."""

    dimension: Optional[int] = None
    options: Optional[Tuple[str, ...]] = None        # embedding_option: visual, audio, transcription
    scopes: Optional[Tuple[str, ...]] = None         # embedding_scope: clip, asset
    type: Optional[Tuple[str, ...]] = None           # embedding_type: separate_embedding, fused_embedding
    segmentation: Optional[str] = None               # JSON of {"strategy": "fixed"|"dynamic", ...}

    def segmentation_dict(self) -> Optional[Dict[str, Any]]:
        return None if self.segmentation is None else json.loads(self.segmentation)

    def signature(self) -> str:
        """What changes the vectors of an audio/video item: part of its content key."""
        return json.dumps([self.options, self.scopes, self.type, self.segmentation])

    def check(self, model: str) -> None:
        if self.dimension is not None:
            choosing = [m.name for m in MODELS if m.dimension_choices]
            if model not in choosing:
                raise ConfigError(f"embedding.dimension is for {' and '.join(choosing)} only ({model} vectors are "
                                  f"{MODEL_DIMS.get(model)}-d); remove it or use model: {choosing[0]}")
            choices = lookup_model(model).dimension_choices
            if self.dimension not in choices:
                raise ConfigError(f"embedding.dimension must be one of {list(choices)}, got {self.dimension!r}")
        for name, values, allowed in (("options", self.options, _OPTIONS), ("scopes", self.scopes, _SCOPES),
                                      ("type", self.type, _TYPES)):
            if values is None:
                continue
            if not values:
                raise ConfigError(f"embedding.{name} must not be empty; leave it out for the API's default")
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ConfigError(f"embedding.{name} has {bad[0]!r}; use some of {list(allowed)}")
        if self.options and "transcription" in self.options and not lookup_model(model).transcription:
            with_it = " and ".join(m.name for m in MODELS if m.transcription)
            raise ConfigError(f"embedding.options 'transcription' is served by {with_it} only")
        if self.type and "fused_embedding" in self.type and (self.options is None or len(self.options) < 2):
            raise ConfigError("embedding.type fused_embedding needs two or more embedding.options")
        seg = self.segmentation_dict()
        if seg is not None:
            strategy = seg.get("strategy")
            ranges = {"fixed": ("duration_sec", 2, 10), "dynamic": ("min_duration_sec", 2, 5)}
            if strategy not in ranges or set(seg) - {"strategy", ranges[strategy][0]}:
                raise ConfigError("embedding.segmentation must be {strategy: fixed, duration_sec: 2..10} or "
                                  "{strategy: dynamic, min_duration_sec: 2..5}")
            field, low, high = ranges[strategy]
            value = seg.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not low <= value <= high):
                raise ConfigError(f"embedding.segmentation.{field} must be a number from {low} to {high}, "
                                  f"got {value!r}")


@dataclasses.dataclass(frozen=True)
class CategoryLimit:
    """One rate-limit category's stated limits (None: not stated)."""

    category: str
    requests_per_minute: Optional[float] = None
    requests_per_day: Optional[int] = None
    media_minutes_per_hour: Optional[float] = None
    media_minutes_per_day: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "category" and v is not None}


def category_limits_from(source: Any) -> Tuple[CategoryLimit, ...]:
    """The per-category limits a settings holder states (its `rate_limit.<category>.*` fields), in table order."""
    limits = []
    for category in RATE_LIMIT_CATEGORIES:
        values = {name: getattr(source, f"{category}_{name}", None) for name, _, _, _ in _CATEGORY_LIMITS}
        if any(v is not None for v in values.values()):
            limits.append(CategoryLimit(category, **values))
    return tuple(limits)


class ApiKeyRejected(RuntimeError):
    """401/403 from the API: every other call would fail the same way, so the job stops."""


@dataclasses.dataclass(frozen=True)
class CallSettings:
    base_url: str
    model: str
    requests_per_minute: Optional[float] = DEFAULTS["requests_per_minute"]
    max_workers: int = DEFAULTS["max_workers"]                 # the per-process pace is requests_per_minute / max_workers
    max_in_flight: int = DEFAULTS["max_in_flight"]
    connect_timeout_sec: float = DEFAULTS["connect_timeout_sec"]
    read_timeout_sec: float = DEFAULTS["read_timeout_sec"]
    max_attempts: int = DEFAULTS["max_attempts"]
    item_deadline_sec: float = DEFAULTS["item_deadline_sec"]
    initial_backoff_sec: float = 0.5
    max_backoff_sec: float = 30.0
    key_file: Optional[str] = DEFAULTS["key_file"]
    # A budget of calls for the whole run (shared as max_calls / max_workers per process); None: no budget.
    max_calls: Optional[int] = DEFAULTS["max_calls"]
    # Scopes the process-wide quota state to one run.
    run_id: str = ""
    # "local": each process paces to requests_per_minute / max_workers; "redis": one limit shared by
    # every worker through the Redis server at redis_url (falls back to "local" if unreachable).
    rate_limit_backend: str = DEFAULTS["rate_limit_backend"]
    redis_url: Optional[str] = DEFAULTS["redis_url"]
    rate_limit_key: str = DEFAULTS["rate_limit_key"]
    # Where per-second call counts go for the run report (None: nowhere).
    timeline_dir: Optional[str] = None
    # Only for the embedded emulator, which accepts any key: not a secret.
    placeholder_key: Optional[str] = None
    api_version: str = DEFAULTS["api_version"]
    embedding: EmbeddingSettings = EmbeddingSettings()
    # v2 async tasks: how long this run polls one before deferring it (the task id is kept, so the next
    # run polls it again), the first wait between polls, and how many tasks one worker polls at once.
    task_deadline_sec: float = DEFAULTS["task_deadline_sec"]
    task_poll_sec: float = DEFAULTS["task_poll_sec"]
    max_tasks_in_flight: int = DEFAULTS["max_tasks_in_flight"]
    task_retention_sec: float = 7 * 86400.0
    # After this many attempts in a row fail for the service's reason (connection refused, DNS, timeouts,
    # 5xx, 404 on the endpoint itself), a worker stops calling and defers the rest (0: never).
    outage_after_failures: int = DEFAULTS["outage_after_failures"]
    # The account's audio/video minutes per hour (the API's DPH limit), shared by all workers; None: not paced.
    media_minutes_per_hour: Optional[float] = DEFAULTS["media_minutes_per_hour"]
    asset_upload: str = DEFAULTS["asset_upload"]
    delete_assets_after_run: bool = DEFAULTS["delete_assets_after_run"]
    direct_upload_max_bytes: int = DEFAULTS["direct_upload_max_bytes"]
    max_parallel_chunks: int = DEFAULTS["max_parallel_chunks"]
    assets_requests_per_minute: Optional[float] = DEFAULTS["assets_requests_per_minute"]
    asset_ready_timeout_sec: float = DEFAULTS["asset_ready_timeout_sec"]
    asset_poll_sec: float = DEFAULTS["asset_poll_sec"]
    # Per-category limits (rate_limit.<category>.*); empty: one bucket for every category, as before.
    category_limits: Tuple[CategoryLimit, ...] = ()
    pack_waits_for_every_category: bool = DEFAULTS["pack_waits_for_every_category"]

    def __post_init__(self):
        if self.model not in MODEL_DIMS:
            raise ConfigError(f"unknown model {self.model!r}; use one of {sorted(MODEL_DIMS)}")
        if self.api_version not in API_VERSIONS:
            raise ConfigError(f"api.version must be one of {list(API_VERSIONS)}, got {self.api_version!r}")
        if self.api_version == "v1" and self.model not in V1_MODELS:
            raise ConfigError(f"{self.model} is served by Embed API v2 only: set api.version to v2 or leave it unset")
        if self.api_version == "v2" and self.model not in V2_MODELS:
            raise ConfigError(f"{self.model} is served by Embed API v1 only: set api.version to v1 or leave it "
                              f"unset, or use {' or '.join(V2_MODELS)}")
        self.embedding.check(self.model)
        if self.outage_after_failures < 0:
            raise ConfigError("calls.outage_after_failures must be >= 0 (0: never stop)")
        if self.media_minutes_per_hour is not None and self.media_minutes_per_hour <= 0:
            raise ConfigError("calls.media_minutes_per_hour must be > 0 (or left out)")
        if self.task_deadline_sec <= 0 or self.task_poll_sec <= 0 or self.max_tasks_in_flight < 1:
            raise ConfigError("calls.task_deadline_sec and calls.task_poll_sec must be > 0 and "
                              "calls.max_tasks_in_flight >= 1")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if self.requests_per_minute is not None and self.requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        if self.rate_limit_backend not in ("local", "redis"):
            raise ValueError(f"rate_limit.backend must be 'local' or 'redis', got {self.rate_limit_backend!r}")
        if self.rate_limit_backend == "redis" and not self.redis_url:
            raise ValueError("rate_limit.backend 'redis' needs rate_limit.redis_url")
        if self.max_calls is not None and self.max_calls < 0:
            raise ValueError("max_calls must be >= 0")
        for limit in self.category_limits:
            if limit.category not in RATE_LIMIT_CATEGORIES:
                raise ConfigError(f"unknown rate-limit category {limit.category!r}; use one of "
                                  f"{', '.join(RATE_LIMIT_CATEGORIES)}")
            for name, value in limit.as_dict().items():
                if value <= 0:
                    raise ConfigError(f"rate_limit.{limit.category}.{name} must be > 0 (or left out)")
        self.retry_policy()  # validates the retry bounds

    @property
    def per_category(self) -> bool:
        """Whether calls are paced per rate-limit category (any rate_limit.<category>.* set)."""
        return bool(self.category_limits)

    def category_limit(self, category: str) -> CategoryLimit:
        return next((c for c in self.category_limits if c.category == category), CategoryLimit(category))

    def category_rate(self, category: str) -> Optional[float]:
        """The per-minute limit of a category's bucket: its own, else the one number for every category."""
        own = self.category_limit(category).requests_per_minute
        return own if own is not None else self.requests_per_minute

    def category_media_minutes(self, category: str) -> Optional[float]:
        own = self.category_limit(category).media_minutes_per_hour
        return own if own is not None else self.media_minutes_per_hour

    def limits_in_force(self) -> Dict[str, Any]:
        return limits_in_force(self)

    @property
    def dims(self) -> int:
        """The length of every vector this job writes."""
        return self.embedding.dimension or MODEL_DIMS[self.model]

    def uses_v2(self, modality: str) -> bool:
        """Whether items of this modality go to Embed API v2."""
        return uses_v2(self.model, self.api_version, modality)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.item_deadline_sec, self.initial_backoff_sec, self.max_backoff_sec)


def limits_in_force(source: Any) -> Dict[str, Any]:
    """What paces the calls of a settings holder (JobConfig, CallSettings), per category: for `--dry-run --json`,
    the summary and the report."""
    rpm, media = getattr(source, "requests_per_minute", None), getattr(source, "media_minutes_per_hour", None)
    limits = getattr(source, "category_limits", None)
    limits = category_limits_from(source) if limits is None else limits
    if not limits:
        return {"per_category": False, "all": {"requests_per_minute": rpm, "requests_per_day":
                                               getattr(source, "requests_per_day", None),
                                               "media_minutes_per_hour": media}}
    own = {c.category: c for c in limits}
    out: Dict[str, Any] = {"per_category": True}
    for category in RATE_LIMIT_CATEGORIES:
        limit = own.get(category, CategoryLimit(category))
        rpd = getattr(source, "requests_per_day", None) if limit.requests_per_day is None else limit.requests_per_day
        entry = {"requests_per_minute": rpm if limit.requests_per_minute is None else limit.requests_per_minute,
                 "requests_per_day": rpd}
        if category in ("audio", "video"):
            entry["media_minutes_per_hour"] = media if limit.media_minutes_per_hour is None else \
                limit.media_minutes_per_hour
            entry["media_minutes_per_day"] = limit.media_minutes_per_day
        out[category] = entry
    out["assets"] = {"requests_per_minute": getattr(source, "assets_requests_per_minute", None)}
    return out


def settings_from(source: Any, **derived: Any) -> CallSettings:
    """CallSettings from any object holding settings by their table names (the job's config, the public
    options), plus the values derived from them; a setting is named once, so it is mapped once."""
    if "category_limits" not in derived and not hasattr(source, "category_limits"):
        derived = dict(derived, category_limits=category_limits_from(source))
    names = {f.name for f in dataclasses.fields(CallSettings)} - set(derived)
    given = {name: getattr(source, name) for name in names if hasattr(source, name)}
    return CallSettings(**given, **derived)


def make_client(settings: CallSettings, max_connections: Optional[int] = None) -> EmbedClient:
    """The API client of these settings: key, endpoint and timeouts, in one place for every caller."""
    return EmbedClient(api_key=resolve_api_key(settings), base_url=settings.base_url,
                       timeout=(settings.connect_timeout_sec, settings.read_timeout_sec),
                       max_connections=max_connections or settings.max_in_flight)


def resolve_api_key(settings: CallSettings) -> str:
    """The key from the environment, else the key file, else the emulator's placeholder."""
    try:
        key = check_api_key(os.environ.get(API_KEY_ENV), API_KEY_ENV)
        if not key and settings.key_file:
            with FileSystems.open(os.path.expanduser(settings.key_file)) as f:
                raw = f.read().decode("utf-8", "replace")
            key = check_api_key(raw, f"api.key_file ({redact_url(settings.key_file)})")
    except InvalidApiKey as exc:
        raise ApiKeyRejected(str(exc)) from None
    if not key and settings.placeholder_key:
        key = settings.placeholder_key
    if not key:
        raise ApiKeyRejected(f"No API key: set {API_KEY_ENV} on every worker or `api.key_file` in the config.")
    return key
