"""ReadManifests: stream JSONL, CSV and Parquet manifests row by row; unparsable rows become dead letters."""
from __future__ import annotations

import collections
import csv
import io
import json
import logging
import math
import os
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Union

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressedFile, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.memory import return_freed_memory
from transforms.progress import NAMESPACE, PROGRESS
from transforms.records import DEAD_LETTERS, DeadLetter, DeadLetterOutput, ManifestRow, manifest_format
from transforms.store.key_index import MODALITY_BITS
from transforms.store.saved_prefix import ReadMap, load_prefix, skip_checked, skip_prefix, skipped_masks
from transforms.store.saved_prefix import counts as mask_counts

__all__ = ["ReadManifests", "expand_manifest_patterns", "parse_manifest"]

_LOGGER = logging.getLogger(__name__)
# Parquet manifests are read this many rows at a time, so a large file never sits in memory.
_PARQUET_BATCH_ROWS = 1024
def expand_manifest_patterns(patterns: Sequence[str]) -> List[str]:
    """Resolves paths and globs through Beam FileSystems; fails fast on a pattern with no match."""
    from transforms.settings import ConfigError

    if not patterns:
        raise ConfigError("no manifests given: set `manifests` in the config or pass --manifest")
    paths: List[str] = []
    for pattern in patterns:
        try:
            matches = FileSystems.match([pattern])[0].metadata_list
        except Exception as exc:
            raise ConfigError(f"manifest pattern {pattern!r} cannot be listed ({type(exc).__name__}: {exc})")
        if not matches:
            raise ConfigError(f"manifest pattern {pattern!r} matched no files; check the path (relative paths in "
                              "a config are relative to the config's folder, on the command line to yours)")
        for meta in sorted(matches, key=lambda m: m.path):
            try:
                manifest_format(meta.path)
            except ValueError as exc:
                raise ConfigError(str(exc))
            path = canonical_source(meta.path)
            if path not in paths:  # one file given twice (m.jsonl, ./m.jsonl, a symlink) is read once
                paths.append(path)
    return paths


def canonical_source(path: str) -> str:
    """One spelling per file: the real path of a local file, the URL as listed otherwise."""
    if "://" in path and not path.startswith("file://"):
        return path
    local = path[len("file://"):] if path.startswith("file://") else path
    return os.path.realpath(local)


def _dead(source: str, row_number: int, code: str, message: str) -> DeadLetter:
    return DeadLetter(id=None, source=source, row_number=row_number, modality=None, stage="read",
                      code=code, message=f"{source} row {row_number}: {message}")


_JSON_TYPES = {"list": "array", "str": "string", "int": "number", "float": "number", "bool": "boolean",
               "NoneType": "null"}


def _has_lone_surrogate(line: str, fields: Dict[str, Any]) -> bool:
    """A `\\udXXX` escape may decode to half a surrogate pair, which no UTF-8 output can hold."""
    if "\\ud" not in line.lower():
        return False
    try:
        json.dumps(fields, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _clean_value(value: Any) -> Any:
    # Parquet and pandas use NaN for missing numbers; treat it like an absent value.
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _universal_lines(stream, seen: Optional[Dict[str, bool]] = None) -> Iterator[bytes]:
    """Lines ended by LF, CRLF or a lone CR (old Mac tools): a raw CR can never be inside a JSON value.
    `seen["cr"]` is set when a CR was met (lines then do not add up to the file's bytes)."""
    pending = b""
    for chunk in iter(lambda: stream.read(1 << 16), b""):
        if seen is not None and b"\r" in chunk:
            seen["cr"] = True
        pending += chunk
        held = pending.endswith(b"\r")  # maybe the first half of a CRLF split across chunks
        body = pending[:-1] if held else pending
        lines = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        pending = lines.pop() + (b"\r" if held else b"")
        yield from lines
    if pending:
        yield pending.rstrip(b"\r")


class SkippedRow(NamedTuple):
    """Rows equal to ones whose items an earlier run saved: counted, not read further."""

    source: str
    row_number: int  # the first of them
    mask: int  # their modalities (key_index.MODALITY_BITS)
    count: int = 1


def _batches(lines: Iterator[bytes], size: int = 2048) -> Iterator[List[bytes]]:
    batch: List[bytes] = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _jsonl_rows(source: str, stream, saved=None, readmap=None,
                first_row: int = 0) -> Iterator[Union[ManifestRow, DeadLetter, SkippedRow]]:
    if saved is None:
        yield from _jsonl_parsed(source, enumerate(_universal_lines(stream), start=1))
        return
    row_number = first_row
    seen: Dict[str, bool] = {}
    for batch in _batches(_universal_lines(stream, seen)):
        fps = [saved.fingerprint(raw) for raw in batch]
        positions = saved.find(fps)
        if readmap is not None:
            readmap.add(batch, np.asarray(fps, dtype=np.uint64))
        first = row_number + 1
        row_number += len(batch)
        # Runs of lines that match saved rows are met in bulk, between the new lines in order: a new line's
        # id claim must see every saved row before it met, and none after it.
        new_lines = np.flatnonzero(positions < 0).tolist()
        for start, end in zip([0] + [i + 1 for i in new_lines], new_lines + [len(batch)]):
            if end > start:
                masks = saved.meet_run(positions[start:end], source, first + start)
                yield from _skipped_in_bulk(source, first + start, masks)
                for i in np.flatnonzero(masks < 0).tolist():  # repeated lines, or ids a new row took
                    yield from _fingerprinted(source, first + start + i, batch[start + i], fps[start + i])
            if end < len(batch):
                yield from _fingerprinted(source, first + end, batch[end], fps[end])
    if readmap is not None and seen.get("cr"):
        readmap.valid = False


def _skipped_in_bulk(source: str, first_row: int, masks: np.ndarray) -> Iterator[SkippedRow]:
    """One SkippedRow per modality mask among these rows (-1: a row that is read, not skipped)."""
    for mask, count in mask_counts(masks[masks >= 0]):
        yield SkippedRow(source, first_row, mask, count)


def _fingerprinted(source: str, row_number: int, raw: bytes, fp: int) -> Iterator[Union[ManifestRow, DeadLetter]]:
    for record in _jsonl_parsed(source, [(row_number, raw)]):
        if isinstance(record, ManifestRow):
            record.fingerprint = fp
        yield record


def _jsonl_parsed(source: str, numbered) -> Iterator[Union[ManifestRow, DeadLetter]]:
    for row_number, raw in numbered:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _dead(source, row_number, "invalid_encoding", f"line is not valid UTF-8 (byte {exc.start})")
            continue
        # Without the line end, the decoder's positions read "column N" of this line, not "line 2".
        # A byte order mark from Windows tools, at the start or where files were concatenated.
        line = line.removeprefix("\ufeff")
        if not line.strip():
            yield _dead(source, row_number, "empty_row", "line is empty")
            continue
        try:
            fields = json.loads(line)
        except ValueError as exc:
            yield _dead(source, row_number, "malformed_row", f"line is not valid JSON ({exc})")
            continue
        except RecursionError:
            yield _dead(source, row_number, "malformed_row", "line is not valid JSON (nested too deeply)")
            continue
        if not isinstance(fields, dict):
            kind = _JSON_TYPES.get(type(fields).__name__, type(fields).__name__)
            yield _dead(source, row_number, "malformed_row", f"line is a JSON {kind}, not an object")
            continue
        if not fields:
            yield _dead(source, row_number, "empty_row", "line is an empty object")
            continue
        if _has_lone_surrogate(line, fields):
            yield _dead(source, row_number, "invalid_encoding",
                        "line holds a lone surrogate escape (half a UTF-16 pair), which is not valid UTF-8")
            continue
        yield ManifestRow(source, row_number, fields)


def _saved_or_row(source: str, row_number: int, fields: Dict[str, Any], written: bytes, saved):
    """CSV and Parquet rows: the fingerprint is of the parsed values (parsing them is cheap; validating is not)."""
    if saved is None:
        return ManifestRow(source, row_number, fields)
    fp = saved.fingerprint(written)
    position = int(saved.find([fp])[0]) if len(saved) else -1
    if position >= 0:
        mask = saved.meet(position, source, row_number)
        if mask is not None:
            return SkippedRow(source, row_number, mask)
    return ManifestRow(source, row_number, fields, fp)


def _csv_rows(source: str, stream, saved=None) -> Iterator[Union[ManifestRow, DeadLetter, SkippedRow]]:
    # surrogateescape keeps a bad byte from ending the file: the row that holds it is rejected alone.
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    # strict: a stray quote is an error, not silently dropped or merged into the next rows.
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield _dead(source, 0, "malformed_row", f"header cannot be parsed ({exc})")
        return
    header = [h.strip().lstrip("\ufeff") for h in header]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        # Which of two `text` columns is meant? Refuse rather than silently take the last one.
        yield _dead(source, 0, "malformed_row", f"header names column {repeated[0]!r} more than once; rename one "
                                                "(or map it with `columns:`); no row can be read")
        return
    try:
        "".join(header).encode("utf-8")
    except UnicodeEncodeError:
        yield _dead(source, 0, "invalid_encoding", "header is not valid UTF-8; no row can be read")
        return
    row_number = 0
    while True:
        row_number += 1
        first_line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            swallowed = ""
            if "end of data" in str(exc):
                swallowed = f"; a quote opened on line {first_line} is never closed, so lines " \
                            f"{first_line}-{reader.line_num} (the end of the file) are lost"
            yield _dead(source, row_number, "malformed_row", f"row cannot be parsed as CSV ({exc}){swallowed}")
            continue
        if not values or all(not v.strip() for v in values):
            yield _dead(source, row_number, "empty_row", "row is empty")
            continue
        if len(values) != len(header):
            yield _dead(source, row_number, "malformed_row",
                        f"row has {len(values)} columns, the header has {len(header)}")
            continue
        try:
            "".join(values).encode("utf-8")
        except UnicodeEncodeError:
            yield _dead(source, row_number, "invalid_encoding", "row is not valid UTF-8")
            continue
        # An empty CSV cell is an absent value.
        written = ("\x1e".join(header) + "\x1d" + "\x1e".join(values)).encode("utf-8", "surrogateescape") \
            if saved is not None else b""
        yield _saved_or_row(source, row_number, {k: v for k, v in zip(header, values) if v != ""}, written, saved)


def _parquet_rows(source: str, stream, saved=None) -> Iterator[Union[ManifestRow, DeadLetter, SkippedRow]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(stream).iter_batches(batch_size=_PARQUET_BATCH_ROWS)
        row_number = 0
        for batch in batches:
            for fields in batch.to_pylist():
                row_number += 1
                fields = {k: _clean_value(v) for k, v in fields.items() if _clean_value(v) is not None}
                if not fields:
                    yield _dead(source, row_number, "empty_row", "row is empty (every column is null)")
                    continue
                written = json.dumps(fields, sort_keys=True, default=str).encode("utf-8", "surrogateescape") \
                    if saved is not None else b""
                yield _saved_or_row(source, row_number, fields, written, saved)
    except Exception as exc:  # pyarrow raises many types for a damaged file
        yield _dead(source, 0, "unreadable_manifest", f"Parquet file cannot be read ({exc})")


_READERS = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}


class _Readable(io.RawIOBase):
    """Beam's CompressedFile lacks the io methods iteration and TextIOWrapper need; this adds them."""

    def __init__(self, stream):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def parse_manifest(source: str, saved=None, prefixes=None, readmap=None,
                   checked=None) -> Iterator[Union[ManifestRow, DeadLetter, SkippedRow]]:
    """Streams one manifest's rows (ManifestRow) and unparsable rows (DeadLetter); with `saved`
    (key_index.SavedRows), rows an earlier run saved whole come out as SkippedRow. JSONL only: `prefixes`
    (name -> saved_prefix.Prefix) finds the checkpoint the file's first lines name, and the part of it that
    still matches is skipped at once (`checked`: a saved_prefix.CheckedPrefix made ahead for this file, used
    if the file has not changed since); `readmap` records what was read."""
    fmt = manifest_format(source)
    compression = CompressionTypes.AUTO
    last_row = 0
    met = True
    try:
        with FileSystems.open(source, compression_type=compression) as stream:
            if isinstance(stream, CompressedFile):
                stream = io.BufferedReader(_Readable(stream))
            if fmt == "parquet" and not stream.seekable():
                stream = io.BytesIO(stream.read())
            if fmt == "jsonl" and saved is not None:
                if prefixes is not None and len(saved):
                    stream, prefix, hasher = (skip_checked(stream, source, checked)
                                              or skip_prefix(stream, saved.key, prefixes, saved))
                    if prefix is not None:
                        masks = skipped_masks(prefix, saved, source)
                        met = masks is not None
                        if met:
                            yield from _skipped_in_bulk(source, 1, masks)
                            last_row = prefix.rows
                            if readmap is not None:
                                readmap.continue_after(prefix, hasher)
                records = _jsonl_rows(source, stream, saved, readmap, last_row) if met else iter(())
            else:
                records = _READERS[fmt](source, stream, saved)
            for record in records:
                last_row = record.row_number
                yield record
    except Exception as exc:  # a damaged or vanished file: report it, do not fail the job
        where = "the file" if last_row == 0 else f"the file after row {last_row}"
        yield _dead(source, last_row + 1 if last_row else 0, "unreadable_manifest",
                    f"{where} cannot be read ({type(exc).__name__}: {exc})")
        return
    if not met:  # its lines cannot all be met at once (an earlier manifest had some): read it line by line
        yield from parse_manifest(source, saved, None, readmap)


def map_columns(fields: Dict[str, Any], columns: Optional[Dict[str, str]]) -> Dict[str, Any]:
    """The row with manifest columns renamed onto the job's fields; a mapped column wins over one already named so."""
    if not columns:
        return fields
    mapped = {k: v for k, v in fields.items() if k not in columns}
    for source, target in columns.items():
        if source in fields:
            mapped[target] = fields[source]
    return mapped


_PEEK_ROWS = 50


def check_manifest_columns(paths: Sequence[str], columns: Optional[Dict[str, str]] = None) -> Dict[str, List[str]]:
    """Reads the first rows of each manifest: refuses one whose columns hold no input at all (naming the columns
    found), logs which columns feed which field. Unreadable files are left to the job (dead letters)."""
    import logging

    from transforms.records import INPUT_FIELDS
    from transforms.settings import ConfigError

    inputs = [f for f in INPUT_FIELDS if f not in ("id", "text_truncate", "audio_start_offset_sec", "media_type",
                                                    "start_sec", "end_sec")]
    found: Dict[str, List[str]] = {}
    for path in paths:
        names: List[str] = []
        try:
            for count, record in enumerate(parse_manifest(path)):
                if count >= _PEEK_ROWS:
                    break
                if isinstance(record, ManifestRow):
                    names += [k for k in record.fields if k not in names]
        except Exception:
            continue
        if not names:
            continue
        found[path] = names
        mapped = map_columns(dict.fromkeys(names, 1), columns)
        used = [f for f in inputs if f in mapped]
        if not used and any(f in mapped for f in INPUT_FIELDS):
            # Known fields but no input in the first rows (ids only, say): each row says why it is rejected.
            logging.getLogger(__name__).warning(
                "manifest %s: no input column among %s; rows without one become no_input dead letters (map "
                "columns with `columns:` or --column)", path, ", ".join(names[:20]))
            continue
        if not used:
            raise ConfigError(
                f"manifest {path} has columns {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}; none is an "
                f"input ({', '.join(inputs)}): name them so, or map them in the config, e.g. "
                f"`columns: {{{names[0]}: text}}` (or --column {names[0]}=text)")
        sources = {target: source for source, target in (columns or {}).items() if source in names}
        logging.getLogger(__name__).info(
            "manifest %s: %s; other columns go to attributes", path,
            ", ".join(f"{f} <- {sources[f]}" if f in sources else f for f in used))
    return found


class _ParseManifest(beam.DoFn):
    def __init__(self, columns: Optional[Dict[str, str]] = None, state=None, output: Optional[str] = None,
                 row_key: bytes = b"", run_id: Optional[str] = None):
        self._rows = Metrics.counter(NAMESPACE, "rows_read")
        self._done = Metrics.counter(NAMESPACE, "items_already_done")
        self._unread = Metrics.counter(NAMESPACE, "rows_skipped_unread")
        self._items = {m: Metrics.counter(NAMESPACE, f"items_{m}") for m in MODALITY_BITS}
        self._columns = dict(columns or {})
        self._state, self._output, self._row_key, self._run_id = state, output, row_key, run_id

    def setup(self):
        return_freed_memory()

    def _saved_rows(self):
        """The run state's saved rows (None: not kept). Not held past a manifest, so the state can free them."""
        if self._state is None or not self._output:
            return None
        return self._state.acquire().saved_rows(self._output, self._row_key)

    def process(self, source: str) -> Iterable[Union[ManifestRow, DeadLetterOutput]]:
        skipped = collections.Counter()  # counted in bulk: a rerun may skip millions of rows
        readmap = prefixes = None
        saved = self._saved_rows()
        if saved is not None and self._run_id and manifest_format(source) == "jsonl":
            readmap = ReadMap(self._row_key)  # what finalize turns into a saved prefix
            output = self._output
            prefixes = lambda name: load_prefix(output, name)  # noqa: E731
        checked = self._state.acquire().checked_prefix(source) if prefixes is not None else None
        try:
            for record in parse_manifest(source, saved, prefixes, readmap, checked):
                if isinstance(record, SkippedRow):
                    skipped[record.mask] += record.count
                    if len(skipped) > 1 or sum(skipped.values()) >= 4096:
                        self._count_skipped(skipped)
                    continue
                self._rows.inc()
                PROGRESS.add(rows_read=1)
                if isinstance(record, DeadLetter):
                    PROGRESS.add(done=1, dead_letters=1, rejected=1)
                    yield beam.pvalue.TaggedOutput(DEAD_LETTERS, record)
                else:
                    if self._columns:
                        record.fields = map_columns(record.fields, self._columns)
                    yield record
            if readmap is not None:
                readmap.write(self._output, self._run_id, source)
        finally:
            self._count_skipped(skipped)

    def _count_skipped(self, skipped: "collections.Counter") -> None:
        for mask, rows in skipped.items():
            items = 0
            for modality, bit in MODALITY_BITS.items():
                if mask & bit:
                    self._items[modality].inc(rows)
                    items += rows
            self._rows.inc(rows)
            self._unread.inc(rows)
            self._done.inc(items)
            PROGRESS.add(rows_read=rows, items=items, done=items, skipped=items)
        skipped.clear()


class ReadManifests(beam.PTransform):
    """Manifest paths (already expanded) -> ManifestRow, with a `dead_letters` output."""

    def __init__(self, paths: Sequence[str], columns: Optional[Dict[str, str]] = None, state=None,
                 output: Optional[str] = None, row_key: bytes = b"", run_id: Optional[str] = None):
        """With `state` (a SharedRunState: the job in one process) and `output`, rows an earlier run saved
        whole are skipped as they are read (key_index.SavedRows, keyed by `row_key`); with `run_id` too, what
        was read of each JSONL manifest is recorded for its saved prefix (saved_prefix)."""
        super().__init__()
        if not paths:
            raise ValueError("ReadManifests needs at least one manifest path")
        self._paths = list(paths)
        self._columns = dict(columns or {})
        self._state, self._output, self._row_key, self._run_id = state, output, row_key, run_id

    def expand(self, pbegin):
        parsed = (
            pbegin
            # In path order: with the stream grouping the first row read keeps a duplicated id, and that is
            # then the first by manifest path and row number, as with the grouped rule.
            | "ManifestPaths" >> beam.Create(sorted(self._paths))
            | "ParseRows" >> beam.ParDo(_ParseManifest(self._columns, self._state, self._output, self._row_key,
                                                          self._run_id))
            .with_outputs(DEAD_LETTERS, main="rows")
        )
        # No Reshuffle: on a cluster the duplicate-id grouping right after spreads rows across workers, and
        # on the local runner a shuffle would hold every row in memory and delay the first call.
        return {"rows": parsed.rows, DEAD_LETTERS: parsed[DEAD_LETTERS]}
