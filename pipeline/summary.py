"""The run summary: what was read, called, written and rejected; printed and saved as OUTPUT/summary.json."""
from __future__ import annotations

import collections
import datetime
import json
import logging
from typing import Dict, List

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from transforms.manifests import NAMESPACE
from transforms.sinks import DEAD_LETTER_DIR, SEGMENT_DIR

__all__ = ["collect_metrics", "format_summary", "write_summary"]

_LOGGER = logging.getLogger(__name__)


def collect_metrics(result) -> Dict[str, object]:
    """Committed counters and distributions of our namespace, by name."""
    values: Dict[str, object] = {}
    try:
        queried = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except Exception as exc:  # some runners cannot report metrics
        _LOGGER.warning("metrics are not available from this runner: %s", exc)
        return values
    for counter in queried.get("counters", []):
        name = counter.key.metric.name
        values[name] = values.get(name, 0) + (counter.committed or 0)
    for dist in queried.get("distributions", []):
        data = dist.committed
        if data is not None and data.count:
            values[dist.key.metric.name] = {"count": data.count, "sum": data.sum, "min": data.min, "max": data.max,
                                            "mean": data.sum / data.count}
    return values


def _run_files(folder: str, run_id: str, suffix: str) -> List[str]:
    pattern = FileSystems.join(folder, f"part-{run_id}-*{suffix}")
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:
        return []


def write_summary(config, result, run_id: str, manifests: List[str], started: datetime.datetime,
                  finished: datetime.datetime) -> dict:
    metrics = collect_metrics(result)
    segment_files = _run_files(FileSystems.join(config.output, SEGMENT_DIR), run_id, ".parquet")
    dead_files = _run_files(FileSystems.join(config.output, DEAD_LETTER_DIR), run_id, ".jsonl")
    segment_rows = 0
    embedded = collections.Counter()
    for path in segment_files:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            table = pq.read_table(f, columns=["id", "modality", "segment_index"])
        segment_rows += table.num_rows
        for modality, index in zip(table.column("modality").to_pylist(), table.column("segment_index").to_pylist()):
            if index == 0:
                embedded[modality] += 1
    dead_by_code = collections.Counter()
    for path in dead_files:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            for line in f.read().decode("utf-8").splitlines():
                if line.strip():
                    dead_by_code[json.loads(line)["code"]] += 1
    items_per_call = metrics.get("items_per_call") or {}
    summary = {
        "run_id": run_id,
        "model": config.model,
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "seconds": round((finished - started).total_seconds(), 3),
        "manifests": manifests,
        "rows_read": metrics.get("rows_read", 0),
        "items": {m: metrics.get(f"items_{m}", 0) for m in ("text", "image", "audio")},
        "items_embedded": dict(sorted(embedded.items())),
        "segments_written": segment_rows,
        "calls": metrics.get("calls", 0),
        "items_per_call": round(items_per_call.get("mean", 0.0), 3),
        "retries": metrics.get("retries", 0),
        "http_429": metrics.get("http_429", 0),
        "split_calls": metrics.get("split_calls", 0),
        "seconds_throttled": round(metrics.get("throttled_msecs", 0) / 1000.0, 3),
        "dead_letters": sum(dead_by_code.values()),
        "dead_letters_by_reason": dict(sorted(dead_by_code.items())),
        "output": config.output,
        "segment_files": segment_files,
        "dead_letter_files": dead_files,
    }
    _LOGGER.info("run %s finished", run_id)
    path = FileSystems.join(config.output, "summary.json")
    with FileSystems.create(path, compression_type="uncompressed") as f:
        f.write(json.dumps(summary, indent=2).encode("utf-8"))
    summary["summary_file"] = path
    return summary


def format_summary(summary: dict) -> str:
    items = summary["items"]
    lines = [
        f"run {summary['run_id']} ({summary['model']}) finished in {summary['seconds']:.1f} s",
        f"  rows read        {summary['rows_read']}",
        f"  items            text {items['text']}, image {items['image']}, audio {items['audio']}",
        f"  embedded         {sum(summary['items_embedded'].values())} items, "
        f"{summary['segments_written']} segment rows",
        f"  calls            {summary['calls']} ({summary['items_per_call']} items per call), "
        f"{summary['retries']} retries, {summary['http_429']} x 429, {summary['seconds_throttled']} s throttled",
        f"  dead letters     {summary['dead_letters']}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in summary["dead_letters_by_reason"].items()) + ")"
           if summary["dead_letters"] else ""),
        f"  output           {summary['output']}",
        f"  summary          {summary.get('summary_file', '')}",
    ]
    return "\n".join(lines)
