"""The bad-input corpus: manifests (JSONL, CSV, Parquet, compressed) mixing good and bad rows, and the media
they point at, generated into a folder at test time (nothing large is committed; files of 36 MB are sparse).

Every row carries the outcome it must get, per modality: `ok` (embedded) or a dead-letter code; a code
without a modality is a whole-row rejection; a whole file that cannot be read is one dead letter, row 0.
Rows that are still structured also carry that spec in an `expect` column, which the pipeline passes
through as an attribute.

    python tests/data/bad_inputs/make_corpus.py OUT_DIR    # writes the corpus and OUT_DIR/expected.json
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import sys
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from embed_emulator import synth  # noqa: E402

MB = 1024 * 1024
URL = "{URL}"  # replaced by the base URL of a static file server over the media folder
# The API's answer for a URL it cannot download: a 400 when the item is called alone, an error_message
# when packed with items that succeed (a call-stage dead letter either way).
URL_FETCH_FAILED = "parameter_invalid|embedding_failed"
CSV_HEADER = ["id", "text", "text_truncate", "image_url", "image_file", "audio_file", "audio_start_offset_sec",
              "expect"]

# (spec, row, text the dead letter's message must contain). A row is a dict (written as JSON with its
# `expect`) or raw bytes (written as they are).
JSONL_CASES = [
    ("text:ok", b'\xef\xbb\xbf{"id": "j-bom", "text": "a file that starts with a byte order mark"}\n', None),
    ("text:ok", {"id": "j-ok-text", "text": "a dog catches a frisbee in the park"}, None),
    ("text:ok image:ok audio:ok", {"id": "j-ok-all", "text": "a goal in the last minute",
                                   "image_file": "media/good.png", "audio_file": "media/good.wav",
                                   "audio_start_offset_sec": 0.5}, None),
    ("malformed_row", b'{"id": "j-unterminated", "text": "no closing brace"\n', "not valid JSON"),
    ("malformed_row", b'{"id": "j-trailing", "text": "x"} and more\n', "not valid JSON"),
    ("malformed_row", b'["j-array", "text"]\n', "array"),
    ("malformed_row", b"null\n", "null"),
    ("malformed_row", b'"just a string"\n', "string"),
    ("malformed_row", b"[" * 50_000 + b"\n", "nested"),
    ("empty_row", b"\n", None),
    ("empty_row", b"  \t  \n", None),
    ("empty_row", b"{}\n", None),
    ("invalid_encoding", b'{"id": "j-latin1", "text": "caf\xe9 au lait"}\n', "UTF-8"),
    ("invalid_encoding", b'{"id": "j-surrogate", "text": "half a pair \\ud83d"}\n', "surrogate"),
    ("text:invalid_type", {"id": "j-text-number", "text": 42}, "int"),
    ("text:invalid_type", {"id": "j-text-list", "text": ["a", "b"]}, "list"),
    ("text:invalid_type", {"id": "j-text-bool", "text": True}, "bool"),
    ("invalid_id", {"id": ["a", "b"], "text": "id is a list"}, "list"),
    ("invalid_id", {"id": {"k": 1}, "text": "id is an object"}, "dict"),
    ("invalid_id", {"id": True, "text": "id is a boolean"}, "bool"),
    ("invalid_id", {"id": 1.5, "text": "id is a float"}, "float"),
    ("invalid_id", {"id": "j-ctl\x01x", "text": "id with a control character"}, "control"),
    ("invalid_id", {"id": "j-newline\nx", "text": "id with a newline"}, "control"),
    ("invalid_id", {"id": "j-c1\x85x", "text": "id with a C1 control character"}, "control"),
    ("invalid_id", {"id": "j" * 257, "text": "id one character too long"}, "256"),
    ("text:ok", {"id": "k" * 256, "text": "id of exactly 256 characters"}, None),
    ("text:ok", {"id": "j/odd 'id' \"ü☃\" ../..\\ 🙂", "text": "an odd but valid id"}, None),
    ("text:ok", {"id": 5, "text": "an integer id"}, None),
    ("duplicate_id", {"id": "5", "text": "the same id as a string"}, "row 28"),
    ("duplicate_id", {"id": "j-ok-text", "text": "a second row with a used id"}, "row 2"),
    ("duplicate_id", {"id": "c-ok", "text": "an id the CSV manifest used first"}, "bad.csv row 1"),
    ("no_input", {"id": "j-none", "lang": "en"}, None),
    ("no_input", {"id": "j-blank-text", "text": "   "}, None),
    ("no_input", {"id": "j-null-inputs", "text": None, "image_file": None}, None),
    # Equal rows with neither id nor input derive equal ids: still no_input, not duplicate_id.
    ("no_input", {"note": "no id and no input"}, None),
    ("no_input", {"note": "no id and no input"}, None),
    # When both are given the URL wins, even over a file that is missing or different.
    ("image:ok", {"id": "j-url-wins", "image_url": URL + "/good.png", "image_file": "media/missing.png"}, None),
    ("image:ok", {"id": "j-url-wins-2", "image_url": URL + "/good.png", "image_file": "media/other.png"}, None),
    ("image:invalid_url", {"id": "j-bad-url-wins", "image_url": "ftp://example.com/a.png",
                           "image_file": "media/good.png"}, "ftp://"),
    ("image:invalid_url", {"id": "j-url-file", "image_url": "file:///etc/hosts"}, "file://"),
    ("image:invalid_url", {"id": "j-url-noscheme", "image_url": "www.example.com/a.png"}, "www.example.com"),
    ("image:invalid_url", {"id": "j-url-path", "image_url": "/tmp/a.png"}, "`image_file`"),
    ("audio:invalid_url", {"id": "j-url-js", "audio_url": "javascript:alert(1)"}, "javascript"),
    ("image:invalid_url", {"id": "j-url-nohost", "image_url": "http://"}, None),
    ("image:invalid_type", {"id": "j-url-number", "image_url": 123}, "int"),
    ("image:" + URL_FETCH_FAILED, {"id": "j-url-404", "image_url": URL + "/nope.png"}, "`image_url`"),
    ("audio:ok", {"id": "j-audio-url", "audio_url": URL + "/good.mp3"}, None),
    ("image:missing_file", {"id": "j-missing", "image_file": "media/missing.png"}, "missing.png"),
    ("image:missing_file", {"id": "j-nul-path", "image_file": "media/a\x00.png"}, None),
    ("image:missing_file", {"id": "j-unknown-fs", "image_file": "nosuch://bucket/a.png"}, "nosuch://"),
    ("image:invalid_type", {"id": "j-file-number", "image_file": 7}, None),
    ("image:not_a_file", {"id": "j-dir", "image_file": "media/dir"}, "directory"),
    ("image:not_a_file", {"id": "j-empty-dir", "image_file": "media/emptydir"}, "directory"),
    ("image:not_a_file", {"id": "j-fifo", "image_file": "media/pipe.png"}, "regular file"),
    ("image:not_a_file", {"id": "j-dev-null", "image_file": "/dev/null"}, "regular file"),
    ("image:empty_file", {"id": "j-empty-png", "image_file": "media/empty.png"}, "empty"),
    ("audio:empty_file", {"id": "j-empty-wav", "audio_file": "media/empty.wav"}, "empty"),
    ("image:file_too_large", {"id": "j-big-png", "image_file": "media/big.png"}, str(5 * MB + 1)),
    # Past v1's 36 MB an audio file goes to v2 as an asset; past the Assets API's 10 GB it is refused.
    ("audio:file_too_large", {"id": "j-big-wav", "audio_file": "media/big.wav"}, str(10 * 1024 * MB + 1)),
    ("image:unsupported_format", {"id": "j-text-as-png", "image_file": "media/text.png"}, "unknown"),
    ("image:unsupported_format", {"id": "j-wav-as-png", "image_file": "media/wav_as.png"}, "WAV"),
    ("audio:unsupported_format", {"id": "j-png-as-wav", "audio_file": "media/png_as.wav"}, "PNG"),
    ("image:ok", {"id": "j-jpeg-named-png", "image_file": "media/jpeg_named.png"}, None),
    ("image:corrupt_file", {"id": "j-corrupt-png", "image_file": "media/corrupt.png"}, "PNG"),
    ("image:corrupt_file", {"id": "j-truncated-png", "image_file": "media/truncated.png"}, "PNG"),
    ("image:corrupt_file", {"id": "j-corrupt-jpg", "image_file": "media/corrupt.jpg"}, "JPEG"),
    ("image:corrupt_file", {"id": "j-truncated-jpg", "image_file": "media/truncated.jpg"}, "JPEG"),
    ("audio:corrupt_file", {"id": "j-corrupt-wav", "audio_file": "media/corrupt.wav"}, "WAV"),
    ("audio:corrupt_file", {"id": "j-silent-wav", "audio_file": "media/noaudio.wav"}, "no audio"),
    ("audio:corrupt_file", {"id": "j-corrupt-flac", "audio_file": "media/corrupt.flac"}, "FLAC"),
    ("image:image_too_small", {"id": "j-tiny", "image_file": "media/tiny.png"}, "64x64"),
    ("image:image_too_small", {"id": "j-narrow", "image_file": "media/narrow.png"}, "127x300"),
    ("image:ok", {"id": "j-edge-128", "image_file": "media/edge128.png"}, None),
    ("image:ok", {"id": "j-glob-name", "image_file": "media/shot[1]*?.png"}, None),
    ("image:ok", {"id": "j-dotdot", "image_file": "media/sub/../good.jpg"}, None),
    ("audio:invalid_offset", {"id": "j-off-neg", "audio_file": "media/good.wav",
                              "audio_start_offset_sec": -1}, "-1"),
    ("audio:invalid_offset", {"id": "j-off-word", "audio_file": "media/good.wav",
                              "audio_start_offset_sec": "abc"}, "abc"),
    ("audio:invalid_offset", b'{"id": "j-off-nan", "audio_file": "media/good.wav", '
                             b'"audio_start_offset_sec": NaN, "expect": "audio:invalid_offset"}\n', "nan"),
    ("audio:invalid_offset", {"id": "j-off-bool", "audio_file": "media/good.wav",
                              "audio_start_offset_sec": True}, "True"),
    ("audio:invalid_offset", {"id": "j-off-list", "audio_file": "media/good.wav",
                              "audio_start_offset_sec": [1]}, "[1]"),
    ("audio:invalid_offset", {"id": "j-off-past-end", "audio_file": "media/good.wav",
                              "audio_start_offset_sec": 99}, "3.00 s"),
    ("audio:ok", {"id": "j-off-numeric-string", "audio_file": "media/good.flac", "audio_start_offset_sec": "0.5"},
     None),
    ("text:ok audio:invalid_offset", {"id": "j-mixed-offset", "text": "the text survives a bad offset",
                                      "audio_file": "media/good.wav", "audio_start_offset_sec": -3}, None),
    ("text:ok image:missing_file", {"id": "j-mixed-file", "text": "the text survives a missing image",
                                    "image_file": "media/gone.png"}, "gone.png"),
    ("text:invalid_text_truncate", {"id": "j-trunc-word", "text": "x", "text_truncate": "middle"}, "middle"),
    ("text:invalid_text_truncate", {"id": "j-trunc-number", "text": "x", "text_truncate": 5}, "'5'"),
    ("text:text_too_long", {"id": "j-huge", "text": "y" * 100_001}, "100001"),
    # Rows that are almost right (README "Manifests"): a BOM where files were joined; ids equal after
    # stripping or NFC normalisation; an integral float id; a URL with a line break.
    ("text:ok", b'\xef\xbb\xbf{"id": "j-bom-mid", "text": "a byte order mark where two files were joined", '
                b'"expect": "text:ok"}\n', None),
    ("duplicate_id", {"id": " j-ok-text ", "text": "spaces around a used id"}, "row 2"),
    ("text:ok", {"id": "j-caf\u00e9", "text": "an id written composed"}, None),
    ("duplicate_id", {"id": "j-cafe\u0301", "text": "the same id written decomposed"}, "already used"),
    ("text:ok", {"id": 77.0, "text": "an integral float id, as pandas writes"}, None),
    ("image:invalid_url", {"id": "j-url-newline", "image_url": "http://127.0.0.1:9/a.png\nX-Evil: 1"},
     "line break"),
    ("text:ok", b'{"id": "j-crlf", "text": "a windows line end", "expect": "text:ok"}\r\n', None),
    ("text:ok", b'{"id": "j-last", "text": "the last line has no newline", "expect": "text:ok"}', None),
]

CSV_CASES = [
    ("text:ok", {"id": "c-ok", "text": "a cat sleeping on a sunny windowsill"}, None),
    ("malformed_row", b"c-wide,text,,,,,,text:ok,one too many\r\n", "9 columns, the header has 8"),
    ("malformed_row", b"c-narrow,text\r\n", "2 columns"),
    ("empty_row", b",,,,,,,\r\n", None),
    ("empty_row", b"\r\n", None),
    ("invalid_encoding", b"c-latin1,caf\xe9,,,,,,invalid_encoding\r\n", "UTF-8"),
    ("malformed_row", b'c-quote,"a"b,,,,,,malformed_row\r\n', "CSV"),
    ("text:text_too_long", {"id": "c-huge", "text": "z" * 100_001}, "100001"),
    ("malformed_row", {"id": "c-over-field-limit", "text": "z" * 140_000}, "field limit"),
    ("audio:invalid_offset", {"id": "c-off-word", "audio_file": "media/good.wav", "audio_start_offset_sec": "abc"},
     "abc"),
    ("audio:invalid_offset", {"id": "c-off-neg", "audio_file": "media/good.wav", "audio_start_offset_sec": "-0.5"},
     "-0.5"),
    ("text:invalid_text_truncate", {"id": "c-trunc", "text": "x", "text_truncate": "sideways"}, "sideways"),
    ("image:invalid_url", {"id": "c-ftp", "image_url": "ftp://example.com/a.png"}, "ftp://"),
    ("image:missing_file", {"id": "c-missing", "image_file": "media/missing.png"}, "missing.png"),
    ("image:image_too_small", {"id": "c-tiny", "image_file": "media/tiny.png"}, "64x64"),
    ("invalid_id", {"id": "c" * 300, "text": "id too long"}, "256"),
    ("invalid_id", {"id": "c-tab\tx", "text": "id with a tab"}, "control"),
    ("duplicate_id", {"id": "c-ok", "text": "a used id"}, "row 1"),
    ("text:ok image:ok audio:ok", {"id": "c-ok-all", "text": "waves on a rocky shore", "image_file": "media/good.jpg",
                                   "audio_file": "media/good.mp3", "audio_start_offset_sec": "0.25"}, None),
    ("no_input", {"id": "c-blank-text", "text": "  "}, None),
    ("no_input", {"id": "c-id-only"}, None),
    ("text:ok", {"id": "c-multiline", "text": "a text\nover two lines, with \"quotes\""}, None),
    # An unclosed quote swallows the rest of the file: it must be the last row and say so.
    ("malformed_row", b'c-unclosed,"never closed,,,,,,malformed_row\r\nc-lost,swallowed,,,,,,\r\n', "end of"),
]

_STRING_PARQUET = {name: pa.string() for name in CSV_HEADER}
_STRING_PARQUET["audio_start_offset_sec"] = pa.float64()
_STRING_PARQUET["lang"] = pa.string()

# (file name, schema, cases); a row given as None is all nulls.
PARQUET_FILES = [
    ("bad.parquet", _STRING_PARQUET, [
        ("text:ok", {"id": "p-ok", "text": "a piano playing a slow melody", "lang": "en"}, None),
        ("empty_row", None, None),
        ("text:text_too_long", {"id": "p-huge", "text": "w" * 100_001}, "100001"),
        ("text:invalid_text_truncate", {"id": "p-trunc", "text": "x", "text_truncate": "both"}, "both"),
        ("audio:invalid_offset", {"id": "p-off-neg", "audio_file": "media/good.wav",
                                  "audio_start_offset_sec": -1.0}, "-1"),
        # Parquet and pandas write NaN for a missing number: it means "no offset".
        ("audio:ok", {"id": "p-off-nan", "audio_file": "media/good.wav", "audio_start_offset_sec": float("nan")},
         None),
        ("image:missing_file", {"id": "p-missing", "image_file": "media/missing.png"}, "missing.png"),
        ("invalid_id", {"id": "p-nul\x00", "text": "id with NUL"}, "control"),
        ("no_input", {"id": "p-none", "lang": "fr"}, None),
        ("duplicate_id", {"id": "p-ok", "text": "again"}, "row 1"),
        ("text:ok image:ok audio:ok", {"id": "p-ok-all", "text": "rain on a quiet street",
                                       "image_file": "media/edge128.png", "audio_file": "media/good.flac"}, None),
    ]),
    ("types_a.parquet", {"id": pa.list_(pa.string()), "text": pa.int64(), "image_file": pa.string(),
                         "audio_file": pa.string(), "audio_start_offset_sec": pa.string(), "expect": pa.string()}, [
        ("invalid_id", {"id": ["a", "b"], "image_file": "media/good.png"}, "list"),
        ("invalid_id", {"id": [], "image_file": "media/good.png"}, "list"),
        ("text:invalid_type", {"text": 42}, "int"),
        ("audio:invalid_offset", {"audio_file": "media/good.wav", "audio_start_offset_sec": "abc"}, "abc"),
        ("audio:ok", {"audio_file": "media/good.wav", "audio_start_offset_sec": "1"}, None),
    ]),
    ("types_b.parquet", {"id": pa.int64(), "text": pa.binary(), "image_file": pa.binary(), "audio_file": pa.string(),
                         "expect": pa.string()}, [
        ("text:invalid_type", {"id": 1, "text": b"raw bytes"}, "bytes"),
        ("image:invalid_type", {"id": 2, "image_file": b"media/good.png"}, None),
        ("audio:ok", {"id": 3, "audio_file": "media/good.mp3"}, None),
        ("duplicate_id", {"id": 1, "audio_file": "media/good.mp3"}, "row 1"),
    ]),
]

# Whole files that cannot be read: one dead letter for the file, as row 0.
UNREADABLE = [("broken.parquet", "unreadable_manifest"), ("cut.parquet", "unreadable_manifest"),
              ("not-gzip.jsonl.gz", "unreadable_manifest"), ("bad-header.csv", "invalid_encoding")]


def parse_spec(spec: str) -> Dict[Optional[str], str]:
    """'text:ok image:missing_file' -> {'text': 'ok', 'image': 'missing_file'}; 'no_input' -> {None: 'no_input'}.
    A code may list alternatives ('a|b') where the API's answer depends on how calls were packed."""
    out: Dict[Optional[str], str] = {}
    for token in spec.split():
        modality, _, code = token.rpartition(":")
        out[modality or None] = code
    return out


def _fill(value, url: str):
    if isinstance(value, str):
        return value.replace(URL, url)
    if isinstance(value, dict):
        return {k: _fill(v, url) for k, v in value.items()}
    return value


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def make_media(folder: str) -> str:
    """Writes the media the manifests point at into FOLDER/media; returns that folder."""
    media = os.path.join(folder, "media")
    for sub in ("dir", "emptydir", "sub"):
        os.makedirs(os.path.join(media, sub), exist_ok=True)
    rng = random.Random(0)
    png, jpg = synth.png_bytes(160, 160, seed=1), synth.jpeg_bytes(200, 150, seed=2)
    wav = synth.wav_bytes(3.0, 440.0)
    files = {
        "good.png": png, "good.jpg": jpg, "other.png": synth.png_bytes(150, 150, seed=7),
        "edge128.png": synth.png_bytes(128, 128, seed=3), "shot[1]*?.png": synth.png_bytes(140, 140, seed=5),
        "tiny.png": synth.png_bytes(64, 64, seed=4), "narrow.png": synth.png_bytes(127, 300, seed=6),
        "good.wav": wav, "good.flac": synth.flac_bytes(2.0, 660.0), "good.mp3": synth.mp3_bytes(2.0, 262.0),
        "empty.png": b"", "empty.wav": b"", "dir/inside.txt": b"x",
        "text.png": b"hello, I am not an image\n", "wav_as.png": wav, "png_as.wav": png,
        "jpeg_named.png": synth.jpeg_bytes(160, 160, seed=8),
        # A valid signature (and for PNG a valid IHDR), then garbage.
        "corrupt.png": png[:33] + rng.randbytes(400), "truncated.png": png[: len(png) // 2],
        "corrupt.jpg": jpg[:4] + rng.randbytes(400), "truncated.jpg": jpg[: len(jpg) // 2],
        "corrupt.wav": wav[:12] + rng.randbytes(400), "noaudio.wav": wav[:44],
        "corrupt.flac": b"fLaC" + rng.randbytes(400),
    }
    for name, data in files.items():
        _write(os.path.join(media, name), data)
    # Over the limits without writing them: sparse files.
    for name, size in (("big.png", 5 * MB + 1), ("big.wav", 10 * 1024 * MB + 1)):
        with open(os.path.join(media, name), "wb") as f:
            f.truncate(size)
    fifo = os.path.join(media, "pipe.png")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)  # opening it would block: the job must never try
    return media


def _json_line(spec: str, row, url: str) -> bytes:
    if isinstance(row, bytes):
        return row
    return (json.dumps({**_fill(row, url), "expect": spec}, ensure_ascii=False) + "\n").encode("utf-8")


def _csv_line(spec: str, row, url: str) -> bytes:
    if isinstance(row, bytes):
        return row
    buffer = io.StringIO()
    values = {**_fill(row, url), "expect": spec}
    csv.writer(buffer).writerow([values.get(name, "") for name in CSV_HEADER])
    return buffer.getvalue().encode("utf-8")


def _parquet_bytes(schema: Dict[str, pa.DataType], cases, url: str) -> bytes:
    rows = [{} if row is None else {**_fill(row, url), "expect": spec} for spec, row, _ in cases]
    table = pa.table({name: pa.array([r.get(name) for r in rows], type=type_) for name, type_ in schema.items()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def make_corpus(folder: str, url: str = "http://127.0.0.1:9") -> Tuple[List[str], Dict, Dict]:
    """Writes media and manifests into `folder`. Returns (manifest paths, expected, says):
    expected[(manifest name, row)] = {modality or None: 'ok' or code}; says[(name, row)] = message text."""
    make_media(folder)
    expected: Dict[Tuple[str, int], Dict[Optional[str], str]] = {}
    says: Dict[Tuple[str, int], str] = {}

    def note(name: str, cases) -> None:
        for row_number, (spec, _, text) in enumerate(cases, start=1):
            expected[(name, row_number)] = parse_spec(spec)
            if text:
                says[(name, row_number)] = text

    manifests = []

    def manifest(name: str, data: bytes) -> None:
        path = os.path.join(folder, name)
        _write(path, data)
        manifests.append(path)

    manifest("bad.jsonl", b"".join(_json_line(s, r, url) for s, r, _ in JSONL_CASES))
    note("bad.jsonl", JSONL_CASES)
    header = "\ufeff" + ",".join(CSV_HEADER) + "\r\n"
    manifest("bad.csv", header.encode("utf-8") + b"".join(_csv_line(s, r, url) for s, r, _ in CSV_CASES))
    note("bad.csv", CSV_CASES)
    for name, schema, cases in PARQUET_FILES:
        manifest(name, _parquet_bytes(schema, cases, url))
        note(name, cases)

    # Compressed manifests are read like plain ones.
    gz_cases = [("text:ok", {"id": "g-ok", "text": "a compressed manifest"}, None),
                ("image:missing_file", {"id": "g-missing", "image_file": "media/missing.png"}, "missing.png")]
    manifest("good.jsonl.gz", gzip.compress(b"".join(_json_line(s, r, url) for s, r, _ in gz_cases)))
    note("good.jsonl.gz", gz_cases)
    csv_gz_cases = [("text:ok", {"id": "g-ok-csv", "text": "a compressed CSV manifest"}, None)]
    manifest("good.csv.gz", gzip.compress(",".join(CSV_HEADER).encode() + b"\r\n"
                                          + b"".join(_csv_line(s, r, url) for s, r, _ in csv_gz_cases)))
    note("good.csv.gz", csv_gz_cases)

    # Files with no rows at all: nothing to report.
    manifest("empty.jsonl", b"")
    manifest("header-only.csv", (",".join(CSV_HEADER) + "\r\n").encode())

    whole = _parquet_bytes(_STRING_PARQUET, PARQUET_FILES[0][2], url)
    unreadable = {"broken.parquet": b"PAR1 this is not parquet at all PAR1",
                  "cut.parquet": whole[: len(whole) // 2],
                  "not-gzip.jsonl.gz": b'{"id": "x", "text": "not compressed"}\n',
                  "bad-header.csv": b"id,text,caf\xe9\r\nh-1,hello,1\r\n"}
    for name, code in UNREADABLE:
        manifest(name, unreadable[name])
        expected[(name, 0)] = {None: code}
    return manifests, expected, says


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "bad_inputs_corpus"
    os.makedirs(out, exist_ok=True)
    _, expected, _ = make_corpus(out)
    with open(os.path.join(out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump({f"{name}:{row}": {str(m): c for m, c in spec.items()} for (name, row), spec in expected.items()},
                  f, indent=1, ensure_ascii=False)
    print(f"{len(expected)} rows in {out}")
