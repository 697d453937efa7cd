"""The LanceDB table beside the Parquet (transforms.store.vector_index, index.lancedb) and `search` through it.

The invariant checked everywhere: after a finished sync the table holds exactly the Parquet's segments (ids,
modality, segment, offsets, vectors), and at no point more than the Parquet has held."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
import soundfile

from tests.helpers import TEST_KEY, read_segments
from transforms.stages.write import segment_schema
from transforms.store import vector_index
from transforms.store.layout import write_parquet

lancedb = pytest.importorskip("lancedb")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY_COLUMNS = ["id", "modality", "segment_index", "start_offset_sec", "end_offset_sec", "embedding_option",
               "embedding_scope"]


def _rows(table: pa.Table) -> dict:
    """(id, modality, segment, option, scope) -> (offsets, vector bytes), one entry a segment row."""
    found = {}
    vectors = table.column("embedding").combine_chunks()
    flat = vectors.values.to_numpy(zero_copy_only=False).reshape(len(vectors), -1) if len(vectors) else []
    columns = {name: table.column(name).to_pylist() for name in KEY_COLUMNS}
    for i in range(table.num_rows):
        key = (columns["id"][i], columns["modality"][i], columns["segment_index"][i], columns["embedding_option"][i],
               columns["embedding_scope"][i])
        assert key not in found, f"{key} twice"
        found[key] = (columns["start_offset_sec"][i], columns["end_offset_sec"][i], flat[i].tobytes())
    return found


def _table_of(uri: str) -> pa.Table:
    table = lancedb.connect(uri).open_table(vector_index.TABLE_NAME)
    return vector_index.table_rows(table, KEY_COLUMNS + ["embedding"])


def assert_table_equals_parquet(output: str, uri: str = None) -> int:
    uri = uri or os.path.join(output, vector_index.INDEX_FOLDER)
    parquet, table = _rows(read_segments(output)), _rows(_table_of(uri))
    assert set(table) == set(parquet), (len(set(table) - set(parquet)), len(set(parquet) - set(table)))
    assert table == parquet  # offsets and vectors too, bit for bit
    return len(table)


def _write_segments(output: str, name: str, ids, dims: int = 16, seed: int = 0, option=None) -> None:
    schema = segment_schema(dims)
    n = len(ids)
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    columns = {field.name: pa.nulls(n, field.type) for field in schema}
    columns.update(id=pa.array(list(ids)), modality=pa.array(["text"] * n), model_name=pa.array(["marengo3.0"] * n),
                   segment_index=pa.array([0] * n, pa.int32()),
                   start_offset_sec=pa.array(np.arange(n, dtype=np.float64)),
                   end_offset_sec=pa.array(np.arange(n, dtype=np.float64) + 1),
                   embedding_option=pa.array([option] * n, pa.string()),
                   attributes=pa.array([json.dumps({"n": i % 7, "tag": "even" if i % 2 == 0 else "odd"})
                                        for i in range(n)]),
                   embedding=pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dims))
    folder = os.path.join(output, "segments")
    os.makedirs(folder, exist_ok=True)
    table = pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
    with open(os.path.join(folder, name + ".tmp"), "wb") as f:
        write_parquet(table, f)
    os.replace(os.path.join(folder, name + ".tmp"), os.path.join(folder, name))
    time.sleep(0.002)  # a later rewrite of the same name gets another modification time


SETTINGS = vector_index.IndexSettings(True, None, 10 ** 9)


def test_the_table_follows_every_change_of_the_parquet_across_batch_boundaries(tmp_path):
    output = str(tmp_path / "out")
    # 9,000 + 8,300 rows: past an Arrow batch and a Parquet row group (8,192) in each file.
    _write_segments(output, "part-a.parquet", [f"a{i}" for i in range(9000)], seed=1)
    _write_segments(output, "part-b.parquet", [f"b{i}" for i in range(8300)], seed=2)
    done = vector_index.sync_index(output, SETTINGS)
    assert (done["rows_added"], done["rows_deleted"], done["files_added"], done["rows"]) == (17300, 0, 2, 17300)
    assert assert_table_equals_parquet(output) == 17300
    assert vector_index.index_state(output).usable

    # Finalize rewrites b without 300 rows, deletes a, adds c: the table follows.
    _write_segments(output, "part-b.parquet", [f"b{i}" for i in range(8000)], seed=2)
    os.remove(os.path.join(output, "segments", "part-a.parquet"))
    _write_segments(output, "part-c.parquet", [f"c{i}" for i in range(10)], seed=3)
    stale = vector_index.index_state(output)
    assert not stale.usable and "behind the Parquet" in stale.reason
    done = vector_index.sync_index(output, SETTINGS)
    assert (done["rows_added"], done["rows_deleted"], done["rows"]) == (8010, 17300, 8010)
    assert assert_table_equals_parquet(output) == 8010
    again = vector_index.sync_index(output, SETTINGS)  # nothing changed: nothing written
    assert (again["rows_added"], again["rows_deleted"], again["table_version"]) == (0, 0, done["table_version"])
    assert vector_index.index_state(output).usable


_KILL_IN_ADD = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
from transforms.store import vector_index
original = vector_index._batches
def dying(*args):
    for batch in original(*args):
        yield batch
        os.kill(os.getpid(), signal.SIGKILL)  # LanceDB holds a batch, the add is not committed
vector_index._batches = dying
vector_index.sync_index({output!r}, vector_index.IndexSettings(True, None, 10 ** 9))
"""


def test_a_sync_killed_while_adding_leaves_no_row_the_parquet_lacks_and_the_next_sync_completes_it(tmp_path):
    output = str(tmp_path / "out")
    _write_segments(output, "part-a.parquet", [f"a{i}" for i in range(3000)], seed=1)
    vector_index.sync_index(output, SETTINGS)
    _write_segments(output, "part-a.parquet", [f"a{i}" for i in range(2000)], seed=1)  # 1,000 rows dropped
    _write_segments(output, "part-b.parquet", [f"b{i}" for i in range(9000)], seed=2)
    killed = subprocess.run([sys.executable, "-c", _KILL_IN_ADD.format(root=ROOT, output=output)],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    parquet = _rows(read_segments(output))
    table = _rows(_table_of(os.path.join(output, vector_index.INDEX_FOLDER)))
    assert set(table) <= set(parquet) and len(table) < len(parquet)
    assert not any(key[0].startswith("b") for key in table)  # the add was not committed
    assert not vector_index.index_state(output).usable
    done = vector_index.sync_index(output, SETTINGS)
    assert done["rows_added"] == 11000
    assert assert_table_equals_parquet(output) == 11000


def test_search_filters_agree_between_the_index_and_the_scan(tmp_path):
    from pipeline.search import Filters, indexed_nearest, nearest

    output = str(tmp_path / "out")
    _write_segments(output, "part-a.parquet", [f"a{i}" for i in range(9000)], seed=1, option="visual")
    _write_segments(output, "part-b.parquet", [f"b{i}" for i in range(500)], seed=2, option="audio")
    vector_index.sync_index(output, SETTINGS)
    state = vector_index.index_state(output)
    query = np.random.default_rng(9).standard_normal(16).astype(np.float32)
    cases = [Filters(), Filters(option="audio"), Filters(attributes=(("tag", "odd"),)),
             Filters(option="visual", attributes=(("n", "3"), ("tag", "even"))), Filters(model="marengo2.7")]
    for filters in cases:
        exact = nearest(output, query, 10, filters=filters)
        indexed = indexed_nearest(state.table, query, 10, filters)
        assert [r["id"] for r in indexed] == [r["id"] for r in exact], filters
        assert np.allclose([r["score"] for r in indexed], [r["score"] for r in exact], atol=1e-5)
    assert nearest(output, query, 10, filters=Filters(model="marengo2.7")) == []
    assert all(r["id"].startswith("b") for r in nearest(output, query, 10, filters=Filters(option="audio")))
    rows = read_segments(output).to_pydict()
    attributes = dict(zip(rows["id"], rows["attributes"]))
    chosen = indexed_nearest(state.table, query, 10, Filters(attributes=(("n", "3"), ("tag", "even"))))
    assert len(chosen) == 10 and all(json.loads(attributes[r["id"]]) in ({"n": 3, "tag": "even"},) for r in chosen)


# ---- through the CLI --------------------------------------------------------------------------------------------

def _manifest(tmp_path, texts: int, edited=(), audio: int = 3, invalid=()):
    lines = []
    for i in range(texts):
        text = "   " if i in invalid else f"catalog caption number {i}" + (" (edited)" if i in edited else "")
        lines.append({"id": f"t{i}", "text": text, "genre": ["jazz", "rock", "folk"][i % 3]})
    for i in range(audio):
        path = tmp_path / f"a{i}.wav"
        if not path.exists():
            rate = 16000
            t = np.arange(int(rate * 23.5)) / rate
            soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t)).astype(np.float32), rate)
        lines.append({"id": f"a{i}", "audio_file": str(path), "genre": "speech"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def _config(tmp_path, manifest) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({
        "model": "marengo3.0", "manifests": [str(manifest)], "output": {"path": str(tmp_path / "out")},
        "api": {"base_url": "embedded"}, "calls": {"max_in_flight": 8, "pack": True, "requests_per_minute": 60000},
        "emulator": {"requests_per_minute": 60000}, "index": {"lancedb": True, "ann_min_rows": 256},
        "beam": {"args": ["--runner=DirectRunner"]}}))
    return str(path)


def _env():
    return dict(os.environ, PYTHONPATH=ROOT, TWELVE_LABS_API_KEY=TEST_KEY)


def _cli(*args, script=None):
    command = [sys.executable] + ([script] if script else ["-m", "pipeline"]) + list(args)
    return subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)


_KILLED_IN_SYNC = os.path.join(ROOT, "tests", "index_kill_cli.py")


def test_the_cli_keeps_the_table_and_the_parquet_equal_through_a_rerun_and_a_kill_in_the_sync(tmp_path):
    output = str(tmp_path / "out")
    uri = os.path.join(output, vector_index.INDEX_FOLDER)
    config = _config(tmp_path, _manifest(tmp_path, 300))
    fresh = _cli("--config", config)
    assert fresh.returncode == 0, fresh.stdout[-2000:] + fresh.stderr[-2000:]
    first = assert_table_equals_parquet(output)
    assert first == 300 + 3 * 4  # each 23.5 s audio has 4 segments
    summary = json.load(open(os.path.join(output, "summary.json")))
    assert summary["vector_index"]["rows_added"] == first and summary["vector_index"]["ann"]["action"] == "built"
    assert f"index            LanceDB {first} rows (+{first} -0)" in fresh.stdout
    before = _rows(_table_of(uri))

    # +1% rows, 2 rows edited, 1 turned invalid: the table gains the new rows, swaps the edited ones and loses
    # the invalid one's, as the Parquet does.
    _manifest(tmp_path, 303, edited=(5, 77), invalid=(11,))
    rerun = _cli("--config", config)
    assert rerun.returncode == 3, rerun.stdout[-2000:] + rerun.stderr[-2000:]  # the new dead letter
    summary = json.load(open(os.path.join(output, "summary.json")))
    assert summary["calls"] == 5  # 5 texts (v1 packs one text a call): only what changed is paid for
    assert assert_table_equals_parquet(output) == first + 3 - 1
    now = _rows(_table_of(uri))
    changed = sorted(key[0] for key in before if before[key] != now.get(key))
    assert changed == ["t11", "t5", "t77"]  # new vectors for t5 and t77, none for t11; nothing else moved
    assert not [key for key in now if key[0] == "t11"]

    # Killed while the sync adds rows: the Parquet is finalized, the table is behind, never ahead.
    _manifest(tmp_path, 330, edited=(9,), invalid=(11,))
    killed = _cli("--config", config, script=_KILLED_IN_SYNC)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    parquet, table = _rows(read_segments(output)), _rows(_table_of(uri))
    assert set(table) < set(parquet)
    assert all(table[key] == parquet[key] for key in table)
    search = _cli("search", "--config", config, "--text", "catalog caption number 320", "-k", "3")
    assert search.returncode == 0, search.stderr[-2000:]
    assert "exact scan" in search.stderr and "behind the Parquet" in search.stderr
    assert search.stdout.split("\n")[0].split()[2] == "t320"

    after = _cli("--config", config)
    assert after.returncode == 0, after.stdout[-2000:] + after.stderr[-2000:]
    assert json.load(open(os.path.join(output, "summary.json")))["calls"] == 0
    assert assert_table_equals_parquet(output) == first + 30 - 1

    # search now goes through the index, with the same answer as the exact scan (filters: in-process tests above).
    flags = ["search", "--config", config, "--text", "catalog caption number 320", "-k", "5", "--attribute",
             "genre=rock"]
    indexed, exact = _cli(*flags), _cli(*flags, "--exact")
    assert indexed.returncode == exact.returncode == 0, indexed.stderr[-2000:] + exact.stderr[-2000:]
    assert "search: LanceDB index at" in indexed.stderr and "exact scan" in exact.stderr
    assert indexed.stdout == exact.stdout
    ids = [int(line.split()[2][1:]) for line in indexed.stdout.splitlines()]
    assert len(ids) == 5 and all(i % 3 == 1 for i in ids)


def test_index_on_without_lancedb_is_one_line_and_exit_2(tmp_path):
    config = _config(tmp_path, _manifest(tmp_path, 3, audio=0))
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "lancedb.py").write_text("raise ImportError('blocked for the test')\n")
    env = dict(_env(), PYTHONPATH=f"{blocker}{os.pathsep}{ROOT}")
    out = subprocess.run([sys.executable, "-m", "pipeline", "--config", config], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "index.lancedb is on but LanceDB is not installed" in out.stderr and "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "out" / "segments")


def test_an_output_in_a_bucket_keeps_its_table_in_the_bucket_and_search_uses_it(tmp_path, moto_s3):
    """The table beside Parquet on S3 (moto's server): LanceDB gets the job's endpoint and keys."""
    from embed_emulator import Emulator, EmulatorConfig

    bucket = moto_s3.new_bucket()

    def rows(start, stop):
        return "".join(json.dumps({"id": f"r{i}", "text": f"caption number {i}"}) + "\n" for i in range(start, stop))

    moto_s3.write(bucket, "manifests/a.jsonl", rows(0, 30).encode())
    env = dict(_env(), **moto_s3.env, TMPDIR=str(tmp_path))
    with Emulator(EmulatorConfig()) as emulator:
        path = tmp_path / "job.yaml"
        path.write_text(json.dumps({
            "model": "marengo3.0", "manifests": [f"s3://{bucket}/manifests/*.jsonl"],
            "output": {"path": f"s3://{bucket}/out"}, "api": {"base_url": emulator.base_url},
            "calls": {"max_in_flight": 4}, "index": {"lancedb": True, "ann_min_rows": 10},
            "beam": {"args": ["--runner=DirectRunner", *moto_s3.beam_args]}}))

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env,
                                  cwd=ROOT, timeout=300)

        first = cli("--config", str(path))
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        moto_s3.write(bucket, "manifests/b.jsonl", rows(30, 40).encode())
        second = cli("--config", str(path))
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
        found = cli("search", "--config", str(path), "--text", "caption number 37", "-k", "3")
    assert found.returncode == 0, found.stderr[-2000:]
    assert f"search: LanceDB index at s3://{bucket}/out/lancedb (40 rows" in found.stderr
    assert found.stdout.splitlines()[0].split()[2] == "r37"
    assert any(key.startswith("out/lancedb/segments.lance/") for key in moto_s3.keys(bucket, "out/lancedb/"))
    summary = json.loads(moto_s3.read(bucket, "out/summary.json"))
    assert (summary["vector_index"]["rows_added"], summary["vector_index"]["rows"]) == (10, 40)


def test_the_readme_s_python_and_duckdb_query_returns_the_nearest_rows(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    output = str(tmp_path / "out")
    _write_segments(output, "part-a.parquet", [f"a{i}" for i in range(2000)], seed=4)
    vector_index.sync_index(output, SETTINGS)
    query_vector = read_segments(output).column("embedding")[1234].as_py()
    # The README's snippet ("A vector index beside the Parquet"), with modality text.
    table = lancedb.connect(os.path.join(output, "lancedb")).open_table("segments")
    hits = (table.search(query_vector, vector_column_name="embedding").distance_type("cosine")  # noqa: F841
            # (DuckDB's SQL below reads `hits` by its Python name)
            .where("modality = 'text'", prefilter=True).limit(10).to_arrow())
    rows = duckdb.sql("SELECT id, segment_index, start_offset_sec, 1 - _distance AS score FROM hits "
                      "ORDER BY score DESC").fetchall()
    assert len(rows) == 10 and rows[0][0] == "a1234" and rows[0][3] == pytest.approx(1.0, abs=1e-5)
