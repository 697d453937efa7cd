"""Sample manifests and tiny media for the embedded default run, made on first use (never committed)."""
from __future__ import annotations

import csv
import json
import os

__all__ = ["EXPECTED", "ensure_samples"]

# What `./run.sh` on the samples must produce (the tests check these numbers).
EXPECTED = {
    "rows": 18,
    "items_embedded": {"text": 6, "image": 4, "audio": 4, "video": 1},
    "dead_letters_by_reason": {"duplicate_id": 1, "image_too_small": 1, "invalid_offset": 1, "invalid_text_truncate": 1,
                               "invalid_url": 1, "malformed_row": 1, "missing_file": 1, "no_input": 1},
}

_TEXTS = ["a dog catches a frisbee in the park", "a cat sleeping on a sunny windowsill",
          "goal scored in the last minute of the match", "rain falling on a quiet city street",
          "a piano playing a slow melody", "waves crashing on a rocky shore"]


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def ensure_samples(folder: str) -> str:
    """Writes the samples into `folder` unless they are already there; returns the manifests folder."""
    manifests = os.path.join(folder, "manifests")
    marker = os.path.join(folder, ".complete-v2")  # v2 added a video: older sample folders are remade
    if os.path.exists(marker):
        return manifests
    from embed_emulator import synth

    media = os.path.join(folder, "media")
    os.makedirs(media, exist_ok=True)
    os.makedirs(manifests, exist_ok=True)
    _write(os.path.join(media, "red.png"), synth.png_bytes(160, 160, seed=1))
    _write(os.path.join(media, "green.jpg"), synth.jpeg_bytes(200, 150, seed=2))
    _write(os.path.join(media, "blue.png"), synth.png_bytes(128, 128, seed=3))
    _write(os.path.join(media, "tiny.png"), synth.png_bytes(64, 64, seed=4))
    _write(os.path.join(media, "tone-a.wav"), synth.wav_bytes(8.0, 440.0))
    _write(os.path.join(media, "tone-e.flac"), synth.flac_bytes(3.0, 660.0))
    _write(os.path.join(media, "tone-c.mp3"), synth.mp3_bytes(4.0, 262.0))
    # A 6 s clip: embedded through Embed API v2 (video is v2 only), one row per segment and option.
    _write(os.path.join(media, "clip.mp4"), synth.mp4_bytes(6.0, 360, 360, fps=4, seed=5))

    jsonl_rows = [
        {"id": "t1", "text": _TEXTS[0], "lang": "en"},
        {"id": "t2", "text": _TEXTS[1], "lang": "en"},
        {"id": "m1", "text": _TEXTS[2], "image_file": "../media/red.png", "audio_file": "../media/tone-a.wav",
         "audio_start_offset_sec": 1.5, "tags": ["sport", "demo"]},
        {"id": "i1", "image_file": "../media/green.jpg"},
        {"id": "a1", "audio_file": "../media/tone-e.flac"},
        {"text": _TEXTS[3]},  # no id: a stable one is derived
        {"id": "v1", "video_file": "../media/clip.mp4", "scene": "demo"},
        # Deliberately bad rows: each lands in the dead letters with its reason.
        {"id": "bad-none", "lang": "en"},
        {"id": "bad-url", "image_url": "file:///etc/hosts"},
        {"id": "bad-offset", "audio_file": "../media/tone-e.flac", "audio_start_offset_sec": 99},
        {"id": "t1", "text": "a duplicate id"},
    ]
    with open(os.path.join(manifests, "catalog.jsonl"), "w", encoding="utf-8") as f:
        for row in jsonl_rows:
            f.write(json.dumps(row) + "\n")
        f.write('{"id": "bad-json", "text": \n')
    with open(os.path.join(manifests, "extra.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "text_truncate", "image_file", "audio_file", "category"])
        writer.writerow(["c1", _TEXTS[4], "end", "../media/blue.png", "../media/tone-c.mp3", "music"])
        writer.writerow(["c2", _TEXTS[5], "sideways", "", "", "nature"])
        writer.writerow(["c3", "", "", "../media/tiny.png", "", "small"])
        writer.writerow(["c4", "", "", "../media/missing.png", "", "gone"])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["a red square", None],
                             "image_file": [None, "../media/red.png"],
                             "audio_file": ["../media/tone-a.wav", None]}),
                   os.path.join(manifests, "more.parquet"))
    open(marker, "w").close()
    return manifests
