"""The whole job on real Beam runners against the emulator over HTTP on 127.0.0.1."""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from embed_emulator import Emulator, EmulatorConfig, synth
from pipeline.samples import EXPECTED, ensure_samples
from tests.helpers import (TEST_KEY, StaticFiles, assert_exactly_once, check_vectors_match_client, make_config,
                           read_dead_letters, read_segments, run)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTABLE = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)


@pytest.fixture(scope="module")
def emulator():
    with Emulator(EmulatorConfig()) as emu:
        yield emu


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("samples"))
    manifests = ensure_samples(folder)
    return [os.path.join(manifests, name) for name in ("catalog.jsonl", "extra.csv", "more.parquet")]


def _sample_rows(samples):
    """id -> the row's fields with file paths resolved, for the good sample rows."""
    import csv

    import pyarrow.parquet as pq

    rows = {}
    for path in samples:
        folder = os.path.dirname(path)
        if path.endswith(".jsonl"):
            records = []
            for line in open(path, encoding="utf-8"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass
        elif path.endswith(".csv"):
            records = [{k: v for k, v in r.items() if v} for r in csv.DictReader(open(path, encoding="utf-8"))]
        else:
            records = [{k: v for k, v in r.items() if v is not None} for r in pq.read_table(path).to_pylist()]
        for record in records:
            for field in ("image_file", "audio_file", "video_file"):
                if field in record:
                    record[field] = os.path.normpath(os.path.join(folder, record[field]))
            rows.setdefault(record.get("id"), record)
    return rows


def _derived_id_row(samples, table):
    ids = set(table.column("id").to_pylist())
    derived = [i for i in ids if i.startswith("catalog-")]
    assert len(derived) == 1
    return derived[0]


def test_sample_run_on_direct_runner(tmp_path, emulator, samples):
    emulator.reset_stats()
    output = str(tmp_path / "out")
    summary = run(make_config(output, samples), emulator.base_url)

    assert summary["rows_read"] == EXPECTED["rows"]
    assert summary["items_embedded"] == EXPECTED["items_embedded"]
    assert summary["dead_letters_by_reason"] == EXPECTED["dead_letters_by_reason"]
    assert_exactly_once(output, EXPECTED["rows"])

    # Packing: 6 texts, 3 distinct images (red.png is in two rows) and 4 audios fit in 6 v1 calls; the
    # video is one v2 call.
    stats = emulator.stats()
    assert summary["calls"] == stats["requests"] == 7
    assert summary["api"]["items_by_route"] == {"v1": 14, "v2": 1, "task": 0}
    assert summary["items_per_call"] == pytest.approx(14 / 7, abs=0.01)
    assert summary["items_deduplicated"] == 1

    table = read_segments(output)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 512)
    for name, type_ in [("id", pa.string()), ("segment_index", pa.int32()), ("start_offset_sec", pa.float64()),
                        ("content_hash", pa.string()), ("run_time", pa.timestamp("ms", tz="UTC"))]:
        assert table.schema.field(name).type == type_
    assert set(table.column("run_id").to_pylist()) == {summary["run_id"]}
    rows = {(r["id"], r["modality"], r["segment_index"]): r for r in table.to_pylist()}
    # 8 s of audio from 1.5 s in, 6 s segments: 1.5-7.5 and 7.5-8.0.
    assert [(rows[("m1", "audio", i)]["start_offset_sec"], rows[("m1", "audio", i)]["end_offset_sec"])
            for i in (0, 1)] == [(1.5, 7.5), (7.5, 8.0)]
    assert json.loads(rows[("t1", "text", 0)]["attributes"]) == {"lang": "en"}
    assert json.loads(rows[("m1", "text", 0)]["attributes"]) == {"tags": ["sport", "demo"]}
    assert rows[("i1", "image", 0)]["input_file"] == "green.jpg"
    assert rows[("t1", "text", 0)]["input_text"] == "a dog catches a frisbee in the park"
    # The same bytes give the same content hash (red.png in two rows).
    assert rows[("m1", "image", 0)]["content_hash"] == rows[("p2", "image", 0)]["content_hash"]
    assert np.linalg.norm(np.asarray(rows[("t1", "text", 0)]["embedding"])) == pytest.approx(1.0, abs=1e-5)

    sample_rows = _sample_rows(samples)
    sample_rows[_derived_id_row(samples, table)] = {"text": "rain falling on a quiet city street"}
    check_vectors_match_client(table, emulator.base_url, "marengo3.0", sample_rows)

    letters = {(l["code"]): l for l in read_dead_letters(output)}
    assert "`image_url`" in letters["invalid_url"]["message"] and "bad-url" == letters["invalid_url"]["id"]
    assert letters["missing_file"]["modality"] == "image" and "missing.png" in letters["missing_file"]["message"]
    assert letters["duplicate_id"]["row_number"] == 11 and "row 1" in letters["duplicate_id"]["message"]
    assert letters["malformed_row"]["stage"] == "read" and letters["malformed_row"]["row_number"] == 12
    assert letters["image_too_small"]["id"] == "c3" and "64x64" in letters["image_too_small"]["message"]
    with open(os.path.join(output, "summary.json")) as f:
        assert json.load(f)["dead_letters"] == 8


def test_portable_runner_gives_the_same_output(tmp_path, emulator, samples):
    direct, portable = str(tmp_path / "direct"), str(tmp_path / "portable")
    run(make_config(direct, samples), emulator.base_url)
    summary = run(make_config(portable, samples, beam_args=PORTABLE), emulator.base_url)
    assert summary["calls"] == 7 and summary["items_embedded"] == EXPECTED["items_embedded"]
    assert_exactly_once(portable, EXPECTED["rows"])
    key = lambda t: sorted((r["id"], r["modality"], r["segment_index"], tuple(r["embedding"]))
                           for r in t.select(["id", "modality", "segment_index", "embedding"]).to_pylist())
    assert key(read_segments(portable)) == key(read_segments(direct))
    codes = lambda out: sorted((l["source"], l["row_number"], l["code"]) for l in read_dead_letters(out))
    assert codes(portable) == codes(direct)


def test_no_pack_makes_one_call_per_item(tmp_path, emulator, samples):
    emulator.reset_stats()
    summary = run(make_config(str(tmp_path / "out"), samples, pack=False), emulator.base_url)
    assert summary["calls"] == emulator.stats()["requests"] == 14  # 13 v1 items and the v2 video
    assert emulator.stats()["items_per_call"] == {"1": 14, "2": 0, "3": 0}


def _mixed_manifest(folder, rows, seed=7):
    """A JSONL manifest of `rows` rows mixing text, image and audio files; returns (path, id -> fields)."""
    rng = random.Random(seed)
    media = os.path.join(folder, "media")
    os.makedirs(media, exist_ok=True)
    images, audios = [], []
    for i in range(6):
        path = os.path.join(media, f"img{i}.png")
        with open(path, "wb") as f:
            f.write(synth.png_bytes(128 + 8 * i, 128, seed=i))
        images.append(path)
        path = os.path.join(media, f"snd{i}.wav")
        with open(path, "wb") as f:
            f.write(synth.wav_bytes(1.0 + i, 200.0 + 90 * i))
        audios.append(path)
    manifest = os.path.join(folder, "mixed.jsonl")
    fields_by_id = {}
    with open(manifest, "w") as f:
        for n in range(rows):
            row = {"id": f"r{n}"}
            kinds = rng.choice([("text",), ("image",), ("audio",), ("text", "image"), ("text", "image", "audio")])
            if "text" in kinds:
                row["text"] = f"caption number {n} about {rng.choice(['dogs', 'cats', 'goals', 'rain'])}"
            if "image" in kinds:
                row["image_file"] = rng.choice(images)
            if "audio" in kinds:
                row["audio_file"] = rng.choice(audios)
            f.write(json.dumps(row) + "\n")
            fields_by_id[row["id"]] = row
    return manifest, fields_by_id


@pytest.mark.parametrize("beam_args", [["--runner=DirectRunner"], PORTABLE], ids=["direct", "portable"])
def test_faults_lose_nothing_and_attach_nothing_to_the_wrong_item(tmp_path, beam_args):
    manifest, fields = _mixed_manifest(str(tmp_path), 90)
    faults = EmulatorConfig(fault_5xx_rate=0.15, fault_429_burst_rate=0.03, fault_429_burst_sec=0.2,
                            fault_malformed_rate=0.08, fault_modality_error_rate=0.05, seed=11)
    output = str(tmp_path / "out")
    with Emulator(faults) as emu:
        config = make_config(output, [manifest], max_attempts=8, item_deadline_sec=60.0, beam_args=beam_args)
        config.initial_backoff_sec = 0.01
        summary = run(config, emu.base_url)
        stats = emu.stats()
    assert_exactly_once(output, 90)
    assert stats["faults"]["5xx"] > 0 and stats["faults"]["malformed"] > 0 and stats["faults"]["429_burst"] > 0
    assert summary["retries"] >= stats["faults"]["5xx"] + stats["faults"]["malformed"]
    assert summary["http_429"] >= stats["faults"]["429_burst"]
    letters = read_dead_letters(output)
    assert {l["code"] for l in letters} <= {"embedding_failed"}, letters[:3]
    assert len(letters) >= 1 and all(l["http_status"] == 200 for l in letters)
    # Every vector equals what a clean emulator gives for that input alone.
    with Emulator(EmulatorConfig()) as clean:
        check_vectors_match_client(read_segments(output), clean.base_url, "marengo3.0", fields)


def test_bad_item_in_a_packed_call_is_split_out(tmp_path):
    long_text = " ".join(f"word{i}" for i in range(200))
    png = tmp_path / "ok.png"
    png.write_bytes(synth.png_bytes(160, 160, seed=5))
    wav = tmp_path / "ok.wav"
    wav.write_bytes(synth.wav_bytes(3.0, 300.0))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "x", "text": long_text, "text_truncate": "none",
                                    "image_file": "ok.png", "audio_file": "ok.wav"}) + "\n")
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        summary = run(make_config(output, [str(manifest)], model="marengo2.7"), emu.base_url)
        stats = emu.stats()
    assert summary["split_calls"] == 1 and stats["by_status"] == {"400": 2, "200": 2}
    assert summary["items_embedded"] == {"audio": 1, "image": 1}
    (letter,) = read_dead_letters(output)
    assert (letter["id"], letter["modality"], letter["code"], letter["http_status"]) == (
        "x", "text", "parameter_invalid", 400)
    assert "less than or equal to 77" in letter["message"]
    assert read_segments(output).schema.field("embedding").type == pa.list_(pa.float32(), 1024)


def test_urls_are_fetched_and_a_failing_one_only_sinks_itself(tmp_path):
    media = tmp_path / "www"
    media.mkdir()
    (media / "cat.png").write_bytes(synth.png_bytes(150, 150, seed=9))
    (media / "clip.mp3").write_bytes(synth.mp3_bytes(2.0, 500.0))
    with StaticFiles(str(media)) as files:
        rows = [{"id": "u1", "text": "a cat", "image_url": f"{files.url}/cat.png", "audio_url": f"{files.url}/clip.mp3"},
                {"id": "u2", "text": "gone", "image_url": f"{files.url}/missing.png"}]
        manifest = tmp_path / "urls.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        output = str(tmp_path / "out")
        with Emulator(EmulatorConfig()) as emu:
            summary = run(make_config(output, [str(manifest)]), emu.base_url)
            table = read_segments(output)
            check_vectors_match_client(table, emu.base_url, "marengo3.0", {r["id"]: r for r in rows})
    assert_exactly_once(output, 2)
    assert summary["items_embedded"] == {"audio": 1, "image": 1, "text": 2}
    (letter,) = read_dead_letters(output)
    assert (letter["id"], letter["modality"]) == ("u2", "image") and "image_url" in letter["message"]
    urls = {r["id"]: r["input_url"] for r in table.to_pylist() if r["modality"] == "image"}
    assert urls == {"u1": f"{files.url}/cat.png"}


def test_rejected_key_stops_the_job_with_one_clear_error(tmp_path, monkeypatch):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"r{i}", "text": f"t{i}"}) + "\n" for i in range(40)))
    monkeypatch.setenv("TWELVE_LABS_API_KEY", "wrong-key")
    with Emulator(EmulatorConfig(api_keys={"the-right-key"})) as emu:
        with pytest.raises(Exception, match="refused the key") as info:
            run(make_config(str(tmp_path / "out"), [str(manifest)], max_in_flight=2), emu.base_url)
        assert emu.stats()["requests"] <= 4
    assert "wrong-key" not in str(info.value)


def test_cli_help_and_key_flag_refused():
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0 and "examples:" in out.stdout and "--no-pack" in out.stdout
    out = subprocess.run(["./run.sh", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0 and "./run.sh test" in out.stdout and "search" in out.stdout
    assert len(out.stdout.splitlines()) < 90
    out = subprocess.run([sys.executable, "-m", "pipeline", "--config", "configs/local.yaml", "--api-key=abc123"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode != 0 and "TWELVE_LABS_API_KEY" in out.stderr and "abc123" not in out.stderr


def test_cli_runs_local_config_with_overrides(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TWELVE_LABS_API_KEY"}
    env["PYTHONPATH"] = ROOT
    output = str(tmp_path / "cli-out")
    out = subprocess.run([sys.executable, "-m", "pipeline", "--config", "configs/local.yaml", "--output", output,
                          "--no-pack", "--max-in-flight", "3", "--direct_num_workers=1"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    # The samples' bad rows are dead letters on purpose: local.yaml sets exit_codes.dead_letters to 0.
    assert out.returncode == 0, out.stderr[-2000:]
    assert "status           finished_with_dead_letters (exit 0)" in out.stdout
    assert "WARNING" not in out.stderr and "Bare TaggedOutput" not in out.stderr, out.stderr[-2000:]
    assert "rows read        18" in out.stdout and "calls            14 (1.0 items per call)" in out.stdout
    with open(os.path.join(output, "summary.json")) as f:
        summary = json.load(f)
    assert summary["dead_letters_by_reason"] == EXPECTED["dead_letters_by_reason"]
