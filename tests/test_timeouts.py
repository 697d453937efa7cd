"""A server that never answers cannot hang the job; one that refuses the key stops it early and clearly."""
import http.server
import json
import socket
import threading
import time

import pytest

from embed_emulator import synth
from tests.helpers import TEST_KEY, make_config, read_dead_letters, read_segments, run

CONNECT_TIMEOUT, READ_TIMEOUT, ATTEMPTS = 0.5, 0.5, 2


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)


class BlackHole:
    """A TCP server on 127.0.0.1 that never answers. mode: 'silent' reads requests and never replies,
    'deaf' accepts and never reads, 'closed_door' never even accepts (its backlog fills, then connects stall)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.accepted = 0
        self._sockets = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0 if mode == "closed_door" else 64)
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1.3"

    def _serve(self):
        while not self._stop.is_set():
            if self.mode == "closed_door":
                self._stop.wait(0.05)
                continue
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            self._sockets.append(conn)
            if self.mode == "silent":
                threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn):
        try:
            while not self._stop.is_set() and conn.recv(65536):
                pass
        except OSError:
            pass

    def __enter__(self):
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for s in self._sockets + [self._listener]:
            try:
                s.close()
            except OSError:
                pass


def _manifest(tmp_path, big_audio: bool):
    (tmp_path / "img.png").write_bytes(synth.png_bytes(140, 140, seed=1))
    # ~4 MB: more than loopback socket buffers take, so a server that never reads blocks the upload itself.
    (tmp_path / "snd.wav").write_bytes(synth.wav_bytes(45.0, 300.0, sample_rate=48000) if big_audio else
                                       synth.wav_bytes(1.0, 300.0))
    rows = [{"id": "t1", "text": "one"}, {"id": "t2", "text": "two"}, {"id": "i1", "image_file": "img.png"},
            {"id": "a1", "audio_file": "snd.wav"}, {"id": "m1", "text": "three", "audio_file": "snd.wav"}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), 6


@pytest.mark.parametrize("mode", ["silent", "deaf", "closed_door", "deaf_big_upload"])
def test_a_server_that_never_answers_cannot_hang_the_job(tmp_path, mode):
    manifest, items = _manifest(tmp_path, big_audio=mode == "deaf_big_upload")
    output = str(tmp_path / "out")
    config = make_config(output, [manifest], connect_timeout_sec=CONNECT_TIMEOUT, read_timeout_sec=READ_TIMEOUT,
                         max_attempts=ATTEMPTS, max_in_flight=4, item_deadline_sec=30.0)
    started = time.monotonic()
    with BlackHole(mode.replace("_big_upload", "")) as hole:
        summary = run(config, hole.url)
    elapsed = time.monotonic() - started
    # Every call at once, each 2 attempts of one timeout plus one backoff (< 1 s): well under 15 s.
    assert elapsed < 15, elapsed
    letters = read_dead_letters(output)
    assert read_segments(output).num_rows == 0
    assert len(letters) == items
    assert {(l["attempts"], l["stage"]) for l in letters} == {(ATTEMPTS, "call")}, letters
    if mode != "closed_door":
        assert hole.accepted >= 1
    codes = {l["code"] for l in letters}
    assert codes == {"timeout"}, letters
    assert summary["dead_letters_by_reason"] == {"timeout": items}


class _Refuser(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    status = 403
    requests = 0
    lock = threading.Lock()

    def do_POST(self):
        with self.lock:
            type(self).requests += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"code": "forbidden" if self.status == 403 else "api_key_invalid",
                           "message": "This key may not use this endpoint."}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_stops_the_job_early_with_one_clear_error(tmp_path, status):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"r{i}", "text": f"text {i}"}) + "\n" for i in range(60)))
    handler = type("Refuser", (_Refuser,), {"status": status, "requests": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with pytest.raises(Exception) as info:
            run(make_config(str(tmp_path / "out"), [str(manifest)], max_in_flight=2, pack=False),
                f"http://127.0.0.1:{server.server_port}/v1.3")
    finally:
        server.shutdown()
        server.server_close()
    message = str(info.value)
    assert "refused the key" in message and "TWELVE_LABS_API_KEY" in message, message
    assert TEST_KEY not in message
    # 60 one-item calls were queued; the job stops after the first refusals, never retrying them.
    assert 1 <= handler.requests <= 4, handler.requests
