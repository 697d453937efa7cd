"""EmbedClient's Embed API v2: bytes on the wire against SDK 1.3.6, response parsing, paging, errors."""
import base64
import json
import math
import pickle
import socket
import threading
import time

import pytest

import embed_client
from embed_client import EmbedClient, errors, v2
from embed_client.v2 import media_source, multi_input_source
from tests.capture_server import CapturedRequest, CaptureServer, json_response

KEY = "tlk_FAKE_V2_KEY_0123456789abcdef"

SYNC_OK = {
    "data": [
        {"embedding": [0.1, -0.2, 0.3], "embedding_option": "visual", "embedding_scope": "clip",
         "start_sec": 0.0, "end_sec": 6.5, "future": 1},
        {"embedding": [0.4, 0.5, 0.6], "embedding_option": None, "embedding_scope": "asset",
         "start_sec": None, "end_sec": None, "embedding_uncertainty": [0.01, 0.02, 0.03],
         "start_page_number": 1, "end_page_number": 2, "quadrant": "top_left", "chunk_index": 0},
    ],
    "usage": {"input_tokens": {"text": 6, "image": 258}, "truncated": True, "truncation_reason": "model_context_window"},
    "metadata": {"input_type": "multi_input", "embedding_dimension": 256},
}
TASK_CREATED = {"_id": "6659a1b2c3d4e5f6a7b8c9d0", "status": "processing", "data": None,
                "metadata": {"embedding_dimension": 512}}


class V2CaptureServer(CaptureServer):
    """The shared capture server, also answering GET (the v2 task list and retrieve)."""

    def __init__(self, responder=None):
        super().__init__(responder)
        outer = self

        def do_GET(handler):
            req = CapturedRequest("GET", handler.path, dict(handler.headers), b"")
            outer.requests.append(req)
            status, headers, payload = outer.responder(req)
            head = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
            head.append(f"Content-Length: {len(payload)}")
            handler.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)

        self._server.RequestHandlerClass.do_GET = do_GET


def _ok(obj=None, status=200, headers=None):
    return lambda req: json_response(status, SYNC_OK if obj is None else obj, headers)


def _sdk(base_url):
    from twelvelabs import TwelveLabs

    return TwelveLabs(api_key=KEY, base_url=base_url)


def _ours(base_url, **kwargs):
    return EmbedClient(api_key=KEY, base_url=base_url, **kwargs)


def _headers(req):
    return {k.lower(): v for k, v in req.headers.items()}


def assert_same_request(mine, sdk):
    assert (mine.method, mine.path) == (sdk.method, sdk.path)
    assert mine.body == sdk.body, (mine.body, sdk.body)
    ours, theirs = _headers(mine), _headers(sdk)
    for name in ("content-type", "accept", "x-api-key", "content-length"):
        assert ours.get(name) == theirs.get(name), name
    assert ours["x-api-key"] == KEY


PNG = b"\x89PNG\r\n\x1a\n\x00\x00tiny"
PNG_B64 = base64.b64encode(PNG).decode()


def _sync_cases():
    from twelvelabs import types as T

    return {
        "text": (
            dict(input_type="text", model_name="marengo3.0", text={"input_text": "a man with a dog"}),
            dict(input_type="text", model_name="marengo3.0", text=T.TextInputRequest(input_text="a man with a dog"))),
        "text_unicode": (
            dict(input_type="text", model_name="marengo3.0", text={"input_text": 'caf\u00e9 "q" \u732b\n\U0001F415 <\\>'}),
            dict(input_type="text", model_name="marengo3.0",
                 text=T.TextInputRequest(input_text='caf\u00e9 "q" \u732b\n\U0001F415 <\\>'))),
        "image_url": (
            dict(input_type="image", model_name="marengo3.0",
                 image={"media_source": media_source(url="https://ex.com/a.jpg?x=1&y=\u00e4")}),
            dict(input_type="image", model_name="marengo3.0",
                 image=T.ImageInputRequest(media_source=T.MediaSource(url="https://ex.com/a.jpg?x=1&y=\u00e4")))),
        "image_base64": (
            dict(input_type="image", model_name="marengo3.0", image={"media_source": media_source(file=PNG)}),
            dict(input_type="image", model_name="marengo3.0",
                 image=T.ImageInputRequest(media_source=T.MediaSource(base_64_string=PNG_B64)))),
        "text_image": (
            dict(input_type="text_image", model_name="marengo3.0",
                 text_image={"input_text": "red car", "media_source": {"asset_id": "asset123"}}),
            dict(input_type="text_image", model_name="marengo3.0",
                 text_image=T.TextImageInputRequest(input_text="red car",
                                                    media_source=T.MediaSource(asset_id="asset123")))),
        "audio_full": (
            dict(input_type="audio", model_name="marengo3.0", audio={
                "embedding_type": ["separate_embedding", "fused_embedding"], "embedding_scope": ["clip", "asset"],
                "embedding_option": ["audio", "transcription"], "segmentation": {"fixed": {"duration_sec": 5.0},
                                                                                 "strategy": "fixed"},
                "end_sec": 12, "start_sec": 0, "media_source": {"url": "https://ex.com/a.mp3"}}),
            dict(input_type="audio", model_name="marengo3.0", audio=T.AudioInputRequest(
                media_source=T.MediaSource(url="https://ex.com/a.mp3"), start_sec=0, end_sec=12,
                segmentation=T.AudioSegmentation(strategy="fixed", fixed=T.AudioSegmentationFixed(duration_sec=5)),
                embedding_option=["audio", "transcription"], embedding_scope=["clip", "asset"],
                embedding_type=["separate_embedding", "fused_embedding"]))),
        "video_dynamic": (
            dict(input_type="video", model_name="marengo3.0", video={
                "media_source": {"base64_string": "AAAA"}, "start_sec": 1.5, "end_sec": 9.25,
                "segmentation": {"dynamic": {"min_duration_sec": 3}, "strategy": "dynamic"},
                "embedding_option": ["visual", "audio", "transcription"], "embedding_scope": ["clip"],
                "embedding_type": ["fused_embedding"]}),
            dict(input_type="video", model_name="marengo3.0", video=T.VideoInputRequest(
                media_source=T.MediaSource(base_64_string="AAAA"), start_sec=1.5, end_sec=9.25,
                segmentation={"strategy": "dynamic", "dynamic": {"min_duration_sec": 3}},
                embedding_option=["visual", "audio", "transcription"], embedding_scope=["clip"],
                embedding_type=["fused_embedding"]))),
        "multi_input_35_dimension": (
            dict(input_type="multi_input", model_name="marengo3.5", embedding_dimension=256, multi_input={
                "media_sources": [multi_input_source("image", file=PNG, name="d"),
                                  {"url": "https://ex.com/v.mp4", "media_type": "video"}],
                "input_text": "a dog like <@d>"}),
            dict(input_type="multi_input", model_name="marengo3.5", embedding_dimension=256,
                 multi_input=T.MultiInputRequest(input_text="a dog like <@d>", media_sources=[
                     T.MultiInputMediaSource(name="d", media_type="image", base_64_string=PNG_B64),
                     T.MultiInputMediaSource(media_type="video", url="https://ex.com/v.mp4")]))),
        "auto_truncate": (
            dict(input_type="multi_input", model_name="marengo3.5", auto_truncate=True,
                 multi_input={"input_text": "long " * 50}),
            dict(input_type="multi_input", model_name="marengo3.5", auto_truncate=True,
                 multi_input=T.MultiInputRequest(input_text="long " * 50))),
        "embedding_uncertainty": (
            dict(input_type="multi_input", model_name="marengo3.5", embedding_uncertainty=True,
                 embedding_dimension=128, auto_truncate=False,
                 multi_input={"media_sources": [{"media_type": "audio", "asset_id": "a1"}]}),
            dict(input_type="multi_input", model_name="marengo3.5", embedding_uncertainty=True,
                 embedding_dimension=128, auto_truncate=False,
                 multi_input=T.MultiInputRequest(media_sources=[T.MultiInputMediaSource(media_type="audio",
                                                                                        asset_id="a1")]))),
        "sdk_model_passed_to_us": (
            dict(input_type="video", model_name="marengo3.0", video=T.VideoInputRequest(
                media_source=T.MediaSource(url="https://ex.com/v.mp4"), end_sec=4,
                segmentation={"strategy": "fixed", "fixed": {"duration_sec": 4}})),
            dict(input_type="video", model_name="marengo3.0", video=T.VideoInputRequest(
                media_source=T.MediaSource(url="https://ex.com/v.mp4"), end_sec=4,
                segmentation={"strategy": "fixed", "fixed": {"duration_sec": 4}}))),
        "extra_body_and_headers": (
            dict(input_type="text", model_name="marengo3.0", text={"input_text": "x"},
                 request_options={"additional_body_parameters": {"future_flag": True, "model_name": "marengo3.0"},
                                  "additional_headers": {"X-Trace": "t1"}}),
            dict(input_type="text", model_name="marengo3.0", text=T.TextInputRequest(input_text="x"),
                 request_options={"additional_body_parameters": {"future_flag": True, "model_name": "marengo3.0"},
                                  "additional_headers": {"X-Trace": "t1"}})),
    }


SYNC_CASE_NAMES = ["text", "text_unicode", "image_url", "image_base64", "text_image", "audio_full", "video_dynamic",
                   "multi_input_35_dimension", "auto_truncate", "embedding_uncertainty", "sdk_model_passed_to_us",
                   "extra_body_and_headers"]


@pytest.mark.parametrize("case", SYNC_CASE_NAMES)
def test_sync_request_bytes_match_sdk(case):
    ours, theirs = _sync_cases()[case]
    with V2CaptureServer(_ok()) as server:
        _ours(server.base_url).v2.create(**ours)
        _sdk(server.base_url).embed.v_2.create(**theirs)
    mine, sdk = server.requests
    assert_same_request(mine, sdk)
    assert (mine.method, mine.path) == ("POST", "/v1.3/embed-v2")
    assert _headers(mine)["content-type"] == "application/json"
    if case == "extra_body_and_headers":
        assert _headers(mine)["x-trace"] == _headers(sdk)["x-trace"] == "t1"


def test_a_built_body_is_the_same_bytes_on_every_send():
    with V2CaptureServer(_ok()) as server:
        client = _ours(server.base_url)
        body = client.v2.build_create("text", "marengo3.0", text={"input_text": "retry me"})
        assert body == client.v2.build_create("text", "marengo3.0", text={"input_text": "retry me"})
        assert body == v2.build_create_body("text", "marengo3.0", text={"input_text": "retry me"})
        client.v2.send(body)
        client.v2.send(body)
    first, second = server.requests
    assert first.body == second.body == body == b'{"input_type":"text","model_name":"marengo3.0","text":{"input_text":"retry me"}}'


def test_wire_normalisation_of_dicts():
    body = json.loads(v2.build_create_body(
        "video", "marengo3.0", embedding_dimension="256",
        video={"end_sec": 3, "media_source": {"base_64_string": "QQ==", "url": None},
               "segmentation": {"fixed": {"duration_sec": 6.0}, "strategy": "fixed"}, "custom": {"b": 1, "a": 2},
               "start_sec": None}))
    assert body["embedding_dimension"] == 256
    assert json.dumps(body["video"], separators=(",", ":")) == (
        '{"media_source":{"base64_string":"QQ=="},"end_sec":3.0,'
        '"segmentation":{"strategy":"fixed","fixed":{"duration_sec":6}},"custom":{"b":1,"a":2}}')


@pytest.mark.parametrize("kwargs,code", [
    (dict(input_type="text", model_name="marengo3.0"), "parameter_not_provided"),
    (dict(input_type="text", model_name="marengo3.0", text="just a string"), "parameter_invalid"),
    (dict(input_type="", model_name="marengo3.0", text={"input_text": "x"}), "parameter_not_provided"),
    (dict(input_type="text", model_name=None, text={"input_text": "x"}), "parameter_not_provided"),
    (dict(input_type="multi_input", model_name="marengo3.5", embedding_dimension="big",
          multi_input={"input_text": "x"}), "parameter_invalid"),
    (dict(input_type="video", model_name="marengo3.0",
          video={"media_source": {"url": "u"}, "start_sec": float("nan")}), "parameter_invalid"),
])
def test_local_validation_fails_before_sending(kwargs, code):
    with V2CaptureServer(_ok()) as server:
        with pytest.raises(errors.BadRequestError) as info:
            _ours(server.base_url).v2.create(**kwargs)
    assert server.requests == [] and info.value.code == code and not info.value.is_retryable


def test_media_source_helper(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(PNG)
    assert media_source(file=path) == media_source(file=str(path)) == media_source(file=PNG) == {"base64_string": PNG_B64}
    with open(path, "rb") as f:
        assert media_source(file=f) == {"base64_string": PNG_B64}
    assert media_source(url="https://e/x.png") == {"url": "https://e/x.png"}
    assert media_source(asset_id="as1") == {"asset_id": "as1"}
    for bad in ({}, {"url": "u", "asset_id": "a"}):
        with pytest.raises(errors.BadRequestError):
            media_source(**bad)
    assert list(multi_input_source("image", asset_id="a", name="n")) == ["name", "media_type", "asset_id"]


def _task_cases():
    from twelvelabs import types as T

    return {
        "video_url_30_segmentation": (
            dict(input_type="video", model_name="marengo3.0", video={
                "media_source": {"url": "https://ex.com/long.mp4"},
                "segmentation": {"strategy": "dynamic", "dynamic": {"min_duration_sec": 4}},
                "embedding_scope": ["clip", "asset"]}),
            dict(input_type="video", model_name="marengo3.0", video=T.AsyncVideoInputRequest(
                media_source=T.MediaSource(url="https://ex.com/long.mp4"),
                segmentation={"strategy": "dynamic", "dynamic": {"min_duration_sec": 4}},
                embedding_scope=["clip", "asset"]))),
        "video_35_temporal_dimension": (
            dict(input_type="video", model_name="marengo3.5", embedding_dimension=256, embedding_uncertainty=True,
                 video={"media_source": {"asset_id": "as9"}, "embedding_scope": ["local"],
                        "segmentation": {"temporal": {"fixed": {"duration_sec": 6}, "strategy": "fixed"}},
                        "embedding_option": ["visual", "audio"], "embedding_type": ["fused_embedding"],
                        "time_based_metadata": [{"text": "intro", "start": 0, "end": 2.5}]}),
            dict(input_type="video", model_name="marengo3.5", embedding_dimension=256, embedding_uncertainty=True,
                 video=T.AsyncVideoInputRequest(
                     media_source=T.MediaSource(asset_id="as9"), embedding_scope=["local"],
                     segmentation=T.AsyncTemporalSegmentation(temporal={"strategy": "fixed",
                                                                        "fixed": {"duration_sec": 6}}),
                     embedding_option=["visual", "audio"], embedding_type=["fused_embedding"],
                     time_based_metadata=[T.TimeBasedMetadataEntry(start=0, end=2.5, text="intro")]))),
        "audio_30": (
            dict(input_type="audio", model_name="marengo3.0",
                 audio={"media_source": {"url": "https://ex.com/a.wav"}, "start_sec": 2, "end_sec": 60,
                        "segmentation": {"strategy": "fixed", "fixed": {"duration_sec": 10}}}),
            dict(input_type="audio", model_name="marengo3.0", audio=T.AsyncAudioInputRequest(
                media_source=T.MediaSource(url="https://ex.com/a.wav"), start_sec=2, end_sec=60,
                segmentation=T.AudioSegmentation(strategy="fixed", fixed=T.AudioSegmentationFixed(duration_sec=10))))),
        "document_txt_sequential": (
            dict(input_type="document", model_name="marengo3.5", document={
                "embedding_scope": ["local"], "embedding_option": ["text"], "media_source": {"url": "https://e/a.md"},
                "segmentation": {"sequential": {"overlap_sentences": 1, "max_sentences": 4, "strategy": "sentence"}}}),
            dict(input_type="document", model_name="marengo3.5", document=T.AsyncDocumentInputRequest(
                media_source=T.MediaSource(url="https://e/a.md"), embedding_option=["text"], embedding_scope=["local"],
                segmentation={"sequential": {"strategy": "sentence", "max_sentences": 4, "overlap_sentences": 1}}))),
        "image_35": (
            dict(input_type="image", model_name="marengo3.5", embedding_dimension=512,
                 image={"media_source": media_source(file=PNG), "embedding_scope": ["asset"]}),
            dict(input_type="image", model_name="marengo3.5", embedding_dimension=512, image=T.AsyncImageInputRequest(
                media_source=T.MediaSource(base_64_string=PNG_B64), embedding_scope=["asset"]))),
    }


@pytest.mark.parametrize("case", ["video_url_30_segmentation", "video_35_temporal_dimension", "audio_30",
                                  "document_txt_sequential", "image_35"])
def test_task_create_bytes_match_sdk(case):
    ours, theirs = _task_cases()[case]
    with V2CaptureServer(_ok(TASK_CREATED, 202)) as server:
        created = _ours(server.base_url).tasks.create(**ours)
        sdk_created = _sdk(server.base_url).embed.v_2.tasks.create(**theirs)
    mine, sdk = server.requests
    assert_same_request(mine, sdk)
    assert (mine.method, mine.path) == ("POST", "/v1.3/embed-v2/tasks")
    assert created.id == sdk_created.id == TASK_CREATED["_id"]
    assert created.status == "processing" and created.data is None
    assert created.metadata == {"embedding_dimension": 512}


def test_task_create_build_and_send_split():
    with V2CaptureServer(_ok(TASK_CREATED, 202)) as server:
        client = _ours(server.base_url)
        body = client.tasks.build_create("video", "marengo3.0", video={"media_source": {"url": "https://e/v.mp4"}})
        assert body == v2.build_task_create_body("video", "marengo3.0", video={"media_source": {"url": "https://e/v.mp4"}})
        assert client.tasks.send_create(body).id == TASK_CREATED["_id"]
    assert server.requests[0].body == body


READY = {"_id": "t1", "status": "ready", "created_at": "2026-01-02T03:04:05Z", "updated_at": "2026-01-02T03:05:00Z",
         "data": SYNC_OK["data"], "usage": {"input_tokens": {"video": 1200}, "truncated": False},
         "metadata": {"input_type": "video", "embedding_options": ["visual"], "embedding_scopes": ["clip"],
                      "duration": 12.0}}
FAILED = {"_id": "t2", "status": "failed", "created_at": "2026-01-02T03:04:05Z", "updated_at": None, "data": None,
          "error": {"message": f"Duration (35.0 seconds) exceeds maximum limit of 30 seconds; key {KEY}"}}


def test_task_retrieve_matches_sdk_and_parses_ready_and_failed():
    bodies = {"/v1.3/embed-v2/tasks/t1": READY, "/v1.3/embed-v2/tasks/t2": FAILED}
    with V2CaptureServer(lambda req: json_response(200, bodies[req.path])) as server:
        client = _ours(server.base_url)
        ready = client.tasks.retrieve("t1")
        _sdk(server.base_url).embed.v_2.tasks.retrieve("t1")
        failed = client.tasks.retrieve("t2", request_options={"timeout_in_seconds": 5})
    assert_same_request(server.requests[0], server.requests[1])
    assert server.requests[0].method == "GET" and server.requests[0].body == b""
    assert "content-type" not in _headers(server.requests[0])
    assert ready.id == "t1" and ready.status == "ready" and ready.is_done
    assert ready.created_at == "2026-01-02T03:04:05Z"
    assert [d.embedding for d in ready.data] == [[0.1, -0.2, 0.3], [0.4, 0.5, 0.6]]
    assert ready.usage.input_tokens == {"video": 1200} and ready.usage.truncated is False
    assert ready.metadata["duration"] == 12.0 and ready.error_message is None
    assert failed.status == "failed" and failed.data is None and failed.is_done
    assert failed.error_message.startswith("Duration (35.0 seconds) exceeds") and KEY not in failed.error_message


def test_task_retrieve_escapes_the_id_and_refuses_an_empty_one():
    with V2CaptureServer(lambda req: json_response(404, {"error": {"code": "resource_not_exist", "message": "no"}})) as server:
        client = _ours(server.base_url)
        with pytest.raises(errors.NotFoundError):
            client.tasks.retrieve("../a b?c")
        with pytest.raises(errors.BadRequestError):
            client.tasks.retrieve("")
    assert [r.path for r in server.requests] == ["/v1.3/embed-v2/tasks/..%2Fa%20b%3Fc"]


def test_task_list_query_matches_sdk():
    page = {"data": [{"_id": "t1", "model_name": "marengo3.0", "status": "ready", "created_at": "2026-01-01T00:00:00Z",
                      "updated_at": "2026-01-01T00:01:00Z", "video_embedding": {"metadata": {"duration": 3}}}],
            "page_info": {"limit_per_page": 5, "page": 2, "total_page": 3, "total_results": 11}}
    params = dict(started_at="2026-01-01T00:00:00Z", ended_at="2026-01-07T23:59:59+01:00", status="ready", page=2,
                  page_limit=5)
    with V2CaptureServer(lambda req: json_response(200, page)) as server:
        tasks, info = _ours(server.base_url).tasks.list_page(**params)
        _sdk(server.base_url).embed.v_2.tasks.list(**params)
        _ours(server.base_url).tasks.list_page()
        _sdk(server.base_url).embed.v_2.tasks.list()
    mine, sdk, mine_default, sdk_default = server.requests
    assert_same_request(mine, sdk)
    assert_same_request(mine_default, sdk_default)
    assert mine.path == ("/v1.3/embed-v2/tasks?started_at=2026-01-01T00%3A00%3A00Z"
                         "&ended_at=2026-01-07T23%3A59%3A59%2B01%3A00&status=ready&page=2&page_limit=5")
    assert mine_default.path == "/v1.3/embed-v2/tasks?page=1"
    assert info == page["page_info"]
    assert (tasks[0].id, tasks[0].model_name, tasks[0].status) == ("t1", "marengo3.0", "ready")
    assert tasks[0].created_at == "2026-01-01T00:00:00Z"
    assert tasks[0].extra == {"video_embedding": {"metadata": {"duration": 3}}}


def _pages(count, per_page=2):
    def responder(req):
        page = int(req.path.split("page=")[1].split("&")[0])
        items = [] if page > count else [
            {"_id": f"p{page}-{i}", "model_name": "marengo3.0", "status": "ready"} for i in range(per_page)]
        return json_response(200, {"data": items, "page_info": {"page": page, "total_page": count}})
    return responder


@pytest.mark.parametrize("pages", [3, 0])
def test_task_list_pages_like_the_sdk(pages):
    with V2CaptureServer(_pages(pages)) as server:
        ours = [t.id for t in _ours(server.base_url).tasks.list(page_limit=2, status="ready")]
        mine_paths = [r.path for r in server.requests]
        server.requests.clear()
        theirs = [t.id for t in _sdk(server.base_url).embed.v_2.tasks.list(page_limit=2, status="ready")]
        sdk_paths = [r.path for r in server.requests]
    assert ours == theirs == [f"p{p}-{i}" for p in range(1, pages + 1) for i in range(2)]
    assert mine_paths == sdk_paths
    # 3 pages with data, then the empty 4th; an empty first page still asks for page 2, as the SDK does.
    assert len(mine_paths) == (pages + 1 if pages else 2)


def test_task_pager_exposes_pages():
    with V2CaptureServer(_pages(3, per_page=1)) as server:
        first = _ours(server.base_url).tasks.list(page=2)
        assert len(server.requests) == 1  # the first page is fetched at once, the rest lazily
        pages = list(first.iter_pages())
    assert [p.page for p in pages] == [2, 3] and [p.items[0].id for p in pages] == ["p2-0", "p3-0"]
    assert pages[0].page_info == {"page": 2, "total_page": 3}


def test_sync_response_is_parsed_with_rate_limit_headers():
    headers = {"X-Ratelimit-Limit": "600", "X-Ratelimit-Remaining": "598", "X-Ratelimit-Dimensions": "rpm"}
    with V2CaptureServer(_ok(SYNC_OK, 200, headers)) as server:
        result = _ours(server.base_url).v2.create("multi_input", "marengo3.5", multi_input={"input_text": "x"})
    first, second = result.data
    assert first.embedding == [0.1, -0.2, 0.3] and first.embedding_option == "visual"
    assert (first.embedding_scope, first.start_sec, first.end_sec) == ("clip", 0.0, 6.5)
    assert first.extra == {"future": 1} and first.embedding_uncertainty is None
    assert second.embedding_uncertainty == [0.01, 0.02, 0.03] and second.embedding_option is None
    assert (second.start_page_number, second.end_page_number, second.quadrant, second.chunk_index) == (1, 2, "top_left", 0)
    assert result.usage.input_tokens == {"text": 6, "image": 258}
    assert result.usage.truncated is True and result.usage.truncation_reason == "model_context_window"
    assert result.metadata == {"input_type": "multi_input", "embedding_dimension": 256}
    assert (result.rate_limit.limit, result.rate_limit.remaining, result.rate_limit.dimensions) == (600, 598, "rpm")


def test_text_response_without_usage_or_metadata():
    body = {"data": [{"embedding": [1, 2], "embedding_option": None, "embedding_scope": None,
                      "start_sec": None, "end_sec": None}]}
    with V2CaptureServer(_ok(body)) as server:
        result = _ours(server.base_url).v2.create("text", "marengo3.0", text={"input_text": "x"})
    assert result.data[0].embedding == [1, 2] and result.usage is None and result.metadata is None


def _raw(status, payload, headers=None):
    return lambda req: (status, {"Content-Type": "application/json", **(headers or {})}, payload)


ERROR_CASES = {
    "400_nested": (_ok({"error": {"code": "parameter_invalid", "message": "The `embedding_dimension` is invalid.",
                                  "details": {"field": "embedding_dimension", "echo": KEY}}}, 400),
                   errors.BadRequestError, 400, "parameter_invalid", False),
    "400_flat": (_ok({"code": "parameter_invalid", "message": "flat v1 shape"}, 400),
                 errors.BadRequestError, 400, "parameter_invalid", False),
    "401": (_ok({"error": {"code": "api_key_invalid", "message": "The API key is invalid."}}, 401),
            errors.AuthError, 401, "api_key_invalid", False),
    "404": (_ok({"error": {"code": "resource_not_exist", "message": "No such task."}}, 404),
            errors.NotFoundError, 404, "resource_not_exist", False),
    "413": (_ok({"error": {"code": "content_too_large", "message": "Duration exceeds 30 s."}}, 413),
            errors.ContentTooLargeError, 413, "content_too_large", False),
    "429": (_ok({"error": {"code": "too_many_requests", "message": "Slow down."}}, 429,
                {"Retry-After": "3", "X-Ratelimit-Dimensions": "tpm:video"}),
            errors.RateLimitError, 429, "too_many_requests", True),
    "500": (_ok({"error": {"code": "internal_error", "message": "boom"}}, 500),
            errors.ServerError, 500, "internal_error", True),
    "502_html": (lambda req: (502, {"Content-Type": "text/html"}, b"<html>Bad Gateway</html>"),
                 errors.ServerError, 502, None, True),
    "200_truncated_json": (_raw(200, b'{"data": [{"embed'), errors.MalformedResponseError, 200, None, True),
    "200_no_data": (_ok({"usage": None}), errors.MalformedResponseError, 200, None, True),
    "200_string_in_vector": (_ok({"data": [{"embedding": [0.1, "x"]}]}), errors.MalformedResponseError, 200, None, True),
    "200_nan_in_vector": (_raw(200, b'{"data": [{"embedding": [0.1, NaN]}]}'), errors.MalformedResponseError, 200,
                          None, True),
    "200_no_embedding": (_ok({"data": [{"embedding_option": "visual"}]}), errors.MalformedResponseError, 200, None, True),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_sync_errors_map_to_typed_exceptions(case):
    responder, exc, status, code, retryable = ERROR_CASES[case]
    with V2CaptureServer(responder) as server:
        with pytest.raises(exc) as info:
            _ours(server.base_url).v2.create("text", "marengo3.0", text={"input_text": "x"})
    err = info.value
    assert isinstance(err, errors.EmbedError)
    assert (err.status, err.code, err.is_retryable) == (status, code, retryable)
    assert KEY not in str(err) and KEY not in repr(err) and KEY.encode() not in pickle.dumps(err)
    if case == "400_nested":
        assert err.message == "The `embedding_dimension` is invalid."
        assert err.details == {"field": "embedding_dimension", "echo": "***"}
        assert pickle.loads(pickle.dumps(err)).details == err.details
    if case == "429":
        assert err.rate_limit.dimensions == "tpm:video" and 2.0 <= err.wait_seconds <= 3.0
        assert not err.is_quota_exhausted
    if case in ("404", "413"):
        assert isinstance(err, errors.BadRequestError)


@pytest.mark.parametrize("call", ["task_create", "task_retrieve", "task_list"])
def test_task_endpoints_raise_typed_errors(call):
    def responder(req):
        if req.method == "POST":
            return json_response(429, {"error": {"code": "too_many_requests", "message": "wait"}}, {"Retry-After": "1"})
        if "/tasks/" in req.path:
            return json_response(404, {"error": {"code": "resource_not_exist", "message": "gone"}})
        return json_response(400, {"code": "parameter_invalid", "message": "bad page_limit"})

    expected = {"task_create": errors.RateLimitError, "task_retrieve": errors.NotFoundError,
                "task_list": errors.BadRequestError}[call]
    with V2CaptureServer(responder) as server:
        client = _ours(server.base_url)
        with pytest.raises(expected) as info:
            if call == "task_create":
                client.tasks.create("video", "marengo3.0", video={"media_source": {"url": "u"}})
            elif call == "task_retrieve":
                client.tasks.retrieve("nope")
            else:
                list(client.tasks.list(page_limit=500))
    assert info.value.message in ("wait", "gone", "bad page_limit")
    assert info.value.is_retryable is (call == "task_create")


@pytest.mark.parametrize("retry_after,expected_wait,retryable", [
    ("inf", None, True), ("1e308", errors.MAX_WAIT_SEC, False), ("nan", None, True), ("-5", 0.0, True),
    ("Infinity", None, True), ("1e999", None, True), ("999999999", errors.MAX_WAIT_SEC, False),
])
def test_absurd_retry_after_is_clamped(retry_after, expected_wait, retryable):
    headers = {"Retry-After": retry_after, "X-Ratelimit-Reset": "inf", "X-Ratelimit-Limit": "nan",
               "X-Ratelimit-Remaining": "1e308", "X-Ratelimit-Used": "-3"}
    with V2CaptureServer(_ok({"error": {"code": "too_many_requests", "message": "x"}}, 429, headers)) as server:
        with pytest.raises(errors.RateLimitError) as info:
            _ours(server.base_url).v2.create("text", "marengo3.0", text={"input_text": "x"})
    err = info.value
    info_ = err.rate_limit
    assert info_.reset_at is None and info_.limit is None and info_.used == 0
    assert info_.remaining is not None and info_.remaining <= 10 ** 15
    wait = err.wait_seconds
    if expected_wait is None:
        assert wait is None
    else:
        assert math.isfinite(wait) and wait == pytest.approx(expected_wait, abs=1.0)
        assert 0.0 <= wait <= errors.MAX_WAIT_SEC
    assert err.is_retryable is retryable


def test_rate_limit_info_never_yields_infinity_or_nan():
    now = time.time()
    for value in ("inf", "-inf", "nan", "1e308", "-1e308", "1e999", "", "soon", "Wed, 21 Oct 2015 07:28:00 GMT",
                  "Fri, 31 Dec 9999 23:59:59 GMT"):
        info = errors.RateLimitInfo.from_headers({"Retry-After": value, "X-Ratelimit-Reset": value})
        for number in (info.retry_after_sec, info.reset_at, info.wait_seconds(now)):
            assert number is None or (math.isfinite(number) and number >= 0)
        wait = info.wait_seconds(now)
        assert wait is None or wait <= errors.MAX_WAIT_SEC
    assert errors.RateLimitInfo.from_headers({"Retry-After": "1e308"}).retry_after_sec == errors.MAX_WAIT_SEC
    assert errors.RateLimitInfo.from_headers({"Retry-After": "inf"}).retry_after_sec is None
    # A finite reset far away stays as sent (v1 semantics: epoch seconds), but the wait is clamped.
    far = errors.RateLimitInfo.from_headers({"X-Ratelimit-Reset": "1e308"})
    assert far.reset_at == 1e308 and far.wait_seconds() == errors.MAX_WAIT_SEC


def _hanging_listener():
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
            held.append(conn)

    threading.Thread(target=loop, daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}/v1.3"


def test_timeouts_and_refused_connections_are_typed():
    listener, url = _hanging_listener()
    try:
        client = EmbedClient(api_key=KEY, base_url=url, timeout=(1.0, 0.3))
        start = time.monotonic()
        with pytest.raises(errors.EmbedTimeoutError) as info:
            client.v2.create("text", "marengo3.0", text={"input_text": "x"})
        assert info.value.is_retryable
        with pytest.raises(errors.EmbedTimeoutError):
            client.tasks.retrieve("t1", request_options={"timeout_in_seconds": 0.2})
        assert time.monotonic() - start < 3
    finally:
        listener.close()
    refused = EmbedClient(api_key=KEY, base_url=url.replace("http://", "http://user:pw@"), timeout=2)
    with pytest.raises(errors.ConnectionFailedError) as info:
        refused.tasks.list_page()
    assert info.value.is_retryable and "pw" not in str(info.value) and "***@127.0.0.1" in str(info.value)


def test_missing_key_is_an_auth_error_without_a_request(monkeypatch):
    monkeypatch.delenv("TWELVE_LABS_API_KEY", raising=False)
    with V2CaptureServer(_ok()) as server:
        client = EmbedClient(base_url=server.base_url)
        with pytest.raises(errors.AuthError):
            client.v2.create("text", "marengo3.0", text={"input_text": "x"})
        with pytest.raises(errors.AuthError):
            client.tasks.retrieve("t1")
    assert server.requests == []


def test_key_stays_out_of_repr_and_pickles_and_tasks_survive_unpickling(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", KEY)
    with V2CaptureServer(_ok(READY)) as server:
        client = EmbedClient(base_url=server.base_url)
        assert KEY not in repr(client) and KEY not in repr(client.tasks)
        clone = pickle.loads(pickle.dumps(client))
        assert KEY.encode() not in pickle.dumps(client)
        assert clone.tasks.retrieve("t1").status == "ready"
    assert server.requests[0].headers["x-api-key"] == KEY


def test_a_caller_session_is_used_for_v2_too():
    import requests

    session = requests.Session()
    session.headers["X-Trace"] = "caller-session"
    with V2CaptureServer(_ok(READY)) as server:
        client = EmbedClient(api_key=KEY, base_url=server.base_url, session=session)
        client.v2.create("text", "marengo3.0", text={"input_text": "x"})
        client.tasks.retrieve("t1")
    post, get = server.requests
    assert _headers(post)["x-trace"] == _headers(get)["x-trace"] == "caller-session"
    assert post.body == b'{"input_type":"text","model_name":"marengo3.0","text":{"input_text":"x"}}'
    assert get.path == "/v1.3/embed-v2/tasks/t1"


def test_public_names():
    for name in ("ContentTooLargeError", "NotFoundError", "EmbeddingsV2Result", "EmbeddingData", "EmbeddingTask",
                 "TaskCreated", "MediaEmbeddingTask", "UsageV2", "media_source"):
        assert hasattr(embed_client, name), name
    assert issubclass(errors.ContentTooLargeError, errors.BadRequestError)
    assert issubclass(errors.NotFoundError, errors.BadRequestError)
    assert not errors.ContentTooLargeError("x").is_retryable and not errors.NotFoundError("x").is_retryable
