"""How the LanceDB table of an output's segments gets its ANN index, and how it is queried (issue 26).

The one place for these choices, so the job's sink, `search` and `bench --scenario index` agree:

  ANN_MIN_ROWS          below this many rows no vector index is built: LanceDB's exact (flat) search over the
                        table is fast enough there (see BENCHMARKS.md, "Vector index (issue 26)").
  build_or_update_ann   build the index once the table reaches ANN_MIN_ROWS; later fold the rows added since
                        into it (LanceDB's `optimize()`), or rebuild it when the added rows outnumber
                        REBUILD_FRACTION of the indexed ones (its centroids and codebooks were trained on a
                        table that no longer looks like this one).
  ann_query             the k nearest rows (cosine) with a `_distance` column, through the index when there is
                        one, exact otherwise; a `where` filter is applied before the vector search (prefilter),
                        so a filter never shortens the answer below k while k rows match.

LanceDB searches the rows an index does not cover yet by brute force and merges them into the answer, so a row
added after the index was built is findable before `build_or_update_ann` runs again; only speed suffers.

lancedb is imported lazily: the project imports without the `index` extra.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

__all__ = ["ANN_MIN_ROWS", "INDEX_TYPE", "NPROBES", "REFINE_FACTOR", "REBUILD_FRACTION", "SCALAR_INDEXES",
           "VECTOR_COLUMN", "build_or_update_ann", "ann_query", "describe", "vector_index", "vector_config",
           "scalar_config"]

VECTOR_COLUMN = "embedding"
METRIC = "cosine"
# Below this size the exact search is fast enough: LanceDB's flat search costs about 1.5 us a row of 512-d on
# 2 cores (1.45 s at 1,000,000 rows, 0.26 s at 200,000, 36 ms at 20,000), so about 0.15 s here, and
# a small output pays no index build (IVF_SQ: about 30 s per 1,000,000 rows) nor its disk (a quarter more).
ANN_MIN_ROWS = 100_000
# IVF_SQ: partitions of about PARTITION_ROWS rows (LanceDB's default target for IVF), every vector kept as 8-bit
# scalars (a quarter of its float32 bytes); a query scans the codes of NPROBES partitions, then re-ranks the
# REFINE_FACTOR * k best candidates on their full float32 vectors, so the distances returned are exact.
# Measured on emulator vectors (bench --scenario index, BENCHMARKS.md "Vector index (issue 26)", 2 cores): at
# 1,000,000 rows IVF_SQ built in 32 s (491 MB), recall@10 0.982 without re-ranking and 1.000 with refine 2, about
# 75-90 ms a query (nearest() over the Parquet: 9.7 s); IVF_RQ built in 26 s (75 MB) and answered in about 30 ms
# but needed refine 10 for 0.962; at 200,000 rows IVF_PQ (dims/16 sub-vectors) built 9x slower than IVF_SQ and
# reached 0.774 even with refine 10 (the emulator's vectors crowd together, PQ codes blur them), and
# IVF_HNSW_SQ built 23x slower and reached 0.971 at ef 400. Recall and time hardly moved with nprobes 10-40 on
# these vectors; 20 (LanceDB's default) keeps a margin for outputs that spread more.
INDEX_TYPE = "IVF_SQ"
PARTITION_ROWS = 8192
NPROBES = 20
REFINE_FACTOR = 2
# HNSW's candidate list, used only when INDEX_TYPE is an HNSW one.
EF = 100
# A full rebuild when the rows added since the index was built exceed this fraction of the indexed rows.
REBUILD_FRACTION = 0.5
# Scalar indexes built beside the vector index: columns and their LanceDB index kind. A bitmap on modality took
# the filtered query (where modality = 'image', 9% of the rows) from 95 to 36 ms at 1,000,000 rows.
SCALAR_INDEXES = {"modality": "BITMAP"}
INDEX_NAME = VECTOR_COLUMN + "_idx"


def vector_config(rows: int, dims: int, index_type: str = INDEX_TYPE):
    """The LanceDB index config of `index_type` for a table of `rows` rows of `dims`-d vectors."""
    from lancedb.index import HnswPq, HnswSq, IvfFlat, IvfPq, IvfRq, IvfSq

    partitions = max(1, round(rows / PARTITION_ROWS))
    if index_type == "IVF_PQ":
        return IvfPq(distance_type=METRIC, num_partitions=partitions, num_sub_vectors=max(1, dims // 16))
    if index_type == "IVF_SQ":
        return IvfSq(distance_type=METRIC, num_partitions=partitions)
    if index_type == "IVF_RQ":
        return IvfRq(distance_type=METRIC, num_partitions=partitions)
    if index_type == "IVF_FLAT":
        return IvfFlat(distance_type=METRIC, num_partitions=partitions)
    # HNSW inside each IVF partition: few, large partitions (LanceDB's default target is 1M rows).
    hnsw_partitions = max(1, round(rows / 1_048_576))
    if index_type == "IVF_HNSW_SQ":
        return HnswSq(distance_type=METRIC, num_partitions=hnsw_partitions)
    if index_type == "IVF_HNSW_PQ":
        return HnswPq(distance_type=METRIC, num_partitions=hnsw_partitions)
    raise ValueError(f"unknown index type {index_type!r}")


def vector_index(table):
    """The IndexConfig of the vector index on VECTOR_COLUMN, or None."""
    for index in table.list_indices():
        kind = str(index.index_type).upper()  # "IvfPq", "IvfHnswSq", ... (scalar ones: "BTree", "Bitmap")
        if list(index.columns) == [VECTOR_COLUMN] and (kind.startswith("IVF") or "HNSW" in kind):
            return index
    return None


def _create(table, rows: int, dims: int, index_type: str) -> None:
    table.create_index(VECTOR_COLUMN, config=vector_config(rows, dims, index_type), replace=True, name=INDEX_NAME)
    indexed = {tuple(index.columns) for index in table.list_indices()}
    for column, kind in SCALAR_INDEXES.items():
        if column in table.schema.names and (column,) not in indexed:
            table.create_index(column, config=scalar_config(kind), replace=True)


def scalar_config(kind: str):
    """LanceDB's config of a scalar index kind: "BITMAP" (few distinct values) or "BTREE"."""
    from lancedb.index import Bitmap, BTree

    return {"BITMAP": Bitmap, "BTREE": BTree}[kind]()


def build_or_update_ann(table, dims: int, index_type: str = INDEX_TYPE, min_rows: Optional[int] = None,
                        cleanup_older_than=None) -> dict:
    """Build, refresh or leave the table's vector index; returns {"action", "rows", "seconds", ...}.

    action: "none" (fewer than ANN_MIN_ROWS rows and no index: exact search serves), "built" (first index,
    plus the SCALAR_INDEXES), "current" (the index covers every row), "optimized" (`table.optimize()` added
    the new rows to the existing indexes, without retraining; it also compacts small fragments), "rebuilt"
    (the new rows exceed REBUILD_FRACTION of the indexed ones: trained again on the whole table)."""
    started = time.perf_counter()
    rows = table.count_rows()
    existing = vector_index(table)
    result = {"rows": rows, "index_type": index_type}
    if existing is None:
        if rows < (ANN_MIN_ROWS if min_rows is None else min_rows):
            return dict(result, action="none", seconds=time.perf_counter() - started)
        _create(table, rows, dims, index_type)
        return dict(result, action="built", seconds=time.perf_counter() - started)
    stats = table.index_stats(existing.name)
    indexed, unindexed = stats.num_indexed_rows, stats.num_unindexed_rows
    result.update(index_type=stats.index_type, indexed_rows=indexed, unindexed_rows=unindexed)
    if unindexed == 0:
        return dict(result, action="current", seconds=time.perf_counter() - started)
    if unindexed > REBUILD_FRACTION * indexed:
        _create(table, rows, dims, index_type)
        table.optimize(cleanup_older_than=cleanup_older_than)  # the scalar indexes take the new rows too
        return dict(result, action="rebuilt", seconds=time.perf_counter() - started)
    table.optimize(cleanup_older_than=cleanup_older_than)
    return dict(result, action="optimized", seconds=time.perf_counter() - started)


def ann_query(table, vector: Sequence[float], k: int = 10, where: Optional[str] = None,
              columns: Optional[Sequence[str]] = None, nprobes: Optional[int] = None,
              refine_factor: Optional[int] = None, ef: Optional[int] = None):
    """The k rows nearest `vector` by cosine distance, nearest first, as a pyarrow Table with `_distance`.

    Through the vector index when the table has one (NPROBES / REFINE_FACTOR / EF unless given), exact
    otherwise. `where` (an SQL filter such as "modality = 'text'") selects the rows before the vector search,
    so k rows come back whenever k rows match. `columns`: only these columns (and `_distance`)."""
    query = table.search(list(map(float, vector)), vector_column_name=VECTOR_COLUMN).distance_type(METRIC).limit(k)
    index = vector_index(table)
    if index is None:
        query = query.bypass_vector_index()
    elif "HNSW" in str(index.index_type).upper():
        query = query.ef(max(ef or EF, k))
    else:
        # At least `nprobes` partitions; more (no upper bound) when a filter leaves too few rows in them.
        query = query.minimum_nprobes(nprobes or NPROBES).maximum_nprobes(0)
        factor = REFINE_FACTOR if refine_factor is None else refine_factor
        if factor:
            query = query.refine_factor(factor)
    if where:
        query = query.where(where, prefilter=True)
    if columns is not None:
        query = query.select(list(columns) + ["_distance"])
    return query.to_arrow()


def describe(table) -> Optional[str]:
    """The vector index in a few words (search's first line), or None without one."""
    index = vector_index(table)
    if index is None:
        return None
    stats = table.index_stats(index.name)
    return (f"ANN index {stats.index_type} over {stats.num_indexed_rows} rows"
            + (f", {stats.num_unindexed_rows} newer rows searched exactly" if stats.num_unindexed_rows else ""))
