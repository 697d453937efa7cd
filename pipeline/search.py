"""`python -m pipeline search`: embed a query with the job's client and config, print the nearest rows.

Vectors are streamed from the Parquet pieces a batch at a time, and only the winners' other
columns are read, so a large output is never loaded whole.
"""
from __future__ import annotations

import argparse
import contextlib
import heapq
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow.dataset as ds

from embed_client import EmbedClient
from pipeline.config import EMBEDDED, load_config
from transforms.calling import resolve_api_key
from transforms.sinks import SEGMENT_DIR

__all__ = ["nearest", "search_main"]

_BATCH_ROWS = 8192
_SHOWN_COLUMNS = ["id", "modality", "segment_index", "start_offset_sec", "end_offset_sec", "input_text",
                  "input_url", "input_file"]


def _dataset(output: str) -> ds.Dataset:
    folder = os.path.join(output, SEGMENT_DIR)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".parquet")) \
        if os.path.isdir(folder) else []
    if not files:
        raise SystemExit(f"error: no segment files under {folder}; run the job first")
    return ds.dataset(files, format="parquet")


def nearest(output: str, query: Sequence[float], k: int = 10, modality: Optional[str] = None) -> List[dict]:
    """The k rows of OUTPUT/segments with the highest cosine similarity to `query`."""
    q = np.asarray(query, dtype=np.float32)
    q /= np.linalg.norm(q) or 1.0
    dataset = _dataset(output)
    where = None if modality is None else ds.field("modality") == modality
    best: List[Tuple[float, int, int]] = []  # (score, file index, row in file) min-heap of size k
    for file_index, fragment in enumerate(dataset.get_fragments()):
        offset = 0
        for batch in fragment.to_batches(columns=["embedding"], filter=where, batch_size=_BATCH_ROWS):
            if batch.num_rows == 0:
                continue
            column = batch.column(0)
            dims = column.type.list_size
            vectors = column.values.to_numpy(zero_copy_only=False).reshape(-1, dims)
            if vectors.shape[1] != q.shape[0]:
                raise SystemExit(f"error: the output holds {dims}-dim vectors, the query has {q.shape[0]}: "
                                 "use the model the output was made with")
            norms = np.linalg.norm(vectors, axis=1)
            scores = vectors @ q / np.where(norms == 0, 1.0, norms)
            top = np.argpartition(-scores, min(k, len(scores)) - 1)[:k]
            for row in top:
                entry = (float(scores[row]), file_index, offset + int(row))
                if len(best) < k:
                    heapq.heappush(best, entry)
                elif entry[0] > best[0][0]:
                    heapq.heapreplace(best, entry)
            offset += batch.num_rows
    fragments = list(dataset.get_fragments())
    results = []
    for score, file_index, row in sorted(best, reverse=True):
        table = fragments[file_index].to_table(columns=_SHOWN_COLUMNS, filter=where)
        record = table.slice(row, 1).to_pylist()[0]
        record["score"] = score
        results.append(record)
    return results


def _format(rank: int, record: dict) -> str:
    where = ""
    if record["start_offset_sec"] is not None:
        where = f" [{record['start_offset_sec']:.1f}-{record['end_offset_sec']:.1f} s]"
    source = record["input_text"] or record["input_url"] or record["input_file"] or ""
    if len(source) > 60:
        source = source[:57] + "..."
    return (f"{rank:>3}  {record['score']:.4f}  {record['id']}  {record['modality']}"
            f"#{record['segment_index']}{where}  {source}")


def search_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline search",
        description="Embed a query with the job's config and print the k nearest segments in an output.",
        epilog="examples:\n"
               "  python -m pipeline search --config configs/local.yaml --text 'a dog in a park' -k 5\n"
               "  python -m pipeline search --config configs/local.yaml --image-file samples/media/red.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/local.yaml", help="the config the output was made with")
    parser.add_argument("--output", help="output folder (default: the config's)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image-file")
    query.add_argument("--audio-file")
    parser.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    parser.add_argument("--modality", choices=["text", "image", "audio"], help="only rows of this modality")
    args = parser.parse_args(list(argv))
    config = load_config(args.config)
    output = args.output or config.output
    from pipeline.run import EMULATOR_PLACEHOLDER_KEY, embedded_backend
    from transforms.calling import CallSettings

    with contextlib.ExitStack() as stack:
        base_url = stack.enter_context(embedded_backend(config)) or config.base_url
        settings = CallSettings(base_url=base_url, model=config.model, key_file=config.key_file,
                                placeholder_key=EMULATOR_PLACEHOLDER_KEY if config.base_url == EMBEDDED else None)
        client = stack.enter_context(EmbedClient(api_key=resolve_api_key(settings), base_url=base_url))
        if args.text is not None:
            result, part = client.create(config.model, text=args.text), "text_embedding"
        elif args.image_file is not None:
            result, part = client.create(config.model, image_file=args.image_file), "image_embedding"
        else:
            result, part = client.create(config.model, audio_file=args.audio_file), "audio_embedding"
    embedding = getattr(result, part)
    if embedding.error_message:
        raise SystemExit(f"error: the API could not embed the query: {embedding.error_message}")
    for rank, record in enumerate(nearest(output, embedding.segments[0].float_, args.k, args.modality), 1):
        print(_format(rank, record))
    return 0
