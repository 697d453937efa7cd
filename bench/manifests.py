"""Generated manifests and media for the benchmark.

Every text, image and audio is unique, so no arm can win by deduplication or caching, and every
row is valid, so every arm does the same work. Peers expand rows into items with `row_items`,
the same rule the pipeline applies (one item per modality, paths relative to the manifest).
"""
from __future__ import annotations

import http.server
import json
import os
import threading
from typing import Dict, Iterator, List, Optional

# Mixed rows cycle through these modality sets: 4 texts, 4 images and 4 audios per 7 rows, so
# calls can be packed full (one of each) from different rows.
PATTERNS = ("t", "ti", "tia", "ia", "ta", "i", "a")
_WORDS = ("red", "quiet", "harbor", "goal", "storm", "violin", "market", "desert", "engine", "garden",
          "night", "river", "crowd", "glass", "signal", "forest")


def _text(i: int) -> str:
    words = [_WORDS[(i * 7 + k * 3) % len(_WORDS)] for k in range(8)]
    return f"item {i}: " + " ".join(words)


def text_manifest(folder: str, rows: int) -> str:
    """`rows` text-only rows (one item each). Reused when already written."""
    path = os.path.join(folder, f"text-{rows}.jsonl")
    if not os.path.exists(path):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for i in range(rows):
                f.write(json.dumps({"id": f"t{i}", "text": _text(i)}) + "\n")
        os.replace(path + ".tmp", path)
    return path


def edited_manifest(path: str, rows) -> str:
    """A copy of a text manifest with the text of the rows at the given indices changed (their ids kept):
    a rerun on it embeds those rows again and supersedes their saved vectors. Written every time."""
    rows = set(rows)
    edited = path.replace(".jsonl", f".edited{len(rows)}.jsonl")
    with open(path, encoding="utf-8") as src, open(edited + ".tmp", "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i in rows:
                record = json.loads(line)
                record["text"] = "edited " + record["text"]
                line = json.dumps(record) + "\n"
            dst.write(line)
    os.replace(edited + ".tmp", edited)
    return edited


def mixed_manifest(folder: str, items: int) -> str:
    """Rows of text / JPEG 128x128 / 1 s WAV until `items` items; each medium its own file."""
    path = os.path.join(folder, f"mixed-{items}.jsonl")
    if os.path.exists(path):
        return path
    from embed_emulator import synth  # numpy/PIL stay out of the peers' processes

    media = os.path.join(folder, "media")
    os.makedirs(media, exist_ok=True)
    count, row = 0, 0
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        while count < items:
            pattern = PATTERNS[row % len(PATTERNS)][: items - count]
            record: Dict[str, object] = {"id": f"m{row}", "batch": row // 100}
            if "t" in pattern:
                record["text"] = _text(row)
            if "i" in pattern:
                record["image_file"] = _write(media, f"i{row}.jpg", lambda: synth.jpeg_bytes(128, 128, seed=row))
            if "a" in pattern:
                record["audio_file"] = _write(media, f"a{row}.wav",
                                              lambda: synth.wav_bytes(1.0, 180.0 + row * 0.25, 8000))
            f.write(json.dumps(record) + "\n")
            count += len(pattern)
            row += 1
    os.replace(path + ".tmp", path)
    return path


# The v2 scenario's rows, per cycle of 12: the mixed manifest's 7 text/image/audio rows (12 items) with
# short local videos ("v": a sync POST /embed-v2 each) and long videos by URL ("u": an async task each)
# spread between them: 17 items per cycle.
V2_CYCLE = ("t", "v", "ti", "u", "tia", "v", "ia", "ta", "v", "u", "i", "a")
SHORT_VIDEO_SEC, LONG_VIDEO_SEC = 3.0, 12.0
LONG_VIDEO_FPS = 2  # 24 frames: enough for 2-4 segments, cheap for the emulator's task threads to decode


def v2_manifest(folder: str, items: int, url_base: str) -> str:
    """Rows cycling through V2_CYCLE until `items` items. Media files are kept and reused; the manifest is
    written again each time, since the long videos' URLs name `url_base` (a server over `folder`)."""
    from embed_emulator import synth

    media = os.path.join(folder, "media")
    os.makedirs(media, exist_ok=True)
    path = os.path.join(folder, f"v2-{items}.jsonl")
    count, row = 0, 0
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        while count < items:
            kind = V2_CYCLE[row % len(V2_CYCLE)]
            record: Dict[str, object] = {"id": f"v2-{row}", "batch": row // 100}
            if kind == "v":
                record["video_file"] = _write(media, f"v{row}.mp4", lambda: synth.mp4_bytes(
                    SHORT_VIDEO_SEC, 360, 360, fps=4, seed=row))
                added = 1
            elif kind == "u":
                name = _write(media, f"u{row}.mp4", lambda: synth.mp4_bytes(
                    LONG_VIDEO_SEC, 360, 360, fps=LONG_VIDEO_FPS, seed=100000 + row))
                record["video_url"] = f"{url_base}/{name}"
                added = 1
            else:
                kind = kind[: items - count]
                if "t" in kind:
                    record["text"] = _text(row)
                if "i" in kind:
                    record["image_file"] = _write(media, f"i{row}.jpg", lambda: synth.jpeg_bytes(128, 128, seed=row))
                if "a" in kind:
                    record["audio_file"] = _write(media, f"a{row}.wav",
                                                  lambda: synth.wav_bytes(1.0, 180.0 + row * 0.25, 8000))
                added = len(kind)
            f.write(json.dumps(record) + "\n")
            count += added
            row += 1
    os.replace(path + ".tmp", path)
    return path


def v2_counts(path: str) -> Dict[str, int]:
    """Items of a v2 manifest by kind: text/image/audio, local videos, videos by URL."""
    counts = {"text": 0, "image": 0, "audio": 0, "video_file": 0, "video_url": 0}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for key in ("text", "video_file", "video_url"):
                counts[key] += bool(row.get(key))
            for key in ("image", "audio"):
                counts[key] += bool(row.get(f"{key}_file"))
    return counts


class MediaServer:
    """Serves a folder over HTTP on 127.0.0.1 from a thread (the emulator fetches `video_url`s from it)."""

    def __init__(self, folder: str):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), lambda *a, **kw: Quiet(*a, directory=folder, **kw))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> "MediaServer":
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="bench-media", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _write(folder: str, name: str, make) -> str:
    target = os.path.join(folder, name)
    if not os.path.exists(target):
        with open(target, "wb") as f:
            f.write(make())
    return "media/" + name


def head_manifest(path: str, items: int) -> str:
    """The first rows of `path` holding at least `items` items (for the slow sequential peers)."""
    head = path.replace(".jsonl", f".head{items}.jsonl")
    count = 0
    with open(path, encoding="utf-8") as src, open(head, "w", encoding="utf-8") as dst:
        for line in src:
            if count >= items:
                break
            dst.write(line)
            count += len(row_items(json.loads(line), ""))
    return head


def row_items(row: dict, folder: str) -> List[dict]:
    """One item per modality: {"id", "modality", "text" | "file"}."""
    out = []
    if row.get("text"):
        out.append({"id": row["id"], "modality": "text", "text": row["text"]})
    for modality in ("image", "audio"):
        if row.get(f"{modality}_file"):
            out.append({"id": row["id"], "modality": modality,
                        "file": os.path.join(folder, row[f"{modality}_file"])})
    return out


def iter_items(path: str, limit: Optional[int] = None) -> Iterator[dict]:
    folder = os.path.dirname(path)
    seen = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            for item in row_items(json.loads(line), folder):
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item


def count_items(path: str) -> int:
    return sum(1 for _ in iter_items(path))
