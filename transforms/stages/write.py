"""Sinks that commit as they go: small Parquet (segments) and JSONL (dead letters) pieces, each written
under a temporary name and renamed, so a killed job keeps everything written up to its last piece."""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from typing import Iterable, List, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from embed_client.secrets import redact_url, scrub
from transforms.memory import return_freed_memory
from transforms.models import MODEL_DIMS
from transforms.records import Outcome
from transforms.store.layout import (
    DEAD_LETTER_DIR,
    DEFERRED_DIR,
    SEGMENT_DIR,
    commit,
    piece_name,
    segment_schema,  # the segment files' columns live with the output's layout; re-exported here
    write_parquet,
    write_parquet_parts,
)
from transforms.store.layout import mkdirs as _mkdirs

__all__ = ["DEAD_LETTER_DIR", "DEFERRED_DIR", "JOURNAL_SUFFIX", "SEGMENT_DIR", "recover_journals", "WriteDeadLetters", "WriteDeferred", "WriteSegments",
           "segment_schema", "segments_table"]

_LOGGER = logging.getLogger(__name__)
# A piece is written when it holds this many rows or is this old: small enough to lose little on a
# kill; finalize compacts the run's pieces into files of reader-sized row groups.
DEFAULT_ROWS_PER_PIECE = 4096
DEFAULT_FLUSH_SEC = 5.0
# A piece's table is built and written this many outcomes at a time (a row group or more each).
WRITE_PART = 1024


def segments_table(outcomes: List[Outcome], dims: int, run_id: str, run_time: datetime.datetime) -> pa.Table:
    """One row per returned segment, built column by column."""
    cols = {name: [] for name in segment_schema(dims).names if name not in ("embedding", "run_id", "run_time")}
    vectors = []
    for outcome in outcomes:
        item = outcome.item
        labels = outcome.labels or [(None, None)] * len(outcome.segments)
        for index, ((start, end, vector), (option, scope)) in enumerate(zip(outcome.segments, labels)):
            cols["embedding_option"].append(option)
            cols["embedding_scope"].append(scope)
            cols["id"].append(item.id)
            cols["modality"].append(item.modality)
            cols["model_name"].append(outcome.model_name)
            cols["segment_index"].append(index)
            cols["start_offset_sec"].append(start)
            cols["end_offset_sec"].append(end)
            cols["input_url"].append(redact_url(item.url))
            cols["input_file"].append(item.input_file_name)
            cols["input_text"].append(item.text)
            cols["content_hash"].append(item.content_hash)
            cols["attributes"].append(item.attributes)
            cols["source"].append(item.source)
            cols["row_number"].append(item.row_number)
            vectors.append(vector)
    n = len(cols["id"])
    flat = np.asarray(vectors, dtype=np.float32).reshape(-1) if n else np.zeros(0, dtype=np.float32)
    schema = segment_schema(dims)
    arrays = {name: pa.array(values, type=schema.field(name).type) for name, values in cols.items()}
    arrays["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dims)
    arrays["run_id"] = pa.array([run_id] * n, type=pa.string())
    arrays["run_time"] = pa.array([run_time] * n, type=schema.field("run_time").type)
    return pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)


_commit = commit


JOURNAL_SUFFIX = ".journal"


def _local_dir(path: str) -> Optional[str]:
    """The OS path of a local output folder; None on object stores (no appends there)."""
    if path.startswith("file://"):
        return path[len("file://"):]
    return None if "://" in path else path


# Object stores cannot append: the journals of an output there are kept on this machine's disk, in a folder
# named after the output folder, and shipped as pieces every flush_sec; the next run on this machine commits
# what a killed run left in them.
JOURNAL_ROOT = os.path.join(tempfile.gettempdir(), "tl-embed-journals")


def _journal_dir(path: str) -> str:
    """Where the journals of the output folder `path` live: the folder itself on a local disk, else a folder
    of JOURNAL_ROOT named after it."""
    local = _local_dir(path)
    if local is not None:
        return local
    return os.path.join(JOURNAL_ROOT, hashlib.sha1(path.rstrip("/").encode("utf-8")).hexdigest()[:20])


class _PieceWriterFn(beam.DoFn):
    """Buffers records and commits a piece every `rows_per_piece` records or `flush_sec` seconds.

    Every record is also appended to a journal as it arrives (one small write, no new file), so a job killed
    between pieces loses nothing it paid for: the next run turns leftover journals into pieces
    (`recover_journals`) before it reads what is done. The journal sits beside the pieces on a local output;
    an object store cannot append, so there it sits on the worker's own disk (`_journal_dir`): a killed job
    rerun on the same machine loses nothing, a lost worker machine loses at most `flush_sec` of results.
    `flush_sec` None (the default) is 5 s; 0 commits each call's results as its own piece, with no journal."""

    suffix = ""

    def __init__(self, output_dir: str, run_id: str, rows_per_piece: int, flush_sec: Optional[float]):
        if rows_per_piece < 1 or (flush_sec is not None and flush_sec < 0):
            raise ValueError("rows_per_piece must be >= 1 and flush_sec >= 0 (0: a piece per call's results)")
        self._dir = output_dir
        self._run_id = run_id
        self._rows_per_piece = rows_per_piece
        self._flush_sec = flush_sec

    def setup(self):
        return_freed_memory()
        _mkdirs(self._dir)
        self._worker = uuid.uuid4().hex[:8]
        self._sequence = 0
        self._journal = None
        if self._flush_sec is None:  # durable by default, cheaply: a journal and a piece every few seconds
            self._flush_sec = DEFAULT_FLUSH_SEC
        self._journal_dir = _journal_dir(self._dir) if self._flush_sec > 0 else None
        if self._journal_dir is not None and _local_dir(self._dir) is None:
            os.makedirs(self._journal_dir, exist_ok=True)

    def start_bundle(self):
        self._buffer = []
        self._oldest = None

    def process(self, record) -> Iterable[str]:
        record = self.held(record)
        self._buffer.append(record)
        if self._journal_dir is not None:
            self._append_journal(record)
        if self._oldest is None:
            self._oldest = time.monotonic()
        if len(self._buffer) >= self._rows_per_piece or time.monotonic() - self._oldest >= self._flush_sec:
            yield self._flush()

    def finish_bundle(self):
        if self._buffer:
            yield GlobalWindows.windowed_value(self._flush())

    def _flush(self) -> str:
        self._sequence += 1
        name = piece_name(self._run_id, self._worker, self._sequence, self.suffix)
        path = _commit(self._dir, name, lambda stream: self.write(self._buffer, stream))
        self._buffer, self._oldest = [], None
        self._drop_journal()  # its records are in the piece now
        return path

    def _append_journal(self, record) -> None:
        if self._journal is None:
            name = f"part-{self._run_id}-{self._worker}-{self._sequence + 1:05d}{self.suffix}{JOURNAL_SUFFIX}"
            self._journal_path = os.path.join(self._journal_dir, name)
            self._journal = open(self._journal_path, "wb")
            self.open_journal(self._journal)
        self.append(record, self._journal)
        self._journal.flush()  # in the OS's hands: a killed process loses nothing

    def _drop_journal(self) -> None:
        if self._journal is not None:
            self.close_journal(self._journal)
            self._journal.close()
            self._journal = None
            try:
                os.remove(self._journal_path)
            except OSError:
                pass

    def teardown(self):
        journal = getattr(self, "_journal", None)
        if journal is not None:
            journal.close()  # kept: the next run recovers it

    def held(self, record):
        """What the buffer keeps of a record until its piece is written."""
        return record

    def write(self, records, stream) -> None:
        raise NotImplementedError

    def open_journal(self, stream) -> None:
        pass

    def append(self, record, stream) -> None:
        raise NotImplementedError

    def close_journal(self, stream) -> None:
        pass


class _SegmentPieceFn(_PieceWriterFn):
    suffix = ".parquet"

    def __init__(self, output_dir, run_id, run_time, model, rows_per_piece, flush_sec, dims=None):
        super().__init__(output_dir, run_id, rows_per_piece, flush_sec)
        self._run_time = run_time
        self._dims = dims or MODEL_DIMS[model]

    def held(self, outcome: Outcome) -> Outcome:
        # Vectors as float32 arrays (2 KB for 512 dims), not the response's Python floats (about 16 KB), nor a
        # one-row Arrow table an outcome (about 6 KB of Arrow buffers and Python objects each).
        segments = [(start, end, np.asarray(vector, dtype=np.float32)) for start, end, vector in outcome.segments]
        return dataclasses.replace(outcome, segments=segments, item=dataclasses.replace(outcome.item, copies=[]))

    def write(self, outcomes, stream) -> None:
        # Built and written WRITE_PART outcomes at a time: the writer holds one part's table, not the piece's.
        parts = (segments_table(outcomes[at:at + WRITE_PART], self._dims, self._run_id, self._run_time)
                 for at in range(0, max(len(outcomes), 1), WRITE_PART))
        write_parquet_parts(segment_schema(self._dims), parts, stream)

    # The journal is an Arrow IPC stream: one small batch per outcome, readable up to a torn last one.
    def open_journal(self, stream) -> None:
        self._ipc = pa.ipc.new_stream(stream, segment_schema(self._dims))

    def append(self, outcome, stream) -> None:
        self._ipc.write_table(segments_table([outcome], self._dims, self._run_id, self._run_time))

    def close_journal(self, stream) -> None:
        self._ipc.close()


_LINE_BREAKS_ESCAPED = {ord(c): f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"}


class _JsonlPieceFn(_PieceWriterFn):
    """One JSON object a line: dead letters and deferred items, readable with any tool."""

    suffix = ".jsonl"

    def _line(self, letter) -> str:
        record = letter.as_dict()
        record["run_id"] = self._run_id
        # Scrubbed as a whole line: messages and the carried manifest row may quote keys or signed URLs.
        line = scrub(json.dumps(record, ensure_ascii=False, sort_keys=True, default=str))
        # Characters Python's splitlines (and some editors) treat as line ends stay escaped: one record a line.
        return line.translate(_LINE_BREAKS_ESCAPED)

    def write(self, records, stream) -> None:
        stream.write(("\n".join(self._line(r) for r in records) + "\n").encode("utf-8"))

    def append(self, record, stream) -> None:
        stream.write((self._line(record) + "\n").encode("utf-8"))


class WriteSegments(beam.PTransform):
    """Outcome -> committed Parquet pieces under OUTPUT/segments/ (emits their paths)."""

    def __init__(self, output: str, run_id: str, run_time: datetime.datetime, model: str,
                 rows_per_piece: int = DEFAULT_ROWS_PER_PIECE, flush_sec: Optional[float] = None,
                 dims: Optional[int] = None):
        super().__init__()
        self._fn = _SegmentPieceFn(FileSystems.join(output, SEGMENT_DIR), run_id, run_time, model,
                                   rows_per_piece, flush_sec, dims)

    def expand(self, outcomes):
        return outcomes | "WritePieces" >> beam.ParDo(self._fn)


class _WriteJsonl(beam.PTransform):
    """Records with as_dict() -> committed JSONL pieces under OUTPUT/<folder>/ (emits their paths)."""

    folder = ""

    def __init__(self, output: str, run_id: str, rows_per_piece: int = DEFAULT_ROWS_PER_PIECE,
                 flush_sec: Optional[float] = None):
        super().__init__()
        self._fn = _JsonlPieceFn(FileSystems.join(output, self.folder), run_id, rows_per_piece, flush_sec)

    def expand(self, records):
        return records | "WritePieces" >> beam.ParDo(self._fn)


class WriteDeadLetters(_WriteJsonl):
    """DeadLetter -> committed JSONL pieces under OUTPUT/dead_letters/."""

    folder = DEAD_LETTER_DIR


class WriteDeferred(_WriteJsonl):
    """Deferred -> committed JSONL pieces under OUTPUT/deferred/."""

    folder = DEFERRED_DIR


def recover_journals(output: str) -> int:
    """Turns journals a killed run left (beside a local output, or on this machine for an object store) into
    committed pieces; returns records recovered.

    Runs before a run reads what is done, under the output's lock, so what the killed run paid for counts."""
    import glob

    recovered = 0
    for folder in (SEGMENT_DIR, DEAD_LETTER_DIR, DEFERRED_DIR):
        target = FileSystems.join(output, folder)
        for journal in sorted(glob.glob(os.path.join(_journal_dir(target), "*" + JOURNAL_SUFFIX))):
            name = os.path.basename(journal)[: -len(JOURNAL_SUFFIX)]
            if name.endswith(".parquet"):
                batches = []
                try:
                    with pa.ipc.open_stream(pa.OSFile(journal, "rb")) as reader:
                        for batch in reader:
                            batches.append(batch)
                except Exception:
                    pass  # a torn last batch: everything before it is whole
                if batches:
                    table = pa.Table.from_batches(batches)
                    _commit(target, name, lambda stream: write_parquet(table, stream))
                    recovered += table.num_rows
            else:
                with open(journal, "rb") as f:
                    data = f.read()
                whole = data[: data.rfind(b"\n") + 1]  # a torn last line is dropped
                if whole:
                    _commit(target, name, lambda stream: stream.write(whole))
                    recovered += whole.count(b"\n")
            os.remove(journal)
        if _local_dir(target) is None:
            try:  # no writer runs now (the output's lock is held): an empty folder goes
                os.rmdir(_journal_dir(target))
            except OSError:
                pass  # none there, or not empty
    return recovered


ROW_RECORDS_SCHEMA = pa.schema([("row_fp", pa.uint64()), ("id_fp", pa.uint64()), ("mask", pa.uint8()),
                                ("source", pa.string()), ("row_number", pa.int64())])


class _RowRecordsFn(beam.DoFn):
    """(row fingerprint, id fingerprint, modalities, manifest, row) of each row read in full, for finalize to
    list the ones that ended saved (key_index.SavedRows). Columns in lists, a file per 16,384 rows."""

    ROWS_PER_FILE = 1 << 14

    def __init__(self, folder: str):
        self._folder = folder

    def setup(self):
        _mkdirs(self._folder)
        self._worker = uuid.uuid4().hex[:8]
        self._sequence = 0

    def start_bundle(self):
        self._columns = [[] for _ in ROW_RECORDS_SCHEMA.names]

    def process(self, record) -> Iterable[str]:
        for column, value in zip(self._columns, record):
            column.append(value)
        if len(self._columns[0]) >= self.ROWS_PER_FILE:
            yield self._flush()

    def finish_bundle(self):
        if self._columns[0]:
            yield GlobalWindows.windowed_value(self._flush())

    def _flush(self) -> str:
        self._sequence += 1
        table = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(self._columns, ROW_RECORDS_SCHEMA)],
                                     schema=ROW_RECORDS_SCHEMA)
        self._columns = [[] for _ in ROW_RECORDS_SCHEMA.names]
        return _commit(self._folder, f"rows-{self._worker}-{self._sequence:05d}.parquet",
                       lambda stream: write_parquet(table, stream))


class WriteRowRecords(beam.PTransform):
    """Row records -> OUTPUT/runs/RUN/rows-*.parquet."""

    def __init__(self, output: str, run_id: str):
        super().__init__()
        from transforms.store.layout import RUNS_DIR

        self._folder = FileSystems.join(output, RUNS_DIR, run_id)

    def expand(self, records):
        return records | "WriteRowRecords" >> beam.ParDo(_RowRecordsFn(self._folder))
