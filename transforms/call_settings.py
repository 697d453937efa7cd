"""What a calling step needs to know: the model, endpoint, pacing, retry bounds and how to find the key."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from embed_client import API_KEY_ENV
from embed_client.retry import RetryPolicy
from embed_client.secrets import InvalidApiKey, check_api_key, redact_url

__all__ = ["MODEL_DIMS", "ApiKeyRejected", "CallSettings", "resolve_api_key"]

MODEL_DIMS = {"marengo3.0": 512, "marengo2.7": 1024, "Marengo-retrieval-2.7": 1024}


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

    def __post_init__(self):
        if self.model not in MODEL_DIMS:
            raise ValueError(f"unknown model {self.model!r}; use one of {sorted(MODEL_DIMS)}")
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
