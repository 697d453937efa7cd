"""What a user sees: the progress line, and the HTML report rendered by headless Chromium."""
import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from embed_emulator import Emulator, EmulatorConfig
from pipeline.progress_line import ProgressPrinter, count_manifest_rows, format_progress
from tests.helpers import TEST_KEY, make_config, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _rows(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"r{i}", "text": f"report row {i}"}) + "\n")
    return str(path)


def test_progress_line_counts_eta_and_rate():
    snap = {"rows_read": 50, "items": 100, "rejected": 0, "done": 60, "embedded": 55, "skipped": 0,
            "dead_letters": 5, "deferred": 0, "calls": 30, "http_429": 2, "elapsed": 10.0}
    line = format_progress(snap, rows_total=100, rate_per_minute=240)
    assert line.startswith("rows 50/100 | items 60 of ~200 done: 55 embedded, 0 skipped, 5 dead, 0 deferred")
    assert "3.0 calls/s of 4.0" in line and "429s 2" in line
    # 200 items expected, 60 finished at 6/s: 140 left take 23 s.
    assert "ETA 0m23s" in line
    # rows rejected before they became items are units too: done never exceeds the total
    final = dict(snap, rows_read=18, items=15, rejected=8, done=23, embedded=15, dead_letters=8)
    assert "items 23 of 23 done" in format_progress(final, rows_total=18, rate_per_minute=None)


def test_manifest_rows_are_counted_without_loading_them(tmp_path):
    jsonl = _rows(tmp_path / "a.jsonl", 7)
    csv_path = tmp_path / "b.csv"
    csv_path.write_text("id,text\n1,a\n2,b\n")
    assert count_manifest_rows([jsonl, str(csv_path)]) == 9
    assert count_manifest_rows(["gs://bucket/x.jsonl"]) is None


def test_progress_printer_writes_plain_lines_when_not_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    stream = io.StringIO()
    manifest = _rows(tmp_path / "m.jsonl", 12)
    with Emulator(EmulatorConfig()) as emu:
        with ProgressPrinter(12, None, stream=stream):
            run(make_config(str(tmp_path / "out"), [manifest]), emu.base_url)
    last = stream.getvalue().strip().splitlines()[-1]
    assert last.startswith("progress: rows 12/12 | items 12 of 12 done: 12 embedded") and "\r" not in stream.getvalue()


def test_report_lists_counts_reasons_and_a_chart(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    manifest = _rows(tmp_path / "m.jsonl", 30)
    with open(manifest, "a") as f:
        f.write('{"id": "bad"}\n')
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig(fault_429_burst_rate=0.2, fault_429_burst_sec=0.2, seed=4, latency_ms=30)) as emu:
        summary = run(make_config(output, [manifest], requests_per_minute=1200), emu.base_url)
    # Beam metrics (what Dataflow and Flink show) carry the same numbers: latency is a distribution.
    assert summary["call_latency_ms"]["min"] >= 30 and summary["call_latency_ms"]["mean"] < 1000
    page = open(os.path.join(output, "report.html"), encoding="utf-8").read()
    assert "<script" not in page and "http://" not in page.split("Output:")[0] + page.split("</p>", 3)[-1]
    assert f'data-key="calls">{summary["calls"]}<' in page
    assert 'data-key="dead.no_input">1<' in page
    points = re.search(r'data-series="calls"[^>]*points="([^"]+)"', page).group(1).split()
    assert len(points) >= 1 and 'data-series="http_429"' in page and 'data-series="limit"' in page
    with open(os.path.join(output, "runs", summary["run_id"], "summary.json")) as f:
        assert json.load(f)["calls"] == summary["calls"]


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_with_the_json_numbers(tmp_path):
    assert CHROMIUM, "chromium must be installed in CI (.ci/run installs it)"
    env = {k: v for k, v in os.environ.items() if k != "TWELVE_LABS_API_KEY"}
    env["PYTHONPATH"] = ROOT
    output = str(tmp_path / "out")
    job = subprocess.run([sys.executable, "-m", "pipeline", "--config", "configs/local.yaml", "--output", output],
                         capture_output=True, cwd=ROOT, env=env, timeout=300)
    assert job.returncode == 3, job.stderr[-1500:]  # the samples' bad rows are dead letters
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--dump-dom", "file://" + os.path.join(output, "report.html")],
        capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-1500:]
    shown = dict(re.findall(r'data-key="([^"]+)">([^<]*)<', dom.stdout))
    with open(os.path.join(output, "summary.json")) as f:
        summary = json.load(f)
    assert shown["run_id"] == summary["run_id"]
    for key in ("rows_read", "calls", "retries", "http_429", "dead_letters", "segments_written", "deferred"):
        assert shown[key] == str(summary[key]), key
    assert shown["items.text"] == str(summary["items"]["text"])
    assert shown["items_embedded"] == str(sum(summary["items_embedded"].values()))
    for code, n in summary["dead_letters_by_reason"].items():
        assert shown[f"dead.{code}"] == str(n)
    assert "<svg" in dom.stdout and 'data-series="calls"' in dom.stdout
