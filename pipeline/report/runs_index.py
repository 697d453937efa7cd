"""OUTPUT/runs/index.html: every run of an output, newest first, each linking to its kept report.

Built from OUTPUT/runs/*/summary.json. The rows are also kept as OUTPUT/runs/index.json, with the size and
time of the summary each came from, so a later run reads only the summaries that are new or changed (one
listing and a few reads, also on object stores with years of daily runs)."""
from __future__ import annotations

import concurrent.futures
import datetime
import html
import json
import logging
import urllib.parse
from typing import Dict, List, Optional

from apache_beam.io.filesystems import FileSystems

from pipeline.report.status import STATUS_CLASS, backfill_progress
from transforms.store.layout import REPORT_FILE, RUNS_DIR, RUNS_INDEX_FILE, SUMMARY_FILE

__all__ = ["INDEX_JSON", "index_rows", "render_index", "write_index"]

_LOGGER = logging.getLogger(__name__)

INDEX_JSON = "index.json"
_READ_THREADS = 16
_INCOMPLETE = "incomplete"


def _row(summary: dict) -> dict:
    progress = backfill_progress(summary)
    return {"run_id": summary["run_id"], "started": summary.get("started"), "seconds": summary.get("seconds"),
            "status": summary.get("status", "unknown"), "exit_code": summary.get("exit_code"),
            "items_embedded": sum((summary.get("items_embedded") or {}).values()),
            "calls": summary.get("calls", 0), "dead_letters": summary.get("dead_letters", 0),
            "dead_letters_new": summary.get("dead_letters_new", summary.get("dead_letters", 0)),
            "deferred": summary.get("deferred", 0), "done": progress["done"], "total": progress["total"]}


def _read_row(path: str) -> Optional[dict]:
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            return _row(json.loads(f.read().decode("utf-8")))
    except Exception as exc:  # one unreadable summary must not hide the others
        _LOGGER.warning("run index: cannot read %s: %s", path, exc)
        return None


def _sort_key(row: dict) -> str:
    """Start time as YYYYmmddTHHMMSS.ffffff (UTC); from the run id when there is no summary."""
    try:
        started = datetime.datetime.fromisoformat(row["started"]).astimezone(datetime.timezone.utc)
        return started.strftime("%Y%m%dT%H%M%S.%f")
    except (TypeError, ValueError, KeyError):
        return row["run_id"][:15] + ".000000"


def index_rows(output: str, current: Optional[dict] = None) -> List[dict]:
    """One row per run folder under OUTPUT/runs/, newest first. `current`: this run's summary (no read)."""
    runs_dir = FileSystems.join(output, RUNS_DIR)
    try:
        listed = FileSystems.match([FileSystems.join(runs_dir, "*", "*")])[0].metadata_list
    except Exception:
        listed = []
    folders: Dict[str, dict] = {}
    for meta in listed:
        folder, name = meta.path.replace("\\", "/").rstrip("/").rsplit("/", 2)[-2:]
        seen = folders.setdefault(folder, {"summary": None, "report": False})
        if name == SUMMARY_FILE:
            seen["summary"] = meta
        elif name == REPORT_FILE:
            seen["report"] = True
    cached = _read_cache(runs_dir)
    rows: Dict[str, dict] = {}
    to_read: Dict[str, str] = {}
    for run_id, seen in folders.items():
        meta = seen["summary"]
        if meta is None:
            rows[run_id] = {"run_id": run_id, "status": _INCOMPLETE}
            continue
        stamp = {"summary_size": meta.size_in_bytes,
                 "summary_mtime": getattr(meta, "last_updated_in_seconds", None)}
        old = cached.get(run_id)
        if current is not None and current.get("run_id") == run_id:
            rows[run_id] = dict(_row(current), **stamp)
        elif old is not None and all(old.get(k) == v for k, v in stamp.items()):
            rows[run_id] = old
        else:
            rows[run_id] = stamp
            to_read[run_id] = meta.path
    if to_read:
        with concurrent.futures.ThreadPoolExecutor(min(_READ_THREADS, len(to_read))) as pool:
            for run_id, row in zip(to_read, pool.map(_read_row, to_read.values())):
                rows[run_id] = dict(row, **rows[run_id]) if row else dict(rows[run_id], run_id=run_id,
                                                                          status="unreadable")
    if current is not None and current["run_id"] not in rows:  # listed late (eventual consistency)
        rows[current["run_id"]] = _row(current)
    for run_id, row in rows.items():
        row["report"] = folders.get(run_id, {}).get("report", False) or (
            current is not None and current.get("run_id") == run_id)
    return sorted(rows.values(), key=lambda r: (_sort_key(r), r["run_id"]), reverse=True)


def _read_cache(runs_dir: str) -> Dict[str, dict]:
    path = FileSystems.join(runs_dir, INDEX_JSON)
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            return {row["run_id"]: row for row in json.loads(f.read().decode("utf-8"))["runs"]}
    except Exception:  # absent (first run), or unreadable: rebuilt from the summaries
        return {}


def render_index(rows: List[dict]) -> str:
    esc = lambda v: html.escape("" if v is None else str(v))
    body = []
    for row in rows:
        run_id = row["run_id"]
        name = esc(run_id)
        if row.get("report"):
            name = f'<a href="{esc(urllib.parse.quote(run_id))}/report.html">{name}</a>'
        if row["status"] in (_INCOMPLETE, "unreadable"):
            note = ("no summary: the run was killed or failed before it finished" if row["status"] == _INCOMPLETE
                    else "its summary.json cannot be read")
            body.append(f'<tr data-run="{esc(run_id)}" class="warn"><td>{name}</td><td></td>'
                        f'<td data-col="status">{esc(row["status"])}</td><td colspan="6">{note}</td></tr>')
            continue
        started = (row.get("started") or "").replace("T", " ")[:19]
        seconds = row.get("seconds")
        cells = [("run", name), ("started", esc(started) + (" UTC" if started else "")),
                 ("status", f'{esc(row["status"])} (exit {esc(row.get("exit_code"))})'),
                 ("progress", f'{esc(row.get("done"))} / {esc(row.get("total"))}'),
                 ("items_embedded", esc(row.get("items_embedded"))), ("calls", esc(row.get("calls"))),
                 ("dead_letters", f'{esc(row.get("dead_letters"))}'
                                  + (f' ({esc(row.get("dead_letters_new"))} new)'
                                     if row.get("dead_letters") and row.get("dead_letters_new") != row.get(
                                         "dead_letters") else "")),
                 ("deferred", esc(row.get("deferred"))),
                 ("seconds", "" if seconds is None else f"{seconds:.0f} s")]
        body.append(f'<tr data-run="{esc(run_id)}" class="{STATUS_CLASS.get(row["status"], "warn")}">'
                    + "".join(f'<td data-col="{col}">{value}</td>' for col, value in cells) + "</tr>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Embedding runs</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: 3px 14px 3px 4px; border-bottom: 1px solid #eee; }}
td {{ font-variant-numeric: tabular-nums; }}
tr.ok td:nth-child(3) {{ background: #dafbe1; }} tr.warn td:nth-child(3) {{ background: #fff8c5; }}
tr.bad td:nth-child(3) {{ background: #ffebe9; }}
</style></head><body>
<nav><a data-link="latest" href="../report.html">Latest run's report</a></nav>
<h1>Embedding runs (<span data-key="runs">{len(rows)}</span>)</h1>
<p>Newest first. Progress: items of that run's manifests done by the end of that run, over all runs.</p>
<table><tr><th>Run</th><th>Started</th><th>Status</th><th>Progress</th><th>Embedded</th><th>Calls</th>
<th>Dead letters</th><th>Deferred</th><th>Took</th></tr>
{"".join(body)}
</table></body></html>
"""


def write_index(output: str, current: Optional[dict] = None) -> str:
    """Writes OUTPUT/runs/index.html (and index.json); returns the page's path."""
    runs_dir = FileSystems.join(output, RUNS_DIR)
    rows = index_rows(output, current)
    with FileSystems.create(FileSystems.join(runs_dir, INDEX_JSON), compression_type="uncompressed") as f:
        f.write(json.dumps({"runs": [r for r in rows if r["status"] != _INCOMPLETE]}, indent=1).encode("utf-8"))
    path = FileSystems.join(runs_dir, RUNS_INDEX_FILE)
    with FileSystems.create(path, compression_type="uncompressed") as f:
        f.write(render_index(rows).encode("utf-8"))
    return path
