"""EmbedClient: bytes on the wire against the official SDK, response parsing, errors, secrets."""
import concurrent.futures
import pickle
import socket
import threading
import time

import pytest

import embed_client
from embed_client import EmbedClient
from tests.capture_server import CaptureServer, json_response

KEY = "tlk_FAKE_KEY_0123456789abcdef"

FULL_RESPONSE = {
    "model_name": "marengo3.0",
    "text_embedding": {"segments": [{"float": [0.1, -0.2]}], "future_field": 1},
    "image_embedding": {"segments": [{"float": [0.3, 0.4]}], "metadata": {"input_url": "http://x/a.png"}},
    "audio_embedding": {
        "segments": [{"float": [0.5, 0.6], "start_offset_sec": 0.0, "end_offset_sec": 6.0},
                     {"float": [0.7, 0.8], "start_offset_sec": 6.0, "end_offset_sec": 9.5}],
        "metadata": {"input_filename": "clip.wav"},
    },
    "usage": {"unknown": True},
}


@pytest.fixture
def media(tmp_path):
    files = {}
    for name, data in {"clip.wav": b"RIFF\x00\x00WAVEdata", "cat.png": b"\x89PNG\r\n\x1a\nxx",
                       "song.mp3": b"ID3\x03xx", "bird.flac": b"fLaCxx", "q\"uote.jpg": b"\xff\xd8\xffxx"}.items():
        path = tmp_path / name
        path.write_bytes(data)
        files[name] = path
    return files


def _sdk_call(base_url, **kwargs):
    from twelvelabs import TwelveLabs

    sdk = TwelveLabs(api_key=KEY, base_url=base_url)
    return sdk.embed.create(**kwargs)


# (our kwargs, SDK kwargs) builders: the SDK takes open files, ours takes paths.
WIRE_CASES = {
    "text_only": lambda m: ({"text": "a man with a dog"}, {"text": "a man with a dog"}),
    "unicode_text": lambda m: ({"text": 'caf\u00e9 "quoted" \u732b\nline'}, {"text": 'caf\u00e9 "quoted" \u732b\nline'}),
    "urls_and_offset": lambda m: (
        {"text": "t", "image_url": "https://example.com/a.jpg", "audio_url": "https://example.com/a.mp3",
         "audio_start_offset_sec": 2.5},
        {"text": "t", "image_url": "https://example.com/a.jpg", "audio_url": "https://example.com/a.mp3",
         "audio_start_offset_sec": 2.5}),
    "tiny_offset_and_truncate": lambda m: (
        {"text": "t", "text_truncate": "start", "audio_file": m["clip.wav"], "audio_start_offset_sec": 1e-7},
        {"text": "t", "audio_file": open(m["clip.wav"], "rb"), "audio_start_offset_sec": 1e-7,
         "request_options": {"additional_body_parameters": {"text_truncate": "start"}}}),
    "integer_offset": lambda m: (
        {"audio_file": m["song.mp3"], "audio_start_offset_sec": 0},
        {"audio_file": open(m["song.mp3"], "rb"), "audio_start_offset_sec": 0.0}),
    "both_files": lambda m: (
        {"image_file": m["cat.png"], "audio_file": m["bird.flac"]},
        {"image_file": open(m["cat.png"], "rb"), "audio_file": open(m["bird.flac"], "rb")}),
    "bytes_upload": lambda m: ({"image_file": b"\xff\xd8\xffraw"}, {"image_file": b"\xff\xd8\xffraw"}),
    "file_object": lambda m: (
        {"image_file": open(m["q\"uote.jpg"], "rb")}, {"image_file": open(m["q\"uote.jpg"], "rb")}),
    "named_tuple": lambda m: (
        {"image_file": ("pic.png", b"\x89PNGdata", "image/png")},
        {"image_file": ("pic.png", b"\x89PNGdata", "image/png")}),
}


@pytest.mark.parametrize("case", sorted(WIRE_CASES))
def test_request_bytes_match_official_sdk(case, media):
    ours, theirs = WIRE_CASES[case](media)
    with CaptureServer(lambda req: json_response(200, FULL_RESPONSE)) as server:
        EmbedClient(api_key=KEY, base_url=server.base_url).create("marengo3.0", **ours)
        _sdk_call(server.base_url, model_name="marengo3.0", **theirs)
    mine, sdk = server.requests
    assert (mine.method, mine.path) == (sdk.method, sdk.path) == ("POST", "/v1.3/embed")
    assert mine.headers["x-api-key"] == sdk.headers["x-api-key"] == KEY
    assert mine.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert len(mine.boundary) == len(sdk.boundary) == 32
    assert mine.normalized_body() == sdk.normalized_body()
    assert mine.headers["Content-Length"] == sdk.headers["Content-Length"]


def test_field_order_and_formatting_on_the_wire(media):
    with CaptureServer() as server:
        EmbedClient(api_key=KEY, base_url=server.base_url).create(
            "marengo2.7", text="hi", text_truncate="none", image_url="https://e.com/i.png",
            audio_file=media["clip.wav"], audio_start_offset_sec=3)
    body = server.requests[0].normalized_body().decode("latin-1")
    names = [line.split('name="')[1].split('"')[0] for line in body.split("\r\n") if "name=" in line]
    assert names == ["model_name", "text", "image_url", "audio_start_offset_sec", "text_truncate", "audio_file"]
    assert '\r\n\r\n3.0\r\n' in body
    assert 'name="audio_file"; filename="clip.wav"\r\nContent-Type: audio/x-wav\r\n\r\n' in body


def test_url_wins_over_file_and_file_is_not_uploaded(media):
    with CaptureServer() as server:
        EmbedClient(api_key=KEY, base_url=server.base_url).create(
            "marengo3.0", image_url="https://e.com/i.png", image_file=media["cat.png"])
    body = server.requests[0].body
    assert b'name="image_url"' in body and b"image_file" not in body and b"PNG" not in body


def test_parses_every_field_and_tolerates_unknown_ones():
    headers = {"X-Ratelimit-Limit": "600", "X-Ratelimit-Remaining": "599", "X-Ratelimit-Used": "1",
               "X-Ratelimit-Reset": "1900000000"}
    with CaptureServer(lambda req: json_response(200, FULL_RESPONSE, headers)) as server:
        result = EmbedClient(api_key=KEY, base_url=server.base_url).create("marengo3.0", text="x")
    assert result.model_name == "marengo3.0"
    assert result.text_embedding.segments[0].float_ == [0.1, -0.2]
    assert result.text_embedding.extra == {"future_field": 1}
    assert result.image_embedding.metadata.input_url == "http://x/a.png"
    audio = result.audio_embedding
    assert [(s.start_offset_sec, s.end_offset_sec) for s in audio.segments] == [(0.0, 6.0), (6.0, 9.5)]
    assert audio.metadata.input_filename == "clip.wav"
    assert result.extra == {"usage": {"unknown": True}}
    assert (result.rate_limit.limit, result.rate_limit.remaining, result.rate_limit.used) == (600, 599, 1)
    assert result.rate_limit.reset_at == 1900000000


def test_per_modality_error_message_is_kept():
    body = {"model_name": "marengo3.0", "text_embedding": {"segments": [{"float": [1.0]}]},
            "image_embedding": {"error_message": "The image is too small.", "metadata": {"input_filename": "a.png"}}}
    with CaptureServer(lambda req: json_response(200, body)) as server:
        result = EmbedClient(api_key=KEY, base_url=server.base_url).create("marengo3.0", text="x", image_file=b"x")
    assert result.image_embedding.error_message == "The image is too small."
    assert result.image_embedding.segments is None
    assert result.text_embedding.error_message is None


@pytest.mark.parametrize("status,body,exc,retryable,code", [
    (400, {"code": "parameter_invalid", "message": "The `text` parameter is invalid."},
     embed_client.BadRequestError, False, "parameter_invalid"),
    (401, {"code": "api_key_invalid", "message": "bad key"}, embed_client.AuthError, False, "api_key_invalid"),
    (403, {"code": "api_not_allowed", "message": "no"}, embed_client.AuthError, False, "api_not_allowed"),
    (404, {"code": "resource_not_exist", "message": "no such"}, embed_client.BadRequestError, False, "resource_not_exist"),
    (408, {"code": "request_canceled_or_timed_out", "message": "slow"}, embed_client.ServerError, True,
     "request_canceled_or_timed_out"),
    (500, {"code": "internal_error", "message": "boom"}, embed_client.ServerError, True, "internal_error"),
    (502, "<html>Bad Gateway</html>", embed_client.ServerError, True, None),
])
def test_error_statuses_map_to_typed_exceptions(status, body, exc, retryable, code):
    payload = (status, {"Content-Type": "text/html"}, body.encode()) if isinstance(body, str) else json_response(status, body)
    with CaptureServer(lambda req: payload) as server:
        with pytest.raises(exc) as info:
            EmbedClient(api_key=KEY, base_url=server.base_url).create("marengo3.0", text="x")
    err = info.value
    assert err.status == status and err.code == code and err.is_retryable is retryable
    expected_message = body if isinstance(body, str) else body["message"]
    assert err.message == expected_message
    assert KEY not in str(err) and KEY not in repr(err)


def _rate_limited(retry_after, reset_in):
    headers = {"Retry-After": str(retry_after), "X-Ratelimit-Limit": "100", "X-Ratelimit-Remaining": "0",
               "X-Ratelimit-Used": "100", "X-Ratelimit-Reset": str(int(time.time() + reset_in))}
    return json_response(429, {"code": "too_many_requests",
                               "message": "You have exceeded the rate limit (100 requests per day). "
                                          "Please try again later after 2026-11-27T00:00:00Z."}, headers)


def test_slow_down_429_is_retryable_with_wait():
    with CaptureServer(lambda req: _rate_limited(3, 3)) as server:
        with pytest.raises(embed_client.RateLimitError) as info:
            EmbedClient(api_key=KEY, base_url=server.base_url).create("marengo3.0", text="x")
    err = info.value
    assert err.is_retryable and not err.is_quota_exhausted
    assert 2.0 <= err.wait_seconds <= 3.0
    assert (err.rate_limit.limit, err.rate_limit.remaining) == (100, 0)


def test_spent_daily_quota_is_told_apart_and_not_retryable():
    with CaptureServer(lambda req: _rate_limited(7200, 7200)) as server:
        with pytest.raises(embed_client.RateLimitError) as info:
            EmbedClient(api_key=KEY, base_url=server.base_url).create("marengo3.0", text="x")
    assert info.value.is_quota_exhausted and not info.value.is_retryable
    assert info.value.wait_seconds > 7000


def test_non_json_200_is_a_malformed_response():
    with CaptureServer(lambda req: (200, {"Content-Type": "application/json"}, b'{"model_name": "mar')) as server:
        with pytest.raises(embed_client.MalformedResponseError) as info:
            EmbedClient(api_key=KEY, base_url=server.base_url).create("marengo3.0", text="x")
    assert info.value.is_retryable and info.value.status == 200


def test_wrong_shape_200_is_a_malformed_response():
    bad = {"model_name": "marengo3.0", "text_embedding": {"segments": [{"float": ["x"]}]}}
    with CaptureServer(lambda req: json_response(200, bad)) as server:
        with pytest.raises(embed_client.MalformedResponseError, match="float"):
            EmbedClient(api_key=KEY, base_url=server.base_url).create("marengo3.0", text="x")


def _silent_server(accept_then):
    """A raw socket server: accepts, reads, then hangs or closes, per `accept_then`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []

    def loop():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            if accept_then == "close":
                conn.close()
            else:
                held.append(conn)

    threading.Thread(target=loop, daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}/v1.3"


def test_hung_server_raises_timeout_quickly():
    listener, url = _silent_server("hang")
    try:
        start = time.monotonic()
        with pytest.raises(embed_client.EmbedTimeoutError) as info:
            EmbedClient(api_key=KEY, base_url=url, timeout=(1.0, 0.5)).create("marengo3.0", text="x")
        assert time.monotonic() - start < 3
        assert info.value.is_retryable
    finally:
        listener.close()


def test_request_options_timeout_overrides_default():
    listener, url = _silent_server("hang")
    try:
        start = time.monotonic()
        with pytest.raises(embed_client.EmbedTimeoutError):
            EmbedClient(api_key=KEY, base_url=url, timeout=60).create(
                "marengo3.0", text="x", request_options={"timeout_in_seconds": 0.3})
        assert time.monotonic() - start < 3
    finally:
        listener.close()


def test_dropped_and_refused_connections_raise_connection_failed():
    listener, url = _silent_server("close")
    try:
        with pytest.raises(embed_client.ConnectionFailedError) as info:
            EmbedClient(api_key=KEY, base_url=url, timeout=2).create("marengo3.0", text="x")
        assert info.value.is_retryable
    finally:
        listener.close()
    with pytest.raises(embed_client.ConnectionFailedError):
        EmbedClient(api_key=KEY, base_url=url, timeout=2).create("marengo3.0", text="x")


@pytest.mark.parametrize("kwargs,code,message", [
    ({"model_name": "marengo9"}, "parameter_invalid", "The `model_name` parameter is invalid."),
    ({"text": "x", "text_truncate": "middle"}, "parameter_invalid",
     "The `text_truncate` parameter is invalid. You should use one of the following values: `none`, `start`, `end`."),
    ({}, "parameter_not_provided", "At least one of `text`"),
])
def test_local_validation_fails_before_sending(kwargs, code, message):
    model = kwargs.pop("model_name", "marengo2.7")
    with CaptureServer() as server:
        with pytest.raises(embed_client.BadRequestError) as info:
            EmbedClient(api_key=KEY, base_url=server.base_url).create(model, **kwargs)
    assert server.requests == []
    assert info.value.code == code and info.value.message.startswith(message)
    assert not info.value.is_retryable


def test_missing_key_is_an_auth_error_without_a_request(monkeypatch):
    monkeypatch.delenv("TWELVE_LABS_API_KEY", raising=False)
    with CaptureServer() as server:
        with pytest.raises(embed_client.AuthError, match="TWELVE_LABS_API_KEY"):
            EmbedClient(base_url=server.base_url).create("marengo3.0", text="x")
    assert server.requests == []


def test_key_from_environment_never_in_repr_pickle_or_errors(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", KEY)
    with CaptureServer(lambda req: json_response(500, {"code": "x", "message": "boom"})) as server:
        client = EmbedClient(base_url=server.base_url)
        with pytest.raises(embed_client.ServerError) as info:
            client.create("marengo3.0", text="x")
        assert server.requests[0].headers["x-api-key"] == KEY
        blob = pickle.dumps(client)
        assert KEY.encode() not in blob
        assert KEY not in repr(client) and KEY not in str(info.value)
        assert KEY.encode() not in pickle.dumps(info.value)
        # An unpickled client (a Beam worker) reads the key from its own environment.
        clone = pickle.loads(blob)
        assert clone.base_url == server.base_url and clone.has_api_key
        monkeypatch.delenv("TWELVE_LABS_API_KEY")
        assert not pickle.loads(blob).has_api_key


def test_threads_share_a_bounded_keep_alive_pool():
    ports = set()
    lock = threading.Lock()

    def responder(req):
        return json_response(200, FULL_RESPONSE)

    with CaptureServer(responder) as server:
        original = server._server.RequestHandlerClass.setup

        def setup(handler):
            with lock:
                ports.add(handler.client_address[1])
            original(handler)

        server._server.RequestHandlerClass.setup = setup
        client = EmbedClient(api_key=KEY, base_url=server.base_url, max_connections=4)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: client.create("marengo3.0", text=str(i)), range(60)))
    assert len(results) == 60 and len(server.requests) == 60
    assert 1 <= len(ports) <= 4  # 60 calls over at most 4 kept-alive connections


def test_nan_or_null_in_a_vector_is_a_malformed_response():
    for bad in ('[0.1, NaN]', '[0.1, null]', '[[0.1]]'):
        body = ('{"model_name": "marengo3.0", "text_embedding": {"segments": [{"float": %s}]}}' % bad).encode()
        with CaptureServer(lambda req: (200, {"Content-Type": "application/json"}, body)) as server:
            with pytest.raises(embed_client.MalformedResponseError):
                EmbedClient(api_key=KEY, base_url=server.base_url).create("marengo3.0", text="x")


def test_environment_proxies_are_read_once_for_the_base_url(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    remote = EmbedClient(api_key=KEY, base_url="https://api.twelvelabs.io/v1.3")
    local = EmbedClient(api_key=KEY, base_url="http://127.0.0.1:9/v1.3")
    assert remote._session.proxies.get("https") == "http://proxy.invalid:3128"
    assert "https" not in local._session.proxies and "http" not in local._session.proxies
    assert remote._session.trust_env is False


def test_a_session_given_by_the_caller_is_used_as_it_is():
    import requests

    session = requests.Session()
    session.headers["X-Trace"] = "caller-session"
    with CaptureServer() as server:
        EmbedClient(api_key=KEY, base_url=server.base_url, session=session).create("marengo3.0", text="x")
        EmbedClient(api_key=KEY, base_url=server.base_url).create("marengo3.0", text="x")
    given, own = server.requests
    assert given.headers.get("X-Trace") == "caller-session" and "X-Trace" not in own.headers
    assert given.normalized_body() == own.normalized_body()
