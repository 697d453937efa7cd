"""The run report: one self-contained HTML page (no scripts, no network) beside the output.

OUTPUT/report.html is the latest run's; each run's is also kept as OUTPUT/runs/RUN_ID/report.html, and
OUTPUT/runs/index.html lists them all (pipeline.report.runs_index)."""
from __future__ import annotations

import bisect
import concurrent.futures
import html
import json
import math
import urllib.parse
from typing import Dict, Iterable, List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems

from pipeline.report.runs_index import write_index
from pipeline.report.status import STATUS_CLASS, STATUS_TEXT, backfill_progress
from transforms.store.layout import CALLS_PATTERN, REPORT_FILE, RUNS_DIR, RUNS_INDEX_FILE

__all__ = ["dead_letter_reasons", "latency_percentiles", "read_calls",
           "read_timeline", "render_report", "write_report"]

_CHART_W, _CHART_H = 760, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 24, 16, 44   # the plot area's margins
_SAMPLES_PER_REASON = 3
_SAMPLE_CHARS = 400                             # of each sample message shown
_READ_THREADS = 16                              # timeline pieces are small: read many at once on object stores

Timeline = List[Tuple[int, int, int]]


def _empty_latency() -> dict:
    return {"hist": {}, "count": 0, "sum": 0, "min": None, "max": None}


def _read_piece(path: str) -> List[dict]:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]


def read_calls(folder: str) -> Tuple[Timeline, dict]:
    """(second, calls, 429s) and the call latency histogram, summed over every worker's timeline pieces.

    The latency is {"hist": {lower edge ms: calls}, "count", "sum", "min", "max"}; pieces written before
    latencies were recorded add nothing to it."""
    try:
        paths = [m.path for m in FileSystems.match([FileSystems.join(folder, CALLS_PATTERN)])[0].metadata_list]
    except Exception:
        paths = []
    seconds: Dict[int, List[int]] = {}
    latency = _empty_latency()
    if not paths:
        return [], latency
    with concurrent.futures.ThreadPoolExecutor(min(_READ_THREADS, len(paths))) as pool:
        pieces = list(pool.map(_read_piece, paths))
    for records in pieces:
        for record in records:
            hist = record.get("latency_ms_hist")
            if hist is not None:
                for edge, n in hist.items():
                    latency["hist"][int(edge)] = latency["hist"].get(int(edge), 0) + n
                stats = record.get("latency_ms") or {}
                latency["count"] += stats.get("count", sum(hist.values()))
                latency["sum"] += stats.get("sum", 0)
                for name, pick in (("min", min), ("max", max)):
                    if stats.get(name) is not None:
                        latency[name] = stats[name] if latency[name] is None else pick(latency[name], stats[name])
                continue
            bucket = seconds.setdefault(record["t"], [0, 0])
            bucket[0] += record["calls"]
            bucket[1] += record["http_429"]
    return [(t, c, r) for t, (c, r) in sorted(seconds.items())], latency


def read_timeline(folder: str) -> Timeline:
    """(second, calls, 429s) summed over every worker's timeline pieces."""
    return read_calls(folder)[0]


def latency_percentiles(latency: dict) -> Optional[Dict[str, float]]:
    """p50, p90, p99, max and mean (ms) of a latency histogram; None when it holds no call.

    A percentile is the nearest-rank sample, placed inside its bucket by linear interpolation and kept within
    the exact min and max: off by at most a bucket's width (1 ms up to 16 ms, then ~9%)."""
    from transforms.stages.timeline import LATENCY_EDGES_MS

    hist = sorted(latency.get("hist", {}).items())
    n = sum(count for _, count in hist)
    if not n:
        return None
    low = latency.get("min") if latency.get("min") is not None else hist[0][0]
    high = latency.get("max") if latency.get("max") is not None else hist[-1][0]
    out: Dict[str, float] = {}
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        rank, seen = max(1, math.ceil(q * n)), 0
        for edge, count in hist:
            if seen + count >= rank:
                i = bisect.bisect_right(LATENCY_EDGES_MS, edge)
                width = LATENCY_EDGES_MS[i] - edge if i < len(LATENCY_EDGES_MS) else max(1, high - edge)
                value = edge + (rank - seen - 0.5) / count * width
                break
            seen += count
        out[name] = round(min(max(value, low), high), 1)
    out["max"] = float(high)
    out["mean"] = round(latency["sum"] / latency["count"], 1) if latency.get("count") \
        else round(sum(e * c for e, c in hist) / n, 1)
    return out


def dead_letter_reasons(letters: Iterable[dict], samples: int = _SAMPLES_PER_REASON) -> Dict[str, dict]:
    """Per reason (code): how many, how many transient / carried from earlier runs, and a few messages."""
    from transforms.records import failure_kind

    reasons: Dict[str, dict] = {}
    for letter in letters:
        code = letter.get("code", "unknown")
        entry = reasons.setdefault(code, {"count": 0, "transient": 0, "carried": 0, "samples": []})
        entry["count"] += 1
        kind = letter.get("kind") or failure_kind(code, letter.get("http_status"))
        entry["transient"] += kind == "transient"
        entry["carried"] += bool(letter.get("carried"))
        message = letter.get("message") or ""
        if len(message) > _SAMPLE_CHARS:  # a proxy's error page, say
            message = message[:_SAMPLE_CHARS] + "\u2026"
        if len(entry["samples"]) < samples and message not in entry["samples"]:
            entry["samples"].append(message)
    return dict(sorted(reasons.items()))


def _esc(value) -> str:
    return html.escape(str(value))


def _num(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _nice_step(span: float, ticks: int, steps: Optional[List[float]] = None) -> float:
    """A round step that cuts `span` into at most about `ticks` parts."""
    raw = max(span, 1e-9) / ticks
    if steps:
        return next((s for s in steps if s >= raw), steps[-1] * math.ceil(raw / steps[-1]))
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


_SECOND_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]


def _seconds_label(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 600 or seconds % 60:
        return f"{seconds} s"
    return f"{seconds // 60} min" if seconds < 7200 else f"{seconds / 3600:g} h"


def _rate_label(value: float) -> str:
    return f"{value:.3g}"


def _chart(timeline: Timeline, limit_per_sec: Optional[float]) -> str:
    if not timeline:
        return "<p>No calls were made in this run.</p>"
    start = timeline[0][0]
    # Fill silent seconds with zeros so the line drops where nothing happened.
    by_second = {t - start: (c, r) for t, c, r in timeline}
    span = timeline[-1][0] - start
    calls = [(s, by_second.get(s, (0, 0))[0]) for s in range(span + 1)]
    limited = [(s, by_second.get(s, (0, 0))[1]) for s in range(span + 1)]
    top = max([c for _, c in calls] + [limit_per_sec or 0]) or 1
    y_step = _nice_step(top * 1.05, 4)
    y_max = y_step * math.ceil(top * 1.05 / y_step)
    x_step = _nice_step(span, 6, _SECOND_STEPS)
    x_max = max(span, 1)
    plot_w, plot_h = _CHART_W - _LEFT - _RIGHT, _CHART_H - _TOP - _BOTTOM
    bottom = _TOP + plot_h
    px = lambda x: _LEFT + x * plot_w / x_max
    py = lambda y: bottom - y * plot_h / y_max

    def polyline(points, color, name):
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        return f'<polyline data-series="{name}" fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>'

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_CHART_W}" height="{_CHART_H}" role="img" '
             f'aria-label="calls per second and 429s per second over the run" font-size="11" fill="#444">',
             f'<rect x="0" y="0" width="{_CHART_W}" height="{_CHART_H}" fill="#fff"/>']
    # y: gridlines and labels in calls/s
    parts.append('<g data-axis="y">')
    for k in range(int(round(y_max / y_step)) + 1):
        value = k * y_step
        y = py(value)
        parts.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_CHART_W - _RIGHT}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text data-tick="{value:g}" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{_rate_label(value)}/s</text>')
    parts.append("</g>")
    # x: ticks and labels in seconds since the first call
    parts.append('<g data-axis="x">')
    k = 0
    while k * x_step <= span or k == 0:
        value = k * x_step
        x = px(value)
        parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" stroke="#999"/>'
                     f'<text data-tick="{value:g}" x="{x:.1f}" y="{bottom + 18}" text-anchor="middle">'
                     f'{_seconds_label(value)}</text>')
        k += 1
    parts.append(f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_CHART_H - 6}" text-anchor="middle">'
                 f'seconds since the first call</text></g>')
    parts.append(f'<line x1="{_LEFT}" y1="{bottom}" x2="{_CHART_W - _RIGHT}" y2="{bottom}" stroke="#999"/>'
                 f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{bottom}" stroke="#999"/>')
    if limit_per_sec:
        y = py(limit_per_sec)
        parts.append(f'<line data-series="limit" x1="{_LEFT}" y1="{y:.1f}" x2="{_CHART_W - _RIGHT}" y2="{y:.1f}" '
                     f'stroke="#888" stroke-dasharray="4 3"/>'
                     f'<text data-series="limit-label" x="{_CHART_W - _RIGHT - 4}" y="{y - 5:.1f}" '
                     f'text-anchor="end" fill="#666">limit {_rate_label(limit_per_sec)}/s</text>')
    parts.append(polyline(calls, "#1f6feb", "calls"))
    parts.append(polyline(limited, "#d1242f", "http_429"))
    parts.append("</svg>")
    legend = ('<p class="legend"><span style="color:#1f6feb">&#9632; calls/s</span> '
              '<span style="color:#d1242f">&#9632; 429s/s</span>'
              + (' <span style="color:#888">- - configured limit</span>' if limit_per_sec else "") + "</p>")
    return "".join(parts) + legend


def _status(summary: dict) -> str:
    status = summary.get("status", "unknown")
    meaning = STATUS_TEXT.get(status, "")
    return (f'<div class="status {STATUS_CLASS.get(status, "warn")}"><b data-key="status">{_esc(status)}</b> '
            f'(exit <span data-key="exit_code">{_esc(summary.get("exit_code", "?"))}</span>): '
            f'<span data-key="status_text">{_esc(meaning)}</span>.</div>')


def _progress(summary: dict) -> str:
    p = backfill_progress(summary)
    total = p["total"] or 1
    bar = "".join(f'<div class="seg {cls}" data-bar="{name}" style="width:{100.0 * p[name] / total:.2f}%" '
                  f'title="{label}: {p[name]}"></div>'
                  for name, cls, label in (("already_done", "before", "done before this run"),
                                           ("embedded", "now", "embedded this run"),
                                           ("failed", "failed", "failed permanently"))
                  if p[name])
    return (f'<h2>Backfill progress</h2><p><b><span data-key="progress.done">{p["done"]}</span> of '
            f'<span data-key="progress.total">{p["total"]}</span> items done '
            f'(<span data-key="progress.percent">{p["percent"]:g}</span>%)</b> over all runs, for this run\'s '
            f'manifests ({_num(summary.get("rows_read", 0))} rows): '
            f'<span data-key="progress.already_done">{p["already_done"]}</span> before this run + '
            f'<span data-key="progress.embedded">{p["embedded"]}</span> this run. '
            f'Remaining <span data-key="progress.remaining">{p["remaining"]}</span> '
            f'({p["deferred"]} deferred + {p["transient"]} transient dead letters; the next run takes them); '
            f'failed <span data-key="progress.failed">{p["failed"]}</span> (permanent dead letters).</p>'
            f'<div class="bar" role="img" aria-label="{p["percent"]:g}% done">{bar}</div>'
            '<p class="legend"><span class="key before"></span> done before this run '
            '<span class="key now"></span> embedded this run <span class="key failed"></span> failed '
            '<span class="key rest"></span> remaining</p>')


def _latency(summary: dict) -> str:
    latency = summary.get("call_latency_ms") or {}
    if latency.get("p50") is None:
        if "mean" not in latency:
            return "<h2>Call latency</h2><p>No call was answered in this run.</p>"
        return (f'<h2>Call latency</h2><p>Mean {_esc(latency["mean"])} ms, max {_esc(latency.get("max"))} ms; no '
                'percentiles (the timeline pieces hold no latency histogram).</p>')
    cells = "".join(f'<tr><th>{label}</th><td data-key="latency.{key}">{_esc(latency.get(key))}</td></tr>'
                    for key, label in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("max", "max"),
                                       ("mean", "mean")))
    return ('<h2>Call latency (ms)</h2><table>' + cells + '</table><p class="legend">Every successful attempt '
            '(task polls included), from sending to the answer; percentiles from a histogram (within ~9%).</p>')


def _dead_letters(summary: dict, letters: Optional[List[dict]]) -> str:
    from transforms.records import failure_kind

    if letters is not None:
        reasons = dead_letter_reasons(letters)
    else:  # no letters at hand: counts only
        reasons = {code: {"count": n, "transient": n if failure_kind(code) == "transient" else 0, "carried": 0,
                          "samples": []} for code, n in summary.get("dead_letters_by_reason", {}).items()}
    if not reasons:
        return "<h2>Dead letters</h2><p>No dead letters.</p>"
    rows = []
    for code, r in reasons.items():
        if r["transient"] == r["count"]:
            kind = "transient: retried by the next run"
        elif not r["transient"]:
            kind = "permanent: fix the rows"
        else:
            kind = f'{r["transient"]} transient, {r["count"] - r["transient"]} permanent'
        if r["carried"]:
            kind += f'; {r["carried"]} carried from an earlier run'
        samples = "".join(f'<li data-sample="{_esc(code)}">{_esc(m)}</li>' for m in r["samples"])
        rows.append(f'<tr><th>{_esc(code)}</th><td data-key="dead.{_esc(code)}">{r["count"]}</td>'
                    f'<td data-key="dead_kind.{_esc(code)}">{_esc(kind)}</td>'
                    f'<td><ul class="samples">{samples}</ul></td></tr>')
    total, new = summary.get("dead_letters", 0), summary.get("dead_letters_new", summary.get("dead_letters", 0))
    line = (f'<p><span data-key="dead_letters_new">{new}</span> new, {total - new} reported by an earlier run '
            f'(<span data-key="dead_letters_carried">{summary.get("dead_letters_carried", 0)}</span> permanent API '
            f'refusals not re-tried: --retry-dead-letters); '
            f'<span data-key="dead_letters_transient">{summary.get("dead_letters_transient", 0)}</span> transient, '
            f'<span data-key="dead_letters_permanent">{summary.get("dead_letters_permanent", 0)}</span> permanent. '
            f'All of them are in dead_letters/ with their rows.</p>')
    return ('<h2>Dead letters by reason</h2>' + line + '<table class="dead"><tr><th>Reason</th><th>Count</th>'
            '<th>Kind</th><th>Examples</th></tr>' + "".join(rows) + '</table>')


def _api(summary: dict) -> str:
    routes = (summary.get("api") or {}).get("items_by_route") or {}
    if not routes.get("v2") and not routes.get("task"):
        return ""
    tasks = summary.get("tasks") or {}
    return (f'<p>API: v1 {routes.get("v1", 0)} items, v2 {routes.get("v2", 0)} items, async tasks '
            f'{routes.get("task", 0)} items; tasks {tasks.get("created", 0)} created, {tasks.get("resumed", 0)} '
            f'resumed, {tasks.get("ready", 0)} ready, {tasks.get("failed", 0)} failed.</p>' + _assets(summary))


def _assets(summary: dict) -> str:
    a = summary.get("assets") or {}
    if not any(a.get(k) for k in ("uploaded", "reused", "reuploaded", "resumed", "deleted")):
        return ""
    return (f'<p>Assets: <span data-key="assets.uploaded">{a.get("uploaded", 0)}</span> uploaded '
            f'(<span data-key="assets.bytes_uploaded">{a.get("bytes_uploaded", 0)}</span> bytes in '
            f'{a.get("upload_seconds", 0):.1f} s), {a.get("resumed", 0)} resumed, '
            f'<span data-key="assets.reused">{a.get("reused", 0)}</span> reused, {a.get("reuploaded", 0)} '
            f'uploaded again (gone), {a.get("sessions_restarted", 0)} sessions restarted (expired), '
            f'<span data-key="assets.deleted">{a.get("deleted", 0)}</span> deleted.</p>')


def _categories(summary: dict) -> str:
    """Per rate-limit category (paced per category only): answers that took from it, its 429s, its share of its
    limit over the calling span; and which categories' quota ran out."""
    rows = summary.get("by_category") or {}
    if not rows or not (summary.get("limits") or {}).get("per_category"):
        return ""
    cells = []
    for category, r in rows.items():
        limit = "-" if r.get("limit_per_minute") is None else f'{r["limit_per_minute"]:g}/min'
        share = "-" if r.get("share_of_limit") is None else f'{r["share_of_limit"]:.0%}'
        key = f"by_category.{_esc(category)}"
        cells.append(f'<tr><th>{_esc(category)}</th><td data-key="{key}.calls">{r["calls"]}</td>'
                     f'<td data-key="{key}.http_429">{r["http_429"]}</td><td>{_esc(limit)}</td>'
                     f'<td data-key="{key}.share_of_limit">{_esc(share)}</td></tr>')
    spent = summary.get("quota_spent_categories") or {}
    note = ("<p class=\"note\">Quota spent only in " + ", ".join(f"{_esc(c)} ({n} items deferred)"
                                                           for c, n in spent.items())
            + "; the other categories went on.</p>") if spent else ""
    return ('<h2>Rate-limit categories</h2><table><tr><th>Category</th><th>Calls</th><th>429s</th><th>Limit</th>'
            '<th>Share of the limit</th></tr>' + "".join(cells) + '</table>' + note)


def render_report(summary: dict, timeline: Timeline, rate_per_minute: Optional[float] = None,
                  letters: Optional[List[dict]] = None, links: Optional[Dict[str, str]] = None) -> str:
    """The page. `letters`: this run's dead-letter records (for samples); `links`: label -> relative href."""
    esc = _esc
    items = summary["items"]
    counts = [
        ("rows_read", "Rows read", summary["rows_read"]),
        ("items.text", "Text items", items["text"]),
        ("items.image", "Image items", items["image"]),
        ("items.audio", "Audio items", items["audio"]),
    ] + ([("items.video", "Video items", items["video"])] if items.get("video") else []) + [
        ("items_embedded", "Items embedded", sum(summary["items_embedded"].values())),
        ("segments_written", "Segment rows written", summary["segments_written"]),
        ("calls", "Calls", summary["calls"]),
        ("items_per_call", "Items per call", summary["items_per_call"]),
        ("retries", "Retries", summary["retries"]),
        ("http_429", "429 answers", summary["http_429"]),
        ("seconds_throttled", "Seconds throttled", summary["seconds_throttled"]),
        ("items_already_done", "Already done (skipped)", summary["items_already_done"]),
        ("items_deduplicated", "Deduplicated", summary["items_deduplicated"]),
        ("deferred", "Deferred to the next run", summary["deferred"]),
        ("dead_letters", "Dead letters", summary["dead_letters"]),
    ]
    rows = "".join(f'<tr><th>{esc(label)}</th><td data-key="{key}">{esc(value)}</td></tr>'
                   for key, label, value in counts)
    deferred_note = ""
    if summary["deferred"]:
        by_reason = ", ".join(f"{k} {v}" for k, v in (summary.get("deferred_by_reason") or {}).items())
        deferred_note = (f'<p class="note">{summary["deferred"]} items were deferred'
                         + (f" ({esc(by_reason)})" if by_reason else "") + '; the quota resets at '
                         f'{esc(summary["quota_resets_at"] or "an unknown time")}. Run the job again to finish.</p>')
    nav = " &middot; ".join(f'<a data-link="{esc(name)}" href="{esc(href)}">{esc(label)}</a>'
                            for name, (label, href) in (links or {}).items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Embedding run {esc(summary['run_id'])}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 3px 14px 3px 0; border-bottom: 1px solid #eee; vertical-align: top; }}
td {{ font-variant-numeric: tabular-nums; }}
nav {{ margin-bottom: 1em; }}
.note {{ background: #fff8c5; padding: 6px 10px; }}
.status {{ padding: 8px 12px; border-radius: 4px; font-size: 15px; }}
.status.ok {{ background: #dafbe1; }} .status.warn {{ background: #fff8c5; }} .status.bad {{ background: #ffebe9; }}
.bar {{ display: flex; width: 600px; height: 16px; background: #ddd; border-radius: 3px; overflow: hidden; }}
.seg {{ height: 100%; }} .before, .key.before {{ background: #2da44e; }} .now, .key.now {{ background: #7ee2a0; }}
.failed, .key.failed {{ background: #d1242f; }} .key.rest {{ background: #ddd; }}
.key {{ display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 10px; }}
.legend {{ color: #555; font-size: 12px; }}
ul.samples {{ margin: 0; padding-left: 1.2em; font-size: 12px; color: #444; }}
</style></head><body>
<nav>{nav}</nav>
<h1>Embedding run <span data-key="run_id">{esc(summary['run_id'])}</span></h1>
{_status(summary)}
<p>Model <b data-key="model">{esc(summary['model'])}</b>, started {esc(summary['started'])},
finished in <span data-key="seconds">{esc(summary['seconds'])}</span> s. Output: {esc(summary['output'])}</p>
{_api(summary)}{deferred_note}
{_progress(summary)}
<h2>Counts</h2><table>{rows}</table>
{_categories(summary)}
{_dead_letters(summary, letters)}
{_latency(summary)}
<h2>Calls per second</h2>{_chart(timeline, rate_per_minute / 60 if rate_per_minute else None)}
</body></html>
"""


def _write(path: str, page: str) -> None:
    with FileSystems.create(path, compression_type="uncompressed") as f:
        f.write(page.encode("utf-8"))


def write_report(output: str, summary: dict, timeline_dir: str, rate_per_minute: Optional[float],
                 letters: Optional[List[dict]] = None, timeline: Optional[Timeline] = None) -> str:
    """Writes OUTPUT/report.html, its copy OUTPUT/runs/RUN_ID/report.html, and OUTPUT/runs/index.html.

    `letters` default to this run's dead-letter files; `timeline` to what `timeline_dir` holds. The index is
    built from runs/*/summary.json, so write this run's summary first."""
    if timeline is None:
        timeline = read_timeline(timeline_dir)
    if letters is None:
        letters = []
        for path in summary.get("dead_letter_files") or []:
            letters += _read_piece(path)
    run = urllib.parse.quote(summary["run_id"])
    kept = render_report(summary, timeline, rate_per_minute, letters,
                         {"index": ("All runs", f"../{RUNS_INDEX_FILE}"), "latest": ("Latest run", f"../../{REPORT_FILE}")})
    _write(FileSystems.join(output, RUNS_DIR, summary["run_id"], REPORT_FILE), kept)
    latest = render_report(summary, timeline, rate_per_minute, letters,
                           {"index": ("All runs", f"{RUNS_DIR}/{RUNS_INDEX_FILE}"),
                            "permalink": ("This run's kept report", f"{RUNS_DIR}/{run}/{REPORT_FILE}")})
    path = FileSystems.join(output, REPORT_FILE)
    _write(path, latest)
    write_index(output, summary)
    return path
