"""The bench's `upload` scenario arms run (2 MB, in process): our Uploader by a local path and by benchfs://,
and the SDK's upload_file; the emulator accepts every byte once per upload and the SDK's chunk copies go."""
import os

import pytest

from bench import upload
from embed_emulator import Emulator, EmulatorConfig
from tests.helpers import TEST_KEY


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    monkeypatch.setattr(upload, "KEY", TEST_KEY)


def test_the_upload_arms_send_a_2mb_wav_once_each(tmp_path):
    path = upload.make_wav(str(tmp_path / "a.wav"), 2 * upload.MIB)
    with Emulator(EmulatorConfig(asset_chunk_size=256 * 1024, asset_processing_sec=0.01)) as emu:
        results = []
        for via in ("local", "benchfs"):
            extra = {}
            upload.run_upload_job(path, emu.base_url, 4, via, str(tmp_path / f"out-{via}"), extra)
            results.append(extra)
        extra = {}
        upload.run_upload_sdk(path, emu.base_url, 5, extra)
        results.append(extra)
        assets = emu.stats()["assets"]
    assert [r["status"] for r in results] == ["ready"] * 3  # a real WAV header: the emulator decodes it
    assert results[1]["file"].startswith("benchfs://")
    assert assets["sessions_created"] == 3 and assets["chunk_bytes_accepted"] == 3 * 2 * upload.MIB
    assert not os.path.exists(upload.sdk_chunk_dir(path))
