"""Audio/video assets embedded from their files (opened by path, never read whole): the vectors
equal those of the same bytes sent inline, and a file bigger than the old 200 MB task cap embeds
by task with the emulator's memory growing far less than the file (measured in a subprocess)."""
from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from embed_emulator import Emulator, EmulatorConfig, media, synth
from embed_emulator.stats import v2_key
from tests.helpers import loopback_http  # noqa: F401 (the `http` fixture)

KEY = {"x-api-key": "k"}
MB = 1024 * 1024
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---- media -----------------------------------------------------------------------------------

def noisy_mp4(seconds: float = 8.0, width: int = 640, height: int = 360, fps: int = 10,
              seed: int = 7) -> bytes:
    """A real MP4 of a few MB (noise compresses badly): H.264 with keyframes every 2 s and a
    mono AAC tone whose pitch steps every 2 s. About 1 s to make."""
    import av

    buffer = io.BytesIO()
    container = av.open(buffer, "w", format="mp4")
    vstream = container.add_stream("libx264", rate=fps)
    vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
    vstream.codec_context.thread_count = 1
    vstream.codec_context.options = {"preset": "ultrafast", "crf": "20", "g": str(2 * fps)}
    astream = container.add_stream("aac", rate=16000)
    astream.codec_context.layout = "mono"
    astream.codec_context.thread_count = 1
    rng = np.random.default_rng(seed)
    base = synth.image_array(width, height, seed).astype(np.int16)
    for i in range(int(seconds * fps)):
        pixels = np.roll(base, i * 9, axis=1) + rng.integers(-30, 31, base.shape)
        frame = av.VideoFrame.from_ndarray(np.clip(pixels, 0, 255).astype(np.uint8), format="rgb24")
        frame.pts = i
        container.mux(vstream.encode(frame))
    container.mux(vstream.encode())
    total = int(seconds * 16000)
    for start in range(0, total, 1024):
        t = (start + np.arange(min(1024, total - start))) / 16000
        wave = (0.2 * np.sin(2 * np.pi * (300 + 100 * np.floor(t / 2)) * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, start
        container.mux(astream.encode(frame))
    container.mux(astream.encode())
    container.close()
    return buffer.getvalue()


def raw_avi(path: str, target_bytes: int, width: int = 1280, height: int = 720,
            fps: int = 10) -> float:
    """A real AVI of about target_bytes: uncompressed RGB frames (2.6 MiB each at 720p, so a
    250 MB file is ~9 s of video and takes well under a second to write and to decode) and a
    44.1 kHz stereo PCM track. Returns its duration in seconds."""
    import av

    frames = max(1, target_bytes // (width * height * 3))
    container = av.open(path, "w", format="avi")
    vstream = container.add_stream("rawvideo", rate=fps)
    vstream.width, vstream.height, vstream.pix_fmt = width, height, "rgb24"
    astream = container.add_stream("pcm_s16le", rate=44100)
    astream.codec_context.layout = "stereo"
    base = synth.image_array(width, height, seed=11)
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.roll(base, i * 37, axis=1), format="rgb24")
        frame.pts = i
        container.mux(vstream.encode(frame))
    container.mux(vstream.encode())
    total = int(frames / fps * 44100)
    for start in range(0, total, 4410):
        t = (start + np.arange(min(4410, total - start))) / 44100
        left = 0.2 * np.sin(2 * np.pi * (220 + 110 * np.floor(t)) * t)
        pcm = (np.stack([left, 0.5 * left]) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.T.reshape(1, -1).copy(), format="s16",
                                           layout="stereo")
        frame.sample_rate, frame.pts = 44100, start
        container.mux(astream.encode(frame))
    container.mux(astream.encode())
    container.close()
    return frames / fps


def stereo_wav(seconds: float = 10.0, rate: int = 44100) -> bytes:
    """Stereo with different channels, longer than several decode blocks (media.AUDIO_BLOCK_FRAMES)."""
    t = np.arange(int(seconds * rate)) / rate
    left = 0.3 * np.sin(2 * np.pi * (330 + 55 * np.floor(t / 2)) * t)
    right = 0.2 * np.sin(2 * np.pi * 880 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t))
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([left, right], axis=1).astype(np.float32), rate,
                    format="WAV", subtype="PCM_16")
    return buffer.getvalue()


MP4 = noisy_mp4()


# ---- HTTP helpers --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emulator():
    with Emulator(EmulatorConfig(asset_processing_sec=0.0, asset_chunk_size=1 * MB,
                                 asset_initial_urls=2, task_ready_after_sec=0.0)) as running:
        yield running


def wait_asset(http, base_url: str, asset_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = http.get(f"{base_url}/assets/{asset_id}", headers=KEY, timeout=10).json()
        if body["status"] != "processing":
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def upload_multipart(http, base_url: str, data: bytes = None, path: str = None,
                     filename: str = "clip.mp4", kind: str = "video") -> str:
    """A multipart upload of bytes or of a file (read one chunk at a time); the ready asset's id."""
    total = len(data) if data is not None else os.path.getsize(path)
    created = http.post(f"{base_url}/assets/multipart-uploads", headers=KEY, timeout=10,
                        json={"filename": filename, "type": kind, "total_size": total})
    assert created.status_code == 201, created.text
    session = created.json()
    size, count = session["chunk_size"], session["total_chunks"]
    urls = {u["chunk_index"]: u["url"] for u in session["upload_urls"]}
    source = open(path, "rb") if path is not None else io.BytesIO(data)
    reports = []
    with source:
        for index in range(1, count + 1):
            if index not in urls:
                more = http.post(f"{base_url}/assets/multipart-uploads/{session['upload_id']}"
                                 f"/presigned-urls", headers=KEY, timeout=10,
                                 json={"start": index, "count": min(50, count - index + 1)})
                urls.update({u["chunk_index"]: u["url"] for u in more.json()["upload_urls"]})
            chunk = source.read(size)
            put = http.put(urls[index], data=chunk, timeout=60)
            assert put.status_code == 200, put.text
            reports.append({"chunk_index": index, "proof": put.headers["ETag"].strip('"'),
                            "proof_type": "etag", "chunk_size": len(chunk)})
    done = http.post(f"{base_url}/assets/multipart-uploads/{session['upload_id']}", headers=KEY,
                     json={"completed_chunks": reports}, timeout=60)
    assert done.status_code == 200, done.text
    asset = wait_asset(http, base_url, session["asset_id"], timeout=120)
    assert asset["status"] == "ready" and asset["size"] == total, asset
    return session["asset_id"]


def run_task(http, base_url: str, body: dict, timeout: float = 60.0) -> dict:
    created = http.post(f"{base_url}/embed-v2/tasks", headers=KEY, json=body, timeout=60)
    assert created.status_code == 202, created.text
    task_id = created.json()["_id"]
    deadline = time.monotonic() + timeout
    while True:
        task = http.get(f"{base_url}/embed-v2/tasks/{task_id}", headers=KEY, timeout=10).json()
        if task["status"] != "processing":
            assert task["status"] == "ready", task
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.02)


def av_body(kind: str, source: dict, model: str = "marengo3.0", **fields) -> dict:
    return {"input_type": kind, "model_name": model, kind: {"media_source": source, **fields}}


def without_name(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k != "input_filename"}


# ---- equal to inline -----------------------------------------------------------------------------

def test_multipart_video_asset_embeds_like_the_same_bytes_inline(http, emulator):
    assert 2 * MB < len(MP4) < 27 * MB  # a few MB, several 1 MiB chunks, still sendable inline
    base = emulator.base_url
    asset_id = upload_multipart(http, base, MP4)
    fixed = {"segmentation": {"strategy": "fixed", "fixed": {"duration_sec": 3}}}

    by_asset = run_task(http, base, av_body("video", {"asset_id": asset_id}, **fixed))
    inline = run_task(http, base, av_body("video", {"base64_string": b64(MP4)}, **fixed))
    assert by_asset["data"] == inline["data"]
    assert len(by_asset["data"]) == 3 * (3 + 1)  # 3 options x (3 clips + asset)
    assert without_name(by_asset["metadata"]) == without_name(inline["metadata"])
    assert by_asset["metadata"]["duration"] == pytest.approx(8.0, abs=0.05)
    assert by_asset["metadata"]["input_filename"] == "clip.mp4"

    # 3.5 task with a range, sync 3.0 and a 3.5 multi_input source: the same again.
    ranged = {"start_sec": 2.5, "end_sec": 7.0}
    assert run_task(http, base, av_body("video", {"asset_id": asset_id}, "marengo3.5", **ranged)
                    )["data"] == run_task(http, base, av_body(
                        "video", {"base64_string": b64(MP4)}, "marengo3.5", **ranged))["data"]
    sync = [http.post(base + "/embed-v2", headers=KEY, timeout=60,
                      json=av_body("video", source)).json()
            for source in ({"asset_id": asset_id}, {"base64_string": b64(MP4)})]
    assert sync[0]["data"] == sync[1]["data"] and len(sync[0]["data"]) > 3
    multi = [http.post(base + "/embed-v2", headers=KEY, timeout=60, json={
        "input_type": "multi_input", "model_name": "marengo3.5", "multi_input": {
            "input_text": "a noisy scroll", "media_sources": [{"media_type": "video", **source}]}}
    ).json() for source in ({"asset_id": asset_id}, {"base64_string": b64(MP4)})]
    assert multi[0]["data"] == multi[1]["data"]

    # The content keys (file hashed in blocks) equal the inline bytes' keys.
    stats = emulator.stats()
    assert stats["task_keys"][v2_key("marengo3.0", "video", MP4)] == 2
    assert stats["task_keys"][v2_key("marengo3.5", "video", MP4, 2.5, 7.0)] == 2
    assert stats["item_keys"][v2_key("marengo3.0", "video", MP4)] == 2
    assert stats["item_keys"][v2_key("marengo3.5", "multi_input", b"a noisy scroll\0" + MP4)] == 2


def test_audio_assets_decode_from_the_file_like_inline(http, emulator, tmp_path):
    wav = stereo_wav()
    flac = synth.flac_bytes(6.0, freq=500.0, sample_rate=44100)
    mp3 = synth.mp3_bytes(6.0, freq=700.0, sample_rate=44100)
    mp3_16k = synth.mp3_bytes(8.0, freq=300.0)  # libmpg123 reports bit-reservoir errors on it
    for name, data in (("s.wav", wav), ("t.flac", flac), ("t.mp3", mp3), ("u.mp3", mp3_16k)):
        path = tmp_path / name
        path.write_bytes(data)
        from_file, from_bytes = media.decode_audio(str(path)), media.decode_audio(data)
        assert from_file[1] == from_bytes[1]
        assert from_file[0].dtype == from_bytes[0].dtype
        assert np.array_equal(from_file[0], from_bytes[0]), name
        created = http.post(emulator.base_url + "/assets", headers=KEY, timeout=30,
                            data={"method": "direct"}, files={"file": (name, data)}).json()
        assert wait_asset(http, emulator.base_url, created["_id"])["status"] == "ready"
        by_asset = run_task(http, emulator.base_url, av_body("audio", {"asset_id": created["_id"]}))
        inline = run_task(http, emulator.base_url, av_body("audio", {"base64_string": b64(data)}))
        assert by_asset["data"] == inline["data"], name
        assert by_asset["metadata"]["duration"] == inline["metadata"]["duration"]
    assert len(stereo_wav()) // 4 > 4 * media.AUDIO_BLOCK_FRAMES  # several blocks were read


# ---- bigger than the old 200 MB cap, memory measured in a subprocess -------------------------------

def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


class Subprocess:
    """python -m embed_emulator from this tree, with its RSS readable."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "embed_emulator", "--port", "0", "--task-ready-after-sec", "0",
             "--asset-processing-sec", "0", *args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("EMULATOR_URL="), line
        self.base_url = line.strip().split("=", 1)[1]

    def rss_mb(self) -> float:
        return _status_kb(self.proc.pid, "VmRSS") / 1024

    def reset_peak(self) -> None:
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS

    def peak_mb(self) -> float:
        return _status_kb(self.proc.pid, "VmHWM") / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _embed_big(http, emu: Subprocess, asset_id: str, duration: float, size: int) -> dict:
    """Warm up (decoders, projection matrices), then one task on the big asset with the peak
    RSS reset just before it; returns the measurements."""
    run_task(http, emu.base_url, av_body("video", {"base64_string": b64(MP4)}))
    before = emu.rss_mb()
    emu.reset_peak()
    started = time.monotonic()
    task = run_task(http, emu.base_url, av_body("video", {"asset_id": asset_id}), timeout=120)
    seconds = time.monotonic() - started
    growth = emu.peak_mb() - before
    assert task["metadata"]["duration"] == pytest.approx(duration, abs=0.15)
    clips = len(task["data"]) // 3 - 1
    assert clips == int(np.ceil(duration / 4 - 1e-3))  # dynamic 4 s windows, 3 options + asset
    print(f"\nbig asset {size / MB:.0f} MiB: task in {seconds:.1f} s, RSS before {before:.0f} MiB, "
          f"peak growth {growth:.0f} MiB")
    # Reading the file would grow RSS by its size; the decoded content is small.
    assert growth < 0.4 * size / MB, growth
    return {"growth_mb": growth, "seconds": seconds}


@pytest.fixture(scope="module")
def big_avi(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("big") / "big.avi")
    duration = raw_avi(path, 250 * 1000 * 1000)
    yield path, duration
    os.unlink(path)


def test_a_250_mb_mapped_asset_embeds_by_task_without_reading_the_file(http, big_avi):
    path, duration = big_avi
    size = os.path.getsize(path)
    assert size > 200 * MB
    emu = Subprocess("--asset", f"big={path}")
    try:
        _embed_big(http, emu, "big", duration, size)
        # A sync call keeps its inline limit: 413 measured from the file's size, nothing read.
        sync = http.post(emu.base_url + "/embed-v2", headers=KEY, timeout=30,
                         json=av_body("video", {"asset_id": "big"}))
        assert sync.status_code == 413 and "exceeds maximum limit of 36 MB" in sync.text
    finally:
        emu.stop()


def test_a_250_mb_multipart_upload_embeds_by_task_without_reading_the_file(http, big_avi,
                                                                          tmp_path):
    path, duration = big_avi
    emu = Subprocess("--asset-chunk-size", str(32 * MB), "--asset-storage-dir", str(tmp_path))
    try:
        asset_id = upload_multipart(http, emu.base_url, path=path, filename="big.avi")
        _embed_big(http, emu, asset_id, duration, os.path.getsize(path))
    finally:
        emu.stop()
