"""The `categories` scenario (issue 24): the job paced per rate-limit category against an emulator enforcing per-
category limits, each figure a ratio to a peer arm of the same run.

  (a) Marengo 3.5 (v2 only, one input per call; audio and video as async tasks), texts, images, 5 s audio
      and 5 s video in equal shares, four categories at 300/min each, 200 ms latency: embed POSTs per second
      over the calling span against the sum of the four limits (target >= 0.9, no 429), and the same
      manifest with one bucket at 300/min, as before issue 24.
  (b) Marengo 3.0 packed v1, rows of text + image with audio on every 10th, text 600/min, image 600/min,
      audio 60/min: items per second over the calling span, per category, against one bucket at 60/min
      and against the per-category job with packing tied to every category.
  (c) told 1,200/min against a server allowing 900 (sliding 60 s) that states its limit on every answer:
      calls per 10 s from the first answer (target: no 10 s window under half the limit) and 429s.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from bench.emulator import EmulatorProcess
from bench.manifests import _text, _write, text_manifest

__all__ = ["run_categories"]

LATENCY_MS = 200.0
A_RPM, B_TEXT_RPM, B_IMAGE_RPM, B_AUDIO_RPM = 300, 600, 600, 60
C_TOLD_RPM, C_SERVER_RPM = 1200, 900
TASK_READY_AFTER_SEC, TASK_POLL_SEC = 0.3, 0.3
# (default, --full) sizes: (a) items, (b) rows, (c) items.
SIZES = {"a": (200, 800), "b": (60, 300), "c": (1200, 2400)}
MEDIA_SEC = 5.0  # Marengo 3.5 takes audio and video of 4 s and more, as tasks


def _four_kinds(folder: str, items: int) -> str:
    from embed_emulator import synth

    media = os.path.join(folder, "media")
    os.makedirs(media, exist_ok=True)
    path = os.path.join(folder, f"categories-a-{items}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for row in range(items):
            kind = "tiav"[row % 4]
            record: Dict[str, object] = {"id": f"ca-{row}"}
            if kind == "t":
                record["text"] = _text(row)
            elif kind == "i":
                record["image_file"] = _write(media, f"ci{row}.jpg", lambda: synth.jpeg_bytes(128, 128, seed=row))
            elif kind == "a":
                record["audio_file"] = _write(media, f"ca{row}.wav",
                                              lambda: synth.wav_bytes(MEDIA_SEC, 180.0 + row * 0.25, 8000))
            else:
                record["video_file"] = _write(media, f"cv{row}.mp4",
                                              lambda: synth.mp4_bytes(MEDIA_SEC, 64, 64, fps=1, seed=row))
            f.write(json.dumps(record) + "\n")
    return path


def _packed_rows(folder: str, rows: int) -> str:
    from embed_emulator import synth

    media = os.path.join(folder, "media")
    os.makedirs(media, exist_ok=True)
    path = os.path.join(folder, f"categories-b-{rows}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for row in range(rows):
            record: Dict[str, object] = {"id": f"cb-{row}", "text": _text(row),
                                         "image_file": _write(media, f"cbi{row}.jpg",
                                                              lambda: synth.jpeg_bytes(128, 128, seed=10000 + row))}
            if row % 10 == 0:
                record["audio_file"] = _write(media, f"cba{row}.wav",
                                              lambda: synth.wav_bytes(1.0, 300.0 + row * 0.25, 8000))
            f.write(json.dumps(record) + "\n")
    return path


def _posts(result: dict) -> int:
    emu = result["emulator"]
    return emu["calls_ok"] + emu.get("tasks", {}).get("created", 0)


def _row(result: Optional[dict], per: str, limit_per_sec: float) -> Optional[dict]:
    """Rates over the calling span (first answer to the last embed POST answered): start-up, the tail of the
    last tasks and the job's writing are left out, so arms of different lengths compare."""
    if not result:
        return None
    phases = result.get("phases") or {}
    span = phases.get("calls_sec") or result["wall_sec"]
    posts, items = _posts(result), result["items"]
    summary = result.get("summary") or {}
    return {"label": result["label"], "items": items, "posts": posts, "span_sec": span,
            "posts_per_sec": posts / span, "items_per_sec": items / span,
            "of_limit": posts / span / limit_per_sec, "http_429": result["emulator"]["rate_limited"],
            "rate_limited_by": result["emulator"].get("rate_limited_by", {}), "per": per,
            "by_category": summary.get("by_category"), "items_per_call": summary.get("items_per_call"),
            "wall_sec": result["wall_sec"], "load_1m": result.get("load_1m")}


def _print(title: str, rows: List[dict], base: str) -> None:
    print(title)
    print(f"  {'arm':<44}{'items':>6}{'POSTs':>7}{'span s':>8}{'POSTs/s':>9}{'items/s':>9}{'of limit':>9}{'429s':>6}")
    for r in rows:
        print(f"  {r['label']:<44}{r['items']:>6}{r['posts']:>7}{r['span_sec']:>8.1f}{r['posts_per_sec']:>9.2f}"
              f"{r['items_per_sec']:>9.2f}{r['of_limit']:>9.3f}{r['http_429']:>6}")
    ours = rows[0]
    for peer in rows[1:]:
        key = "posts_per_sec" if base == "posts" else "items_per_sec"
        print(f"  ratio: {ours['label']} / {peer['label']}: {ours[key] / peer[key]:.2f}x {base}/s")


def run_categories(bench) -> None:
    full = 1 if bench.full else 0
    results = bench.results.setdefault("categories", [])
    work = bench.workdir
    cats = ("text", "image", "audio", "video")

    # (a) Marengo 3.5, four categories at 300/min each
    items = SIZES["a"][full]
    manifest = _four_kinds(work, items)
    with EmulatorProcess(None, LATENCY_MS, 0.0) as emu:
        emu.configure(task_ready_after_sec=TASK_READY_AFTER_SEC,
                      category_limits={c: {"rpm": A_RPM} for c in cats})
        common = ["--model", "marengo3.5", "--task-poll-sec", str(TASK_POLL_SEC)]
        per = bench.run_arm(emu, "pipeline", manifest, f"per category ({A_RPM}/min each)", A_RPM, None,
                            common + [f"--category-rpm={c}={A_RPM}" for c in cats], sample=True)
        one = bench.run_arm(emu, "pipeline", manifest, f"one bucket ({A_RPM}/min)", A_RPM, None, common, sample=True)
    rows = [r for r in (_row(per, "a", 4 * A_RPM / 60.0), _row(one, "a", 4 * A_RPM / 60.0)) if r]
    results.extend(rows)
    _print(f"== categories (a): marengo3.5, {items} items (text, image, {MEDIA_SEC:g} s audio and video as tasks), "
           f"four categories at {A_RPM}/min, {LATENCY_MS:.0f} ms; 'of limit': over the sum of the four", rows, "posts")

    # (b) Marengo 3.0 packed v1, text 600, image 600, audio 60
    rows_b = SIZES["b"][full]
    manifest = _packed_rows(work, rows_b)
    limits = {"text": {"rpm": B_TEXT_RPM}, "image": {"rpm": B_IMAGE_RPM}, "audio": {"rpm": B_AUDIO_RPM}}
    sum_limits = (B_TEXT_RPM + B_IMAGE_RPM + B_AUDIO_RPM) / 60.0
    with EmulatorProcess(None, LATENCY_MS, 0.0) as emu:
        emu.configure(category_limits=limits)
        rates = [f"--category-rpm=text={B_TEXT_RPM}", f"--category-rpm=image={B_IMAGE_RPM}",
                 f"--category-rpm=audio={B_AUDIO_RPM}"]
        arms = [("per category, packing splits", rates),
                ("per category, packing tied (pack waits)", rates + ["--pack-waits"]),
                (f"one bucket ({B_AUDIO_RPM}/min)", [])]
        found = [_row(bench.run_arm(emu, "pipeline", manifest, label, B_AUDIO_RPM, None,
                                    ["--model", "marengo3.0"] + args, sample=True), "b", sum_limits)
                 for label, args in arms]
    rows = [r for r in found if r]
    results.extend(rows)
    _print(f"== categories (b): marengo3.0 packed v1, {rows_b} rows of text + image, audio on every 10th; text "
           f"{B_TEXT_RPM}/min, image {B_IMAGE_RPM}/min, audio {B_AUDIO_RPM}/min, {LATENCY_MS:.0f} ms", rows, "items")

    # (c) told 1200/min, the server allows 900 and states it on every answer
    items = SIZES["c"][full]
    manifest = text_manifest(work, items)
    with EmulatorProcess(C_SERVER_RPM, LATENCY_MS, 50.0) as emu:
        result = bench.run_arm(emu, "pipeline", manifest, f"told {C_TOLD_RPM}/min, limits on successes",
                               C_TOLD_RPM, None, ["--model", "marengo3.0"], sample=True)
    if result:
        pace = result.get("pace") or {}
        bins = pace.get("bins") or []
        half = C_SERVER_RPM / 6.0 / 2.0  # half the limit, per 10 s
        row = dict(_row(result, "c", C_SERVER_RPM / 60.0), bins_per_10s=bins,
                   min_10s=min(bins) if bins else None, windows_under_half=sum(1 for b in bins if b < half))
        results.append(row)
        print(f"== categories (c): told {C_TOLD_RPM}/min, the server allows {C_SERVER_RPM} (sliding 60 s) and "
              f"states it on every answer; {items} texts, 1 item per call")
        print(f"  calls {row['posts']} in {row['span_sec']:.1f} s: {row['of_limit']:.3f} of the limit, "
              f"{row['http_429']} x 429; calls per 10 s {[round(b) for b in bins]}; smallest "
              f"{row['min_10s']:.0f} (half the limit is {half:.0f}); windows under half: {row['windows_under_half']}")
    print(flush=True)
