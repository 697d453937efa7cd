"""The job on a GCS API (issue 25): Beam's gs:// filesystem against gcp-storage-emulator on loopback, through
STORAGE_EMULATOR_HOST, through the command line. Skipped where the GCS packages are absent: they are not in
the test extra (apache-beam[gcp] pulls Vertex AI's packages, whose resolution against constraints.txt
backtracked for over 15 minutes here); `pip install google-cloud-storage gcp-storage-emulator` runs it."""
import json
import os
import socket
import subprocess
import sys

import pytest

from embed_emulator import Emulator, EmulatorConfig
from tests.helpers import TEST_KEY

pytest.importorskip("apache_beam.io.gcp.gcsio", reason="Beam's GCS filesystem needs google-cloud-storage")
pytest.importorskip("google.cloud.storage", reason="google-cloud-storage is not installed")
pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def gcs():
    """An in-memory GCS API on a free loopback port; yields (endpoint, a client of it)."""
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = endpoint  # the client below reads it when built
    try:
        yield endpoint, storage.Client(project="test", credentials=AnonymousCredentials())
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


def test_a_job_on_gcs_runs_and_reruns_calling_nothing(tmp_path, gcs):
    endpoint, client = gcs
    bucket = client.create_bucket("tl-embed")
    rows = "".join(json.dumps({"id": f"r{i}", "text": f"caption number {i}"}) + "\n" for i in range(30))
    bucket.blob("manifests/a.jsonl").upload_from_string(rows)
    env = dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(tmp_path), STORAGE_EMULATOR_HOST=endpoint,
               TWELVE_LABS_API_KEY=TEST_KEY)
    with Emulator(EmulatorConfig()) as emu:
        config = tmp_path / "job.yaml"
        config.write_text(json.dumps({
            "model": "marengo3.0", "manifests": ["gs://tl-embed/manifests/*.jsonl"],
            "output": {"path": "gs://tl-embed/out"}, "api": {"base_url": emu.base_url}, "calls": {"pack": False},
            "beam": {"args": ["--runner=DirectRunner", "--project=test"]}}))
        cli = [sys.executable, "-m", "pipeline", "--config", str(config)]
        first = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        assert emu.stats()["requests"] == 30
        summary = json.loads(bucket.blob("out/summary.json").download_as_bytes())
        assert summary["status"] == "done" and summary["calls"] == 30
        names = {b.name: b.size for b in client.list_blobs("tl-embed", prefix="out/")}
        assert names.get("out/report.html") and names.get("out/runs/index.html"), sorted(names)
        assert not [n for n, size in names.items() if not size], "empty objects"
        emu.reset_stats()
        again = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert emu.stats()["requests"] == 0
    rerun = json.loads(bucket.blob("out/summary.json").download_as_bytes())
    assert rerun["calls"] == 0 and rerun["items_already_done"] == 30 and rerun["run_id"] != summary["run_id"]
