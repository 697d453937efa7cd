"""SkipDone and Dedup: never pay twice. Items whose embedding an earlier run saved are skipped, identical
inputs are embedded once, and content embedded before under another id reuses the saved vectors."""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.items import DeadLetter, Item, Outcome
from transforms.constants import NAMESPACE
from transforms.progress import PROGRESS

__all__ = ["DoneRecord", "SkipDoneAndDedup", "canonical_model", "list_segment_pieces", "read_done_records"]

_LOGGER = logging.getLogger(__name__)
_KEY_COLUMNS = ["id", "modality", "model_name", "content_hash", "segment_index"]


def canonical_model(name: str) -> str:
    """The API answers with either spelling of Marengo 2.7; both mean one model."""
    lowered = name.lower()
    return "marengo2.7" if lowered in ("marengo2.7", "marengo-retrieval-2.7") else lowered


@dataclasses.dataclass
class DoneRecord:
    """An (id, modality, content) whose segments an earlier run committed, and where they are."""

    id: str
    modality: str
    content_hash: str
    path: str
    rows: List[int]  # row positions of its segments in the piece, in segment order


def list_segment_pieces(segment_dir: str) -> List[str]:
    """Committed pieces (temporary files of unfinished writes end in .tmp and are not matched)."""
    from transforms.layout import list_files

    return list_files(segment_dir, "*.parquet")


def read_done_records(path: str, model: str) -> Iterable[Tuple[str, DoneRecord]]:
    """(content_hash, DoneRecord) for every item of `model` in one piece; reads the key columns only."""
    with FileSystems.open(path, compression_type="uncompressed") as f:
        table = pq.read_table(f, columns=_KEY_COLUMNS)
    wanted = canonical_model(model)
    grouped: Dict[Tuple[str, str, str], List[Tuple[int, int]]] = collections.OrderedDict()
    columns = [table.column(c).to_pylist() for c in _KEY_COLUMNS]
    for row, (item_id, modality, model_name, digest, index) in enumerate(zip(*columns)):
        if canonical_model(model_name) == wanted:
            grouped.setdefault((item_id, modality, digest), []).append((index, row))
    for (item_id, modality, digest), segments in grouped.items():
        yield digest, DoneRecord(item_id, modality, digest, path, [row for _, row in sorted(segments)])


class _SkipAndDedupFn(beam.DoFn):
    """Per content key: drop items already done, reuse earlier vectors, or elect one item to call."""

    REUSE = "reuse"
    CARRIED = "carried"

    def __init__(self, failed: Optional[Dict[Tuple[str, str, str], dict]] = None):
        self._done = Metrics.counter(NAMESPACE, "items_already_done")
        self._deduped = Metrics.counter(NAMESPACE, "calls_saved_by_dedup")
        self._carried = Metrics.counter(NAMESPACE, "dead_letters_carried")
        self._failed = failed or {}

    def process(self, keyed) -> Iterable:
        _, groups = keyed
        items: List[Item] = sorted(groups["items"], key=lambda i: (i.id, i.modality, i.source, i.row_number))
        done: List[DoneRecord] = list(groups["done"])
        done_keys = {(r.id, r.modality) for r in done}
        remaining = [i for i in items if (i.id, i.modality) not in done_keys]
        self._done.inc(len(items) - len(remaining))
        PROGRESS.add(done=len(items) - len(remaining), skipped=len(items) - len(remaining))
        if self._failed:
            # The API refused this content for good in an earlier run: report it again, do not pay again.
            still = []
            for item in remaining:
                earlier = self._failed.get((item.id, item.modality, item.content_hash))
                if earlier is None:
                    still.append(item)
                    continue
                self._carried.inc()
                PROGRESS.add(done=1, dead_letters=1)
                yield beam.pvalue.TaggedOutput(self.CARRIED, DeadLetter(
                    item.id, item.source, item.row_number, item.modality, earlier.get("stage", "call"),
                    earlier["code"], earlier.get("message", ""), earlier.get("http_status"),
                    earlier.get("attempts", 0), item.content_hash, earlier.get("row"), carried=True))
            remaining = still
        if not remaining:
            return
        if done:
            # Embedded before under another id: copy the saved vectors instead of calling again.
            self._deduped.inc(len(remaining))
            for item in remaining:
                yield beam.pvalue.TaggedOutput(self.REUSE, (item, done[0]))
            return
        elected = remaining[0]
        elected.copies = remaining[1:]
        self._deduped.inc(len(elected.copies))
        yield elected


class _ReuseSavedFn(beam.DoFn):
    """Builds an Outcome for an item from segments an earlier run saved."""

    def setup(self):
        self._cached_path: Optional[str] = None
        self._cached = None

    def process(self, pair) -> Iterable[Outcome]:
        item, record = pair
        if record.path != self._cached_path:
            with FileSystems.open(record.path, compression_type="uncompressed") as f:
                parquet = pq.ParquetFile(f)
                # Outputs written before v2 have no option/scope columns.
                labelled = "embedding_option" in parquet.schema_arrow.names
                self._cached = parquet.read(columns=["model_name", "start_offset_sec", "end_offset_sec", "embedding"]
                                            + (["embedding_option", "embedding_scope"] if labelled else []))
            self._cached_path = record.path
        rows = self._cached.take(record.rows).to_pylist()
        segments = [(r["start_offset_sec"], r["end_offset_sec"], r["embedding"]) for r in rows]
        labels = [(r.get("embedding_option"), r.get("embedding_scope")) for r in rows]
        PROGRESS.add(done=1, skipped=1)
        yield Outcome(item, rows[0]["model_name"], segments, attempts=0,
                      labels=labels if any(a or b for a, b in labels) else None)


class SkipDoneAndDedup(beam.PTransform):
    """Item -> Item to call (with `copies`), plus a `reused` output of Outcomes built from saved vectors.

    `pieces` are the segment pieces already in the output when the job was built.
    """

    def __init__(self, pieces: Sequence[str], model: str, failed: Optional[Dict[Tuple[str, str, str], dict]] = None):
        super().__init__()
        self._pieces = list(pieces)
        self._model = model
        self._failed = dict(failed or {})

    def expand(self, items):
        model = self._model
        done = (
            items.pipeline
            | "SavedPieces" >> beam.Create(self._pieces or [None])
            | "ReadSavedKeys" >> beam.FlatMap(lambda path: read_done_records(path, model) if path else [])
        )
        keyed_items = items | "KeyByContent" >> beam.Map(lambda item: (item.content_hash, item))
        grouped = (
            {"items": keyed_items, "done": done}
            | "GroupByContent" >> beam.CoGroupByKey()
            | "SkipAndDedup" >> beam.ParDo(_SkipAndDedupFn(self._failed)).with_outputs(
                _SkipAndDedupFn.REUSE, _SkipAndDedupFn.CARRIED, main="to_call")
        )
        reused = grouped[_SkipAndDedupFn.REUSE] | "ReuseSaved" >> beam.ParDo(_ReuseSavedFn())
        return {"to_call": grouped.to_call, "reused": reused, "carried": grouped[_SkipAndDedupFn.CARRIED]}


def read_permanent_failures(output: str) -> Dict[Tuple[str, str, str], dict]:
    """Earlier runs' permanent call failures, by (id, modality, content hash): not paid for again."""
    from transforms.items import failure_kind
    from transforms.layout import DEAD_LETTER_DIR, list_files, read_jsonl

    failed: Dict[Tuple[str, str, str], dict] = {}
    for path in list_files(FileSystems.join(output, DEAD_LETTER_DIR), "*.jsonl"):
        for record in read_jsonl(path):
            if (record.get("stage") == "call" and record.get("content_hash") and record.get("id")
                    and failure_kind(record.get("code", ""), record.get("http_status")) == "permanent"):
                failed[(record["id"], record.get("modality"), record["content_hash"])] = record
    return failed
