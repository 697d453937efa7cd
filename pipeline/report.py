"""The run report: one self-contained HTML page (no scripts, no network) beside the output."""
from __future__ import annotations

import html
import json
from typing import Dict, List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems

__all__ = ["read_timeline", "render_report", "write_report"]

_CHART_W, _CHART_H, _PAD = 760, 220, 40


def read_timeline(folder: str) -> List[Tuple[int, int, int]]:
    """(second, calls, 429s) summed over every worker's timeline pieces."""
    try:
        paths = [m.path for m in FileSystems.match([FileSystems.join(folder, "calls-*.jsonl")])[0].metadata_list]
    except Exception:
        return []
    seconds: Dict[int, List[int]] = {}
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            for line in f.read().decode("utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    bucket = seconds.setdefault(record["t"], [0, 0])
                    bucket[0] += record["calls"]
                    bucket[1] += record["http_429"]
    return [(t, c, r) for t, (c, r) in sorted(seconds.items())]


def _polyline(points: List[Tuple[float, float]], x_max: float, y_max: float, color: str, name: str) -> str:
    if not points:
        return ""
    sx = (_CHART_W - 2 * _PAD) / max(x_max, 1)
    sy = (_CHART_H - 2 * _PAD) / max(y_max, 1)
    coords = " ".join(f"{_PAD + x * sx:.1f},{_CHART_H - _PAD - y * sy:.1f}" for x, y in points)
    return f'<polyline data-series="{name}" fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>'


def _chart(timeline: List[Tuple[int, int, int]], limit_per_sec: Optional[float]) -> str:
    if not timeline:
        return "<p>No calls were made in this run.</p>"
    start = timeline[0][0]
    # Fill silent seconds with zeros so the line drops where nothing happened.
    by_second = {t - start: (c, r) for t, c, r in timeline}
    span = timeline[-1][0] - start
    calls = [(s, by_second.get(s, (0, 0))[0]) for s in range(span + 1)]
    limited = [(s, by_second.get(s, (0, 0))[1]) for s in range(span + 1)]
    y_max = max([c for _, c in calls] + [limit_per_sec or 0]) * 1.1 or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_CHART_W}" height="{_CHART_H}" role="img" '
             f'aria-label="calls per second and 429s per second over the run">',
             f'<rect x="0" y="0" width="{_CHART_W}" height="{_CHART_H}" fill="#fff"/>',
             f'<line x1="{_PAD}" y1="{_CHART_H - _PAD}" x2="{_CHART_W - _PAD}" y2="{_CHART_H - _PAD}" stroke="#999"/>',
             f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_CHART_H - _PAD}" stroke="#999"/>',
             f'<text x="{_PAD}" y="{_CHART_H - 10}" font-size="11">0 s</text>',
             f'<text x="{_CHART_W - _PAD - 30}" y="{_CHART_H - 10}" font-size="11">{span} s</text>',
             f'<text x="4" y="{_PAD}" font-size="11">{y_max:.0f}/s</text>']
    if limit_per_sec:
        y = _CHART_H - _PAD - limit_per_sec * (_CHART_H - 2 * _PAD) / y_max
        parts.append(f'<line data-series="limit" x1="{_PAD}" y1="{y:.1f}" x2="{_CHART_W - _PAD}" y2="{y:.1f}" '
                     f'stroke="#888" stroke-dasharray="4 3"/>')
    parts.append(_polyline(calls, span, y_max, "#1f6feb", "calls"))
    parts.append(_polyline(limited, span, y_max, "#d1242f", "http_429"))
    parts.append("</svg>")
    legend = ('<p class="legend"><span style="color:#1f6feb">&#9632; calls/s</span> '
              '<span style="color:#d1242f">&#9632; 429s/s</span>'
              + (' <span style="color:#888">- - limit</span>' if limit_per_sec else "") + "</p>")
    return "".join(parts) + legend


def render_report(summary: dict, timeline: List[Tuple[int, int, int]],
                  rate_per_minute: Optional[float] = None) -> str:
    esc = lambda v: html.escape(str(v))
    items = summary["items"]
    counts = [
        ("rows_read", "Rows read", summary["rows_read"]),
        ("items.text", "Text items", items["text"]),
        ("items.image", "Image items", items["image"]),
        ("items.audio", "Audio items", items["audio"]),
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
    reasons = "".join(f'<tr><th>{esc(code)}</th><td data-key="dead.{esc(code)}">{n}</td></tr>'
                      for code, n in summary["dead_letters_by_reason"].items()) or \
        '<tr><td colspan="2">No dead letters.</td></tr>'
    deferred_note = ""
    if summary["deferred"]:
        deferred_note = (f'<p class="note">{summary["deferred"]} items were deferred; the quota resets at '
                         f'{esc(summary["quota_resets_at"] or "an unknown time")}. Run the job again to finish.</p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Embedding run {esc(summary['run_id'])}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 3px 14px 3px 0; border-bottom: 1px solid #eee; }}
td {{ font-variant-numeric: tabular-nums; }}
.note {{ background: #fff8c5; padding: 6px 10px; }}
</style></head><body>
<h1>Embedding run <span data-key="run_id">{esc(summary['run_id'])}</span></h1>
<p>Model <b data-key="model">{esc(summary['model'])}</b>, started {esc(summary['started'])},
finished in <span data-key="seconds">{esc(summary['seconds'])}</span> s. Output: {esc(summary['output'])}</p>
{deferred_note}
<h2>Counts</h2><table>{rows}</table>
<h2>Dead letters by reason</h2><table>{reasons}</table>
<h2>Calls per second</h2>{_chart(timeline, rate_per_minute / 60 if rate_per_minute else None)}
</body></html>
"""


def write_report(output: str, summary: dict, timeline_dir: str, rate_per_minute: Optional[float]) -> str:
    page = render_report(summary, read_timeline(timeline_dir), rate_per_minute)
    path = FileSystems.join(output, "report.html")
    with FileSystems.create(path, compression_type="uncompressed") as f:
        f.write(page.encode("utf-8"))
    return path
