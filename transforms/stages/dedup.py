"""SkipDone and Dedup: never pay twice. Items an earlier run saved are skipped (looked up in the output's key
index), content embedded before under another id reuses the saved vectors, and identical inputs of one run
are embedded once: the first is called and the others get its result.

Two ways to find identical inputs within a run: `stream` (one worker process, the local runner) asks a
per-process RunState as items pass, so nothing waits for the whole manifest; `shuffle` (several worker
processes) groups items by content, as a cluster's shuffle does on disk.
"""
from __future__ import annotations

import collections
import logging
from typing import Dict, Iterable, List, Literal, Optional, Tuple, Union

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms.progress import NAMESPACE, PROGRESS
from transforms.records import DeadLetter, DeadLetterOutput, Deferred, DeferredOutput, Item, Outcome, item_row
from transforms.store import run_state

__all__ = ["FanOutCopies", "GROUPINGS", "ResolveLateCopies", "SkipDoneAndDedup",
           "read_permanent_failures"]

_LOGGER = logging.getLogger(__name__)
GROUPINGS = ("stream", "shuffle")
_SAVED_COLUMNS = ["id", "modality", "model_name", "segment_index", "start_offset_sec", "end_offset_sec", "embedding",
                  "content_hash"]


def _carried(item: Item, earlier: dict) -> DeadLetter:
    return DeadLetter(item.id, item.source, item.row_number, item.modality, earlier.get("stage", "call"),
                      earlier["code"], earlier.get("message", ""), earlier.get("http_status"),
                      earlier.get("attempts", 0), item.content_hash, earlier.get("row"), carried=True)


def outcome_from_saved(item: Item, table: pa.Table) -> Optional[Outcome]:
    """An Outcome for `item` from saved rows of its content (one key's segments, in order); None if absent."""
    rows = table.filter(pc.equal(table.column("content_hash"), item.content_hash))
    if rows.num_rows == 0:
        return None
    first = (rows.column("id")[0].as_py(), rows.column("modality")[0].as_py())
    records = sorted((r for r in rows.to_pylist() if (r["id"], r["modality"]) == first),
                     key=lambda r: r["segment_index"])
    segments = [(r["start_offset_sec"], r["end_offset_sec"], r["embedding"]) for r in records]
    labels = [(r.get("embedding_option"), r.get("embedding_scope")) for r in records]
    return Outcome(item, records[0]["model_name"], segments, attempts=0,
                   labels=labels if any(a or b for a, b in labels) else None)


def _read_saved(path: str) -> pa.Table:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        parquet = pq.ParquetFile(f)
        # Outputs written before v2 have no option/scope columns.
        labelled = "embedding_option" in parquet.schema_arrow.names
        return parquet.read(columns=_SAVED_COLUMNS + (["embedding_option", "embedding_scope"] if labelled else []))


class _SkipSavedFn(beam.DoFn):
    """Item -> Item not saved yet; `reused` Outcomes from saved vectors of the same content under another key;
    `carried` dead letters for content the API refused for good in an earlier run (not paid for again).

    Reused vectors are read here, not in a step of their own: joining two paths again (a Flatten) would make
    the local runner hold every item until the last one is read."""

    REUSED = "reused"
    CARRIED = "carried"

    def __init__(self, output: Optional[str], failed: Dict[Tuple[str, str, str], dict],
                 state: run_state.SharedRunState):
        self._output = output
        self._failed = failed
        self._state_handle = state
        self._done = Metrics.counter(NAMESPACE, "items_already_done")
        self._reused = Metrics.counter(NAMESPACE, "calls_saved_by_dedup")
        self._carried = Metrics.counter(NAMESPACE, "dead_letters_carried")

    def setup(self):
        self._state = self._state_handle.acquire()
        self._cached_path: Optional[str] = None
        self._cached = None

    def start_bundle(self):
        # One copy of the index per process, held by the run's state (released before finalize), not by the DoFn.
        self._index = self._state.key_lookup(self._output) if self._output else None

    def finish_bundle(self):
        self._index = None
        self._cached_path, self._cached = None, None

    def process(self, item: Item) -> Iterable[Union[Item, TaggedOutput[Literal["carried"], DeadLetter],
                                                    TaggedOutput[Literal["reused"], Outcome]]]:
        if self._index is not None and self._index.saved(item.id, item.modality, item.content_hash):
            self._done.inc()
            PROGRESS.add(done=1, skipped=1)
            return
        earlier = self._failed.get((item.id, item.modality, item.content_hash)) if self._failed else None
        if earlier is not None:
            self._carried.inc()
            PROGRESS.add(done=1, dead_letters=1)
            yield beam.pvalue.TaggedOutput(self.CARRIED, _carried(item, earlier))
            return
        saved_in = self._index.content_file(item.content_hash) if self._index is not None else None
        if saved_in is not None:
            outcome = self._reuse(item, saved_in)
            if outcome is not None:
                self._reused.inc()
                PROGRESS.add(done=1, skipped=1)
                yield beam.pvalue.TaggedOutput(self.REUSED, outcome)
                return
        yield item

    def _reuse(self, item: Item, path: str) -> Optional[Outcome]:
        if path != self._cached_path:
            try:
                self._cached, self._cached_path = _read_saved(path), path
            except (IOError, OSError) as exc:
                _LOGGER.warning("cannot read %s (%s): %s %s is embedded again", path, exc, item.id, item.modality)
                return None
        outcome = outcome_from_saved(item, self._cached)
        if outcome is None:  # the index and the file disagree (a file replaced by hand): call it instead
            _LOGGER.warning("%s holds no vectors of %s %s's content any more; it is embedded again", path,
                            item.id, item.modality)
        return outcome


class _StreamDedupFn(beam.DoFn):
    """The first item of each content is called; later ones wait for its result (see FanOutCopies)."""

    LATE = "late"

    def __init__(self, state: run_state.SharedRunState):
        self._state_handle = state
        self._deduped = Metrics.counter(NAMESPACE, "calls_saved_by_dedup")

    def setup(self):
        self._state = self._state_handle.acquire()

    def process(self, item: Item) -> Iterable[Union[Item, TaggedOutput[Literal["late"], Item], DeadLetterOutput,
                                                    DeferredOutput]]:
        fate, record = self._state.claim(item)
        if fate == run_state.CALL:
            yield item
            return
        self._deduped.inc()
        if fate == run_state.EMBEDDED:  # the first item's vectors are written already: copied after the run
            yield beam.pvalue.TaggedOutput(self.LATE, item)
        elif fate != run_state.COPY:
            yield from _share_fate(item, record)


def _share_fate(copy: Item, record) -> Iterable[Union[DeadLetterOutput, DeferredOutput]]:
    """The first item's dead letter or deferral, for an identical item."""
    if isinstance(record, DeadLetter):
        prefix = f"{record.source} row {record.row_number}: "
        message = record.message[len(prefix):] if record.message.startswith(prefix) else record.message
        PROGRESS.add(done=1, dead_letters=1)
        yield beam.pvalue.TaggedOutput("dead_letters", DeadLetter(
            copy.id, copy.source, copy.row_number, copy.modality, record.stage, record.code,
            f"{copy.source} row {copy.row_number}: {message}", record.http_status, record.attempts,
            copy.content_hash, item_row(copy)))
    elif isinstance(record, Deferred):
        PROGRESS.add(done=1, deferred=1)
        yield beam.pvalue.TaggedOutput("deferred", Deferred(copy.id, copy.source, copy.row_number, copy.modality,
                                                            record.reason, record.resets_at, record.detail))


class FanOutCopies(beam.PTransform):
    """After a calling step (stream grouping): each first item's outcome, dead letter or deferral is also
    given to the identical items that waited for it. Returns {outcomes, dead_letters, deferred}."""

    def __init__(self, state: run_state.SharedRunState):
        super().__init__()
        self._state = state

    def expand(self, called):
        state = self._state
        return {
            "outcomes": called["outcomes"] | "FanOutOutcomes" >> beam.ParDo(_FanOutFn(state, Outcome)),
            "dead_letters": called["dead_letters"] | "FanOutDeadLetters" >> beam.ParDo(_FanOutFn(state, DeadLetter)),
            "deferred": called["deferred"] | "FanOutDeferred" >> beam.ParDo(_FanOutFn(state, Deferred)),
        }


class _FanOutFn(beam.DoFn):
    def __init__(self, state: run_state.SharedRunState, kind: type):
        self._state_handle = state
        self._kind = kind
        self._embedded = Metrics.counter(NAMESPACE, "items_embedded")
        self._deferred = Metrics.counter(NAMESPACE, "items_deferred")

    def setup(self):
        self._state = self._state_handle.acquire()

    def process(self, record) -> Iterable:
        yield record
        if isinstance(record, Outcome):
            copies = self._state.settle(record.item.id, record.item.modality, run_state.EMBEDDED, None)
            for copy in copies:
                self._embedded.inc()
                PROGRESS.add(done=1, embedded=1)
                yield Outcome(copy, record.model_name, record.segments, record.attempts, record.labels)
            return
        fate = run_state.FAILED if isinstance(record, DeadLetter) else run_state.DEFERRED
        for copy in self._state.settle(record.id, record.modality, fate, record):
            for shared in _share_fate(copy, record):
                if fate == run_state.DEFERRED:
                    self._deferred.inc()
                yield shared.value


class _ResolveLateFn(beam.DoFn):
    """Identical items that arrived after the first one's vectors were written: copied from this run's pieces
    once every piece is committed (a side input, so this waits for the writers)."""

    def process(self, item: Item, pieces: List[str]) -> Iterable:
        if not hasattr(self, "_by_content"):
            self._by_content: Dict[str, List[Item]] = collections.defaultdict(list)
            self._pieces = pieces
        self._by_content[item.content_hash].append(item)

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows

        waiting = getattr(self, "_by_content", None)
        if not waiting:
            return
        wanted = pa.array(sorted(waiting), pa.string())
        for path in self._pieces:
            if not path.endswith(".parquet") or not waiting:
                continue
            table = _read_saved(path)
            table = table.filter(pc.is_in(table.column("content_hash"), value_set=wanted))
            for digest in set(table.column("content_hash").to_pylist()):
                for item in waiting.pop(digest, []):
                    outcome = outcome_from_saved(item, table)
                    PROGRESS.add(done=1, embedded=1)
                    yield GlobalWindows.windowed_value(outcome)
        for items in waiting.values():  # cannot happen unless a piece vanished: the next run embeds them
            for item in items:
                PROGRESS.add(done=1, deferred=1)
                yield beam.pvalue.TaggedOutput("deferred", GlobalWindows.windowed_value(Deferred(
                    item.id, item.source, item.row_number, item.modality, "duplicate_pending",
                    detail="identical to an item of this run whose vectors could not be read back")))
        self._by_content = collections.defaultdict(list)


class ResolveLateCopies(beam.PTransform):
    """late items + this run's committed segment pieces -> {outcomes, deferred}."""

    def __init__(self, pieces):
        super().__init__()
        self._pieces = pieces

    def expand(self, late):
        resolved = late | "CopyFromThisRun" >> beam.ParDo(
            _ResolveLateFn(), beam.pvalue.AsList(self._pieces)).with_outputs("deferred", main="outcomes")
        return {"outcomes": resolved.outcomes, "deferred": resolved.deferred}


def _elect(keyed) -> Iterable:
    _, items = keyed
    items = sorted(items, key=lambda i: (i.id, i.modality, i.source, i.row_number))
    elected = items[0]
    elected.copies = items[1:]
    if elected.copies:
        Metrics.counter(NAMESPACE, "calls_saved_by_dedup").inc(len(elected.copies))
    yield elected


class SkipDoneAndDedup(beam.PTransform):
    """Item -> {to_call, reused, carried, late, dead_letters, deferred}.

    `output` is the output folder whose key index says what is saved (None: nothing is). With the `stream`
    grouping the items to call have no `copies`: apply FanOutCopies(self.state) to the calling step's
    results, and ResolveLateCopies to `late` once the writers are done."""

    def __init__(self, output: Optional[str], model: str, failed: Optional[Dict[Tuple[str, str, str], dict]] = None,
                 grouping: str = "stream", token: str = "", state: Optional[run_state.SharedRunState] = None):
        super().__init__()
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
        self._output = output
        self._model = model
        self._failed = dict(failed or {})
        self._grouping = grouping
        self._token = token or f"{output}:{id(self)}"
        self.state = state or run_state.SharedRunState(self._token + ":run")

    def expand(self, items):
        checked = items | "SkipSaved" >> beam.ParDo(
            _SkipSavedFn(self._output, self._failed, self.state)).with_outputs(
            _SkipSavedFn.REUSED, _SkipSavedFn.CARRIED, main="new")
        fresh, reused = checked.new, checked[_SkipSavedFn.REUSED]
        empty = items.pipeline | "NoLateItems" >> beam.Create([])
        if self._grouping == "shuffle":
            to_call = (fresh | "KeyByContent" >> beam.Map(lambda item: (item.content_hash, item))
                       | "GroupByContent" >> beam.GroupByKey() | "Elect" >> beam.FlatMap(_elect))
            return {"to_call": to_call, "reused": reused, "carried": checked[_SkipSavedFn.CARRIED],
                    "late": empty, "dead_letters": items.pipeline | "NoDedupDeadLetters" >> beam.Create([]),
                    "deferred": items.pipeline | "NoDedupDeferred" >> beam.Create([])}
        deduped = fresh | "DedupInRun" >> beam.ParDo(_StreamDedupFn(self.state)).with_outputs(
            _StreamDedupFn.LATE, "dead_letters", "deferred", main="to_call")
        return {"to_call": deduped.to_call, "reused": reused, "carried": checked[_SkipSavedFn.CARRIED],
                "late": deduped[_StreamDedupFn.LATE], "dead_letters": deduped.dead_letters,
                "deferred": deduped.deferred}


def read_permanent_failures(output: str) -> Dict[Tuple[str, str, str], dict]:
    """Earlier runs' permanent call failures, by (id, modality, content hash): not paid for again."""
    from transforms.records import failure_kind
    from transforms.store.layout import DEAD_LETTER_DIR, list_files, read_jsonl

    failed: Dict[Tuple[str, str, str], dict] = {}
    for path in list_files(FileSystems.join(output, DEAD_LETTER_DIR), "*.jsonl"):
        for record in read_jsonl(path):
            if (record.get("stage") == "call" and record.get("content_hash") and record.get("id")
                    and failure_kind(record.get("code", ""), record.get("http_status")) == "permanent"):
                failed[(record["id"], record.get("modality"), record["content_hash"])] = record
    return failed
