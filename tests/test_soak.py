"""Fault soak: over 2000 items against an emulator injecting every fault at once. The job finishes in time,
loses and doubles nothing, attaches no vector to the wrong item, and keeps its retries within bounds."""
import collections
import csv
import json
import os
import random
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embed_emulator import Emulator, EmulatorConfig, synth
from tests.helpers import (TEST_KEY, StaticFiles, assert_exactly_once, check_vectors_match_client, make_config,
                           read_dead_letters, read_segments, run)

DEADLINE_SEC = 150  # a hang, not slowness, is what this catches; the run takes ~40 s on 2 busy cores
MAX_ATTEMPTS = 6
FAULTS = dict(fault_5xx_rate=0.10, fault_429_burst_rate=0.01, fault_429_burst_sec=0.3, fault_hang_rate=0.02,
              fault_hang_sec=2.0, fault_drop_rate=0.02, fault_malformed_rate=0.01, fault_modality_error_rate=0.02)
COLUMNS = ["id", "text", "image_url", "image_file", "audio_file", "audio_start_offset_sec"]
KINDS = [("text",), ("image",), ("audio",), ("text", "image"), ("text", "image", "audio")]


def _corpus(folder, media_url, rows=1300, seed=17):
    """Three manifests (JSONL, CSV, Parquet) of mixed rows over a few media files; returns (paths, id -> fields,
    item count). Texts are unique; images repeat (the job embeds identical inputs once); some images are URLs."""
    rng = random.Random(seed)
    media = os.path.join(folder, "media")
    os.makedirs(media, exist_ok=True)
    images, audios = [], []
    for i in range(6):
        images.append(os.path.join(media, f"img{i}.png"))
        with open(images[-1], "wb") as f:
            f.write(synth.png_bytes(128 + 8 * i, 136, seed=i))
        audios.append((os.path.join(media, f"snd{i}.wav"), 1.0 + i * 0.5))
        with open(audios[-1][0], "wb") as f:
            f.write(synth.wav_bytes(audios[-1][1], 200.0 + 90 * i))
    fields_by_id, items, records = {}, 0, []
    for n in range(rows):
        row = {"id": f"s{n}"}
        kinds = rng.choice(KINDS)
        if "text" in kinds:
            row["text"] = f"caption {n}: {rng.choice(['a dog', 'rain', 'a goal', 'waves'])} {rng.random():.6f}"
        if "image" in kinds:
            if rng.random() < 0.2:  # a distinct URL per row: the API fetches it, no dedup
                row["image_url"] = f"{media_url}/img{n % 6}.png?row={n}"
            else:
                row["image_file"] = rng.choice(images)
        if "audio" in kinds:
            path, seconds = rng.choice(audios)
            row["audio_file"] = path
            if rng.random() < 0.7:
                row["audio_start_offset_sec"] = round(rng.uniform(0, seconds - 0.2), 2)
        items += len(kinds)
        fields_by_id[row["id"]] = row
        records.append(row)
    paths = [os.path.join(folder, name) for name in ("a.jsonl", "b.csv", "c.parquet")]
    with open(paths[0], "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records[:600])
    with open(paths[1], "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows([r.get(c, "") for c in COLUMNS] for r in records[600:1000])
    part = records[1000:]
    pq.write_table(pa.table({c: pa.array([None if r.get(c) is None else str(r[c]) for r in part], pa.string())
                             for c in COLUMNS}), paths[2])
    return paths, fields_by_id, items


@pytest.mark.slow
def test_fault_soak(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    folder = str(tmp_path)
    os.makedirs(os.path.join(folder, "media"))
    output = os.path.join(folder, "out")
    with StaticFiles(os.path.join(folder, "media")) as files:
        manifests, fields, items = _corpus(folder, files.url)
        assert items >= 2000
        config = make_config(output, manifests, max_attempts=MAX_ATTEMPTS, max_in_flight=16, item_deadline_sec=60.0,
                             connect_timeout_sec=1.0, read_timeout_sec=1.0, requests_per_minute=None)
        with Emulator(EmulatorConfig(latency_ms=0, requests_per_minute=None, seed=2024, **FAULTS)) as emu:
            box = {}
            worker = threading.Thread(target=lambda: box.update(summary=run(config, emu.base_url)), daemon=True)
            started = time.monotonic()
            worker.start()
            worker.join(DEADLINE_SEC)
            elapsed = time.monotonic() - started
            assert not worker.is_alive(), f"the job did not finish in {DEADLINE_SEC} s"
            stats = emu.stats()
        summary = box["summary"]

        # Every fault kind really happened.
        assert all(n > 0 for n in stats["faults"].values()), stats["faults"]
        # Every row and modality lands exactly once.
        assert_exactly_once(output, len(fields))
        letters = read_dead_letters(output)
        table = read_segments(output)
        assert len({(r["id"], r["modality"]) for r in table.select(["id", "modality"]).to_pylist()}) \
            + len(letters) == items
        # Retries within bounds.
        assert all(1 <= l["attempts"] <= MAX_ATTEMPTS for l in letters), letters
        # Every request the emulator saw was one of the job's counted calls (a send on a dead connection may
        # count as a call the emulator never saw).
        assert stats["requests"] <= summary["calls"] <= items * MAX_ATTEMPTS
        assert 0 < summary["retries"] < summary["calls"]
        # Only the injected per-item errors are lost; retryable faults are retried away.
        codes = collections.Counter(l["code"] for l in letters)
        assert codes["embedding_failed"] >= stats["faults"]["modality_error"] > 0
        assert sum(codes.values()) - codes["embedding_failed"] <= 3, codes
        # Every vector equals what a clean emulator gives for that input alone.
        with Emulator(EmulatorConfig()) as clean:
            check_vectors_match_client(table, clean.base_url, "marengo3.0", fields)
    print(f"soak: {items} items, {stats['requests']} requests, faults {stats['faults']}, {elapsed:.1f} s")
