"""transforms.store.ann: the vector index is built past ANN_MIN_ROWS, finds what numpy's exact search finds,
filters before the search, and takes rows added later."""
import json

import numpy as np
import pytest

lancedb = pytest.importorskip("lancedb", reason="lancedb is the `index` extra")
pa = pytest.importorskip("pyarrow")

from transforms.store import ann  # noqa: E402

DIMS = 32
ROWS = 20_000  # more than two Arrow batches of 8,192
MODALITIES = ("text", "image", "audio")


def _rows(rng, count, first=0, centers=None):
    """Unit vectors around 40 centres (clustered like real embeddings), modality by row % 3."""
    labels = rng.integers(0, len(centers), count)
    vectors = centers[labels] + 0.35 * rng.standard_normal((count, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"r{first + i}" for i in range(count)]
    modality = [MODALITIES[(first + i) % 3] for i in range(count)]
    table = pa.table({
        "id": ids, "modality": modality, "segment_index": pa.array([0] * count, pa.int32()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), DIMS),
        "attributes": [json.dumps({"n": first + i}) for i in range(count)],
    })
    return table, vectors, np.array(modality)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "ANN_MIN_ROWS", 10_000)
    monkeypatch.setattr(ann, "PARTITION_ROWS", 1000)  # 20 partitions: nprobes 20 of them would probe all
    monkeypatch.setattr(ann, "NPROBES", 5)
    rng = np.random.default_rng(26)
    centers = rng.standard_normal((40, DIMS)).astype(np.float32)
    table_data, vectors, modality = _rows(rng, ROWS, centers=centers)
    table = lancedb.connect(str(tmp_path / "db")).create_table("segments", table_data)
    return table, vectors, modality, rng, centers


def _exact(vectors, query, k, mask=None):
    scores = vectors @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    return set(f"r{i}" for i in np.argsort(-scores)[:k])


def test_below_min_rows_no_index_and_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "ANN_MIN_ROWS", 100_000)
    rng = np.random.default_rng(1)
    data, vectors, _ = _rows(rng, 2000, centers=rng.standard_normal((5, DIMS)).astype(np.float32))
    table = lancedb.connect(str(tmp_path / "db")).create_table("segments", data)
    assert ann.build_or_update_ann(table, DIMS)["action"] == "none"
    assert ann.vector_index(table) is None
    q = vectors[7]
    got = ann.ann_query(table, q, 10)
    assert set(got.column("id").to_pylist()) == _exact(vectors, q, 10)
    assert "_distance" in got.column_names


def test_build_query_filter_and_update(setup):
    table, vectors, modality, rng, centers = setup
    built = ann.build_or_update_ann(table, DIMS)
    assert built["action"] == "built" and built["rows"] == ROWS
    assert ann.vector_index(table) is not None
    assert ann.build_or_update_ann(table, DIMS)["action"] == "current"

    queries = centers[rng.integers(0, len(centers), 30)] + 0.4 * rng.standard_normal((30, DIMS)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    recalls = []
    for q in queries:
        got = ann.ann_query(table, q, 10, columns=["id"])
        distances = got.column("_distance").to_pylist()
        assert distances == sorted(distances)
        recalls.append(len(set(got.column("id").to_pylist()) & _exact(vectors, q, 10)) / 10)
    assert np.mean(recalls) >= 0.9, recalls

    # A filter is applied before the search: only matching rows, and k of them.
    for q in queries[:5]:
        got = ann.ann_query(table, q, 10, where="modality = 'audio'", columns=["id", "modality"])
        assert got.num_rows == 10
        assert set(got.column("modality").to_pylist()) == {"audio"}
        assert len(set(got.column("id").to_pylist()) & _exact(vectors, q, 10, modality == "audio")) >= 8
    # A narrow filter (one row of 20,000) still finds its row.
    got = ann.ann_query(table, queries[0], 10, where="id = 'r12345'")
    assert got.column("id").to_pylist() == ["r12345"]

    # Rows added later: findable before and after build_or_update_ann folds them into the index.
    added, added_vectors, _ = _rows(rng, 500, first=ROWS, centers=centers)
    table.add(added)
    for v, expected in ((added_vectors[0], f"r{ROWS}"), (added_vectors[321], f"r{ROWS + 321}")):
        assert ann.ann_query(table, v, 1).column("id").to_pylist() == [expected]
    update = ann.build_or_update_ann(table, DIMS)
    assert update["action"] == "optimized" and update["unindexed_rows"] == 500
    assert table.index_stats(ann.vector_index(table).name).num_unindexed_rows == 0
    for i in (0, 123, 499):
        got = ann.ann_query(table, added_vectors[i], 1, columns=["id"])
        assert got.column("id").to_pylist() == [f"r{ROWS + i}"]


def test_many_added_rows_rebuild(setup):
    table, _, _, rng, centers = setup
    assert ann.build_or_update_ann(table, DIMS)["action"] == "built"
    added, added_vectors, _ = _rows(rng, int(ROWS * ann.REBUILD_FRACTION) + 1000, first=ROWS, centers=centers)
    table.add(added)
    update = ann.build_or_update_ann(table, DIMS)
    assert update["action"] == "rebuilt"
    assert table.index_stats(ann.vector_index(table).name).num_unindexed_rows == 0
    assert ann.ann_query(table, added_vectors[5], 1).column("id").to_pylist() == [f"r{ROWS + 5}"]


def test_table_without_filter_columns(tmp_path, monkeypatch):
    """A table lacking a SCALAR_INDEXES column still gets its vector index."""
    monkeypatch.setattr(ann, "ANN_MIN_ROWS", 1000)
    rng = np.random.default_rng(3)
    data, vectors, _ = _rows(rng, 3000, centers=rng.standard_normal((5, DIMS)).astype(np.float32))
    table = lancedb.connect(str(tmp_path / "db")).create_table("segments", data.select(["id", "embedding"]))
    assert ann.build_or_update_ann(table, DIMS)["action"] == "built"
    assert [i.columns for i in table.list_indices()] == [[ann.VECTOR_COLUMN]]
    assert ann.ann_query(table, vectors[42], 1).column("id").to_pylist() == ["r42"]
