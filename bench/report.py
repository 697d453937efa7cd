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


def derive_v2(result: dict, rpm: float) -> dict:
    """The v2 scenario's rates: embed POSTs (sync calls and task creates) and task polls, both counted
    against the limit by the emulator, from its counters for the arm (429s excluded from both)."""
    stats = result["emulator"]
    r429 = stats["rate_limited"] + stats["faults"].get("429_burst", 0)
    polls = stats["tasks"]["polled"]
    calls = stats["requests"] - r429 - polls
    items, wall = result["items"], result["wall_sec"]
    limit = rpm / 60.0
    phases = result.get("phases") or {}
    result.update(
        calls=calls, polls=polls, http_429=r429, requests=calls + polls,
        items_per_sec=items / wall, requests_per_sec=(calls + polls) / wall,
        limit_ratio=(calls + polls) / wall / limit,
        items_per_call=items / calls if calls else None,
        items_per_request=items / (calls + polls) if calls + polls else None,
        active_ratio=phases["active_rate"] / limit if phases else None,
        steady_ratio=phases["steady_rate"] / limit if phases.get("steady_rate") is not None else None,
        cpu_per_1k=result["cpu_sec"] / items * 1000 if items else None)
    return result


V2_COLUMNS = ("arm", "items", "wall s", "items/s", "calls", "polls", "(c+p)/s", "of limit", "429s", "items/call")
V2_PHASE_COLUMNS = ("arm", "start-up s", "calls s", "task wait s", "tail s", "active of limit", "steady",
                    "load 1m", "CPU s/1k", "emu CPU s")


def _row(cells, widths) -> str:
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def v2_table(title: str, rows: List[dict]) -> str:
    """The v2 scenario's table, then where each arm's wall time went (from the emulator's sampled counts)."""
    widths = (24, 6, 7, 8, 6, 6, 8, 8, 5, 10)
    lines = [title, _row(V2_COLUMNS, widths)]
    for r in rows:
        lines.append(_row((r["label"], str(r["items"]), _fmt(r["wall_sec"], ".1f"), _fmt(r["items_per_sec"], ".2f"),
                           str(r["calls"]), str(r["polls"]), _fmt(r["requests_per_sec"], ".2f"),
                           _fmt(r["limit_ratio"], ".3f"), str(r["http_429"]), _fmt(r["items_per_call"], ".2f")),
                          widths))
    widths = (24, 10, 7, 11, 6, 15, 6, 7, 8, 9)
    sample = max([(r.get("phases") or {}).get("sample_sec", 0) for r in rows] or [0])
    lines += [f"  where the wall time went (the emulator's counts sampled every {sample:g} s):",
              _row(V2_PHASE_COLUMNS, widths)]
    for r in rows:
        p = r.get("phases") or {}
        lines.append(_row((r["label"], _fmt(p.get("startup_sec"), ".1f"), _fmt(p.get("calls_sec"), ".1f"),
                           _fmt(p.get("task_wait_sec"), ".1f"), _fmt(p.get("tail_sec"), ".1f"),
                           _fmt(r["active_ratio"], ".3f"), _fmt(r["steady_ratio"], ".3f"),
                           _fmt(r.get("load_1m"), ".2f"), _fmt(r["cpu_per_1k"], ".2f"),
                           _fmt(r.get("emulator_cpu_sec"), ".1f")), widths))
    return "\n".join(lines)


def derive_adaptive(result: dict, rpm: float, steady_after_sec: float = 60.0, episode_gap_sec: float = 2.0) -> dict:
    """The adaptive scenario's numbers: `derive`'s, then from the sampled pace: calls/s over the last 60 s
    of calls (ending at the last answer, so the ~1 s of writing after it is left out) as a fraction of
    the limit, the 10 s counts from `steady_after_sec` after the first answer (the first window filled
    and slid out) with their min/max, and the 429s grouped into episodes (429s less than
    `episode_gap_sec` apart are one episode)."""
    derive(result, rpm)
    pace = result.get("pace") or {}
    limit = rpm / 60.0
    bins = pace.get("bins") or []
    skip = int(steady_after_sec // pace["bin_sec"]) if pace else 0
    steady = bins[skip:]
    episodes: List[list] = []
    for at, n in pace.get("refused_at") or []:
        if episodes and at - episodes[-1][1] <= episode_gap_sec:
            episodes[-1][1], episodes[-1][2] = at, episodes[-1][2] + n
        else:
            episodes.append([at, at, n])
    result.update(
        last_window_ratio=pace["last_window_count"] / pace["last_window_sec"] / limit if pace else None,
        active_ratio=pace["active_rate"] / limit if pace else None,
        steady_bins=steady, steady_min=min(steady) if steady else None, steady_max=max(steady) if steady else None,
        episodes=episodes)
    return result


ADAPTIVE_COLUMNS = ("arm", "items", "wall s", "calls", "calls/s", "of limit", "active", "last 60 s", "429s",
                    "429 episodes", "10 s min/max", "load 1m")


def adaptive_table(title: str, rows: List[dict], rpm: float) -> str:
    """One line per arm, then each arm's calls per 10 s and its 429 episodes (seconds after the first answer)."""
    widths = (30, 6, 7, 6, 8, 8, 7, 9, 5, 12, 12, 7)
    lines = [title, _row(ADAPTIVE_COLUMNS, widths)]
    for r in rows:
        span = "-" if r["steady_min"] is None else f"{r['steady_min']:.0f}/{r['steady_max']:.0f}"
        lines.append(_row((r["label"], str(r["items"]), _fmt(r["wall_sec"], ".1f"), str(r["calls"]),
                           _fmt(r["calls_per_sec"], ".2f"), _fmt(r["limit_ratio"], ".3f"),
                           _fmt(r["active_ratio"], ".3f"), _fmt(r["last_window_ratio"], ".3f"), str(r["http_429"]),
                           str(len(r["episodes"])), span, _fmt(r.get("load_1m"), ".2f")), widths))
    full = rpm / 6.0
    for r in rows:
        pace = r.get("pace") or {}
        bins = " ".join(f"{b:.0f}" for b in pace.get("bins") or [])
        lines.append(f"  {r['label']}: calls per 10 s from the first answer (the limit allows {full:.0f}): {bins}")
        episodes = ", ".join(f"{a:.1f}-{b:.1f} s ({n})" if b > a else f"{a:.1f} s ({n})" for a, b, n in r["episodes"])
        s = r.get("summary") or {}
        lines.append(f"    429s at {episodes or 'none'}; start-up {pace.get('startup_sec', 0):.1f} s, tail "
                     f"{pace.get('tail_sec', 0):.1f} s; job counted {s.get('calls')} calls, {s.get('http_429')} 429s, "
                     f"{s.get('retries')} retries, {s.get('seconds_throttled')} s throttled, "
                     f"{s.get('dead_letters')} dead letters")
    return "\n".join(lines)


def derive_durable(result: dict) -> dict:
    """`derive`'s numbers, plus the span of calls (first to last answer) from the sampled phases: items/s
    over it leaves out start-up and the end (finalize reads every piece the run committed)."""
    derive(result, None)
    phases = result.get("phases") or {}
    result.update(active_sec=phases.get("active_sec"), startup_sec=phases.get("startup_sec"),
                  tail_sec=phases.get("tail_sec"),
                  active_items_per_sec=result["items"] / phases["active_sec"] if phases.get("active_sec") else None)
    return result


DURABLE_COLUMNS = ("arm", "items", "wall s", "items/s", "start-up s", "calls s", "tail s", "calls' items/s",
                   "pieces", "CPU s/1k", "RSS MB", "load 1m")


def durable_table(title: str, rows: List[dict]) -> str:
    """`calls s`: first to last answer; `tail s`: last answer to the arm's end (writing, finalize);
    `pieces`: the most segment pieces seen at once in OUTPUT/segments."""
    widths = (31, 6, 6, 7, 10, 7, 6, 14, 6, 8, 6, 7)
    lines = [title, _row(DURABLE_COLUMNS, widths)]
    for r in rows:
        lines.append(_row((r["label"], str(r["items"]), _fmt(r["wall_sec"], ".1f"), _fmt(r["items_per_sec"], ".1f"),
                           _fmt(r["startup_sec"], ".1f"), _fmt(r["active_sec"], ".1f"), _fmt(r["tail_sec"], ".1f"),
                           _fmt(r["active_items_per_sec"], ".1f"), str(r.get("pieces", "-")),
                           _fmt(r["cpu_per_1k"], ".2f"), _fmt(r["peak_rss_mb"], ".0f"), _fmt(r.get("load_1m"), ".2f")),
                          widths))
    return "\n".join(lines)


def derive_scale(result: dict, summary: dict) -> dict:
    """The scale scenario's numbers: `derive`'s, the time to the first answered call (the arm's start to the
    emulator's first answer, sampled), and finalize's time (timed in the arm) and bytes rewritten (the run's
    OUTPUT/summary.json if it states them, else what finalize returned to the arm)."""
    derive(result, None)
    phases = result.get("phases") or {}
    finalize = result.get("finalize") or {}
    rewritten = summary.get("segment_bytes_rewritten", finalize.get("segment_bytes_rewritten"))
    result.update(first_call_sec=phases.get("startup_sec"), finalize_sec=finalize.get("sec"),
                  finalize_share=finalize["sec"] / result["wall_sec"] if finalize.get("sec") is not None else None,
                  bytes_rewritten=rewritten, job_seconds=summary.get("seconds"))
    return result


SCALE_COLUMNS = ("output rows", "run", "wall s", "first call s", "calls", "of expected", "finalize s", "share",
                 "MB rewritten", "peak RSS MB", "load 1m")


def scale_table(title: str, rows: List[dict]) -> str:
    """`first call s`: the arm's start to the emulator's first request (its own clock, on this machine);
    `calls`: answered by the emulator, against the rows the run adds or changes; `share`: finalize's part of
    the wall time."""
    widths = (11, 15, 7, 12, 6, 11, 10, 6, 12, 11, 7)
    lines = [title, _row(SCALE_COLUMNS, widths)]
    for r in rows:
        mb = None if r["bytes_rewritten"] is None else r["bytes_rewritten"] / 1e6
        lines.append(_row((str(r["rows"]), r["run"], _fmt(r["wall_sec"], ".1f"), _fmt(r["first_call_sec"], ".1f"),
                           str(r["calls"]), f"{r['calls']}/{r['expected_calls']}" + ("" if r["calls"] == r[
                               "expected_calls"] else " !"), _fmt(r["finalize_sec"], ".2f"),
                           _fmt(r["finalize_share"], ".0%"), _fmt(mb, ".1f"), _fmt(r["peak_rss_mb"], ".0f"),
                           _fmt(r.get("load_1m"), ".2f")), widths))
    return "\n".join(lines)


def scale_ratios(rows: List[dict]) -> str:
    """The issue's targets: the largest output against the smallest (each within 1.25x)."""
    by = {(r["rows"], r["run"].split()[0]): r for r in rows}
    sizes = sorted({r["rows"] for r in rows})
    if len(sizes) < 2:
        return "  ratios: need two sizes"
    lo, hi = sizes[0], sizes[-1]
    parts = []

    def ratio(kind: str, key: str) -> Optional[float]:
        a, b = by.get((hi, kind)), by.get((lo, kind))
        return a[key] / b[key] if a and b and a.get(key) is not None and b.get(key) else None

    parts.append(f"  {hi} / {lo} rows (target: each <= 1.25x): fresh run peak RSS "
                 f"x{_fmt(ratio('fresh', 'peak_rss_mb'), '.2f')}; +1% rerun peak RSS "
                 f"x{_fmt(ratio('+1%', 'peak_rss_mb'), '.2f')}, time to first call "
                 f"x{_fmt(ratio('+1%', 'first_call_sec'), '.2f')}, wall x{_fmt(ratio('+1%', 'wall_sec'), '.2f')}")
    edited = next((r for r in rows if r["rows"] == hi and r["run"].endswith("edited")), None)
    if edited and edited.get("bytes_rewritten") is not None:
        parts.append(f"  {edited['run']} on {hi} rows rewrote {edited['bytes_rewritten'] / 1e6:.1f} MB "
                     f"(target: a few MB at 300k)")
    return "\n".join(parts)


_MIB = 1024 * 1024
UPLOAD_COLUMNS = ("arm", "file MB", "upload s", "MB/s", "hash s", "ready s", "asset", "CPU s", "RSS start",
                  "RSS peak", "temp MB", "disk wr MB", "read MB")


def derive_upload(result: dict, label: str) -> dict:
    """An upload arm's row: rates from its timings (upload s: the upload alone, session to last report; hash s:
    the job's sha256 pass before it; ready s: the wait for the asset's processing after it)."""
    up, io = result["upload"], result.get("io") or {}
    result.update(label=label, size=up["size"], upload_sec=up["upload_sec"],
                  mb_per_sec=up["size"] / _MIB / up["upload_sec"], hash_sec=up["hash_sec"],
                  ready_sec=up["ready_wait_sec"], status=up["status"], write_bytes=io.get("write_bytes"),
                  read_bytes=up.get("upload_read_bytes"))
    return result


def upload_table(title: str, rows: List[dict]) -> str:
    widths = (34, 7, 8, 6, 6, 7, 6, 5, 9, 8, 7, 10, 7)
    mb = lambda v: "-" if v is None else f"{v / _MIB:.0f}"  # noqa: E731
    lines = [title, _row(UPLOAD_COLUMNS, widths)]
    for r in rows:
        lines.append(_row((r["label"], mb(r["size"]), f"{r['upload_sec']:.2f}", f"{r['mb_per_sec']:.0f}",
                           f"{r['hash_sec']:.2f}", f"{r['ready_sec']:.2f}", r["status"], f"{r['cpu_sec']:.1f}",
                           f"{r['start_rss_mb']:.0f}",
                           f"{r['peak_rss_mb']:.0f}", mb(r.get("temp_peak")), mb(r["write_bytes"]),
                           mb(r["read_bytes"])), widths))
    return "\n".join(lines)


def upload_ratios(ours: List[dict], sdk: dict) -> str:
    """Each of our rows against the SDK's: upload time (SDK / ours), upload + hash, RSS peak and growth."""
    lines = [f"  ours / {sdk['label']}: speed x (SDK s / our s, upload only; with our hash pass), "
             "RSS peak x, RSS growth x, temp disk"]
    for r in ours:
        growth = (r["peak_rss_mb"] - r["start_rss_mb"]) / max(sdk["peak_rss_mb"] - sdk["start_rss_mb"], 1e-9)
        lines.append(f"    {r['label']:<34} x{sdk['upload_sec'] / r['upload_sec']:.2f} "
                     f"(x{sdk['upload_sec'] / (r['upload_sec'] + r['hash_sec']):.2f})  RSS x"
                     f"{r['peak_rss_mb'] / sdk['peak_rss_mb']:.2f}  growth x{growth:.2f}  temp "
                     f"{(r.get('temp_peak') or 0) / _MIB:.0f} MB vs {(sdk.get('temp_peak') or 0) / _MIB:.0f} MB")
    return "\n".join(lines)


KILL_COLUMNS = ("arm", "file MB", "killed at MB", "left on disk MB", "rerun s", "total sent MB", "excess MB",
                "target MB", "sessions", "within")


def upload_kill_table(title: str, rows: List[dict]) -> str:
    """SIGKILL near half, then a rerun: bytes the emulator accepted over both runs against the file's size;
    target: the file plus one chunk plus the chunks in flight (ours); the SDK has none (it starts over)."""
    widths = (26, 7, 12, 15, 7, 13, 9, 9, 8, 6)
    lines = [title, _row(KILL_COLUMNS, widths)]
    for r in rows:
        excess = r["total_accepted"] - r["size"]
        target = r.get("target_excess")
        lines.append(_row((r["label"], f"{r['size'] / _MIB:.0f}", f"{r['killed_at'] / _MIB:.0f}",
                           f"{r['left_on_disk'] / _MIB:.0f}", f"{r['rerun_sec']:.2f}",
                           f"{r['total_accepted'] / _MIB:.0f}", f"{excess / _MIB:.1f}",
                           "-" if target is None else f"{target / _MIB:.0f}", str(r["sessions"]),
                           "-" if target is None else ("yes" if excess <= target else "NO")), widths))
    return "\n".join(lines)


def derive_objstore(result: dict, rpm: float) -> dict:
    """`derive_durable`'s numbers, plus calls/s over the calls' span against the limit and finalize's time."""
    derive_durable(result)
    active = result.get("active_sec")
    result.update(limit_ratio=result["calls_per_sec"] / (rpm / 60.0),
                  active_calls_per_sec=result["calls"] / active if active else None,
                  finalize_sec=(result.get("finalize") or {}).get("sec", 0.0))
    result["active_limit_ratio"] = (result["active_calls_per_sec"] / (rpm / 60.0)
                                    if result["active_calls_per_sec"] else None)
    return result


OBJSTORE_COLUMNS = ("arm", "items", "wall s", "calls/s", "start-up s", "calls s", "calls' calls/s",
                    "of limit", "finalize s", "CPU s/1k")


def objstore_table(title: str, rows: List[dict]) -> str:
    widths = (26, 6, 7, 8, 10, 8, 14, 8, 10, 9)
    lines = [title, "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(OBJSTORE_COLUMNS, widths)))]
    for r in rows:
        cells = (r["label"], str(r["items"]), _fmt(r["wall_sec"], ".1f"), _fmt(r["calls_per_sec"], ".2f"),
                 _fmt(r.get("startup_sec"), ".1f"), _fmt(r.get("active_sec"), ".1f"),
                 _fmt(r.get("active_calls_per_sec"), ".2f"), _fmt(r.get("active_limit_ratio"), ".3f"),
                 _fmt(r["finalize_sec"], ".2f"), _fmt(r["cpu_per_1k"], ".2f"))
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines)
