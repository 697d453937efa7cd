"""Large media through the Assets API: uploaded once (direct or multipart), resumable across SIGKILL, embedded
by asset_id with the emulator's vectors for those bytes, reused across runs, cleaned up on request."""
import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from embed_client import EmbedClient
from embed_emulator import Emulator, EmulatorConfig, synth
from tests.helpers import (TEST_KEY, assert_exactly_once, assert_v2_rows, make_config, read_dead_letters,
                           read_segments, run, v2_sorted)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 64 * 1024


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large-media")
    (folder / "clip.mp4").write_bytes(synth.mp4_bytes(6.0, 360, 360, fps=4, seed=5))
    (folder / "same.mp4").write_bytes((folder / "clip.mp4").read_bytes())  # the same bytes under another name
    (folder / "speech.wav").write_bytes(synth.wav_bytes(40.0, 300.0))      # 1.3 MB: 20 chunks of 64 KiB
    (folder / "img.png").write_bytes(synth.png_bytes(160, 160, seed=3))
    (folder / "notes.mp4").write_bytes(b"this is not a video at all" * 100)
    return folder


def _emulator(**knobs):
    return Emulator(EmulatorConfig(asset_chunk_size=CHUNK, asset_initial_urls=3, asset_processing_sec=0.1,
                                   task_ready_after_sec=0.2, **knobs))


def _manifest(folder, rows, name="m.jsonl"):
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(folder):
    return [{"id": "v", "video_file": str(folder / "clip.mp4")},
            {"id": "v-again", "video_file": str(folder / "same.mp4"), "start_sec": 1, "end_sec": 5},
            {"id": "a", "audio_file": str(folder / "speech.wav")},
            {"id": "i", "image_file": str(folder / "img.png")},
            {"id": "t", "text": "a long video of a harbour"},
            {"id": "bad", "video_file": str(folder / "notes.mp4")}]


def _config(output, manifest, **overrides):
    settings = dict(asset_upload="always", direct_upload_max_bytes=0, asset_poll_sec=0.05, task_poll_sec=0.1)
    settings.update(overrides)
    return make_config(output, [manifest], **settings)


def _expected_rows(client, path, modality, clip=None):
    with open(path, "rb") as f:
        source = {"media_source": {"base64_string": base64.b64encode(f.read()).decode("ascii")}, **(clip or {})}
    return v2_sorted(client.v2.create(modality, "marengo3.0", **{modality: source}).data)


def _by_item(table):
    grouped = {}
    for row in table.to_pylist():
        grouped.setdefault((row["id"], row["modality"]), []).append(row)
    return grouped


def test_files_go_up_once_by_multipart_and_come_back_with_the_vectors_of_their_bytes(tmp_path, media):
    output = str(tmp_path / "out")
    manifest = _manifest(tmp_path, _rows(media))
    with _emulator() as emu:
        summary = run(_config(output, manifest), emu.base_url)
        assets = emu.stats()["assets"]
        client = EmbedClient(api_key=TEST_KEY, base_url=emu.base_url)
        grouped = _by_item(read_segments(output))
        assert_v2_rows(grouped[("v", "video")], _expected_rows(client, media / "clip.mp4", "video"))
        assert_v2_rows(grouped[("v-again", "video")],
                        _expected_rows(client, media / "clip.mp4", "video", {"start_sec": 1.0, "end_sec": 5.0}))
        assert_v2_rows(grouped[("a", "audio")], _expected_rows(client, media / "speech.wav", "audio"))
    sizes = os.path.getsize(media / "clip.mp4") + os.path.getsize(media / "speech.wav")
    # Two files (the same video bytes under two names upload once), every byte sent exactly once.
    assert assets["sessions_created"] == 2 and assets["created"]["multipart"] == 2
    assert assets["chunk_bytes_accepted"] == sizes and assets["chunk_puts_refused"] == 0
    assert summary["assets"]["uploaded"] == 2 and summary["assets"]["bytes_uploaded"] == sizes
    assert summary["assets"]["reused"] == 1  # the second row of the same bytes used the first one's asset
    with open(os.path.join(output, "report.html")) as f:
        report = f.read()
    assert '<span data-key="assets.uploaded">2</span>' in report
    assert f'<span data-key="assets.bytes_uploaded">{sizes}</span>' in report
    letters = {l["id"]: l["code"] for l in read_dead_letters(output)}
    assert letters == {"bad": "unsupported_format"}
    assert_exactly_once(output, 6)
    # Run again: nothing is uploaded and nothing is called.
    with _emulator() as emu:
        again = run(_config(output, manifest), emu.base_url)
        stats = emu.stats()
    assert stats["requests"] == 0 and stats["assets"]["requests"] == 0
    assert again["calls"] == 0 and again["assets"]["uploaded"] == 0


def test_other_options_reuse_the_asset_and_a_deleted_asset_is_uploaded_again(tmp_path, media):
    output = str(tmp_path / "out")
    with _emulator() as emu:
        first = _manifest(tmp_path, [{"id": "v", "video_file": str(media / "clip.mp4")}], "a.jsonl")
        run(_config(output, first), emu.base_url)
        # The same file with a clip: another item (new vectors), the same bytes: no upload.
        clipped = _manifest(tmp_path, [{"id": "v", "video_file": str(media / "clip.mp4"), "start_sec": 2}], "b.jsonl")
        reused = run(_config(output, clipped), emu.base_url)
        assert reused["assets"]["reused"] == 1 and reused["assets"]["uploaded"] == 0
        assert emu.stats()["assets"]["sessions_created"] == 1
        # Gone from the platform: uploaded again, and counted.
        journal = [json.loads(line) for path in sorted((tmp_path / "out" / "assets").glob("*.jsonl"))
                   for line in path.read_text().splitlines()]
        asset_id = next(r["asset_id"] for r in journal if r["event"] == "asset")
        EmbedClient(api_key=TEST_KEY, base_url=emu.base_url).assets.delete(asset_id)
        moved = _manifest(tmp_path, [{"id": "v", "video_file": str(media / "clip.mp4"), "start_sec": 3}], "c.jsonl")
        again = run(_config(output, moved), emu.base_url)
        assert again["assets"]["reuploaded"] == 1 and again["assets"]["uploaded"] == 1
        assert emu.stats()["assets"]["sessions_created"] == 2


def test_delete_after_run_removes_only_what_the_run_uploaded(tmp_path, media):
    output = str(tmp_path / "out")
    with _emulator() as emu:
        client = EmbedClient(api_key=TEST_KEY, base_url=emu.base_url)
        with open(media / "img.png", "rb") as f:
            theirs = client.assets.create(method="direct", file=("mine.png", f)).id
        rows = [{"id": "v", "video_file": str(media / "clip.mp4")},
                {"id": "theirs", "asset_id": theirs, "media_type": "image"}]
        for _ in range(50):
            if client.assets.retrieve(theirs).status == "ready":
                break
            time.sleep(0.05)
        summary = run(_config(output, _manifest(tmp_path, rows), delete_assets_after_run=True), emu.base_url)
        assert summary["assets"]["deleted"] == 1 and summary["assets"]["uploaded"] == 1
        assert client.assets.retrieve(theirs).status == "ready"  # a row's own asset is never deleted
        assert emu.stats()["assets"]["deleted"] == 1


def test_a_large_audio_file_on_marengo30_goes_to_v2_by_asset_instead_of_a_dead_letter(tmp_path):
    # Past v1's 36 MB and v2's 27 MiB inline limit: uploaded directly (under 200 MB), embedded by a task (a sync call takes 36 MB at most).
    import soundfile

    wav = tmp_path / "long.wav"

    # 48 kHz stereo: 38 MB is 3.5 minutes (what the emulator decodes), within the sync limit.
    frames = (38 * 1024 * 1024 - 44) // 4
    tone = (np.sin(np.linspace(0, 40000 * np.pi, frames)) * 3000).astype(np.int16)
    soundfile.write(str(wav), np.stack([tone, tone[::-1]], axis=1), 48000, subtype="PCM_16", format="WAV")
    output = str(tmp_path / "out")
    with _emulator() as emu:
        summary = run(make_config(output, [_manifest(tmp_path, [{"id": "long", "audio_file": str(wav)}])],
                                  asset_poll_sec=0.05, task_poll_sec=0.1), emu.base_url)
        assets = emu.stats()["assets"]
    assert summary["api"]["items_by_route"]["task"] == 1 and summary["dead_letters"] == 0  # past the sync 36 MB
    assert assets["created"]["direct"] == 1 and summary["assets"]["bytes_uploaded"] == os.path.getsize(wav)
    assert len(read_segments(output)) > 0


class _CountingFile(io.FileIO):
    """A local file that adds the bytes read to `counts`, under a buffered reader as a FileSystems stream is
    (reads through the buffer and from under it are both counted)."""

    def __init__(self, path, counts):
        super().__init__(path, "rb")
        self._counts = counts

    def readinto(self, buffer):
        n = super().readinto(buffer)
        self._counts["read"] += n or 0
        return n

    def read(self, size=-1):
        data = super().read(size)
        self._counts["read"] += len(data)
        return data


@pytest.mark.parametrize("field,upload", [("audio_file", "auto"), ("video_file", "always")])
def test_validation_sizes_and_reads_a_large_file_once(tmp_path, media, monkeypatch, field, upload):
    """Each open and metadata read is a request on an object store: the size that routes audio to an asset is the
    one its check uses, and the header probe and the sha256 share one open and one pass over the bytes (it was two
    opens, two metadata reads and up to 2.5x the file's bytes)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.localfilesystem import LocalFileSystem

    from transforms.records import ManifestRow
    from transforms.stages import validate

    path = media / ("speech.wav" if field == "audio_file" else "clip.mp4")
    size = os.path.getsize(path)
    counts = {"open": 0, "metadata": 0, "read": 0}
    real_metadata = LocalFileSystem.metadata

    def counting_open(name, *args, **kwargs):
        counts["open"] += 1
        return io.BufferedReader(_CountingFile(name, counts))

    def counting_metadata(self, name):
        counts["metadata"] += 1
        return real_metadata(self, name)

    monkeypatch.setattr(FileSystems, "open", staticmethod(counting_open))
    monkeypatch.setattr(LocalFileSystem, "metadata", counting_metadata)
    # Limits under the file's size: audio past v1's limit goes to v2 by an asset (the size decides the route).
    monkeypatch.setitem(validate.MEDIA_RULES["marengo3.0"], "audio", 1000)
    monkeypatch.setitem(validate.V2_MEDIA_RULES, "audio", 1000)
    plan = validate.RoutePlan("marengo3.0", asset_upload=upload)
    (item,) = validate.row_to_items(ManifestRow(str(tmp_path / "m.jsonl"), 1, {"id": "x", field: str(path)}),
                                    "marengo3.0", plan)
    assert item.upload and item.route in ("v2", "task") and item.file_size == size
    assert item.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert counts["open"] == 1 and counts["metadata"] == 1, counts
    # Every byte fetched once: what the header probe fetched is hashed on the way, the hash fetches the rest (it
    # was a second open reading it all again; an MP4 probed through a buffer fetched 2.5x its size).
    assert counts["read"] == size, counts


def test_sigkill_during_a_multipart_upload_then_rerun_sends_only_what_was_missing(tmp_path, media):
    big = tmp_path / "big.wav"
    big.write_bytes(synth.wav_bytes(100.0, 300.0))  # 3.2 MB: 49 chunks
    size = os.path.getsize(big)
    output = str(tmp_path / "out")
    manifest = _manifest(tmp_path, [{"id": "big", "audio_file": str(big)}])
    config = tmp_path / "job.json"
    config.write_text(json.dumps({
        "manifests": [manifest], "output": {"path": output}, "api": {"base_url": "URL"},
        "assets": {"upload": "always", "direct_upload_max_bytes": 0, "max_parallel_chunks": 4, "poll_sec": 0.05},
        "calls": {"task_poll_sec": 0.1}, "beam": {"args": ["--runner=DirectRunner"]}}))
    env = dict(os.environ, PYTHONPATH=ROOT, TWELVE_LABS_API_KEY=TEST_KEY)
    with _emulator(chunk_put_delay_ms=60) as emu:
        config.write_text(config.read_text().replace('"URL"', json.dumps(emu.base_url)))
        job = subprocess.Popen([sys.executable, "-m", "pipeline", "--config", str(config)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and emu.stats()["assets"]["chunk_puts_accepted"] < 20:
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
        sent_before = emu.stats()["assets"]["chunk_bytes_accepted"]
        assert 0 < sent_before < size
        rerun = subprocess.run([sys.executable, "-m", "pipeline", "--config", str(config)], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=300)
        assets = emu.stats()["assets"]
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # Every byte at least once, and at most the chunks in flight at the kill (4) plus one more sent again.
    assert size <= assets["chunk_bytes_accepted"] <= size + 5 * CHUNK
    assert assets["sessions_created"] == 1  # the session was carried on, not started again
    with open(os.path.join(output, "summary.json")) as f:
        summary = json.load(f)
    assert summary["assets"]["resumed"] == 1 and summary["assets"]["uploaded"] == 0
    assert len(read_segments(output)) > 0


def test_files_in_a_bucket_go_up_once_by_multipart_and_direct_upload_with_the_vectors_of_their_bytes(
        tmp_path, media, s3_bucket, moto_s3):
    """Media kept in a bucket (a real S3 API on loopback), as catalogs keep it: each file read through Beam's
    S3 filesystem, sent once (the audio by multipart, the video by direct upload), embedded exactly."""
    for name in ("clip.mp4", "speech.wav"):
        moto_s3.write(s3_bucket, f"catalog/{name}", (media / name).read_bytes())
    rows = [{"id": "v", "video_file": f"s3://{s3_bucket}/catalog/clip.mp4"},
            {"id": "a", "audio_file": f"s3://{s3_bucket}/catalog/speech.wav"},
            {"id": "gone", "video_file": f"s3://{s3_bucket}/catalog/nope.mp4"}]
    output = str(tmp_path / "out")
    manifest = _manifest(tmp_path, rows)
    video_bytes = os.path.getsize(media / "clip.mp4")
    audio_bytes = os.path.getsize(media / "speech.wav")
    assert video_bytes < audio_bytes
    config = _config(output, manifest, direct_upload_max_bytes=video_bytes,  # the video direct, the audio in chunks
                     beam_args=["--runner=DirectRunner"] + moto_s3.beam_args)
    with _emulator() as emu:
        summary = run(config, emu.base_url)
        assets = emu.stats()["assets"]
        client = EmbedClient(api_key=TEST_KEY, base_url=emu.base_url)
        grouped = _by_item(read_segments(output))
        assert_v2_rows(grouped[("v", "video")], _expected_rows(client, media / "clip.mp4", "video"))
        assert_v2_rows(grouped[("a", "audio")], _expected_rows(client, media / "speech.wav", "audio"))
    assert assets["created"]["multipart"] == 1 and assets["created"]["direct"] == 1
    assert assets["chunk_bytes_accepted"] == audio_bytes and assets["chunk_puts_refused"] == 0
    assert summary["assets"]["uploaded"] == 2 and summary["assets"]["bytes_uploaded"] == video_bytes + audio_bytes
    assert {l["id"]: l["code"] for l in read_dead_letters(output)} == {"gone": "missing_file"}
    with _emulator() as emu:  # a rerun reads nothing from the bucket again: nothing uploaded, nothing called
        again = run(config, emu.base_url)
        stats = emu.stats()
    assert stats["requests"] == 0 and stats["assets"]["requests"] == 0 and again["assets"]["uploaded"] == 0
