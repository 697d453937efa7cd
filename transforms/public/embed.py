"""`EmbedWithTwelveLabs`: TwelveLabs embeddings as one step of any Beam pipeline.

(No `from __future__ import annotations` here: Beam reads the row types' field types at run time.)

    import apache_beam as beam
    from transforms import EmbedWithTwelveLabs, TwelveLabsOptions

    with beam.Pipeline() as p:
        result = (p | beam.Create([{"id": "a", "text": "a dog in a park"}])
                    | EmbedWithTwelveLabs(TwelveLabsOptions(requests_per_minute=600)))
        result["embeddings"] | beam.Map(print)      # EmbeddingRow, a schema'd row per segment
        result["dead_letters"] | beam.Map(print)    # DeadLetterRow, one per rejected input and modality
        result["deferred"] | beam.Map(print)        # DeferredRow: quota or budget spent, run again later

The same validation, routing (v1 packed, v2, async tasks), pacing, retries and error mapping as the batch
job, without its output folder: nothing is skipped as "already done" (that is the job's resume feature),
but identical inputs inside the transform (per window) are called once.
"""

import dataclasses
import json
import math
import uuid
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms import trigger, window

from embed_client.secrets import redact_url
from transforms.records import DEAD_LETTERS, DEFERRED, DeadLetter, Deferred, ManifestRow, Outcome, failure_kind
from transforms.settings import DEFAULTS, CallSettings, CategoryLimit, EmbeddingSettings, settings_from
from transforms.stages.call import CreateEmbeddings
from transforms.stages.pack import DEFAULT_MAX_WAITING, CallPacker, RouteAndPack
from transforms.stages.read import map_columns
from transforms.stages.validate import RoutePlan, ValidateRows

__all__ = ["DeadLetterRow", "DeferredRow", "EMBEDDINGS", "EmbedWithTwelveLabs", "EmbeddingRow", "TwelveLabsOptions"]

EMBEDDINGS = "embeddings"
_DEFAULT_BASE_URL = "https://api.twelvelabs.io/v1.3"


class EmbeddingRow(NamedTuple):
    """One returned vector: a segment of an input (text and images have one, segment_index 0)."""

    id: str
    modality: str
    model_name: str
    segment_index: int
    start_sec: Optional[float]
    end_sec: Optional[float]
    embedding: List[float]
    embedding_option: Optional[str]
    embedding_scope: Optional[str]
    input_text: Optional[str]
    input_url: Optional[str]
    input_file: Optional[str]
    content_hash: str
    attributes: str


class DeadLetterRow(NamedTuple):
    """An input (and modality) that could not be embedded, and why."""

    id: Optional[str]
    modality: Optional[str]
    stage: str
    code: str
    kind: str            # transient (try again later) | permanent
    message: str
    http_status: Optional[int]
    attempts: int
    row: str             # the input's fields as JSON


class DeferredRow(NamedTuple):
    """An input not called because the quota or call budget was spent, or whose task had not finished."""

    id: str
    modality: str
    reason: str
    resets_at: Optional[str]
    detail: Optional[str]


for _row_type in (EmbeddingRow, DeadLetterRow, DeferredRow):
    coders.registry.register_coder(_row_type, coders.RowCoder)


@dataclasses.dataclass(frozen=True)
class TwelveLabsOptions:
    """Everything the transform needs, in one object. The key comes from TWELVE_LABS_API_KEY on every
    worker, or from `key_file` (any FileSystems path): never from an option that lands in pipeline options."""

    model: str = DEFAULTS["model"]
    api_version: str = DEFAULTS["api_version"]
    base_url: str = _DEFAULT_BASE_URL
    requests_per_minute: Optional[float] = DEFAULTS["requests_per_minute"]
    max_workers: int = DEFAULTS["max_workers"]
    max_in_flight: int = DEFAULTS["max_in_flight"]
    pack: bool = DEFAULTS["pack"]
    max_attempts: int = DEFAULTS["max_attempts"]
    item_deadline_sec: float = DEFAULTS["item_deadline_sec"]
    key_file: Optional[str] = DEFAULTS["key_file"]
    embedding: EmbeddingSettings = EmbeddingSettings()
    max_calls: Optional[int] = DEFAULTS["max_calls"]
    task_deadline_sec: float = DEFAULTS["task_deadline_sec"]
    task_poll_sec: float = DEFAULTS["task_poll_sec"]
    # Streaming input: an input waits at most `max_wait_sec` (processing time) for identical inputs and
    # call-mates before its call goes out; `max_waiting` bounds the inputs of one modality waiting to be packed.
    max_wait_sec: float = 5.0
    max_waiting: int = DEFAULT_MAX_WAITING

    connect_timeout_sec: float = DEFAULTS["connect_timeout_sec"]
    read_timeout_sec: float = DEFAULTS["read_timeout_sec"]
    rate_limit_backend: str = DEFAULTS["rate_limit_backend"]
    redis_url: Optional[str] = DEFAULTS["redis_url"]
    rate_limit_key: str = DEFAULTS["rate_limit_key"]
    max_tasks_in_flight: int = DEFAULTS["max_tasks_in_flight"]
    media_minutes_per_hour: Optional[float] = DEFAULTS["media_minutes_per_hour"]
    outage_after_failures: int = DEFAULTS["outage_after_failures"]
    # Large audio/video files go through the Assets API (kept on the platform: a plain pipeline has no
    # output folder to remember them in, so each worker process uploads a file once per pipeline).
    asset_upload: str = DEFAULTS["asset_upload"]
    direct_upload_max_bytes: int = DEFAULTS["direct_upload_max_bytes"]
    max_parallel_chunks: int = DEFAULTS["max_parallel_chunks"]
    assets_requests_per_minute: Optional[float] = DEFAULTS["assets_requests_per_minute"]
    asset_ready_timeout_sec: float = DEFAULTS["asset_ready_timeout_sec"]
    asset_poll_sec: float = DEFAULTS["asset_poll_sec"]
    # Per rate-limit category (text, image, audio, video): e.g. (CategoryLimit("audio", 60),). Empty: one
    # bucket for every category at requests_per_minute.
    category_limits: Tuple[CategoryLimit, ...] = ()
    pack_waits_for_every_category: bool = DEFAULTS["pack_waits_for_every_category"]

    def call_settings(self, run_id: str) -> CallSettings:
        return settings_from(self, base_url=self.base_url, run_id=run_id, embedding=self.embedding)


class _ToManifestRow(beam.DoFn):
    def __init__(self, source: str, columns: Mapping[str, str]):
        self._source = source
        self._columns = dict(columns)

    def process(self, element: Union[dict, beam.Row, Any]):
        if isinstance(element, dict):
            fields = dict(element)
        elif hasattr(element, "_asdict"):
            fields = element._asdict()
        elif isinstance(element, beam.Row):
            fields = element.as_dict()
        else:
            raise TypeError(f"EmbedWithTwelveLabs takes dicts or beam.Rows, got {type(element).__name__}")
        fields = {k: v for k, v in map_columns(fields, self._columns).items() if v is not None}
        yield ManifestRow(self._source, 0, fields)


class _KeepWindows(window.NonMergingWindowFn):
    """Keeps each element's windows: WindowInto with it changes only the trigger (assigning sliding windows
    anew would copy every element)."""

    def __init__(self, coder):
        self._coder = coder

    def assign(self, context):
        return [context.window]

    def get_window_coder(self):
        return self._coder


def _same_windows(windowing) -> window.WindowFn:
    fn = windowing.windowfn
    return fn if fn.is_merging() else _KeepWindows(fn.get_window_coder())


def _whole_seconds(seconds: float) -> int:
    """AfterProcessingTime takes whole seconds (its proto holds milliseconds, read back as seconds)."""
    return max(1, math.ceil(seconds))


def _elect(keyed):
    """Identical inputs (same content, model and options) are called once; the others get its vectors."""
    _, items = keyed
    items = sorted(items, key=lambda i: (i.id, i.modality))
    first = items[0]
    first.copies = items[1:]
    yield first


def _embedding_rows(outcome: Outcome):
    item = outcome.item
    labels = outcome.labels or [(None, None)] * len(outcome.segments)
    for index, ((start, end, vector), (option, scope)) in enumerate(zip(outcome.segments, labels)):
        yield EmbeddingRow(item.id, item.modality, outcome.model_name, index, start, end,
                           [float(v) for v in vector], option, scope, item.text, redact_url(item.url),
                           item.input_file_name, item.content_hash, item.attributes)


def _dead_letter_row(letter: DeadLetter) -> DeadLetterRow:
    return DeadLetterRow(letter.id, letter.modality, letter.stage, letter.code,
                         failure_kind(letter.code, letter.http_status), letter.message, letter.http_status,
                         letter.attempts, json.dumps(letter.row or {}, default=str, sort_keys=True))


def _deferred_row(record: Deferred) -> DeferredRow:
    return DeferredRow(record.id, record.modality, record.reason, record.as_dict()["resets_at"], record.detail)


def _deferred_as_dead_letter(record: DeferredRow) -> DeadLetterRow:
    return DeadLetterRow(record.id, record.modality, "call", f"deferred_{record.reason}", "transient",
                         f"not called: {record.reason}" + (f" ({record.detail})" if record.detail else ""),
                         None, 0, "{}")


class EmbedWithTwelveLabs(beam.PTransform):
    """PCollection[dict | beam.Row] -> {"embeddings": EmbeddingRow, "dead_letters": DeadLetterRow,
    "deferred": DeferredRow}.

    Input fields are the manifest's (`id`, `text`, `image_url`, `image_file`, `audio_url`, `audio_file`,
    `video_url`, `video_file`, `asset_id` + `media_type`, `start_sec`, `end_sec`, ...), or any fields with
    `columns` mapping them ({"description": "text"}); other fields travel as `attributes` (JSON). With
    `deferred_as_dead_letters`, deferred inputs join the dead letters (code `deferred_<reason>`) and the
    `deferred` output is empty: for scripts that only watch one failure output.
    Works under any windowing: inputs are packed, deduplicated and called within their window. Streaming
    (unbounded) input is called as it arrives, in any window including the global one: an input waits at
    most `options.max_wait_sec` for identical inputs and call-mates, and no more than `options.max_waiting`
    of one modality wait to be packed.
    """

    def __init__(self, options: Optional[TwelveLabsOptions] = None, *, columns: Optional[Mapping[str, str]] = None,
                 deferred_as_dead_letters: bool = False, source_name: str = "pipeline"):
        super().__init__()
        self._options = options or TwelveLabsOptions()
        self._settings = self._options.call_settings(run_id=uuid.uuid4().hex[:12])  # checks every option now
        if not self._options.max_wait_sec > 0:
            raise ValueError(f"max_wait_sec must be > 0, got {self._options.max_wait_sec!r}")
        CallPacker(True, self._options.max_waiting, self._options.max_wait_sec)
        self._columns = dict(columns or {})
        self._deferred_as_dead_letters = deferred_as_dead_letters
        self._source = source_name

    def expand(self, inputs) -> Dict[str, beam.PCollection]:
        settings = self._settings
        rows = inputs | "ToRows" >> beam.ParDo(_ToManifestRow(self._source, self._columns))
        streaming = not inputs.is_bounded
        if streaming:
            # The groupings below (ids, identical inputs) must not wait for the window's end, or forever in the
            # global window: they fire max_wait_sec after an input arrives (duplicates are found within that
            # time), and at the window's end for what is left.
            original = rows.windowing
            wait = trigger.AfterProcessingTime(_whole_seconds(self._options.max_wait_sec))
            rows = rows | "BufferByTime" >> beam.WindowInto(
                _same_windows(original), trigger=trigger.Repeatedly(trigger.AfterAll(trigger.AfterCount(1), wait)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING, allowed_lateness=original.allowed_lateness)
        valid = rows | "Validate" >> ValidateRows(settings.model, RoutePlan.from_settings(settings))
        unique = (valid["items"]
                  | "KeyByContent" >> beam.Map(lambda item: (item.content_hash, item))
                  | "GroupByContent" >> beam.GroupByKey()
                  | "CallOncePerContent" >> beam.FlatMap(_elect))
        if streaming:  # the outputs keep the input's trigger
            unique = unique | "RestoreTrigger" >> beam.WindowInto(
                _same_windows(original), trigger=original.triggerfn, accumulation_mode=original.accumulation_mode,
                timestamp_combiner=original.timestamp_combiner, allowed_lateness=original.allowed_lateness)
        routes = unique | "RouteAndPack" >> RouteAndPack(self._options.pack, self._options.max_waiting,
                                                         self._options.max_wait_sec if streaming else None)
        outcomes, dead, deferred = [], [valid[DEAD_LETTERS]], []
        for route, calls in routes.items():
            called = calls | f"Call_{route}" >> CreateEmbeddings(settings, kind=route)
            outcomes.append(called.outcomes)
            dead.append(called[DEAD_LETTERS])
            deferred.append(called[DEFERRED])
        embeddings = (tuple(outcomes) | "MergeOutcomes" >> beam.Flatten()
                      | "ToEmbeddingRows" >> beam.FlatMap(_embedding_rows).with_output_types(EmbeddingRow))
        dead_rows = (tuple(dead) | "MergeDeadLetters" >> beam.Flatten()
                     | "ToDeadLetterRows" >> beam.Map(_dead_letter_row).with_output_types(DeadLetterRow))
        deferred_rows = (tuple(deferred) | "MergeDeferred" >> beam.Flatten()
                         | "ToDeferredRows" >> beam.Map(_deferred_row).with_output_types(DeferredRow))
        if self._deferred_as_dead_letters:
            as_dead = deferred_rows | "DeferredAsDeadLetters" >> beam.Map(
                _deferred_as_dead_letter).with_output_types(DeadLetterRow)
            dead_rows = (dead_rows, as_dead) | "JoinDeferred" >> beam.Flatten()
            deferred_rows = deferred_rows | "NoneLeft" >> beam.Filter(lambda _: False).with_output_types(DeferredRow)
        return {EMBEDDINGS: embeddings, DEAD_LETTERS: dead_rows, DEFERRED: deferred_rows}
