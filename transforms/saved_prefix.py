"""Saved prefixes: a rerun skips the start of a JSONL manifest that earlier runs saved whole by hashing its bytes
once, instead of hashing and looking up each line.

A run records, for each JSONL manifest it reads, a read map: every line's fingerprint in order, and a running
hash of the file's bytes (keyed like the saved rows) at every MARK_ROWS lines. When the run finishes, finalize
keeps the longest marked prefix whose rows are all saved rows as the manifest's checkpoint
(`OUTPUT/index/prefix-*.parquet`). The next run reads that many bytes, and if their hash matches, meets all
those rows at once (duplicate ids still name them) and parses from there on."""
from __future__ import annotations

import hashlib
import json
from typing import Callable, Iterable, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.layout import INDEX_DIR, RUNS_DIR, list_files, replace, write_parquet

__all__ = ["MARK_ROWS", "Prefix", "ReadMap", "load_prefix", "settle_prefixes"]

# Lines between marks: a multiple of the reader's batch (2,048 lines), so marks fall on batch ends.
MARK_ROWS = 4096
_READ_CHUNK = 1 << 20
_META = b"saved_prefix"
_SCHEMA = pa.schema([("row_fp", pa.uint64())])

Mark = Tuple[int, int, str]  # (lines, bytes, hex digest of those bytes)


def _name(source: str) -> str:
    return hashlib.blake2b(source.encode("utf-8"), digest_size=12).hexdigest()


class ReadMap:
    """What one run read of one JSONL manifest, line by line, for finalize to turn into a checkpoint."""

    def __init__(self, key: bytes):
        self._hasher = hashlib.blake2b(digest_size=16, key=key)
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
        try:
            FileSystems.mkdirs(folder)
        except IOError:
            pass
        replace(FileSystems.join(folder, f"readmap-{_name(source)}.parquet"), lambda f: write_parquet(table, f))


class Prefix:
    """A manifest's checkpoint: its first `rows` lines (`nbytes` bytes) were all saved rows when written."""

    def __init__(self, source: str, fps: np.ndarray, marks: List[Mark]):
        self.source, self.fps, self.marks = source, fps, marks
        self.rows, self.nbytes, self.digest = marks[-1]

    def verify(self, stream, key: bytes):
        """Reads the prefix's bytes from `stream`: the hasher after them if they are unchanged, else None."""
        hasher = hashlib.blake2b(digest_size=16, key=key)
        left = self.nbytes
        while left:
            chunk = stream.read(min(left, _READ_CHUNK))
            if not chunk:
                return None
            hasher.update(chunk)
            left -= len(chunk)
        return hasher if hasher.hexdigest() == self.digest else None


def _read(path: str) -> Tuple[dict, np.ndarray]:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        table = pq.read_table(f)
    return json.loads(table.schema.metadata[_META]), table.column("row_fp").to_numpy()


def load_prefix(output: str, source: str) -> Optional[Prefix]:
    path = FileSystems.join(output, INDEX_DIR, f"prefix-{_name(source)}.parquet")
    try:
        meta, fps = _read(path)
    except Exception:  # none yet, or unreadable: the manifest is read line by line
        return None
    if meta.get("source") != source or not meta.get("marks"):
        return None
    return Prefix(source, fps, [tuple(mark) for mark in meta["marks"]])


def settle_prefixes(output: str, run_id: str, saved_row_fps: Callable[[], np.ndarray]) -> int:
    """After a finished run: each JSONL manifest it read gets as checkpoint its longest marked prefix of distinct
    lines that are all saved rows (or loses its checkpoint). Returns the lines covered by checkpoints."""
    covered = 0
    saved_fps = None
    for path in list_files(FileSystems.join(output, RUNS_DIR, run_id), "readmap-*.parquet"):
        meta, fps = _read(path)
        if saved_fps is None:
            saved_fps = saved_row_fps()
        saved = np.isin(fps, saved_fps)
        if len(fps):
            _, first = np.unique(fps, return_index=True)
            once = np.zeros(len(fps), bool)
            once[first] = True
            saved &= once  # a repeated line was read in full the second time
        run = int(np.argmin(saved)) if not saved.all() else len(fps)
        marks = [tuple(mark) for mark in meta["marks"] if mark[0] <= run]
        target = FileSystems.join(output, INDEX_DIR, f"prefix-{_name(meta['source'])}.parquet")
        if not marks:
            if FileSystems.exists(target):
                FileSystems.delete([target])
            continue
        rows = marks[-1][0]
        table = pa.table({"row_fp": fps[:rows]},
                         schema=_SCHEMA.with_metadata({_META: json.dumps({"source": meta["source"], "marks": marks})}))
        replace(target, lambda f: write_parquet(table, f))
        covered += rows
    return covered


def skipped_masks(prefix: Prefix, saved, source: str) -> Optional[np.ndarray]:
    """Meets every line of a verified prefix at once: their modality masks, or None (nothing met) when a line is
    no longer a saved row or cannot be met (a line of an earlier manifest, an id a new row took)."""
    positions = saved.find(prefix.fps)
    if len(positions) and (positions < 0).any():
        return None
    return saved.meet_all(positions, source, 1)


def counts(masks: np.ndarray) -> Iterable[Tuple[int, int]]:
    values, numbers = np.unique(masks, return_counts=True)
    return zip(values.tolist(), numbers.tolist())
