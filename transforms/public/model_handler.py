"""`TwelveLabsEmbeddingModelHandler`: TwelveLabs embeddings from Beam's `RunInference`, at the job's throughput.

    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from transforms import TwelveLabsEmbeddingModelHandler, TwelveLabsOptions

    handler = TwelveLabsEmbeddingModelHandler(TwelveLabsOptions(requests_per_minute=600, max_in_flight=8))
    with beam.Pipeline() as p:
        (p | beam.Create(["a dog in a park", {"id": "x", "image_url": "https://.../cat.png"}])
           | RunInference(handler)
           | beam.Map(print))   # PredictionResult(example, [vector, ...]) or PredictionResult(example, EmbeddingError)

Unlike a `RemoteModelHandler` (one request per batch, retried whole), each batch is validated, packed (v1: up
to one text, image and audio per call), deduplicated, and its calls run concurrently on a bounded pool of
`max_in_flight` threads shared by the process, paced by the process's token buckets (with a bucket per
rate-limit category, calls wait in a `CategoryScheduler`, not in pool threads, so an empty bucket holds up
only its own category, as in the job), with the job's retries,
400 splitting and error mapping (`transforms.calling.engine`). An example that cannot be
embedded gets an `EmbeddingError` as its inference; nothing raises for one bad example. A refused key
(401/403) raises `ApiKeyRejected`: every other call would fail the same way.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.calling.callers import make_caller
from transforms.calling.engine import Caller, CallStats
from transforms.calling.metrics import CallMetrics
from transforms.calling.schedule import CategoryScheduler, ScheduledPool
from transforms.calling.worker_state import acquire_worker_state
from transforms.progress import NAMESPACE
from transforms.public.embed import TwelveLabsOptions
from transforms.records import MODALITIES, Call, DeadLetter, Deferred, Item, ManifestRow, Outcome, failure_kind, iso_utc
from transforms.settings import ApiKeyRejected, CallSettings, make_client
from transforms.stages.pack import CallPacker
from transforms.stages.read import map_columns
from transforms.stages.validate import RoutePlan, row_to_items

__all__ = ["EmbeddingError", "OUTPUTS", "TwelveLabsEmbeddingModel", "TwelveLabsEmbeddingModelHandler"]

# "vectors": the example's segment vectors (a list; a dict by modality for an example with several inputs).
# "segments": a dict with every segment's vector, offsets and v2 labels, and the errors of failed modalities.
OUTPUTS = ("vectors", "segments")
# Where the examples of a batch "come from" in the job's records (messages drop it again).
_SOURCE = "run_inference"
# A job run stops calling for good once the quota is spent or the service is down (the next run goes on); a
# RunInference step may run for days, so it calls again once the quota resets, or this long after an outage.
OUTAGE_RETRY_SEC = 60.0


class EmbeddingError(NamedTuple):
    """The inference of an example (or, in `segments` output, of one of its modalities) that was not embedded."""

    code: str                          # the job's dead-letter codes (invalid_url, no_input, bad_request, ...)
    message: str
    kind: str                          # transient (may work later) | permanent (the input's own problem)
    modality: Optional[str] = None
    http_status: Optional[int] = None


def example_fields(example: Any, columns: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """An example as manifest fields: a string is a text; dicts, NamedTuples and beam.Rows give their fields."""
    if isinstance(example, str):
        fields: Dict[str, Any] = {"text": example}
    elif isinstance(example, Mapping):
        fields = dict(example)
    elif hasattr(example, "_asdict"):
        fields = dict(example._asdict())
    elif isinstance(example, beam.Row):
        fields = dict(example.as_dict())
    else:
        raise TypeError(f"an example must be a string, a dict or a beam.Row, got {type(example).__name__}")
    return {k: v for k, v in map_columns(fields, dict(columns or {})).items() if v is not None}


def _strip_where(message: str, row_number: int) -> str:
    """The job's messages start with 'SOURCE row N: ', which means nothing to a RunInference user."""
    prefix = f"{_SOURCE} row {row_number}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _error(record: Union[DeadLetter, Deferred]) -> EmbeddingError:
    if isinstance(record, Deferred):
        when = iso_utc(record.resets_at)
        message = f"not called: {record.reason}" + (f" (resets at {when})" if when else "") + (
            f" ({record.detail})" if record.detail else "")
        return EmbeddingError(f"deferred_{record.reason}", message, "transient", record.modality)
    return EmbeddingError(record.code, _strip_where(record.message, record.row_number or 0),
                          failure_kind(record.code, record.http_status), record.modality, record.http_status)


class TwelveLabsEmbeddingModel:
    """What `load_model` returns: one client, this process's pacer and quota, the v1/v2/task callers, and the
    bounded pools their calls run on. Shared (through RunInference's `Shared`) by every thread of the process."""

    def __init__(self, settings: CallSettings, pack: bool = True):
        self.settings = settings
        self.pack = pack
        self.plan = RoutePlan.from_settings(settings)
        self.client = make_client(settings, settings.max_in_flight + settings.max_tasks_in_flight)
        # Held for the model's life: Shared keeps the process's state only while someone holds it.
        self.state = acquire_worker_state(settings)
        # No output folder: a task is polled until it ends or `task_deadline_sec` passes, then deferred.
        self.callers: Dict[str, Caller] = {kind: make_caller(kind, settings, self.client, self.state)
                                               for kind in ("v1", "v2", "task")}
        self.pacer, self.quota = self.state.pacer, self.state.quota
        self._calls_pool = concurrent.futures.ThreadPoolExecutor(settings.max_in_flight,
                                                                 thread_name_prefix="tl-infer")
        self._tasks_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self._stopped_since: Optional[float] = None
        self.clock = time.time
        self.metrics = CallMetrics(progress=False)
        self.inference_errors = Metrics.counter(NAMESPACE, "inference_errors")

    def _pool(self, route: str) -> concurrent.futures.ThreadPoolExecutor:
        if route != "task":
            return self._calls_pool
        with self._lock:
            if self._tasks_pool is None:
                # A task holds a thread while it waits between polls, not a connection: more of them.
                self._tasks_pool = concurrent.futures.ThreadPoolExecutor(self.settings.max_tasks_in_flight,
                                                                         thread_name_prefix="tl-infer-task")
            return self._tasks_pool

    def embed(self, examples: Sequence[Any], columns: Optional[Mapping[str, str]] = None,
              ) -> List[List[Union[Outcome, DeadLetter, Deferred, EmbeddingError]]]:
        """Every example's records (an Outcome, DeadLetter or Deferred per modality), in the batch's order."""
        self._reopen()
        per_example: List[List[Any]] = [[] for _ in examples]
        items: List[Item] = []
        for index, example in enumerate(examples):
            try:
                fields = example_fields(example, columns)
                records = row_to_items(ManifestRow(_SOURCE, index + 1, fields), self.settings.model, self.plan)
            except Exception as exc:  # one bad example must not fail its batch
                per_example[index].append(EmbeddingError("invalid_example", f"{type(exc).__name__}: {exc}",
                                                         "permanent"))
                continue
            for record in records:
                if isinstance(record, Item):
                    items.append(record)
                else:
                    per_example[index].append(record)
        calls = self._pack(self._dedup(items))
        key_rejected: Optional[ApiKeyRejected] = None
        for call, future in self._run_calls(calls):
            try:
                records, call_stats = future.result()
            except ApiKeyRejected as exc:
                key_rejected = exc
                continue
            except Exception as exc:  # a bug in a call's mapping: its items fail, the batch goes on
                records, call_stats = [DeadLetter(i.id, i.source, i.row_number, i.modality, "call", "internal_error",
                                                  f"{type(exc).__name__}: {exc}")
                                       for item in call.items for i in item.with_copies()], None
            if call_stats is not None:
                self.metrics.call(call_stats)  # here, in the bundle's thread (see CallMetrics)
            for record in records:
                row_number = record.item.row_number if isinstance(record, Outcome) else record.row_number
                per_example[row_number - 1].append(record)
        if key_rejected is not None:
            raise key_rejected
        embedded = sum(isinstance(r, Outcome) for records in per_example for r in records)
        deferred = sum(isinstance(r, Deferred) for records in per_example for r in records)
        failed = sum(not any(isinstance(r, Outcome) for r in records) for records in per_example)
        self.metrics.results(embedded=embedded, deferred=deferred)
        self.inference_errors.inc(failed)
        return per_example

    def _run_calls(self, calls: List[Call]) -> Iterable[Any]:
        """(call, finished future) for every call (or part of a packed call) of a batch, as they finish."""
        if self.pacer.is_single:
            futures = {self._pool(call.items[0].route).submit(self.callers[call.items[0].route].run, call): call
                       for call in calls}
            for future in concurrent.futures.as_completed(futures):
                yield futures[future], future
            return
        # A bucket per category: calls wait in a scheduler until their categories have a turn, so a pool thread
        # never blocks on one category's empty bucket while another's calls could go. One scheduler per batch
        # and pool (its own thread only dispatches; the pools are the process's): a batch collects its own calls.
        scheduled: List[ScheduledPool] = []
        split = not self.settings.pack_waits_for_every_category
        for tasks in (False, True):
            group = [call for call in calls if (call.items[0].route == "task") == tasks]
            if not group:
                continue
            slots = self.settings.max_tasks_in_flight if tasks else self.settings.max_in_flight
            pool = ScheduledPool(CategoryScheduler(self.pacer, self.quota, split_packed=split),
                                 self._pool("task" if tasks else "v2"), self._run_scheduled, slots)
            scheduled.append(pool)
            for call in group:
                pool.add(call, None)
        try:
            for pool in scheduled:
                more = True
                while more:
                    done, more, waited = pool.collect(0)
                    if waited:  # a slot was free and only turns were awaited: throttled, as the pacers' waits are
                        self.metrics.call(CallStats(throttled_sec=waited))
                    for future in done:
                        call, inner = future.result()
                        yield call, inner
        finally:
            for pool in scheduled:
                pool.stop()

    def _run_scheduled(self, call: Call, prepaid: bool) -> Any:
        """Runs a call the scheduler handed out (a packed call's ready part, maybe): (that call, a finished
        future of its result), so the records and any error are mapped to the call that was really sent."""
        inner: concurrent.futures.Future = concurrent.futures.Future()
        try:
            inner.set_result(self.callers[call.items[0].route].run(call, prepaid))
        except BaseException as exc:  # re-raised by the batch's thread, as a pool future's would be
            inner.set_exception(exc)
        return call, inner

    def _reopen(self) -> None:
        """Lets a stopped quota call again once the quota has reset (or, when the API named no reset time,
        OUTAGE_RETRY_SEC after the stop), or OUTAGE_RETRY_SEC after an outage stop. A spent max_calls stays spent."""
        quota, now = self.quota, self.clock()
        if quota.stopped not in ("quota_exhausted", "service_unavailable"):
            self._stopped_since = None
            return
        with self._lock:
            self._stopped_since = self._stopped_since or now
            known_reset = quota.resets_at if quota.stopped == "quota_exhausted" else None
            if now < (known_reset if known_reset is not None else self._stopped_since + OUTAGE_RETRY_SEC):
                return
            self._stopped_since = None
            quota.stopped, quota.resets_at, quota.service_failures = None, None, 0

    @staticmethod
    def _dedup(items: List[Item]) -> List[Item]:
        """Identical inputs of a batch (same content, model and options) are called once."""
        first: Dict[str, Item] = {}
        for item in items:
            if item.content_hash in first:
                first[item.content_hash].copies.append(item)
            else:
                first[item.content_hash] = item
        return list(first.values())

    def _pack(self, items: List[Item]) -> List[Call]:
        packer = CallPacker(self.pack)
        calls: List[Call] = []
        for item in items:
            if item.route == "v1":
                calls += packer.add(item)
            else:
                calls.append(Call([item]))
        return calls + packer.flush()

    def close(self) -> None:
        for pool in (self._calls_pool, self._tasks_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _vectors(outcome: Outcome) -> List[List[float]]:
    return [[float(v) for v in vector] for _, _, vector in outcome.segments]


def _segments(outcome: Outcome) -> List[Dict[str, Any]]:
    labels = outcome.labels or [(None, None)] * len(outcome.segments)
    return [{"modality": outcome.item.modality, "segment_index": index, "embedding": [float(v) for v in vector],
             "start_sec": start, "end_sec": end, "embedding_option": option, "embedding_scope": scope}
            for index, ((start, end, vector), (option, scope)) in enumerate(zip(outcome.segments, labels))]


def _inference(records: List[Any], output: str) -> Any:
    order = {m: i for i, m in enumerate(MODALITIES)}
    outcomes = sorted((r for r in records if isinstance(r, Outcome)), key=lambda o: order[o.item.modality])
    errors = [r if isinstance(r, EmbeddingError) else _error(r) for r in records if not isinstance(r, Outcome)]
    errors.sort(key=lambda e: order.get(e.modality, -1))
    if output == "vectors":
        if errors or not outcomes:
            return errors[0] if errors else EmbeddingError("no_result", "nothing was returned", "transient")
        if len(outcomes) == 1:
            return _vectors(outcomes[0])
        return {o.item.modality: _vectors(o) for o in outcomes}
    if not outcomes:
        return errors[0] if errors else EmbeddingError("no_result", "nothing was returned", "transient")
    return {"model_name": outcomes[0].model_name, "segments": [s for o in outcomes for s in _segments(o)],
            "errors": errors}


class TwelveLabsEmbeddingModelHandler(ModelHandler[Any, PredictionResult, TwelveLabsEmbeddingModel]):
    """A `RunInference` model handler for the TwelveLabs embed API.

    Examples: strings (a text) or dicts / beam.Rows with the manifest's fields (`text`, `image_url` or
    `image_file`, `audio_url` or `audio_file`, `video_url` or `video_file`, `asset_id` + `media_type`,
    `start_sec`/`end_sec`, `text_truncate`, ...; `columns` renames yours onto them, e.g. {"caption": "text"}).

    Each example gives one `PredictionResult(example, inference)`:
    - `output="vectors"` (default): the example's segment vectors, `[[float, ...], ...]` (text and images have
      one); an example with several inputs (text and image, say) gives `{modality: [[float, ...], ...]}`.
      If any of its inputs fails, the inference is that input's `EmbeddingError`.
    - `output="segments"`: `{"model_name", "segments": [{"modality", "segment_index", "embedding", "start_sec",
      "end_sec", "embedding_option", "embedding_scope"}, ...], "errors": [EmbeddingError, ...]}`, keeping what
      was embedded of a partly failed example; an `EmbeddingError` when nothing was.

    Batching (`batch_elements_kwargs`): batches of `min_batch_size` (default 8 x max_in_flight) to
    `max_batch_size` (default 512) examples, so a batch holds enough calls to keep `max_in_flight` busy; a
    batch's calls run concurrently, so the wait for its slowest call is paid once per batch, not per call.
    `max_batch_duration_secs` bounds how long a streaming pipeline buffers a batch.

    The model is loaded per process, not shared across processes (`share_model_across_processes()` is False): it
    is an HTTP client and a thread pool, cheap to build and useless behind a cross-process proxy. Processes
    share the account's rate as the job's do: each paces to `requests_per_minute / max_workers`.

    Metrics: Beam's RunInference metrics (namespace `BeamML_TwelveLabs`: num_inferences, batch sizes and
    latencies, failed batches), and the job's `tl_embed` counters: calls, retries, http_429, split_calls,
    items_per_call, call_latency_ms, throttled_msecs, cumulativeThrottlingSeconds, items_embedded,
    items_deferred and inference_errors (examples with nothing embedded).
    """

    def __init__(self, options: Optional[TwelveLabsOptions] = None, *, output: str = "vectors",
                 columns: Optional[Mapping[str, str]] = None, min_batch_size: Optional[int] = None,
                 max_batch_size: Optional[int] = None, max_batch_duration_secs: Optional[int] = None,
                 **kwargs):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
        self.options = options or TwelveLabsOptions()
        # Checks every option now; the run id scopes this step's call budget (max_calls) and quota state.
        self.settings = self.options.call_settings(run_id=uuid.uuid4().hex[:12])
        self.output = output
        self.columns = dict(columns or {})
        in_flight = self.settings.max_in_flight
        min_size = min_batch_size if min_batch_size is not None else 8 * in_flight
        max_size = max_batch_size if max_batch_size is not None else max(512, min_size)
        if min_size < 1 or max_size < min_size:
            raise ValueError(f"need 1 <= min_batch_size <= max_batch_size, got {min_size} and {max_size}")
        super().__init__(min_batch_size=min_size, max_batch_size=max_size,
                         max_batch_duration_secs=max_batch_duration_secs, **kwargs)

    def load_model(self) -> TwelveLabsEmbeddingModel:
        return TwelveLabsEmbeddingModel(self.settings, pack=self.options.pack)

    def run_inference(self, batch: Sequence[Any], model: TwelveLabsEmbeddingModel,
                      inference_args: Optional[Dict[str, Any]] = None) -> Iterable[PredictionResult]:
        self.validate_inference_args(inference_args)
        per_example = model.embed(batch, self.columns)
        return [PredictionResult(example, _inference(records, self.output))
                for example, records in zip(batch, per_example)]

    def validate_inference_args(self, inference_args: Optional[Dict[str, Any]]) -> None:
        if inference_args:
            raise ValueError("TwelveLabsEmbeddingModelHandler takes no inference_args; set everything in "
                             f"TwelveLabsOptions (got {sorted(inference_args)})")

    def share_model_across_processes(self) -> bool:
        return False

    def get_metrics_namespace(self) -> str:
        return "BeamML_TwelveLabs"

    def __repr__(self) -> str:
        return (f"TwelveLabsEmbeddingModelHandler(model={self.options.model!r}, "
                f"base_url={self.options.base_url!r}, output={self.output!r})")
