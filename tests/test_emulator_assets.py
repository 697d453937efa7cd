"""Tests of the emulator's assets API (/v1.3/assets, multipart uploads, presigned chunk URLs) over
real HTTP on 127.0.0.1, with `requests` and with the official SDK (twelvelabs 1.3.6)."""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from embed_emulator import Emulator, EmulatorConfig, synth
from tests.helpers import loopback_http, started_emulators  # noqa: F401 (loopback_http: the `http` fixture)

PNG = synth.png_bytes(seed=1)
MP4 = synth.mp4_bytes(6.0, seed=5)      # about 67 KB: 9 chunks of 8 KiB
WAV = synth.wav_bytes(5.0, freq=660.0)
CHUNK = 8192
KEY = {"x-api-key": "k"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emulator():
    with Emulator(EmulatorConfig(asset_processing_sec=0.05, asset_chunk_size=CHUNK,
                                 asset_initial_urls=3, task_ready_after_sec=0.1)) as running:
        yield running


@pytest.fixture
def make_emulator():
    yield from started_emulators(asset_processing_sec=0.05, asset_chunk_size=CHUNK)


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
    _Files.files = {"/clip.mp4": MP4, "/cat.png": PNG}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
    server.shutdown()
    server.server_close()


# ---- helpers -----------------------------------------------------------------------------------

def upload_direct(http, emu, data, filename, **fields):
    return http.post(emu.base_url + "/assets", headers=KEY, timeout=30,
                     data={"method": "direct", **fields}, files={"file": (filename, data)})


def get_asset(http, emu, asset_id):
    return http.get(f"{emu.base_url}/assets/{asset_id}", headers=KEY, timeout=10)


def wait_asset(http, emu, asset_id, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = get_asset(http, emu, asset_id).json()
        if body["status"] != "processing" or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def create_session(http, emu, data, filename="clip.mp4", kind="video", **fields):
    return http.post(emu.base_url + "/assets/multipart-uploads", headers=KEY, timeout=10,
                     json={"filename": filename, "type": kind, "total_size": len(data), **fields})


def more_urls(http, emu, upload_id, start, count):
    return http.post(f"{emu.base_url}/assets/multipart-uploads/{upload_id}/presigned-urls",
                     headers=KEY, json={"start": start, "count": count}, timeout=10)


def report(http, emu, upload_id, chunks):
    return http.post(f"{emu.base_url}/assets/multipart-uploads/{upload_id}", headers=KEY,
                     json={"completed_chunks": chunks}, timeout=10)


def status_of(http, emu, upload_id, **params):
    return http.get(f"{emu.base_url}/assets/multipart-uploads/{upload_id}", headers=KEY,
                    params=params, timeout=10)


def chunk_of(data, index, size=CHUNK):
    return data[(index - 1) * size:index * size]


def done(index, etag, size):
    return {"chunk_index": index, "proof": etag, "proof_type": "etag", "chunk_size": size}


def embed_image(http, emu, source):
    return http.post(emu.base_url + "/embed-v2", headers=KEY, timeout=30, json={
        "input_type": "image", "model_name": "marengo3.0", "image": {"media_source": source}})


def embed_video(http, emu, source):
    return http.post(emu.base_url + "/embed-v2", headers=KEY, timeout=30, json={
        "input_type": "video", "model_name": "marengo3.0", "video": {"media_source": source}})


def xml_code(response) -> str:
    assert response.headers["Content-Type"] == "application/xml"
    return response.text.split("<Code>")[1].split("</Code>")[0]


def upload_all(http, emu, data, session) -> list:
    """PUT every chunk (fetching URLs past the initial set); the reports to send."""
    urls = {u["chunk_index"]: u["url"] for u in session["upload_urls"]}
    missing = [i for i in range(1, session["total_chunks"] + 1) if i not in urls]
    if missing:
        extra = more_urls(http, emu, session["upload_id"], missing[0], len(missing)).json()
        urls.update({u["chunk_index"]: u["url"] for u in extra["upload_urls"]})
    reports = []
    for index in range(1, session["total_chunks"] + 1):
        chunk = chunk_of(data, index, session["chunk_size"])
        put = http.put(urls[index], data=chunk, timeout=10)
        assert put.status_code == 200, put.text
        reports.append(done(index, put.headers["ETag"].strip('"'), len(chunk)))
    return reports


# ---- direct and URL uploads -----------------------------------------------------------------

def test_direct_upload_turns_ready_and_embeds_like_the_same_bytes_inline(http, make_emulator):
    emu = make_emulator(asset_processing_sec=0.3)
    created = upload_direct(http, emu, PNG, "cat.png", user_metadata='{"batch": 5, "ok": true}')
    assert created.status_code == 201
    asset = created.json()
    assert {k: asset[k] for k in ("method", "status", "filename", "file_type", "user_metadata")} \
        == {"method": "direct", "status": "processing", "filename": "cat.png",
            "file_type": "image/png", "user_metadata": {"batch": 5, "ok": True}}
    early = embed_image(http, emu, {"asset_id": asset["_id"]})
    assert early.status_code == 400 and early.json()["error"]["code"] == "asset_not_ready"
    detail = wait_asset(http, emu, asset["_id"])
    assert detail["status"] == "ready" and detail["size"] == len(PNG)
    assert detail["technical_metadata"]["image_width"] == 160 and "duration" not in detail
    by_asset = embed_image(http, emu, {"asset_id": asset["_id"]})
    inline = embed_image(http, emu, {"base64_string": b64(PNG)})
    assert by_asset.status_code == inline.status_code == 200
    assert by_asset.json()["data"] == inline.json()["data"]
    assert by_asset.json()["metadata"]["input_filename"] == "cat.png"

    video = upload_direct(http, emu, MP4, "clip.mp4").json()
    detail = wait_asset(http, emu, video["_id"])
    assert detail["status"] == "ready" and detail["duration"] == pytest.approx(6.0, abs=0.1)
    by_asset = embed_video(http, emu, {"asset_id": video["_id"]}).json()
    inline = embed_video(http, emu, {"base64_string": b64(MP4)}).json()
    assert by_asset["data"] == inline["data"] and len(by_asset["data"]) > 1
    assert emu.stats()["assets"]["created"] == {"direct": 2, "url": 0, "multipart": 0}


def test_url_upload_is_fetched_and_an_unreachable_url_fails(http, emulator, media_url):
    created = http.post(emulator.base_url + "/assets", headers=KEY, timeout=10, files={
        "method": (None, "url"), "url": (None, media_url("/clip.mp4"))})
    assert created.status_code == 201 and created.json()["method"] == "url"
    assert created.json()["filename"] == "clip.mp4"
    detail = wait_asset(http, emulator, created.json()["_id"])
    assert detail["status"] == "ready" and detail["size"] == len(MP4)
    assert detail["file_type"] == "video/mp4"
    missing = http.post(emulator.base_url + "/assets", headers=KEY, timeout=10, files={
        "method": (None, "url"), "url": (None, media_url("/nope.mp4"))}).json()
    failed = wait_asset(http, emulator, missing["_id"])
    assert failed["status"] == "failed" and "HTTP 404" in failed["error"]["message"]


def test_undecodable_files_fail_with_an_error_and_cannot_be_embedded(http, emulator):
    junk = upload_direct(http, emulator, os.urandom(5000), "junk.mp4").json()
    broken_png = upload_direct(http, emulator, PNG[:200], "cut.png").json()
    broken_wav = upload_direct(http, emulator, WAV[:30], "cut.wav").json()
    for asset in (junk, broken_png, broken_wav):
        detail = wait_asset(http, emulator, asset["_id"])
        assert detail["status"] == "failed", detail
        assert detail["error"]["message"] and "technical_metadata" not in detail
    refused = embed_video(http, emulator, {"asset_id": junk["_id"]})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "asset_failed"
    # multipart: the declared type decides the check; a PNG is not audio
    session = create_session(http, emulator, PNG, "cat.wav", "audio").json()
    assert report(http, emulator, session["upload_id"],
                  upload_all(http, emulator, PNG, session)).status_code == 200
    assert wait_asset(http, emulator, session["asset_id"])["status"] == "failed"


def test_create_validation_and_size_limits(http, emulator):
    no_method = http.post(emulator.base_url + "/assets", headers=KEY, files={"x": (None, "1")})
    assert no_method.status_code == 400 and no_method.json()["code"] == "parameter_unknown"
    no_file = http.post(emulator.base_url + "/assets", headers=KEY,
                        files={"method": (None, "direct")})
    assert no_file.status_code == 400 and no_file.json()["code"] == "parameter_not_provided"
    bad_meta = upload_direct(http, emulator, PNG, "a.png", user_metadata="[1]")
    assert bad_meta.status_code == 400 and bad_meta.json()["code"] == "parameter_invalid"
    no_key = http.post(emulator.base_url + "/assets", files={"method": (None, "direct")})
    assert no_key.status_code == 401 and no_key.json()["code"] == "api_key_invalid"
    big_image = upload_direct(http, emulator, PNG + b"\0" * (32 * 1024 * 1024), "big.png")
    assert big_image.status_code == 400 and "32 MB" in big_image.json()["message"]
    # A body over 200 MB is refused from its Content-Length, before any byte of it is read.
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as raw:
        raw.sendall(b"POST /v1.3/assets HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 300000000\r\n\r\n")
        head = raw.recv(65536).decode()
    assert head.startswith("HTTP/1.1 400") and "200 MB" in head and "Connection: close" in head
    too_big = create_session(http, emulator, b"", "x.png", "image")  # total_size 0
    assert too_big.status_code == 400
    huge = http.post(emulator.base_url + "/assets/multipart-uploads", headers=KEY, json={
        "filename": "v.mp4", "type": "video", "total_size": 11 * 1024 ** 3})
    assert huge.status_code == 400 and "10 GB" in huge.json()["message"]
    wrong = http.put(emulator.base_url + "/assets", headers=KEY)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET, POST"


def test_list_and_delete(http, make_emulator):
    emu = make_emulator()
    first = upload_direct(http, emu, PNG, "one.png").json()
    second = upload_direct(http, emu, WAV, "two.wav").json()
    listed = http.get(emu.base_url + "/assets", headers=KEY).json()
    assert [a["_id"] for a in listed["data"]] == [second["_id"], first["_id"]]  # newest first
    assert listed["page_info"] == {"limit_per_page": 10, "page": 1, "total_page": 1,
                                   "total_results": 2}
    wait_asset(http, emu, second["_id"])
    audio = http.get(emu.base_url + "/assets", headers=KEY,
                     params={"asset_types": ["audio"], "filename": "TWO"}).json()
    assert [a["_id"] for a in audio["data"]] == [second["_id"]]
    assert audio["data"][0]["duration"] == pytest.approx(5.0)

    gone = http.delete(f"{emu.base_url}/assets/{first['_id']}", headers=KEY)
    assert gone.status_code == 200
    assert http.delete(f"{emu.base_url}/assets/{first['_id']}", headers=KEY).status_code == 404
    assert get_asset(http, emu, first["_id"]).status_code == 404
    refused = embed_image(http, emu, {"asset_id": first["_id"]})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "resource_not_exist"
    assert emu.stats()["assets"]["deleted"] == 1


def test_delete_of_a_referenced_asset_is_409_unless_forced(http, make_emulator):
    """The platform refuses to delete an asset that indexed assets reference (409) unless force=true."""
    emu = make_emulator(assets_referenced=True)
    asset_id = upload_direct(http, emu, PNG, "one.png").json()["_id"]
    refused = http.delete(f"{emu.base_url}/assets/{asset_id}", headers=KEY)
    assert refused.status_code == 409 and refused.json()["code"] == "asset_referenced"
    assert asset_id in refused.json()["message"] and "force" in refused.json()["message"]
    assert get_asset(http, emu, asset_id).status_code == 200  # still there
    assert http.delete(f"{emu.base_url}/assets/nope", headers=KEY).status_code == 404  # unknown: 404 first
    assert http.delete(f"{emu.base_url}/assets/{asset_id}", headers=KEY,
                       params={"force": "true"}).status_code == 200
    assert get_asset(http, emu, asset_id).status_code == 404
    assert emu.stats()["assets"]["deleted"] == 1


# ---- multipart uploads -----------------------------------------------------------------------

def test_multipart_upload_with_partial_urls_and_out_of_order_reports(http, emulator):
    before = emulator.stats()["assets"]
    created = create_session(http, emulator, MP4)
    assert created.status_code == 201
    session = created.json()
    assert set(session) == {"upload_id", "asset_id", "upload_urls", "upload_headers",
                            "chunk_size", "total_chunks", "expires_at"}
    assert session["chunk_size"] == CHUNK and session["total_chunks"] == -(-len(MP4) // CHUNK) > 8
    assert [u["chunk_index"] for u in session["upload_urls"]] == [1, 2, 3]  # partial set
    assert get_asset(http, emulator, session["asset_id"]).json()["status"] == "processing"

    extra = more_urls(http, emulator, session["upload_id"], 4, 50).json()
    assert extra["start_index"] == 4 and extra["count"] == session["total_chunks"] - 3
    urls = {u["chunk_index"]: u["url"] for u in session["upload_urls"] + extra["upload_urls"]}
    reports = []
    for index in sorted(urls, reverse=True):  # any order
        chunk = chunk_of(MP4, index)
        put = http.put(urls[index], data=chunk)  # no API key goes to storage
        assert put.status_code == 200 and put.headers["ETag"] == f'"{md5(chunk)}"'
        reports.append(done(index, put.headers["ETag"], len(chunk)))  # quoted proof is fine
    assert reports[0]["chunk_size"] < CHUNK  # the last chunk is shorter

    first = report(http, emulator, session["upload_id"], reports[::2]).json()
    assert "url" not in first and first["processed_chunks"] == len(reports[::2])
    second = report(http, emulator, session["upload_id"], reports[1::2] + reports[:1]).json()
    assert second["duplicate_chunks"] == 1 and second["total_completed"] == len(reports)
    assert second["asset_id"] == session["asset_id"] and second["url"]
    status = status_of(http, emulator, session["upload_id"]).json()
    assert status["status"] == "completed" and status["uploaded_size"] == len(MP4)
    assert status["chunks_completed"] == len(reports) and status["chunks_pending"] == 0

    detail = wait_asset(http, emulator, session["asset_id"])
    assert detail["status"] == "ready" and detail["method"] == "multipart"
    assert detail["size"] == len(MP4) and detail["duration"] == pytest.approx(6.0, abs=0.1)
    by_asset = embed_video(http, emulator, {"asset_id": session["asset_id"]}).json()
    assert by_asset["data"] == embed_video(http, emulator, {"base64_string": b64(MP4)}).json()["data"]
    after = emulator.stats()["assets"]
    assert after["chunk_bytes_accepted"] - before["chunk_bytes_accepted"] == len(MP4)
    assert after["chunk_bytes_received"] - before["chunk_bytes_received"] == len(MP4)
    assert after["chunks_reported"] - before["chunks_reported"] == len(reports)
    assert after["chunk_puts_accepted"] - before["chunk_puts_accepted"] == len(reports)
    assert after["created"]["multipart"] - before["created"]["multipart"] == 1


def test_presigned_urls_are_single_use_expiring_and_sized(http, make_emulator):
    emu = make_emulator(asset_url_ttl_sec=0.3)
    session = create_session(http, emu, MP4).json()
    url1, url2 = session["upload_urls"][0]["url"], session["upload_urls"][1]["url"]
    assert "X-Amz-Signature=" in url1 and "/v1.3/" not in url1
    short = http.put(url1, data=chunk_of(MP4, 1)[:-1])
    assert short.status_code == 400 and xml_code(short) == "EntityTooSmall"
    long_ = http.put(url1, data=chunk_of(MP4, 1) + b"x")
    assert long_.status_code == 400 and xml_code(long_) == "EntityTooLarge"
    assert http.put(url1, data=chunk_of(MP4, 1)).status_code == 200  # a refusal spends no URL
    again = http.put(url1, data=chunk_of(MP4, 1))
    assert again.status_code == 403 and xml_code(again) == "AccessDenied"
    forged = http.put(url2.replace("Signature=", "Signature=0"), data=chunk_of(MP4, 2))
    assert forged.status_code == 403 and xml_code(forged) == "SignatureDoesNotMatch"
    time.sleep(0.4)
    expired = http.put(url2, data=chunk_of(MP4, 2))
    assert expired.status_code == 403 and "Request has expired" in expired.text
    fresh = more_urls(http, emu, session["upload_id"], 2, 1).json()["upload_urls"][0]["url"]
    assert http.put(fresh, data=chunk_of(MP4, 2)).status_code == 200
    stats = emu.stats()["assets"]
    assert stats["chunk_puts_accepted"] == 2 and stats["chunk_puts_refused"] == 5


def test_status_after_a_partial_upload_and_refused_reports(http, emulator):
    session = create_session(http, emulator, MP4).json()
    upload_id, urls = session["upload_id"], [u["url"] for u in session["upload_urls"]]
    etags = [http.put(urls[i - 1], data=chunk_of(MP4, i)).headers["ETag"] for i in (1, 2, 3)]
    assert report(http, emulator, upload_id,
                  [done(1, etags[0], CHUNK), done(2, etags[1], CHUNK)]).status_code == 200
    wrong_etag = report(http, emulator, upload_id, [done(3, md5(b"other"), CHUNK)])
    assert wrong_etag.status_code == 400 and wrong_etag.json()["code"] == "parameter_invalid"
    not_uploaded = report(http, emulator, upload_id, [done(5, etags[2], CHUNK)])
    assert not_uploaded.status_code == 400 and "chunk 5" in not_uploaded.json()["message"]
    bad_index = report(http, emulator, upload_id, [done(99, etags[2], CHUNK)])
    assert bad_index.status_code == 400

    status = status_of(http, emulator, upload_id).json()
    assert status["status"] == "active" and status["total_size"] == len(MP4)
    assert (status["chunks_completed"], status["chunks_failed"], status["chunks_pending"]) == \
        (2, 2, session["total_chunks"] - 4)
    assert status["uploaded_size"] == 2 * CHUNK
    by_index = {c["index"]: c for c in status["uploaded_chunks"]}
    assert by_index[1]["status"] == "completed" and by_index[1]["uploaded_at"]
    assert by_index[3]["status"] == "failed" and "ETag" in by_index[3]["error"]
    assert by_index[5]["status"] == "failed" and by_index[4]["status"] == "pending"
    assert "error" not in by_index[4] and by_index[4]["uploaded_at"] is None
    page2 = status_of(http, emulator, upload_id, page=2, page_limit=5).json()
    assert [c["index"] for c in page2["uploaded_chunks"]] == list(range(6, session["total_chunks"] + 1))
    assert page2["page_info"]["total_page"] == 2

    listed = http.get(emulator.base_url + "/assets/multipart-uploads", headers=KEY,
                      params={"page_limit": 50}).json()
    ids = {s["upload_id"]: s for s in listed["data"]}
    assert ids[upload_id]["status"] == "active" and ids[upload_id]["total_chunks"] == \
        session["total_chunks"] and ids[upload_id]["chunk_size"] == CHUNK
    complete = create_session(http, emulator, PNG, "cat.png", "image").json()
    report(http, emulator, complete["upload_id"], upload_all(http, emulator, PNG, complete))
    listed = http.get(emulator.base_url + "/assets/multipart-uploads", headers=KEY,
                      params={"page_limit": 50}).json()
    assert complete["upload_id"] not in {s["upload_id"] for s in listed["data"]}
    assert upload_id in {s["upload_id"] for s in listed["data"]}
    unknown = status_of(http, emulator, "nope")
    assert unknown.status_code == 404 and unknown.json()["code"] == "resource_not_exist"


def test_an_expired_session_refuses_further_calls(http, make_emulator):
    emu = make_emulator(asset_session_ttl_sec=0.3)
    session = create_session(http, emu, MP4).json()
    put = http.put(session["upload_urls"][0]["url"], data=chunk_of(MP4, 1))
    time.sleep(0.4)
    status = status_of(http, emu, session["upload_id"]).json()
    assert status["status"] == "expired"
    refused = report(http, emu, session["upload_id"], [done(1, put.headers["ETag"], CHUNK)])
    assert refused.status_code == 403 and refused.json()["code"] == "upload_session_expired"
    assert more_urls(http, emu, session["upload_id"], 1, 5).status_code == 403
    late = http.put(session["upload_urls"][1]["url"], data=chunk_of(MP4, 2))
    assert late.status_code == 403 and xml_code(late) == "AccessDenied"
    listed = http.get(emu.base_url + "/assets/multipart-uploads", headers=KEY).json()
    assert [(s["upload_id"], s["status"]) for s in listed["data"]] == \
        [(session["upload_id"], "expired")]


# ---- limits, faults and the SDK --------------------------------------------------------------

def test_the_assets_limit_is_its_own_category(http, make_emulator):
    emu = make_emulator(assets_requests_per_minute=2, requests_per_minute=100)
    session = create_session(http, emu, PNG, "cat.png", "image").json()
    assert http.get(emu.base_url + "/assets", headers=KEY).status_code == 200
    limited = http.get(emu.base_url + "/assets", headers=KEY)
    assert limited.status_code == 429 and limited.json()["code"] == "too_many_requests"
    assert int(limited.headers["Retry-After"]) >= 1
    # chunk PUTs are storage, not API calls; the embed endpoints have their own limit
    assert http.put(session["upload_urls"][0]["url"], data=chunk_of(PNG, 1)).status_code == 200
    text = http.post(emu.base_url + "/embed-v2", headers=KEY, json={
        "input_type": "text", "model_name": "marengo3.0", "text": {"input_text": "hi"}})
    assert text.status_code == 200
    stats = emu.stats()
    assert stats["assets"]["rate_limited"] == 1 and stats["rate_limited"] == 0
    assert stats["assets"]["by_status"] == {"201": 1, "200": 1, "429": 1}
    assert stats["by_status"] == {"200": 1}


def test_gate_faults_reach_assets_but_not_chunk_puts(http, make_emulator):
    emu = make_emulator(seed=1)
    session = create_session(http, emu, MP4).json()
    emu.configure(fault_5xx_rate=1.0)
    assert http.get(emu.base_url + "/assets", headers=KEY).status_code >= 500
    assert http.put(session["upload_urls"][0]["url"], data=chunk_of(MP4, 1)).status_code == 200
    assert emu.stats()["assets"]["faults"]["5xx"] == 1


def test_chunk_put_fault_and_delay_knobs(http, make_emulator):
    emu = make_emulator(chunk_put_fail_rate=1.0, seed=3)
    session = create_session(http, emu, MP4).json()
    url = session["upload_urls"][0]["url"]
    failed = http.put(url, data=chunk_of(MP4, 1))
    assert failed.status_code == 500 and xml_code(failed) == "InternalError"
    emu.configure(chunk_put_fail_rate=0.0, chunk_put_delay_ms=200)
    started = time.monotonic()
    retried = http.put(url, data=chunk_of(MP4, 1))  # a 500 spends no URL: a retry succeeds
    assert retried.status_code == 200 and time.monotonic() - started >= 0.2
    stats = emu.stats()["assets"]
    assert stats["chunk_puts_failed"] == 1 and stats["chunk_puts_accepted"] == 1
    assert stats["chunk_bytes_received"] == 2 * CHUNK and stats["chunk_bytes_accepted"] == CHUNK


def test_the_official_sdk_uploads_through_the_emulator(make_emulator, tmp_path):
    from twelvelabs import TwelveLabs

    emu = make_emulator(asset_initial_urls=2, chunk_put_fail_rate=0.2, seed=7)
    path = tmp_path / "clip.mp4"
    path.write_bytes(MP4)
    client = TwelveLabs(api_key="k", base_url=emu.base_url)
    result = client.multipart_upload.upload_file(str(path), file_type="video", batch_size=4,
                                                 max_workers=2, retry_delay=0.01)
    assert result.asset_id and result.asset_url
    deadline = time.monotonic() + 10
    while (asset := client.assets.retrieve(result.asset_id)).status == "processing":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert asset.status == "ready" and asset.size == len(MP4)
    stats = emu.stats()["assets"]
    assert stats["chunk_bytes_accepted"] == len(MP4) and stats["chunk_puts_failed"] >= 1
    direct = client.assets.create(method="direct", file=("cat.png", PNG, "image/png"))
    assert direct.status == "processing" and direct.file_type == "image/png"
    client.assets.delete(direct.id)
    assert [a.id for a in client.assets.list()] == [result.asset_id]
