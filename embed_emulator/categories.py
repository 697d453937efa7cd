"""Per-category rate limits, as the platform groups them ("Rate limits vary by modality. Endpoints in the
same category share a rate limit"): text, image, audio, video and assets, each with requests per minute
(sliding window) and per day, and for audio and video media minutes per hour and per day.

A call takes a slot in every category it touches (a packed v1 call with text and audio takes one of each);
any one spent is a 429 whose X-Ratelimit-Dimensions names the dimension and category (`rpm:audio`), as the
platform's `tpm:video` does.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .limits import Admission, MediaMinutesLimiter, RateLimiter, Refusal

__all__ = ["CATEGORIES", "CategoryLimiter", "MEDIA_CATEGORIES", "check_category_limits", "stated_headers",
           "v2_categories"]

CATEGORIES = ("text", "image", "audio", "video", "assets")
MEDIA_CATEGORIES = ("audio", "video")
# rpm/rpd: requests per minute/day; dph/dpd: audio or video minutes per hour/day.
_DIMENSIONS = ("rpm", "rpd", "dph", "dpd")


def check_category_limits(limits: Optional[Mapping[str, Mapping[str, float]]]) -> Optional[Dict[str, Dict[str, float]]]:
    """The validated {category: {dimension: limit}}; ValueError naming the bad entry."""
    if limits is None:
        return None
    if not isinstance(limits, Mapping):
        raise ValueError("category_limits must map a category (text, image, audio, video, assets) to its limits")
    checked: Dict[str, Dict[str, float]] = {}
    for category, dims in limits.items():
        if category not in CATEGORIES:
            raise ValueError(f"category_limits: unknown category {category!r} (known: {', '.join(CATEGORIES)})")
        if not isinstance(dims, Mapping):
            raise ValueError(f"category_limits.{category} must map rpm/rpd/dph/dpd to numbers")
        allowed = _DIMENSIONS if category in MEDIA_CATEGORIES else ("rpm", "rpd")
        entry = {}
        for dim, value in dims.items():
            if dim not in allowed:
                raise ValueError(f"category_limits.{category}: unknown limit {dim!r} (known: {', '.join(allowed)})")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0 or (dim in ("rpm", "rpd") and int(value) != value):
                raise ValueError(f"category_limits.{category}.{dim} must be a positive "
                                 f"{'integer' if dim in ('rpm', 'rpd') else 'number'}, got {value!r}")
            entry[dim] = int(value) if dim in ("rpm", "rpd") else float(value)
        checked[category] = entry
    return checked


def v2_categories(request: object) -> Tuple[str, ...]:
    """The categories a v2 JSON request touches (best effort: an unreadable body touches none, its 400 comes
    later). text_image and multi_input take from text and from each medium they carry."""
    if not isinstance(request, dict):
        return ()
    kind = request.get("input_type")
    if kind in ("text", "image", "audio", "video"):
        return (kind,)
    if kind == "text_image":
        return ("text", "image")
    if kind == "multi_input":
        found = ["text"]
        sources = (request.get("multi_input") or {}).get("media_sources") if isinstance(
            request.get("multi_input"), dict) else None
        for source in sources if isinstance(sources, list) else []:
            medium = source.get("media_type") if isinstance(source, dict) else None
            if medium in ("image", "audio", "video") and medium not in found:
                found.append(medium)
        return tuple(found)
    return ()


def stated_headers(candidates: Iterable[Dict[str, str]]) -> Dict[str, str]:
    """Of several limits' X-Ratelimit-* statements, the tightest (fewest remaining): the one a client must heed."""
    best: Dict[str, str] = {}
    for headers in candidates:
        if not headers:
            continue
        if not best or int(headers.get("X-Ratelimit-Remaining", 0)) < int(best.get("X-Ratelimit-Remaining", 0)):
            best = headers
    return dict(best)


class CategoryLimiter:
    """One request limiter per category and one media-minutes limiter per audio/video category."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._lock = threading.Lock()
        self._requests = {c: RateLimiter(clock) for c in CATEGORIES}
        self._media = {c: MediaMinutesLimiter(clock) for c in MEDIA_CATEGORIES}

    def reset(self) -> None:
        for limiter in (*self._requests.values(), *self._media.values()):
            limiter.reset()

    def admit(self, categories: Iterable[str], limits: Optional[Mapping[str, Mapping[str, float]]],
              day_length: float) -> Tuple[List[Tuple[str, Admission]], Optional[Refusal]]:
        """A slot in every category the call touches, or the first refusal (and no slot taken)."""
        taken: List[Tuple[str, Admission]] = []
        if not limits:
            return taken, None
        with self._lock:  # all or nothing across categories
            for category in categories:
                dims = limits.get(category)
                if not dims:
                    continue
                refusal = None
                if category in self._media:
                    refusal = self._media[category].check(dims.get("dph"), dims.get("dpd"), day_length)
                if refusal is None and (dims.get("rpm") is not None or dims.get("rpd") is not None):
                    admission, refusal = self._requests[category].admit(dims.get("rpm"), dims.get("rpd"),
                                                                        day_length)
                    if admission is not None:
                        taken.append((category, admission))
                if refusal is not None:
                    self._release(taken)
                    refusal.dimension = f"{refusal.dimension or 'rpm'}:{category}"
                    return [], refusal
        return taken, None

    def release(self, taken: List[Tuple[str, Admission]]) -> None:
        with self._lock:
            self._release(taken)

    def _release(self, taken: List[Tuple[str, Admission]]) -> None:
        for category, admission in taken:
            self._requests[category].release(admission)

    def add_media(self, category: str, seconds: float, day_length: float) -> None:
        """Count audio/video seconds embedded in `category` (the call that crosses a limit completes)."""
        if category in self._media:
            self._media[category].add(seconds, day_length)
