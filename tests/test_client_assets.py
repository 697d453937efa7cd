"""client.assets and client.multipart_upload: bytes on the wire against SDK 1.3.6, the streamed direct upload
(same bytes, small memory), put_chunk (no key, the ETag, the presigned URL's signature never shown), errors."""
import hashlib
import io
import json
import logging
import pickle
import socket
import traceback
import tracemalloc

import pytest

import embed_client
from embed_client import EmbedClient, errors
from embed_client.assets import build_asset_form
from embed_client.multipart import encode_multipart
from embed_client.secrets import redact_url, scrub
from tests.capture_server import CaptureServer, json_response

KEY = "tlk_FAKE_ASSETS_KEY_0123456789abcd"
SIGNATURE = "5f1e2d3c4b5a69788796a5b4c3d2e1f0SIGNATURE"
CREDENTIAL = "AKIAFAKECREDENTIAL42"

ASSET = {"_id": "as_1", "method": "direct", "status": "processing", "filename": "clip.mp4",
         "file_type": "video/mp4", "created_at": "2026-07-30T10:00:00Z", "future_field": {"x": 1}}
ASSET_READY = {"_id": "as_1", "method": "direct", "status": "ready", "filename": "clip.mp4", "size": 1234,
               "duration": 12.5, "hls": {"status": "ready", "manifest_url": "https://cdn/x.m3u8"},
               "technical_metadata": {"video_codec": "h264"}, "user_metadata": {"k": "v"}}
ASSET_FAILED = {"_id": "as_2", "status": "failed", "error": {"message": f"corrupt file; key {KEY}"}}


def _json(obj, status=200, headers=None):
    return lambda req: json_response(status, obj, headers)


def _sdk(base_url):
    from twelvelabs import TwelveLabs

    return TwelveLabs(api_key=KEY, base_url=base_url)


def _ours(base_url, **kwargs):
    return EmbedClient(api_key=KEY, base_url=base_url, **kwargs)


def _headers(req):
    return {k.lower(): v for k, v in req.headers.items()}


def assert_same_request(mine, sdk, multipart=False):
    assert (mine.method, mine.path) == (sdk.method, sdk.path)
    ours, theirs = _headers(mine), _headers(sdk)
    if multipart:
        assert mine.normalized_body() == sdk.normalized_body()
        assert len(mine.boundary) == len(sdk.boundary) == 32
        assert ours["content-type"].replace(mine.boundary, "B") == theirs["content-type"].replace(sdk.boundary, "B")
    else:
        assert mine.body == sdk.body, (mine.body, sdk.body)
        assert ours.get("content-type") == theirs.get("content-type")
    for name in ("accept", "x-api-key", "content-length", "transfer-encoding"):
        assert ours.get(name) == theirs.get(name), name
    assert ours["x-api-key"] == KEY


# ---- assets: SDK byte equality ----

MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 3 + b'"quote"\r\n--not-a-boundary'


def _create_cases(path):
    return {
        "direct_path_vs_open_file": (dict(method="direct", file=str(path)),
                                     lambda: dict(method="direct", file=open(path, "rb"))),
        "direct_file_object": (lambda: dict(method="direct", file=open(path, "rb")),
                               lambda: dict(method="direct", file=open(path, "rb"))),
        "direct_bytes": (dict(method="direct", file=MP4), dict(method="direct", file=MP4)),
        "direct_tuple_all_fields": (
            dict(method="direct", file=("my clip\u00e9.mp4", io.BytesIO(MP4), "video/mp4"), filename="named.mp4",
                 enable_hls=True, enable_thumbnail=False, user_metadata='{"team": "a", "n": 1}'),
            dict(method="direct", file=("my clip\u00e9.mp4", io.BytesIO(MP4), "video/mp4"), filename="named.mp4",
                 enable_hls=True, enable_thumbnail=False, user_metadata='{"team": "a", "n": 1}')),
        "direct_tuple_guessed_type": (dict(method="direct", file=("a.wav", MP4)),
                                      dict(method="direct", file=("a.wav", MP4))),
        "url": (dict(method="url", url="https://media.example/v.mp4?x=1&y=\u00e4"),
                dict(method="url", url="https://media.example/v.mp4?x=1&y=\u00e4")),
        "url_metadata_dict_and_extras": (
            dict(method="url", url="https://m.example/a.mp3", user_metadata={"team": "a", "n": 1},
                 request_options={"additional_body_parameters": {"future": "yes"},
                                  "additional_headers": {"X-Trace": "t1"}}),
            dict(method="url", url="https://m.example/a.mp3", user_metadata=json.dumps({"team": "a", "n": 1}),
                 request_options={"additional_body_parameters": {"future": "yes"},
                                  "additional_headers": {"X-Trace": "t1"}})),
    }


@pytest.mark.parametrize("case", ["direct_path_vs_open_file", "direct_file_object", "direct_bytes",
                                  "direct_tuple_all_fields", "direct_tuple_guessed_type", "url",
                                  "url_metadata_dict_and_extras"])
def test_asset_create_bytes_match_sdk(case, tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(MP4)
    ours, theirs = _create_cases(path)[case]
    ours, theirs = (ours() if callable(ours) else ours), (theirs() if callable(theirs) else theirs)
    with CaptureServer(_json(ASSET, 201)) as server:
        asset = _ours(server.base_url).assets.create(**ours)
        sdk_asset = _sdk(server.base_url).assets.create(**theirs)
    mine, sdk = server.requests
    assert_same_request(mine, sdk, multipart=True)
    assert (mine.method, mine.path) == ("POST", "/v1.3/assets")
    assert _headers(mine)["content-type"].startswith("multipart/form-data; boundary=")
    assert asset.id == sdk_asset.id == "as_1" and asset.status == "processing" and asset.method == "direct"
    assert asset.extra == {"future_field": {"x": 1}}
    if case.startswith("direct"):
        assert MP4 in mine.body
    if case == "url_metadata_dict_and_extras":
        assert _headers(mine)["x-trace"] == "t1"


def test_streamed_direct_body_equals_the_in_memory_encoding(tmp_path):
    path = tmp_path / "v.mp4"
    data = bytes(range(256)) * 1000 + b"tail"
    path.write_bytes(data)
    with open(path, "rb") as f:
        f.read(10)  # like httpx, the file is sent whole from its start
        content_type, body = build_asset_form("direct", file=f, filename="x", enable_hls=False, boundary="B" * 32)
        size = len(body)
        streamed = b"".join(iter(body))
    expected = encode_multipart([("method", "direct"), ("filename", "x"), ("enable_hls", "false")],
                                [("file", ("v.mp4", data, "video/mp4"))], "B" * 32)
    assert content_type == "multipart/form-data; boundary=" + "B" * 32
    assert streamed == expected and size == len(expected)
    # Small reads never hand out more than asked.
    _, body = build_asset_form("direct", file=str(path), boundary="C" * 32)
    pieces = list(iter(lambda: body.read(1000), b""))
    assert max(map(len, pieces)) == 1000
    assert b"".join(pieces) == encode_multipart([("method", "direct")], [("file", ("v.mp4", data, "video/mp4"))],
                                                "C" * 32)


def test_a_large_direct_upload_streams_in_small_memory(tmp_path):
    size = 50 * 1024 * 1024
    path = tmp_path / "big.mp4"
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: 50 MB of zeros, no disk or memory cost to make
    with CaptureServer(_json(ASSET, 201), sink=True) as server:
        client = _ours(server.base_url)
        tracemalloc.start()
        try:
            asset = client.assets.create(method="direct", file=str(path))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert asset.id == "as_1"
    req, = server.requests
    expected_head = (b"--" + req.boundary.encode() + b'\r\nContent-Disposition: form-data; name="method"\r\n\r\n'
                     b"direct\r\n--" + req.boundary.encode() + b'\r\nContent-Disposition: form-data; name="file"; '
                     b'filename="big.mp4"\r\nContent-Type: video/mp4\r\n\r\n')
    tail = b"\r\n--" + req.boundary.encode() + b"--\r\n"
    assert req.body.startswith(expected_head)
    assert req.received == int(req.headers["Content-Length"]) == len(expected_head) + size + len(tail)
    assert req.sha256 == hashlib.sha256(expected_head + b"\0" * size + tail).hexdigest()
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte upload"


def test_a_file_that_shrinks_while_sent_fails_typed():
    class Shrinking(io.BytesIO):
        def read(self, n=-1):
            return b"" if self.tell() >= 100 else super().read(min(n, 50))

    source = Shrinking(b"x" * 1000)
    with CaptureServer(_json(ASSET, 201)) as server:
        with pytest.raises(errors.BadRequestError) as info:
            _ours(server.base_url, timeout=(2, 2)).assets.create(method="direct", file=source)
    assert info.value.code == "file_changed"


def test_asset_create_validates_locally():
    with CaptureServer(_json(ASSET, 201)) as server:
        client = _ours(server.base_url)
        for kwargs, code in [(dict(method="direct"), "parameter_not_provided"),
                             (dict(method="url"), "parameter_not_provided"),
                             (dict(method="multipart", url="u"), "parameter_invalid")]:
            with pytest.raises(errors.BadRequestError) as info:
                client.assets.create(**kwargs)
            assert info.value.code == code
        with pytest.raises(TypeError):
            client.assets.create(method="direct", file=io.StringIO("text"))
    assert server.requests == []


def test_asset_retrieve_delete_list_match_sdk():
    page = {"data": [ASSET_READY, ASSET_FAILED], "page_info": {"page": 1, "total_page": 1, "total_results": 2}}

    def responder(req):
        if req.method == "DELETE":
            return 200, {}, b""
        if req.path.startswith("/v1.3/assets?"):
            return json_response(200, page if "page=1" in req.path else {"data": [], "page_info": {}})
        return json_response(200, ASSET_FAILED if "as_2" in req.path else ASSET_READY)

    with CaptureServer(responder) as server:
        ours, sdk = _ours(server.base_url), _sdk(server.base_url)
        ready = ours.assets.retrieve("as_1")
        sdk.assets.retrieve("as_1")
        assert ours.assets.delete("as_1") is None
        sdk.assets.delete("as_1")
        ours.assets.delete("as_1", force=True)
        sdk.assets.delete("as_1", force=True)
        listed = list(ours.assets.list(page_limit=5, asset_ids=["as_1", "as_2"], asset_types=["video", "audio"],
                                       filename="clip"))
        list(sdk.assets.list(page_limit=5, asset_ids=["as_1", "as_2"], asset_types=["video", "audio"],
                             filename="clip"))
        failed = ours.assets.retrieve("as_2")
    reqs = server.requests
    for mine, theirs in [(reqs[0], reqs[1]), (reqs[2], reqs[3]), (reqs[4], reqs[5])]:
        assert_same_request(mine, theirs)
    assert [r.path for r in reqs[:6:2]] == ["/v1.3/assets/as_1", "/v1.3/assets/as_1", "/v1.3/assets/as_1?force=true"]
    assert reqs[2].method == "DELETE" and reqs[2].body == b"" and "content-type" not in _headers(reqs[2])
    ours_list, sdk_list = reqs[6:8], reqs[8:10]
    for mine, theirs in zip(ours_list, sdk_list):
        assert_same_request(mine, theirs)
    assert ours_list[0].path == ("/v1.3/assets?page=1&page_limit=5&asset_ids=as_1&asset_ids=as_2"
                                 "&asset_types=video&asset_types=audio&filename=clip")
    assert (ready.id, ready.status, ready.size, ready.duration, ready.is_ready) == ("as_1", "ready", 1234, 12.5, True)
    assert ready.hls["status"] == "ready" and ready.technical_metadata == {"video_codec": "h264"}
    assert [a.id for a in listed] == ["as_1", "as_2"]
    assert failed.status == "failed" and failed.is_done and not failed.is_ready
    assert failed.error.startswith("corrupt file") and KEY not in failed.error


# ---- multipart uploads: SDK byte equality ----

SESSION = {"upload_id": "up_1", "asset_id": "as_9", "chunk_size": 5242880, "total_chunks": 3,
           "expires_at": "2026-07-31T10:00:00Z", "upload_headers": {"x-amz-server-side-encryption": "AES256"},
           "upload_urls": [{"chunk_index": 1, "url": f"https://s3.example/b/k?partNumber=1&X-Amz-Signature={SIGNATURE}",
                            "expires_at": "2026-07-30T11:00:00Z"},
                           {"chunk_index": 2, "url": f"https://s3.example/b/k?partNumber=2&X-Amz-Signature={SIGNATURE}"}]}
MORE_URLS = {"upload_id": "up_1", "start_index": 3, "count": 1, "generated_at": "2026-07-30T10:30:00Z",
             "expires_at": "2026-07-30T11:30:00Z",
             "upload_urls": [{"chunk_index": 3, "url": f"https://s3.example/b/k?partNumber=3&X-Amz-Signature={SIGNATURE}"}]}
REPORT = {"url": "https://cdn.example/as_9.mp4", "asset_id": "as_9", "processed_chunks": 2, "duplicate_chunks": 0,
          "total_completed": 2}
STATUS = {"upload_id": "up_1", "status": "active", "chunks_completed": 2, "chunks_failed": 1, "chunks_pending": 0,
          "total_size": 12000000, "uploaded_size": 10485760, "created_at": "2026-07-30T10:00:00Z",
          "uploaded_chunks": [{"index": 1, "status": "completed", "uploaded_at": "2026-07-30T10:01:00Z"},
                              {"index": 2, "status": "completed"},
                              {"index": 3, "status": "failed", "error": "checksum mismatch", "future": True}],
          "page_info": {"page": 1, "total_page": 1}}
INCOMPLETE = {"data": [{"upload_id": "up_1", "status": "active", "total_size": 12000000, "chunk_size": 5242880,
                        "total_chunks": 3, "created_at": "2026-07-30T10:00:00Z", "expires_at": "2026-07-31T10:00:00Z"}],
              "page_info": {"page": 1, "total_page": 1}}


def _mpu_responder(req):
    path = req.path.split("?")[0]
    if path.endswith("/presigned-urls"):
        return json_response(200, MORE_URLS)
    if path == "/v1.3/assets/multipart-uploads":
        if req.method == "POST":
            return json_response(201, SESSION)
        return json_response(200, INCOMPLETE if "page=1" in req.path else {"data": [], "page_info": {}})
    if req.method == "POST":
        return json_response(200, REPORT)
    return json_response(200, STATUS)


def test_multipart_calls_match_sdk():
    from twelvelabs.types import CompletedChunk as SdkChunk

    with CaptureServer(_mpu_responder) as server:
        ours, sdk = _ours(server.base_url).multipart_upload, _sdk(server.base_url).multipart_upload
        session = ours.create(filename="big clip.mp4", type="video", total_size=12000000)
        sdk.create(filename="big clip.mp4", type="video", total_size=12000000)
        ours.create(filename="a.mp3", type="audio", total_size=10, enable_hls=False, enable_thumbnail=True,
                    user_metadata={"team": "caf\u00e9", "n": 1.5})
        sdk.create(filename="a.mp3", type="audio", total_size=10, enable_hls=False, enable_thumbnail=True,
                   user_metadata={"team": "caf\u00e9", "n": 1.5})
        more = ours.get_additional_presigned_urls("up_1", start=3, count=1)
        sdk.get_additional_presigned_urls("up_1", start=3, count=1)
        report = ours.report_chunk_batch("up_1", completed_chunks=[
            embed_client.CompletedChunk(chunk_index=2, proof="etag-2", chunk_size=5242880),
            {"chunk_size": 1514240, "proof": "etag-3", "chunk_index": 3}])
        sdk.report_chunk_batch("up_1", completed_chunks=[
            SdkChunk(chunk_index=2, proof="etag-2", proof_type="etag", chunk_size=5242880),
            SdkChunk(chunk_index=3, proof="etag-3", proof_type="etag", chunk_size=1514240)])
        ours.report_chunk_batch("up_1", completed_chunks=[SdkChunk(chunk_index=1, proof="e1", proof_type="etag",
                                                                   chunk_size=7)])
        sdk.report_chunk_batch("up_1", completed_chunks=[SdkChunk(chunk_index=1, proof="e1", proof_type="etag",
                                                                  chunk_size=7)])
        status = ours.get_status("up_1")
        sdk.get_status("up_1")
        ours.get_status("up_1", page=2, page_limit=50)
        sdk.get_status("up_1", page=2, page_limit=50)
        incomplete = list(ours.list_incomplete_uploads(page_limit=10))
        list(sdk.list_incomplete_uploads(page_limit=10))
    reqs = server.requests
    pairs = [(reqs[i], reqs[i + 1]) for i in range(0, 12, 2)]
    for mine, theirs in pairs:
        assert_same_request(mine, theirs)
    assert reqs[0].body == b'{"filename":"big clip.mp4","type":"video","total_size":12000000}'
    assert json.loads(reqs[2].body)["user_metadata"] == {"team": "caf\u00e9", "n": 1.5}
    assert reqs[4].path == "/v1.3/assets/multipart-uploads/up_1/presigned-urls"
    assert reqs[4].body == b'{"start":3,"count":1}'
    assert reqs[6].path == "/v1.3/assets/multipart-uploads/up_1"
    assert json.loads(reqs[6].body) == {"completed_chunks": [
        {"chunk_index": 2, "proof": "etag-2", "proof_type": "etag", "chunk_size": 5242880},
        {"chunk_index": 3, "proof": "etag-3", "proof_type": "etag", "chunk_size": 1514240}]}
    assert (reqs[10].method, reqs[10].path) == ("GET", "/v1.3/assets/multipart-uploads/up_1?page=1")
    assert reqs[12].path == "/v1.3/assets/multipart-uploads/up_1?page=2&page_limit=50"
    assert_same_request(reqs[12], reqs[13])
    ours_list = [r for r in reqs[14:] if r.headers.get("User-Agent", "").startswith("tl-")]
    sdk_list = [r for r in reqs[14:] if not r.headers.get("User-Agent", "").startswith("tl-")]
    assert [r.path for r in ours_list] == [r.path for r in sdk_list] == [
        "/v1.3/assets/multipart-uploads?page=1&page_limit=10", "/v1.3/assets/multipart-uploads?page=2&page_limit=10"]
    for mine, theirs in zip(ours_list, sdk_list):
        assert_same_request(mine, theirs)
    # Parsed results.
    assert (session.upload_id, session.asset_id, session.chunk_size, session.total_chunks) == ("up_1", "as_9",
                                                                                                5242880, 3)
    assert [u.chunk_index for u in session.upload_urls] == [1, 2] and session.url_for(3) is None
    assert session.upload_headers == {"x-amz-server-side-encryption": "AES256"}
    assert SIGNATURE not in repr(session) and "X-Amz-Signature=***" in repr(session)
    assert more.upload_urls[0].chunk_index == 3 and more.start_index == 3 and SIGNATURE not in repr(more)
    assert (report.asset_id, report.processed_chunks, report.total_completed) == ("as_9", 2, 2)
    assert (status.status, status.chunks_completed, status.chunks_failed, status.total_size,
            status.uploaded_size) == ("active", 2, 1, 12000000, 10485760)
    assert [(c.index, c.status, c.error) for c in status.uploaded_chunks] == [
        (1, "completed", None), (2, "completed", None), (3, "failed", "checksum mismatch")]
    assert status.uploaded_chunks[2].extra == {"future": True} and not status.is_completed
    assert [(u.upload_id, u.total_chunks) for u in incomplete] == [("up_1", 3)]


# ---- put_chunk ----

def _storage(etag='"9b2cf535f27731c974343645a3985328"', status=200):
    return lambda req: (status, {"ETag": etag} if etag else {}, b"")


def _presigned(server, part=1):
    host = server.base_url.rsplit("/v1.3", 1)[0]
    return (f"{host}/bucket/obj%20key?partNumber={part}&uploadId=u1&X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential={CREDENTIAL}%2F20260730%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Expires=3600"
            f"&X-Amz-Signature={SIGNATURE}")


def test_put_chunk_sends_no_key_and_returns_the_etag(tmp_path):
    import requests

    caller = requests.Session()
    caller.headers.update({"X-Trace": "caller", "Authorization": "Bearer caller-token"})
    caller.cookies.set("sid", "cookie-secret")
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 40
    path.write_bytes(data)
    with CaptureServer(_storage()) as storage, CaptureServer(_json(ASSET)) as api:
        client = _ours(api.base_url, session=caller)
        mpu = client.multipart_upload
        url = _presigned(storage)
        assert mpu.put_chunk(url, b"chunk-one") == "9b2cf535f27731c974343645a3985328"
        with open(path, "rb") as f:
            f.seek(1000)
            assert mpu.put_chunk(url, f, length=3000, headers={"x-amz-server-side-encryption": "AES256"})
            assert f.tell() == 4000
            mpu.put_chunk(url, f)  # the rest of the file
        client.assets.retrieve("as_1")  # the API call still carries the key and the caller's session
    first, second, third = storage.requests
    for req in storage.requests:
        headers = _headers(req)
        assert "x-api-key" not in headers and "authorization" not in headers and "cookie" not in headers
        assert "x-trace" not in headers and KEY not in json.dumps(req.headers)
        assert req.method == "PUT" and req.path == url.split(storage.base_url.rsplit("/v1.3", 1)[0])[1]
    assert first.body == b"chunk-one" and _headers(first)["content-type"] == "application/octet-stream"
    assert second.body == data[1000:4000] and _headers(second)["x-amz-server-side-encryption"] == "AES256"
    assert third.body == data[4000:] and _headers(third)["content-length"] == str(len(data) - 4000)
    assert _headers(api.requests[0])["x-api-key"] == KEY and _headers(api.requests[0])["x-trace"] == "caller"


def test_put_chunk_sends_a_bytearray_or_a_view_as_they_are():
    """The uploader PUTs a view of a reused chunk buffer (no copy per chunk): the wire carries exactly its bytes."""
    buffer = bytearray(bytes(range(256)) * 8)
    with CaptureServer(_storage()) as storage:
        mpu = _ours(storage.base_url).multipart_upload
        mpu.put_chunk(_presigned(storage), buffer)
        mpu.put_chunk(_presigned(storage), memoryview(buffer)[100:612])
        with pytest.raises(errors.BadRequestError, match="512 bytes"):
            mpu.put_chunk(_presigned(storage), memoryview(buffer)[100:612], length=500)
    whole, part = storage.requests
    assert whole.body == bytes(buffer) and _headers(whole)["content-length"] == "2048"
    assert part.body == bytes(buffer[100:612]) and _headers(part)["content-length"] == "512"


def test_put_chunk_refuses_to_send_the_key():
    with CaptureServer(_storage()) as storage:
        mpu = _ours(storage.base_url).multipart_upload
        for headers in ({"x-api-key": "anything"}, {"X-Custom": KEY}):
            with pytest.raises(errors.BadRequestError):
                mpu.put_chunk(_presigned(storage), b"x", headers=headers)
    assert storage.requests == []


def test_an_unquoted_etag_is_returned_as_is_and_a_missing_one_is_malformed():
    with CaptureServer(_storage(etag="plain-etag")) as storage:
        assert _ours(storage.base_url).multipart_upload.put_chunk(_presigned(storage), b"x") == "plain-etag"
    with CaptureServer(_storage(etag=None)) as storage:
        with pytest.raises(errors.MalformedResponseError) as info:
            _ours(storage.base_url).multipart_upload.put_chunk(_presigned(storage), b"x")
    assert SIGNATURE not in str(info.value)


S3_EXPIRED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Request has expired'
              b'</Message><X-Amz-Expires>3600</X-Amz-Expires><SignatureProvided>' + SIGNATURE.encode() +
              b'</SignatureProvided><AWSAccessKeyId>' + CREDENTIAL.encode() + b'</AWSAccessKeyId></Error>')


@pytest.fixture
def all_logs(caplog, request):
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        caplog.set_level(logging.DEBUG, logger=name)
        if not logger.propagate:
            logger.addHandler(caplog.handler)
            request.addfinalizer(lambda lg=logger: lg.removeHandler(caplog.handler))
    return caplog


def _exception_texts(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield from (str(exc), repr(exc), repr(exc.args), repr(vars(exc)),
                    "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        exc = exc.__cause__ or exc.__context__


def _closed_port_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1.3"


@pytest.mark.parametrize("case", ["403_expired", "400_expired_token", "500", "503_slowdown", "404", "refused"])
def test_a_failing_put_is_typed_and_never_shows_the_signature(case, all_logs):
    responders = {
        "403_expired": lambda req: (403, {"Content-Type": "application/xml"}, S3_EXPIRED),
        "400_expired_token": lambda req: (400, {}, b"<Error><Code>ExpiredToken</Code><Message>The provided token has "
                                                   b"expired.</Message></Error>"),
        "500": lambda req: (500, {}, b"<Error><Code>InternalError</Code><Message>We encountered an internal error "
                                     b"for " + SIGNATURE.encode() + b"</Message></Error>"),
        "503_slowdown": lambda req: (503, {}, b"<Error><Code>SlowDown</Code><Message>Reduce your request rate."
                                              b"</Message></Error>"),
        "404": lambda req: (404, {}, b"<Error><Code>NoSuchUpload</Code><Message>The specified upload does not "
                                     b"exist.</Message></Error>"),
    }
    expected = {"403_expired": (errors.PresignedUrlExpiredError, False), "400_expired_token":
                (errors.PresignedUrlExpiredError, False), "500": (errors.ServerError, True),
                "503_slowdown": (errors.ServerError, True), "404": (errors.NotFoundError, False),
                "refused": (errors.ConnectionFailedError, True)}[case]
    if case == "refused":
        base = _closed_port_url()
        url = _presigned(type("S", (), {"base_url": base})())
        mpu = _ours(base).multipart_upload
        with pytest.raises(expected[0]) as info:
            mpu.put_chunk(url, b"data")
    else:
        with CaptureServer(responders[case]) as storage:
            url = _presigned(storage)
            with pytest.raises(expected[0]) as info:
                _ours(storage.base_url).multipart_upload.put_chunk(url, io.BytesIO(b"data" * 100))
    err = info.value
    assert err.is_retryable is expected[1]
    if expected[0] is errors.PresignedUrlExpiredError:
        assert err.needs_fresh_url and err.status in (400, 403) and "fresh" in err.message
        assert not isinstance(err, errors.AuthError)
    texts = list(_exception_texts(err)) + [pickle.dumps(err).decode("latin-1")]
    logs = all_logs.text + "".join(repr(r.__dict__) for r in all_logs.records)
    for secret in (SIGNATURE, CREDENTIAL):
        assert not [t for t in texts if secret in t], case
        assert secret not in logs, case
    assert "X-Amz-Signature=***" in str(err)
    if case != "refused":
        # urllib3 logged the request line at DEBUG: it is there, redacted.
        lines = [r.getMessage() for r in all_logs.records if r.name.startswith("urllib3")]
        assert any("PUT /bucket/obj%20key?partNumber=1" in line and "X-Amz-Signature=***" in line for line in lines)


def test_put_chunk_timeout_is_typed_without_the_signature():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        base = f"http://127.0.0.1:{listener.getsockname()[1]}/v1.3"
        url = _presigned(type("S", (), {"base_url": base})())
        with pytest.raises(errors.EmbedTimeoutError) as info:
            _ours(base).multipart_upload.put_chunk(url, b"x" * 10, timeout=(1.0, 0.3))
    finally:
        listener.close()
    assert info.value.is_retryable
    assert not [t for t in _exception_texts(info.value) if SIGNATURE in t]


def test_a_whole_multipart_upload_through_the_client(tmp_path):
    """create -> PUT every chunk (streamed file slices, URLs fetched when missing) -> report -> status."""
    data = bytes(range(256)) * 100 + b"end"  # 25603 bytes in chunks of 10000
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    stored = {}

    def responder(req):
        if req.method == "PUT":
            part = int(req.path.split("partNumber=")[1].split("&")[0])
            stored[part] = req.body
            return 200, {"ETag": f'"etag-{part}"'}, b""
        if req.path.endswith("/presigned-urls"):
            start = json.loads(req.body)["start"]
            return json_response(200, {"upload_urls": [{"chunk_index": start, "url": _presigned(server, start)}]})
        if req.path == "/v1.3/assets/multipart-uploads":
            return json_response(201, {"upload_id": "up", "asset_id": "as", "chunk_size": 10000, "total_chunks": 3,
                                       "upload_urls": [{"chunk_index": i, "url": _presigned(server, i)}
                                                       for i in (1, 2)]})
        if req.method == "POST":
            return json_response(200, {"asset_id": "as", "total_completed": 3})
        return json_response(200, {"upload_id": "up", "status": "completed", "total_size": len(data)})

    with CaptureServer(responder) as server:
        mpu = _ours(server.base_url).multipart_upload
        session = mpu.create(filename="v.mp4", type="video", total_size=len(data))
        done = []
        with open(path, "rb") as f:
            for index in range(1, session.total_chunks + 1):
                url = session.url_for(index) or mpu.get_additional_presigned_urls(
                    session.upload_id, start=index, count=1).upload_urls[0]
                offset, length = embed_client.chunk_span(index, session.chunk_size, len(data))
                f.seek(offset)
                done.append(embed_client.CompletedChunk(index, mpu.put_chunk(url.url, f, length=length), length))
        mpu.report_chunk_batch(session.upload_id, completed_chunks=done)
        assert mpu.get_status(session.upload_id).is_completed
    assert b"".join(stored[i] for i in (1, 2, 3)) == data
    report = json.loads(next(r for r in server.requests if r.path == "/v1.3/assets/multipart-uploads/up"
                             and r.method == "POST").body)
    assert report == {"completed_chunks": [{"chunk_index": i, "proof": f"etag-{i}", "proof_type": "etag",
                                            "chunk_size": n} for i, n in ((1, 10000), (2, 10000), (3, 5603))]}


# ---- API errors of the new endpoints ----

def _api_error(status, code, message, headers=None):
    return _json({"code": code, "message": message}, status, headers)


@pytest.mark.parametrize("call,status,exc,retryable", [
    ("retrieve", 404, errors.NotFoundError, False),
    ("delete", 409, errors.ConflictError, False),
    ("create", 429, errors.RateLimitError, True),
    ("mpu_create", 403, errors.AuthError, False),
    ("status", 404, errors.NotFoundError, False),
    ("status", 500, errors.ServerError, True),
    ("report", 400, errors.BadRequestError, False),
    ("urls", 502, errors.ServerError, True),
])
def test_api_errors_are_typed(call, status, exc, retryable):
    headers = {"Retry-After": "2", "X-Ratelimit-Limit": "30", "X-Ratelimit-Remaining": "0"} if status == 429 else None
    with CaptureServer(_api_error(status, "some_code", f"failed; echo {KEY}", headers)) as server:
        client = _ours(server.base_url)
        calls = {
            "retrieve": lambda: client.assets.retrieve("nope"),
            "delete": lambda: client.assets.delete("as_1"),
            "create": lambda: client.assets.create(method="url", url="https://m/v.mp4"),
            "mpu_create": lambda: client.multipart_upload.create(filename="a", type="video", total_size=1),
            "status": lambda: client.multipart_upload.get_status("up_x"),
            "report": lambda: client.multipart_upload.report_chunk_batch(
                "up", completed_chunks=[{"chunk_index": 1, "proof": "e", "chunk_size": 1}]),
            "urls": lambda: client.multipart_upload.get_additional_presigned_urls("up", start=1, count=2),
        }
        with pytest.raises(exc) as info:
            calls[call]()
    err = info.value
    assert type(err) is exc and err.status == status and err.code == "some_code"
    assert err.is_retryable is retryable and KEY not in str(err) and KEY not in repr(err)
    if status == 409:
        assert isinstance(err, errors.BadRequestError) and not isinstance(err, errors.ServerError)
    if status == 429:
        assert err.rate_limit.limit == 30 and err.rate_limit.remaining == 0 and 1.0 <= err.wait_seconds <= 2.0


def test_the_embed_endpoints_409_stays_a_retryable_server_error():
    with CaptureServer(_json({"error": {"code": "conflict", "message": "busy"}}, 409)) as server:
        with pytest.raises(errors.ServerError) as info:
            _ours(server.base_url).v2.create("text", "marengo3.0", text={"input_text": "x"})
    assert info.value.is_retryable and not isinstance(info.value, errors.ConflictError)


def test_malformed_bodies_are_typed():
    with CaptureServer(_json({"status": "ready"})) as server:  # no _id
        with pytest.raises(errors.MalformedResponseError):
            _ours(server.base_url).assets.retrieve("as_1")
    with CaptureServer(_json({"upload_urls": "nope", "upload_id": "u"}, 201)) as server:
        with pytest.raises(errors.MalformedResponseError):
            _ours(server.base_url).multipart_upload.create(filename="a", type="video", total_size=1)


# ---- redaction units ----

@pytest.mark.parametrize("url,shown", [
    (f"https://b.s3.amazonaws.com/k?partNumber=2&uploadId=a%2Fb&X-Amz-Algorithm=AWS4-HMAC-SHA256"
     f"&X-Amz-Credential={CREDENTIAL}%2F20260730%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260730T100000Z"
     f"&X-Amz-Expires=3600&X-Amz-Security-Token=tok3n&X-Amz-Signature={SIGNATURE}",
     "https://b.s3.amazonaws.com/k?partNumber=2&uploadId=a%2Fb&X-Amz-Algorithm=AWS4-HMAC-SHA256"
     "&X-Amz-Credential=***&X-Amz-Date=20260730T100000Z&X-Amz-Expires=3600&X-Amz-Security-Token=***"
     "&X-Amz-Signature=***"),
    (f"https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p.iam"
     f"&X-Goog-Signature={SIGNATURE}",
     "https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=***"
     "&X-Goog-Signature=***"),
    (f"https://a.blob.core.windows.net/c/b?sv=2024-01-01&se=2026&sp=w&sig={SIGNATURE}%3D",
     "https://a.blob.core.windows.net/c/b?sv=2024-01-01&se=2026&sp=w&sig=***"),
    (f"https://d.cloudfront.net/v.mp4?Expires=1&Signature={SIGNATURE}~&Key-Pair-Id=K2",
     "https://d.cloudfront.net/v.mp4?Expires=1&Signature=***&Key-Pair-Id=***"),
    (f"https://h.example/o?X%2DAmz%2DSignature={SIGNATURE}&AWSAccessKeyId={CREDENTIAL}&a=%20b",
     "https://h.example/o?X%2DAmz%2DSignature=***&AWSAccessKeyId=***&a=%20b"),
    ("https://h.example/o?a=1&b=2", "https://h.example/o?a=1&b=2"),
])
def test_redact_url_masks_storage_signatures(url, shown):
    assert redact_url(url) == shown
    assert SIGNATURE not in scrub(f"PUT {url} failed") and CREDENTIAL not in scrub(f"PUT {url} failed")


def test_public_names():
    for name in ("AssetsClient", "MultipartUploadClient", "Asset", "UploadSession", "PresignedUrl", "PresignedUrls",
                 "CompletedChunk", "ChunkBatchReport", "ChunkInfo", "UploadStatus", "IncompleteUpload", "Page",
                 "ConflictError", "PresignedUrlExpiredError", "chunk_span"):
        assert hasattr(embed_client, name), name
    client = EmbedClient(api_key=KEY)
    assert isinstance(client.assets, embed_client.AssetsClient)
    assert isinstance(client.multipart_upload, embed_client.MultipartUploadClient)
    assert KEY not in repr(client.assets) and KEY not in repr(client.multipart_upload)
    clone = pickle.loads(pickle.dumps(EmbedClient(base_url="http://127.0.0.1:9/v1.3")))
    assert isinstance(clone.multipart_upload, embed_client.MultipartUploadClient)
    assert embed_client.chunk_span(3, 10, 25) == (20, 5)
