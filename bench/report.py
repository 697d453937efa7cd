"""The printed table: one line per arm, then the pipeline's ratios to each peer."""
from __future__ import annotations

from typing import List, Optional

COLUMNS = ("arm", "items", "wall s", "items/s", "calls/s", "calls/item", "of limit", "429s", "CPU s/1k", "RSS MB")


def derive(result: dict, rpm: Optional[float]) -> dict:
    """Rates from an arm's raw numbers and the emulator's counters for that arm."""
    stats = result["emulator"]
    r429 = stats["rate_limited"] + stats["faults"].get("429_burst", 0)
    calls = stats["requests"] - r429  # calls the API answered, i.e. counted against the limit
    items, wall = result["items"], result["wall_sec"]
    result.update(
        calls=calls, http_429=r429,
        items_per_sec=items / wall, calls_per_sec=calls / wall,
        calls_per_item=calls / items if items else None,
        limit_ratio=calls / wall / (rpm / 60.0) if rpm else None,
        cpu_per_1k=result["cpu_sec"] / items * 1000 if items else None)
    return result


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(title: str, rows: List[dict]) -> str:
    lines = [title]
    widths = (28, 7, 7, 8, 8, 10, 8, 5, 9, 7)
    lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths))))
    for r in rows:
        cells = (r["label"], str(r["items"]), _fmt(r["wall_sec"], ".1f"), _fmt(r["items_per_sec"], ".1f"),
                 _fmt(r["calls_per_sec"], ".2f"), _fmt(r["calls_per_item"], ".3f"), _fmt(r["limit_ratio"], ".3f"),
                 str(r["http_429"]), _fmt(r["cpu_per_1k"], ".2f"), _fmt(r["peak_rss_mb"], ".0f"))
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines)


def ratios(ours: dict, peers: List[dict]) -> str:
    lines = [f"  {ours['label']} / peer: items/s ratio, CPU-per-item ratio"]
    for peer in peers:
        speed = ours["items_per_sec"] / peer["items_per_sec"] if peer["items_per_sec"] else float("nan")
        cpu = ours["cpu_per_1k"] / peer["cpu_per_1k"] if peer["cpu_per_1k"] else float("nan")
        lines.append(f"    vs {peer['label']:<24} x{speed:<7.2f} x{cpu:.2f}")
    return "\n".join(lines)


def memory_table(rows: List[dict]) -> str:
    lines = ["  manifest rows   items/s   start RSS MB   peak RSS MB   growth MB"]
    for r in rows:
        lines.append(f"  {r['rows']:>13}  {r['items_per_sec']:>8.1f}  {r['start_rss_mb']:>13.0f}  "
                     f"{r['peak_rss_mb']:>12.0f}  {r['peak_rss_mb'] - r['start_rss_mb']:>10.0f}")
    return "\n".join(lines)
