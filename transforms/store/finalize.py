"""After a finished run: leave each (id, modality, segment) once in the output, at its newest content,
and let this run's dead letters and deferred items replace earlier runs' for the manifests it read."""
from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam import Flatten, Map, PTransform, combiners
from apache_beam.io.filesystems import FileSystems

from transforms.store.key_index import (
    IndexEntries,
    build_from_segments,
    compact_index,
    find_entries,
    fingerprint,
    has_index,
    index_entries_of,
    member,
    saved_rows_member,
    write_index_parts,
    write_saved_rows,
)
from transforms.store.layout import (
    DEAD_LETTER_DIR,
    DEFERRED_DIR,
    FINALIZE_COUNTS_FILE,
    FINALIZED_MARK,
    RUNS_DIR,
    SEGMENT_DIR,
    list_files,
    list_segment_pieces,
    mkdirs,
    read_jsonl,
    read_tables,
    replace,
    write_parquet,
)
from transforms.store.object_store import is_object_store
from transforms.store.saved_prefix import settle_prefixes

__all__ = ["FinalizeRun", "finalize_output", "read_finalize_counts", "settle_earlier_runs"]

_LOGGER = logging.getLogger(__name__)


_rewrite = replace


def _remove_stale_temps(folder: str) -> None:
    if is_object_store(folder):
        return  # nothing is written under a temporary name there (layout.commit): a listing saved
    try:
        stale = [m.path for m in FileSystems.match([FileSystems.join(folder, "*.tmp")])[0].metadata_list]
    except Exception:
        return
    if stale:
        FileSystems.delete(stale)


# part-RUN_ID-WORKER-00001.parquet, part-RUN_ID-compact-00001.parquet (run ids hold dashes themselves).
_RUN_OF_PIECE = re.compile(r"^part-(.+?)-[^-]+-\d{5}(?:-[^.]*)?\.parquet$")


def _piece_run(path: str) -> Optional[str]:
    found = _RUN_OF_PIECE.match(path.replace("\\", "/").rsplit("/", 1)[-1])
    return found.group(1) if found else None


def _finalized_runs(output: str) -> Set[str]:
    try:
        found = FileSystems.match([FileSystems.join(output, RUNS_DIR, "*", FINALIZED_MARK)])[0].metadata_list
    except Exception:
        return set()
    return {m.path.replace("\\", "/").rsplit("/", 2)[-2] for m in found}


def _mark_finalized(output: str, run_ids: Sequence[str]) -> None:
    """The mark holds a line of JSON, never nothing: Beam's S3 writer cannot upload an empty object (its
    multipart upload of no parts is refused as MalformedXML, as real S3 refuses it)."""
    for run_id in run_ids:
        folder = FileSystems.join(output, RUNS_DIR, run_id)
        mkdirs(folder)
        mark = {"run_id": run_id, "finalized_at": round(time.time(), 3)}
        with FileSystems.create(FileSystems.join(folder, FINALIZED_MARK), compression_type="uncompressed") as f:
            f.write((json.dumps(mark) + "\n").encode("utf-8"))


def _key_column(table: pa.Table) -> pa.Array:
    """`id` + U+001F + `modality` per row, as one Arrow string column (ids never hold control characters)."""
    return pc.binary_join_element_wise(table.column("id"), table.column("modality"), "\x1f")


def _superseded_by_run(output: str, run_id: str) -> Tuple[Set[str], Set[str]]:
    """(id, modality) keys and whole ids whose saved vectors this run's dead letters and deferred items replace:
    a row that turned invalid, or changed and could not be embedded yet, must not keep its old vectors."""
    keys: Set[str] = set()
    ids: Set[str] = set()
    for sub in (DEAD_LETTER_DIR, DEFERRED_DIR):
        for path in list_files(FileSystems.join(output, sub), f"part-{run_id}-*.jsonl"):
            for record in read_jsonl(path):
                # duplicate_id: the id belongs to the row that kept it, whose vectors stay.
                if not record.get("id") or record.get("code") == "duplicate_id":
                    continue
                if record.get("modality"):
                    keys.add(f"{record['id']}\x1f{record['modality']}")
                else:
                    ids.add(str(record["id"]))
    return keys, ids


def _fps(values) -> np.ndarray:
    return np.fromiter((fingerprint(v) for v in values), np.uint64)


def _row_fps(table: pa.Table) -> Tuple[np.ndarray, np.ndarray]:
    """(id, modality) and id fingerprints of a segment table's rows, one file at a time."""
    return _fps(_key_column(table).to_pylist()), _fps(table.column("id").to_pylist())


def _dedupe_segments(output: str, run_id: str) -> Tuple[int, int, List[str], np.ndarray, np.ndarray]:
    """Leaves each (id, modality, segment) once, at its newest content. Returns (rows dropped, bytes rewritten,
    the runs it settled, key fingerprints of index entries it removed, id fingerprints whose vectors changed).

    In proportion to the work since the last finalize: only the pieces of runs not yet finalized (this one,
    and any killed since) are read, for their key columns, as numpy fingerprint arrays (no Python object a
    row); earlier files are found through the key index and rewritten only where the new runs supersede."""
    folder = FileSystems.join(output, SEGMENT_DIR)
    pieces = list_segment_pieces(folder)
    settled = _finalized_runs(output)
    pending_runs = sorted({r for r in map(_piece_run, pieces) if r and r not in settled} | {run_id})
    pending = [p for p in pieces if _piece_run(p) in pending_runs]
    older = [p for p in pieces if p not in pending]
    # Pass 1: the (id, modality) and id fingerprints of every pending row, 16 bytes a row.
    item_parts, id_parts = [], []
    for table in read_tables(pending, ["id", "modality"]):
        item_fps, id_fps = _row_fps(table)
        item_parts.append(item_fps)
        id_parts.append(id_fps)
    items = np.concatenate(item_parts) if item_parts else np.zeros(0, np.uint64)
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.uint64)
    sizes = np.array([len(part) for part in item_parts], np.int64)
    piece_of = np.repeat(np.arange(len(pending)), sizes)
    position = np.arange(len(items)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    n = len(items)
    dropped = np.zeros(n, bool)
    new_items, inverse, counts = np.unique(items, return_inverse=True, return_counts=True)
    repeated = np.flatnonzero(counts[inverse] > 1)  # keys written more than once: the only ones to settle
    if len(repeated):
        # Pass 2, for those rows only: content, segment and recency decide which rows stay.
        digest = np.zeros(len(repeated), np.uint64)
        segment = np.zeros(len(repeated), np.int64)
        recency = np.zeros(len(repeated), np.int64)
        for index in np.unique(piece_of[repeated]):
            here = np.flatnonzero(piece_of[repeated] == index)
            with FileSystems.open(pending[index], compression_type="uncompressed") as f:
                table = pq.read_table(f, columns=["content_hash", "segment_index", "run_time", "run_id"]).take(
                    pa.array(position[repeated[here]]))
            digest[here] = _fps(table.column("content_hash").to_pylist())
            segment[here] = table.column("segment_index").to_numpy()
            # Newest first: this run's rows, then the latest run time.
            when = pc.cast(table.column("run_time"), pa.int64()).to_numpy(zero_copy_only=False)
            this_run = pc.equal(table.column("run_id"), run_id).to_numpy(zero_copy_only=False)
            recency[here] = np.where(this_run, np.int64(1) << 62, 0) + when
        item = items[repeated]
        # Newest content per (id, modality): sort by key, newest first; a key's first row names its content.
        order = np.lexsort((-recency, item))
        starts = np.r_[True, item[order][1:] != item[order][:-1]]
        newest = digest[order][starts][np.cumsum(starts) - 1]
        stale = np.zeros(len(repeated), bool)
        stale[order[digest[order] != newest]] = True
        # One row per (key, segment) among the newest content's rows (a retried bundle's twins).
        kept = np.flatnonzero(~stale)
        order = kept[np.lexsort((-recency[kept], segment[kept], item[kept]))]
        same = np.r_[False, (item[order][1:] == item[order][:-1]) & (segment[order][1:] == segment[order][:-1])]
        stale[order[same]] = True
        dropped[repeated[stale]] = True
    gone_keys, gone_ids = _superseded_by_run(output, run_id)
    gone_items, gone_id_fps = _fps(gone_keys), _fps(gone_ids)
    if n and (len(gone_items) or len(gone_id_fps)):
        # A key this run dead-lettered or deferred keeps no vectors, whichever run wrote them.
        dropped |= member(items, gone_items) | member(ids, gone_id_fps)
    drop: Dict[str, np.ndarray] = {}
    for index in np.unique(piece_of[dropped]) if n else []:
        drop[pending[index]] = position[dropped & (piece_of == index)]
    # Older files are found through the key index (fingerprints), not by reading each one: only files that
    # hold rows this run supersedes are opened, so a rerun costs its own rows, not the output's.
    supersede = np.union1d(new_items, gone_items)
    removed = np.zeros(0, np.uint64)
    if older and (len(supersede) or len(gone_id_fps)):
        hit = find_entries(output, supersede, gone_id_fps)
        removed = hit.key_fp
        by_name = {_name(path): path for path in older}
        hit_paths = [by_name[name] for name in hit.file_names() if name in by_name]
        for path, table in zip(hit_paths, read_tables(hit_paths, ["id", "modality"])):
            item_fps, id_fps = _row_fps(table)
            positions = np.flatnonzero(member(item_fps, supersede) | member(id_fps, gone_id_fps))
            if len(positions):
                drop[path] = positions
    rewritten = 0
    for path, positions in drop.items():
        with FileSystems.open(path, compression_type="uncompressed") as f:
            table = pq.read_table(f)
        keep = np.ones(table.num_rows, bool)
        keep[positions] = False
        kept = table.filter(pa.array(keep))
        if kept.num_rows == 0:
            FileSystems.delete([path])
            continue
        sink = pa.BufferOutputStream()
        write_parquet(kept, sink)
        data = sink.getvalue().to_pybytes()
        rewritten += len(data)
        _rewrite(path, lambda stream: stream.write(data))
    # Ids whose vectors this finalize settled or dropped: their saved-row entries are stale.
    changed_ids = np.union1d(np.unique(ids), np.union1d(gone_id_fps, _fps(k.split("\x1f", 1)[0]
                                                                               for k in gone_keys)))
    return int(sum(len(p) for p in drop.values())), rewritten, pending_runs, removed, changed_ids


def _name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _index_pending_runs(output: str, run_id: str, runs: Sequence[str], removed: np.ndarray,
                        known: Optional[Dict[str, IndexEntries]] = None) -> int:
    """Adds what the settled runs saved (their files as they are now) to the key index, with the entries
    this finalize removed; returns the entries added. `known`: entries of files just written (the merged
    ones), by file name, so they are not read back (on S3, a round trip a file)."""
    folder = FileSystems.join(output, SEGMENT_DIR)
    known = known or {}

    def parts():  # a segment file at a time: the delta is written as they come
        paths = [path for path in list_segment_pieces(folder) if _piece_run(path) in runs]
        unread = read_tables([p for p in paths if _name(p) not in known], ["id", "modality", "content_hash"])
        for path in paths:
            yield known[_name(path)] if _name(path) in known else index_entries_of(next(unread), _name(path))

    _, added = write_index_parts(output, run_id, parts(), removed)
    compact_index(output, run_id)
    return added


def _run_outcome_rows(output: str, run_id: str) -> Set[str]:
    """`manifest\x1frow` of every dead letter and deferral this run wrote."""
    rows: Set[str] = set()
    for sub in (DEAD_LETTER_DIR, DEFERRED_DIR):
        for path in list_files(FileSystems.join(output, sub), f"part-{run_id}-*.jsonl"):
            for record in read_jsonl(path):
                rows.add(f"{record.get('source')}\x1f{record.get('row_number')}")
    return rows


def _update_saved_rows(output: str, run_id: str, changed_ids: np.ndarray, finished: bool) -> int:
    """Saved rows lose the ids whose vectors changed; with `finished` (a run that ran to its end), the rows it
    read in full and whose items all ended saved are added. Returns the rows added."""
    records = None
    if finished:
        failed = _run_outcome_rows(output, run_id)
        # Where each row came from is needed only to drop the rows that failed.
        columns = None if failed else ["row_fp", "id_fp", "mask"]
        parts = []
        for path in list_files(FileSystems.join(output, RUNS_DIR, run_id), "rows-*.parquet"):
            with FileSystems.open(path, compression_type="uncompressed") as f:
                parts.append(pq.read_table(f, columns=columns))
        if parts:
            records = pa.concat_tables(parts)
            if failed:
                where = pc.binary_join_element_wise(records.column("source"),
                                                    pc.cast(records.column("row_number"), pa.string()), "\x1f")
                records = records.filter(pc.invert(pc.is_in(where, value_set=pa.array(sorted(failed), pa.string()))))
    removed = changed_ids.astype(np.uint64)
    if records is None or records.num_rows == 0:
        if len(removed):
            write_saved_rows(output, run_id, np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint8),
                             removed)
        return 0
    ids = records.column("id_fp").to_numpy()
    write_saved_rows(output, run_id, records.column("row_fp").to_numpy(), ids, records.column("mask").to_numpy(),
                     np.unique(np.concatenate([removed, ids])))
    return records.num_rows


def ensure_index(output: str, run_id: str) -> int:
    """An output written before the key index existed gets one, from its finalized files (once)."""
    if has_index(output):
        return 0
    pieces = list_segment_pieces(FileSystems.join(output, SEGMENT_DIR))
    settled = _finalized_runs(output)
    finalized = [p for p in pieces if _piece_run(p) in settled]
    if not pieces:
        return 0
    # Named before every run not finalized yet, so their deltas (written next) apply after it.
    built = build_from_segments(output, max(settled) if settled else "00000000T000000Z-000000", finalized)
    if built:
        _LOGGER.info("indexed the %d items earlier runs saved (once; later runs update the index)", built)
    return built


def settle_earlier_runs(output: str, run_id: str) -> Dict[str, int]:
    """Before a run: runs that were killed or submitted without waiting are finalized first, so the key index
    holds everything saved (their pieces and journals are already committed by then)."""
    ensure_index(output, run_id)
    pieces = list_segment_pieces(FileSystems.join(output, SEGMENT_DIR))
    settled = _finalized_runs(output)
    pending = sorted({r for r in map(_piece_run, pieces) if r and r not in settled})
    if not pending:
        return {}
    latest = pending[-1]
    dropped, rewritten, runs, removed, changed_ids = _dedupe_segments(output, latest)
    # Their small pieces are merged as a finished run's are (a killed run leaves one every flush_sec, or one
    # a call), before they are indexed: the index names the files that hold each item.
    segment_dir = FileSystems.join(output, SEGMENT_DIR)
    known: Dict[str, IndexEntries] = {}
    compacted = sum(_compact_run_pieces(segment_dir, run, known) for run in runs)
    # A run that did not finish may not have met all its rows: none of them is listed as saved.
    _update_saved_rows(output, latest, changed_ids, finished=False)
    added = _index_pending_runs(output, latest, runs, removed, known)
    _mark_finalized(output, runs)
    _LOGGER.info("settled %d earlier unfinished run(s): %d items indexed, %d segment rows dropped, %d pieces "
                 "merged", len(runs), added, dropped, compacted)
    return {"runs": len(runs), "items_indexed": added, "segment_rows_dropped": dropped,
            "pieces_compacted": compacted}


def _replace_earlier_jsonl(folder: str, run_id: str, sources: Set[str]) -> None:
    """Earlier runs' records for manifests this run read are superseded by this run's."""
    try:
        files = [m.path for m in FileSystems.match([FileSystems.join(folder, "*.jsonl")])[0].metadata_list]
    except Exception:
        return
    for path in files:
        if f"part-{run_id}-" in path:
            continue
        with FileSystems.open(path, compression_type="uncompressed") as f:
            lines = [line for line in f.read().decode("utf-8").splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line).get("source") not in sources]
        if len(kept) == len(lines):
            continue
        if not kept:
            FileSystems.delete([path])
        else:
            _rewrite(path, lambda stream: stream.write(("\n".join(kept) + "\n").encode("utf-8")))


# This run's small pieces (written every few seconds so a kill loses little) are merged into files of about
# this size, so a long backfill does not leave thousands of tiny files behind, and a later change to one row
# rewrites one such file, not more (about 930 rows of 512-d vectors; 1,850 of 256-d).
COMPACT_BYTES = 2 << 20
COMPACT_ROWS: Optional[int] = None  # a fixed number of rows instead (tests)
# Merged files uploaded at once on an object store (each about COMPACT_BYTES, held until uploaded).
PARALLEL_UPLOADS = 4


def compact_rows(dims: int) -> int:
    if COMPACT_ROWS:
        return COMPACT_ROWS
    return max(256, COMPACT_BYTES // (dims * 4 + 240))  # the vector, and about 240 bytes of other columns


_COMPACT_NUMBER = re.compile(r"-compact-(\d{5})\.parquet$")


def _compact_run_pieces(folder: str, run_id: str, entries: Optional[Dict[str, IndexEntries]] = None) -> int:
    """Merges this run's pieces; returns how many files it replaced. A crash midway leaves
    duplicate rows, which the next run's dedupe step removes. `entries` receives the key index's entries
    of each merged file, by name (the index need not read them back)."""
    listed = list_segment_pieces(folder)
    pieces = [p for p in listed if f"part-{run_id}-" in p and "-compact-" not in p]
    if not pieces:
        return 0
    if len(pieces) == 1:
        with FileSystems.open(pieces[0], compression_type="uncompressed") as f:
            meta = pq.ParquetFile(f)
            if meta.metadata.num_rows <= compact_rows(meta.schema_arrow.field("embedding").type.list_size):
                return 0
    group: List = []
    rows = 0
    # After the run's compacted files, if an interrupted merge left some: never over one of them.
    done = [p for p in listed if f"part-{run_id}-compact-" in p]
    written = max((int(m.group(1)) for m in map(_COMPACT_NUMBER.search, done) if m), default=0)
    # On an object store each merged file is an upload that waits on the network: a few go at once.
    uploads = ThreadPoolExecutor(PARALLEL_UPLOADS, thread_name_prefix="compact") if is_object_store(folder) else None
    pending: List = []

    def write(path: str, table: pa.Table) -> None:
        _rewrite(path, lambda stream: write_parquet(table, stream))
        if entries is not None:
            entries[_name(path)] = index_entries_of(table, _name(path))

    def flush() -> None:
        nonlocal group, rows, written
        if not group:
            return
        written += 1
        table = pa.concat_tables(group)
        path = FileSystems.join(folder, f"part-{run_id}-compact-{written:05d}.parquet")
        if uploads is None:
            write(path, table)
        else:
            if len(pending) >= PARALLEL_UPLOADS:
                pending.pop(0).result()  # at most PARALLEL_UPLOADS merged files held at once
            pending.append(uploads.submit(write, path, table))
        group, rows = [], 0

    try:
        for table in read_tables(pieces):
            limit = compact_rows(table.schema.field("embedding").type.list_size)
            while table.num_rows:
                take = min(limit - rows, table.num_rows)
                group.append(table.slice(0, take))
                rows += take
                table = table.slice(take)
                if rows >= limit:
                    flush()
        flush()
        for upload in pending:
            upload.result()  # every merged file is whole before a piece is deleted
    finally:
        if uploads is not None:
            uploads.shutdown()
    FileSystems.delete(pieces)
    return len(pieces)


def finalize_output(output: str, run_id: str, sources: Sequence[str]) -> Dict[str, int]:
    """Runs after every finished (not dry) run; safe to run again if interrupted."""
    started = time.monotonic()
    counts = _finalize(output, run_id, sources)
    counts["finalize_seconds"] = round(time.monotonic() - started, 3)
    return counts


def _finalize(output: str, run_id: str, sources: Sequence[str]) -> Dict[str, int]:
    segment_dir = FileSystems.join(output, SEGMENT_DIR)
    for sub in (SEGMENT_DIR, DEAD_LETTER_DIR, DEFERRED_DIR):
        _remove_stale_temps(FileSystems.join(output, sub))
    ensure_index(output, run_id)
    dropped, rewritten, settled, removed, changed_ids = _dedupe_segments(output, run_id)
    known: Dict[str, IndexEntries] = {}
    compacted = _compact_run_pieces(segment_dir, run_id, known)
    _update_saved_rows(output, run_id, changed_ids, finished=True)
    settle_prefixes(output, run_id, lambda fps: saved_rows_member(output, fps))
    _index_pending_runs(output, run_id, settled, removed, known)
    for sub in (DEAD_LETTER_DIR, DEFERRED_DIR):
        _replace_earlier_jsonl(FileSystems.join(output, sub), run_id, set(sources))
    _mark_finalized(output, settled)
    if dropped:
        _LOGGER.info("dropped %d duplicate or superseded segment rows (%d bytes rewritten)", dropped, rewritten)
    return {"segment_rows_dropped": dropped, "segment_bytes_rewritten": rewritten, "pieces_compacted": compacted}




def read_finalize_counts(output: str, run_id: str) -> Optional[Dict[str, int]]:
    """What the job's own finalize step did (None if it did not run: the launcher then finalizes)."""
    path = FileSystems.join(output, RUNS_DIR, run_id, FINALIZE_COUNTS_FILE)
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:
        return None


def _finalize_in_job(pieces_written: int, output: str, run_id: str, sources: Sequence[str], state) -> Dict[str, int]:
    if state is not None:  # the stream grouping's tables, no longer needed once every writer is done
        state.acquire().release()
    counts = finalize_output(output, run_id, sources)
    counts["pieces_written"] = pieces_written
    folder = FileSystems.join(output, RUNS_DIR, run_id)
    mkdirs(folder)
    _rewrite(FileSystems.join(folder, FINALIZE_COUNTS_FILE),
             lambda stream: stream.write(json.dumps(counts).encode("utf-8")))
    return counts


class FinalizeRun(PTransform):
    """The files every writer committed -> this run's finalize counts, once all of them are written. It runs
    on a worker, so a Dataflow job finalizes its output on the cluster, not on the machine that launched it;
    a global count is the barrier (every runner has one). Safe to run again if the runner retries it."""

    def __init__(self, output: str, run_id: str, sources: Sequence[str], state=None):
        super().__init__()
        self._output, self._run_id, self._sources, self._state = output, run_id, list(sources), state

    def expand(self, written):
        return (written
                | "AllWritten" >> Flatten()
                | "WaitForEveryWriter" >> combiners.Count.Globally()
                | "Finalize" >> Map(_finalize_in_job, self._output, self._run_id, self._sources, self._state))
