"""Reruns cost what they add (issue 13): the output's key index, the stream grouping (calls start while the
manifest is still being read; ids and identical inputs are checked as rows pass) and finalize rewriting only
the files an edit touches."""
from __future__ import annotations

import datetime
import glob
import json
import os
import random
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from embed_emulator import Emulator, EmulatorConfig
from tests.helpers import TEST_KEY, assert_exactly_once, make_config, read_dead_letters, read_segments, run
from transforms.store import key_index
from transforms.settings import CallSettings
from transforms.progress import PROGRESS
from transforms.store.run_state import CALL, COPY, DEFERRED, EMBEDDED, FAILED, RunState


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def test_fingerprint_table_keeps_every_entry_through_growth():
    table = key_index.FingerprintTable(flush_at=16)
    rng = random.Random(7)
    keys = [rng.getrandbits(64) for _ in range(10_000)] + [0, 1, 2 ** 64 - 1]
    keys += keys[:50]  # repeated, after merges
    stored = {}
    for value, key in enumerate(keys):
        before = table.put_if_absent(key, value)
        assert before == stored.get(key)
        stored.setdefault(key, value)
    assert len(table) == len(stored) == 10_003
    assert all(table.get(key) == stored[key] for key in keys)
    assert table.get(12345) is None
    table.set(keys[3], -1)   # merged into the arrays long ago
    table.set(keys[-60], -2)  # recent
    table.set(777, 5)        # new
    assert (table.get(keys[3]), table.get(keys[-60]), table.get(777)) == (-1, -2, 5)
    assert len(table) == 10_004


def _entries(rows, file_name):
    import pyarrow as pa

    return key_index.index_entries_of(pa.table({"id": [r[0] for r in rows], "modality": [r[1] for r in rows],
                                                "content_hash": [r[2] for r in rows]}), file_name)


def test_index_applies_each_runs_removals_then_additions_in_run_order(tmp_path, monkeypatch):
    output = str(tmp_path)
    fp = key_index.fingerprint
    key_index.write_index(output, "R1", _entries([("a", "text", "h1"), ("b", "text", "h2")], "f1.parquet"),
                          np.zeros(0, np.uint64))
    # R2 changed a's text; R3 changed it back (the same key as R1's, now in another file).
    key_index.write_index(output, "R2", _entries([("a", "text", "h9")], "f2.parquet"),
                          np.array([fp("a", "text", "h1")], np.uint64))
    key_index.write_index(output, "R3", _entries([("a", "text", "h1")], "f3.parquet"),
                          np.array([fp("a", "text", "h9")], np.uint64))
    lookup = key_index.KeyLookup.load(output)
    assert len(lookup) == 2
    assert lookup.saved("a", "text", "h1") and lookup.saved("b", "text", "h2")
    assert not lookup.saved("a", "text", "h9") and not lookup.saved("a", "image", "h1")
    assert lookup.content_file("h1").endswith("f3.parquet") and lookup.content_file("h9") is None
    # Finalize's search by item or id, a row group at a time, sees the same live entries (2 groups of 2 here).
    monkeypatch.setattr(key_index, "_ROW_GROUP", 2)
    key_index.write_index(output, "R3b", _entries([("d", "text", "h4"), ("e", "text", "h5"), ("a", "text", "h6")],
                                                  "f5.parquet"), np.array([fp("a", "text", "h1")], np.uint64))
    found = key_index.find_entries(output, np.array([fp("a", "text"), fp("b", "text")], np.uint64),
                                   np.array([fp("e")], np.uint64))
    assert sorted(zip(found.key_fp.tolist(), [found.files[i] for i in found.file_index])) == sorted(
        [(fp("a", "text", "h6"), "f5.parquet"), (fp("b", "text", "h2"), "f1.parquet"), (fp("e", "text", "h5"), "f5.parquet")])
    assert sorted(key_index.load_entries(output).key_fp.tolist()) == sorted(
        fp(*k) for k in [("a", "text", "h6"), ("b", "text", "h2"), ("d", "text", "h4"), ("e", "text", "h5")])
    key_index.write_index(output, "R3c", key_index.IndexEntries(), np.array([fp("d", "text", "h4")], np.uint64))
    # Past MAX_DELTAS the deltas fold into one base with the same live entries.
    monkeypatch.setattr(key_index, "MAX_DELTAS", 5)
    key_index.write_index(output, "R4", _entries([("c", "image", "h3")], "f4.parquet"), np.zeros(0, np.uint64))
    assert key_index.compact_index(output, "R4")
    assert [os.path.basename(p) for p in glob.glob(os.path.join(output, "index", "*"))] == ["base-R4.parquet"]
    lookup = key_index.KeyLookup.load(output)
    assert len(lookup) == 4 and lookup.saved("a", "text", "h6") and lookup.saved("c", "image", "h3")
    assert not lookup.saved("a", "text", "h1") and not lookup.saved("d", "text", "h4")


class _Item:
    def __init__(self, item_id, digest):
        self.id, self.modality, self.content_hash = item_id, "text", digest


def test_run_state_gives_identical_items_the_first_ones_fate():
    state = RunState()
    assert state.first_row("x", "m.jsonl", 1) is None
    assert state.first_row("x", "m.jsonl", 7) == ("m.jsonl", 1)
    assert state.claim(_Item("a", "h")) == (CALL, None)
    assert state.claim(_Item("b", "h")) == (COPY, None)
    copies = state.settle("a", "text", EMBEDDED, None)
    assert [c.id for c in copies] == ["b"]
    assert state.claim(_Item("c", "h")) == (EMBEDDED, None)  # too late to wait: copied after the run
    assert state.claim(_Item("d", "g")) == (CALL, None)
    assert state.settle("d", "text", FAILED, "letter") == []
    assert state.claim(_Item("e", "g")) == (FAILED, "letter")
    assert state.settle("zz", "text", DEFERRED, None) == []  # not an item it elected


def _first_call_watch(emu):
    """rows_read (this process's progress counter) at the moment the emulator saw its first request."""
    seen = {}
    base = PROGRESS.snapshot()["rows_read"]

    def watch():
        while not seen.get("stop"):
            if emu.stats()["requests"] > 0:
                seen["rows_read"] = PROGRESS.snapshot()["rows_read"] - base
                return
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return seen, thread


def test_a_rerun_pays_only_for_what_it_adds_past_every_boundary(tmp_path, monkeypatch):
    """9,045 rows (past an Arrow batch and the index table's growth): the first call goes out before the
    manifest is read; identical texts are called once, also when the copy comes long after its first item;
    duplicate ids keep the first row; +1% pays exactly the new rows; 2 edited rows rewrite at most 2 files."""
    from transforms.stages import write as sinks
    monkeypatch.setattr(sinks._RowRecordsFn, "ROWS_PER_FILE", 1000)  # the row records span several files
    hashed = []  # lines fingerprinted one by one (a saved prefix is hashed as a whole instead)
    fingerprint = key_index.SavedRows.fingerprint
    monkeypatch.setattr(key_index.SavedRows, "fingerprint", lambda self, data: hashed.append(1) or fingerprint(self, data))
    rows = [{"id": f"r{i}", "text": f"incremental row {i}"} for i in range(9000)]
    rows += [{"id": f"copy{i}", "text": f"incremental row {i * 37}"} for i in range(40)]
    rows += [{"id": f"r{i * 1000}", "text": f"taken id {i}"} for i in range(5)]
    manifest = _write(tmp_path / "m.jsonl", rows)
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        seen, watcher = _first_call_watch(emu)
        first = run(make_config(output, [manifest]), emu.base_url)
        seen["stop"] = True
        watcher.join()
        assert emu.stats()["items"]["text"] == 9000
        assert seen["rows_read"] < len(rows), "no call went out before the whole manifest was read"
        assert first["items_deduplicated"] == 40
        letters = read_dead_letters(output)
        assert sorted((l["id"], l["code"]) for l in letters) == sorted((f"r{i * 1000}", "duplicate_id")
                                                                      for i in range(5))
        assert all(f"is already used by {manifest} row {i * 1000 + 1}" in l["message"]
                   for i, l in zip(range(5), sorted(letters, key=lambda l: l["row_number"])))
        assert_exactly_once(output, len(rows))
        table = read_segments(output)
        vectors = dict(zip(table.column("id").to_pylist(), table.column("embedding").to_pylist()))
        assert all(vectors[f"copy{i}"] == vectors[f"r{i * 37}"] for i in range(40))

        # The first 9,040 rows are saved: the manifest's checkpoint is its last mark before them (2 x 4,096).
        (checkpoint,) = glob.glob(os.path.join(output, "index", "prefix-*.parquet"))
        assert __import__("pyarrow.parquet").parquet.read_table(checkpoint).num_rows == 8192

        added = [{"id": f"new{i}", "text": f"added row {i}"} for i in range(90)]
        manifest = _write(tmp_path / "m.jsonl", rows + added)
        before = emu.stats()["requests"]
        hashed.clear()
        loads = []  # the key index and saved rows: loaded once a run, while the runner starts
        for cls in (key_index.KeyLookup, key_index.SavedRows):
            load = cls.load
            monkeypatch.setattr(cls, "load", classmethod(
                lambda c, *a, _load=load: loads.append((c.__name__, threading.current_thread().name)) or _load(*a)))
        import transforms.stages.read as manifests_module

        used = []  # the saved prefix checked ahead by the prefetch, used by the reader
        skip_checked = manifests_module.skip_checked

        def skip_checked_seen(*args):
            result = skip_checked(*args)
            used.append(result is not None)
            return result

        monkeypatch.setattr(manifests_module, "skip_checked", skip_checked_seen)
        second = run(make_config(output, [manifest]), emu.base_url)
        assert sorted(loads) == [("KeyLookup", "prefetch-key-index"), ("SavedRows", "prefetch-key-index")]
        assert used[:1] == [True]
        assert emu.stats()["requests"] - before == 90
        assert len(hashed) == len(rows) + 90 - 8192  # the prefix's lines were not hashed one by one
        assert second["items_already_done"] == 9040
        # Saved rows are recognised as they are read (a fingerprint of the line), not parsed and validated.
        assert second["rows_skipped_unread"] == 9040
        assert sorted(l["id"] for l in read_dead_letters(output)) == sorted(f"r{i * 1000}" for i in range(5))
        assert_exactly_once(output, len(rows) + 90)

        edited = [dict(r) for r in rows + added]
        edited[3000]["text"] = "edited three thousand"
        edited[6000]["text"] = "edited six thousand"
        manifest = _write(tmp_path / "m.jsonl", edited)
        sizes = {p: os.path.getsize(p) for p in glob.glob(os.path.join(output, "segments", "*.parquet"))}
        mtimes = {p: os.stat(p).st_mtime_ns for p in sizes}
        before = emu.stats()["requests"]
        hashed.clear()
        third = run(make_config(output, [manifest]), emu.base_url)
        assert emu.stats()["requests"] - before == 2
        assert len(hashed) == len(edited)  # the prefix's bytes changed: every line is read
        assert third["rows_skipped_unread"] == 9040 + 90 - 2
    touched = [p for p in sizes if not os.path.exists(p) or os.stat(p).st_mtime_ns != mtimes[p]]
    assert len(touched) == 2 and third["segment_rows_dropped"] == 2
    assert max(sizes[p] for p in touched) < 2.5 * 2 ** 20  # files of ~2 MiB: an edit rewrites little
    final = read_segments(output)
    texts = dict(zip(final.column("id").to_pylist(), final.column("input_text").to_pylist()))
    assert texts["r3000"] == "edited three thousand" and texts["r6000"] == "edited six thousand"
    assert_exactly_once(output, len(edited))
    # Back to the first text: its old line is no longer listed as saved, so it is embedded again.
    with Emulator(EmulatorConfig()) as emu:
        fourth = run(make_config(output, [_write(tmp_path / "m.jsonl", rows + added)]), emu.base_url)
        assert emu.stats()["requests"] == 2 and fourth["rows_skipped_unread"] == 9040 + 90 - 2
    final = read_segments(output)
    texts = dict(zip(final.column("id").to_pylist(), final.column("input_text").to_pylist()))
    assert texts["r3000"] == "incremental row 3000" and texts["r6000"] == "incremental row 6000"
    assert_exactly_once(output, len(rows) + 90)


def test_saved_rows_of_csv_and_parquet_manifests_and_rows_of_local_files(tmp_path):
    """CSV and Parquet rows are recognised from their parsed values; a row naming a local file is always read
    (the file may change under it) and skipped through the key index instead."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    Image.new("RGB", (160, 160), (200, 30, 30)).save(tmp_path / "red.png")
    with open(tmp_path / "m.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([[f"c{i}", f"csv row {i}"] for i in range(20)])
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(20)], "text": [f"parquet row {i}" for i in range(20)]}),
                   tmp_path / "m.parquet")
    files = _write(tmp_path / "f.jsonl", [{"id": "file1", "image_file": str(tmp_path / "red.png")}])
    manifests = [str(tmp_path / "m.csv"), str(tmp_path / "m.parquet"), files]
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        run(make_config(output, manifests, pack=False), emu.base_url)
        assert emu.stats()["requests"] == 41
        again = run(make_config(output, manifests, pack=False), emu.base_url)
        assert emu.stats()["requests"] == 41
    assert again["rows_skipped_unread"] == 40 and again["items_already_done"] == 41
    # The picture changed under an unchanged row: embedded again.
    Image.new("RGB", (160, 160), (30, 30, 200)).save(tmp_path / "red.png")
    with Emulator(EmulatorConfig()) as emu:
        third = run(make_config(output, manifests, pack=False), emu.base_url)
        assert emu.stats()["requests"] == 1 and third["rows_skipped_unread"] == 40
    assert_exactly_once(output, 41)


OPTIONS = PipelineOptions(["--runner=FnApiRunner"])


@pytest.mark.parametrize("grouping", ["stream", "shuffle"])
def test_both_groupings_give_the_same_output(tmp_path, grouping):
    """The stream grouping (one process) and the shuffle grouping (clusters) agree on duplicate ids,
    identical inputs and the fate a failed item shares with its copies."""
    from pipeline.graph import build_pipeline

    refused = "http://127.0.0.1:9/nothing-listens-here.png"
    rows = [{"id": "a", "text": "same words"}, {"id": "b", "text": "other words"},
            {"id": "c", "text": "same words"}, {"id": "a", "text": "a reused id"},
            {"id": "d", "image_url": refused}, {"id": "e", "image_url": refused}]
    rows += [{"id": f"f{i}", "text": f"filler {i}"} for i in range(30)] + [{"id": "g", "text": "same words"}]
    manifest = _write(tmp_path / "m.jsonl", rows)
    output = str(tmp_path / grouping)
    with Emulator(EmulatorConfig(fetch_timeout_sec=2)) as emu:
        settings = CallSettings(base_url=emu.base_url, model="marengo3.0", run_id="r1")
        with beam.Pipeline(options=OPTIONS) as p:
            build_pipeline(p, manifest_paths=[manifest], output=output, settings=settings, run_id="r1",
                           run_time=datetime.datetime.now(datetime.timezone.utc), grouping=grouping)
        served = emu.stats()
    assert served["items"]["text"] == 32 and not served["items"].get("image")  # "same words" once, b, 30 fillers
    table = read_segments(output)
    vectors = dict(zip(table.column("id").to_pylist(), table.column("embedding").to_pylist()))
    assert vectors["a"] == vectors["c"] == vectors["g"]
    letters = sorted((l["id"], l["row_number"], l["code"]) for l in read_dead_letters(output))
    assert letters == [("a", 4, "duplicate_id"), ("d", 5, "embedding_failed"), ("e", 6, "embedding_failed")]
    assert_exactly_once(output, len(rows))


def test_an_output_without_an_index_gets_one_and_pays_nothing_again(tmp_path):
    """Outputs written before the index existed (or whose index/ was deleted) are indexed once at start."""
    import shutil

    manifest = _write(tmp_path / "m.jsonl", [{"id": f"o{i}", "text": f"older output {i}"} for i in range(30)])
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        run(make_config(output, [manifest]), emu.base_url)
        shutil.rmtree(os.path.join(output, "index"))
        again = run(make_config(output, [manifest]), emu.base_url)
        assert emu.stats()["requests"] == 30
    assert again["items_already_done"] == 30 and again["rows_skipped_unread"] == 0
    assert glob.glob(os.path.join(output, "index", "base-*.parquet"))
    assert len(key_index.KeyLookup.load(output)) == 30
    assert_exactly_once(output, 30)


def test_saved_lines_are_met_in_bulk_yet_a_new_row_takes_its_id_only_from_rows_after_it(tmp_path):
    """Runs of saved lines are skipped in bulk between new lines: a new row that reuses a saved row's id keeps
    it against saved rows after it in the same 2,048-line batch (they are read, to be rejected) and loses it to
    saved rows before it, in an earlier batch; a repeated saved line is read the second time."""
    from transforms.stages.read import SkippedRow, parse_manifest
    from transforms.stages.validate import _key_by_id

    lines = [json.dumps({"id": f"s{i}", "text": f"saved {i}"}).encode() for i in range(3000)]
    key = b"k" * 16
    probe = key_index.SavedRows(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint8), key)
    row_fp = np.array([probe.fingerprint(line) for line in lines], np.uint64)
    id_fp = np.array([key_index.fingerprint(f"s{i}") for i in range(3000)], np.uint64)

    def read(manifest_lines):
        saved = key_index.SavedRows(row_fp, id_fp, np.ones(3000, np.uint8), key)
        path = tmp_path / "m.jsonl"
        path.write_bytes(b"\n".join(manifest_lines) + b"\n")
        skipped, read_rows = 0, []
        for record in parse_manifest(str(path), saved):
            if isinstance(record, SkippedRow):
                skipped += record.count
                continue
            # what the duplicate-id step downstream does as each row arrives
            first = saved.claim_id(key_index.fingerprint(_key_by_id(record)[0]), record.source, record.row_number)
            read_rows.append((record.row_number, record.fields["id"], first and first[1]))
        return skipped, read_rows

    reuse_later = json.dumps({"id": "s1003", "text": "new text, id of a later saved line"}).encode()
    reuse_earlier = json.dumps({"id": "s5", "text": "new text, id of an earlier saved line"}).encode()
    manifest = lines[:999] + [reuse_later] + lines[999:] + [reuse_earlier, lines[7]]
    skipped, read_rows = read(manifest)
    assert read_rows == [(1000, "s1003", None),      # the new row keeps the id (mid-batch)
                         (1005, "s1003", None),      # the saved line after it is read (then rejected)
                         (3002, "s5", 6),            # the saved line before it kept s5: this row names it
                         (3003, "s7", 8)]            # a repeated saved line
    assert skipped == 3000 - 1


def test_saved_rows_member_streams_the_rows_files_and_agrees_with_loading_them(tmp_path):
    """Finalize asks which lines of a run are saved rows without loading every saved row: the answer equals
    `load_saved_rows` + membership over a base past one 32k row group, a delta that removes ids and re-adds
    some of them with other rows, and a line repeated in the manifest."""
    output = str(tmp_path)
    rng = np.random.default_rng(3)
    n = 70_000
    rows, ids = rng.integers(1, 2**63, n, dtype=np.uint64), rng.integers(1, 2**63, n, dtype=np.uint64)
    key_index.write_saved_rows(output, "R1", rows, ids, np.ones(n, np.uint8), np.zeros(0, np.uint64), base=True)
    changed = ids[40_000:40_100]  # these ids come back with new rows; their old rows are gone
    new_rows = rng.integers(1, 2**63, 100, dtype=np.uint64)
    key_index.write_saved_rows(output, "R2", new_rows, changed, np.ones(100, np.uint8), changed)
    gone = ids[50_000:50_010]      # removed for good
    key_index.write_saved_rows(output, "R3", np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint8),
                               gone)
    asked = np.concatenate([rows[::7], new_rows, rows[40_000:40_100], rows[50_000:50_010],
                            rng.integers(1, 2**63, 500, dtype=np.uint64), rows[:3]])
    live, _, _ = key_index.load_saved_rows(output)
    expected = key_index.member(asked, live)
    got = key_index.saved_rows_member(output, asked)
    assert np.array_equal(got, expected)
    assert got[:len(rows[::7])].sum() == len(rows[::7]) - len(set(range(40_000, 40_100, 1)) & set(range(0, n, 7))) \
        - len(set(range(50_000, 50_010)) & set(range(0, n, 7)))
    assert got[-3:].all() and not got[-503:-3].any()


def test_output_parquet_keeps_dictionaries_for_text_only(tmp_path):
    """Vectors and fingerprints never repeat: a dictionary for them only costs the writer memory and the file
    bytes. Text columns keep theirs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transforms.store.layout import write_parquet
    from transforms.stages.write import segment_schema

    n = 9000  # past one reader row group of 8,192
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.random.default_rng(1).random(n * 512, np.float32)), 512)
    table = pa.table({"id": pa.array([f"r{i}" for i in range(n)]), "modality": pa.array(["text"] * n),
                      "embedding": vectors.cast(segment_schema(512).field("embedding").type)})
    path = str(tmp_path / "t.parquet")
    with open(path, "wb") as f:
        write_parquet(table, f)
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 2 and meta.row_group(0).num_rows == 8192
    encodings = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).encodings
                 for i in range(meta.num_columns)}
    assert not any("DICTIONARY" in e for e in encodings["embedding.list.element"]), encodings
    assert any("DICTIONARY" in e for e in encodings["modality"]), encodings
    assert pq.read_table(path).equals(table)


def test_a_segment_piece_is_built_a_part_at_a_time_and_holds_every_segment(tmp_path):
    """The piece writer keeps compact outcomes (float32 vectors) and writes their table WRITE_PART outcomes at
    a time: 2,600 outcomes (one of them a 5-segment video) come back whole, in order, with exact vectors."""
    import pyarrow.parquet as pq

    from transforms.stages import write as sinks
    from transforms.records import Item, Outcome

    rng = np.random.default_rng(7)
    outcomes = []
    for i in range(2600):
        count = 5 if i == 1500 else 1
        item = Item(id=f"r{i}", modality="video" if count > 1 else "text", source="m.jsonl", row_number=i + 1,
                    content_hash=f"h{i}", text=None if count > 1 else f"text {i}")
        segments = [(float(k) if count > 1 else None, float(k + 1) if count > 1 else None,
                     rng.random(512).astype(np.float32).tolist()) for k in range(count)]
        outcomes.append(Outcome(item, "marengo3.0", segments))
    writer = sinks._SegmentPieceFn(str(tmp_path), "run", datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
                                   "marengo3.0", rows_per_piece=10_000, flush_sec=None)
    held = [writer.held(o) for o in outcomes]
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for o in held for _, _, v in o.segments)
    path = tmp_path / "piece.parquet"
    with open(path, "wb") as f:
        writer.write(held, f)
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_row_groups == 3 and parquet.metadata.row_group(0).num_rows == sinks.WRITE_PART
    table = parquet.read()
    assert table.num_rows == 2604
    assert table.column("id").to_pylist()[1500:1506] == ["r1500"] * 5 + ["r1501"]
    assert table.column("segment_index").to_pylist()[1500:1505] == [0, 1, 2, 3, 4]
    vectors = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, 512)
    expected = np.array([v for o in outcomes for _, _, v in o.segments], np.float32)
    assert np.array_equal(vectors, expected)


def test_a_saved_prefix_is_found_by_content_and_skipped_as_far_as_its_marks_match(tmp_path):
    """The reader's read map becomes a checkpoint of whole marks of saved lines, named by its first mark's bytes;
    a rerun of the same content under any name finds it, checks mark by mark, meets the rows of the matching
    part at once (an appended row reusing one of their ids names its row) and reads from there; CR line ends
    keep no read map."""
    from transforms.store import saved_prefix
    from transforms.stages.read import SkippedRow, parse_manifest

    key = b"p" * 16
    lines = [json.dumps({"id": f"s{i}", "text": f"saved {i}"}).encode() for i in range(9000)]
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    output = str(tmp_path / "out")

    def read(saved, name=path):
        readmap = saved_prefix.ReadMap(key)
        records = list(parse_manifest(str(name), saved, lambda n: saved_prefix.load_prefix(output, n), readmap))
        return records, readmap

    def skipped(records):
        return sum(r.count for r in records if isinstance(r, SkippedRow))

    empty = key_index.SavedRows(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint8), key)
    records, readmap = read(empty)
    assert len(records) == 9000 and [m[0] for m in readmap.marks] == [4096, 8192]
    readmap.write(output, "R1", str(path))
    row_fp = np.array([r.fingerprint for r in records], np.uint64)
    id_fp = np.array([key_index.fingerprint(f"s{i}") for i in range(9000)], np.uint64)
    saved_fps = row_fp[np.arange(9000) != 8500]  # row 8501 did not end saved
    assert saved_prefix.settle_prefixes(output, "R1", lambda fps: key_index.member(fps, saved_fps)) == 8192

    def fresh_saved():
        return key_index.SavedRows(row_fp, id_fp, np.ones(9000, np.uint8), key)

    # The same bytes under another name (a daily export that grew by a row): the whole prefix is skipped.
    grown = tmp_path / "m-grown.jsonl"
    grown.write_bytes(path.read_bytes() + json.dumps({"id": "s17", "text": "new text, old id"}).encode() + b"\n")
    saved = fresh_saved()
    records, readmap = read(saved, grown)
    assert records[0] == SkippedRow(str(grown), 1, 1, 8192) and skipped(records) == 9000
    assert readmap.rows == 9001 and [m[0] for m in readmap.marks] == [4096, 8192]
    (new_row,) = [r for r in records if not isinstance(r, SkippedRow)]
    assert new_row.row_number == 9001
    assert saved.claim_id(key_index.fingerprint("s17"), str(grown), 9001) == (str(grown), 18)

    # Checked ahead (while the runner starts): the reader skips the checked bytes without hashing them again,
    # with the same result; a file changed since the check (same size, new time) is hashed again, and its
    # edit found.
    find = lambda n: saved_prefix.load_prefix(output, n)  # noqa: E731
    checked = saved_prefix.check_prefix(str(grown), key, find, fresh_saved())
    assert checked.prefix.rows == 8192 and checked.size == grown.stat().st_size
    hashed = []
    real = saved_prefix.skip_prefix

    def counted(*args):
        hashed.append(1)
        return real(*args)

    import transforms.stages.read as manifests_module

    saved = fresh_saved()
    original = manifests_module.skip_prefix
    manifests_module.skip_prefix = counted
    try:
        records = list(parse_manifest(str(grown), saved, find, saved_prefix.ReadMap(key), checked))
        assert not hashed and records[0] == SkippedRow(str(grown), 1, 1, 8192) and skipped(records) == 9000
        edited = grown.read_bytes().replace(b'"saved 100"', b'"saved 1O0"')
        grown.write_bytes(edited)
        os.utime(grown, (time.time() + 5, time.time() + 5))
        records = list(parse_manifest(str(grown), fresh_saved(), find, saved_prefix.ReadMap(key), checked))
        assert hashed == [1] and records[0] == SkippedRow(str(grown), 1, 1, 100)  # read from the edit on
    finally:
        manifests_module.skip_prefix = original

    # A byte changed in the second mark: the first mark is skipped, the rest read line by line.
    changed = lines[:]
    changed[5000] = json.dumps({"id": "s5000", "text": "saved 5OOO"}).encode()
    path.write_bytes(b"\n".join(changed) + b"\n")
    records, _ = read(fresh_saved())
    assert records[0] == SkippedRow(str(path), 1, 1, 4096) and skipped(records) == 8999
    assert [r.row_number for r in records if not isinstance(r, SkippedRow)] == [5001]

    # A byte changed in the first mark: no checkpoint has that name; every line is read.
    changed[10] = json.dumps({"id": "s10", "text": "saved 1O"}).encode()
    path.write_bytes(b"\n".join(changed) + b"\n")
    records, _ = read(fresh_saved())
    assert skipped(records) == 8998 and records[0] == SkippedRow(str(path), 1, 1, 10)  # lines 1-10, then row 11

    # CR line ends: the lines do not add up to the bytes, so no read map is kept.
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    records, readmap = read(empty)
    assert len(records) == 9000 and not readmap.valid
    readmap.write(output, "R2", str(path))
    assert not glob.glob(os.path.join(output, "runs", "R2", "readmap-*"))


def test_index_parts_are_written_a_row_group_at_a_time(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr(key_index, "_ROW_GROUP", 4)
    output = str(tmp_path)
    parts = (_entries([(f"k{i}-{j}", "text", f"h{i}-{j}") for j in range(3)], f"f{i}.parquet") for i in range(5))
    path, added = key_index.write_index_parts(output, "R1", parts, np.array([key_index.fingerprint("x")], np.uint64))
    assert added == 15
    meta = pq.ParquetFile(path).metadata
    # the removal, then 6 + 6 + 3 entries (parts gathered until a row group is full, each written in groups of 4)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1, 4, 2, 4, 2, 3]
    live = key_index.load_entries(output)
    assert sorted(zip(live.key_fp.tolist(), [live.files[i] for i in live.file_index])) == sorted(
        (key_index.fingerprint(f"k{i}-{j}", "text", f"h{i}-{j}"), f"f{i}.parquet") for i in range(5) for j in range(3))


def test_member_agrees_with_isin_on_fingerprints():
    rng = np.random.default_rng(7)
    for n, m in [(0, 5), (5, 0), (1000, 10), (10, 1000), (40000, 40000)]:
        values = rng.integers(0, 3 * max(n, m, 1), n, dtype=np.uint64)
        among = rng.integers(0, 3 * max(n, m, 1), m, dtype=np.uint64)
        assert (key_index.member(values, among) == np.isin(values, among)).all(), (n, m)
    top = np.array([2 ** 64 - 1, 2 ** 63, 5], np.uint64)  # the largest fingerprints sort last, not negative
    assert key_index.member(top, np.array([2 ** 64 - 1, 4], np.uint64)).tolist() == [True, False, False]
