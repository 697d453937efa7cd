"""Hostile input and hostile conditions, through the CLI the way users run the job (issue: adversarial run)."""
import json
import os
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embed_emulator import Emulator, EmulatorConfig, synth
from tests.helpers import TEST_KEY, assert_exactly_once, make_config, read_dead_letters, read_segments, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path, manifests, base_url, output):
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({"manifests": manifests, "output": {"path": output}, "api": {"base_url": base_url},
                                "calls": {"max_attempts": 2, "item_deadline_sec": 20},
                                "beam": {"args": ["--runner=DirectRunner"]}}))
    return str(path)


def _cli(args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT, TWELVE_LABS_API_KEY=TEST_KEY)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_unreadable_manifests_beside_good_ones_do_not_stop_the_run_from_the_cli(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.jsonl").write_text("".join(json.dumps({"id": f"g{i}", "text": f"good {i}"}) + "\n"
                                            for i in range(5)))
    (data / "empty.parquet").write_bytes(b"")
    table = pa.table({"id": ["p1"], "text": ["t"]})
    pq.write_table(table, str(data / "whole.parquet"))
    (data / "truncated.parquet").write_bytes((data / "whole.parquet").read_bytes()[:40])
    os.remove(data / "whole.parquet")
    (data / "fake.jsonl.gz").write_bytes(b"this is not gzip at all\n")
    (data / "folder.jsonl").mkdir()
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        out = _cli(["--config", _config(tmp_path, [str(data / "*")], emu.base_url, output)])
    assert out.returncode == 3, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert {r["id"] for r in read_segments(output).to_pylist()} == {f"g{i}" for i in range(5)}
    unreadable = {os.path.basename(l["source"]) for l in read_dead_letters(output) if l["code"] ==
                  "unreadable_manifest"}
    assert unreadable >= {"empty.parquet", "truncated.parquet", "fake.jsonl.gz"}


def test_a_row_that_turns_invalid_drops_its_old_vectors(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    (tmp_path / "img.png").write_bytes(synth.png_bytes(150, 150, seed=9))
    manifest = tmp_path / "m.jsonl"
    rows = [{"id": "keep", "text": "stays"}, {"id": "pic", "image_file": "img.png", "text": "a caption"},
            {"id": "gone", "text": "will lose its input"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        run(make_config(output, [str(manifest)]), emu.base_url)
        os.remove(tmp_path / "img.png")                     # the file is now missing
        rows[2] = {"id": "gone", "text_truncate": "start"}  # the row no longer has an input
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        run(make_config(output, [str(manifest)]), emu.base_url)
    keys = {(r["id"], r["modality"]) for r in read_segments(output).to_pylist()}
    assert keys == {("keep", "text"), ("pic", "text")}
    letters = {(l["id"], l["modality"]): l["code"] for l in read_dead_letters(output)}
    assert letters == {("pic", "image"): "missing_file", ("gone", None): "no_input"}
    assert_exactly_once(output, 3)


def test_one_manifest_under_three_spellings_is_read_once(tmp_path):
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "text": f"t{i}"}) + "\n" for i in range(4)))
    os.symlink(tmp_path / "m.jsonl", tmp_path / "link.jsonl")
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        config = _config(tmp_path, [], emu.base_url, output)
        out = _cli(["--config", config, "--manifest", "m.jsonl", "--manifest", "./m.jsonl", "--manifest",
                    "link.jsonl"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rows read        4" in out.stdout and read_dead_letters(output) == []


class _LyingServer:
    """Answers every embed call 429 with a hostile Retry-After."""

    def __init__(self, retry_after):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = b'{"code": "too_many_requests", "message": "slow down"}'
                self.send_response(429)
                self.send_header("Retry-After", retry_after)
                self.send_header("X-Ratelimit-Reset", retry_after)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1.3"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


@pytest.mark.parametrize("retry_after", ["inf", "1e308", "-5", "nan"])
def test_numbers_from_a_hostile_server_are_clamped(tmp_path, monkeypatch, retry_after):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"h{i}", "text": f"t{i}"}) + "\n" for i in range(3)))
    output = str(tmp_path / "out")
    server = _LyingServer(retry_after)
    try:
        summary = run(make_config(output, [str(manifest)], max_attempts=2, item_deadline_sec=3.0), server.base_url)
    finally:
        server.server.shutdown()
    json.dumps(summary, allow_nan=False)  # no Infinity / NaN anywhere in the summary
    for folder in ("deferred", "dead_letters"):
        for name in os.listdir(os.path.join(output, folder)) if os.path.isdir(os.path.join(output, folder)) else []:
            for line in open(os.path.join(output, folder, name)):
                json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in {name}"))
    assert summary["deferred"] + summary["dead_letters"] == 3


def test_rows_that_are_almost_right(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    # CR-only line ends; a BOM where two files were concatenated
    (tmp_path / "cr.jsonl").write_bytes(b'{"id": "cr1", "text": "a"}\r{"id": "cr2", "text": "b"}\r')
    (tmp_path / "cat.jsonl").write_bytes('{"id": "c1", "text": "x"}\n\ufeff{"id": "c2", "text": "y"}\n'
                                         .encode("utf-8"))
    # ids: spaces around and NFC/NFD forms are one id; a float id from pandas is an integer id
    (tmp_path / "ids.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "sp", "text": "1"}, {"id": "sp ", "text": "2"}, {"id": "caf\u00e9", "text": "3"},
        {"id": "cafe\u0301", "text": "4"}, {"id": 7.0, "text": "5"}, {"id": 7.5, "text": "6"}]))
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        run(make_config(output, [str(tmp_path / n) for n in ("cr.jsonl", "cat.jsonl", "ids.jsonl")]),
            emu.base_url)
    embedded = {r["id"] for r in read_segments(output).to_pylist()}
    assert embedded == {"cr1", "cr2", "c1", "c2", "sp", "caf\u00e9", "7"}
    letters = sorted((l["row_number"], l["code"]) for l in read_dead_letters(output) if l["source"].endswith("ids.jsonl"))
    assert letters == [(2, "duplicate_id"), (4, "duplicate_id"), (6, "invalid_id")]


_FULL_DISK = '''
import errno, os
from apache_beam.io.filesystems import FileSystems
_create, _count = FileSystems.create, [0]
def _full(path, *args, **kwargs):
    if "/segments/" in str(path):
        _count[0] += 1
        if _count[0] > int(os.environ["FAIL_AFTER_PIECES"]):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return _create(path, *args, **kwargs)
FileSystems.create = staticmethod(_full)
'''


def test_a_disk_that_fills_mid_run_stops_the_job_in_one_line_and_the_rerun_pays_only_the_rest(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_FULL_DISK)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"d{i}", "text": f"disk {i}"}) + "\n" for i in range(120)))
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig(latency_ms=10)) as emu:
        config = _config(tmp_path, [str(manifest)], emu.base_url, output)
        raw = json.loads(open(config).read())
        raw["output"]["rows_per_piece"] = 10  # pieces every 10 items: the 4th one hits the full disk
        open(config, "w").write(json.dumps(raw))
        env = dict(os.environ, PYTHONPATH=f"{shim}:{ROOT}", TWELVE_LABS_API_KEY=TEST_KEY, FAIL_AFTER_PIECES="3")
        full = subprocess.run([sys.executable, "-m", "pipeline", "--config", config], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=300)
        paid_first = emu.stats()["requests"]
        again = _cli(["--config", config])
        paid_total = emu.stats()["requests"]
    assert full.returncode == 1, full.stderr[-2000:]
    (error,) = [l for l in full.stderr.splitlines() if l.startswith("error:")]
    assert "No space left on device" in error and "Traceback" not in full.stderr
    assert paid_first < 120  # calling stopped with the failure, not after the whole manifest
    assert again.returncode == 0, again.stderr[-2000:]
    # everything the first run was paid for was kept (pieces, or the journal the rerun recovers)
    assert paid_total - paid_first <= 120 - paid_first + 8
    assert paid_total <= 120 + 8
    assert_exactly_once(output, 120)
