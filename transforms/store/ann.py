"""Placeholder until the measured ANN choices land (branch ann): exact search in LanceDB, no index built."""
from __future__ import annotations

from typing import Optional

ANN_MIN_ROWS = 100_000


def build_or_update_ann(table, dims: int, min_rows: Optional[int] = None, changed: bool = True) -> dict:
    return {"action": "none"}


def ann_query(table, vector, k: int, where: Optional[str] = None):
    query = table.search(list(map(float, vector)), vector_column_name="embedding").distance_type("cosine").limit(k)
    if where:
        query = query.where(where, prefilter=True)
    return query.to_arrow()


def describe(table) -> Optional[str]:
    return None
