"""CreateEmbeddings: runs each Call's policy (transforms.calling.engine) on a bounded thread pool and emits one
Outcome, DeadLetter or Deferred per item, in the call's window, plus the call's CallTimes for the report."""
from __future__ import annotations

import collections
import concurrent.futures
from typing import Deque, Dict, Iterable, Literal, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms.calling.callers import make_caller
from transforms.calling.engine import Caller, CallResult, CallStats, WorkerState
from transforms.calling.schedule import CategoryScheduler, ScheduledPool
from transforms.calling.metrics import CallMetrics
from transforms.calling.worker_state import acquire_worker_state
from transforms.records import DEAD_LETTERS, DEFERRED, ROUTES, Call, DeadLetter, Deferred, Outcome
from transforms.settings import CallSettings, make_client
from transforms.stages.timeline import TIMELINE, CallTimes

__all__ = ["CreateEmbeddings"]

KnownTasks = Dict[str, Tuple[str, float]]

# Paced per category: how many calls may wait per pool slot (the look-ahead past a slow category's calls).
_BACKLOG_PER_SLOT = 8

# What the calling DoFn emits, as Beam (2.78+) reads it from the return annotation: Outcomes on the main output,
# and a tagged output each for the rest. Records leave wrapped in a WindowedValue (the call's own window);
# Beam types such an output by the value it carries.
CallOutput = Union[Outcome, TaggedOutput[Literal[DEAD_LETTERS], DeadLetter],
                   TaggedOutput[Literal[DEFERRED], Deferred], TaggedOutput[Literal[TIMELINE], CallTimes]]


class _CreateEmbeddingsFn(beam.DoFn):
    def __init__(self, settings: CallSettings, kind: str = "v1", output: Optional[str] = None,
                 known_tasks: Optional[KnownTasks] = None):
        if kind not in ROUTES:
            raise ValueError(f"kind must be one of {ROUTES}")
        self._settings = settings
        self._kind = kind
        self._output = output
        self._known_tasks = known_tasks or {}

    def setup(self) -> None:
        s = self._settings
        # A strong reference: Shared keeps the process's state only while someone holds it.
        self._state: WorkerState = acquire_worker_state(s)
        self._client = make_client(s)
        self._policy: Caller = make_caller(self._kind, s, self._client, self._state,
                                               known_tasks=self._known_tasks, output=self._output)
        # A task holds a thread while it waits between polls, not a connection: more of them.
        self._in_flight = s.max_tasks_in_flight if self._kind == "task" else s.max_in_flight
        self._pool = concurrent.futures.ThreadPoolExecutor(self._in_flight, thread_name_prefix=f"embed-{self._kind}")
        self._metrics = CallMetrics()
        # Paced per category: calls wait in a scheduler fed to the pool by its own thread, not in pool threads,
        # so an empty bucket holds up only its own category. One bucket for all: calls go straight to the pool.
        self._scheduled: Optional[ScheduledPool] = None
        if not self._state.pacer.is_single:
            scheduler = CategoryScheduler(self._state.pacer, self._state.quota,
                                          split_packed=not s.pack_waits_for_every_category)
            self._scheduled = ScheduledPool(scheduler, self._pool, self._policy.run, self._in_flight)

    def start_bundle(self) -> None:
        self._pending: Deque[concurrent.futures.Future] = collections.deque()

    def process(self, call: Call, window=beam.DoFn.WindowParam,
                timestamp=beam.DoFn.TimestampParam) -> Iterable[CallOutput]:
        if self._scheduled is not None:
            self._scheduled.add(call, (window, timestamp))
            yield from self._collect(_BACKLOG_PER_SLOT * self._in_flight)
            return
        future = self._pool.submit(self._policy.run, call)
        # A call's records leave in its own window, whichever later element or bundle end drains them.
        future.window, future.timestamp = window, timestamp
        self._pending.append(future)
        yield from self._drain(self._in_flight)

    def _collect(self, keep: int) -> Iterable[CallOutput]:
        """Per-category pacing: yields finished calls' records, blocking while more than `keep` calls wait
        or run."""
        while True:
            done, more, waited = self._scheduled.collect(keep)
            if waited:  # a slot was free and only turns were awaited: throttled, as the pacers' waits are
                self._metrics.call(CallStats(throttled_sec=waited))
                self._metrics.wall_wait(waited)
            for future in done:
                window, timestamp = future.tag
                yield from self._emit(future.result(), window, timestamp)  # ApiKeyRejected fails the job
            if not more:
                return

    def finish_bundle(self) -> Iterable[CallOutput]:
        if self._scheduled is not None:
            yield from self._collect(0)
        yield from self._drain(0)

    def _drain(self, keep: int) -> Iterable[CallOutput]:
        """Yields finished calls' records; blocks while more than `keep` calls are in flight."""
        while self._pending:
            if len(self._pending) > keep:
                concurrent.futures.wait(self._pending, return_when=concurrent.futures.FIRST_COMPLETED)
            done = [f for f in self._pending if f.done()]
            if not done:
                return
            for future in done:
                self._pending.remove(future)
                result: CallResult = future.result()  # ApiKeyRejected propagates and fails the job
                yield from self._emit(result, future.window, future.timestamp)

    def _emit(self, result: CallResult, window, timestamp: Timestamp
              ) -> Iterable[CallOutput]:
        self._metrics.call(result.stats)
        self._metrics.wall_wait(self._state.meter.take())
        counts = collections.Counter()
        for record in result.records:
            windowed = WindowedValue(record, timestamp, [window])
            if isinstance(record, DeadLetter):
                counts["dead_letters"] += 1
                yield TaggedOutput(DEAD_LETTERS, windowed)
            elif isinstance(record, Deferred):
                counts["deferred"] += 1
                yield TaggedOutput(DEFERRED, windowed)
            else:
                counts["embedded"] += 1
                yield windowed
        self._metrics.results(**counts)
        uploader = self._state.current_uploader()
        if uploader is not None:
            self._metrics.uploads(uploader.stats.take())
        times = CallTimes.from_stats(result.stats)
        if times is not None:
            yield TaggedOutput(TIMELINE, WindowedValue(times, timestamp, [window]))

    def teardown(self) -> None:
        scheduled = getattr(self, "_scheduled", None)
        if scheduled is not None:
            scheduled.stop()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class CreateEmbeddings(beam.PTransform):
    """Call -> Outcome (main output `outcomes`), with `dead_letters`, `deferred` and `timeline` outputs.

    `kind`: "v1" packed `POST /embed` calls, "v2" one item per `POST /embed-v2`, or "task": v2 async tasks,
    each recorded under `output`/tasks/ as soon as it is created; `known_tasks` are earlier runs' records.
    `timeline` holds one transforms.stages.timeline.CallTimes per call that was sent; transforms.stages.timeline.WriteTimeline
    writes them for the run report, and a pipeline that does not want them can leave the output unused."""

    def __init__(self, settings: CallSettings, kind: str = "v1", output: Optional[str] = None,
                 known_tasks: Optional[KnownTasks] = None):
        super().__init__()
        self._fn = _CreateEmbeddingsFn(settings, kind, output, known_tasks)

    def expand(self, calls):
        return calls | "Call" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTERS, DEFERRED, TIMELINE, main="outcomes")
