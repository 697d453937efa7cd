"""The run summary: what was read, called, written and rejected; printed and saved as OUTPUT/summary.json."""
from __future__ import annotations

import collections
import datetime
import json
import logging
from typing import Dict, List, Optional

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from pipeline.report.html import latency_percentiles, read_calls, write_report
from pipeline.report.status import STATUS_TEXT, exit_code, run_status
from transforms.models import MODEL_DIMS, model
from transforms.progress import NAMESPACE
from transforms.records import MODALITIES, ROUTES
from transforms.settings import limits_in_force
from transforms.store.layout import (
    DEAD_LETTER_DIR,
    DEFERRED_DIR,
    REPORT_FILE,
    RUNS_DIR,
    SEGMENT_DIR,
    SUMMARY_FILE,
    mkdirs,
)

__all__ = ["collect_metrics", "format_summary", "plan_summary",
           "write_summary"]

# OUTPUT/runs/RUN_ID/ keeps each run's summary and call timeline; OUTPUT/summary.json is the latest.

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
        if data is None or not data.count:
            continue
        # One name can come from several steps (the v1, v2 and task calling steps): merge them.
        seen = values.get(dist.key.metric.name) or {"count": 0, "sum": 0, "min": data.min, "max": data.max}
        merged = {"count": seen["count"] + data.count, "sum": seen["sum"] + data.sum,
                  "min": min(seen["min"], data.min), "max": max(seen["max"], data.max)}
        merged["mean"] = merged["sum"] / merged["count"]
        values[dist.key.metric.name] = merged
    return values


def _run_files(folder: str, run_id: str, suffix: str) -> List[str]:
    pattern = FileSystems.join(folder, f"part-{run_id}-*{suffix}")
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:
        return []


def _read_jsonl(paths: List[str]) -> List[dict]:
    records = []
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            records += [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]
    return records


def submitted_summary(config, result, run_id: str) -> dict:
    """--no-wait: the job is submitted; no counts yet. It finalizes its own output as its last step."""
    job_id = getattr(result, "job_id", None)
    return {"run_id": run_id, "status": "submitted", "exit_code": 0, "model": config.model,
            "output": config.output, "job_id": job_id() if callable(job_id) else job_id}


def _dimension(config) -> int:
    return config.embedding_dimension or MODEL_DIMS.get(config.model, 0)


def _api_summary(config, metrics) -> dict:
    """Which API generation the items went to, and why when it was chosen automatically."""
    routes = {r: metrics.get(f"route_{r}", 0) for r in ROUTES}
    why = None
    if config.api_version == "auto" and (routes["v2"] or routes["task"]):
        why = (f"{config.model} is served by Embed API v2 only" if not model(config.model).v1
               else "video is embedded by Embed API v2 only")
    return {"version": config.api_version, "items_by_route": routes, "v2_chosen_because": why}


def plan_summary(config, result, run_id: str, manifests: List[str]) -> dict:
    """--dry-run: what a real run would do, and how long it would take."""
    metrics = collect_metrics(result)
    calls = metrics.get("planned_calls", 0)
    dead = {name.split(".", 1)[1]: n for name, n in metrics.items() if name.startswith("planned_dead_letters.")}
    rpm, rpd = config.requests_per_minute, config.requests_per_day
    minutes = calls / rpm if rpm else None
    limits = limits_in_force(config)
    if limits["per_category"]:
        # Each category's items take its turns (a packed call one turn in each): the slowest category's bound.
        needs = [(metrics.get(f"items_{m}", 0), limits[m]["requests_per_minute"])
                 for m in MODALITIES if m in limits and metrics.get(f"items_{m}", 0)]
        minutes = None if not needs or any(not rate for _, rate in needs) else max(n / rate for n, rate in needs)
    # The daily quota and this run's call budget are different limits: each gets its own estimate.
    days = (-(-calls // rpd) if calls else 0) if rpd else None
    days_by_category = None
    if limits["per_category"]:
        # A daily quota per category (its own requests_per_day, else calls.requests_per_day): each category's
        # items take its turns (a packed call one in each), so the run takes as many days as the slowest needs.
        days_by_category = {m: -(-metrics.get(f"items_{m}", 0) // limits[m]["requests_per_day"])
                            for m in MODALITIES if m in limits and limits[m].get("requests_per_day")
                            and metrics.get(f"items_{m}", 0)}
        days = max(days_by_category.values()) if days_by_category else None
    runs = (-(-calls // max(1, config.max_calls)) if calls else 0) if config.max_calls is not None else None
    plan = {
        "run_id": run_id,
        "dry_run": True,
        "model": config.model,
        "manifests": manifests,
        "rows_read": metrics.get("rows_read", 0),
        "items": {m: metrics.get(f"items_{m}", 0) for m in MODALITIES},
        "calls_by_route": {r: metrics.get(f"planned_calls_{r}", 0) for r in ROUTES},
        "items_already_done": metrics.get("items_already_done", 0),
        "rows_skipped_unread": metrics.get("rows_skipped_unread", 0),
        "items_deduplicated": metrics.get("calls_saved_by_dedup", 0),
        "calls_needed": calls,
        "uploads": metrics.get("planned_uploads", 0),
        "upload_bytes": metrics.get("planned_upload_bytes", 0),
        "items_per_call": round((metrics.get("planned_items_per_call") or {}).get("mean", 0.0), 3),
        "dead_letters_by_reason": dict(sorted(dead.items())),
        "requests_per_minute": rpm,
        "requests_per_day": rpd,
        "limits": limits_in_force(config),
        "minutes_at_rate": None if minutes is None else round(minutes, 1),
        "days_at_daily_quota": days,
        "days_by_category": days_by_category,
        "max_calls": config.max_calls,
        "runs_at_call_budget": runs,
    }
    return plan


def format_plan(plan: dict) -> str:
    items = plan["items"]
    timing = []
    if plan["minutes_at_rate"] is not None and (plan.get("limits") or {}).get("per_category"):
        timing.append(f"{plan['minutes_at_rate']} min at the categories' limits (the slowest category's items)")
    elif plan["minutes_at_rate"] is not None:
        timing.append(f"{plan['minutes_at_rate']} min at {plan['requests_per_minute']:g} calls/min")
    if plan["days_at_daily_quota"] is not None and plan.get("days_by_category"):
        timing.append(f"{plan['days_at_daily_quota']} day(s) at the categories' daily quotas ("
                      + ", ".join(f"{m} {n}" for m, n in plan["days_by_category"].items()) + ")")
    elif plan["days_at_daily_quota"] is not None:
        timing.append(f"{plan['days_at_daily_quota']} day(s) at the daily quota of {plan['requests_per_day']} calls")
    if plan.get("runs_at_call_budget") is not None:
        timing.append(f"{plan['runs_at_call_budget']} run(s) at the budget of {plan['max_calls']} calls a run")
    return "\n".join([
        f"dry run ({plan['model']}): nothing was called",
        f"  rows read        {plan['rows_read']}",
        f"  items            {_items_line(items)}",
        f"  already done     {plan['items_already_done']} items (skipped)",
        f"  deduplicated     {plan['items_deduplicated']} items reuse another item's vectors",
        f"  calls needed     {plan['calls_needed']} ({plan['items_per_call']} items per call; "
        + ", ".join(f"{route} {n}" for route, n in plan["calls_by_route"].items()) + ")",
        f"  uploads          {plan.get('uploads', 0)} files, {plan.get('upload_bytes', 0) / 1e6:.1f} MB to the Assets API "
        "(at most: assets of earlier runs are reused)",
        f"  time             {'; '.join(timing) or 'set calls.requests_per_minute / requests_per_day to estimate'}",
    ] + _limit_lines(plan.get("limits") or {}) + [
        f"  rejected rows    {sum(plan['dead_letters_by_reason'].values())}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in plan["dead_letters_by_reason"].items()) + ")"
           if plan["dead_letters_by_reason"] else ""),
    ])


def dead_letter_keys(output: str) -> set:
    """(source, row, modality, code) of every dead letter the output holds now: what was already reported."""
    try:
        found = FileSystems.match([FileSystems.join(output, DEAD_LETTER_DIR, "*.jsonl")])[0].metadata_list
    except Exception:
        return set()
    return {_letter_key(r) for r in _read_jsonl([m.path for m in found])}


def _letter_key(record: dict) -> tuple:
    return record.get("source"), record.get("row_number"), record.get("modality"), record.get("code")


_ASSET_COUNTS = ("uploaded", "reused", "reuploaded", "resumed", "sessions_restarted", "bytes_uploaded")


def _assets_summary(metrics, deleted: int, delete_refused: int = 0) -> dict:
    """What the Assets API was used for: files uploaded (or reused, re-uploaded when gone), bytes and time; and
    for assets.delete_after_run, assets deleted and those kept because their delete was refused (409) or failed."""
    counts = {name: metrics.get(f"assets_{name}", 0) for name in _ASSET_COUNTS}
    counts["upload_seconds"] = round(metrics.get("assets_upload_msecs", 0) / 1000.0, 3)
    counts["deleted"] = deleted
    counts["delete_refused"] = delete_refused
    return counts


def _assets_line(summary: dict) -> List[str]:
    a = summary.get("assets") or {}
    if not any(a.get(k) for k in ("uploaded", "reused", "reuploaded", "resumed", "deleted")):
        return []
    rate = a["bytes_uploaded"] / 1e6 / a["upload_seconds"] if a.get("upload_seconds") else 0.0
    return [f"  assets           {a['uploaded']} uploaded ({a['bytes_uploaded'] / 1e6:.1f} MB in "
            f"{a['upload_seconds']:.1f} s, {rate:.1f} MB/s), {a['resumed']} resumed, {a['reused']} reused, "
            f"{a['reuploaded']} re-uploaded (gone), {a['sessions_restarted']} sessions restarted (expired), "
            f"{a['deleted']} deleted" + (f", {a['delete_refused']} kept (delete refused or failed)"
                                         if a.get("delete_refused") else "")]


def write_summary(config, result, run_id: str, manifests: List[str], started: datetime.datetime,
                  finished: datetime.datetime, finalized: dict = None, known_failures: set = frozenset(),
                  assets_deleted: int = 0, assets_delete_refused: int = 0, vector_index: Optional[dict] = None) -> dict:
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
    letters = _read_jsonl(dead_files)
    dead_by_code = collections.Counter(r["code"] for r in letters)
    dead_by_kind = collections.Counter(r.get("kind", "permanent") for r in letters)
    new_letters = sum(1 for r in letters if _letter_key(r) not in known_failures)
    deferred_files = _run_files(FileSystems.join(config.output, DEFERRED_DIR), run_id, ".jsonl")
    deferred = _read_jsonl(deferred_files)
    resets = [r["resets_at"] for r in deferred if r.get("resets_at")]
    items_per_call = metrics.get("items_per_call") or {}
    by_reason = collections.Counter(r["reason"] for r in deferred)
    run_dir = FileSystems.join(config.output, RUNS_DIR, run_id)
    timeline, latency = read_calls(run_dir)
    status = run_status(len(deferred), by_reason, sum(dead_by_code.values()), new_letters)
    summary = {
        "run_id": run_id,
        "status": status,
        "exit_code": exit_code(status, getattr(config, "dead_letters_exit_code", None)),
        "model": config.model,
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "seconds": round((finished - started).total_seconds(), 3),
        "manifests": manifests,
        "rows_read": metrics.get("rows_read", 0),
        "items": {m: metrics.get(f"items_{m}", 0) for m in MODALITIES},
        "api": _api_summary(config, metrics),
        "dimension": _dimension(config),
        "tasks": {name: metrics.get(f"tasks_{name}", 0) for name in ("created", "resumed", "recreated", "ready",
                                                                       "failed")},
        "task_polls": metrics.get("task_polls", 0),
        "assets": _assets_summary(metrics, assets_deleted, assets_delete_refused),
        "usage": {"input_tokens": {name.split(".", 1)[1]: n for name, n in sorted(metrics.items())
                                   if name.startswith("usage_tokens.")},
                  "truncated": metrics.get("usage_truncated", 0)},
        "http_429_by_dimension": {name.split(".", 1)[1]: n for name, n in sorted(metrics.items())
                                  if name.startswith("http_429.")},
        "limits": limits_in_force(config),
        "by_category": _by_category(config, metrics, timeline),
        "items_embedded": dict(sorted(embedded.items())),
        "segments_written": segment_rows,
        "calls": metrics.get("calls", 0),
        "items_per_call": round(items_per_call.get("mean", 0.0), 3),
        "retries": metrics.get("retries", 0),
        "http_429": metrics.get("http_429", 0),
        "split_calls": metrics.get("split_calls", 0),
        "call_latency_ms": _call_latency(metrics.get("call_latency_ms") or {}, latency),
        "seconds_throttled": round(metrics.get("throttled_msecs", 0) / 1000.0, 3),
        "seconds_throttled_wall": round(metrics.get("throttled_wall_msecs", 0) / 1000.0, 3),
        "items_already_done": metrics.get("items_already_done", 0),
        "rows_skipped_unread": metrics.get("rows_skipped_unread", 0),
        "items_deduplicated": metrics.get("calls_saved_by_dedup", 0),
        "deferred": len(deferred),
        "deferred_by_reason": dict(sorted(collections.Counter(r["reason"] for r in deferred).items())),
        # Categories whose quota ran out: only their items were deferred, the others went on.
        "quota_spent_categories": {m: n for m, n in sorted(collections.Counter(
            r["modality"] for r in deferred if (r.get("detail") or "").endswith(" quota")).items())},
        "quota_resets_at": max(resets) if resets else None,
        "segment_rows_dropped": (finalized or {}).get("segment_rows_dropped", 0),
        "segment_bytes_rewritten": (finalized or {}).get("segment_bytes_rewritten", 0),
        "pieces_compacted": (finalized or {}).get("pieces_compacted", 0),
        "finalize_seconds": (finalized or {}).get("finalize_seconds", 0.0),
        "vector_index": vector_index,  # the LanceDB table's sync (index.lancedb), or None
        "dead_letters": sum(dead_by_code.values()),
        "dead_letters_by_reason": dict(sorted(dead_by_code.items())),
        "dead_letters_transient": dead_by_kind.get("transient", 0),
        "dead_letters_permanent": dead_by_kind.get("permanent", 0),
        "dead_letters_new": new_letters,
        "dead_letters_carried": metrics.get("dead_letters_carried", 0),
        "output": config.output,
        "segment_files": segment_files,
        "dead_letter_files": dead_files,
        "deferred_files": deferred_files,
    }
    _LOGGER.info("run %s finished", run_id)
    summary["report_file"] = FileSystems.join(config.output, REPORT_FILE)
    text = json.dumps(summary, indent=2).encode("utf-8")
    for folder in (run_dir, config.output):
        mkdirs(folder)
        with FileSystems.create(FileSystems.join(folder, SUMMARY_FILE), compression_type="uncompressed") as f:
            f.write(text)
    summary["summary_file"] = FileSystems.join(config.output, SUMMARY_FILE)
    # After the summaries: runs/index.html lists runs/*/summary.json, this run's included. The report is for
    # people; failing to write it must not change the run's status.
    try:
        write_report(config.output, summary, run_dir, config.requests_per_minute, letters=letters, timeline=timeline)
    except Exception as exc:
        _LOGGER.warning("could not write the run report %s: %s", summary["report_file"], exc, exc_info=True)
    return summary


def _by_category(config, metrics: Dict[str, object], timeline) -> Dict[str, dict]:
    """Per rate-limit category: answers (2xx or 429) that took from it, its 429s, and its calls per minute over
    the calling span as a share of the limit in force (None when no limit was set)."""
    limits = limits_in_force(config)
    span = (timeline[-1][0] - timeline[0][0] + 1) if timeline else 0
    out = {}
    for name in sorted(metrics):
        if not name.startswith("category_calls."):
            continue
        category = name.split(".", 1)[1]
        calls = int(metrics[name])
        limit = (limits.get(category) or limits.get("all") or {}).get("requests_per_minute")
        per_minute = calls * 60.0 / span if span else None
        out[category] = {"calls": calls, "http_429": int(metrics.get(f"category_429.{category}", 0)),
                         "limit_per_minute": limit,
                         "share_of_limit": round(per_minute / limit, 3) if limit and per_minute is not None else None}
    return out


def _limit_lines(limits: dict) -> List[str]:
    """The per-category limits in force (nothing when one limit paces every category)."""
    if not limits.get("per_category"):
        return []

    def one(entry: dict) -> str:
        parts = [f"{entry['requests_per_minute']:g}/min" if entry.get("requests_per_minute") else "learned"]
        if entry.get("requests_per_day"):
            parts.append(f"{entry['requests_per_day']}/day")
        if entry.get("media_minutes_per_hour"):
            parts.append(f"{entry['media_minutes_per_hour']:g} media min/h")
        return " ".join(parts)

    return ["  limits           " + "; ".join(f"{c} {one(e)}" for c, e in limits.items()
                                              if c not in ("per_category", "assets"))]


def _category_lines(summary: dict) -> List[str]:
    rows = summary.get("by_category") or {}
    if not rows or not (summary.get("limits") or {}).get("per_category"):
        return []
    return ["  categories       " + "; ".join(
        f"{c} {r['calls']} calls, {r['http_429']} x 429"
        + (f", {r['share_of_limit']:.0%} of {r['limit_per_minute']:g}/min" if r.get("share_of_limit") is not None
           else "") for c, r in rows.items())]


def _call_latency(distribution: dict, latency: dict) -> dict:
    """p50/p90/p99 from the timeline pieces' histogram; mean, min and max from the Beam distribution (exact, and
    the numbers the runner's UI shows), or from the pieces when the runner reports no metrics."""
    exact = {k: round(distribution[k], 1) for k in ("max", "mean", "min") if k in distribution}
    estimated = latency_percentiles(latency) or {}
    if latency.get("min") is not None:
        estimated["min"] = float(latency["min"])
    merged = dict(estimated, **exact)
    return {k: merged[k] for k in ("p50", "p90", "p99", "max", "mean", "min") if k in merged}


def _items_line(items: dict) -> str:
    return ", ".join(f"{m} {items.get(m, 0)}" for m in MODALITIES if m != "video" or items.get(m))


def _api_lines(summary: dict) -> List[str]:
    api = summary.get("api") or {}
    routes = api.get("items_by_route") or {}
    if not routes.get("v2") and not routes.get("task"):
        return []
    tasks = summary["tasks"]
    lines = [f"  api              v1 {routes.get('v1', 0)} items, v2 {routes.get('v2', 0)} items, async tasks "
             f"{routes.get('task', 0)} items ({summary['dimension']}-d vectors)"
             + (f"; v2 chosen automatically: {api['v2_chosen_because']}" if api.get("v2_chosen_because") else ""),
             f"  tasks            {tasks['created']} created, {tasks['resumed']} resumed from earlier runs, "
             f"{tasks['recreated']} re-created (past retention), {tasks['ready']} ready, {tasks['failed']} failed, "
             f"{summary['task_polls']} polls"] + _assets_line(summary)
    tokens = summary["usage"]["input_tokens"]
    if tokens:
        lines.append("  usage            " + ", ".join(f"{k} {v} tokens" for k, v in tokens.items())
                     + f", {summary['usage']['truncated']} truncated")
    return lines


def _index_lines(summary: dict) -> List[str]:
    index = summary.get("vector_index")
    if not index:
        return []
    if index.get("error"):
        return [f"  index            not synced ({index['error']}); search scans the Parquet until the next run"]
    ann = index.get("ann") or {}
    action = ann.get("action", "none")
    what = {"none": "no ANN index yet (exact search in LanceDB)", "built": "ANN index built",
            "rebuilt": "ANN index rebuilt", "optimized": "new rows added to the ANN index",
            "current": "ANN index current"}.get(action, action)
    if action != "none" and ann.get("index_type"):
        what += f" ({ann['index_type']})"
    return [f"  index            LanceDB {index.get('rows', 0)} rows (+{index.get('rows_added', 0)} "
            f"-{index.get('rows_deleted', 0)}), {what}; {index.get('seconds', 0)} s: {index['uri']}"]


def format_summary(summary: dict) -> str:
    if summary.get("dry_run"):
        return format_plan(summary)
    if summary.get("status") == "submitted":
        return (f"run {summary['run_id']} ({summary['model']}) submitted"
                + (f" as job {summary['job_id']}" if summary.get("job_id") else "")
                + f"; its output {summary['output']} is finalized by the job's last step (--no-wait)")
    items = summary["items"]
    lines = [
        f"run {summary['run_id']} ({summary['model']}) finished in {summary['seconds']:.1f} s",
        f"  rows read        {summary['rows_read']}",
        f"  items            {_items_line(items)}",
    ] + _api_lines(summary) + [
        f"  embedded         {sum(summary['items_embedded'].values())} items, "
        f"{summary['segments_written']} segment rows",
        f"  calls            {summary['calls']} ({summary['items_per_call']} items per call), "
        f"{summary['retries']} retries, {summary['http_429']} x 429, {summary.get('seconds_throttled_wall', 0)} s waiting on the limit "
        f"({summary['seconds_throttled']} thread-s)",
    ] + _category_lines(summary) + [
        f"  skipped          {summary['items_already_done']} already done, {summary['items_deduplicated']} "
        f"deduplicated (reused vectors instead of calls)",
        f"  deferred         {summary['deferred']}"
        + (f" ({', '.join(f'{k} {v}' for k, v in summary['deferred_by_reason'].items())}; quota resets at "
           f"{summary['quota_resets_at'] or 'unknown'}; run again to finish)" if summary["deferred"] else "")
        + ("; quota spent only in " + ", ".join(f"{c} ({n} items)" for c, n in
                                                summary["quota_spent_categories"].items()) + ", the rest went on"
           if summary.get("quota_spent_categories") else ""),
        f"  dead letters     {summary['dead_letters']}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in summary["dead_letters_by_reason"].items()) + ")"
           if summary["dead_letters"] else "")
        + (f"; {summary['dead_letters_transient']} transient (retried next run)"
           if summary.get("dead_letters_transient") else "")
        + (f"; {summary['dead_letters'] - summary['dead_letters_new']} reported by an earlier run"
           + (f" ({summary['dead_letters_carried']} permanent API refusals not re-tried: --retry-dead-letters)"
              if summary.get("dead_letters_carried") else "")
           if summary["dead_letters"] and summary.get("dead_letters_new", summary["dead_letters"]) <
           summary["dead_letters"] else ""),
    ] + _index_lines(summary) + [
        f"  status           {summary['status']} (exit {summary['exit_code']}): {STATUS_TEXT[summary['status']]}",
        f"  output           {summary['output']}",
        f"  summary          {summary.get('summary_file', '')}",
        f"  report           {summary.get('report_file', '')}",
    ]
    return "\n".join(lines)
