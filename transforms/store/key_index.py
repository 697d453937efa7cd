"""The output's key index: what finished runs saved, as 8-byte fingerprints, so a rerun looks each item up
instead of reading (or grouping) the whole output.

    OUTPUT/index/base-RUN.parquet    every live entry as of RUN (written when deltas pile up, or to start one)
    OUTPUT/index/delta-RUN.parquet   what RUN's finalize added (op 1) and removed (op 0)

An entry is one saved (id, modality, content): `key_fp` of all three, `item_fp` of (id, modality), `id_fp`,
`content_fp`, and `file`, the name of the segment file holding its vectors (finalize rewrites files in place,
so a live entry's file stays valid). A process holds ~20 bytes per saved item; everything else stays on
disk. Fingerprints are 64-bit blake2b: a false "already saved" needs a collision among 2^64 values, about
5e-7 for a million new items against ten million saved ones.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import re
import threading
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.store.layout import INDEX_DIR, SEGMENT_DIR, list_files, mkdirs, replace, write_parquet

__all__ = ["FingerprintTable", "IndexEntries", "KeyLookup", "fingerprint", "index_entries_of", "load_entries",
           "write_index", "has_index", "compact_index"]

_LOGGER = logging.getLogger(__name__)
_SEP = "\x1f"  # ids never hold control characters (validation refuses them)
_NAME = re.compile(r"^(rows-)?(base|delta)-(.+)\.parquet$")
KEYS, ROWS = "", "rows-"
# Deltas folded into a new base past this many, so a start reads a handful of files, not one per run.
MAX_DELTAS = 16
_SCHEMA = pa.schema([("op", pa.int8()), ("key_fp", pa.uint64()), ("item_fp", pa.uint64()),
                     ("id_fp", pa.uint64()), ("content_fp", pa.uint64()), ("file", pa.string())])


def fingerprint(*parts: str) -> int:
    digest = hashlib.blake2b(_SEP.join(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def member(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """`np.isin` for fingerprints by binary search in a sorted copy of `among`: memory of one copy of `among`
    and one index a value, where `np.isin` sorts both together (several copies of the larger one)."""
    if not len(among) or not len(values):
        return np.zeros(len(values), bool)
    among = np.sort(among)
    at = np.minimum(np.searchsorted(among, values), len(among) - 1)
    return among[at] == values


def _fps(values: Iterable[Tuple[str, ...]]) -> np.ndarray:
    return np.fromiter((fingerprint(*v) for v in values), dtype=np.uint64)


class IndexEntries:
    """Entries as parallel numpy arrays (files by position in `files`)."""

    def __init__(self, key_fp=None, item_fp=None, id_fp=None, content_fp=None, file_index=None,
                 files: Optional[List[str]] = None):
        empty = np.zeros(0, np.uint64)
        self.key_fp = empty if key_fp is None else key_fp
        self.item_fp = empty if item_fp is None else item_fp
        self.id_fp = empty if id_fp is None else id_fp
        self.content_fp = empty if content_fp is None else content_fp
        self.file_index = np.zeros(0, np.int32) if file_index is None else file_index
        self.files = list(files or [])

    def __len__(self) -> int:
        return len(self.key_fp)

    def take(self, mask: np.ndarray) -> "IndexEntries":
        return IndexEntries(self.key_fp[mask], self.item_fp[mask], self.id_fp[mask], self.content_fp[mask],
                            self.file_index[mask], self.files)

    def file_names(self, mask: Optional[np.ndarray] = None) -> List[str]:
        indices = self.file_index if mask is None else self.file_index[mask]
        return [self.files[i] for i in np.unique(indices)]

    def to_table(self, op: int = 1) -> pa.Table:
        # From the file indices in Arrow, not a Python string a row (an index of 300k entries made 24 MB of them).
        names = (pa.DictionaryArray.from_arrays(pa.array(self.file_index, pa.int32()), pa.array(self.files, pa.string()))
                 .cast(pa.string()) if len(self) else pa.array([], pa.string()))
        return pa.Table.from_arrays(
            [pa.array(np.full(len(self), op, np.int8)), pa.array(self.key_fp), pa.array(self.item_fp),
             pa.array(self.id_fp), pa.array(self.content_fp), names], schema=_SCHEMA)


def index_entries_of(table: pa.Table, file_name: str) -> IndexEntries:
    """One entry per distinct (id, modality, content) of a segment table (columns id, modality, content_hash)."""
    if table.num_rows == 0:
        return IndexEntries(files=[file_name])
    distinct = table.select(["id", "modality", "content_hash"]).group_by(["id", "modality", "content_hash"]).aggregate([])
    ids, modalities, digests = (distinct.column(c).to_pylist() for c in ("id", "modality", "content_hash"))
    return IndexEntries(_fps(zip(ids, modalities, digests)), _fps(zip(ids, modalities)), _fps((i,) for i in ids),
                        _fps((d,) for d in digests), np.zeros(len(ids), np.int32), [file_name])


def concat(parts: Sequence[IndexEntries]) -> IndexEntries:
    where: Dict[str, int] = {}
    remapped = []
    for part in parts:
        mapping = np.array([where.setdefault(f, len(where)) for f in part.files] or [0], np.int32)
        remapped.append(mapping[part.file_index] if len(part) else np.zeros(0, np.int32))
    files = sorted(where, key=where.get)
    return IndexEntries(*(np.concatenate([getattr(p, a) for p in parts]) if parts else None
                          for a in ("key_fp", "item_fp", "id_fp", "content_fp")),
                        np.concatenate(remapped) if parts else None, files)


def _folder(output: str) -> str:
    return FileSystems.join(output, INDEX_DIR)


def _ordered_files(output: str, family: str = KEYS) -> List[str]:
    """The files a load reads, oldest first: the newest base, then the deltas after it."""
    named = []
    for path in list_files(_folder(output), "*.parquet"):
        found = _NAME.match(path.replace("\\", "/").rsplit("/", 1)[-1])
        if found and (found.group(1) or "") == family:
            named.append(((found.group(3), 0 if found.group(2) == "base" else 1), path))
    named.sort()
    bases = [i for i, ((_, kind), _) in enumerate(named) if kind == 0]
    return [path for _, path in named[bases[-1]:]] if bases else [path for _, path in named]


def has_index(output: str) -> bool:
    return bool(_ordered_files(output))


_DTYPES = {"op": np.int8, "mask": np.uint8, "file": np.int32}
# Index files are written and read in row groups of this many entries: a reader decodes a whole row group.
_ROW_GROUP = 32768


def _batches(path: str, schema: pa.Schema) -> Iterator[Tuple[Dict[str, np.ndarray], List[str]]]:
    """An index file's columns as numpy arrays, a row group at a time, so that Arrow's buffers (which its
    allocator keeps) stay the size of a batch, not of the file. `file` comes as indices into the batch's names."""
    with FileSystems.open(path, compression_type="uncompressed") as f:
        reader = pq.ParquetFile(f, read_dictionary=["file"] if "file" in schema.names else None)
        for batch in reader.iter_batches(batch_size=_ROW_GROUP, columns=schema.names, use_threads=False):
            arrays, names = {}, []
            for name in schema.names:
                column = batch.column(name)
                if name == "file":
                    if not isinstance(column, pa.DictionaryArray):
                        column = column.dictionary_encode()
                    names = column.dictionary.to_pylist()
                    arrays[name] = column.indices.to_numpy(zero_copy_only=False).astype(np.int32)
                else:
                    arrays[name] = column.to_numpy(zero_copy_only=False)
            yield arrays, names


def _read(path: str, schema: pa.Schema) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """A whole index file's columns (`file` as indices into the returned names), for loads that keep every
    entry anyway. One read call, not one a row group: a load in a thread beside Beam's start-up then waits for
    the GIL a few times, not hundreds."""
    with FileSystems.open(path, compression_type="uncompressed") as f:
        table = pq.read_table(f, columns=schema.names, use_threads=False,
                              read_dictionary=["file"] if "file" in schema.names else None)
    arrays: Dict[str, np.ndarray] = {}
    names: List[str] = []
    for name in schema.names:
        column = table.column(name)
        if name == "file":
            chunks = [c if isinstance(c, pa.DictionaryArray) else c.dictionary_encode() for c in column.chunks]
            column = pa.chunked_array(chunks, pa.dictionary(pa.int32(), pa.string())).unify_dictionaries() \
                if chunks else pa.chunked_array([], pa.dictionary(pa.int32(), pa.string()))
            names = column.chunk(0).dictionary.to_pylist() if column.num_chunks else []
            arrays[name] = (np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in column.chunks])
                            .astype(np.int32) if column.num_chunks else np.zeros(0, np.int32))
        else:
            arrays[name] = column.to_numpy() if table.num_rows else np.zeros(0, _DTYPES.get(name, np.uint64))
    return arrays, names


def release_arrow_memory() -> None:
    """Hands the memory Arrow's allocator kept after a read back to the system."""
    pa.default_memory_pool().release_unused()


def load_entries(output: str, dedupe: bool = True) -> IndexEntries:
    """The live entries: a base, then each delta's removals and additions in run order. `dedupe=False` leaves
    a key saved twice (a crash between writing and finalizing) listed twice."""
    live = IndexEntries()
    for path in _ordered_files(output):
        columns, files = _read(path, _SCHEMA)
        ops = columns["op"]
        removed = columns["key_fp"][ops == 0]
        if len(removed) and len(live):
            live = live.take(~member(live.key_fp, removed))
        added = ops == 1
        if added.any():
            live = concat([live, IndexEntries(*(columns[c][added] for c in ("key_fp", "item_fp", "id_fp", "content_fp",
                                                                             "file")), files)])
    if dedupe and len(live):
        # A key saved twice (a crash between writing and finalizing) counts once, at its newest file.
        _, last = np.unique(live.key_fp[::-1], return_index=True)
        live = live.take(np.sort(len(live) - 1 - last))
    release_arrow_memory()
    return live


def find_entries(output: str, item_fps: np.ndarray, id_fps: np.ndarray) -> IndexEntries:
    """The live entries with one of these item or id fingerprints. The index is read a row group at a time and
    only matches are kept, so memory follows what a run changes, not the size of the output."""
    found = IndexEntries()
    for path in _ordered_files(output):
        for columns, files in _batches(path, _SCHEMA):
            ops = columns["op"]
            removed = columns["key_fp"][ops == 0]  # a file lists its removals first
            if len(removed) and len(found):
                found = found.take(~member(found.key_fp, removed))
            hit = (ops == 1) & (member(columns["item_fp"], item_fps) | member(columns["id_fp"], id_fps))
            if hit.any():
                found = concat([found, IndexEntries(*(columns[c][hit] for c in ("key_fp", "item_fp", "id_fp",
                                                                                 "content_fp", "file")), files)])
    release_arrow_memory()
    return found


def write_index(output: str, run_id: str, added: IndexEntries, removed_key_fps: np.ndarray, base: bool = False) -> str:
    """Writes a run's delta (or a base: `added` is then every live entry). Safe to write again."""
    return write_index_parts(output, run_id, [added], removed_key_fps, base)[0]


def write_index_parts(output: str, run_id: str, parts: Iterable[IndexEntries], removed_key_fps: np.ndarray,
                      base: bool = False) -> Tuple[str, int]:
    """`write_index` for entries that come a part at a time (a segment file each): written a row group at a
    time, so memory follows a row group, not the run. Returns (path, entries added)."""
    added = 0

    def write(stream) -> None:
        nonlocal added
        with pq.ParquetWriter(stream, _SCHEMA, compression="zstd", use_dictionary=["file"]) as writer:
            if len(removed_key_fps):
                n = len(removed_key_fps)
                zeros = pa.array(np.zeros(n, np.uint64))
                writer.write_table(pa.Table.from_arrays(
                    [pa.array(np.zeros(n, np.int8)), pa.array(removed_key_fps.astype(np.uint64)), zeros, zeros, zeros,
                     pa.array([""] * n, pa.string())], schema=_SCHEMA), row_group_size=_ROW_GROUP)
            pending: List[IndexEntries] = []
            count = 0
            for part in itertools.chain(parts, [None]):
                if part is not None and len(part):
                    pending.append(part)
                    count += len(part)
                if count and (count >= _ROW_GROUP or part is None):
                    writer.write_table(concat(pending).to_table(1), row_group_size=_ROW_GROUP)
                    added += count
                    pending, count = [], 0

    mkdirs(_folder(output))
    path = FileSystems.join(_folder(output), f"{'base' if base else 'delta'}-{run_id}.parquet")
    replace(path, write)
    release_arrow_memory()
    return path, added


def _write(output: str, name: str, table: pa.Table) -> str:
    mkdirs(_folder(output))
    path = FileSystems.join(_folder(output), name)
    replace(path, lambda stream: write_parquet(table, stream, row_group_size=_ROW_GROUP))
    return path


def compact_index(output: str, run_id: str) -> bool:
    """Folds the deltas into a new base once there are more than MAX_DELTAS; the old files go."""
    folded = False
    if len(_ordered_files(output, KEYS)) > MAX_DELTAS:
        stale = _ordered_files(output, KEYS)
        written = write_index(output, run_id, load_entries(output), np.zeros(0, np.uint64), base=True)
        FileSystems.delete([p for p in stale if p != written])
        folded = True
    if len(_ordered_files(output, ROWS)) > MAX_DELTAS:
        stale = _ordered_files(output, ROWS)
        row_fp, id_fp, mask = load_saved_rows(output)
        written = write_saved_rows(output, run_id, row_fp, id_fp, mask, np.zeros(0, np.uint64), base=True)
        FileSystems.delete([p for p in stale if p != written])
        folded = True
    return folded


# Saved rows: rows of earlier runs whose every item is saved, by a fingerprint of the row as written (keyed by
# the settings that shape items). An unchanged row is then skipped as it is read, without parsing or
# validating it, so a rerun reaches its new rows in a fraction of the time. Rows whose items read local
# files are never listed (the file may change under an unchanged row).
_ROWS_SCHEMA = pa.schema([("op", pa.int8()), ("row_fp", pa.uint64()), ("id_fp", pa.uint64()), ("mask", pa.uint8())])
MODALITY_BITS = {"text": 1, "image": 2, "audio": 4, "video": 8}


def write_saved_rows(output: str, run_id: str, row_fp: np.ndarray, id_fp: np.ndarray, mask: np.ndarray,
                     removed_ids: np.ndarray, base: bool = False) -> str:
    """A run's rows delta: entries of `removed_ids` go (op 0), then these rows are added (op 1)."""
    n, r = len(row_fp), len(removed_ids)
    table = pa.Table.from_arrays([
        pa.array(np.concatenate([np.zeros(r, np.int8), np.ones(n, np.int8)])),
        pa.array(np.concatenate([np.zeros(r, np.uint64), row_fp.astype(np.uint64)])),
        pa.array(np.concatenate([removed_ids.astype(np.uint64), id_fp.astype(np.uint64)])),
        pa.array(np.concatenate([np.zeros(r, np.uint8), mask.astype(np.uint8)]))], schema=_ROWS_SCHEMA)
    return _write(output, f"{ROWS}{'base' if base else 'delta'}-{run_id}.parquet", table)


def load_saved_rows(output: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_fp, id_fp, mask) of the live saved rows: one row an id at most."""
    row_fp, id_fp, mask = np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint8)
    for path in _ordered_files(output, ROWS):
        columns, _ = _read(path, _ROWS_SCHEMA)
        ops, ids = columns["op"], columns["id_fp"]
        gone = ids[ops == 0]
        if len(gone) and len(row_fp):
            keep = ~member(id_fp, gone)
            row_fp, id_fp, mask = row_fp[keep], id_fp[keep], mask[keep]
        added = ops == 1
        row_fp = np.concatenate([row_fp, columns["row_fp"][added]])
        id_fp = np.concatenate([id_fp, ids[added]])
        mask = np.concatenate([mask, columns["mask"][added]])
    release_arrow_memory()
    return row_fp, id_fp, mask


def saved_rows_member(output: str, row_fps: np.ndarray) -> np.ndarray:
    """Which of these row fingerprints are live saved rows, reading the rows files a row group at a time (as
    `load_saved_rows` would, without holding every saved row): memory follows `row_fps`, not the output."""
    hit = np.zeros(len(row_fps), bool)
    hit_id = np.zeros(len(row_fps), np.uint64)  # the id of the saved row each hit matched
    if not len(row_fps):
        return hit
    order = np.argsort(row_fps, kind="stable")
    ordered = row_fps[order]
    for path in _ordered_files(output, ROWS):
        for columns, _ in _batches(path, _ROWS_SCHEMA):  # a file lists its removals first
            ops, ids = columns["op"], columns["id_fp"]
            gone = ids[ops == 0]
            if len(gone) and hit.any():
                hit &= ~member(hit_id, gone)
            added = ops == 1
            rows, row_ids = columns["row_fp"][added], ids[added]
            if not len(rows):
                continue
            # each added row marks every position with its fingerprint (a line may repeat in the manifest)
            low = np.searchsorted(ordered, rows, side="left")
            high = np.searchsorted(ordered, rows, side="right")
            single = high - low == 1
            at = order[low[single]]
            hit[at], hit_id[at] = True, row_ids[single]
            repeated = high - low > 1
            for start, stop, row_id in zip(low[repeated].tolist(), high[repeated].tolist(), row_ids[repeated].tolist()):
                hit[order[start:stop]], hit_id[order[start:stop]] = True, row_id
    release_arrow_memory()
    return hit


class SavedRows:
    """A worker's view of the saved rows for one run: which were met (skipped) and which ids new rows took."""

    def __init__(self, row_fp: np.ndarray, id_fp: np.ndarray, mask: np.ndarray, key: bytes):
        # Not stable sorts (several times faster): a row's fingerprint covers its id, and a live id has one row.
        order = np.argsort(row_fp)
        self._rows, self._ids, self._masks = row_fp[order], id_fp[order], mask[order]
        # Ids are found through this order (searchsorted's sorter): no sorted copy of them is kept.
        self._by_id = np.argsort(self._ids).astype(np.int32 if len(self._ids) < 2 ** 31 else np.int64)
        self._met = np.zeros(len(self._rows), np.int64)  # (manifest, row) of the row that matched, packed
        self._taken: set = set()
        self._sources: List[str] = []
        self._lock = threading.Lock()
        self._key = key

    @classmethod
    def load(cls, output: str, key: bytes) -> "SavedRows":
        return cls(*load_saved_rows(output), key=key)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def key(self) -> bytes:
        return self._key

    def fingerprint(self, data: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=self._key).digest(), "little")

    def find(self, fps: Sequence[int]) -> np.ndarray:
        """Positions of these row fingerprints among the saved rows, -1 where absent."""
        if not len(self._rows):
            return np.full(len(fps), -1, np.int64)
        values = np.asarray(fps, dtype=np.uint64)
        if len(values) > 4096:  # a prefix's lines: binary searches in sorted order touch far less memory
            order = np.argsort(values)
            at = np.empty(len(values), np.int64)
            at[order] = np.searchsorted(self._rows, values[order])
        else:
            at = np.searchsorted(self._rows, values)
        at = np.minimum(at, len(self._rows) - 1)
        return np.where(self._rows[at] == values, at, -1)

    def _pack(self, source: str, row_number: int) -> int:
        if source not in self._sources:
            self._sources.append(source)
        return ((self._sources.index(source) + 1) << 40) | row_number

    def meet(self, position: int, source: str, row_number: int) -> Optional[int]:
        """This row matches a saved one: its modality mask if it is skipped, None if it must be read (the
        saved row was met already: a repeated line; or a new row took its id first)."""
        with self._lock:
            if self._met[position] or int(self._ids[position]) in self._taken:
                return None
            self._met[position] = self._pack(source, row_number)
            return int(self._masks[position])

    def _free(self, positions: np.ndarray) -> np.ndarray:
        """(Under the lock) which of these rows can be met: not met before, id not taken by a new row, and the
        first of a line repeated among them."""
        free = self._met[positions] == 0
        if self._taken:
            free &= ~member(self._ids[positions], np.fromiter(self._taken, np.uint64, len(self._taken)))
        ordered = np.sort(positions)
        if not (ordered[1:] == ordered[:-1]).any():  # no line repeated (the usual case): no unique() needed
            return free
        once = np.zeros(len(positions), bool)
        once[np.unique(positions, return_index=True)[1]] = True
        return free & once

    def meet_run(self, positions: np.ndarray, source: str, first_row: int) -> np.ndarray:
        """`meet` for consecutive rows that all match saved ones (rows first_row, first_row + 1, ...): their
        masks, -1 where the row must be read. One lock and a few array operations for the whole run."""
        positions = np.asarray(positions, dtype=np.int64)
        masks = np.full(len(positions), -1, np.int64)
        with self._lock:
            free = self._free(positions)
            at = positions[free]
            self._met[at] = self._pack(source, 0) | (first_row + np.flatnonzero(free))
            masks[free] = self._masks[at]
        return masks

    def meet_all(self, positions: np.ndarray, source: str, first_row: int) -> Optional[np.ndarray]:
        """`meet_run` when every row can be met (their masks), else None with nothing met."""
        positions = np.asarray(positions, dtype=np.int64)
        with self._lock:
            if not self._free(positions).all():
                return None
            self._met[positions] = self._pack(source, 0) | (first_row + np.arange(len(positions)))
            return self._masks[positions].astype(np.int64)

    def claim_id(self, id_fp: int, source: str, row_number: int) -> Optional[Tuple[str, int]]:
        """A row read in full takes its id. Returns (manifest, row) of a skipped saved row that has the id
        already; else the id is now this row's, and a saved row with it will not be skipped."""
        at = int(np.searchsorted(self._ids, np.uint64(id_fp), sorter=self._by_id))
        if at >= len(self._ids) or int(self._ids[self._by_id[at]]) != id_fp:
            return None
        position = int(self._by_id[at])
        with self._lock:
            met = int(self._met[position])
            if met:
                return self._sources[(met >> 40) - 1], met & ((1 << 40) - 1)
            self._taken.add(id_fp)
            return None


def build_from_segments(output: str, run_id: str, pieces: Sequence[str]) -> int:
    """An output written before the index existed: one pass over its pieces makes a base."""
    parts = []
    for path in pieces:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            table = pq.read_table(f, columns=["id", "modality", "content_hash"])
        parts.append(index_entries_of(table, path.replace("\\", "/").rsplit("/", 1)[-1]))
    live = concat(parts) if parts else IndexEntries()
    write_index(output, run_id, live, np.zeros(0, np.uint64), base=True)
    return len(live)


class KeyLookup:
    """What a worker needs to skip saved items and reuse saved content: sorted fingerprints, ~20 bytes an item."""

    def __init__(self, entries: IndexEntries, segment_dir: str):
        # Membership needs sorted keys only (a repeated key is harmless), and any live entry of a content holds
        # its vectors: plain sorts, several times faster than the stable ones that dedupe entries.
        self._keys = np.sort(entries.key_fp)
        order = np.argsort(entries.content_fp)
        self._contents = entries.content_fp[order]
        self._content_files = entries.file_index[order]
        self._files = entries.files
        self._segment_dir = segment_dir

    @classmethod
    def load(cls, output: str) -> "KeyLookup":
        return cls(load_entries(output, dedupe=False), FileSystems.join(output, SEGMENT_DIR))

    def __len__(self) -> int:
        return len(self._keys)

    @staticmethod
    def _find(array: np.ndarray, value: int) -> int:
        at = int(np.searchsorted(array, np.uint64(value)))
        return at if at < len(array) and int(array[at]) == value else -1

    def saved(self, item_id: str, modality: str, digest: str) -> bool:
        return self._find(self._keys, fingerprint(item_id, modality, digest)) >= 0

    def content_file(self, digest: str) -> Optional[str]:
        """The segment file holding vectors of this content under some saved key, if any."""
        at = self._find(self._contents, fingerprint(digest))
        return None if at < 0 else FileSystems.join(self._segment_dir, self._files[self._content_files[at]])


class FingerprintTable:
    """uint64 -> int64 for an entry per manifest row: sorted numpy arrays (16 bytes an entry) plus a small dict
    of recent entries, merged in when it fills. A hash table in numpy arrays took 23-46 bytes an entry and
    doubled (with a Python list of every entry) as it grew; this one grows by one merge of a sorted batch."""

    def __init__(self, flush_at: int = 8192):
        self._keys = np.zeros(0, np.uint64)
        self._values = np.zeros(0, np.int64)
        self._recent: Dict[int, int] = {}
        self._flush_at = flush_at
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys) + len(self._recent)

    def _at(self, key: int) -> int:
        return KeyLookup._find(self._keys, key)

    def _get(self, key: int) -> Optional[int]:
        value = self._recent.get(key)
        if value is None:
            at = self._at(key)
            value = None if at < 0 else int(self._values[at])
        return value

    def get(self, key: int) -> Optional[int]:
        with self._lock:
            return self._get(key)

    def put_if_absent(self, key: int, value: int) -> Optional[int]:
        """Stores `value` unless the key is there; returns the value already stored, or None."""
        with self._lock:
            found = self._get(key)
            if found is not None:
                return found
            self._add(key, value)
            return None

    def set(self, key: int, value: int) -> None:
        with self._lock:
            if key not in self._recent:
                at = self._at(key)
                if at >= 0:
                    self._values[at] = value
                    return
            self._add(key, value)

    def _add(self, key: int, value: int) -> None:
        self._recent[key] = value
        # Merged when the dict holds 8,192 entries or 1/64 of the table: a merge copies the arrays once.
        if len(self._recent) >= max(self._flush_at, len(self._keys) >> 6):
            keys = np.fromiter(self._recent.keys(), np.uint64, len(self._recent))
            values = np.fromiter(self._recent.values(), np.int64, len(self._recent))
            order = np.argsort(keys)
            keys, values = keys[order], values[order]
            at = np.searchsorted(self._keys, keys)
            self._keys = np.insert(self._keys, at, keys)
            self._values = np.insert(self._values, at, values)
            self._recent = {}
