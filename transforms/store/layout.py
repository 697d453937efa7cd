"""The output folder's layout, in one place: folder names, piece names, atomic writes, listing, reading.

    OUTPUT/segments/part-RUN-WORKER-00001.parquet   vectors (compacted: part-RUN-compact-00001.parquet)
    OUTPUT/dead_letters/part-RUN-WORKER-00001.jsonl one rejected input and modality a line
    OUTPUT/deferred/part-RUN-WORKER-00001.jsonl     inputs left for the next run
    OUTPUT/tasks/part-RUN-WORKER-00001.jsonl        v2 async tasks created (before their first poll)
    OUTPUT/assets/part-RUN-WORKER-00001.jsonl       assets uploaded: upload sessions, chunks sent, status
    OUTPUT/index/base-RUN.parquet, delta-RUN.parquet what finished runs saved, as fingerprints (key_index)
    OUTPUT/index/rows-*.parquet, prefix-*.parquet   saved manifest rows and prefixes (key_index, saved_prefix)
    OUTPUT/runs/RUN/                                a run's summary, report, call timeline, row records,
                                                    read maps, finalize.json and `finalized` mark
    OUTPUT/locks/RUN.json                           the claim of the run writing the output
Everything goes through Beam FileSystems, so local disks and object stores behave alike.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from transforms.store.object_store import is_object_store, read_whole, share_s3_clients

__all__ = ["DEAD_LETTER_DIR", "DEFERRED_DIR", "INDEX_DIR", "LOCKS_DIR", "RUNS_DIR", "SEGMENT_DIR", "TASKS_DIR", "ASSETS_DIR", "TMP_SUFFIX",
           "READER_ROW_GROUP", "SUMMARY_FILE", "REPORT_FILE", "RUNS_INDEX_FILE", "FINALIZE_COUNTS_FILE",
           "FINALIZED_MARK", "CALLS_PATTERN", "calls_piece_name", "run_folder", "commit", "list_files", "list_segment_pieces", "mkdirs", "piece_name", "read_jsonl",
           "read_tables", "replace", "segment_schema", "write_parquet", "write_parquet_parts"]

SEGMENT_DIR = "segments"
DEAD_LETTER_DIR = "dead_letters"
DEFERRED_DIR = "deferred"
TASKS_DIR = "tasks"
ASSETS_DIR = "assets"
INDEX_DIR = "index"
RUNS_DIR = "runs"
LOCKS_DIR = "locks"
TMP_SUFFIX = ".tmp"
# Files of the output's top level and of each run's folder (OUTPUT/runs/RUN/).
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
RUNS_INDEX_FILE = "index.html"          # OUTPUT/runs/index.html, every run's row
FINALIZE_COUNTS_FILE = "finalize.json"  # what the job's finalize step did
FINALIZED_MARK = "finalized"            # a line of JSON: the run's output is finalized (never empty)
CALLS_PATTERN = "calls-*.jsonl"         # the call timeline's pieces (transforms.stages.timeline)
# Row groups sized for readers: search and readers stream a row group at a time.
READER_ROW_GROUP = 8192

# Every process that writes the output (the launcher and each worker) imports this module: its S3 commits
# reuse one client instead of building one an operation (transforms.store.object_store).
share_s3_clients()


def segment_schema(dims: int):
    """The columns of every segment file (and of the LanceDB table beside them, plus `_piece`)."""
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()),
        ("modality", pa.string()),
        ("model_name", pa.string()),
        ("segment_index", pa.int32()),
        ("start_offset_sec", pa.float64()),
        ("end_offset_sec", pa.float64()),
        ("embedding", pa.list_(pa.float32(), dims)),
        # v2: what a vector embeds (visual, audio, transcription, fused, text) and its scope (clip,
        # asset); null on v1 and where the API gives none.
        ("embedding_option", pa.string()),
        ("embedding_scope", pa.string()),
        ("input_url", pa.string()),
        ("input_file", pa.string()),
        ("input_text", pa.string()),
        ("content_hash", pa.string()),
        ("attributes", pa.string()),
        ("source", pa.string()),
        ("row_number", pa.int64()),
        ("run_id", pa.string()),
        ("run_time", pa.timestamp("ms", tz="UTC")),
    ])


def calls_piece_name(worker: str, sequence: int) -> str:
    return f"calls-{worker}-{sequence:05d}.jsonl"


def run_folder(output: str, run_id: str) -> str:
    return FileSystems.join(output, RUNS_DIR, run_id)


def piece_name(run_id: str, worker: str, sequence: int, suffix: str) -> str:
    return f"part-{run_id}-{worker}-{sequence:05d}{suffix}"


def commit(directory: str, name: str, write: Callable) -> str:
    """Writes through `write(stream)` to a temporary name, then renames: the file is whole or absent.
    On an object store an upload is already whole or absent and a rename is a copy plus a delete: the final
    name is written directly (one upload instead of three requests more)."""
    final = FileSystems.join(directory, name)
    if is_object_store(final):
        with FileSystems.create(final, compression_type="uncompressed") as stream:
            write(stream)
        return final
    temp = final + TMP_SUFFIX
    with FileSystems.create(temp, compression_type="uncompressed") as stream:
        write(stream)
    FileSystems.rename([temp], [final])
    return final


def mkdirs(path: str) -> None:
    try:
        FileSystems.mkdirs(path)
    except IOError:
        pass  # already there, or an object store without folders


def replace(path: str, write: Callable) -> None:
    """Replaces a file through a temporary one, so a reader sees the old or the new file, never half (an
    object store's upload replaces the object whole: written directly there)."""
    if is_object_store(path):
        with FileSystems.create(path, compression_type="uncompressed") as f:
            write(f)
        return
    temp = path + TMP_SUFFIX
    with FileSystems.create(temp, compression_type="uncompressed") as f:
        write(f)
    try:
        FileSystems.rename([temp], [path])  # replaces atomically on local disks and object stores
    except Exception:
        FileSystems.delete([path])
        FileSystems.rename([temp], [path])


def list_files(folder: str, pattern: str) -> List[str]:
    """Committed files of `folder` matching `pattern` (temporary files end in .tmp and are not matched)."""
    try:
        return sorted(m.path for m in FileSystems.match([FileSystems.join(folder, pattern)])[0].metadata_list)
    except Exception:
        return []


def read_jsonl(path: str) -> Iterator[dict]:
    """The records of one JSONL file; a torn or foreign line is skipped."""
    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = f.read().decode("utf-8")
    for line in data.split("\n"):  # not splitlines: U+2028 and friends may sit inside a value
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError:
                continue


def write_parquet(table, stream, row_group_size: int = READER_ROW_GROUP) -> None:
    """Every Parquet file of the output is written here: zstd, and dictionary pages only for text columns.
    A dictionary of vector floats or fingerprints never pays (no value repeats) and costs the writer about
    50 MB of buffers per thousand 512-d vectors; without it the files are a quarter smaller too."""
    write_parquet_parts(table.schema, [table], stream, row_group_size)


def write_parquet_parts(schema, parts, stream, row_group_size: int = READER_ROW_GROUP) -> None:
    """`write_parquet` for a table that comes in parts (an iterable of tables): a part becomes one or more
    row groups, so the writer holds one part at a time, never the whole file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = [field.name for field in schema if pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
            or pa.types.is_dictionary(field.type)]
    with pq.ParquetWriter(stream, schema, compression="zstd", use_dictionary=text) as writer:
        for part in parts:
            writer.write_table(part, row_group_size=row_group_size)
    pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed buffers otherwise


# An object store answers each read after a round trip (about 20 ms on moto here, more on a real store) and
# serves many at once: finalize reads this many small pieces at a time there (200 pieces read one by one
# took about 100 s with a client built per read).
PARALLEL_READS = 16


def _read_table(path: str, columns: Optional[Sequence[str]]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if is_object_store(path):
        # One GET for the whole (small) piece: Parquet's footer-then-columns reads would each be a
        # ranged request, a round trip apiece.
        return pq.read_table(pa.BufferReader(read_whole(path)), columns=None if columns is None else list(columns))
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return pq.read_table(f, columns=None if columns is None else list(columns))


def read_tables(paths: Sequence[str], columns: Optional[Sequence[str]] = None) -> Iterator:
    """The Parquet files' tables (only `columns`), in order; on an object store PARALLEL_READS are read at
    once, so at most that many tables are held beyond the one handed out."""
    paths = list(paths)
    if not paths or not is_object_store(paths[0]):
        for path in paths:
            yield _read_table(path, columns)
        return
    with ThreadPoolExecutor(max_workers=min(PARALLEL_READS, len(paths)), thread_name_prefix="read-pieces") as pool:
        for start in range(0, len(paths), PARALLEL_READS):
            yield from pool.map(lambda path: _read_table(path, columns), paths[start:start + PARALLEL_READS])


def list_segment_pieces(segment_dir: str) -> List[str]:
    """Committed pieces (temporary files of unfinished writes end in .tmp and are not matched)."""
    return list_files(segment_dir, "*.parquet")
