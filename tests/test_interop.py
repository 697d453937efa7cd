"""The output Parquet read by DuckDB, Polars and pandas gives the same values as pyarrow; search works."""
import os
import subprocess
import sys

import numpy as np
import pytest

from embed_emulator import Emulator, EmulatorConfig
from pipeline.samples import ensure_samples
from pipeline.search import nearest
from tests.helpers import TEST_KEY, make_config, read_segments, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interop")
    manifests = ensure_samples(str(folder / "samples"))
    out = str(folder / "out")
    os.environ.setdefault("TWELVE_LABS_API_KEY", TEST_KEY)
    with Emulator(EmulatorConfig()) as emu:
        run(make_config(out, [os.path.join(manifests, n) for n in ("catalog.jsonl", "extra.csv", "more.parquet")]),
            emu.base_url)
    return out


def _reference(output):
    table = read_segments(output)
    rows = table.select(["id", "modality", "segment_index", "embedding"]).to_pylist()
    return {(r["id"], r["modality"], r["segment_index"]): np.asarray(r["embedding"], dtype=np.float32) for r in rows}


def test_duckdb_reads_vectors_as_fixed_size_arrays_and_computes_cosine(output):
    duckdb = pytest.importorskip("duckdb")
    import pyarrow.dataset as ds

    pattern = os.path.join(output, "segments", "*.parquet")
    con = duckdb.connect()
    # Through Arrow (pyarrow keeps the fixed size in the file's Arrow schema) the column is FLOAT[512];
    # DuckDB's own Parquet reader sees a plain list, which a cast makes an array again.
    segments = ds.dataset(os.path.join(output, "segments"), format="parquet").to_table()
    con.register("segments", segments)
    assert dict(con.execute("DESCRIBE segments").fetchall()[i][:2] for i in range(18))["embedding"] == "FLOAT[512]"
    con.execute(f"CREATE VIEW from_files AS SELECT * REPLACE (embedding::FLOAT[512] AS embedding) "
                f"FROM read_parquet('{pattern}')")
    reference = _reference(output)
    for view in ("segments", "from_files"):
        rows = con.execute(f"SELECT id, modality, segment_index, embedding FROM {view}").fetchall()
        assert len(rows) == len(reference) == 25
        for item_id, modality, index, vector in rows:
            np.testing.assert_array_equal(np.asarray(vector, dtype=np.float32), reference[(item_id, modality, index)])
        (best,) = con.execute(
            f"""SELECT b.id FROM {view} a, {view} b WHERE a.id = 't1' AND a.modality = 'text' AND b.id <> 't1'
                ORDER BY array_cosine_similarity(a.embedding, b.embedding) DESC LIMIT 1""").fetchone()
        (self_sim,) = con.execute(f"SELECT array_cosine_similarity(embedding, embedding) FROM {view} "
                                  "WHERE id = 'i1'").fetchone()
        assert self_sim == pytest.approx(1.0, abs=1e-5) and best != "t1"


def test_polars_reads_arrays_with_the_same_values(output):
    pl = pytest.importorskip("polars")
    frame = pl.read_parquet(os.path.join(output, "segments", "*.parquet"))
    assert frame.schema["embedding"] == pl.Array(pl.Float32, 512)
    reference = _reference(output)
    assert frame.height == len(reference)
    for item_id, modality, index, vector in frame.select(["id", "modality", "segment_index", "embedding"]).iter_rows():
        np.testing.assert_array_equal(np.asarray(vector, dtype=np.float32), reference[(item_id, modality, index)])


def test_pandas_reads_the_same_values(output):
    pd = pytest.importorskip("pandas")
    frame = pd.concat([pd.read_parquet(os.path.join(output, "segments", f))
                       for f in sorted(os.listdir(os.path.join(output, "segments")))])
    reference = _reference(output)
    assert len(frame) == len(reference)
    for row in frame.itertuples():
        np.testing.assert_array_equal(np.asarray(row.embedding, dtype=np.float32),
                                      reference[(row.id, row.modality, row.segment_index)])
    audio = frame[(frame.id == "m1") & (frame.modality == "audio")].sort_values("segment_index")
    assert audio.start_offset_sec.tolist() == [1.5, 7.5]


def test_an_identical_text_and_image_are_their_own_nearest_neighbours(output):
    reference = _reference(output)
    (top,) = nearest(output, reference[("t2", "text", 0)], k=1)
    assert (top["id"], top["modality"]) == ("t2", "text") and top["score"] == pytest.approx(1.0, abs=1e-5)
    images = nearest(output, reference[("i1", "image", 0)], k=3, modality="image")
    assert images[0]["id"] == "i1" and all(r["modality"] == "image" for r in images)
    assert [r["score"] for r in images] == sorted([r["score"] for r in images], reverse=True)


def test_search_cli_embeds_the_query_and_finds_it(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = str(tmp_path / "out")
    job = subprocess.run([sys.executable, "-m", "pipeline", "--config", "configs/local.yaml", "--output", out],
                         capture_output=True, cwd=ROOT, env=env, timeout=300)
    assert job.returncode == 0, job.stderr[-1500:]  # finished; the samples' bad rows exit 0 (exit_codes)
    found = subprocess.run([sys.executable, "-m", "pipeline", "search", "--config", "configs/local.yaml",
                            "--output", out, "--text", "a piano playing a slow melody", "-k", "3"],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert found.returncode == 0, found.stderr[-1500:]
    first = found.stdout.splitlines()[0].split()
    assert first[:4] == ["1", "1.0000", "c1", "text#0"] and len(found.stdout.splitlines()) == 3
    image = subprocess.run([sys.executable, "-m", "pipeline", "search", "--output", out, "--image-file",
                            os.path.join(ROOT, "samples", "media", "green.jpg"), "-k", "1"],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert image.returncode == 0 and image.stdout.split()[:4] == ["1", "1.0000", "i1", "image#0"]

    # An output holding no rows of the asked modality says so; a folder with no output, or k < 1, is a
    # usage error: one line, exit 2.
    import glob as _glob

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    texts_only = tmp_path / "texts" / "segments"
    texts_only.mkdir(parents=True)
    for i, path in enumerate(sorted(_glob.glob(os.path.join(out, "segments", "*.parquet")))):
        table = pq.read_table(path)
        pq.write_table(table.filter(pc.equal(table.column("modality"), "text")), str(texts_only / f"p{i}.parquet"))
    none = subprocess.run([sys.executable, "-m", "pipeline", "search", "--output", str(tmp_path / "texts"),
                           "--text", "a piano", "--modality", "image"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert none.returncode == 0 and none.stdout == ""
    assert f"no image segments in {tmp_path / 'texts'}" in none.stderr
    for extra, says in ((["--output", str(tmp_path / "nothing")], "no segment files under"),
                        (["--output", out, "-k", "0"], "-k must be at least 1")):
        bad = subprocess.run([sys.executable, "-m", "pipeline", "search", "--text", "a piano"] + extra,
                             capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-800:]
