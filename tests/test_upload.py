"""The Uploader without Beam: failed assets are remembered, outages and expired sessions, chunk retries."""
import dataclasses
import hashlib
import threading

import pytest

from embed_client import errors
from embed_emulator import Emulator, EmulatorConfig, synth
from tests.helpers import TEST_KEY
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
