"""The Uploader: failed assets are remembered, outages and expired sessions, chunk retries, and its 429s counted
in the calling step's throttling metrics as a call's are."""
import dataclasses
import hashlib
import threading

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from embed_client import errors
from embed_emulator import Emulator, EmulatorConfig, synth
from tests.capture_server import CaptureServer, json_response
from tests.helpers import TEST_KEY
from transforms.records import Call
from transforms.stages.call import CreateEmbeddings
from transforms.calling.upload import AssetFailed, Uploader
from transforms.records import Item
from transforms.settings import CallSettings, make_client
from transforms.store.assets import AssetJournal, read_asset_journal

CHUNK = 64 * 1024


def _item(path, modality="audio"):
    data = path.read_bytes()
    return Item(id="x", modality=modality, source="m.jsonl", row_number=1, content_hash="c", file_path=str(path),
                upload=True, file_sha256=hashlib.sha256(data).hexdigest(), file_size=len(data))


def _uploader(base_url, output, **settings):
    s = CallSettings(base_url=base_url, model="marengo3.0", direct_upload_max_bytes=0, asset_poll_sec=0.02,
                     max_attempts=2, item_deadline_sec=20, **settings)
    return Uploader(s, make_client(s), AssetJournal(output, "run1"), read_asset_journal(output), sleep=lambda s: None)


@pytest.fixture
def wav(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    path = tmp_path / "a.wav"
    path.write_bytes(synth.wav_bytes(20.0, 300.0))  # 640 KB: 10 chunks
    return path


def test_failing_chunk_puts_leave_a_session_the_next_uploader_carries_on(tmp_path, wav):
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig(asset_chunk_size=CHUNK, asset_initial_urls=2, asset_processing_sec=0.05,
                                 chunk_put_fail_rate=1.0)) as emu:
        with pytest.raises(errors.ServerError):
            _uploader(emu.base_url, output).ensure(_item(wav))
        emu.configure(chunk_put_fail_rate=0.0)
        uploader = _uploader(emu.base_url, output)
        asset_id = uploader.ensure(_item(wav))
        stats = emu.stats()["assets"]
    assert asset_id and stats["sessions_created"] == 1 and stats["chunk_bytes_accepted"] == wav.stat().st_size
    assert uploader.stats.resumed == 1 and uploader.stats.uploaded == 0


def test_an_expired_session_starts_a_new_one_and_is_counted(tmp_path, wav):
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig(asset_chunk_size=CHUNK, asset_processing_sec=0.05, chunk_put_fail_rate=1.0,
                                 asset_session_ttl_sec=0.3)) as emu:
        with pytest.raises(errors.EmbedError):
            _uploader(emu.base_url, output).ensure(_item(wav))
        emu.configure(chunk_put_fail_rate=0.0)
        threading.Event().wait(0.5)
        uploader = _uploader(emu.base_url, output)
        uploader.ensure(_item(wav))
        stats = emu.stats()["assets"]
    assert stats["sessions_created"] == 2 and uploader.stats.sessions_restarted == 1


def test_chunks_are_read_over_one_stream_per_thread_and_arrive_exact(tmp_path, wav, monkeypatch):
    """An open is a request and a handshake on an object store: 10 chunks, 2 in flight, at most 2 opens (it was 10)."""
    opened, streams = [], []
    real_open = FileSystems.open

    def counting_open(path, *args, **kwargs):
        opened.append(path)
        streams.append(real_open(path, *args, **kwargs))
        return streams[-1]

    monkeypatch.setattr(FileSystems, "open", staticmethod(counting_open))
    with Emulator(EmulatorConfig(asset_chunk_size=CHUNK, asset_initial_urls=3, asset_processing_sec=0.05)) as emu:
        asset_id = _uploader(emu.base_url, str(tmp_path / "out"), max_parallel_chunks=2).ensure(_item(wav))
        stats = emu.stats()["assets"]
        received = emu.asset_sha256(asset_id)
    assert stats["chunk_puts_accepted"] == 10 and stats["chunk_bytes_accepted"] == wav.stat().st_size
    assert 1 <= opened.count(str(wav)) <= 2, opened
    assert all(stream.closed for stream in streams)
    assert received == hashlib.sha256(wav.read_bytes()).hexdigest()


class _FailingAssets:
    """A platform whose processing fails every asset."""

    def __init__(self):
        self.calls = 0

    def create(self, **kwargs):
        self.calls += 1
        return _Asset("as-1", "processing")

    def retrieve(self, asset_id):
        self.calls += 1
        return _Asset(asset_id, "failed", "no video stream")


@dataclasses.dataclass
class _Asset:
    id: str
    status: str
    error: str = None


class _Client:
    def __init__(self):
        self.assets = _FailingAssets()


def test_a_failed_asset_is_a_failure_the_next_run_knows_without_uploading(tmp_path, wav):
    output = str(tmp_path / "out")
    settings = CallSettings(base_url="http://unused", model="marengo3.0", asset_poll_sec=0.01)
    client = _Client()
    first = Uploader(settings, client, AssetJournal(output, "r1"), read_asset_journal(output), sleep=lambda s: None)
    with pytest.raises(AssetFailed, match="no video stream"):
        first.ensure(_item(wav))
    calls = client.assets.calls
    second = Uploader(settings, client, AssetJournal(output, "r2"), read_asset_journal(output), sleep=lambda s: None)
    with pytest.raises(AssetFailed, match="no video stream"):
        second.ensure(_item(wav))
    assert client.assets.calls == calls  # known from the journal: no call, no upload


def _platform(limited):
    """Answers a direct upload, its status and a v2 call; the first request to `limited` is a 429, Retry-After: 1."""
    refused = []

    def respond(request):
        path = request.path.split("?", 1)[0]
        if path == limited and not refused:
            refused.append(path)
            return json_response(429, {"code": "too_many_requests", "message": "slow down"}, {"Retry-After": "1"})
        if (request.method, path) == ("POST", "/v1.3/assets"):
            return json_response(201, {"_id": "as_1", "method": "direct", "status": "processing"})
        if (request.method, path) == ("GET", "/v1.3/assets/as_1"):
            return json_response(200, {"_id": "as_1", "method": "direct", "status": "ready"})
        if (request.method, path) == ("POST", "/v1.3/embed-v2"):
            return json_response(200, {"data": [{"embedding": [0.25] * 512, "embedding_option": "audio",
                                                 "embedding_scope": "asset", "start_sec": 0.0, "end_sec": 20.0}]})
        return json_response(404, {"code": "not_found", "message": path})

    return respond


@pytest.mark.parametrize("limited", ["/v1.3/assets", "/v1.3/embed-v2"])
def test_an_uploads_429_is_throttling_in_the_jobs_metrics_as_a_calls_is(tmp_path, wav, limited):
    """Either request refused once with Retry-After: 1 costs the step the same: one 429, one retry, ~1 s throttled
    (before, an upload's 429 was retried by the uploader alone and counted nowhere)."""
    item = dataclasses.replace(_item(wav), route="v2")
    with CaptureServer(_platform(limited)) as server:
        settings = CallSettings(base_url=server.base_url, model="marengo3.0", direct_upload_max_bytes=10 ** 9,
                                asset_poll_sec=0.01, max_attempts=3, item_deadline_sec=20, run_id=f"r-{limited}")
        p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
        _ = p | beam.Create([Call([item])]) | CreateEmbeddings(settings, kind="v2")
        result = p.run()
        result.wait_until_finish()
        sent = [(r.method, r.path) for r in server.requests]
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace("tl_embed"))["counters"]}
    assert sent.count(("POST", "/v1.3/assets")) == (2 if limited == "/v1.3/assets" else 1)
    assert sent.count(("POST", "/v1.3/embed-v2")) == (2 if limited == "/v1.3/embed-v2" else 1)
    assert counters["items_embedded"] == 1 and counters["assets_uploaded"] == 1
    assert counters["http_429"] == 1 and counters["retries"] == 1
    # Retry-After less what passed before the wait was judged, plus up to 0.25 s of jitter.
    assert 900 <= counters["throttled_msecs"] <= 1300, counters
    assert counters.get("cumulativeThrottlingSeconds", 0) == counters["throttled_msecs"] // 1000, counters


def test_cleanup_keeps_and_reports_an_asset_the_platform_refuses_to_delete(tmp_path, wav, caplog):
    """assets.delete_after_run: a 409 (indexed assets reference the asset) keeps it and says so, the run goes on
    and the others are deleted; a later cleanup the platform allows deletes it."""
    from pipeline.report.summary import _assets_line, _assets_summary
    from pipeline.run import _delete_uploaded_assets
    from tests.helpers import make_config

    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig(asset_processing_sec=0.05, assets_referenced=True)) as emu:
        uploader = _uploader(emu.base_url, output)
        asset_id = uploader.ensure(_item(wav))
        uploader.journal.asset("f" * 64, "a-gone-asset", "ready")  # also this run's, already gone: a 404
        settings = CallSettings(base_url=emu.base_url, model="marengo3.0", max_attempts=2, run_id="run1")
        with caplog.at_level("WARNING", logger="transforms.calling.upload"):
            kept = _delete_uploaded_assets(make_config(output, []), settings, "run1")
        assert (kept.deleted, kept.kept) == (["a-gone-asset"], [asset_id])
        assert emu.stats()["assets"]["deleted"] == 0 and emu.stats()["assets"]["by_status"]["409"] == 1
        assert f"asset {asset_id} is kept" in caplog.text and "409" in caplog.text
        emu.configure(assets_referenced=False)
        later = _delete_uploaded_assets(make_config(output, []), settings, "run1")
        assert (later.deleted, later.kept) == ([asset_id], []) and emu.stats()["assets"]["deleted"] == 1
    line = _assets_line({"assets": _assets_summary({"assets_uploaded": 2}, len(kept.deleted), len(kept.kept))})
    assert line[0].endswith("1 deleted, 1 kept (delete refused or failed)")


def test_a_404_on_the_asset_create_is_transient_and_the_rerun_uploads_and_embeds_it(tmp_path, wav):
    """A base URL whose asset create answers 404 (`resource_not_exist`): the endpoint's failure, never the row's.
    The row ends as a transient `endpoint_not_found` dead letter (a permanent one would be a "known dead
    letter" the next run skips), and the rerun against a working API uploads it once and embeds it."""
    import json

    from tests.helpers import make_config, read_dead_letters, read_segments, run

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio_file": str(wav)}) + "\n")
    output = str(tmp_path / "out")

    def missing(request):
        return json_response(404, {"code": "resource_not_exist", "message": "The requested resource does not exist."})

    settings = dict(asset_upload="always", direct_upload_max_bytes=10 ** 9, asset_poll_sec=0.02, max_attempts=2)
    with CaptureServer(missing) as server:
        first = run(make_config(output, [str(manifest)], **settings), server.base_url)
        sent = [(r.method, r.path.split("?", 1)[0]) for r in server.requests]
    assert ("POST", "/v1.3/assets") in sent and not any(path.startswith("/v1.3/embed") for _, path in sent)
    letters = read_dead_letters(output)
    assert [(l["id"], l["kind"], l["code"], l["http_status"]) for l in letters] == [
        ("a", "transient", "endpoint_not_found", 404)]
    assert "check api.base_url" in letters[0]["message"]
    assert first.get("dead_letters_permanent", 0) == 0
    with Emulator(EmulatorConfig(asset_processing_sec=0.05)) as emu:
        again = run(make_config(output, [str(manifest)], **settings), emu.base_url)
        stats = emu.stats()
    assert stats["assets"]["created"]["direct"] == 1 and stats["calls_ok"] == 1
    assert again["assets"]["uploaded"] == 1 and again["status"] == "done"
    table = read_segments(output)
    assert set(table.column("id").to_pylist()) == {"a"} and set(table.column("modality").to_pylist()) == {"audio"}
