"""One collector of the calling step's numbers: Beam metrics (namespace `tl_embed`) and the local progress line.

Used by the calling DoFn and the RunInference handler alike. Call it from the bundle's thread, not a pool
thread: Beam's metrics container is per thread, so counts set from a pool thread would be lost."""
from __future__ import annotations

import threading

from apache_beam.metrics import Metrics

from transforms.calling.engine import CallStats
from transforms.progress import NAMESPACE, PROGRESS

__all__ = ["CallMetrics"]

_TASK_COUNTERS = {"polls": "task_polls", "tasks_created": "tasks_created", "tasks_resumed": "tasks_resumed",
                  "tasks_recreated": "tasks_recreated", "tasks_ready": "tasks_ready", "tasks_failed": "tasks_failed"}


class CallMetrics:
    """`progress`: also feed transforms.progress.PROGRESS (the job's progress line)."""

    def __init__(self, progress: bool = True):
        self._progress = progress
        counter = lambda name: Metrics.counter(NAMESPACE, name)  # noqa: E731
        self._calls, self._retries, self._http_429 = counter("calls"), counter("retries"), counter("http_429")
        self._split = counter("split_calls")
        self._throttled_ms = counter("throttled_msecs")
        # Read by Dataflow's autoscaler: seconds this step waited on the API's limits, not on work.
        self._throttled_sec = counter("cumulativeThrottlingSeconds")
        self._throttled_wall_ms = counter("throttled_wall_msecs")
        self._embedded, self._deferred = counter("items_embedded"), counter("items_deferred")
        self._items_per_call = Metrics.distribution(NAMESPACE, "items_per_call")
        self._latency_ms = Metrics.distribution(NAMESPACE, "call_latency_ms")
        self._remainder = 0.0  # throttled seconds not yet counted as a whole second
        self._lock = threading.Lock()

    def call(self, stats: CallStats) -> None:
        """What one finished call (with its retries, splits, polls) cost."""
        if self._progress:
            PROGRESS.add(calls=stats.calls, http_429=stats.rate_limited)
        self._calls.inc(stats.calls)
        self._retries.inc(stats.retries)
        self._http_429.inc(stats.rate_limited)
        self._split.inc(stats.split_calls)
        for field, name in _TASK_COUNTERS.items():
            value = getattr(stats, field)
            if value:
                Metrics.counter(NAMESPACE, name).inc(value)
        for kind, tokens in stats.usage_tokens.items():
            Metrics.counter(NAMESPACE, f"usage_tokens.{kind}").inc(tokens)
        if stats.truncated:
            Metrics.counter(NAMESPACE, "usage_truncated").inc(stats.truncated)
        for category, (calls, limited) in stats.by_category.items():
            Metrics.counter(NAMESPACE, f"category_calls.{category}").inc(calls)
            if limited:
                Metrics.counter(NAMESPACE, f"category_429.{category}").inc(limited)
        for dimension in stats.limited_dimensions:
            Metrics.counter(NAMESPACE, f"http_429.{dimension}").inc()
        for n in stats.items_per_call:
            self._items_per_call.update(n)
        for ms in stats.latencies_ms:
            self._latency_ms.update(ms)
        self._throttled_ms.inc(int(stats.throttled_sec * 1000))
        with self._lock:
            self._remainder += stats.throttled_sec
            whole = int(self._remainder)
            self._remainder -= whole
        if whole:
            self._throttled_sec.inc(whole)

    def uploads(self, counts: dict) -> None:
        """What the process's uploads did since the last report (transforms.calling.upload.UploadStats.take)."""
        for name, value in counts.items():
            if not value:
                continue
            if name == "upload_seconds":
                Metrics.counter(NAMESPACE, "assets_upload_msecs").inc(int(value * 1000))
            else:
                Metrics.counter(NAMESPACE, f"assets_{name}").inc(int(value))

    def wall_wait(self, seconds: float) -> None:
        """Wall seconds the process waited at the limit (see call_policy.WaitMeter)."""
        if seconds:
            self._throttled_wall_ms.inc(int(seconds * 1000))

    def results(self, embedded: int = 0, dead_letters: int = 0, deferred: int = 0) -> None:
        """Items finished: embedded, dead-lettered or deferred."""
        if embedded:
            self._embedded.inc(embedded)
        if deferred:
            self._deferred.inc(deferred)
        if self._progress:
            PROGRESS.add(done=embedded + dead_letters + deferred, embedded=embedded, dead_letters=dead_letters,
                         deferred=deferred)
