"""Counters the emulator keeps about the calls it served (GET /emulator/stats)."""
from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from typing import Callable, Iterable, Optional, Union

__all__ = ["Stats", "item_key", "v2_key", "FAULT_KINDS", "TASK_COUNTERS", "ASSET_COUNTERS"]

FAULT_KINDS = ("429_burst", "drop", "hang", "5xx", "malformed", "modality_error")
TASK_COUNTERS = ("created", "polled", "ready", "failed")
# The /v1.3/assets... counters (snapshot()["assets"]); "created.<method>" are counted apart.
ASSET_COUNTERS = ("ready", "failed", "deleted", "sessions_created", "sessions_completed",
                  "urls_issued", "chunks_reported", "chunk_puts_accepted", "chunk_puts_refused",
                  "chunk_puts_failed", "chunk_bytes_received", "chunk_bytes_accepted")
ASSET_METHODS = ("direct", "url", "multipart")


def item_key(model_name: str, modality: str, content: Union[str, bytes],
             audio_offset_sec: Optional[float] = None) -> str:
    """sha256 hex of model name + modality + input content (+ offset for audio).
    Content is the truncated text or the media bytes, however they arrived (file or URL)."""
    digest = hashlib.sha256()
    digest.update(model_name.encode() + b"\0" + modality.encode() + b"\0")
    digest.update(content.encode("utf-8") if isinstance(content, str) else content)
    if audio_offset_sec is not None:
        digest.update(b"\0" + repr(float(audio_offset_sec)).encode())
    return digest.hexdigest()


def v2_key(model_name: str, input_type: str, content: Union[str, bytes, Iterable[bytes]],
           start_sec: Optional[float] = None, end_sec: Optional[float] = None) -> str:
    """Content key of one v2 input (sync call or task): sha256 hex of model name + input type +
    content (the text, or the media bytes however they arrived) + the requested start_sec /
    end_sec when either was sent. Without times it equals item_key(model, input_type, content),
    so a v2 text key is the v1 text key of the same model and text. multi_input and text_image
    content is the concatenation of their parts (see v2/sync_call.py). Content may also come as
    an iterable of byte blocks (an asset's file read in blocks): the key of their concatenation."""
    digest = hashlib.sha256()
    digest.update(model_name.encode() + b"\0" + input_type.encode() + b"\0")
    if isinstance(content, str):
        digest.update(content.encode("utf-8"))
    elif isinstance(content, (bytes, bytearray, memoryview)):
        digest.update(content)
    else:
        for block in content:
            digest.update(block)
    if start_sec is not None or end_sec is not None:
        digest.update(b"\0" + repr(None if start_sec is None else float(start_sec)).encode()
                      + b":" + repr(None if end_sec is None else float(end_sec)).encode())
    return digest.hexdigest()


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sweeper: Optional[Callable[[], None]] = None
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._first_request_at: Optional[float] = None  # epoch seconds: when a benchmark's first call came
            self._by_status: Counter = Counter()
            self._calls_ok = 0
            self._items: Counter = Counter({"text": 0, "image": 0, "audio": 0})
            self._items_per_call: Counter = Counter({"1": 0, "2": 0, "3": 0})
            self._rate_limited = 0
            self._rate_limited_by: Counter = Counter()  # by X-Ratelimit-Dimensions, e.g. "rpm:audio"
            self._faults: Counter = Counter({kind: 0 for kind in FAULT_KINDS})
            self._active = 0
            self._max_concurrent = 0
            self._item_keys: Counter = Counter()
            self._tasks: Counter = Counter({name: 0 for name in TASK_COUNTERS})
            self._task_keys: Counter = Counter()
            self._media_sec = 0.0
            self._asset_requests = 0
            self._asset_by_status: Counter = Counter()
            self._asset_rate_limited = 0
            self._asset_faults: Counter = Counter({kind: 0 for kind in FAULT_KINDS[:5]})
            self._asset_created: Counter = Counter({method: 0 for method in ASSET_METHODS})
            self._asset_counts: Counter = Counter({name: 0 for name in ASSET_COUNTERS})

    def set_sweeper(self, sweeper: Optional[Callable[[], None]]) -> None:
        """Called (outside the lock) before each snapshot: the task store uses it to count the
        tasks that have turned ready or failed since anyone last looked."""
        self._sweeper = sweeper

    def begin(self) -> None:
        """An embed request arrived."""
        with self._lock:
            self._requests += 1
            if self._first_request_at is None:
                self._first_request_at = time.time()
            self._active += 1
            self._max_concurrent = max(self._max_concurrent, self._active)

    def end(self) -> None:
        with self._lock:
            self._active = max(0, self._active - 1)

    def status(self, code: int) -> None:
        with self._lock:
            self._by_status[str(code)] += 1

    def rate_limited(self, dimension: Optional[str] = None) -> None:
        with self._lock:
            self._rate_limited += 1
            if dimension:
                self._rate_limited_by[dimension] += 1

    def fault(self, kind: str, count: int = 1) -> None:
        with self._lock:
            self._faults[kind] += count

    def embedded(self, modalities: Iterable[str], keys: Iterable[str]) -> None:
        """A 200 call embedded these modalities (at least one)."""
        modalities = list(modalities)
        with self._lock:
            self._calls_ok += 1
            self._items.update(modalities)
            self._items_per_call[str(len(modalities))] += 1
            self._item_keys.update(keys)

    def task(self, event: str, key: Optional[str] = None) -> None:
        """A task was created (with its content key), polled, or turned ready / failed."""
        with self._lock:
            self._tasks[event] += 1
            if key is not None:
                self._task_keys[key] += 1

    def media(self, seconds: float) -> None:
        """Audio/video seconds embedded by a v2 sync call or a created task."""
        with self._lock:
            self._media_sec += seconds

    # ---- the assets category: its own requests, statuses, 429s and faults, apart from embed's ----

    def asset_request(self) -> None:
        with self._lock:
            self._asset_requests += 1

    def asset_created(self, method: str) -> None:
        with self._lock:
            self._asset_created[method] += 1

    def asset(self, name: str, count: int = 1) -> None:
        """Add to one of ASSET_COUNTERS."""
        with self._lock:
            self._asset_counts[name] += count

    def assets_gate_view(self) -> "_AssetsGateView":
        """What the assets Gate reports to: statuses, 429s and faults land under "assets"."""
        return _AssetsGateView(self)

    def snapshot(self, detail: bool = False) -> dict:
        if self._sweeper is not None:
            self._sweeper()
        with self._lock:
            data = {
                "requests": self._requests,
                "first_request_at": self._first_request_at,
                "by_status": dict(self._by_status),
                "calls_ok": self._calls_ok,
                "items": dict(self._items),
                "items_per_call": dict(self._items_per_call),
                "rate_limited": self._rate_limited,
                "rate_limited_by": dict(self._rate_limited_by),
                "faults": dict(self._faults),
                "max_concurrent": self._max_concurrent,
                "tasks": dict(self._tasks),
                "media_seconds": round(self._media_sec, 3),
                "assets": {"requests": self._asset_requests,
                           "by_status": dict(self._asset_by_status),
                           "rate_limited": self._asset_rate_limited,
                           "faults": dict(self._asset_faults),
                           "created": dict(self._asset_created),
                           **self._asset_counts},
            }
            if detail:
                data["item_keys"] = dict(self._item_keys)
                data["task_keys"] = dict(self._task_keys)
            return data


class _AssetsGateView:
    """The Stats face a Gate sees (status, rate_limited, fault), counting into the assets section."""

    def __init__(self, stats: Stats):
        self._stats = stats

    def status(self, code: int) -> None:
        with self._stats._lock:
            self._stats._asset_by_status[str(code)] += 1

    def rate_limited(self, dimension: Optional[str] = None) -> None:
        with self._stats._lock:
            self._stats._asset_rate_limited += 1

    def fault(self, kind: str, count: int = 1) -> None:
        with self._stats._lock:
            self._stats._asset_faults[kind] += count
