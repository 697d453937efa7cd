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
from transforms.calling.engine import Caller, CallResult, WorkerState
from transforms.calling.metrics import CallMetrics
from transforms.calling.worker_state import acquire_worker_state
from transforms.records import DEAD_LETTERS, DEFERRED, ROUTES, Call, DeadLetter, Deferred, Outcome
from transforms.settings import CallSettings, make_client
from transforms.stages.timeline import TIMELINE, CallTimes

__all__ = ["CreateEmbeddings"]

KnownTasks = Dict[str, Tuple[str, float]]

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

    def start_bundle(self) -> None:
        self._pending: Deque[concurrent.futures.Future] = collections.deque()

    def process(self, call: Call, window=beam.DoFn.WindowParam,
                timestamp=beam.DoFn.TimestampParam) -> Iterable[CallOutput]:
        future = self._pool.submit(self._policy.run, call)
        # A call's records leave in its own window, whichever later element or bundle end drains them.
        future.window, future.timestamp = window, timestamp
        self._pending.append(future)
        yield from self._drain(self._in_flight)

    def finish_bundle(self) -> Iterable[CallOutput]:
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
