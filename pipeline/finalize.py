"""After a finished run: leave each (id, modality, segment) once in the output, at its newest content,
and let this run's dead letters and deferred items replace earlier runs' for the manifests it read."""
from __future__ import annotations

import json
import logging
from typing import Dict, List, Sequence, Set, Tuple

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.resume import list_segment_pieces
from transforms.sinks import DEAD_LETTER_DIR, DEFERRED_DIR, READER_ROW_GROUP, SEGMENT_DIR

__all__ = ["finalize_output"]

_LOGGER = logging.getLogger(__name__)
_KEYS = ["id", "modality", "segment_index", "content_hash", "run_time", "run_id"]


def _rewrite(path: str, write) -> None:
    """Replaces a file through a temporary one, so a reader sees the old or the new file, never half."""
    temp = path + ".tmp"
    with FileSystems.create(temp, compression_type="uncompressed") as f:
        write(f)
    try:
        FileSystems.rename([temp], [path])  # replaces atomically on local disks and object stores
    except Exception:
        FileSystems.delete([path])
        FileSystems.rename([temp], [path])


def _remove_stale_temps(folder: str) -> None:
    try:
        stale = [m.path for m in FileSystems.match([FileSystems.join(folder, "*.tmp")])[0].metadata_list]
    except Exception:
        return
    if stale:
        FileSystems.delete(stale)


def _dedupe_segments(folder: str, run_id: str) -> int:
    """Drops rows of superseded content and repeated (id, modality, segment) rows; returns rows dropped.

    The newest content of an (id, modality) wins: this run's rows first, then the latest run time."""
    pieces = list_segment_pieces(folder)
    rows: List[Tuple[str, int, str, str, int, str, object]] = []
    for path in pieces:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            table = pq.read_table(f, columns=_KEYS)
        for position, (item_id, modality, index, digest, run_time, row_run) in enumerate(
                zip(*(table.column(c).to_pylist() for c in _KEYS))):
            rows.append((path, position, item_id, modality, index, digest, (row_run == run_id, run_time)))
    newest: Dict[Tuple[str, str], Tuple[object, str]] = {}
    for _, _, item_id, modality, _, digest, recency in rows:
        key = (item_id, modality)
        if key not in newest or recency > newest[key][0]:
            newest[key] = (recency, digest)
    seen: Set[Tuple[str, str, int]] = set()
    drop: Dict[str, List[int]] = {}
    for path, position, item_id, modality, index, digest, _ in rows:
        segment = (item_id, modality, index)
        if digest != newest[(item_id, modality)][1] or segment in seen:
            drop.setdefault(path, []).append(position)
        else:
            seen.add(segment)
    for path, positions in drop.items():
        with FileSystems.open(path, compression_type="uncompressed") as f:
            table = pq.read_table(f)
        keep = sorted(set(range(table.num_rows)) - set(positions))
        if not keep:
            FileSystems.delete([path])
            continue
        kept = table.take(pa.array(keep, type=pa.int64()))
        _rewrite(path, lambda stream: pq.write_table(kept, stream, row_group_size=READER_ROW_GROUP,
                                                     compression="zstd"))
    return sum(len(p) for p in drop.values())


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


# This run's small pieces (written every few seconds so a kill loses little) are merged into files of
# up to this many rows, so a long backfill does not leave thousands of tiny files behind.
COMPACT_ROWS = 65536


def _compact_run_pieces(folder: str, run_id: str) -> int:
    """Merges this run's pieces; returns how many files it replaced. A crash midway leaves
    duplicate rows, which the next run's dedupe step removes."""
    pieces = [p for p in list_segment_pieces(folder) if f"part-{run_id}-" in p and "-compact-" not in p]
    if len(pieces) < 2:
        return 0
    group: List = []
    rows = 0
    written = 0

    def flush() -> None:
        nonlocal group, rows, written
        if not group:
            return
        written += 1
        table = pa.concat_tables(group)
        path = FileSystems.join(folder, f"part-{run_id}-compact-{written:05d}.parquet")
        _rewrite(path, lambda stream: pq.write_table(table, stream, row_group_size=READER_ROW_GROUP,
                                                     compression="zstd"))
        group, rows = [], 0

    for path in pieces:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            table = pq.read_table(f)
        if rows and rows + table.num_rows > COMPACT_ROWS:
            flush()
        group.append(table)
        rows += table.num_rows
    flush()
    FileSystems.delete(pieces)
    return len(pieces)


def finalize_output(output: str, run_id: str, sources: Sequence[str]) -> Dict[str, int]:
    """Runs after every finished (not dry) run; safe to run again if interrupted."""
    segment_dir = FileSystems.join(output, SEGMENT_DIR)
    for sub in (SEGMENT_DIR, DEAD_LETTER_DIR, DEFERRED_DIR):
        _remove_stale_temps(FileSystems.join(output, sub))
    dropped = _dedupe_segments(segment_dir, run_id)
    compacted = _compact_run_pieces(segment_dir, run_id)
    for sub in (DEAD_LETTER_DIR, DEFERRED_DIR):
        _replace_earlier_jsonl(FileSystems.join(output, sub), run_id, set(sources))
    if dropped:
        _LOGGER.info("dropped %d duplicate or superseded segment rows", dropped)
    return {"segment_rows_dropped": dropped, "pieces_compacted": compacted}
