"""What a user sees: the progress line, and the HTML report rendered by headless Chromium."""
import glob
import html
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from embed_emulator import Emulator, EmulatorConfig
from pipeline.report.progress_line import ProgressPrinter, count_manifest_rows, format_progress
from pipeline.report.html import latency_percentiles, read_calls
from pipeline.report.runs_index import write_index
from pipeline.report.status import STATUS_TEXT
from tests.helpers import TEST_KEY, make_config, run
from transforms.records import failure_kind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _rows(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"r{i}", "text": f"report row {i}"}) + "\n")
    return str(path)


def _dom(path, tmp_path):
    """The page's DOM as headless Chromium builds it (the file's text where Chromium is not installed)."""
    if CHROMIUM is None and not os.environ.get("CI"):
        with open(path, encoding="utf-8") as f:
            return f.read()
    assert CHROMIUM, "chromium must be installed in CI (.ci/run installs it)"
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", "file://" + path],
        capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-1500:]
    return dom.stdout


def _shown(dom):
    """data-key -> text shown."""
    return {k: html.unescape(v) for k, v in re.findall(r'data-key="([^"]+)">([^<]*)<', dom)}


def _links(dom, page):
    """data-link / row link -> the local file each relative href points to."""
    found = {}
    for attrs, text in re.findall(r'<a ([^>]*)>([^<]*)</a>', dom):
        href = html.unescape(re.search(r'href="([^"]*)"', attrs).group(1))
        assert "://" not in href and not href.startswith("/"), href  # relative: the folder can move
        name = re.search(r'data-link="([^"]*)"', attrs)
        target = urllib.parse.urljoin("file://" + page, href)
        found[name.group(1) if name else html.unescape(text)] = urllib.request.url2pathname(target[len("file://"):])
    return found


def _self_contained(page):
    """Nothing is run or fetched: no scripts, no sources, no styles from elsewhere, only relative links."""
    assert "<script" not in page and " src=" not in page and "<link" not in page and "url(" not in page
    assert "@import" not in page and "<iframe" not in page
    assert all("://" not in href for href in re.findall(r'href="([^"]*)"', page))


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
    manifest = _rows(tmp_path / "m.jsonl", 12)  # few: each 429 costs a backoff
    with open(manifest, "a") as f:
        f.write('{"id": "bad"}\n')
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig(fault_429_burst_rate=0.2, fault_429_burst_sec=0.2, seed=4, latency_ms=30)) as emu:
        summary = run(make_config(output, [manifest], requests_per_minute=1200), emu.base_url)
    # Beam metrics (what Dataflow and Flink show) carry the same numbers: latency is a distribution.
    assert summary["call_latency_ms"]["min"] >= 30 and summary["call_latency_ms"]["mean"] < 1000
    page = open(os.path.join(output, "report.html"), encoding="utf-8").read()
    _self_contained(page)
    assert f'data-key="calls">{summary["calls"]}<' in page
    assert 'data-key="dead.no_input">1<' in page
    points = re.search(r'data-series="calls"[^>]*points="([^"]+)"', page).group(1).split()
    assert len(points) >= 1 and 'data-series="http_429"' in page and 'data-series="limit"' in page
    # the limit line says what it is; both axes have labelled ticks (x in seconds, y in calls/s)
    assert re.search(r'data-series="limit-label"[^>]*>limit 20/s<', page)
    x_ticks = re.findall(r'data-tick="[^"]+"[^>]*>(\d+) s<', page.split('data-axis="x"')[1])
    y_ticks = re.findall(r'data-tick="[^"]+"[^>]*>([\d.]+)/s<', page.split('data-axis="y"')[1])
    assert x_ticks[0] == "0" and len(x_ticks) >= 2 and len(y_ticks) >= 3, (x_ticks, y_ticks)
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
    assert job.returncode == 0, job.stderr[-1500:]  # the samples' bad rows exit 0 (exit_codes.dead_letters)
    dom = _dom(os.path.join(output, "report.html"), tmp_path)
    shown = _shown(dom)
    with open(os.path.join(output, "summary.json")) as f:
        summary = json.load(f)
    assert shown["run_id"] == summary["run_id"]
    for key in ("rows_read", "calls", "retries", "http_429", "dead_letters", "segments_written", "deferred"):
        assert shown[key] == str(summary[key]), key
    assert shown["items.text"] == str(summary["items"]["text"])
    assert shown["items_embedded"] == str(sum(summary["items_embedded"].values()))
    # the status and what it means come first
    assert (shown["status"], shown["exit_code"]) == ("finished_with_dead_letters", "0")
    assert shown["status_text"] == STATUS_TEXT["finished_with_dead_letters"]
    assert dom.index('data-key="status"') < dom.index("<h2>")
    for code, n in summary["dead_letters_by_reason"].items():
        assert shown[f"dead.{code}"] == str(n)
        assert len(re.findall(f'data-sample="{code}"', dom)) == min(3, n)
    for key in ("p50", "p90", "p99", "max", "mean"):
        assert shown[f"latency.{key}"] == str(summary["call_latency_ms"][key]), key
    assert "<svg" in dom and 'data-series="calls"' in dom


def _exact_percentile(samples, q):
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_one_long_bundle_writes_its_timeline_in_pieces_that_sum_to_every_call(tmp_path, monkeypatch):
    """A local run is one bundle: the sink sums records as they come and writes a piece every PIECE_CALLS
    records instead of keeping every record to the end; the pieces add up to every call and latency."""
    from transforms.calling.engine import CallStats
    from transforms.stages.timeline import CallTimes, _WriteTimelineFn

    monkeypatch.setattr(_WriteTimelineFn, "PIECE_CALLS", 30)
    folder = tmp_path / "timeline"
    folder.mkdir()
    rng = random.Random(9)
    fn = _WriteTimelineFn(str(folder))
    fn.setup()
    fn.start_bundle()
    samples, limited = [], 0
    for i in range(1000):
        stats = CallStats(calls=1, latencies_ms=[rng.randint(5, 500)])
        stats.mark(i % 7 == 0)
        limited += i % 7 == 0
        samples += stats.latencies_ms
        fn.process(CallTimes.from_stats(stats))
        if i == 500:
            assert len(glob.glob(str(folder / "calls-*.jsonl"))) == 16  # written as it went
    fn.finish_bundle()
    assert len(glob.glob(str(folder / "calls-*.jsonl"))) == 34  # ceil(1000 / 30)
    timeline, latency = read_calls(str(folder))
    assert sum(c for _, c, _ in timeline) == 1000 and sum(r for _, _, r in timeline) == limited
    assert latency["count"] == 1000 and latency["sum"] == sum(samples)
    assert (latency["min"], latency["max"]) == (min(samples), max(samples))


def test_latency_histogram_in_the_timeline_pieces_gives_percentiles(tmp_path):
    """Two workers' timeline sinks write latency histograms into their pieces; the report sums them."""
    from transforms.calling.engine import CallStats
    from transforms.stages.timeline import CallTimes, _WriteTimelineFn

    folder = tmp_path / "timeline"
    folder.mkdir()
    rng = random.Random(5)
    # a known distribution: uniform 20..100 ms, and a slow tail of 1% at 400..900 ms
    samples = [int(rng.uniform(20, 100)) for _ in range(4000)] + [rng.randint(400, 900) for _ in range(40)]
    rng.shuffle(samples)
    chunks = [samples[i:i + 250] for i in range(0, len(samples), 250)]
    for worker in range(2):
        fn = _WriteTimelineFn(str(folder))
        fn.setup()
        for chunk in chunks[worker::2]:
            fn.start_bundle()  # one piece per bundle
            for start in range(0, len(chunk), 50):  # 50 latencies per "call" record
                stats = CallStats(calls=50, latencies_ms=list(chunk[start:start + 50]))
                for _ in range(len(stats.latencies_ms)):
                    stats.mark(False)
                fn.process(CallTimes.from_stats(stats))
            fn.finish_bundle()
    # a piece written before latencies were recorded: counted in the chart, adds nothing to the latency
    now = int(time.time())
    (folder / "calls-oldworkr-00001.jsonl").write_text(json.dumps({"t": now, "calls": 5, "http_429": 1}) + "\n")
    pieces = sorted(glob.glob(str(folder / "calls-*.jsonl")))
    assert len(pieces) == len(chunks) + 1
    timeline, latency = read_calls(str(folder))
    assert latency["count"] == len(samples) and (latency["min"], latency["max"]) == (min(samples), max(samples))
    assert sum(latency["hist"].values()) == len(samples)
    got = latency_percentiles(latency)
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        exact = _exact_percentile(samples, q)
        assert abs(got[name] - exact) <= max(1.0, 0.09 * exact), (name, got[name], exact)
    assert got["max"] == max(samples) and got["mean"] == round(sum(samples) / len(samples), 1)
    # Old readers keep working: summing "t"/"calls"/"http_429" of every record (what the reader did before
    # the histograms) still gives every call once, and the same chart.
    old = {}
    for path in pieces:
        for line in open(path):
            record = json.loads(line)
            bucket = old.setdefault(record["t"], [0, 0])
            bucket[0] += record["calls"]
            bucket[1] += record["http_429"]
    assert sorted((t, c, r) for t, (c, r) in old.items()) == timeline
    assert sum(c for _, c, _ in timeline) == len(samples) + 5 and sum(r for _, _, r in timeline) == 1


def test_run_index_lists_every_run_newest_first_and_rereads_only_changed_summaries(tmp_path):
    output = tmp_path / "out"
    runs = output / "runs"

    def summary(run_id, started, status, calls):
        folder = runs / run_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps({
            "run_id": run_id, "started": started, "seconds": 12.5, "status": status, "exit_code": 4,
            "items_embedded": {"text": 7}, "calls": calls, "dead_letters": 1, "dead_letters_new": 1,
            "dead_letters_transient": 0, "dead_letters_permanent": 1, "deferred": 2, "items_already_done": 3}))

    summary("20250101T000000Z-aaaaaa", "2025-01-01T00:00:00.5+00:00", "deferred", 11)
    summary("20250102T000000Z-bbbbbb", "2025-01-02T00:00:00+00:00", "done", 22)
    (runs / "20250102T000000Z-bbbbbb" / "report.html").write_text("<html></html>")
    (runs / "20250103T000000Z-cccccc").mkdir()  # killed: a timeline piece, no summary
    (runs / "20250103T000000Z-cccccc" / "calls-x-00001.jsonl").write_text("")
    page = open(write_index(str(output)), encoding="utf-8").read()
    _self_contained(page)
    order = re.findall(r'<tr data-run="([^"]+)"', page)
    assert order == ["20250103T000000Z-cccccc", "20250102T000000Z-bbbbbb", "20250101T000000Z-aaaaaa"]
    assert 'href="20250102T000000Z-bbbbbb/report.html"' in page          # only runs that kept a report link
    assert 'href="20250101T000000Z-aaaaaa/report.html"' not in page and "killed" in page
    row = re.search(r'data-run="20250101T000000Z-aaaaaa".*?</tr>', page).group(0)
    assert 'data-col="progress">10 / 13<' in row and 'data-col="calls">11<' in row   # done 3+7 of 3+7+2+1
    # the rows are kept in index.json: an unchanged summary is not read again, a changed one is
    cache = runs / "index.json"
    rows = json.loads(cache.read_text())
    rows["runs"][0]["calls"] = 999
    assert rows["runs"][0]["run_id"] == "20250102T000000Z-bbbbbb"
    cache.write_text(json.dumps(rows))
    assert 'data-col="calls">999<' in open(write_index(str(output)), encoding="utf-8").read()
    summary("20250102T000000Z-bbbbbb", "2025-01-02T00:00:00+00:00", "done", 2222)
    assert 'data-col="calls">2222<' in open(write_index(str(output)), encoding="utf-8").read()


def test_two_runs_of_a_backfill_history_progress_latency_and_dead_letter_samples(tmp_path, monkeypatch):
    """A backfill over two runs: a call budget defers half the rows, the next run finishes them."""
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    manifest = str(tmp_path / "rows & <more>.jsonl")  # shown in the dead letters' messages: escaped
    good, bad = 160, 4
    with open(manifest, "w") as f:
        for i in range(good):
            f.write(json.dumps({"id": f"r{i}", "text": f"backfill row {i}"}) + "\n")
        for i in range(bad):
            f.write(json.dumps({"id": f"bad{i}"}) + "\n")
    output = str(tmp_path / "out")
    # Latency: uniform 20..100 ms (p50 60, p90 92, p99 99), plus the local HTTP round trip.
    latency = dict(latency_ms=60, latency_jitter_ms=40)
    with Emulator(EmulatorConfig(fault_5xx_rate=0.1, fault_modality_error_rate=0.05, seed=11, **latency)) as emu:
        first = run(make_config(output, [manifest], max_calls=80, max_attempts=1, max_in_flight=8,
                                requests_per_minute=12000), emu.base_url)
    with Emulator(EmulatorConfig(seed=12, **latency)) as emu:
        second = run(make_config(output, [manifest], max_in_flight=8, requests_per_minute=12000), emu.base_url)
    assert (first["status"], first["exit_code"]) == ("deferred", 4)
    assert (second["status"], second["exit_code"]) == ("done_with_known_dead_letters", 0)
    assert first["dead_letters_transient"] > 0 and first["deferred"] > 0

    latest = os.path.join(output, "report.html")
    dom = _dom(latest, tmp_path)
    _self_contained(open(latest, encoding="utf-8").read())
    shown = _shown(dom)
    assert shown["run_id"] == second["run_id"]
    assert (shown["status"], shown["exit_code"]) == ("done_with_known_dead_letters", "0")
    assert shown["status_text"] == STATUS_TEXT["done_with_known_dead_letters"]
    # Backfill progress over both runs: the first run's items count as done before this one.
    failed = bad + second["dead_letters_by_reason"].get("embedding_failed", 0)
    assert shown["progress.total"] == str(good + bad)
    assert shown["progress.already_done"] == str(sum(first["items_embedded"].values()))
    assert shown["progress.done"] == str(good + bad - failed) and shown["progress.remaining"] == "0"
    assert shown["progress.failed"] == str(failed)
    assert 'data-bar="already_done"' in dom and 'data-bar="embedded"' in dom
    # Latency percentiles: the summary's, and those of the emulator's distribution.
    measured = second["call_latency_ms"]
    for key in ("p50", "p90", "p99", "max", "mean"):
        assert shown[f"latency.{key}"] == str(measured[key]), key
    # (The round trip through this busy process adds a few ms, and a slow tail of a few calls: p99 of ~90 calls
    # is among them, so it is only bounded below; test_latency_histogram_... checks exact samples.)
    assert 50 <= measured["p50"] <= 80 and 82 <= measured["p90"] <= 130 and measured["p99"] >= 90, measured
    assert measured["p50"] <= measured["p90"] <= measured["p99"] <= measured["max"] and measured["min"] >= 20
    assert re.search(r'data-series="limit-label"[^>]*>limit 200/s<', dom)
    # Dead letters: count, kind, and up to 3 of this run's messages, escaped (the file name has & < >).
    assert shown["dead.no_input"] == str(bad) and shown["dead_kind.no_input"].startswith("permanent")
    samples = [html.unescape(m) for m in re.findall(r'<li data-sample="no_input">([^<]*)</li>', dom)]
    letters = [json.loads(line) for path in second["dead_letter_files"] for line in open(path) if line.strip()]
    assert len(samples) == 3 and set(samples) <= {r["message"] for r in letters if r["code"] == "no_input"}
    assert all("rows & <more>.jsonl" in m for m in samples) and "&lt;more&gt;" in dom
    assert shown["dead_letters_new"] == "0"

    # History: the index lists both runs, newest first, and every link leads to the right page.
    links = _links(dom, latest)
    assert os.path.isfile(links["index"]) and os.path.isfile(links["permalink"])
    assert _shown(open(links["permalink"], encoding="utf-8").read())["run_id"] == second["run_id"]
    index_dom = _dom(links["index"], tmp_path)
    assert re.findall(r'<tr data-run="([^"]+)"', index_dom) == [second["run_id"], first["run_id"]]
    assert _shown(index_dom)["runs"] == "2"
    for summary in (first, second):
        row = re.search(f'data-run="{summary["run_id"]}".*?</tr>', index_dom, re.S).group(0)
        assert f'data-col="status">{summary["status"]} (exit {summary["exit_code"]})<' in row
        assert f'data-col="calls">{summary["calls"]}<' in row and f'data-col="deferred">{summary["deferred"]}<' in row
        assert f'data-col="items_embedded">{sum(summary["items_embedded"].values())}<' in row
        assert f'data-col="dead_letters">{summary["dead_letters"]}' in row
    index_links = _links(index_dom, links["index"])
    assert os.path.samefile(index_links["latest"], latest)
    kept = index_links[first["run_id"]]
    assert os.path.samefile(kept, os.path.join(output, "runs", first["run_id"], "report.html"))
    # The first run's kept report: deferred, with its transient dead letters (retried by the second run).
    kept_dom = _dom(kept, tmp_path)
    kept_shown = _shown(kept_dom)
    assert (kept_shown["run_id"], kept_shown["status"], kept_shown["exit_code"]) == (first["run_id"], "deferred", "4")
    assert kept_shown["progress.remaining"] == str(first["deferred"] + first["dead_letters_transient"])
    assert int(kept_shown["progress.done"]) < good
    # (its dead-letter files are gone: the second run's finalize replaced them; the kept report still shows them)
    transient = {code for code in first["dead_letters_by_reason"] if failure_kind(code) == "transient"}  # 5xx
    assert transient
    for code in transient:
        assert kept_shown[f"dead_kind.{code}"].startswith("transient"), code
        assert kept_shown[f"dead.{code}"] == str(first["dead_letters_by_reason"][code])
        assert len(re.findall(f'data-sample="{code}"', kept_dom)) == min(3, first["dead_letters_by_reason"][code])
    kept_links = _links(kept_dom, kept)
    assert os.path.samefile(kept_links["index"], links["index"]) and os.path.samefile(kept_links["latest"], latest)
