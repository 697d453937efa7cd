"""Every knob of the emulator in one dataclass, with its default."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Optional

from .categories import check_category_limits

__all__ = ["EmulatorConfig"]


@dataclass(frozen=True)
class EmulatorConfig:
    """Emulator settings. Frozen: the running server swaps whole configs, so a
    request always sees one consistent snapshot."""

    # Auth: None accepts any non-empty x-api-key; otherwise the key must be listed.
    api_keys: Optional[Collection[str]] = None
    # Quotas (None = unlimited). The minute window slides; the day window is fixed.
    requests_per_minute: Optional[int] = None
    requests_per_day: Optional[int] = None
    # 86400 resets at UTC midnight; any other length counts from emulator start.
    day_length_sec: float = 86400.0
    # Added before answering every request that gets past the rate limits.
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    # Fault injection (probabilities per request, except modality errors: per item).
    fault_5xx_rate: float = 0.0
    fault_429_burst_rate: float = 0.0
    fault_429_burst_sec: float = 1.0
    fault_hang_rate: float = 0.0
    fault_hang_sec: float = 30.0
    fault_drop_rate: float = 0.0
    fault_malformed_rate: float = 0.0
    fault_modality_error_rate: float = 0.0
    seed: Optional[int] = None
    # Model behaviour the docs leave open (see rules.py).
    audio_segment_sec: float = 6.0
    max_audio_sec_30: float = 600.0
    fetch_timeout_sec: float = 10.0
    # Per-category limits, as the platform groups them by modality: {category: {dimension: limit}} with
    # categories text, image, audio, video, assets and dimensions rpm (sliding minute), rpd (day window as
    # requests_per_day's), and for audio/video dph, dpd (media minutes per UTC hour / day). A call takes from
    # every category it touches; a 429 names `dimension:category` in X-Ratelimit-Dimensions. These apply on top
    # of requests_per_minute/_day (the embed endpoints' shared limit). None = no per-category limit.
    category_limits: Optional[Mapping[str, Mapping[str, float]]] = None
    # Whether answers state the limit (X-Ratelimit-Limit/-Remaining/-Used/-Reset); Retry-After is always sent.
    rate_limit_headers: bool = True
    # Count embedded items by content key, so tests can spot double work.
    record_keys: bool = True

    # ---- Embed API v2 (/v1.3/embed-v2, see v2/) ----
    # Audio/video minutes embedded (sync calls and created tasks), None = unlimited. Exceeding
    # one answers 429 with X-Ratelimit-Dimensions dph / dpd. The hour window is the UTC hour;
    # the day window is the same as requests_per_day's (day_length_sec).
    media_minutes_per_hour: Optional[float] = None
    media_minutes_per_day: Optional[float] = None
    # Longest audio/video a marengo3.0 sync call takes (documented: 10 minutes); over it, 413.
    max_sync_media_sec_30: float = 600.0
    # An async task turns ready (or failed) this long after it was created.
    task_ready_after_sec: float = 2.0
    # Share of tasks that end `failed` with a platform-like error.message (seeded by `seed`).
    task_failure_rate: float = 0.0
    # Tasks older than this are gone: 404 on retrieve, absent from the list (documented: 7 days).
    task_retention_sec: float = 7 * 86400.0
    # Asset ids a media_source.asset_id may name, mapped to local file paths. Assets uploaded
    # through /v1.3/assets resolve too (see assets/); any other id is a 400 resource_not_exist.
    assets: Optional[Mapping[str, str]] = None

    # ---- Assets and multipart uploads (/v1.3/assets..., see assets/) ----
    # An uploaded asset stays `processing` at least this long after its bytes are in.
    asset_processing_sec: float = 0.2
    # The chunk_size a multipart session gets (the platform picks it; tests set small ones).
    asset_chunk_size: int = 5 * 1024 * 1024
    # How many presigned URLs a new session carries; the rest come from /presigned-urls.
    asset_initial_urls: int = 10
    # Lifetime of a presigned chunk URL (documented: one hour) and of a session (24 hours).
    asset_url_ttl_sec: float = 3600.0
    asset_session_ttl_sec: float = 86400.0
    # The assets rate-limit category (every /v1.3/assets... call, not chunk PUTs), None = unlimited.
    assets_requests_per_minute: Optional[int] = None
    # Chunk PUTs to presigned URLs: added delay before the answer, and share answered 500.
    chunk_put_delay_ms: float = 0.0
    chunk_put_fail_rate: float = 0.0
    # Every asset counts as referenced by indexed assets (the emulator has no indexes): DELETE /assets/{id}
    # answers 409 unless force=true, as the platform does for an asset that indexed assets reference.
    assets_referenced: bool = False
    # Parent folder of the per-instance folder that holds asset bytes (None: the system temp dir).
    asset_storage_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.api_keys is not None:
            keys = [self.api_keys] if isinstance(self.api_keys, str) else list(self.api_keys)
            object.__setattr__(self, "api_keys", frozenset(keys))
        for name in ("requests_per_minute", "requests_per_day", "assets_requests_per_minute"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value!r}")
        for f in dataclasses.fields(self):
            if f.name.endswith("_rate") and not 0.0 <= float(getattr(self, f.name)) <= 1.0:
                raise ValueError(f"{f.name} must be between 0 and 1, got {getattr(self, f.name)!r}")
        if self.day_length_sec <= 0 or self.audio_segment_sec <= 0:
            raise ValueError("day_length_sec and audio_segment_sec must be positive")
        for name in ("media_minutes_per_hour", "media_minutes_per_day"):
            value = getattr(self, name)
            if value is not None and not float(value) > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        for name in ("max_sync_media_sec_30", "task_retention_sec"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive")
        if float(self.task_ready_after_sec) < 0:
            raise ValueError("task_ready_after_sec must be >= 0")
        for name in ("asset_chunk_size", "asset_initial_urls"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("asset_url_ttl_sec", "asset_session_ttl_sec"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("asset_processing_sec", "chunk_put_delay_ms"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        object.__setattr__(self, "category_limits", check_category_limits(self.category_limits))
        if self.assets is not None:
            if not isinstance(self.assets, Mapping):
                raise ValueError("assets must map asset ids to file paths")
            object.__setattr__(self, "assets", {str(k): str(v) for k, v in self.assets.items()})

    def with_changes(self, **changes: Any) -> "EmulatorConfig":
        """A copy with some knobs changed; unknown names raise ValueError."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def public_dict(self) -> dict:
        """The config as JSON-able data, with API keys reduced to a count."""
        data = dataclasses.asdict(self)
        data["api_keys"] = None if self.api_keys is None else len(self.api_keys)
        return data
