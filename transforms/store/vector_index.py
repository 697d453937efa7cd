"""A LanceDB table of the output's segments, kept in step with the Parquet (config `index.lancedb`).

The Parquet stays the source of truth; the table is a copy users query in milliseconds. Each table row carries
`_piece`: the segment file it was copied from and that file's version (its size and modification time), since
finalize rewrites a file in place when it drops rows. A sync, run under the output's lock after finalize:

1. lists the segment files;
2. deletes the rows of file versions no longer there (one commit);
3. adds every file version the table lacks (one commit, streamed a file at a time);
4. builds or folds forward the ANN index (transforms.store.ann), compacts, and drops versions older than an hour;
5. writes `synced.json` beside the table: the table version and the file versions it matches.

Lance commits are atomic, so a kill at any point leaves the table holding a subset of some earlier Parquet's rows,
never a half-added file, and the next sync completes it: the table never holds a row the Parquet does not once a
sync has finished. `search` trusts the table only while `synced.json` still matches the listing and the table's
version; otherwise it scans the Parquet and says why.
"""
from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import dataclass
from typing import Dict, Iterator, Mapping, Optional, Sequence

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.store.layout import SEGMENT_DIR, read_tables, replace, segment_schema

__all__ = ["INDEX_FOLDER", "TABLE_NAME", "IndexSettings", "IndexState", "IndexUnavailable", "index_state",
           "index_uri", "lance_storage_options", "require_lancedb", "segment_versions", "sync_index"]

_LOGGER = logging.getLogger(__name__)

INDEX_FOLDER = "lancedb"       # OUTPUT/lancedb/ unless index.path names another place
TABLE_NAME = "segments"
SYNC_MARK = "synced.json"
PIECE_COLUMN = "_piece"        # "FILE@SIZE@MTIME": the segment file version a row was copied from
# Old table versions are dropped after this long: a reader still on one (a search started before the sync)
# has had time to finish, and a daily run's rewrites do not pile up on disk.
KEEP_OLD_VERSIONS = datetime.timedelta(hours=1)
_IN_LIST = 500                 # file versions per `_piece IN (...)` clause


class IndexUnavailable(RuntimeError):
    """index.lancedb is on but LanceDB cannot be used (not installed, or the store refuses it)."""


@dataclass(frozen=True)
class IndexSettings:
    enabled: bool = False
    path: Optional[str] = None          # default OUTPUT/lancedb
    ann_min_rows: Optional[int] = None  # default transforms.store.ann.ANN_MIN_ROWS


def index_uri(output: str, settings: Optional[IndexSettings] = None) -> str:
    if settings is not None and settings.path:
        return settings.path
    return FileSystems.join(output, INDEX_FOLDER)


def lance_storage_options(uri: str, beam_options=None) -> Dict[str, str]:
    """LanceDB's object-store options from the job's Beam S3 flags (endpoint, keys, region), so the table sits
    in the same bucket the Parquet does with the same credentials. Environment credentials work as they are."""
    if not uri.startswith("s3://") or beam_options is None:
        return {}
    from transforms.store.object_store import s3_client_kwargs

    kwargs = s3_client_kwargs(beam_options)
    found = {"aws_endpoint": kwargs.get("endpoint_url"), "aws_access_key_id": kwargs.get("aws_access_key_id"),
             "aws_secret_access_key": kwargs.get("aws_secret_access_key"),
             "aws_session_token": kwargs.get("aws_session_token"), "aws_region": kwargs.get("region_name")}
    options = {k: str(v) for k, v in found.items() if v}
    if str(found["aws_endpoint"] or "").startswith("http://"):
        options["allow_http"] = "true"
    if kwargs.get("verify") is False:
        options["allow_invalid_certificates"] = "true"
    return options


def require_lancedb():
    """The lancedb module, or IndexUnavailable saying how to install it (the job checks before any call)."""
    try:
        import lancedb
    except ImportError:
        raise IndexUnavailable("index.lancedb is on but LanceDB is not installed: pip install "
                               "'tl-embed-pipeline[index]' (./run.sh installs it)") from None
    return lancedb


def segment_versions(output: str) -> Dict[str, str]:
    """Segment file name -> its version (SIZE@MTIME), from one listing."""
    pattern = FileSystems.join(output, SEGMENT_DIR, "*.parquet")
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception:
        return {}
    versions = {}
    for meta in found:
        name = meta.path.replace("\\", "/").rsplit("/", 1)[-1]
        versions[name] = f"{meta.size_in_bytes}@{meta.last_updated_in_seconds:.6f}"
    return versions


def _piece(name: str, version: str) -> str:
    return f"{name}@{version}"


def _quoted(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _table_pieces(table) -> Dict[str, int]:
    """The file versions the table holds rows of, with their row counts (one column scanned)."""
    scanned = table.search().select([PIECE_COLUMN]).limit(None).to_arrow()
    if scanned.num_rows == 0:
        return {}
    counts = scanned.column(PIECE_COLUMN).value_counts()
    return {v["values"].as_py(): v["counts"].as_py() for v in counts}


def _index_schema(segments: pa.Schema) -> pa.Schema:
    return segments.append(pa.field(PIECE_COLUMN, pa.string()))


def _as_index_rows(table: pa.Table, schema: pa.Schema, piece: str) -> pa.Table:
    """A segment file's rows in the table's columns (older files may lack the v2 label columns)."""
    columns = []
    for field in schema:
        if field.name == PIECE_COLUMN:
            columns.append(pa.array([piece] * table.num_rows, pa.string()))
        elif field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _first_schema(paths: Sequence[str]) -> pa.Schema:
    import pyarrow.parquet as pq

    with FileSystems.open(paths[0], compression_type="uncompressed") as f:
        return pq.ParquetFile(f).schema_arrow


def _batches(paths: Sequence[str], names: Sequence[str], versions: Mapping[str, str],
             schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    for name, table in zip(names, read_tables(paths)):
        yield from _as_index_rows(table, schema, _piece(name, versions[name])).to_batches()


def _connect(uri: str, storage_options: Mapping[str, str]):
    lancedb = require_lancedb()
    return lancedb.connect(uri, storage_options=dict(storage_options) or None)


def _open(db):
    try:
        return db.open_table(TABLE_NAME)
    except (ValueError, FileNotFoundError):
        return None


def sync_index(output: str, settings: IndexSettings, storage_options: Optional[Mapping[str, str]] = None) -> dict:
    """Brings the table in step with the output's segment files (the module's docstring); returns what it did."""
    from transforms.store import ann

    started = time.monotonic()
    uri = index_uri(output, settings)
    storage_options = storage_options or {}
    db = _connect(uri, storage_options)
    versions = segment_versions(output)
    table = _open(db)
    wanted = {_piece(name, version) for name, version in versions.items()}
    held = _table_pieces(table) if table is not None else {}
    stale = sorted(set(held) - wanted)
    deleted = 0
    if table is not None and stale:
        for start in range(0, len(stale), _IN_LIST):
            chunk = stale[start:start + _IN_LIST]
            table.delete(f"{PIECE_COLUMN} IN ({_quoted(chunk)})")
        deleted = sum(held[p] for p in stale)
    names = sorted(name for name, version in versions.items() if _piece(name, version) not in held)
    added = 0
    if names:
        folder = FileSystems.join(output, SEGMENT_DIR)
        paths = [FileSystems.join(folder, name) for name in names]
        if table is None:  # the job's columns today, whatever columns the oldest file has
            dims = _first_schema(paths).field("embedding").type.list_size
            schema = _index_schema(segment_schema(dims))
        else:
            schema = table.schema
        counted = [0]

        def batches() -> Iterator[pa.RecordBatch]:  # counted as handed over: LanceDB's add returns no count
            for batch in _batches(paths, names, versions, schema):
                counted[0] += batch.num_rows
                yield batch

        reader = pa.RecordBatchReader.from_batches(schema, batches())
        if table is None:
            table = db.create_table(TABLE_NAME, data=reader, schema=schema)
        else:
            table.add(reader)
        added = counted[0]
    result = {"rows_added": added, "rows_deleted": deleted, "files_added": len(names),
              "file_versions_removed": len(stale)}
    if table is None:  # no segments yet: nothing to index
        return dict(result, rows=0, seconds=round(time.monotonic() - started, 3))
    rows = table.count_rows()
    dims = table.schema.field("embedding").type.list_size
    changed = bool(added or deleted)
    result["ann"] = ann.build_or_update_ann(table, dims, min_rows=settings.ann_min_rows,
                                            cleanup_older_than=KEEP_OLD_VERSIONS)
    if changed and result["ann"]["action"] not in ("optimized", "rebuilt"):  # those optimized already
        table.optimize(cleanup_older_than=KEEP_OLD_VERSIONS)
    _write_mark(uri, table.version, versions, rows)
    result.update(rows=rows, table_version=table.version, seconds=round(time.monotonic() - started, 3))
    return result


def _write_mark(uri: str, version: int, versions: Mapping[str, str], rows: int) -> None:
    mark = {"table_version": version, "rows": rows, "files": dict(sorted(versions.items())),
            "synced_at": round(time.time(), 3)}
    replace(FileSystems.join(uri, SYNC_MARK), lambda f: f.write(json.dumps(mark).encode("utf-8")))


def _read_mark(uri: str) -> Optional[dict]:
    try:
        with FileSystems.open(FileSystems.join(uri, SYNC_MARK), compression_type="uncompressed") as f:
            return json.loads(f.read().decode("utf-8"))
    except Exception:
        return None


@dataclass
class IndexState:
    """What `search` may use: the table when `usable`, else `reason` says why not."""
    usable: bool
    reason: str
    table: object = None
    rows: int = 0
    ann: Optional[str] = None


def index_state(output: str, uri: Optional[str] = None,
                storage_options: Optional[Mapping[str, str]] = None) -> IndexState:
    """The table, if there is one and it matches the output's segment files as they are now."""
    uri = uri or index_uri(output)
    mark = _read_mark(uri)
    if mark is None:
        return IndexState(False, f"no synced index at {uri}")
    if mark.get("files") != segment_versions(output):
        return IndexState(False, "the index is behind the Parquet (a run changed it since the last sync; the next "
                                 "run syncs it)")
    try:
        db = _connect(uri, storage_options or {})
    except IndexUnavailable as exc:
        return IndexState(False, str(exc))
    table = _open(db)
    if table is None or table.version != mark.get("table_version"):
        return IndexState(False, "the index was changed after its last complete sync (the next run syncs it)")
    from transforms.store import ann

    return IndexState(True, "", table, int(mark.get("rows", 0)), ann.describe(table))


def table_rows(table, columns: Sequence[str]) -> pa.Table:
    """Every row of the table, `columns` only (tests and checks)."""
    return table.search().select(list(columns)).limit(None).to_arrow()
