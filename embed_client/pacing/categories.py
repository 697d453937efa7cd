"""Pacing per rate-limit category: the platform limits text, image, audio and video embeddings apart ("Endpoints
in the same category share a rate limit"), so a call takes a turn from the bucket of every category it touches.

`CategoryPacers.single(pacer)` is the one-bucket form (every category shares one limit, as
`calls.requests_per_minute` alone has always meant); `CategoryPacers(per_category)` keeps one bucket each, so a
429 or a stated limit of one category slows only that one.
"""
from __future__ import annotations

import math
import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from embed_client.errors import RateLimitInfo

__all__ = ["EMBED_CATEGORIES", "CategoryPacers", "named_category", "per_minute_limit"]

# The embed endpoints' categories (assets, the fifth, is paced by the uploader).
EMBED_CATEGORIES = ("text", "image", "audio", "video")
# A stated window that resets within this many seconds is the per-minute one (a daily reset is hours away).
_MINUTE_WINDOW_SEC = 61.0


def named_category(info: RateLimitInfo) -> Optional[str]:
    """The category an X-Ratelimit-Dimensions value names (`rpm:audio`, `tpm:video`), else None."""
    for part in (info.dimensions or "").replace(",", " ").split():
        _, sep, category = part.partition(":")
        if sep and category.strip().lower() in EMBED_CATEGORIES:
            return category.strip().lower()
    return None


def per_minute_limit(info: RateLimitInfo, now: Optional[float] = None) -> Optional[float]:
    """The limit an answer states, when its window resets within a minute (so it is the per-minute one)."""
    wait = info.wait_seconds(now)
    if info.limit and info.reset_at is not None and wait is not None and wait <= _MINUTE_WINDOW_SEC:
        return float(info.limit)
    return None


class CategoryPacers:
    """One pacer (any `embed_client.pacing.Pacer`) per category; several categories may share one.

    `share` divides a stated limit (the account's, for all workers) into this process's part; it is 1 for
    pacers that are shared across processes (Redis)."""

    def __init__(self, pacers: Mapping[str, object], share: float = 1.0):
        missing = [c for c in EMBED_CATEGORIES if c not in pacers]
        if missing:
            raise ValueError(f"no pacer for the categories {missing}")
        self._pacers: Dict[str, object] = dict(pacers)
        self.share = float(share)

    @classmethod
    def single(cls, pacer, share: float = 1.0) -> "CategoryPacers":
        """Every category paced by one bucket: one limit for the whole account."""
        return cls({c: pacer for c in EMBED_CATEGORIES}, share)

    @property
    def is_single(self) -> bool:
        return len({id(p) for p in self._pacers.values()}) == 1

    def pacer(self, category: str):
        return self._pacers.get(category) or self._pacers[EMBED_CATEGORIES[0]]

    def pacers(self) -> Dict[str, object]:
        return dict(self._pacers)

    def _distinct(self, categories: Iterable[str]) -> List[Tuple[str, object]]:
        """The pacers of `categories`, each once. No category (a task poll, which no category lists) is paced
        by the one bucket when there is one, and by none when each category has its own."""
        if not categories:
            return [(EMBED_CATEGORIES[0], self._pacers[EMBED_CATEGORIES[0]])] if self.is_single else []
        seen, out = set(), []
        for category in categories:
            pacer = self.pacer(category)
            if id(pacer) not in seen:
                seen.add(id(pacer))
                out.append((category, pacer))
        return out

    def acquire(self, categories: Sequence[str] = ()) -> float:
        """A turn from every category's bucket: each is reserved at once (going into debt as a single bucket
        does), then the caller waits for the latest. Returns the seconds waited."""
        distinct = self._distinct(categories)
        if len(distinct) == 1:
            return distinct[0][1].acquire()
        if not distinct:
            return 0.0
        waits = []
        for _, pacer in distinct:
            reserve = getattr(pacer, "_reserve", None)
            if reserve is None:  # a pacer that only blocks
                waits.append(pacer.acquire())
                continue
            waits.append(reserve())
        wait = max(waits, default=0.0)
        if wait > 0:
            time.sleep(wait)
        return wait

    def reserve(self, categories: Sequence[str] = ()) -> float:
        """Takes a turn from every category's bucket without sleeping; returns how long the caller must wait."""
        waits = []
        for _, pacer in self._distinct(categories):
            reserve = getattr(pacer, "_reserve", None)
            waits.append(reserve() if reserve is not None else pacer.acquire())
        return max(waits, default=0.0)

    def ready_in(self, categories: Sequence[str] = ()) -> float:
        """Seconds until every bucket of `categories` has a turn (0 when a pacer cannot tell)."""
        return max((float(getattr(p, "ready_in", lambda: 0.0)()) for _, p in self._distinct(categories)),
                   default=0.0)

    def on_rate_limited(self, categories: Sequence[str], info: RateLimitInfo, wait: Optional[float]) -> None:
        """A 429: slows the category it names (X-Ratelimit-Dimensions), else every category of the call."""
        named = named_category(info)
        limit = per_minute_limit(info)
        for _, pacer in self._distinct([named] if named else categories):
            pacer.on_rate_limited(wait, None if limit is None else limit / self.share)

    def on_success(self, categories: Sequence[str], info: Optional[RateLimitInfo] = None) -> None:
        """A call got through; a limit it states teaches its category's pace, when the answer is that of one
        category's bucket (a packed call's statement does not say which of its categories it is)."""
        targets = self._distinct(categories)
        for _, pacer in targets:
            pacer.on_success()
        if info is None or len(targets) != 1 or info.limit is None:
            return
        learn = getattr(targets[0][1], "on_stated", None)
        if learn is None:
            return
        limit = per_minute_limit(info)
        reset_in = info.wait_seconds()
        if limit is None and not (info.remaining == 0 and reset_in is not None and reset_in <= _MINUTE_WINDOW_SEC):
            return
        learn(None if limit is None else limit / self.share, info.remaining,
              reset_in if reset_in is not None and math.isfinite(reset_in) else None)

    def rates(self) -> Dict[str, Optional[float]]:
        """The pace of each category now (per minute, this process's part for local buckets)."""
        return {c: getattr(p, "current_rate_per_minute", None) for c, p in self._pacers.items()}
