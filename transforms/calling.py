"""CreateEmbeddings: concurrent, paced, retried API calls; one Outcome or DeadLetter per item."""
from __future__ import annotations

import bisect
import collections
import concurrent.futures
import dataclasses
import logging
import json
import time
import uuid
from typing import Dict, Iterable, List, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from embed_client import API_KEY_ENV, EmbedClient, errors
from embed_client.ratelimit import TokenBucket
from embed_client.retry import call_with_retries
from transforms.call_settings import ApiKeyRejected, CallSettings, resolve_api_key
from transforms.constants import DEAD_LETTERS, DEFERRED, MODEL_DIMS, NAMESPACE
from transforms.items import Call, DeadLetter, Deferred, Item, Outcome, item_row
from transforms.progress import PROGRESS
from transforms.worker_state import (QuotaState, process_bucket, process_media_budget, process_quota,
                                     process_wait_meter)

# CallSettings, MODEL_DIMS, ApiKeyRejected and resolve_api_key live in call_settings; they are
# re-exported here because callers think of them as the calling step's.
__all__ = ["DEFERRED", "MODEL_DIMS", "CallSettings", "CreateEmbeddings", "ApiKeyRejected", "resolve_api_key"]


_LOGGER = logging.getLogger(__name__)
class _NotCalled(Exception):
    """The quota or budget stopped this call before it was made."""


class _Attempts:
    """How many times a call was sent, readable after it raised."""

    count = 0


def _latency_edges() -> List[int]:
    """Lower edges (ms) of the call latency histogram: 1 ms wide up to 16 ms, then 8 per doubling (~9%)."""
    edges, x = list(range(16)), 16.0
    while x < 3_600_000:
        if int(round(x)) > edges[-1]:
            edges.append(int(round(x)))
        x *= 2 ** 0.125
    return edges


# The timeline pieces carry a latency histogram keyed by these lower edges; the report reads them back.
LATENCY_EDGES_MS = _latency_edges()


def latency_bucket(ms: float) -> int:
    """The lower edge of the histogram bucket holding `ms`."""
    return LATENCY_EDGES_MS[max(0, bisect.bisect_right(LATENCY_EDGES_MS, ms) - 1)]


@dataclasses.dataclass
class _CallStats:
    calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    throttled_sec: float = 0.0
    items_per_call: List[int] = dataclasses.field(default_factory=list)
    split_calls: int = 0
    polls: int = 0                  # v2 task status reads: paced like calls, not paid for
    tasks_created: int = 0
    tasks_resumed: int = 0          # recorded by an earlier run: polled, not created again
    tasks_recreated: int = 0        # recorded, but past the API's retention: created again
    tasks_ready: int = 0
    tasks_failed: int = 0
    # v2 usage: input tokens by kind (text, image, audio, video) and how many answers were truncated.
    usage_tokens: Dict[str, int] = dataclasses.field(default_factory=dict)
    truncated: int = 0

    def add_usage(self, usage) -> None:
        if usage is None:
            return
        for kind, tokens in (usage.input_tokens or {}).items():
            self.usage_tokens[kind] = self.usage_tokens.get(kind, 0) + int(tokens or 0)
        self.truncated += int(bool(usage.truncated))
    limited_dimensions: List[str] = dataclasses.field(default_factory=list)  # X-Ratelimit-Dimensions of 429s
    latencies_ms: List[int] = dataclasses.field(default_factory=list)
    # Whole UTC second -> [calls answered, of which 429], for the run report's chart.
    timeline: Dict[int, List[int]] = dataclasses.field(default_factory=dict)

    def mark(self, rate_limited: bool) -> None:
        bucket = self.timeline.setdefault(int(time.time()), [0, 0])
        bucket[0] += 1
        bucket[1] += int(rate_limited)


def _read_file(path: str) -> Tuple[str, bytes, str]:
    from embed_client.multipart import guess_content_type

    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = f.read()
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name, data, guess_content_type(name)


def _per_minute_limit(info: errors.RateLimitInfo) -> Optional[float]:
    """The limit a 429 states, when its window resets within a minute (so it is the per-minute one)."""
    wait = info.wait_seconds()
    if info.limit and info.reset_at is not None and wait is not None and wait <= 61:
        return float(info.limit)
    return None


_SERVICE_FAILURES = (errors.ConnectionFailedError, errors.EmbedTimeoutError, errors.ServerError,
                     errors.MalformedResponseError)


def _is_service_failure(exc: errors.EmbedError, paid: bool) -> bool:
    """Fails every item alike: unreachable, hanging, 5xx, lying, or (for an embed call) no such endpoint."""
    return isinstance(exc, _SERVICE_FAILURES) or (paid and isinstance(exc, errors.NotFoundError))


def _error_code(exc: errors.EmbedError) -> str:
    if exc.code:
        return exc.code
    return {errors.EmbedTimeoutError: "timeout", errors.ConnectionFailedError: "connection_failed",
            errors.MalformedResponseError: "malformed_response", errors.ServerError: "server_error",
            errors.RateLimitError: "too_many_requests"}.get(type(exc), "bad_request")


class _Caller:
    """Runs one call in a pool thread: build, pace, send with retries, split on 400, map results."""

    def __init__(self, settings: CallSettings, client: EmbedClient, bucket: TokenBucket,
                 quota: Optional[QuotaState] = None):
        self.settings = settings
        self.client = client
        self.bucket = bucket
        self.quota = quota or QuotaState(settings.max_calls, settings.outage_after_failures)
        self.meter = process_wait_meter(settings)
        self.policy = settings.retry_policy()
        self.dims = settings.dims

    def run(self, call: Call) -> Tuple[List[Union[Outcome, DeadLetter]], _CallStats]:
        stats = _CallStats()
        records = self._run(call.items, stats)
        # A call's dead letter carries what was sent: its content key (a later run re-tries it only if that
        # changed) and the manifest fields (to fix or re-drive it).
        by_key = {(i.id, i.source, i.row_number, i.modality): i for item in call.items for i in item.with_copies()}
        for record in records:
            if isinstance(record, DeadLetter) and record.row is None:
                item = by_key.get((record.id, record.source, record.row_number, record.modality))
                if item is not None:
                    record.content_hash, record.row = item.content_hash, item_row(item)
        return records, stats

    def _deferred(self, items: List[Item]) -> List[Deferred]:
        reason, resets_at = self.quota.stopped or "quota_exhausted", self.quota.resets_at
        return [Deferred(i.id, i.source, i.row_number, i.modality, reason, resets_at)
                for item in items for i in item.with_copies()]

    def _run(self, items: List[Item], stats: _CallStats) -> List[Union[Outcome, DeadLetter, Deferred]]:
        if self.quota.stopped:
            return self._deferred(items)
        try:
            request = self._build(items)
        except errors.BadRequestError as exc:
            return [d for item in items for d in self._dead(item, exc, 0)]
        except OSError as exc:
            return [DeadLetter(i.id, i.source, i.row_number, i.modality, "call", "unreadable_file",
                               f"{i.source} row {i.row_number}: {i.file_path} cannot be read ({exc})")
                    for item in items for i in item.with_copies()]
        counter = _Attempts()
        try:
            response = self._send_paced(lambda: self._checked(items, self._send(request)), len(items), stats,
                                        counter)
        except _NotCalled:
            return self._deferred(items)
        except errors.RateLimitError as exc:
            if self._quota_spent(exc):
                return self._deferred(items)
            return [d for item in items for d in self._dead(item, exc, counter.count)]
        except errors.BadRequestError as exc:
            if len(items) > 1:
                # One bad item must not sink its call-mates: retry each alone.
                stats.split_calls += 1
                return [r for item in items for r in self._run([item], stats)]
            return self._dead(items[0], exc, counter.count)
        except errors.EmbedError as exc:
            return [d for item in items for d in self._dead(item, exc, counter.count)]
        return self._map(items, response, counter.count, stats)

    def _checked(self, items: List[Item], response):
        self._check(items, response)
        return response

    def _send(self, request):
        fields, files = request
        return self.client.send(fields, files)

    def _send_paced(self, send, items_in_call: int, stats: _CallStats, counter: "_Attempts", paid: bool = True):
        """Runs `send` paced and retried; a 401/403 stops the job. Raises _NotCalled when the budget is spent."""

        def attempt():
            stats.throttled_sec += self.meter.wait(self.bucket.acquire)
            if paid and not self.quota.take_call():
                raise _NotCalled()
            counter.count += 1
            if paid:
                stats.calls += 1
                stats.items_per_call.append(items_in_call)
            else:
                stats.polls += 1
            sent = time.monotonic()
            try:
                response = send()
                stats.latencies_ms.append(int((time.monotonic() - sent) * 1000))
                stats.mark(False)
            except errors.EmbedError as exc:
                # The service's failure, not the item's: enough in a row and the run stops calling.
                self.quota.service_result(_is_service_failure(exc, paid), f"{_error_code(exc)}: {exc.message}")
                if isinstance(exc, errors.RateLimitError):
                    stats.mark(True)
                    stats.rate_limited += 1
                    dimension = getattr(exc.rate_limit, "dimensions", None)
                    if dimension:
                        stats.limited_dimensions.append(dimension)
                    self.bucket.on_rate_limited(None if exc.is_quota_exhausted else exc.wait_seconds,
                                                _per_minute_limit(exc.rate_limit))
                raise
            self.quota.service_result(False)
            self.bucket.on_success()
            return response

        def on_retry(exc, seconds):
            stats.retries += 1
            stats.throttled_sec += seconds

        try:
            return call_with_retries(attempt, self.policy, on_retry=on_retry)
        except errors.AuthError as exc:
            raise ApiKeyRejected(f"The API refused the key ({exc}). Check {API_KEY_ENV} or the key file; "
                                 "no further calls were made by this worker.") from None

    def _quota_spent(self, exc: errors.RateLimitError) -> bool:
        """A 429 whose reset lies beyond what this run may wait: the quota is spent, not the items."""
        if exc.is_retryable and exc.wait_seconds is not None and exc.wait_seconds <= self.policy.deadline_sec:
            return False
        wait = exc.wait_seconds
        resets_at = exc.rate_limit.reset_at or (None if wait is None else exc.rate_limit.received_at + wait)
        self.quota.stop("quota_exhausted", resets_at)
        return True

    def _build(self, items: List[Item]):
        kwargs = {}
        for item in items:
            if item.modality == "text":
                kwargs.update(text=item.text, text_truncate=item.text_truncate)
            elif item.url is not None:
                kwargs[f"{item.modality}_url"] = item.url
            else:
                kwargs[f"{item.modality}_file"] = _read_file(item.file_path)
            if item.modality == "audio" and item.audio_start_offset_sec is not None:
                kwargs["audio_start_offset_sec"] = item.audio_start_offset_sec
        return self.client.build_request(self.settings.model, **kwargs)

    def _check(self, items: List[Item], response) -> None:
        """A response that does not answer what was asked is treated as malformed (and retried)."""
        for item in items:
            result = getattr(response, f"{item.modality}_embedding")
            if result is None:
                raise errors.MalformedResponseError(f"no {item.modality}_embedding in the response", status=200)
            if result.error_message is not None:
                continue
            if not result.segments:
                raise errors.MalformedResponseError(f"{item.modality}_embedding has no segments", status=200)
            for segment in result.segments:
                if segment.float_ is None or len(segment.float_) != self.dims:
                    raise errors.MalformedResponseError(
                        f"{item.modality} vector has {len(segment.float_ or [])} values, expected {self.dims}",
                        status=200)
            meta = getattr(result, "metadata", None)
            if meta is not None and item.url is not None and meta.input_url not in (None, item.url):
                raise errors.MalformedResponseError(f"{item.modality} result is for another input", status=200)

    def _map(self, items, response, attempts, stats=None) -> List[Union[Outcome, DeadLetter]]:
        out: List[Union[Outcome, DeadLetter]] = []
        for item in items:
            result = getattr(response, f"{item.modality}_embedding")
            for each in item.with_copies():
                if result.error_message is not None:
                    out.append(DeadLetter(each.id, each.source, each.row_number, each.modality, "call",
                                          "embedding_failed", f"{each.source} row {each.row_number}: "
                                          f"the API could not embed the {each.modality}: {result.error_message}",
                                          200, attempts))
                    continue
                segments = [(getattr(s, "start_offset_sec", None), getattr(s, "end_offset_sec", None), s.float_)
                            for s in result.segments]
                out.append(Outcome(each, response.model_name, segments, attempts))
        return out

    @staticmethod
    def _dead(item: Item, exc: errors.EmbedError, attempts: int) -> List[DeadLetter]:
        code = _error_code(exc)
        return [DeadLetter(each.id, each.source, each.row_number, each.modality, "call", code,
                           f"{each.source} row {each.row_number}: {exc.message}", exc.status,
                           getattr(exc, "attempts", attempts) or attempts)
                for each in item.with_copies()]


CALL_KINDS = ("v1", "v2", "task")


class _CreateEmbeddingsFn(beam.DoFn):
    def __init__(self, settings: CallSettings, kind: str = "v1", output: Optional[str] = None,
                 known_tasks: Optional[Dict[str, Tuple[str, float]]] = None):
        if kind not in CALL_KINDS:
            raise ValueError(f"kind must be one of {CALL_KINDS}")
        self._settings = settings
        self._kind = kind
        self._output = output
        self._known_tasks = known_tasks or {}
        self._task_counters = {name: Metrics.counter(NAMESPACE, name) for name in (
            "task_polls", "tasks_created", "tasks_resumed", "tasks_recreated", "tasks_ready", "tasks_failed")}
        self._calls = Metrics.counter(NAMESPACE, "calls")
        self._retries = Metrics.counter(NAMESPACE, "retries")
        self._rate_limited = Metrics.counter(NAMESPACE, "http_429")
        self._split = Metrics.counter(NAMESPACE, "split_calls")
        self._throttled_ms = Metrics.counter(NAMESPACE, "throttled_msecs")
        # Read by Dataflow's autoscaler: seconds this step waited on the API's limits, not on work.
        self._throttled_sec = Metrics.counter(NAMESPACE, "cumulativeThrottlingSeconds")
        self._items_per_call = Metrics.distribution(NAMESPACE, "items_per_call")
        self._latency_ms = Metrics.distribution(NAMESPACE, "call_latency_ms")
        self._embedded = Metrics.counter(NAMESPACE, "items_embedded")
        self._deferred = Metrics.counter(NAMESPACE, "items_deferred")

    def setup(self):
        s = self._settings
        self._client = EmbedClient(api_key=resolve_api_key(s), base_url=s.base_url,
                                   timeout=(s.connect_timeout_sec, s.read_timeout_sec),
                                   max_connections=s.max_in_flight)
        bucket, quota = process_bucket(s), process_quota(s)
        self._in_flight = s.max_in_flight
        if self._kind == "v1":
            self._caller = _Caller(s, self._client, bucket, quota)
        else:
            from transforms.calling_v2 import SyncV2Caller, TaskCaller, TaskJournal

            if self._kind == "v2":
                self._caller = SyncV2Caller(s, self._client, bucket, quota)
            else:
                # A task holds a thread while it waits between polls, not a connection: more of them.
                self._in_flight = s.max_tasks_in_flight
                self._caller = TaskCaller(s, self._client, bucket, quota, known=self._known_tasks,
                                          journal=TaskJournal(self._output, s.run_id))
            self._caller.media = process_media_budget(s)
        self._pool = concurrent.futures.ThreadPoolExecutor(self._in_flight, thread_name_prefix=f"embed-{self._kind}")
        self._throttled_remainder = 0.0
        self._timeline: Dict[int, List[int]] = {}
        self._latency_hist: Dict[int, int] = {}
        self._latency_stats: List[int] = []  # count, sum, min, max of this piece's call latencies
        self._worker = uuid.uuid4().hex[:8]
        self._timeline_pieces = 0

    def start_bundle(self):
        self._pending: collections.deque = collections.deque()

    def process(self, call: Call, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam) -> Iterable:
        future = self._pool.submit(self._caller.run, call)
        # A call's records leave in its own window, whichever later element or bundle end drains them.
        future.window, future.timestamp = window, timestamp
        self._pending.append(future)
        yield from self._drain(self._in_flight)

    def finish_bundle(self):
        yield from self._drain(0)
        self._write_timeline()

    def _write_timeline(self) -> None:
        """Per-second call counts of this bundle, for the run report (works on every runner).

        One more record closes the piece: the bundle's call latency histogram ({lower edge ms: calls}, see
        LATENCY_EDGES_MS) with its count, sum, min and max. It also carries "t" and zero counts, so a reader
        that only sums calls per second reads it as nothing."""
        if not (self._timeline or self._latency_hist) or not self._settings.timeline_dir:
            return
        self._timeline_pieces += 1
        path = FileSystems.join(self._settings.timeline_dir,
                                f"calls-{self._worker}-{self._timeline_pieces:05d}.jsonl")
        lines = "".join(json.dumps({"t": t, "calls": c, "http_429": r}) + "\n"
                        for t, (c, r) in sorted(self._timeline.items()))
        if self._latency_hist:
            count, total, low, high = self._latency_stats
            lines += json.dumps({"t": max(self._timeline) if self._timeline else int(time.time()), "calls": 0,
                                 "http_429": 0,
                                 "latency_ms_hist": {str(k): n for k, n in sorted(self._latency_hist.items())},
                                 "latency_ms": {"count": count, "sum": total, "min": low, "max": high}}) + "\n"
        self._latency_hist = {}
        self._latency_stats = []
        try:
            with FileSystems.create(path, compression_type="uncompressed") as f:
                f.write(lines.encode("utf-8"))
        except Exception as exc:  # the chart is a nicety; never fail the job for it
            _LOGGER.warning("could not write the call timeline %s: %s", path, exc)
        self._timeline = {}

    def _drain(self, keep: int) -> Iterable:
        """Yields finished calls' records; blocks while more than `keep` calls are in flight."""
        while self._pending:
            if len(self._pending) > keep:
                concurrent.futures.wait(self._pending, return_when=concurrent.futures.FIRST_COMPLETED)
            done = [f for f in self._pending if f.done()]
            if not done:
                return
            for future in done:
                self._pending.remove(future)
                records, stats = future.result()  # ApiKeyRejected propagates and fails the job
                self._record(stats)
                windowed = lambda record: WindowedValue(record, future.timestamp, [future.window])
                for record in records:
                    if isinstance(record, DeadLetter):
                        PROGRESS.add(done=1, dead_letters=1)
                        yield beam.pvalue.TaggedOutput(DEAD_LETTERS, windowed(record))
                    elif isinstance(record, Deferred):
                        self._deferred.inc()
                        PROGRESS.add(done=1, deferred=1)
                        yield beam.pvalue.TaggedOutput(DEFERRED, windowed(record))
                    else:
                        self._embedded.inc()
                        PROGRESS.add(done=1, embedded=1)
                        yield windowed(record)

    def _record(self, stats: _CallStats) -> None:
        PROGRESS.add(calls=stats.calls, http_429=stats.rate_limited)
        for second, (calls, limited) in stats.timeline.items():
            bucket = self._timeline.setdefault(second, [0, 0])
            bucket[0] += calls
            bucket[1] += limited
        self._calls.inc(stats.calls)
        self._retries.inc(stats.retries)
        self._rate_limited.inc(stats.rate_limited)
        self._split.inc(stats.split_calls)
        for name, value in (("task_polls", stats.polls), ("tasks_created", stats.tasks_created),
                            ("tasks_resumed", stats.tasks_resumed), ("tasks_recreated", stats.tasks_recreated),
                            ("tasks_ready", stats.tasks_ready), ("tasks_failed", stats.tasks_failed)):
            if value:
                self._task_counters[name].inc(value)
        for kind, tokens in stats.usage_tokens.items():
            Metrics.counter(NAMESPACE, f"usage_tokens.{kind}").inc(tokens)
        if stats.truncated:
            Metrics.counter(NAMESPACE, "usage_truncated").inc(stats.truncated)
        for dimension in stats.limited_dimensions:
            Metrics.counter(NAMESPACE, f"http_429.{dimension}").inc()
        for n in stats.items_per_call:
            self._items_per_call.update(n)
        for ms in stats.latencies_ms:
            self._latency_ms.update(ms)
            edge = latency_bucket(ms)
            self._latency_hist[edge] = self._latency_hist.get(edge, 0) + 1
            seen = self._latency_stats
            self._latency_stats = [seen[0] + 1, seen[1] + ms, min(seen[2], ms), max(seen[3], ms)] if seen \
                else [1, ms, ms, ms]
        self._throttled_ms.inc(int(stats.throttled_sec * 1000))
        wall = self._caller.meter.take()
        if wall:
            Metrics.counter(NAMESPACE, "throttled_wall_msecs").inc(int(wall * 1000))
        self._throttled_remainder += stats.throttled_sec
        whole = int(self._throttled_remainder)
        if whole:
            self._throttled_sec.inc(whole)
            self._throttled_remainder -= whole

    def teardown(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class CreateEmbeddings(beam.PTransform):
    """Call -> Outcome, with `dead_letters` and `deferred` outputs.

    `kind`: "v1" packed `POST /embed` calls, "v2" one item per `POST /embed-v2`, or "task": v2 async tasks,
    each recorded under `output`/tasks/ as soon as it is created; `known_tasks` are earlier runs' records."""

    def __init__(self, settings: CallSettings, kind: str = "v1", output: Optional[str] = None,
                 known_tasks: Optional[Dict[str, Tuple[str, float]]] = None):
        super().__init__()
        self._fn = _CreateEmbeddingsFn(settings, kind, output, known_tasks)

    def expand(self, calls):
        return calls | "Call" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTERS, DEFERRED, main="outcomes")
