"""`python -m pipeline search`: embed a query with the job's client and config, print the nearest rows.

Vectors are streamed from the Parquet pieces a batch at a time, and only the winners' other
columns are read, so a large output is never loaded whole.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import json
import os
import sys
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from embed_client import EmbedClient
from pipeline.config import load_config
from transforms.settings import make_client
from transforms.store.layout import SEGMENT_DIR
from transforms.store.object_store import StoreUnreachable, apply_filesystem_options, check_stores_reachable

__all__ = ["Filters", "NoSegments", "batch_vectors", "indexed_nearest", "nearest", "search_main"]

_BATCH_ROWS = 8192
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "local.yaml")
_SHOWN_COLUMNS = ["id", "modality", "segment_index", "start_offset_sec", "end_offset_sec", "input_text",
                  "input_url", "input_file"]


@dataclasses.dataclass(frozen=True)
class Filters:
    """What `search` keeps: rows whose columns equal each given value, and whose attributes hold each KEY=VALUE
    (compared as text: a number 2021 matches "2021")."""
    modality: Optional[str] = None
    option: Optional[str] = None      # embedding_option (v2: visual, audio, transcription, ...)
    scope: Optional[str] = None       # embedding_scope (v2: clip, asset)
    model: Optional[str] = None       # model_name
    attributes: Tuple[Tuple[str, str], ...] = ()

    def equalities(self) -> List[Tuple[str, str]]:
        return [(column, value) for column, value in (("modality", self.modality), ("embedding_option", self.option),
                                                      ("embedding_scope", self.scope), ("model_name", self.model))
                if value is not None]

    def __bool__(self) -> bool:
        return bool(self.equalities() or self.attributes)

    def columns(self) -> List[str]:
        return [column for column, _ in self.equalities()] + (["attributes"] if self.attributes else [])

    def sql(self) -> Optional[str]:
        """The same filter as a LanceDB (DataFusion) predicate; attributes as substrings, checked after."""
        parts = [f"{column} = {_sql_text(value)}" for column, value in self.equalities()]
        for key, value in self.attributes:
            alternatives = [f"strpos(attributes, {_sql_text(p)}) > 0" for p in _attribute_patterns(key, value)]
            parts.append("(" + " OR ".join(alternatives) + ")")
        return " AND ".join(parts) or None

    def mask(self, batch) -> Optional[np.ndarray]:
        """Rows of a batch (holding `columns()`) that pass, or None when there is no filter."""
        if not self:
            return None
        keep = np.ones(batch.num_rows, bool)
        for column, value in self.equalities():
            keep &= np.asarray(pc.equal(batch.column(column), value).fill_null(False))
        if self.attributes:
            texts = batch.column("attributes")
            for key, value in self.attributes:
                found = np.zeros(batch.num_rows, bool)
                for pattern in _attribute_patterns(key, value):
                    found |= np.asarray(pc.match_substring(texts, pattern).fill_null(False))
                keep &= found
            for row in np.flatnonzero(keep):  # a substring may sit inside a nested value: the JSON decides
                keep[row] = self.attributes_match(texts[int(row)].as_py())
        return keep

    def attributes_match(self, text: Optional[str]) -> bool:
        if not self.attributes:
            return True
        try:
            attributes = json.loads(text or "{}")
        except ValueError:
            return False
        return all(key in attributes and _as_text(attributes[key]) == value for key, value in self.attributes)


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _attribute_patterns(key: str, value: str) -> List[str]:
    """How KEY=VALUE appears in the attributes column (json.dumps, sort_keys, ensure_ascii=False): as a string,
    and as a number, true, false or null when VALUE reads as one."""
    patterns = [f"{json.dumps(key, ensure_ascii=False)}: {json.dumps(value, ensure_ascii=False)}"]
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if parsed is not None and not isinstance(parsed, (str, list, dict)) or value == "null":
        patterns.append(f"{json.dumps(key, ensure_ascii=False)}: {value}")
    return patterns


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class NoSegments(ValueError):
    """The output holds no segment files (not written yet, or the wrong folder)."""


def _segment_files(output: str) -> List[str]:
    """The output's segment files, through Beam FileSystems so gs:// and s3:// outputs work too."""
    pattern = FileSystems.join(output, SEGMENT_DIR, "*.parquet")
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:
        # Not "no files": a bucket that cannot be reached, missing credentials, a filesystem not installed.
        raise NoSegments(f"cannot list {FileSystems.join(output, SEGMENT_DIR)}: {_first_cause(exc)}") from None
    files = sorted(m.path for m in found)
    if not files:
        raise NoSegments(f"no segment files under {FileSystems.join(output, SEGMENT_DIR)}: run the job first, or "
                         "pass --output with the job's output folder")
    return files


def _first_cause(exc: BaseException) -> str:
    """Beam's BeamIOError wraps the real error in a dict by pattern: the innermost one, on one line."""
    for _ in range(4):  # BeamIOError({pattern: BeamIOError({prefix: the store's error})})
        details = getattr(exc, "exception_details", None)
        if not isinstance(details, dict) or not details:
            break
        exc = next(iter(details.values()))
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"


def _batches(path: str, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=_BATCH_ROWS, columns=list(columns))


def batch_vectors(column: pa.Array) -> np.ndarray:
    """A (rows, dims) float32 view of a fixed-size-list column, honouring the batch's slice offset.

    `column.values` is the whole parent buffer: past 8,192 rows a file's batches are slices of it, and
    reading `.values` there scores other rows' vectors (the bug this replaced)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dims = column.type.list_size
    flat = column.values.slice(column.offset * dims, len(column) * dims)
    return flat.to_numpy(zero_copy_only=False).reshape(-1, dims)


def nearest(output: str, query: Sequence[float], k: int = 10, modality: Optional[str] = None,
            filters: Optional[Filters] = None) -> List[dict]:
    """The k rows of OUTPUT/segments with the highest cosine similarity to `query`.

    Exact: every vector is scored. Memory is one batch of vectors plus the k best, whatever the output's size."""
    q = np.asarray(query, dtype=np.float32)
    q /= np.linalg.norm(q) or 1.0
    if k <= 0:
        return []
    filters = filters or Filters()
    if modality is not None:
        filters = dataclasses.replace(filters, modality=modality)
    files = _segment_files(output)
    columns = ["embedding"] + filters.columns()
    best: List[Tuple[float, int, int]] = []  # (score, file index, row in file) min-heap of size k
    for file_index, path in enumerate(files):
        offset = 0
        for batch in _batches(path, columns):
            rows = batch.num_rows
            if rows == 0:
                continue
            vectors = batch_vectors(batch.column(0))
            if vectors.shape[1] != q.shape[0]:
                raise SystemExit(f"error: the output holds {vectors.shape[1]}-dim vectors, the query has "
                                 f"{q.shape[0]}: use the model and dimension the output was made with")
            norms = np.linalg.norm(vectors, axis=1)
            scores = vectors @ q / np.where(norms == 0, 1.0, norms)
            wanted = filters.mask(batch)
            if wanted is not None:
                scores = np.where(wanted, scores, -np.inf)
            top = np.argpartition(-scores, min(k, rows) - 1)[:k]
            for row in top:
                if scores[row] == -np.inf:
                    continue
                entry = (float(scores[row]), file_index, offset + int(row))
                if len(best) < k:
                    heapq.heappush(best, entry)
                elif entry[0] > best[0][0]:
                    heapq.heapreplace(best, entry)
            offset += rows
    return [dict(record, score=score) for score, record in _records(files, best)]


def indexed_nearest(table, query: Sequence[float], k: int = 10, filters: Optional[Filters] = None) -> List[dict]:
    """`nearest` through the output's LanceDB table (transforms.store.vector_index), its ANN index if it has one:
    the same rows and scores, found without reading every vector."""
    from transforms.store import ann

    q = np.asarray(query, dtype=np.float32)
    q /= np.linalg.norm(q) or 1.0
    dims = table.schema.field("embedding").type.list_size
    if dims != q.shape[0]:
        raise SystemExit(f"error: the output holds {dims}-dim vectors, the query has {q.shape[0]}: use the model "
                         "and dimension the output was made with")
    filters = filters or Filters()
    where = filters.sql()
    asked = k
    while True:
        found = ann.ann_query(table, q, asked, where, columns=_SHOWN_COLUMNS + ["attributes"])
        rows = [r for r in found.select(_SHOWN_COLUMNS + ["attributes", "_distance"]).to_pylist()
                if filters.attributes_match(r["attributes"])]
        # An attribute's substring can sit inside another value: ask for more until k pass or none are left.
        if len(rows) >= k or found.num_rows < asked or asked >= 64 * k:
            break
        asked *= 4
    return [dict({c: r[c] for c in _SHOWN_COLUMNS}, score=1.0 - float(r["_distance"])) for r in rows[:k]]


def _records(files: Sequence[str], best: List[Tuple[float, int, int]]) -> List[Tuple[float, dict]]:
    """The shown columns of the winners, best first, read a batch at a time from the files holding them."""
    wanted: Dict[int, Dict[int, float]] = {}
    for score, file_index, row in best:
        wanted.setdefault(file_index, {})[row] = score
    found: List[Tuple[float, dict]] = []
    for file_index, rows in wanted.items():
        offset = 0
        for batch in _batches(files[file_index], _SHOWN_COLUMNS):
            inside = sorted(r - offset for r in rows if offset <= r < offset + batch.num_rows)
            if inside:
                picked = batch.take(pa.array(inside, type=pa.int64())).to_pylist()
                found.extend((rows[offset + i], record) for i, record in zip(inside, picked))
            offset += batch.num_rows
    found.sort(key=lambda pair: pair[0], reverse=True)
    return found


def _format(rank: int, record: dict) -> str:
    where = ""
    if record["start_offset_sec"] is not None:
        where = f" [{record['start_offset_sec']:.1f}-{record['end_offset_sec']:.1f} s]"
    source = record["input_text"] or record["input_url"] or record["input_file"] or ""
    if len(source) > 60:
        source = source[:57] + "..."
    return (f"{rank:>3}  {record['score']:.4f}  {record['id']}  {record['modality']}"
            f"#{record['segment_index']}{where}  {source}")


def search_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline search",
        description="Embed a query with the job's config and print the k nearest segments in an output.",
        epilog="examples:\n"
               "  python -m pipeline search --config configs/local.yaml --text 'a dog in a park' -k 5\n"
               "  python -m pipeline search --config configs/local.yaml --image-file samples/media/red.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=_DEFAULT_CONFIG, help="the config the output was made with "
                        "(default: the project's configs/local.yaml)")
    parser.add_argument("--output", help="output folder (default: the config's)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image-file")
    query.add_argument("--audio-file")
    parser.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    parser.add_argument("--modality", choices=["text", "image", "audio", "video"],
                        help="only rows of this modality")
    parser.add_argument("--option", help="only rows of this embedding_option (v2: visual, audio, transcription, ...)")
    parser.add_argument("--scope", help="only rows of this embedding_scope (v2: clip, asset)")
    parser.add_argument("--model", help="only rows made by this model_name")
    parser.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE",
                        help="only rows whose manifest attribute KEY equals VALUE (repeatable: all must hold)")
    parser.add_argument("--exact", action="store_true",
                        help="scan the Parquet even when a LanceDB index is there (to compare)")
    # Beam flags (the S3 endpoint and keys, a GCS project, ...) are left for the filesystems, as in the job.
    args, beam_flags = parser.parse_known_args(list(argv))
    unknown = [a for i, a in enumerate(beam_flags) if not a.startswith("--") and not (
        i and beam_flags[i - 1].startswith("--") and "=" not in beam_flags[i - 1])]  # a flag's value
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.k < 1:
        parser.error(f"-k must be at least 1, got {args.k}")
    pairs = []
    for given in args.attribute:
        key, sep, value = given.partition("=")
        if not sep or not key:
            parser.error(f"--attribute {given!r}: write KEY=VALUE, e.g. --attribute genre=jazz")
        pairs.append((key, value))
    filters = Filters(args.modality, args.option, args.scope, args.model, tuple(pairs))
    from transforms.settings import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}")
    output = args.output or config.output
    options = apply_filesystem_options(list(config.beam_args) + beam_flags)
    try:
        check_stores_reachable([output], options)
    except StoreUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        _segment_files(output)  # before the query is embedded: a wrong folder costs no call
    except NoSegments as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        from pipeline.run import call_settings, embedded_backend

        base_url = stack.enter_context(embedded_backend(config)) or config.base_url
        settings = call_settings(config, base_url)
        client = stack.enter_context(make_client(settings))
        vector = _query_vector(client, settings, args)
    found = _search(output, vector, args.k, filters, config, options, args.exact)
    for rank, record in enumerate(found, 1):
        print(_format(rank, record))
    if not found:  # said, not silent: an empty answer must not look like a crash or a wrong output
        kind = f"{args.modality} " if args.modality else ""
        print(f"no {kind}segments in {output} to compare the query with", file=sys.stderr)
    return 0


def _search(output: str, vector: Sequence[float], k: int, filters: Filters, config, options, exact: bool) -> List[dict]:
    """Through the LanceDB index when one matches the output as it is now, else the exact scan; says which."""
    from transforms.store.vector_index import IndexSettings, index_state, index_uri, lance_storage_options

    # The config's index.path belongs to the config's output; another --output has its own table beside it.
    uri = index_uri(output, IndexSettings(path=config.index_path if output == config.output else None))
    if exact:
        reason = "--exact"
    else:
        state = index_state(output, uri, lance_storage_options(uri, options))
        if state.usable:
            print(f"search: LanceDB index at {uri} ({state.rows} rows, "
                  f"{state.ann or 'no ANN index yet: exact search in LanceDB'})", file=sys.stderr)
            return indexed_nearest(state.table, vector, k, filters)
        reason = state.reason
    print(f"search: exact scan of the Parquet in {FileSystems.join(output, SEGMENT_DIR)} ({reason})", file=sys.stderr)
    return nearest(output, vector, k, filters=filters)


def _query_vector(client: EmbedClient, settings, args) -> List[float]:
    """The query embedded the way the output's items were: v1 or v2, the same model and dimension."""
    modality = "text" if args.text is not None else "image" if args.image_file is not None else "audio"
    if settings.uses_v2(modality):
        from transforms.calling.v2 import sync_request
        from transforms.records import Item

        item = Item(id="query", modality=modality, source="", row_number=0, content_hash="", text=args.text,
                    file_path=args.image_file or args.audio_file)
        result = client.v2.create(**sync_request(item, settings))
        return result.data[0].embedding
    if args.text is not None:
        result, part = client.create(settings.model, text=args.text), "text_embedding"
    elif args.image_file is not None:
        result, part = client.create(settings.model, image_file=args.image_file), "image_embedding"
    else:
        result, part = client.create(settings.model, audio_file=args.audio_file), "audio_embedding"
    embedding = getattr(result, part)
    if embedding.error_message:
        raise SystemExit(f"error: the API could not embed the query: {embedding.error_message}")
    return embedding.segments[0].float_
