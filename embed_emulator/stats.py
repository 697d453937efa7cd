"""Counters the emulator keeps about the calls it served (GET /emulator/stats)."""
from __future__ import annotations

import hashlib
import threading
from collections import Counter
from typing import Iterable, Optional, Union

__all__ = ["Stats", "item_key", "FAULT_KINDS"]

FAULT_KINDS = ("429_burst", "drop", "hang", "5xx", "malformed", "modality_error")


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


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._by_status: Counter = Counter()
            self._calls_ok = 0
            self._items: Counter = Counter({"text": 0, "image": 0, "audio": 0})
            self._items_per_call: Counter = Counter({"1": 0, "2": 0, "3": 0})
            self._rate_limited = 0
            self._faults: Counter = Counter({kind: 0 for kind in FAULT_KINDS})
            self._active = 0
            self._max_concurrent = 0
            self._item_keys: Counter = Counter()

    def begin(self) -> None:
        """An embed request arrived."""
        with self._lock:
            self._requests += 1
            self._active += 1
            self._max_concurrent = max(self._max_concurrent, self._active)

    def end(self) -> None:
        with self._lock:
            self._active = max(0, self._active - 1)

    def status(self, code: int) -> None:
        with self._lock:
            self._by_status[str(code)] += 1

    def rate_limited(self) -> None:
        with self._lock:
            self._rate_limited += 1

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

    def snapshot(self, detail: bool = False) -> dict:
        with self._lock:
            data = {
                "requests": self._requests,
                "by_status": dict(self._by_status),
                "calls_ok": self._calls_ok,
                "items": dict(self._items),
                "items_per_call": dict(self._items_per_call),
                "rate_limited": self._rate_limited,
                "faults": dict(self._faults),
                "max_concurrent": self._max_concurrent,
            }
            if detail:
                data["item_keys"] = dict(self._item_keys)
            return data
