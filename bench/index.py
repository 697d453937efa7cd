"""The `index` scenario (issue 26): the LanceDB table of an output's segments and its ANN index
(`transforms.store.ann`) against the project's exact scan (`pipeline.search.nearest`) over the same Parquet.

Data: N segment rows (default 1,000,000, --rows) of 512-d marengo3.0 vectors made by the emulator's own
functions (`embed_emulator.vectors`): texts (8 items in 10: generated sentences over a pseudo-word vocabulary),
16x16 pictures (1 in 10) and 2 s tones cut into two 1 s segments (1 in 10). Written as the job writes its
output (`segment_schema`, `write_parquet_parts`, row groups of 8,192) into OUTPUT/segments/, then streamed into
a LanceDB table of the sink's columns, then indexed with `build_or_update_ann`.

Queries: 100 emulator vectors of inputs a user would search with: 60 new sentences, 20 corpus sentences with a
word changed, 10 corpus pictures with noise added, 10 corpus tones shifted in pitch. Ground truth: the exact
top 10 by numpy over every stored vector. Measured: recall@10 of the indexed query, medians of the indexed
query, of LanceDB's exact (flat) search and of `nearest` (the peer: fewer queries, each reads every file),
the same with `where modality = 'image'`, disk sizes and the times to write and index. Then 1% more rows
are added and `build_or_update_ann` runs again. Ratios are to peers of the same run, never pass/fail: other
load on the machine moves them.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["run_index", "DEFAULT_ROWS"]

DEFAULT_ROWS = 1_000_000
MODEL, DIMS = "marengo3.0", 512
QUERIES, K = 100, 10
# The exact scans are slow at 1M rows (seconds a query): their medians over fewer queries.
PEER_QUERIES, PEER_FILTERED_QUERIES, FLAT_QUERIES = 10, 5, 20
FILE_ROWS = 16 * 8192  # rows per Parquet file of OUTPUT/segments
BATCH_ROWS = 8192
ADDED_FRACTION = 0.01
FILTER = "modality = 'image'"
SAMPLE_RATE, TONE_SEC, SEGMENT_SEC = 8000, 2.0, 1.0
# The sink's columns (the Parquet's without the input_* columns and run_time).
TABLE_COLUMNS = ["id", "modality", "model_name", "segment_index", "start_offset_sec", "end_offset_sec", "embedding",
                 "embedding_option", "embedding_scope", "content_hash", "attributes", "source", "row_number",
                 "run_id"]
CATEGORIES = ("news", "sport", "music", "travel", "food", "science", "film", "nature")
_SYLLABLES = ("ka", "lo", "mi", "ren", "tas", "vo", "ber", "sul", "dri", "qua", "nem", "pho", "zin", "gal", "tor",
              "wes", "ul", "yan", "fik", "mor", "pel", "sid", "cha", "nu", "vex", "ro", "ist", "ban", "kel", "om")


def _vocabulary() -> List[str]:
    rng = np.random.default_rng(26)
    words = set()
    while len(words) < 3000:
        words.add("".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), rng.integers(1, 4))))
    return sorted(words)


class Corpus:
    """The emulator's vectors of generated items, in batches of rows; remembers a few items to perturb."""

    def __init__(self, seed: int = 0):
        from embed_emulator import vectors

        self.vectors, self.words = vectors, _vocabulary()
        self.seed = seed
        self.texts: List[str] = []  # the first texts, images and tones, for perturbed queries
        self.images: List[np.ndarray] = []
        self.tones: List[Tuple[float, ...]] = []

    def sentences(self, rng: np.random.Generator, count: int) -> List[str]:
        lengths = rng.integers(5, 15, count)
        picks = rng.integers(0, len(self.words), (count, 15))
        return [" ".join(self.words[w] for w in row[:n]) for row, n in zip(picks, lengths)]

    def text(self, text: str) -> List[float]:
        return self.vectors.text_vector(text, MODEL)

    def image(self, grid: np.ndarray) -> List[float]:
        from PIL import Image

        return self.vectors.image_vector_from_image(Image.fromarray(grid, "RGB"), MODEL)

    @staticmethod
    def picture(rng: np.random.Generator) -> np.ndarray:
        """A 16x16 picture: a 4x4 grid of colour blocks plus a little noise (the emulator's image grid size)."""
        blocks = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((4, 4, 1)))
        return np.clip(blocks + rng.normal(0, 8, blocks.shape), 0, 255).astype(np.uint8)

    def tone(self, spec: Tuple[float, ...]) -> List[Tuple[float, float, List[float]]]:
        """2 s of three tones (Hz, Hz, Hz, amplitude, amplitude), the third from 1 s on: two 1 s segments."""
        a_hz, b_hz, c_hz, b_amp, c_amp = spec
        t = np.arange(int(TONE_SEC * SAMPLE_RATE)) / SAMPLE_RATE
        samples = np.sin(2 * np.pi * a_hz * t) + b_amp * np.sin(2 * np.pi * b_hz * t) \
            + c_amp * np.sin(2 * np.pi * c_hz * t) * (t >= TONE_SEC / 2)
        return self.vectors.audio_segment_vectors_from_samples(samples.astype(np.float32), SAMPLE_RATE, MODEL,
                                                               segment_sec=SEGMENT_SEC)

    def batch(self, first_item: int, items: int, rng: np.random.Generator) -> Dict[str, list]:
        """Rows of `items` items from item number `first_item`: text, image or audio by item % 10."""
        cols: Dict[str, list] = {name: [] for name in ("id", "modality", "segment_index", "start_offset_sec",
                                                       "end_offset_sec", "embedding", "input_file", "input_text",
                                                       "content_hash", "attributes", "row_number")}
        texts = iter(self.sentences(rng, items))
        for item in range(first_item, first_item + items):
            kind = item % 10
            text = next(texts)
            if kind == 0:
                grid = self.picture(rng)
                if len(self.images) < 1000:
                    self.images.append(grid)
                segments = [(None, None, self.image(grid))]
                modality, file, content = "image", f"media/img{item}.png", grid.tobytes()
                text = None
            elif kind == 5:
                hz = tuple(float(x) for x in np.concatenate([rng.uniform(60, 3800, 3), rng.uniform(0.1, 1.0, 2)]))
                if len(self.tones) < 1000:
                    self.tones.append(hz)
                segments = self.tone(hz)
                modality, file, content = "audio", f"media/tone{item}.wav", repr(hz).encode()
                text = None
            else:
                if len(self.texts) < 1000:
                    self.texts.append(text)
                segments = [(None, None, self.text(text))]
                modality, file, content = "text", None, text.encode()
            digest = hashlib.sha256(content).hexdigest()
            attributes = json.dumps({"category": CATEGORIES[item % len(CATEGORIES)]})
            for index, (start, end, vector) in enumerate(segments):
                cols["id"].append(f"r{item}")
                cols["modality"].append(modality)
                cols["segment_index"].append(index)
                cols["start_offset_sec"].append(start)
                cols["end_offset_sec"].append(end)
                cols["embedding"].append(vector)
                cols["input_file"].append(file)
                cols["input_text"].append(text)
                cols["content_hash"].append(digest)
                cols["attributes"].append(attributes)
                cols["row_number"].append(item)
        return cols

    def queries(self) -> List[List[float]]:
        """QUERIES vectors: new sentences, corpus sentences with a word changed, noisy pictures, shifted tones."""
        rng = np.random.default_rng(self.seed + 10_000)
        out = [self.text(t) for t in self.sentences(rng, 60)]
        for text in rng.choice(self.texts, 20, replace=False):
            words = text.split()
            words[int(rng.integers(0, len(words)))] = self.words[int(rng.integers(0, len(self.words)))]
            out.append(self.text(" ".join(words)))
        for i in rng.choice(len(self.images), 10, replace=False):
            noisy = np.clip(self.images[i] + rng.normal(0, 20, self.images[i].shape), 0, 255).astype(np.uint8)
            out.append(self.image(noisy))
        for i in rng.choice(len(self.tones), 10, replace=False):
            a, b, c, b_amp, c_amp = self.tones[i]
            out.append(self.tone((a * 1.02, b * 0.98, c, b_amp * 1.1, c_amp * 0.9))[int(rng.integers(0, 2))][2])
        return out


def _table(cols: Dict[str, list], run_id: str, run_time: datetime.datetime):
    import pyarrow as pa

    from transforms.stages.write import segment_schema

    schema = segment_schema(DIMS)
    n = len(cols["id"])
    flat = np.asarray(cols["embedding"], dtype=np.float32)
    arrays = {name: cols.get(name) for name in schema.names}
    arrays.update(model_name=[MODEL] * n, embedding_option=[None] * n, embedding_scope=[None] * n,
                  input_url=[None] * n, source=["bench-index.jsonl"] * n, run_id=[run_id] * n,
                  run_time=[run_time] * n)
    columns = [pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), DIMS) if name == "embedding"
               else pa.array(arrays[name], type=schema.field(name).type) for name in schema.names]
    return pa.Table.from_arrays(columns, schema=schema), flat


def write_output(output: str, rows: int, corpus: Corpus):
    """OUTPUT/segments/*.parquet of `rows` rows; returns (vectors, row keys "id#segment_index", modalities)."""
    from transforms.stages.write import segment_schema
    from transforms.store.layout import SEGMENT_DIR, write_parquet_parts

    folder = os.path.join(output, SEGMENT_DIR)
    os.makedirs(folder, exist_ok=True)
    run_id, run_time = "bench-index", datetime.datetime.now(datetime.timezone.utc)
    vectors = np.empty((rows, DIMS), dtype=np.float32)
    keys: List[str] = []
    modalities: List[str] = []
    rng = np.random.default_rng(corpus.seed)
    done, item, file_no = 0, 0, 0
    while done < rows:
        def parts():
            nonlocal done, item
            in_file = 0
            while done < rows and in_file < FILE_ROWS:
                items = max(1, min(BATCH_ROWS, rows - done, FILE_ROWS - in_file) * 10 // 11)
                cols = corpus.batch(item, items, rng)
                item += items
                table, flat = _table(cols, run_id, run_time)
                table = table.slice(0, min(table.num_rows, rows - done))
                vectors[done:done + table.num_rows] = flat[:table.num_rows]
                keys.extend(f"{i}#{s}" for i, s in zip(cols["id"][:table.num_rows],
                                                       cols["segment_index"][:table.num_rows]))
                modalities.extend(cols["modality"][:table.num_rows])
                done += table.num_rows
                in_file += table.num_rows
                yield table

        with open(os.path.join(folder, f"part-{file_no:05d}.parquet"), "wb") as f:
            write_parquet_parts(segment_schema(DIMS), parts(), f)
        file_no += 1
    return vectors, keys, np.array(modalities)


def _segment_batches(output: str):
    import pyarrow.parquet as pq

    from transforms.store.layout import SEGMENT_DIR

    folder = os.path.join(output, SEGMENT_DIR)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".parquet"):
            yield from pq.ParquetFile(os.path.join(folder, name)).iter_batches(batch_size=BATCH_ROWS,
                                                                                 columns=TABLE_COLUMNS)


def table_from_parquet(output: str, uri: str):
    """The LanceDB table of the sink's columns, streamed from OUTPUT/segments a batch at a time."""
    import lancedb
    import pyarrow as pa

    from transforms.stages.write import segment_schema

    full = segment_schema(DIMS)
    schema = pa.schema([full.field(name) for name in TABLE_COLUMNS])
    reader = pa.RecordBatchReader.from_batches(schema, _segment_batches(output))
    return lancedb.connect(uri).create_table("segments", data=reader, schema=schema, mode="overwrite")


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def exact_top(vectors: np.ndarray, queries: np.ndarray, mask: Optional[np.ndarray] = None):
    """The exact top K of each query (cosine; vectors are unit), optionally among `mask` rows: (row numbers
    best first, the score of every row) per query."""
    scores = np.empty((len(queries), len(vectors)), dtype=np.float32)
    for start in range(0, len(vectors), 65536):
        chunk = vectors[start:start + 65536]
        scores[:, start:start + len(chunk)] = queries @ chunk.T / np.linalg.norm(chunk, axis=1)
    if mask is not None:
        scores[:, ~mask] = -np.inf
    top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    return [(row[np.argsort(-scores[i, row])], scores[i]) for i, row in enumerate(top)]


def _keys(result) -> List[str]:
    return [f"{i}#{s}" for i, s in zip(result.column("id").to_pylist(), result.column("segment_index").to_pylist())]


def _timed(fn, queries) -> Tuple[list, List[float]]:
    answers, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        answers.append(fn(q))
        times.append(time.perf_counter() - t0)
    return answers, times


def _recall(answers: List[List[str]], truth, rows: Dict[str, int]) -> float:
    """Mean recall@K; an answer counts when its exact score reaches the K-th best one (less 1e-6), so rows tied
    with the K-th (the emulator gives some nearly equal vectors) count as found."""
    found = []
    for answer, (top, scores) in zip(answers, truth):
        kth = scores[top[-1]] - 1e-6
        found.append(min(K, sum(1 for key in answer if key in rows and scores[rows[key]] >= kth)) / K)
    return float(np.mean(found))


def measure(table, queries: np.ndarray, truth, keys, where: Optional[str] = None, **params) -> dict:
    from transforms.store.ann import ann_query

    answers, times = _timed(lambda q: _keys(ann_query(table, q, K, where, columns=["id", "segment_index"],
                                                      **params)), queries)
    return {"recall": _recall(answers, truth, keys), "median_ms": 1000 * statistics.median(times),
            "counts_ok": all(len(a) == K for a in answers)}


def _sweep(index_type: str) -> List[dict]:
    if "HNSW" in index_type:
        return [{"ef": ef} for ef in (50, 100, 200, 400)]
    return [{"nprobes": n, "refine_factor": r} for n in (10, 20, 40) for r in (0, 2, 10)]


def run_index(rows: int, workdir: str, index_types: Sequence[str] = (), keep: bool = False) -> dict:
    """The scenario; returns its numbers. `index_types`: other types to measure first (each built in turn)."""
    from pipeline.search import nearest
    from transforms.store import ann

    output = os.path.join(workdir, f"index-{rows}")
    shutil.rmtree(output, ignore_errors=True)
    res: Dict[str, object] = {"rows": rows, "cores": os.cpu_count()}
    corpus = Corpus()
    t0 = time.perf_counter()
    vectors, keys, modality = write_output(output, rows, corpus)
    keys = {key: i for i, key in enumerate(keys)}
    res["generate_write_sec"] = time.perf_counter() - t0
    res["parquet_bytes"] = folder_bytes(os.path.join(output, "segments"))
    queries = np.asarray(corpus.queries(), dtype=np.float32)
    print(f"  {rows:,} rows ({np.mean(modality == 'text'):.0%} text, {np.mean(modality == 'image'):.0%} image, "
          f"{np.mean(modality == 'audio'):.0%} audio) generated and written to Parquet in "
          f"{res['generate_write_sec']:.0f} s", flush=True)

    t0 = time.perf_counter()
    truth = exact_top(vectors, queries)
    truth_image = exact_top(vectors, queries, modality == "image")
    res["numpy_exact_sec_per_query"] = (time.perf_counter() - t0) / (2 * len(queries))

    uri = os.path.join(output, "lancedb")
    t0 = time.perf_counter()
    table = table_from_parquet(output, uri)
    res["table_write_sec"] = time.perf_counter() - t0
    res["table_bytes"] = folder_bytes(uri)
    print(f"  LanceDB table written in {res['table_write_sec']:.0f} s", flush=True)

    # Peers: the project's exact scan over the Parquet, and LanceDB's flat search (no index yet).
    peer, peer_t = _timed(lambda q: [f"{r['id']}#{r['segment_index']}" for r in nearest(output, q, K)],
                          queries[:PEER_QUERIES])
    res["nearest_ms"] = 1000 * statistics.median(peer_t)
    res["nearest_recall"] = _recall(peer, truth[:PEER_QUERIES], keys)
    peer_f, peer_ft = _timed(lambda q: [f"{r['id']}#{r['segment_index']}" for r in nearest(output, q, K, "image")],
                             queries[:PEER_FILTERED_QUERIES])
    res["nearest_image_ms"] = 1000 * statistics.median(peer_ft)
    res["nearest_image_recall"] = _recall(peer_f, truth_image[:PEER_FILTERED_QUERIES], keys)
    flat = measure(table, queries[:FLAT_QUERIES], truth[:FLAT_QUERIES], keys)
    flat_f = measure(table, queries[:FLAT_QUERIES], truth_image[:FLAT_QUERIES], keys, FILTER)
    res.update(flat_ms=flat["median_ms"], flat_recall=flat["recall"], flat_image_ms=flat_f["median_ms"],
               flat_image_recall=flat_f["recall"])
    print(f"  exact scans: nearest {res['nearest_ms']:.0f} ms, LanceDB flat {res['flat_ms']:.0f} ms", flush=True)

    saved_min, ann.ANN_MIN_ROWS = ann.ANN_MIN_ROWS, min(ann.ANN_MIN_ROWS, rows)  # --rows below it still indexes
    try:
        alternatives = []
        for index_type in [t for t in index_types if t != ann.INDEX_TYPE] + [ann.INDEX_TYPE]:
            for index in table.list_indices():
                table.drop_index(index.name)
            built = ann.build_or_update_ann(table, DIMS, index_type)
            index_bytes = sum(i.size_bytes or 0 for i in table.list_indices())
            if index_type in index_types:
                for params in _sweep(index_type):
                    m = measure(table, queries, truth, keys, **params)
                    alternatives.append(dict(index_type=index_type, build_sec=built["seconds"],
                                             index_bytes=index_bytes, params=params, **m))
                    print(f"  {index_type:<12} build {built['seconds']:6.1f} s  {params}  recall@10 "
                          f"{m['recall']:.3f}  median {m['median_ms']:.1f} ms", flush=True)
        res["alternatives"] = alternatives
        res["build"] = built
        res["index_bytes"] = index_bytes
        table.optimize(cleanup_older_than=datetime.timedelta(0))  # drops the alternatives' index files
        res["table_indexed_bytes"] = folder_bytes(uri)
        lance = os.path.join(uri, "segments.lance")
        res["table_parts_bytes"] = {name: folder_bytes(os.path.join(lance, name)) for name in sorted(os.listdir(lance))
                                    if os.path.isdir(os.path.join(lance, name))}
        main = measure(table, queries, truth, keys)
        res.update(ann_recall=main["recall"], ann_ms=main["median_ms"])
        filt = measure(table, queries, truth_image, keys, FILTER)
        res.update(ann_image_recall=filt["recall"], ann_image_ms=filt["median_ms"], ann_image_k=filt["counts_ok"])
        scalar = [i for i in table.list_indices() if i.columns == ["modality"]]
        if scalar:  # the filtered query without the scalar index, then with it again
            table.drop_index(scalar[0].name)
            res["ann_image_ms_no_scalar"] = measure(table, queries, truth_image, keys, FILTER)["median_ms"]
            table.create_index("modality", config=ann.scalar_config(ann.SCALAR_INDEXES["modality"]))

        # 1% more rows, then build_or_update_ann again: the new rows must find themselves.
        added = max(1, int(rows * ADDED_FRACTION))
        rng = np.random.default_rng(99)
        cols = corpus.batch(10 * rows, added, rng)
        new, new_vectors = _table(cols, "bench-index-2", datetime.datetime.now(datetime.timezone.utc))
        table.add(new.select(TABLE_COLUMNS))
        probe = new_vectors[:: max(1, len(new_vectors) // 20)][:20]
        probe_keys = [f"{i}#{s}" for i, s in zip(cols["id"], cols["segment_index"])][:: max(1, len(new_vectors) // 20)]
        before = [_keys(ann.ann_query(table, v, 1, columns=["id", "segment_index"]))[0] for v in probe]
        update = ann.build_or_update_ann(table, DIMS)
        after = [_keys(ann.ann_query(table, v, 1, columns=["id", "segment_index"]))[0] for v in probe]
        res["update"] = dict(update, added=new.num_rows,
                             found_before=sum(a == b for a, b in zip(before, probe_keys)),
                             found_after=sum(a == b for a, b in zip(after, probe_keys)), probes=len(probe))
        after_main = measure(table, queries, truth, keys)
        res.update(ann_recall_after_update=after_main["recall"], ann_ms_after_update=after_main["median_ms"])
    finally:
        ann.ANN_MIN_ROWS = saved_min
    res["params"] = {"index_type": ann.INDEX_TYPE, "nprobes": ann.NPROBES, "refine_factor": ann.REFINE_FACTOR,
                     "partition_rows": ann.PARTITION_ROWS, "partitions": max(1, round(rows / ann.PARTITION_ROWS))}
    if not keep:
        shutil.rmtree(output, ignore_errors=True)
    return res


def report(res: dict) -> str:
    mb = 1024 * 1024
    p = res["params"]
    lines = [
        f"== index: {res['rows']:,} segment rows, {DIMS}-d emulator vectors ({MODEL}), {QUERIES} queries, k={K}; "
        f"{res['cores']} cores",
        f"  index {p['index_type']}, {p['partitions']} partitions, nprobes {p['nprobes']}, refine_factor "
        f"{p['refine_factor']}, cosine",
        f"  {'query':<44}{'median ms':>11}{'recall@10':>11}{'/ nearest':>11}",
    ]

    def row(label, ms, recall, peer):
        return f"  {label:<44}{ms:>11.1f}{recall:>11.3f}{ms / peer:>11.4f}"

    lines += [
        row("indexed (ann_query)", res["ann_ms"], res["ann_recall"], res["nearest_ms"]),
        row("LanceDB exact (flat, %d queries)" % FLAT_QUERIES, res["flat_ms"], res["flat_recall"], res["nearest_ms"]),
        row("nearest() over Parquet (%d queries)" % PEER_QUERIES, res["nearest_ms"], res["nearest_recall"],
            res["nearest_ms"]),
        row(f"indexed, where {FILTER}", res["ann_image_ms"], res["ann_image_recall"], res["nearest_image_ms"]),
    ]
    if "ann_image_ms_no_scalar" in res:
        lines.append(f"  {'  same without the modality bitmap index':<44}{res['ann_image_ms_no_scalar']:>11.1f}")
    lines += [
        row("LanceDB exact, filtered", res["flat_image_ms"], res["flat_image_recall"], res["nearest_image_ms"]),
        row("nearest(modality='image') (%d queries)" % PEER_FILTERED_QUERIES, res["nearest_image_ms"],
            res["nearest_image_recall"], res["nearest_image_ms"]),
        f"  filtered answers all of k rows: {res['ann_image_k']}",
        f"  generate + write Parquet {res['generate_write_sec']:.0f} s; Parquet {res['parquet_bytes'] / mb:,.0f} MB",
        f"  LanceDB table write {res['table_write_sec']:.1f} s; table {res['table_bytes'] / mb:,.0f} MB, with "
        f"indexes {res['table_indexed_bytes'] / mb:,.0f} MB (index files {res['index_bytes'] / mb:,.0f} MB)",
        f"  index build (vector + scalar) {res['build']['seconds']:.1f} s",
        "  table folders: " + ", ".join(f"{name} {size / mb:,.0f} MB"
                                        for name, size in res["table_parts_bytes"].items()),
    ]
    u = res["update"]
    lines.append(f"  +{u['added']:,} rows, build_or_update_ann: {u['action']} in {u['seconds']:.1f} s; new rows "
                 f"found first before {u['found_before']}/{u['probes']}, after {u['found_after']}/{u['probes']}; "
                 f"recall@10 after (vs the top 10 before: a new row may rightly enter) "
                 f"{res['ann_recall_after_update']:.3f}, median {res['ann_ms_after_update']:.1f} ms")
    lines.append(f"  ratio indexed / nearest: {res['ann_ms'] / res['nearest_ms']:.4f} (target <= 0.02); "
                 f"indexed / LanceDB flat: {res['ann_ms'] / res['flat_ms']:.3f}")
    if res.get("alternatives"):
        lines.append("  alternatives (same table, same queries):")
        for a in res["alternatives"]:
            lines.append(f"    {a['index_type']:<12} build {a['build_sec']:6.1f} s, index "
                         f"{a['index_bytes'] / mb:6.0f} MB  {json.dumps(a['params']):<38} recall@10 "
                         f"{a['recall']:.3f}  median {a['median_ms']:.1f} ms")
    return "\n".join(lines)
