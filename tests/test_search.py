"""search past every boundary: several files of more than 8,192 rows, row groups, batch slices."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.search import batch_vectors, nearest
from transforms.stages.write import segment_schema
from transforms.store.layout import SEGMENT_DIR

DIMS = 16
ROWS_PER_FILE = 20_000          # > 2 x 8,192: three batches per file, the last two slices
ROW_GROUP = 12_000              # a row group boundary inside the second batch


def _write_output(root, files=3, seed=7):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, SEGMENT_DIR)
    os.makedirs(folder)
    schema = segment_schema(DIMS)
    all_ids, all_modalities, all_vectors = [], [], []
    for f in range(files):
        vectors = rng.standard_normal((ROWS_PER_FILE, DIMS)).astype(np.float32)
        ids = [f"f{f}-r{r}" for r in range(ROWS_PER_FILE)]
        modalities = ["text" if r % 3 else "image" for r in range(ROWS_PER_FILE)]
        n = ROWS_PER_FILE
        columns = {name: pa.nulls(n, type=schema.field(name).type) for name in schema.names}
        columns.update(
            id=pa.array(ids), modality=pa.array(modalities), model_name=pa.array(["marengo3.0"] * n),
            segment_index=pa.array(np.zeros(n, dtype=np.int32)),
            embedding=pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIMS))
        table = pa.table([columns[name] for name in schema.names], schema=schema)
        pq.write_table(table, os.path.join(folder, f"part-{f:03d}.parquet"), row_group_size=ROW_GROUP)
        all_ids += ids
        all_modalities += modalities
        all_vectors.append(vectors)
    return np.array(all_ids), np.array(all_modalities), np.concatenate(all_vectors)


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("search-out"))
    return root, *_write_output(root)


def _brute_force(vectors, query, k, mask=None):
    norms = np.linalg.norm(vectors, axis=1)
    scores = vectors @ (query / np.linalg.norm(query)) / norms
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    return np.argsort(-scores)[:k], scores


def test_a_stored_rows_own_vector_finds_that_row_first_in_every_batch_of_every_file(output):
    root, ids, _, vectors = output
    # rows in the first, a sliced (offset) and the last batch of each file, and across a row group boundary
    for row in (0, 8191, 8192, 11_999, 12_000, 16_385, 19_999, ROWS_PER_FILE + 9000, 2 * ROWS_PER_FILE + 17_000):
        (top,) = nearest(root, vectors[row], k=1)
        assert top["id"] == ids[row]
        assert top["score"] == pytest.approx(1.0, abs=1e-5)


def test_top_k_equals_a_brute_force_scan(output):
    root, ids, _, vectors = output
    rng = np.random.default_rng(1)
    for _ in range(3):
        query = rng.standard_normal(DIMS).astype(np.float32)
        expected, scores = _brute_force(vectors, query, 25)
        found = nearest(root, query, k=25)
        assert [r["id"] for r in found] == list(ids[expected])
        assert [r["score"] for r in found] == pytest.approx(list(scores[expected]), abs=1e-5)


def test_a_modality_filter_keeps_row_numbers_of_the_whole_file(output):
    root, ids, modalities, vectors = output
    query = vectors[ROWS_PER_FILE + 9001]  # a text row in a sliced batch of the second file
    expected, _ = _brute_force(vectors, query, 10, mask=modalities == "image")
    found = nearest(root, query, k=10, modality="image")
    assert [r["id"] for r in found] == list(ids[expected])
    assert {r["modality"] for r in found} == {"image"}


def test_batch_vectors_honours_a_slice_offset():
    column = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(40, dtype=np.float32)), 4)
    assert batch_vectors(column.slice(3, 2)).tolist() == [[12, 13, 14, 15], [16, 17, 18, 19]]


def test_no_output_is_one_clear_error(tmp_path):
    from pipeline.search import NoSegments

    with pytest.raises(NoSegments, match="no segment files"):
        nearest(str(tmp_path), [1.0] * DIMS)
