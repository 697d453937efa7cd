"""Saved prefixes: a rerun skips the start of a JSONL manifest that earlier runs saved whole by hashing its bytes
once, instead of hashing and looking up each line.

A run records, for each JSONL manifest it reads, a read map: every line's fingerprint in order, and a running
hash of the file's bytes (keyed like the saved rows) at every MARK_ROWS lines. When the run finishes, finalize
keeps the longest marked prefix whose rows are all saved rows as a checkpoint (`OUTPUT/index/prefix-*.parquet`),
named by the hash of its first mark: by content, so a manifest written again under a new name (a daily export
that grew) finds it too. The next run hashes a manifest's first MARK_ROWS lines, finds the checkpoint of that
name, checks mark after mark against its bytes, meets the rows of the longest matching prefix at once
(duplicate ids still name them) and parses from there on."""
from __future__ import annotations

import hashlib
import hmac
import json
from typing import Callable, Iterable, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.store.layout import INDEX_DIR, RUNS_DIR, list_files, mkdirs, replace, write_parquet

__all__ = ["MARK_ROWS", "CheckedPrefix", "Prefix", "ReadMap", "check_prefix", "load_prefix", "settle_prefixes",
           "skip_checked", "skip_prefix", "skipped_masks"]

# Lines between marks: a multiple of the reader's batch (2,048 lines), so marks fall on batch ends.
MARK_ROWS = 4096
_READ_CHUNK = 1 << 20
_META = b"saved_prefix"
_SCHEMA = pa.schema([("row_fp", pa.uint64())])

Mark = Tuple[int, int, str]  # (lines, bytes, hex digest of those bytes)


def _prefix_hasher(key: bytes):
    """The keyed hash of a manifest's bytes: HMAC-SHA256, which CPUs with SHA extensions run at over 1 GB/s
    (twice blake2b's speed here), and a rerun hashes its whole saved prefix before its first call."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _name(source: str) -> str:
    return hashlib.blake2b(source.encode("utf-8"), digest_size=12).hexdigest()


class ReadMap:
    """What one run read of one JSONL manifest, line by line, for finalize to turn into a checkpoint."""

    def __init__(self, key: bytes):
        self._hasher = _prefix_hasher(key)
        self._fps: List[np.ndarray] = []
        self.rows = 0
        self.nbytes = 0
        self.marks: List[Mark] = []
        self.valid = True

    def continue_after(self, prefix: "Prefix", hasher) -> None:
        """The prefix was skipped: its lines and marks are this read's too, and hashing goes on from it."""
        self._hasher = hasher
        self._fps = [prefix.fps]
        self.rows, self.nbytes, self.marks = prefix.rows, prefix.nbytes, list(prefix.marks)

    def add(self, lines: List[bytes], fps: np.ndarray) -> None:
        """Consecutive whole lines (ended by LF) with their row fingerprints."""
        self._hasher.update(b"\n".join(lines) + b"\n")
        self._fps.append(np.asarray(fps, dtype=np.uint64))
        self.rows += len(lines)
        self.nbytes += sum(map(len, lines)) + len(lines)
        if self.rows % MARK_ROWS == 0:
            self.marks.append((self.rows, self.nbytes, self._hasher.copy().hexdigest()))

    def write(self, output: str, run_id: str, source: str) -> None:
        if not self.valid or not self.marks:
            return
        fps = np.concatenate(self._fps) if self._fps else np.zeros(0, np.uint64)
        meta = {"source": source, "marks": self.marks}
        table = pa.table({"row_fp": fps}, schema=_SCHEMA.with_metadata({_META: json.dumps(meta)}))
        folder = FileSystems.join(output, RUNS_DIR, run_id)
        mkdirs(folder)
        replace(FileSystems.join(folder, f"readmap-{_name(source)}.parquet"), lambda f: write_parquet(table, f))


class Prefix:
    """A checkpoint: its first `rows` lines (`nbytes` bytes) were all saved rows when it was written."""

    def __init__(self, fps: np.ndarray, marks: List[Mark], positions: Optional[np.ndarray] = None):
        self.fps, self.marks = fps, marks
        self.rows, self.nbytes, self.digest = marks[-1]
        self.positions = positions  # of its lines among the saved rows (SavedRows.find), once looked up

    def upto(self, count: int) -> "Prefix":
        """The checkpoint cut to its first `count` marks."""
        marks = self.marks[:count]
        rows = marks[-1][0]
        return Prefix(self.fps[:rows], marks, None if self.positions is None else self.positions[:rows])


class _PushedBack:
    """A stream with bytes already read put back in front of it."""

    def __init__(self, head: bytes, stream):
        self._head, self._stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        if size < 0:
            head, self._head = self._head, b""
            return head + self._stream.read()
        head, self._head = self._head[:size], self._head[size:]
        return head


def _read_exactly(stream, size: int) -> bytes:
    parts, left = [], size
    while left:
        chunk = stream.read(min(left, _READ_CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _first_mark(stream) -> Tuple[bytes, int]:
    """(bytes read, length of the first MARK_ROWS lines in them, or 0 when the file has fewer lines)."""
    parts, lines = [], 0
    while lines < MARK_ROWS:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            return b"".join(parts), 0
        parts.append(chunk)
        lines += chunk.count(b"\n")
    head = b"".join(parts)
    ends = np.flatnonzero(np.frombuffer(head, np.uint8) == 10)
    return head, int(ends[MARK_ROWS - 1]) + 1


def skip_prefix(stream, key: bytes, find: Callable[[str], Optional["Prefix"]], saved):
    """Reads the start of a JSONL manifest against the checkpoint its first MARK_ROWS lines name: (the stream from
    the first byte not skipped, the longest prefix that matched mark by mark and whose lines are all still saved
    rows or None, the hasher after it)."""
    head, first = _first_mark(stream)
    if not first:
        return _PushedBack(head, stream), None, None
    hasher = _prefix_hasher(key)
    hasher.update(head[:first])
    prefix = find(hasher.hexdigest())
    if prefix is None or prefix.marks[0][1] != first:
        return _PushedBack(head, stream), None, None
    prefix.positions = saved.find(prefix.fps)
    found = prefix.positions >= 0
    usable = int(np.argmin(found)) if not found.all() else len(found)  # lines no longer saved end it
    marks = [mark for mark in prefix.marks if mark[0] <= usable]
    if not marks:
        return _PushedBack(head, stream), None, None
    rest, matched = head[first:], 1
    for previous, mark in zip(marks, marks[1:]):
        need = mark[1] - previous[1]
        segment = rest[:need] + _read_exactly(stream, need - len(rest[:need]))
        rest = rest[need:]
        trial = hasher.copy()
        trial.update(segment)
        if len(segment) < need or trial.hexdigest() != mark[2]:
            rest = segment + rest  # read again as lines
            break
        hasher, matched = trial, matched + 1
    return _PushedBack(rest, stream), prefix.upto(matched), hasher


class CheckedPrefix:
    """A manifest's saved prefix, checked ahead (while the runner starts) against the file as it was then."""

    def __init__(self, prefix: Prefix, hasher, size: int, mtime: float):
        self.prefix, self.hasher, self.size, self.mtime = prefix, hasher, size, mtime


def _stat(path: str) -> Optional[Tuple[int, float]]:
    try:
        meta = FileSystems.match([path])[0].metadata_list[0]
        return meta.size_in_bytes, meta.last_updated_in_seconds
    except Exception:
        return None


def check_prefix(path: str, key: bytes, find: Callable[[str], Optional[Prefix]], saved) -> Optional[CheckedPrefix]:
    """`skip_prefix` run ahead on an uncompressed JSONL manifest: the longest matching part of its checkpoint,
    with the file's size and modification time then (None: no checkpoint matches, or a compressed file)."""
    from apache_beam.io.filesystem import CompressionTypes

    if CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED:
        return None
    before = _stat(path)
    if before is None:
        return None
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        _, prefix, hasher = skip_prefix(stream, key, find, saved)
    if prefix is None or _stat(path) != before:
        return None
    return CheckedPrefix(prefix, hasher, *before)


def skip_checked(stream, path: str, checked: Optional[CheckedPrefix]):
    """(stream after the prefix, prefix, hasher) when the file is as it was when `checked` was made (same size,
    same modification time); None otherwise (the reader then checks the bytes itself)."""
    if checked is None or _stat(path) != (checked.size, checked.mtime):
        return None
    if stream.seekable():
        stream.seek(checked.prefix.nbytes)
    else:
        left = checked.prefix.nbytes
        while left:
            chunk = stream.read(min(left, _READ_CHUNK))
            if not chunk:
                return None
            left -= len(chunk)
    return stream, checked.prefix, checked.hasher.copy()


def _read(path: str) -> Tuple[dict, np.ndarray]:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        table = pq.read_table(f)
    return json.loads(table.schema.metadata[_META]), table.column("row_fp").to_numpy()


def load_prefix(output: str, name: str) -> Optional[Prefix]:
    """The checkpoint named by the digest of a manifest's first mark, if an earlier run left one."""
    path = FileSystems.join(output, INDEX_DIR, f"prefix-{name}.parquet")
    try:
        meta, fps = _read(path)
    except Exception:  # none, or unreadable: the manifest is read line by line
        return None
    marks = [tuple(mark) for mark in meta.get("marks") or []]
    return Prefix(fps, marks) if marks and marks[0][2] == name else None


def settle_prefixes(output: str, run_id: str, saved_rows: Callable[[np.ndarray], np.ndarray]) -> int:
    """After a finished run: each JSONL manifest it read gets as checkpoint its longest marked prefix of distinct
    lines that are all saved rows (or loses its checkpoint). `saved_rows(fps)` says which fingerprints are
    saved rows (key_index.saved_rows_member). Returns the lines covered by checkpoints."""
    covered = 0
    for path in list_files(FileSystems.join(output, RUNS_DIR, run_id), "readmap-*.parquet"):
        meta, fps = _read(path)
        saved = saved_rows(fps)
        if len(fps):  # a repeated line was read in full the second time: later copies end the prefix
            order = np.argsort(fps, kind="stable")
            ordered = fps[order]
            saved[order[1:][ordered[1:] == ordered[:-1]]] = False
        run = int(np.argmin(saved)) if not saved.all() else len(fps)
        marks = [tuple(mark) for mark in meta["marks"] if mark[0] <= run]
        if not marks:
            continue
        target = FileSystems.join(output, INDEX_DIR, f"prefix-{marks[0][2]}.parquet")
        rows = marks[-1][0]
        table = pa.table({"row_fp": fps[:rows]}, schema=_SCHEMA.with_metadata({_META: json.dumps({"marks": marks})}))
        replace(target, lambda f: write_parquet(table, f))
        covered += rows
    return covered


def skipped_masks(prefix: Prefix, saved, source: str) -> Optional[np.ndarray]:
    """Meets every line of a matched prefix at once: their modality masks, or None (nothing met) when a line
    cannot be met (a line of an earlier manifest of this run, an id a new row took)."""
    positions = saved.find(prefix.fps) if prefix.positions is None else prefix.positions
    return saved.meet_all(positions, source, 1)


def counts(masks: np.ndarray) -> Iterable[Tuple[int, int]]:
    values, numbers = np.unique(masks, return_counts=True)
    return zip(values.tolist(), numbers.tolist())
