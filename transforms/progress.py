"""Live progress of the job in this process, for the progress line of local runs.

DoFns add to `PROGRESS` beside their Beam metrics; a driver thread renders it. On runners whose
workers are other processes (Dataflow, Flink) the driver sees nothing here: the same numbers are
Beam metrics in the `tl_embed` namespace, shown in the runner's UI.
"""
from __future__ import annotations

import threading
import time
from typing import Dict

# The Beam metrics namespace of every counter the job keeps.
NAMESPACE = "tl_embed"

__all__ = ["PROGRESS", "RunProgress"]

# `rejected`: dead letters of the read and validate steps (rows that never become items); the units of
# work are items + rejected, and `done` counts them as they finish.
FIELDS = ("rows_read", "items", "rejected", "done", "embedded", "dead_letters", "deferred", "skipped", "calls",
          "http_429", "bytes_uploaded")


class RunProgress:
    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._counts: Dict[str, int] = dict.fromkeys(FIELDS, 0)
            self.started = time.monotonic()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._counts[name] += n

    def snapshot(self) -> Dict[str, float]:
        with self._lock:
            snap = dict(self._counts)
        snap["elapsed"] = time.monotonic() - self.started
        return snap


PROGRESS = RunProgress()
