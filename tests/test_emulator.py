"""Tests of embed_emulator over real HTTP on 127.0.0.1, with `requests` (not the project client)."""
from __future__ import annotations

import io
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests
from PIL import Image

from embed_emulator import Emulator, EmulatorConfig, item_key, rules, serve, synth, vectors
from embed_emulator.limits import RateLimiter
from tests.helpers import loopback_http, started_emulators  # noqa: F401 (loopback_http: the `http` fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = [("marengo3.0", 512), ("marengo2.7", 1024)]
PNG = synth.png_bytes(seed=1)
JPEG = synth.jpeg_bytes(seed=1)
AUDIO = {"wav": synth.wav_bytes(2.0), "mp3": synth.mp3_bytes(2.0), "flac": synth.flac_bytes(2.0)}
WAV14 = synth.wav_bytes(14.0)
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


# ---- helpers and fixtures ---------------------------------------------------------------

def embed(session, base_url, model="marengo3.0", key="k", timeout=10, **fields):
    """POST /embed as multipart; file fields take (filename, bytes)."""
    parts = [] if model is None else [("model_name", (None, model))]
    for name, value in fields.items():
        parts.append((name, value if name.endswith("_file") else (None, str(value))))
    headers = {"x-api-key": key} if key else {}
    return session.post(base_url + "/embed", files=parts, headers=headers, timeout=timeout)


def first_vector(result: dict) -> list:
    return result["segments"][0]["float"]


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def root(emulator) -> str:
    return f"http://127.0.0.1:{emulator.port}"


@pytest.fixture(scope="module")
def emulator():
    with Emulator() as running:
        yield running


@pytest.fixture
def make_emulator():
    yield from started_emulators()


class _MediaServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class _MediaHandler(BaseHTTPRequestHandler):
    files: dict = {}

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(1.0)
        data = self.files.get(self.path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def media_url():
    """A local file server for image_url / audio_url; returns url(path)."""
    _MediaHandler.files = {"/cat.png": PNG, "/clip.wav": AUDIO["wav"], "/slow": PNG}
    server = _MediaServer(("127.0.0.1", 0), _MediaHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
    server.shutdown()
    server.server_close()


# ---- every input kind, both models -------------------------------------------------------

@pytest.mark.parametrize("model,dims", MODELS)
def test_text_vector_is_unit_deterministic_and_matches_library(emulator, http, model, dims):
    first = embed(http, emulator.base_url, model, text="a dog in the park")
    again = embed(http, emulator.base_url, model, text="a dog in the park")
    assert first.status_code == 200 and first.headers["Content-Type"] == "application/json"
    body = first.json()
    assert body["model_name"] == model and set(body) == {"model_name", "text_embedding"}
    assert "metadata" not in body["text_embedding"]
    vector = first_vector(body["text_embedding"])
    assert len(vector) == dims
    assert math.isclose(np.linalg.norm(vector), 1.0, abs_tol=1e-5)
    assert vector == first_vector(again.json()["text_embedding"])
    assert vector == vectors.text_vector("a dog in the park", model)


@pytest.mark.parametrize("model,dims", MODELS)
@pytest.mark.parametrize("filename,data", [("cat.png", PNG), ("cat.jpg", JPEG)])
def test_image_file(emulator, http, model, dims, filename, data):
    response = embed(http, emulator.base_url, model, image_file=(filename, data))
    assert response.status_code == 200
    result = response.json()["image_embedding"]
    assert result["metadata"] == {"input_filename": filename}
    assert len(first_vector(result)) == dims
    assert first_vector(result) == vectors.image_vector(data, model)


@pytest.mark.parametrize("model,dims", MODELS)
def test_image_url_wins_over_file(emulator, http, media_url, model, dims):
    url = media_url("/cat.png")
    response = embed(http, emulator.base_url, model, image_url=url,
                     image_file=("other.png", synth.png_bytes(seed=2)))
    result = response.json()["image_embedding"]
    assert result["metadata"] == {"input_url": url}
    assert first_vector(result) == vectors.image_vector(PNG, model)


@pytest.mark.parametrize("model,dims", MODELS)
@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac"])
def test_audio_file(emulator, http, model, dims, fmt):
    data = AUDIO[fmt]
    response = embed(http, emulator.base_url, model, audio_file=(f"clip.{fmt}", data))
    assert response.status_code == 200
    result = response.json()["audio_embedding"]
    assert result["metadata"] == {"input_filename": f"clip.{fmt}"}
    got = [(s["start_offset_sec"], s["end_offset_sec"], s["float"]) for s in result["segments"]]
    assert got == vectors.audio_segment_vectors(data, model)
    assert got[0][0] == 0.0 and math.isclose(got[-1][1], 2.0, abs_tol=0.1)
    assert all(len(v) == dims and math.isclose(np.linalg.norm(v), 1, abs_tol=1e-5) for *_, v in got)


@pytest.mark.parametrize("model,dims", MODELS)
def test_audio_url(emulator, http, media_url, model, dims):
    url = media_url("/clip.wav")
    result = embed(http, emulator.base_url, model, audio_url=url).json()["audio_embedding"]
    assert result["metadata"] == {"input_url": url}
    assert result["segments"][0]["float"] == vectors.audio_segment_vectors(AUDIO["wav"], model)[0][2]


@pytest.mark.parametrize("model,dims", MODELS)
def test_text_image_and_audio_in_one_call(emulator, http, model, dims):
    body = embed(http, emulator.base_url, model, text="hello", image_file=("a.jpg", JPEG),
                 audio_file=("a.flac", AUDIO["flac"])).json()
    assert set(body) == {"model_name", "text_embedding", "image_embedding", "audio_embedding"}
    for key in ("text_embedding", "image_embedding", "audio_embedding"):
        assert len(first_vector(body[key])) == dims


def test_chunked_request_body(emulator, http):
    prepared = requests.Request("POST", emulator.base_url + "/embed", files={
        "model_name": (None, "marengo3.0"), "text": (None, "chunky")}).prepare()
    chunks = (prepared.body[i:i + 50] for i in range(0, len(prepared.body), 50))
    response = http.post(emulator.base_url + "/embed", data=chunks, headers={
        "x-api-key": "k", "Content-Type": prepared.headers["Content-Type"]})
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert first_vector(response.json()["text_embedding"]) == vectors.text_vector("chunky", "marengo3.0")


def test_model_alias_shares_vectors(emulator, http):
    body = embed(http, emulator.base_url, "Marengo-retrieval-2.7", text="x y z").json()
    assert body["model_name"] == "Marengo-retrieval-2.7"
    assert first_vector(body["text_embedding"]) == vectors.text_vector("x y z", "marengo2.7")


# ---- vectors ---------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["marengo3.0", "marengo2.7"])
def test_similar_inputs_give_similar_vectors(model):
    mat, hat, stock = (vectors.text_vector(t, model)
                       for t in ("a cat on a mat", "a cat on a hat", "stock market report"))
    assert cosine(mat, hat) > 0.6 and cosine(mat, hat) > cosine(mat, stock) + 0.4
    png, jpeg, other = (vectors.image_vector(d, model) for d in (PNG, JPEG, synth.png_bytes(seed=2)))
    assert cosine(png, jpeg) > 0.95 and cosine(png, jpeg) > cosine(png, other) + 0.5
    wav, flac, high = (vectors.audio_segment_vectors(d, model)[0][2]
                       for d in (AUDIO["wav"], AUDIO["flac"], synth.wav_bytes(2.0, freq=1500.0)))
    assert cosine(wav, flac) > 0.95 and cosine(wav, flac) > cosine(wav, high) + 0.5


def test_synth_media_is_deterministic():
    assert synth.png_bytes(seed=3) == synth.png_bytes(seed=3) != synth.png_bytes(seed=4)
    assert synth.mp3_bytes(1.0) == synth.mp3_bytes(1.0) != synth.mp3_bytes(1.0, freq=880.0)
    assert synth.jpeg_bytes()[:3] == b"\xff\xd8\xff" and synth.flac_bytes()[:4] == b"fLaC"


# ---- text truncation ---------------------------------------------------------------------

WORDS = [f"word{i}" for i in range(600)]  # one token each


def test_count_tokens_approximation():
    assert rules.count_tokens("hello, world!") == 4
    assert rules.count_tokens("extraordinarily") == 3  # long words: one token per 4 characters
    assert rules.count_tokens(" ".join(WORDS[:77])) == 77


@pytest.mark.parametrize("mode,kept", [("end", WORDS[:77]), ("start", WORDS[23:100])])
def test_marengo27_truncates_to_77_tokens(emulator, http, mode, kept):
    response = embed(http, emulator.base_url, "marengo2.7", text=" ".join(WORDS[:100]),
                     text_truncate=mode)
    assert response.status_code == 200
    assert first_vector(response.json()["text_embedding"]) == \
        vectors.text_vector(" ".join(kept), "marengo2.7")


def test_marengo27_truncate_none_rejects_long_text(emulator, http):
    too_long = embed(http, emulator.base_url, "marengo2.7", text=" ".join(WORDS[:78]),
                     text_truncate="none")
    assert too_long.status_code == 400
    assert too_long.json() == {"code": "parameter_invalid", "message":
                               "The `text` parameter is invalid. The text token length should be "
                               "less than or equal to 77."}
    at_limit = embed(http, emulator.base_url, "marengo2.7", text=" ".join(WORDS[:77]),
                     text_truncate="none")
    assert at_limit.status_code == 200


def test_marengo30_truncates_at_500_tokens_from_the_end(emulator, http):
    response = embed(http, emulator.base_url, "marengo3.0", text=" ".join(WORDS),
                     text_truncate="none")  # deprecated on 3.0: it always truncates
    assert response.status_code == 200
    assert first_vector(response.json()["text_embedding"]) == \
        vectors.text_vector(" ".join(WORDS[:500]), "marengo3.0")


# ---- audio segments ----------------------------------------------------------------------

@pytest.mark.parametrize("model,bounds", [("marengo3.0", [(2.0, 8.0), (8.0, 14.0)]),
                                          ("marengo2.7", [(2.0, 12.0)])])
def test_audio_segments_start_at_offset(emulator, http, model, bounds):
    response = embed(http, emulator.base_url, model, audio_file=("long.wav", WAV14),
                     audio_start_offset_sec="2.0")
    segments = response.json()["audio_embedding"]["segments"]
    assert [(s["start_offset_sec"], s["end_offset_sec"]) for s in segments] == bounds
    expected = vectors.audio_segment_vectors(WAV14, model, start_offset_sec=2.0)
    assert [s["float"] for s in segments] == [v for *_, v in expected]


# ---- errors ------------------------------------------------------------------------------

def test_auth(make_emulator, http):
    open_emulator = make_emulator()
    missing = embed(http, open_emulator.base_url, key=None, text="hi")
    assert missing.status_code == 401 and missing.json()["code"] == "api_key_invalid"
    keyed = make_emulator(api_keys={"good"})
    assert embed(http, keyed.base_url, key="bad", text="hi").status_code == 401
    assert embed(http, keyed.base_url, key="good", text="hi").status_code == 200
    # auth comes before validation
    assert embed(http, keyed.base_url, key="bad", model="nope").status_code == 401


@pytest.mark.parametrize("model,fields,code,needle", [
    ("marengo3.0", {}, "parameter_not_provided", "`text`"),
    (None, {"text": "hi"}, "parameter_not_provided", "`model_name`"),
    ("marengo3.0", {"text": "hi", "foo": "1"}, "parameter_unknown", "`foo`"),
    ("marengo9", {"text": "hi"}, "parameter_invalid", "`model_name`"),
    ("marengo3.0", {"text": "   "}, "parameter_invalid", "`text`"),
    ("marengo3.0", {"audio_file": ("a.wav", AUDIO["wav"]), "audio_start_offset_sec": "-1"},
     "parameter_invalid", "`audio_start_offset_sec`"),
    ("marengo3.0", {"audio_file": ("a.wav", AUDIO["wav"]), "audio_start_offset_sec": "abc"},
     "parameter_invalid", "`audio_start_offset_sec`"),
])
def test_request_validation_errors(emulator, http, model, fields, code, needle):
    response = embed(http, emulator.base_url, model, **fields)
    assert response.status_code == 400
    assert response.json()["code"] == code and needle in response.json()["message"]


def test_bad_model_lists_valid_values_and_bad_truncate_message(emulator, http):
    message = embed(http, emulator.base_url, "gpt", text="hi").json()["message"]
    assert all(name in message for name in rules.MODEL_DIMS)
    response = embed(http, emulator.base_url, "marengo2.7", text="hi", text_truncate="middle")
    assert response.status_code == 400 and response.json() == {
        "code": "parameter_invalid", "message": "The `text_truncate` parameter is invalid. You "
        "should use one of the following values: `none`, `start`, `end`."}


def test_non_multipart_body_404_and_405(emulator, http):
    as_json = http.post(emulator.base_url + "/embed", json={"model_name": "marengo3.0", "text": "x"},
                        headers={"x-api-key": "k"})
    assert as_json.status_code == 400 and as_json.json()["code"] == "parameter_invalid"
    missing = http.post(emulator.base_url + "/search", headers={"x-api-key": "k"})
    assert missing.status_code == 404 and missing.json()["code"] == "resource_not_exist"
    assert http.get(emulator.base_url + "/embed").status_code == 405


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), "red").save(buffer, format="GIF")
    return buffer.getvalue()


@pytest.mark.parametrize("model,fields,message", [
    ("marengo3.0", {"image_file": ("small.png", synth.png_bytes(64, 64))},
     "The `image_file` parameter is invalid. The image must be at least 128x128 pixels."),
    ("marengo3.0", {"image_file": ("fake.png", _gif())}, "JPEG or PNG"),
    ("marengo3.0", {"image_file": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(6 * 2**20))}, "5 MB"),
    ("marengo3.0", {"image_file": ("broken.jpg", b"\xff\xd8\xff" + bytes(100))}, "decoded"),
    ("marengo3.0", {"image_url": "ftp://example.com/a.png"}, "`image_url`"),
    ("marengo3.0", {"image_url": "MEDIA/missing.png"}, "`image_url`"),
    ("marengo3.0", {"audio_file": ("a.txt", b"just text")}, "WAV, MP3 or FLAC"),
    ("marengo3.0", {"audio_file": ("a.wav", b"RIFF\0\0\0\0WAVE" + bytes(64))}, "`audio_file`"),
    ("marengo2.7", {"audio_file": ("a.wav", b"RIFF\0\0\0\0WAVE" + bytes(11 * 2**20))}, "10 MB"),
    ("marengo3.0", {"audio_file": ("a.wav", AUDIO["wav"]), "audio_start_offset_sec": "2.0"},
     "`audio_start_offset_sec`"),
])
def test_media_errors_fail_the_call_when_nothing_succeeds(emulator, http, media_url, model,
                                                          fields, message):
    fields = {k: (v.replace("MEDIA", media_url("")) if isinstance(v, str) else v)
              for k, v in fields.items()}
    response = embed(http, emulator.base_url, model, **fields)
    assert response.status_code == 400
    assert response.json()["code"] == "parameter_invalid" and message in response.json()["message"]


def test_fetch_timeout_names_the_field(make_emulator, http, media_url):
    fast = make_emulator(fetch_timeout_sec=0.2)
    response = embed(http, fast.base_url, audio_url=media_url("/slow"))
    assert response.status_code == 400 and "`audio_url`" in response.json()["message"]


def test_bad_modality_gets_error_message_while_others_succeed(emulator, http):
    response = embed(http, emulator.base_url, text="hello", audio_file=("a.wav", AUDIO["wav"]),
                     image_file=("small.png", synth.png_bytes(64, 64)))
    assert response.status_code == 200
    body = response.json()
    assert first_vector(body["text_embedding"]) == vectors.text_vector("hello", "marengo3.0")
    assert len(body["audio_embedding"]["segments"]) == 1
    image = body["image_embedding"]
    assert "segments" not in image and "128x128" in image["error_message"]
    assert image["metadata"] == {"input_filename": "small.png"}


# ---- rate limits -------------------------------------------------------------------------

def test_per_minute_limit(make_emulator, http):
    limited = make_emulator(requests_per_minute=3)
    answers = [embed(http, limited.base_url, text="a"),
               embed(http, limited.base_url, text="a", foo="x"),  # a 400 counts too
               embed(http, limited.base_url, text="a")]
    assert [r.status_code for r in answers] == [200, 400, 200]
    assert [r.headers["X-Ratelimit-Remaining"] for r in answers] == ["2", "1", "0"]
    assert answers[0].headers["X-Ratelimit-Limit"] == "3"
    assert answers[2].headers["X-Ratelimit-Used"] == "3"
    refused = embed(http, limited.base_url, text="a")
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_requests"
    assert re.fullmatch(r"You have exceeded the rate limit \(3 requests per minute\)\. Please try "
                        rf"again later after {ISO_UTC}\.", refused.json()["message"])
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-Ratelimit-Remaining"] == "0"
    assert 0 < int(refused.headers["X-Ratelimit-Reset"]) - time.time() <= 61
    # the refused request did not count: raising the limit to 4 admits exactly one more
    limited.configure(requests_per_minute=4)
    assert embed(http, limited.base_url, text="a").status_code == 200
    assert embed(http, limited.base_url, text="a").status_code == 429
    assert limited.stats()["rate_limited"] == 2


def test_daily_quota_has_a_far_reset(make_emulator, http):
    limited = make_emulator(requests_per_day=2, day_length_sec=3600)
    ok = [embed(http, limited.base_url, text="a") for _ in range(2)]
    assert [r.headers["X-Ratelimit-Limit"] for r in ok] == ["2", "2"]
    refused = embed(http, limited.base_url, text="a")
    assert refused.status_code == 429 and "(2 requests per day)" in refused.json()["message"]
    assert int(refused.headers["Retry-After"]) > 3000
    assert int(refused.headers["X-Ratelimit-Reset"]) - time.time() > 3000


def test_no_ratelimit_headers_when_unlimited(emulator, http):
    response = embed(http, emulator.base_url, text="a")
    assert not [h for h in response.headers if h.lower().startswith("x-ratelimit")]


def test_utc_day_window_resets_at_midnight():
    now = [86400 * 20000 + 3600.0]  # 01:00 UTC
    limiter = RateLimiter(clock=lambda: now[0])
    admission, _ = limiter.admit(None, 1, 86400)
    assert admission.headers["X-Ratelimit-Reset"] == str(86400 * 20001)
    _, refusal = limiter.admit(None, 1, 86400)
    assert refusal.retry_after_sec == 23 * 3600
    now[0] = 86400 * 20001 + 1
    assert limiter.admit(None, 1, 86400)[0] is not None


# ---- faults ------------------------------------------------------------------------------

def test_fault_drop_closes_without_answer(make_emulator, http):
    faulty = make_emulator(fault_drop_rate=1.0)
    with pytest.raises(requests.exceptions.ConnectionError):
        embed(http, faulty.base_url, text="a")
    assert faulty.stats()["faults"]["drop"] == 1


def test_fault_hang_times_out_the_client(make_emulator, http):
    faulty = make_emulator(fault_hang_rate=1.0, fault_hang_sec=0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        embed(http, faulty.base_url, text="a", timeout=0.2)
    assert faulty.stats()["faults"]["hang"] == 1


def test_fault_malformed_is_a_non_json_200(make_emulator, http):
    faulty = make_emulator(fault_malformed_rate=1.0, seed=1)
    for _ in range(3):
        response = embed(http, faulty.base_url, text="a")
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
        with pytest.raises(ValueError):
            response.json()


def test_fault_5xx(make_emulator, http):
    faulty = make_emulator(fault_5xx_rate=1.0, seed=3, requests_per_minute=2)
    responses = [embed(http, faulty.base_url, text="a") for _ in range(12)]
    assert {r.status_code for r in responses} <= {500, 502, 503}  # 5xx do not spend the quota
    for response in responses:
        if response.status_code == 500:
            assert response.json() == {"code": "internal_error", "message": response.json()["message"]}
        else:
            assert response.headers["Content-Type"] == "text/html"


def test_fault_429_burst(make_emulator, http):
    faulty = make_emulator(fault_429_burst_rate=1.0, fault_429_burst_sec=2.0)
    response = embed(http, faulty.base_url, text="a")
    assert response.status_code == 429 and response.json()["code"] == "too_many_requests"
    assert response.headers["Retry-After"] == "2"
    stats = faulty.stats()
    assert stats["faults"]["429_burst"] == 1 and stats["rate_limited"] == 0


def test_fault_modality_error(make_emulator, http):
    faulty = make_emulator(fault_modality_error_rate=1.0)
    body = embed(http, faulty.base_url, text="a", image_file=("a.png", PNG)).json()
    assert "error_message" in body["text_embedding"] and "segments" not in body["text_embedding"]
    assert body["image_embedding"]["metadata"] == {"input_filename": "a.png"}
    stats = faulty.stats()
    assert stats["faults"]["modality_error"] == 2 and stats["calls_ok"] == 0


def test_seeded_faults_replay(make_emulator, http):
    runs = []
    for _ in range(2):
        faulty = make_emulator(fault_5xx_rate=0.5, seed=7)
        runs.append([embed(http, faulty.base_url, text="a").status_code for _ in range(12)])
    assert runs[0] == runs[1] and {200} < set(runs[0])


def test_latency(make_emulator, http):
    slow = make_emulator(latency_ms=150)
    started = time.perf_counter()
    assert embed(http, slow.base_url, text="a").status_code == 200
    assert time.perf_counter() - started >= 0.14


# ---- stats and admin endpoints -----------------------------------------------------------

def test_stats_counts_calls_items_and_keys(make_emulator, http):
    fresh = make_emulator()
    base = fresh.base_url
    assert fresh.stats()["first_request_at"] is None
    before = time.time()
    embed(http, base, text="hello")
    first = fresh.stats()["first_request_at"]
    assert before <= first <= time.time()  # when the first call came: the bench's start-up is exact
    embed(http, base, text="hello", image_file=("a.png", PNG))
    embed(http, base, text="bye", image_file=("a.png", PNG), audio_file=("a.wav", AUDIO["wav"]))
    embed(http, base, text="hi", foo="bar")
    stats = fresh.stats()
    assert stats["requests"] == 4 and stats["by_status"] == {"200": 3, "400": 1}
    assert stats["calls_ok"] == 3
    assert stats["items"] == {"text": 3, "image": 2, "audio": 1}
    assert stats["items_per_call"] == {"1": 1, "2": 1, "3": 1}
    keys = stats["item_keys"]
    assert keys[item_key("marengo3.0", "text", "hello")] == 2
    assert keys[item_key("marengo3.0", "image", PNG)] == 2
    assert keys[item_key("marengo3.0", "audio", AUDIO["wav"], 0.0)] == 1
    over_http = http.get(root(fresh) + "/emulator/stats").json()
    assert "item_keys" not in over_http and over_http["items"] == stats["items"]
    assert http.get(root(fresh) + "/emulator/stats?detail=1").json() == stats
    assert http.post(root(fresh) + "/emulator/reset").status_code == 200
    assert fresh.stats()["requests"] == 0 and fresh.stats()["item_keys"] == {}
    assert fresh.stats()["first_request_at"] is None


def test_config_endpoint_and_configure(make_emulator, http):
    running = make_emulator()
    response = http.post(root(running) + "/emulator/config", json={"requests_per_minute": 1})
    assert response.status_code == 200 and response.json()["requests_per_minute"] == 1
    assert running.config.requests_per_minute == 1
    assert http.post(root(running) + "/emulator/config", json={"nope": 1}).status_code == 400
    with pytest.raises(ValueError):
        running.configure(fault_drop_rate=2.0)
    assert embed(http, running.base_url, text="a").status_code == 200
    assert embed(http, running.base_url, text="a").status_code == 429


def test_max_concurrent(make_emulator):
    slow = make_emulator(latency_ms=200)

    def call():
        with requests.Session() as session:
            session.trust_env = False
            embed(session, slow.base_url, text="a")

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert slow.stats()["max_concurrent"] >= 2


# ---- CLI, SDK, keep-alive ----------------------------------------------------------------

def test_cli_serves_until_sigterm():
    env = dict(os.environ, PYTHONPATH=REPO, EMULATOR_API_KEYS="other")
    process = subprocess.Popen([sys.executable, "-m", "embed_emulator", "--port", "0",
                                "--api-key", "secret"], stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "the CLI printed no URL"
        line = process.stdout.readline().decode().strip()
        assert re.fullmatch(r"EMULATOR_URL=http://127\.0\.0\.1:\d+/v1\.3", line)
        base_url = line.split("=", 1)[1]
        with requests.Session() as session:
            session.trust_env = False
            response = embed(session, base_url, key="secret", text="same everywhere")
            # another process, same vector: nothing depends on per-process hashing
            assert first_vector(response.json()["text_embedding"]) == \
                vectors.text_vector("same everywhere", "marengo3.0")
            assert embed(session, base_url, key="other", text="a").status_code == 200
            assert embed(session, base_url, key="wrong", text="a").status_code == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()


def test_official_sdk_parses_a_full_response(emulator, tmp_path):
    from twelvelabs import TwelveLabs

    image_path, audio_path = tmp_path / "cat.png", tmp_path / "clip.wav"
    image_path.write_bytes(PNG)
    audio_path.write_bytes(WAV14)
    client = TwelveLabs(api_key="k", base_url=emulator.base_url)
    with open(image_path, "rb") as image, open(audio_path, "rb") as audio:
        result = client.embed.create(model_name="marengo3.0", text="a cat", image_file=image,
                                     audio_file=audio, audio_start_offset_sec=2.0)
    assert result.model_name == "marengo3.0"
    assert result.text_embedding.segments[0].float_ == vectors.text_vector("a cat", "marengo3.0")
    assert result.image_embedding.metadata.input_filename == "cat.png"
    assert result.image_embedding.segments[0].float_ == vectors.image_vector(PNG, "marengo3.0")
    assert [(s.start_offset_sec, s.end_offset_sec) for s in result.audio_embedding.segments] == \
        [(2.0, 8.0), (8.0, 14.0)]
    assert result.audio_embedding.metadata.input_filename == "clip.wav"


def test_keep_alive_calls_are_fast(http):
    with serve() as running:
        embed(http, running.base_url, text="warm up")
        started = time.perf_counter()
        for i in range(50):
            assert embed(http, running.base_url, text=f"call {i}").status_code == 200
        elapsed = time.perf_counter() - started
    print(f"\n50 keep-alive calls in {elapsed:.3f} s ({50 / elapsed:.0f} calls/s)")
    assert elapsed < 2.0  # Nagle + delayed ACK would make this ~2 s


def test_config_validation():
    with pytest.raises(ValueError):
        EmulatorConfig(fault_5xx_rate=1.5)
    with pytest.raises(ValueError):
        EmulatorConfig().with_changes(unknown_knob=1)
    assert EmulatorConfig(api_keys=["a", "b"]).api_keys == frozenset({"a", "b"})
