"""Tests of the emulator's Embed API v2 (/v1.3/embed-v2 and /v1.3/embed-v2/tasks) over real HTTP
on 127.0.0.1, with `requests` and with the official SDK (twelvelabs 1.3.6)."""
from __future__ import annotations

import base64
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests

from embed_emulator import Emulator, EmulatorConfig, synth, vectors, video
from embed_emulator.stats import item_key, v2_key
from tests.helpers import loopback_http, started_emulators  # noqa: F401 (loopback_http: the `http` fixture)

MP4_12 = synth.mp4_bytes(12.0, seed=3)
MP4_6 = synth.mp4_bytes(6.0, seed=5)
PNG = synth.png_bytes(seed=1)
PNG2 = synth.png_bytes(seed=2)
WAV8 = synth.wav_bytes(8.0)
WAV5 = synth.wav_bytes(5.0, freq=660.0)
KEY = {"x-api-key": "k"}
ISO_MS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emulator():
    with Emulator(EmulatorConfig(task_ready_after_sec=0.2)) as running:
        yield running


@pytest.fixture
def make_emulator():
    yield from started_emulators(task_ready_after_sec=0.2)


class _Files(BaseHTTPRequestHandler):
    files: dict = {}

    def do_GET(self):
        data = self.files.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def media_url():
    _Files.files = {"/clip.mp4": MP4_12, "/cat.png": PNG, "/a.wav": WAV8}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
    server.shutdown()
    server.server_close()


def sync(http, emulator, body, key=KEY, **kw):
    return http.post(emulator.base_url + "/embed-v2", json=body, headers=key, timeout=30, **kw)


def create_task(http, emulator, body):
    return http.post(emulator.base_url + "/embed-v2/tasks", json=body, headers=KEY, timeout=30)


def get_task(http, emulator, task_id):
    return http.get(f"{emulator.base_url}/embed-v2/tasks/{task_id}", headers=KEY, timeout=10)


def wait_task(http, emulator, task_id, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = get_task(http, emulator, task_id).json()
        if body["status"] != "processing" or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def video_body(data=MP4_12, model="marengo3.0", **fields):
    return {"input_type": "video", "model_name": model,
            "video": {"media_source": {"base64_string": b64(data)}, **fields}}


def fixed(seconds):
    return {"strategy": "fixed", "fixed": {"duration_sec": seconds}}


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# ---- helpers of the package ---------------------------------------------------------------

def test_synth_mp4_is_small_deterministic_and_real():
    clip = synth.mp4_bytes(10.0)
    assert len(clip) < 200_000 and clip[4:8] == b"ftyp"
    assert clip == synth.mp4_bytes(10.0) != synth.mp4_bytes(10.0, seed=1)
    info = video.probe(clip)
    assert (info.width, info.height, info.has_audio, info.video_codec) == (360, 360, True, "h264")
    assert not video.probe(synth.mp4_bytes(2.0, with_audio=False)).has_audio


def test_probe_duration_from_bytes_and_path(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(MP4_12)
    assert video.probe_duration(MP4_12) == pytest.approx(12.0, abs=0.1)
    assert video.probe_duration(str(path)) == pytest.approx(12.0, abs=0.1)
    assert video.probe_duration(path) == pytest.approx(12.0, abs=0.1)
    assert video.probe_duration(WAV8) == pytest.approx(8.0, abs=0.05)
    with pytest.raises(video.VideoError):
        video.probe_duration(b"not a video at all" * 10)


def test_decoded_frames_change_over_time():
    decoded = video.decode(MP4_12)
    first, last = decoded.frames_between(0, 4), decoded.frames_between(8, 12)
    assert len(first) == 8 and decoded.has_audio  # 2 sampled frames per second
    assert np.abs(first.mean(axis=0) - last.mean(axis=0)).mean() > 10


# ---- sync: marengo3.0 -----------------------------------------------------------------------

def test_text_on_30_equals_v1_vector(emulator, http):
    response = sync(http, emulator, {"input_type": "text", "model_name": "marengo3.0",
                                     "text": {"input_text": "a dog in the park"}})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"data"}  # text: no metadata, and 3.0 has no usage
    [entry] = body["data"]
    assert entry["embedding"] == vectors.text_vector("a dog in the park", "marengo3.0")
    assert len(entry["embedding"]) == 512
    assert math.isclose(np.linalg.norm(entry["embedding"]), 1.0, abs_tol=1e-5)
    assert {k: entry[k] for k in ("embedding_option", "embedding_scope", "start_sec", "end_sec")} \
        == {"embedding_option": None, "embedding_scope": None, "start_sec": None, "end_sec": None}


def test_image_by_base64_url_and_asset_give_one_vector(emulator, http, media_url, tmp_path,
                                                        make_emulator):
    by_b64 = sync(http, emulator, {"input_type": "image", "model_name": "marengo3.0",
                                   "image": {"media_source": {"base64_string": b64(PNG)}}}).json()
    url = media_url("/cat.png")
    by_url = sync(http, emulator, {"input_type": "image", "model_name": "marengo3.0",
                                   "image": {"media_source": {"url": url}}}).json()
    assert by_b64["metadata"] == {"input_type": "image"}
    assert by_url["metadata"] == {"input_type": "image", "input_url": url}
    assert by_b64["data"][0]["embedding"] == by_url["data"][0]["embedding"] == \
        vectors.image_vector(PNG, "marengo3.0")
    (tmp_path / "cat.png").write_bytes(PNG)
    with_assets = make_emulator(assets={"asset-1": str(tmp_path / "cat.png")})
    by_asset = sync(http, with_assets, {"input_type": "image", "model_name": "marengo3.0",
                                        "image": {"media_source": {"asset_id": "asset-1"}}})
    assert by_asset.json()["data"][0]["embedding"] == by_b64["data"][0]["embedding"]
    assert by_asset.json()["metadata"] == {"input_type": "image", "input_filename": "cat.png"}
    unknown = sync(http, with_assets, {"input_type": "image", "model_name": "marengo3.0",
                                       "image": {"media_source": {"asset_id": "nope"}}})
    assert unknown.status_code == 400 and error_of(unknown)["code"] == "resource_not_exist"


def test_text_image_is_close_to_both_parts(emulator, http):
    body = sync(http, emulator, {"input_type": "text_image", "model_name": "marengo3.0",
                                 "text_image": {"input_text": "red car",
                                                "media_source": {"base64_string": b64(PNG)}}}).json()
    vec = body["data"][0]["embedding"]
    assert body["metadata"] == {"input_type": "text_image"}
    assert cosine(vec, vectors.text_vector("red car", "marengo3.0")) > 0.5
    assert cosine(vec, vectors.image_vector(PNG, "marengo3.0")) > 0.5


def test_audio_segments_options_and_v1_equality(emulator, http):
    response = sync(http, emulator, {"input_type": "audio", "model_name": "marengo3.0", "audio": {
        "media_source": {"base64_string": b64(WAV8)}, "segmentation": fixed(3)}})
    assert response.status_code == 200
    body = response.json()
    got = [(d["embedding_option"], d["embedding_scope"], d["start_sec"], d["end_sec"])
           for d in body["data"]]
    spans = [("clip", 0.0, 3.0), ("clip", 3.0, 6.0), ("clip", 6.0, 8.0), ("asset", 0.0, 8.0)]
    assert got == [(option, *span) for option in ("audio", "transcription") for span in spans]
    assert body["metadata"] == {"input_type": "audio", "embedding_options": ["audio", "transcription"],
                                "embedding_scopes": ["clip", "asset"], "duration": 8.0,
                                "start_offset_sec": 0.0, "end_offset_sec": 8.0}
    # a 3.0 audio clip vector is v1's audio segment vector of the same span
    v1 = vectors.audio_segment_vectors(WAV8, "marengo3.0", segment_sec=3.0)
    assert [d["embedding"] for d in body["data"][:3]] == [v for *_, v in v1]
    assert body["data"][0]["embedding"] != body["data"][4]["embedding"]  # audio != transcription


def test_video_12s_fixed_4_gives_3_clips_per_option_plus_asset(emulator, http, media_url):
    response = sync(http, emulator, {"input_type": "video", "model_name": "marengo3.0", "video": {
        "media_source": {"url": media_url("/clip.mp4")}, "segmentation": fixed(4)}})
    assert response.status_code == 200, response.text
    body = response.json()
    data = body["data"]
    assert len(data) == 3 * 4
    for option in ("visual", "audio", "transcription"):
        mine = [d for d in data if d["embedding_option"] == option]
        assert [(d["embedding_scope"], d["start_sec"], d["end_sec"]) for d in mine] == [
            ("clip", 0.0, 4.0), ("clip", 4.0, 8.0), ("clip", 8.0, 12.0), ("asset", 0.0, 12.0)]
        vecs = [d["embedding"] for d in mine]
        assert len({tuple(v) for v in vecs}) == 4  # every segment and the asset differ
        assert all(len(v) == 512 and math.isclose(np.linalg.norm(v), 1, abs_tol=1e-5) for v in vecs)
    by_key = {(d["embedding_option"], d["start_sec"], d["embedding_scope"]): d["embedding"] for d in data}
    assert by_key[("visual", 0.0, "clip")] != by_key[("audio", 0.0, "clip")] != \
        by_key[("transcription", 0.0, "clip")]
    assert body["metadata"] == {"input_type": "video", "input_url": media_url("/clip.mp4"),
                                "embedding_options": ["visual", "audio", "transcription"],
                                "embedding_scopes": ["clip", "asset"], "duration": 12.0,
                                "start_offset_sec": 0.0, "end_offset_sec": 12.0, "clip_length": 4}
    # content-derived: the same bytes sent another way give the same vectors
    again = sync(http, emulator, video_body(segmentation=fixed(4))).json()["data"]
    assert [d["embedding"] for d in again] == [d["embedding"] for d in data]


def test_video_clip_range_dynamic_and_fused(emulator, http):
    body = sync(http, emulator, video_body(start_sec=2, end_sec=10, segmentation=fixed(3),
                                           embedding_option=["visual"],
                                           embedding_scope=["clip"])).json()
    assert [(d["start_sec"], d["end_sec"]) for d in body["data"]] == [(2.0, 5.0), (5.0, 8.0), (8.0, 10.0)]
    assert body["metadata"]["start_offset_sec"] == 2.0 and body["metadata"]["end_offset_sec"] == 10.0
    dynamic = sync(http, emulator, video_body(
        segmentation={"strategy": "dynamic", "dynamic": {"min_duration_sec": 5}},
        embedding_option=["visual"], embedding_scope=["clip"])).json()
    # emulator choice: dynamic = fixed windows of min_duration_sec
    assert [(d["start_sec"], d["end_sec"]) for d in dynamic["data"]] == [(0.0, 5.0), (5.0, 10.0), (10.0, 12.0)]
    assert dynamic["metadata"]["clip_length"] == 5
    default = sync(http, emulator, video_body(embedding_option=["visual"], embedding_scope=["clip"]))
    assert len(default.json()["data"]) == 3  # default: dynamic, min 4 s
    fused = sync(http, emulator, video_body(segmentation=fixed(6), embedding_option=["visual", "audio"],
                                            embedding_type=["fused_embedding"])).json()["data"]
    assert [(d["embedding_option"], d["embedding_scope"]) for d in fused] == [
        ("fused", "clip"), ("fused", "clip"), ("fused", "asset")]
    both = sync(http, emulator, video_body(segmentation=fixed(6), embedding_option=["visual", "audio"],
                                           embedding_type=["separate_embedding", "fused_embedding"]))
    assert sorted({d["embedding_option"] for d in both.json()["data"]}) == ["audio", "fused", "visual"]


def test_multi_input_on_30_takes_images_only(emulator, http):
    ok = sync(http, emulator, {"input_type": "multi_input", "model_name": "marengo3.0", "multi_input": {
        "input_text": "a cat like <@c>", "media_sources": [
            {"name": "c", "media_type": "image", "base64_string": b64(PNG)}]}})
    assert ok.status_code == 200 and ok.json()["metadata"] == {"input_type": "multi_input"}
    assert "usage" not in ok.json() and len(ok.json()["data"][0]["embedding"]) == 512
    refused = sync(http, emulator, {"input_type": "multi_input", "model_name": "marengo3.0",
                                    "multi_input": {"media_sources": [
                                        {"media_type": "video", "base64_string": b64(MP4_6)}]}})
    assert refused.status_code == 400 and "marengo3.5" in error_of(refused)["message"]


# ---- sync: marengo3.5 -----------------------------------------------------------------------

def multi(sources=None, text=None, model="marengo3.5", **top):
    obj = {}
    if text is not None:
        obj["input_text"] = text
    if sources is not None:
        obj["media_sources"] = sources
    return {"input_type": "multi_input", "model_name": model, "multi_input": obj, **top}


def test_35_multi_input_every_media_type(emulator, http):
    sources = [{"name": "img", "media_type": "image", "base64_string": b64(PNG)},
               {"name": "vid", "media_type": "video", "base64_string": b64(MP4_6)},
               {"name": "snd", "media_type": "audio", "base64_string": b64(WAV5)},
               {"name": "doc", "media_type": "document", "base64_string": b64(b"# Notes\nA dog runs.")}]
    response = sync(http, emulator, multi(sources, "<@img> and <@vid> with <@snd>"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metadata"] == {"input_type": "multi_input", "embedding_dimension": 512}
    assert body["usage"]["truncated"] is False
    assert set(body["usage"]["input_tokens"]) == {"text", "image", "video", "audio", "document"}
    [entry] = body["data"]
    assert len(entry["embedding"]) == 512 and entry["embedding_option"] is None
    # one source alone: its own vector (text on 3.5 differs from 3.0: another model)
    text_only = sync(http, emulator, multi(text="a dog")).json()["data"][0]["embedding"]
    assert text_only == vectors.v2_text("a dog", "marengo3.5").tolist()
    assert text_only != vectors.text_vector("a dog", "marengo3.0")
    for kind, data in (("video", MP4_6), ("audio", WAV5), ("image", PNG)):
        one = sync(http, emulator, multi([{"media_type": kind, "base64_string": b64(data)}]))
        assert one.status_code == 200 and len(one.json()["data"]) == 1


def test_35_on_other_input_types_is_400(emulator, http):
    response = sync(http, emulator, {"input_type": "text", "model_name": "marengo3.5",
                                     "text": {"input_text": "hi"}})
    assert response.status_code == 400
    err = error_of(response)
    assert err["code"] == "parameter_invalid" and "multi_input" in err["message"]


@pytest.mark.parametrize("dims", [128, 256])
def test_matryoshka_prefixes_and_uncertainty(emulator, http, dims):
    full = sync(http, emulator, multi([{"media_type": "image", "base64_string": b64(PNG)}],
                                      embedding_uncertainty=True)).json()["data"][0]
    short = sync(http, emulator, multi([{"media_type": "image", "base64_string": b64(PNG)}],
                                       embedding_dimension=dims, embedding_uncertainty=True)).json()
    assert short["metadata"]["embedding_dimension"] == dims
    entry = short["data"][0]
    assert len(entry["embedding"]) == dims and entry["embedding"] == full["embedding"][:dims]
    assert entry["embedding_uncertainty"] == full["embedding_uncertainty"][:dims]
    assert len(full["embedding"]) == len(full["embedding_uncertainty"]) == 512
    assert math.isclose(np.linalg.norm(full["embedding"]), 1.0, abs_tol=1e-5)
    assert all(0 < u <= 1 for u in full["embedding_uncertainty"])
    as_string = sync(http, emulator, multi(text="x", embedding_dimension=str(dims)))
    assert as_string.status_code == 200  # the spec's string enum is accepted too


def test_auto_truncate_and_token_limits(emulator, http):
    long_text = " ".join(f"w{i}" for i in range(2100))
    refused = sync(http, emulator, multi(text=long_text))
    assert refused.status_code == 400 and "2000" in error_of(refused)["message"]
    cut = sync(http, emulator, multi(text=long_text, auto_truncate=True)).json()
    assert cut["usage"] == {"input_tokens": {"text": 2000}, "truncated": True,
                            "truncation_reason": "model_context_window"}
    kept = " ".join(f"w{i}" for i in range(2000))
    assert cut["data"][0]["embedding"] == vectors.v2_text(kept, "marengo3.5").tolist()
    too_long_30 = sync(http, emulator, {"input_type": "text", "model_name": "marengo3.0",
                                        "text": {"input_text": " ".join(["w"] * 501)}})
    assert too_long_30.status_code == 400 and "500" in error_of(too_long_30)["message"]


@pytest.mark.parametrize("body,code,needle", [
    ({"input_type": "text", "model_name": "marengo3.0", "embedding_dimension": 256,
      "text": {"input_text": "x"}}, "parameter_invalid", "`embedding_dimension`"),
    ({"input_type": "text", "model_name": "marengo3.0", "embedding_uncertainty": True,
      "text": {"input_text": "x"}}, "parameter_invalid", "`embedding_uncertainty`"),
    (multi(text="x", embedding_dimension=300), "parameter_invalid", "`embedding_dimension`"),
    ({"input_type": "text", "model_name": "marengo2.7", "text": {"input_text": "x"}},
     "parameter_invalid", "`model_name`"),
    ({"input_type": "text", "text": {"input_text": "x"}}, "parameter_not_provided", "`model_name`"),
    ({"input_type": "text", "model_name": "marengo3.0"}, "parameter_not_provided", "`text`"),
    ({"input_type": "text", "model_name": "marengo3.0", "text": {"input_text": "x"}, "foo": 1},
     "parameter_unknown", "`foo`"),
    (video_body(segmentation=fixed(11)), "parameter_invalid", "duration_sec"),
    (video_body(segmentation=fixed(1)), "parameter_invalid", "duration_sec"),
    (video_body(segmentation={"strategy": "dynamic", "dynamic": {"min_duration_sec": 6}}),
     "parameter_invalid", "min_duration_sec"),
    (video_body(segmentation={"strategy": "fixed"}), "parameter_not_provided", "segmentation.fixed"),
    (video_body(segmentation={"temporal": fixed(4)}), "parameter_invalid", "temporal"),
    ({"input_type": "audio", "model_name": "marengo3.0", "audio": {
        "media_source": {"base64_string": b64(WAV8)},
        "segmentation": {"strategy": "dynamic", "dynamic": {"min_duration_sec": 3}}}},
     "parameter_invalid", "strategy"),
    (video_body(embedding_option=["visual"], embedding_type=["fused_embedding"]),
     "parameter_invalid", "fused_embedding"),
    (video_body(start_sec=5, end_sec=3), "parameter_invalid", "end_sec"),
    (video_body(start_sec=13), "parameter_invalid", "start_sec"),
    (multi([{"media_type": "image", "base64_string": b64(PNG)},
            {"media_type": "video", "base64_string": b64(MP4_6)}]), "parameter_invalid", "input_text"),
    (multi([{"media_type": "image", "base64_string": b64(PNG)}] * 11, "x"), "parameter_invalid",
     "at most 10"),
    (multi([{"name": "a", "media_type": "image", "base64_string": b64(PNG)}], "see <@b>"),
     "parameter_invalid", "<@b>"),
    (multi([{"media_type": "document", "base64_string": b64(b"some text.")}], "more text"),
     "parameter_invalid", "all text"),
    (multi([{"media_type": "image", "base64_string": b64(PNG)}], "x", embedding_uncertainty=True),
     "parameter_invalid", "embedding_uncertainty"),
    (multi([{"media_type": "image", "url": "http://127.0.0.1:9/a.png", "base64_string": "AA=="}]),
     "parameter_invalid", "exactly one"),
    (multi([{"media_type": "image", "base64_string": "!!!not base64"}]), "parameter_invalid", "base64"),
    (multi([{"media_type": "image", "base64_string": b64(synth.png_bytes(64, 64))}]),
     "parameter_invalid", "128x128"),
    (video_body(data=synth.mp4_bytes(2.0, width=320, height=320)), "parameter_invalid", "resolution"),
    (video_body(data=synth.mp4_bytes(2.0, width=880, height=360)), "parameter_invalid", "aspect"),
    (video_body(data=WAV8), "parameter_invalid", "video"),
])
def test_sync_validation_errors(emulator, http, body, code, needle):
    response = sync(http, emulator, body)
    assert response.status_code == 400, response.text
    err = error_of(response)
    assert err["code"] == code and needle in err["message"], err


def test_413_duration_and_size(make_emulator, http):
    short_limit = make_emulator(max_sync_media_sec_30=10)
    too_long = sync(http, short_limit, video_body())
    assert too_long.status_code == 413
    assert error_of(too_long)["message"] == \
        "Duration (12.0 seconds) exceeds maximum limit of 10 seconds (0 minutes)."
    assert sync(http, short_limit, video_body(data=MP4_6)).status_code == 200
    long_35 = sync(http, short_limit, multi([{"media_type": "video",
                                              "base64_string": b64(synth.mp4_bytes(31.0))}]))
    assert long_35.status_code == 413 and "Duration (31.0 seconds)" in error_of(long_35)["message"]
    huge = "A" * (36 * 2**20 + 4)
    too_big = sync(http, short_limit, {"input_type": "video", "model_name": "marengo3.0",
                                       "video": {"media_source": {"base64_string": huge}}})
    assert too_big.status_code == 413 and "36 MB" in error_of(too_big)["message"]
    big_image = sync(http, short_limit, {"input_type": "image", "model_name": "marengo3.0",
                                         "image": {"media_source": {"base64_string": huge[:33 * 2**20]}}})
    assert big_image.status_code == 413 and "32 MB" in error_of(big_image)["message"]
    as_task = create_task(http, short_limit, {"input_type": "video", "model_name": "marengo3.0",
                                              "video": {"media_source": {"base64_string": huge}}})
    assert as_task.status_code == 400 and "36 MB" in error_of(as_task)["message"]  # no 413 on tasks


# ---- async tasks ----------------------------------------------------------------------------

def test_task_lifecycle_30_video(emulator, http, media_url):
    url = media_url("/clip.mp4")
    created = create_task(http, emulator, {"input_type": "video", "model_name": "marengo3.0",
                                           "video": {"media_source": {"url": url},
                                                     "segmentation": fixed(4)}})
    assert created.status_code == 202
    body = created.json()
    assert body["status"] == "processing" and body["data"] is None and "metadata" not in body
    first = get_task(http, emulator, body["_id"]).json()
    assert first["status"] == "processing" and first["data"] is None
    assert re.fullmatch(ISO_MS, first["created_at"])
    done = wait_task(http, emulator, body["_id"])
    assert done["status"] == "ready" and "error" not in done and "usage" not in done
    assert len(done["data"]) == 12
    assert done["metadata"]["input_type"] == "video" and done["metadata"]["input_url"] == url
    assert done["updated_at"] >= done["created_at"]
    # the task's vectors equal the sync call's for the same input
    sync_data = sync(http, emulator, video_body(segmentation=fixed(4))).json()["data"]
    assert [d["embedding"] for d in done["data"]] == [d["embedding"] for d in sync_data]


def test_task_defaults_30_audio_and_35_temporal(emulator, http):
    audio = wait_task(http, emulator, create_task(http, emulator, {
        "input_type": "audio", "model_name": "marengo3.0",
        "audio": {"media_source": {"base64_string": b64(WAV8)}}}).json()["_id"])
    clips = [(d["start_sec"], d["end_sec"]) for d in audio["data"]
             if d["embedding_option"] == "audio" and d["embedding_scope"] == "clip"]
    assert clips == [(0.0, 6.0), (6.0, 8.0)]  # 3.0 audio default: fixed 6 s
    created = create_task(http, emulator, {
        "input_type": "video", "model_name": "marengo3.5", "embedding_dimension": 128,
        "video": {"media_source": {"base64_string": b64(MP4_6)}}})
    assert created.status_code == 202 and created.json()["metadata"] == {"embedding_dimension": 128}
    done = wait_task(http, emulator, created.json()["_id"])
    assert {d["embedding_option"] for d in done["data"]} == {"visual", "audio"}  # no transcription
    clips = [(d["start_sec"], d["end_sec"]) for d in done["data"]
             if d["embedding_option"] == "visual" and d["embedding_scope"] == "clip"]
    assert clips == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]  # 3.5 default: dynamic 2
    assert all(len(d["embedding"]) == 128 for d in done["data"])
    assert done["usage"]["input_tokens"]["video"] > 0 and done["metadata"]["embedding_dimension"] == 128
    fixed_35 = create_task(http, emulator, {
        "input_type": "video", "model_name": "marengo3.5",
        "video": {"media_source": {"base64_string": b64(MP4_6)}, "segmentation": {"temporal": fixed(3)},
                  "embedding_scope": ["local"]}})
    data = wait_task(http, emulator, fixed_35.json()["_id"])["data"]
    assert {(d["embedding_scope"], d["start_sec"]) for d in data} == {("clip", 0.0), ("clip", 3.0)}


def test_task_image_and_document_on_35(emulator, http):
    image = wait_task(http, emulator, create_task(http, emulator, {
        "input_type": "image", "model_name": "marengo3.5",
        "image": {"media_source": {"base64_string": b64(PNG)}}}).json()["_id"])
    assert [(d["embedding_option"], d["embedding_scope"]) for d in image["data"]] == [("visual", "asset")]
    text = "One sentence. Two sentence! Three? Four. Five."
    doc = wait_task(http, emulator, create_task(http, emulator, {
        "input_type": "document", "model_name": "marengo3.5",
        "document": {"media_source": {"base64_string": b64(text.encode())}, "embedding_scope": ["local"],
                     "segmentation": {"sequential": {"strategy": "sentence", "max_sentences": 2,
                                                     "overlap_sentences": 1}}}}).json()["_id"])
    assert [d["chunk_index"] for d in doc["data"]] == [0, 1, 2, 3]
    assert doc["data"][0]["embedding"] == vectors.v2_text("One sentence. Two sentence!", "marengo3.5").tolist()
    for body in ({"input_type": "image", "model_name": "marengo3.0",
                  "image": {"media_source": {"base64_string": b64(PNG)}}},
                 {"input_type": "image", "model_name": "marengo3.5",
                  "image": {"media_source": {"base64_string": b64(PNG)}, "embedding_scope": ["clip"]}},
                 {"input_type": "document", "model_name": "marengo3.5",
                  "document": {"media_source": {"base64_string": b64(b"%PDF-1.4 ...")}}}):
        assert create_task(http, emulator, body).status_code == 400


def test_35_fused_needs_time_based_metadata_and_folds_it_in(emulator, http):
    def body(entries):
        video_obj = {"media_source": {"base64_string": b64(MP4_6)},
                     "segmentation": {"temporal": fixed(3)}, "embedding_scope": ["clip"],
                     "embedding_type": ["fused_embedding"]}
        if entries is not None:
            video_obj["time_based_metadata"] = entries
        return {"input_type": "video", "model_name": "marengo3.5", "video": video_obj}

    refused = create_task(http, emulator, body(None))
    assert refused.status_code == 400 and "time_based_metadata" in error_of(refused)["message"]
    runs = []
    for text in ("a goal is scored", "the referee whistles"):
        task_id = create_task(http, emulator, body([{"start": 0.5, "end": 1.0, "text": text}])).json()["_id"]
        runs.append(wait_task(http, emulator, task_id)["data"])
    assert [(d["embedding_option"], d["start_sec"]) for d in runs[0]] == [("fused", 0.0), ("fused", 3.0)]
    assert runs[0][0]["embedding"] != runs[1][0]["embedding"]  # the entry overlaps segment 0 only
    assert runs[0][1]["embedding"] == runs[1][1]["embedding"]


@pytest.mark.parametrize("body,needle", [
    ({"input_type": "video", "model_name": "marengo3.5", "video": {
        "media_source": {"base64_string": b64(MP4_6)}, "segmentation": fixed(4)}}, "temporal"),
    ({"input_type": "video", "model_name": "marengo3.0", "video": {
        "media_source": {"base64_string": b64(MP4_6)}, "segmentation": {"temporal": fixed(4)}}}, "temporal"),
    ({"input_type": "video", "model_name": "marengo3.5", "embedding_uncertainty": True, "video": {
        "media_source": {"base64_string": b64(MP4_6)}}}, "asset"),
    ({"input_type": "video", "model_name": "marengo3.5", "video": {
        "media_source": {"base64_string": b64(MP4_6)}, "embedding_option": ["transcription"]}},
     "embedding_option"),
    ({"input_type": "audio", "model_name": "marengo3.0", "audio": {
        "media_source": {"base64_string": b64(synth.wav_bytes(3.0))}}}, "between 4 seconds"),
    ({"input_type": "text", "model_name": "marengo3.0", "text": {"input_text": "x"}}, "input_type"),
])
def test_task_validation_errors(emulator, http, body, needle):
    response = create_task(http, emulator, body)
    assert response.status_code == 400, response.text
    assert needle in error_of(response)["message"]


def test_task_failure_unknown_id_and_retention(make_emulator, http):
    failing = make_emulator(task_failure_rate=1.0, seed=4, task_retention_sec=0.8)
    task_id = create_task(http, failing, video_body(data=MP4_6)).json()["_id"]
    done = wait_task(http, failing, task_id)
    assert done["status"] == "failed" and done["data"] is None
    assert done["error"]["message"] and "usage" not in done
    missing = get_task(http, failing, "0123456789abcdef01234567")
    assert missing.status_code == 404 and error_of(missing)["code"] == "resource_not_exist"
    time.sleep(0.9)
    assert get_task(http, failing, task_id).status_code == 404
    listed = http.get(failing.base_url + "/embed-v2/tasks", headers=KEY).json()
    assert listed["data"] == [] and listed["page_info"]["total_results"] == 0
    stats = failing.stats()["tasks"]
    assert stats["created"] == 1 and stats["failed"] == 1 and stats["ready"] == 0


def test_task_failure_rate_is_seeded(make_emulator, http):
    runs = []
    for _ in range(2):
        running = make_emulator(task_failure_rate=0.5, seed=11, task_ready_after_sec=0.0)
        ids = [create_task(http, running, {"input_type": "audio", "model_name": "marengo3.0", "audio": {
            "media_source": {"base64_string": b64(WAV5)}}}).json()["_id"] for _ in range(8)]
        runs.append([wait_task(http, running, i)["status"] for i in ids])
    assert runs[0] == runs[1] and set(runs[0]) == {"ready", "failed"}


def test_task_list_paging_filters_and_order(make_emulator, http):
    running = make_emulator(task_ready_after_sec=60)
    body = {"input_type": "audio", "model_name": "marengo3.0",
            "audio": {"media_source": {"base64_string": b64(WAV5)}}}
    ids = [create_task(http, running, body).json()["_id"] for _ in range(55)]
    url = running.base_url + "/embed-v2/tasks"
    default = http.get(url, headers=KEY).json()
    assert default["page_info"] == {"limit_per_page": 10, "page": 1, "total_page": 6, "total_results": 55}
    assert [t["_id"] for t in default["data"]] == ids[::-1][:10]  # newest first
    item = default["data"][0]
    assert set(item) == {"_id", "model_name", "status", "created_at", "updated_at", "audio_embedding"}
    assert item["status"] == "processing" and item["model_name"] == "marengo3.0"
    assert item["audio_embedding"]["metadata"]["audio_embedding_option"] == ["audio", "transcription"]
    pages = [http.get(url, params={"page": p, "page_limit": 50}, headers=KEY).json() for p in (1, 2, 3)]
    assert [len(p["data"]) for p in pages] == [50, 5, 0]
    assert [t["_id"] for p in pages for t in p["data"]] == ids[::-1]
    assert pages[2]["page_info"]["total_page"] == 2
    assert http.get(url, params={"status": "ready"}, headers=KEY).json()["data"] == []
    future = http.get(url, params={"started_at": "2999-01-01T00:00:00Z"}, headers=KEY).json()
    assert future["page_info"]["total_results"] == 0
    for params in ({"page_limit": 51}, {"page": 0}, {"status": "done"}, {"started_at": "yesterday"}):
        bad = http.get(url, params=params, headers=KEY)
        assert bad.status_code == 400 and set(bad.json()) == {"code", "message"}  # flat, per the spec


# ---- limits, faults, stats --------------------------------------------------------------------

def test_v2_429_headers_and_shared_request_limit(make_emulator, http):
    limited = make_emulator(requests_per_minute=3)
    v1 = http.post(limited.base_url + "/embed", files={"model_name": (None, "marengo3.0"),
                                                       "text": (None, "a")}, headers=KEY)
    assert v1.status_code == 200
    task_id = create_task(http, limited, video_body(data=MP4_6)).json()["_id"]
    assert get_task(http, limited, task_id).status_code == 200  # a poll takes a slot too
    refused = get_task(http, limited, task_id)
    assert refused.status_code == 429
    assert error_of(refused)["code"] == "too_many_requests"
    assert refused.headers["X-Ratelimit-Dimensions"] == "rpm"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    v1_refused = http.post(limited.base_url + "/embed", files={"model_name": (None, "marengo3.0"),
                                                               "text": (None, "a")}, headers=KEY)
    assert v1_refused.status_code == 429 and v1_refused.json()["code"] == "too_many_requests"  # flat
    daily = make_emulator(requests_per_day=1, day_length_sec=3600)
    sync(http, daily, multi(text="x"))
    refused = sync(http, daily, multi(text="x"))
    assert refused.status_code == 429 and refused.headers["X-Ratelimit-Dimensions"] == "rpd"


def test_media_minutes_limits(make_emulator, http):
    hourly = make_emulator(media_minutes_per_hour=0.1)  # 6 s
    assert sync(http, hourly, video_body(segmentation=fixed(6))).status_code == 200  # crosses: completes
    refused = sync(http, hourly, video_body(data=MP4_6))
    assert refused.status_code == 429 and refused.headers["X-Ratelimit-Dimensions"] == "dph"
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert "0.1 media minutes per hour" in error_of(refused)["message"]
    refused_task = create_task(http, hourly, video_body(data=MP4_6))
    assert refused_task.status_code == 429
    assert sync(http, hourly, multi(text="text is not media")).status_code == 200
    stats = hourly.stats()
    assert stats["tasks"]["created"] == 0 and stats["media_seconds"] == 12.0
    assert stats["rate_limited"] == 2
    daily = make_emulator(media_minutes_per_day=0.05, day_length_sec=7200)
    assert create_task(http, daily, video_body(data=MP4_6)).status_code == 202
    refused = create_task(http, daily, video_body(data=MP4_6))
    assert refused.status_code == 429 and refused.headers["X-Ratelimit-Dimensions"] == "dpd"
    assert int(refused.headers["Retry-After"]) > 3600


def test_faults_and_latency_apply_to_v2(make_emulator, http):
    faulty = make_emulator(fault_5xx_rate=1.0, seed=3)
    statuses = set()
    for _ in range(8):
        response = sync(http, faulty, multi(text="x"))
        statuses.add(response.status_code)
        if response.status_code == 500:
            assert error_of(response)["code"] == "internal_error"
    assert statuses <= {500, 502, 503} and faulty.stats()["faults"]["5xx"] == 8
    dropping = make_emulator(fault_drop_rate=1.0)
    with pytest.raises(requests.exceptions.ConnectionError):
        get_task(http, dropping, "x")
    burst = make_emulator(fault_429_burst_rate=1.0, fault_429_burst_sec=2.0)
    response = sync(http, burst, multi(text="x"))
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    assert response.headers["X-Ratelimit-Dimensions"] and error_of(response)["code"] == "too_many_requests"
    slow = make_emulator(latency_ms=150)
    started = time.perf_counter()
    assert sync(http, slow, multi(text="x")).status_code == 200
    assert time.perf_counter() - started >= 0.14


def test_auth_routes_and_bodies(emulator, http, make_emulator):
    keyed = make_emulator(api_keys={"good"})
    response = sync(http, keyed, multi(text="x"), key={"x-api-key": "bad"})
    assert response.status_code == 401 and error_of(response)["code"] == "api_key_invalid"
    assert http.get(emulator.base_url + "/embed-v2", headers=KEY).status_code == 405
    missing = http.post(emulator.base_url + "/embed-v2/other", headers=KEY)
    assert missing.status_code == 404 and error_of(missing)["code"] == "resource_not_exist"
    not_json = http.post(emulator.base_url + "/embed-v2", data=b"{nope", headers=KEY)
    assert not_json.status_code == 400 and "JSON" in error_of(not_json)["message"]
    v1_error = http.post(emulator.base_url + "/embed", files={"model_name": (None, "marengo3.0")},
                         headers=KEY)
    assert v1_error.status_code == 400 and set(v1_error.json()) == {"code", "message"}  # v1 stays flat


def test_stats_count_v2_calls_and_tasks(make_emulator, http):
    running = make_emulator()
    sync(http, running, {"input_type": "text", "model_name": "marengo3.0", "text": {"input_text": "hello"}})
    sync(http, running, video_body(data=MP4_6, segmentation=fixed(3)))
    sync(http, running, video_body(segmentation=fixed(20)))  # 400
    ids = [create_task(http, running, video_body(data=MP4_6)).json()["_id"] for _ in range(2)]
    create_task(http, running, {"input_type": "audio", "model_name": "marengo3.0",
                                "audio": {"media_source": {"base64_string": b64(WAV8)}, "start_sec": 1}})
    for task_id in ids:
        wait_task(http, running, task_id)
    stats = running.stats()
    assert stats["by_status"]["200"] >= 4 and stats["by_status"]["400"] == 1
    assert stats["by_status"]["202"] == 3 and stats["calls_ok"] == 2
    assert stats["items"]["text"] == 1 and stats["items"]["video"] == 1
    assert stats["item_keys"][item_key("marengo3.0", "text", "hello")] == 1
    assert stats["item_keys"][v2_key("marengo3.0", "video", MP4_6)] == 1
    assert stats["tasks"]["created"] == 3 and stats["tasks"]["polled"] >= 2
    assert stats["tasks"]["ready"] >= 2 and stats["tasks"]["failed"] == 0
    assert stats["task_keys"][v2_key("marengo3.0", "video", MP4_6)] == 2
    assert stats["task_keys"][v2_key("marengo3.0", "audio", WAV8, 1.0, None)] == 1
    over_http = http.get(f"http://127.0.0.1:{running.port}/emulator/stats").json()
    assert "task_keys" not in over_http and over_http["tasks"]["created"] == 3


def test_v1_still_works_on_the_same_server(emulator, http):
    response = http.post(emulator.base_url + "/embed", files={"model_name": (None, "marengo3.0"),
                                                              "text": (None, "a dog")}, headers=KEY)
    assert response.status_code == 200
    assert response.json()["text_embedding"]["segments"][0]["float"] == \
        vectors.text_vector("a dog", "marengo3.0")


# ---- the official SDK -----------------------------------------------------------------------

@pytest.fixture
def sdk(emulator, monkeypatch):
    from twelvelabs import TwelveLabs

    monkeypatch.delenv("TWELVELABS_BASE_URL", raising=False)  # it would override base_url
    return TwelveLabs(api_key="k", base_url=emulator.base_url)


def test_sdk_sync_responses(sdk):
    from twelvelabs.types import (MediaSource, MultiInputMediaSource, MultiInputRequest,
                                  TextInputRequest, VideoInputRequest, VideoSegmentation_Fixed,
                                  VideoSegmentationFixedFixed)

    text = sdk.embed.v_2.create(input_type="text", model_name="marengo3.0",
                                text=TextInputRequest(input_text="a cat"))
    assert text.data[0].embedding == vectors.text_vector("a cat", "marengo3.0")
    assert text.metadata is None and text.usage is None
    clip = sdk.embed.v_2.create(input_type="video", model_name="marengo3.0", video=VideoInputRequest(
        media_source=MediaSource(base_64_string=b64(MP4_12)),
        segmentation=VideoSegmentation_Fixed(fixed=VideoSegmentationFixedFixed(duration_sec=4))))
    assert len(clip.data) == 12 and clip.metadata.input_type == "video"
    assert clip.metadata.duration == 12.0 and clip.metadata.clip_length == 4
    assert {(d.embedding_option, d.embedding_scope) for d in clip.data} >= {("visual", "clip"),
                                                                           ("audio", "asset")}
    mixed = sdk.embed.v_2.create(
        input_type="multi_input", model_name="marengo3.5", embedding_dimension=256,
        multi_input=MultiInputRequest(input_text="a dog like <@d>", media_sources=[
            MultiInputMediaSource(name="d", media_type="image", base_64_string=b64(PNG))]))
    assert len(mixed.data[0].embedding) == 256 and mixed.metadata.embedding_dimension == 256
    assert mixed.usage.truncated is False and mixed.usage.input_tokens["image"] > 0


def test_sdk_tasks_create_retrieve_list(sdk, emulator):
    from twelvelabs.types import (AsyncTemporalSegmentation, AsyncVideoInputRequest, MediaSource,
                                  TemporalSegmentation_Fixed, TemporalSegmentationFixedFixed)

    created = sdk.embed.v_2.tasks.create(
        input_type="video", model_name="marengo3.5", embedding_dimension=512,
        video=AsyncVideoInputRequest(
            media_source=MediaSource(base_64_string=b64(MP4_6)),
            segmentation=AsyncTemporalSegmentation(temporal=TemporalSegmentation_Fixed(
                fixed=TemporalSegmentationFixedFixed(duration_sec=3)))))
    assert created.status == "processing" and created.id and created.data is None
    task = sdk.embed.v_2.tasks.retrieve(created.id)
    deadline = time.monotonic() + 10
    while task.status == "processing" and time.monotonic() < deadline:
        time.sleep(0.05)
        task = sdk.embed.v_2.tasks.retrieve(created.id)
    assert task.status == "ready" and task.created_at is not None
    assert task.metadata.input_type == "video" and task.metadata.embedding_dimension == 512
    assert len(task.data) == 6 and task.usage.input_tokens["video"] > 0
    listed = list(sdk.embed.v_2.tasks.list(page_limit=2))  # the pager asks page+1 until empty
    assert created.id in [t.id for t in listed]
    assert len(listed) == len({t.id for t in listed})
    mine = next(t for t in listed if t.id == created.id)
    assert mine.video_embedding.metadata.duration == pytest.approx(6.0)


def test_sdk_typed_errors(sdk, make_emulator, monkeypatch):
    from twelvelabs import TwelveLabs
    from twelvelabs.errors import (BadRequestError, ContentTooLargeError, NotFoundError,
                                   TooManyRequestsError)
    from twelvelabs.types import MediaSource, TextInputRequest, VideoInputRequest

    with pytest.raises(BadRequestError) as bad:
        sdk.embed.v_2.create(input_type="text", model_name="marengo3.5",
                             text=TextInputRequest(input_text="x"))
    assert bad.value.body["error"]["code"] == "parameter_invalid"
    with pytest.raises(NotFoundError):
        sdk.embed.v_2.tasks.retrieve("0123456789abcdef01234567")
    short = make_emulator(max_sync_media_sec_30=5, requests_per_minute=2)
    client = TwelveLabs(api_key="k", base_url=short.base_url)
    with pytest.raises(ContentTooLargeError) as too_large:
        client.embed.v_2.create(input_type="video", model_name="marengo3.0", video=VideoInputRequest(
            media_source=MediaSource(base_64_string=b64(MP4_6))))
    assert "Duration (6.0 seconds)" in too_large.value.body.error.message
    client.embed.v_2.create(input_type="text", model_name="marengo3.0",
                            text=TextInputRequest(input_text="x"))
    with pytest.raises(TooManyRequestsError) as limited:
        client.embed.v_2.create(input_type="text", model_name="marengo3.0",
                                text=TextInputRequest(input_text="x"))
    assert limited.value.headers["x-ratelimit-dimensions"] == "rpm"
