"""What a calling step needs to know: the model, endpoint, pacing, retry bounds and how to find the key."""
from __future__ import annotations

import dataclasses
import os
import json
from typing import Any, Dict, Optional, Tuple

from apache_beam.io.filesystems import FileSystems

from embed_client import API_KEY_ENV
from embed_client.retry import RetryPolicy
from embed_client.secrets import InvalidApiKey, check_api_key, redact_url
from transforms.models import MODEL_DIMS

__all__ = ["API_VERSIONS", "ApiKeyRejected", "CallSettings", "ConfigError", "EmbeddingSettings",
           "V2_MODELS", "resolve_api_key"]

# Models Embed API v2 serves; Marengo 2.7 is v1 only, Marengo 3.5 is v2 only.
V2_MODELS = ("marengo3.0", "marengo3.5")
V1_MODELS = ("marengo3.0", "marengo2.7", "Marengo-retrieval-2.7")
# auto: v1 (packed, cheapest) where the model and modality allow it, v2 for video and Marengo 3.5.
API_VERSIONS = ("auto", "v1", "v2")
DIMENSIONS_35 = (128, 256, 512)
_OPTIONS = ("visual", "audio", "transcription")
_SCOPES = ("clip", "asset")
_TYPES = ("separate_embedding", "fused_embedding")


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
            if model != "marengo3.5":
                raise ConfigError(f"embedding.dimension is for marengo3.5 only ({model} vectors are "
                                  f"{MODEL_DIMS.get(model)}-d); remove it or use model: marengo3.5")
            if self.dimension not in DIMENSIONS_35:
                raise ConfigError(f"embedding.dimension must be one of {list(DIMENSIONS_35)}, got {self.dimension!r}")
        for name, values, allowed in (("options", self.options, _OPTIONS), ("scopes", self.scopes, _SCOPES),
                                      ("type", self.type, _TYPES)):
            if values is None:
                continue
            if not values:
                raise ConfigError(f"embedding.{name} must not be empty; leave it out for the API's default")
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ConfigError(f"embedding.{name} has {bad[0]!r}; use some of {list(allowed)}")
        if self.options and "transcription" in self.options and model == "marengo3.5":
            raise ConfigError("embedding.options 'transcription' is served by marengo3.0 only")
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


class ApiKeyRejected(RuntimeError):
    """401/403 from the API: every other call would fail the same way, so the job stops."""


@dataclasses.dataclass(frozen=True)
class CallSettings:
    base_url: str
    model: str
    requests_per_minute: Optional[float] = None
    max_workers: int = 1                 # the per-process pace is requests_per_minute / max_workers
    max_in_flight: int = 8
    connect_timeout_sec: float = 10.0
    read_timeout_sec: float = 120.0
    max_attempts: int = 6
    item_deadline_sec: float = 300.0
    initial_backoff_sec: float = 0.5
    max_backoff_sec: float = 30.0
    key_file: Optional[str] = None
    # A budget of calls for the whole run (shared as max_calls / max_workers per process); None: no budget.
    max_calls: Optional[int] = None
    # Scopes the process-wide quota state to one run.
    run_id: str = ""
    # "local": each process paces to requests_per_minute / max_workers; "redis": one limit shared by
    # every worker through the Redis server at redis_url (falls back to "local" if unreachable).
    rate_limit_backend: str = "local"
    redis_url: Optional[str] = None
    rate_limit_key: str = "tl-embed:ratelimit"
    # Where per-second call counts go for the run report (None: nowhere).
    timeline_dir: Optional[str] = None
    # Only for the embedded emulator, which accepts any key: not a secret.
    placeholder_key: Optional[str] = None
    api_version: str = "auto"
    embedding: EmbeddingSettings = EmbeddingSettings()
    # v2 async tasks: how long this run polls one before deferring it (the task id is kept, so the next
    # run polls it again), the first wait between polls, and how many tasks one worker polls at once.
    task_deadline_sec: float = 3600.0
    task_poll_sec: float = 5.0
    max_tasks_in_flight: int = 32
    task_retention_sec: float = 7 * 86400.0
    # After this many attempts in a row fail for the service's reason (connection refused, DNS, timeouts,
    # 5xx, 404 on the endpoint itself), a worker stops calling and defers the rest (0: never).
    outage_after_failures: int = 20
    # The account's audio/video minutes per hour (the API's DPH limit), shared by all workers; None: not paced.
    media_minutes_per_hour: Optional[float] = None

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
        self.retry_policy()  # validates the retry bounds

    @property
    def dims(self) -> int:
        """The length of every vector this job writes."""
        return self.embedding.dimension or MODEL_DIMS[self.model]

    def uses_v2(self, modality: str) -> bool:
        """Whether items of this modality go to Embed API v2."""
        if self.api_version != "auto":
            return self.api_version == "v2"
        return self.model not in V1_MODELS or modality == "video"

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.item_deadline_sec, self.initial_backoff_sec, self.max_backoff_sec)


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
