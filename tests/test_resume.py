"""Resumable, quota-aware backfills: kill and rerun, spent quotas, call budgets, dedup, dry runs."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

from embed_emulator import Emulator, EmulatorConfig, synth
from tests.helpers import (TEST_KEY, assert_exactly_once, make_config, read_dead_letters, read_segments, run)
from transforms.store import layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)


def _write_manifest(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def _deferred(output):
    records = []
    for path in glob.glob(os.path.join(output, "deferred", "*.jsonl")):
        records += [json.loads(line) for line in open(path) if line.strip()]
    return records


def _start_emulator_process(*args):
    proc = subprocess.Popen([sys.executable, "-m", "embed_emulator", "--port", "0", *args],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    line = proc.stdout.readline().strip()
    assert line.startswith("EMULATOR_URL="), line
    return proc, line.split("=", 1)[1]


@pytest.mark.parametrize("flush_sec", [0, None], ids=["flush_0", "defaults"])
def test_killed_job_is_resumed_without_paying_twice(tmp_path, flush_sec):
    """With the defaults (pieces every 5 s, results journaled as they come) as with a piece per call."""
    rows = [{"id": f"k{i}", "text": f"kill test caption {i} " + "x" * (i % 7)} for i in range(400)]
    manifest = _write_manifest(tmp_path / "m.jsonl", rows)
    output = str(tmp_path / "out")
    max_in_flight = 4
    config = {"manifests": [manifest], "output": {"path": output, **({} if flush_sec is None else
                                                                      {"flush_sec": flush_sec})},
              "api": {"base_url": "http://unused"}, "calls": {"max_in_flight": max_in_flight},
              "beam": {"args": ["--runner=DirectRunner"]}}
    (tmp_path / "configs").mkdir()
    config_path = tmp_path / "configs" / "kill.yaml"
    config_path.write_text(yaml.safe_dump(config))
    emulator, url = _start_emulator_process("--latency-ms", "40")
    try:
        cmd = [sys.executable, "-m", "pipeline", "--config", str(config_path), "--base-url", url]
        env = dict(os.environ, PYTHONPATH=ROOT)
        job = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        stats_url = url.replace("/v1.3", "/emulator/stats")
        while requests.get(stats_url).json()["requests"] < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
        job.wait()
        first = requests.get(stats_url).json()
        if flush_sec is None:  # what the killed run journaled becomes pieces before the rerun reads them
            from transforms.stages.write import recover_journals

            assert glob.glob(os.path.join(output, "segments", "*.journal"))
            recover_journals(output)
        done_before = read_segments(output).num_rows
        assert 40 <= done_before < 400, "the kill must land mid-run"
        rerun = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        stats = requests.get(url.replace("/v1.3", "/emulator/stats?detail=1")).json()
    finally:
        emulator.terminate()
        emulator.wait()
    assert_exactly_once(output, 400)
    assert read_segments(output).num_rows == 400
    assert f"{done_before} already done" in rerun.stdout
    # Paid items over both runs exceed the distinct items only by calls in flight (plus the one being
    # committed) at the kill.
    extra = stats["items"]["text"] - 400
    assert 0 <= extra <= max_in_flight + 1, (extra, first["items"])
    assert max(stats["item_keys"].values()) <= 2


def test_spent_daily_quota_defers_then_later_runs_finish(tmp_path):
    rows = [{"id": f"q{i}", "text": f"quota caption {i}"} for i in range(20)]
    manifest = _write_manifest(tmp_path / "q.jsonl", rows)
    output = str(tmp_path / "out")
    keys = {}
    deferred_per_run = []
    with Emulator(EmulatorConfig(requests_per_day=6, day_length_sec=3600)) as emu:
        for _ in range(4):
            summary = run(make_config(output, [manifest], max_in_flight=3), emu.base_url)
            deferred_per_run.append(summary["deferred"])
            for key, count in emu.stats()["item_keys"].items():
                keys[key] = keys.get(key, 0) + count
            if summary["deferred"]:
                assert summary["quota_resets_at"] is not None
                assert summary["dead_letters"] == 0
            emu.reset_stats()  # a new day: the quota is back
    assert deferred_per_run == [14, 8, 2, 0]
    assert sorted(keys.values()) == [1] * 20, "no item embedded twice"
    assert_exactly_once(output, 20)
    assert _deferred(output) == []


def test_quota_stop_exits_4_deferred_and_says_when_it_resets(tmp_path):
    manifest = _write_manifest(tmp_path / "q.jsonl", [{"id": f"e{i}", "text": f"t{i}"} for i in range(8)])
    (tmp_path / "configs").mkdir()
    config_path = tmp_path / "configs" / "c.yaml"
    config_path.write_text(yaml.safe_dump({
        "manifests": [manifest], "output": {"path": str(tmp_path / "out")}, "api": {"base_url": "embedded"},
        "emulator": {"requests_per_day": 3, "day_length_sec": 7200}, "beam": {"args": ["--runner=DirectRunner"]}}))
    out = subprocess.run([sys.executable, "-m", "pipeline", "--config", str(config_path)], capture_output=True,
                         text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert out.returncode == 4, out.stderr[-2000:]  # deferred: run again
    assert "deferred         5 (quota_exhausted 5; quota resets at 20" in out.stdout
    assert "status           deferred (exit 4)" in out.stdout
    assert "run again to finish" in out.stdout


def test_call_budget_defers_the_rest(tmp_path):
    manifest = _write_manifest(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": f"budget {i}"} for i in range(10)])
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        first = run(make_config(output, [manifest], max_calls=4), emu.base_url)
        assert emu.stats()["requests"] == 4
        second = run(make_config(output, [manifest]), emu.base_url)
        assert emu.stats()["requests"] == 10
    assert (first["calls"], first["deferred"], first["deferred_by_reason"]) == (4, 6, {"max_calls": 6})
    assert (second["calls"], second["items_already_done"], second["deferred"]) == (6, 4, 0)
    assert_exactly_once(output, 10)


def test_identical_inputs_cost_one_call_and_changed_content_is_embedded_again(tmp_path):
    png = synth.png_bytes(140, 140, seed=21)
    for name in ("a.png", "copy-of-a.png"):
        (tmp_path / name).write_bytes(png)
    rows = [{"id": f"same{i}", "text": "exactly the same words"} for i in range(5)]
    rows += [{"id": "img1", "image_file": "a.png"}, {"id": "img2", "image_file": "copy-of-a.png"},
             {"id": "x", "text": "old words"}]
    manifest = _write_manifest(tmp_path / "d.jsonl", rows)
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        summary = run(make_config(output, [manifest], pack=False), emu.base_url)
        assert emu.stats()["items"] == {"text": 2, "image": 1, "audio": 0}
        assert summary["items_deduplicated"] == 5 and summary["calls"] == 3
        table = read_segments(output)
        vectors = {r["id"]: r["embedding"] for r in table.to_pylist()}
        assert len(vectors) == 8 and all(vectors[f"same{i}"] == vectors["same0"] for i in range(5))
        assert vectors["img1"] == vectors["img2"]

        # x changes its text; y is new but its text was embedded before (under x): reused, not called.
        rows[-1] = {"id": "x", "text": "new words"}
        rows.append({"id": "y", "text": "old words"})
        _write_manifest(tmp_path / "d.jsonl", rows)
        emu.reset_stats()
        second = run(make_config(output, [manifest], pack=False), emu.base_url)
        assert emu.stats()["requests"] == 1 and emu.stats()["items"]["text"] == 1
        assert second["items_already_done"] == 7 and second["items_deduplicated"] == 1
    final = {r["id"]: r for r in read_segments(output).to_pylist()}
    assert len(read_segments(output)) == 9
    assert final["x"]["input_text"] == "new words" and final["y"]["input_text"] == "old words"
    assert final["y"]["embedding"] == vectors["x"]
    assert second["segment_rows_dropped"] == 1  # x's old row
    assert_exactly_once(output, 9)


def test_duplicate_pieces_from_a_retried_bundle_never_reach_the_final_output(tmp_path):
    manifest = _write_manifest(tmp_path / "r.jsonl", [{"id": f"r{i}", "text": f"retry {i}"} for i in range(6)])
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        run(make_config(output, [manifest]), emu.base_url)
        (piece,) = glob.glob(os.path.join(output, "segments", "*.parquet"))
        shutil.copy(piece, piece.replace(".parquet", "-retry.parquet"))  # what a retried bundle leaves
        open(os.path.join(output, "segments", "part-x.parquet.tmp"), "w").write("half-written")
        # ... in a run killed before its finalize finished: the next run settles it
        for marker in glob.glob(os.path.join(output, "runs", "*", "finalized")):
            os.remove(marker)
        second = run(make_config(output, [manifest]), emu.base_url)
        assert emu.stats()["requests"] == 6  # the rerun called nothing
    table = read_segments(output)
    assert table.num_rows == 6 and len(set(table.column("id").to_pylist())) == 6
    assert second["segment_rows_dropped"] == 6
    assert not glob.glob(os.path.join(output, "segments", "*.tmp"))


def test_dead_letters_of_a_rerun_replace_the_earlier_ones(tmp_path):
    manifest = _write_manifest(tmp_path / "d.jsonl", [{"id": "ok", "text": "fine"}, {"id": "bad"}])
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        run(make_config(output, [manifest]), emu.base_url)
        run(make_config(output, [manifest]), emu.base_url)
    assert [l["id"] for l in read_dead_letters(output)] == ["bad"]
    assert_exactly_once(output, 2)


def test_dry_run_prints_the_plan_and_calls_nothing(tmp_path):
    rows = [{"id": f"p{i}", "text": f"plan {i % 40}"} for i in range(50)] + [{"id": "none"}]
    manifest = _write_manifest(tmp_path / "p.jsonl", rows)
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        run(make_config(output, [manifest], max_calls=10), emu.base_url)  # 10 done before
        emu.reset_stats()
        config = make_config(output, [manifest], dry_run=True, requests_per_minute=20, requests_per_day=12)
        plan = run(config, emu.base_url)
        assert emu.stats()["requests"] == 0
    assert plan["rows_read"] == 51 and plan["items"]["text"] == 50
    assert plan["items_already_done"] + plan["items_deduplicated"] == 50 - plan["calls_needed"]
    assert plan["calls_needed"] == 30  # 40 distinct texts, 10 of them done
    assert plan["minutes_at_rate"] == 1.5 and plan["days_at_daily_quota"] == 3
    assert plan["dead_letters_by_reason"] == {"no_input": 1}
    from pipeline.report.summary import format_summary

    text = format_summary(plan)
    assert "calls needed     30" in text and "3 day(s) at the daily quota of 12 calls" in text
    # a call budget is its own limit, reported as runs, not folded into the daily quota
    budget = run(make_config(output, [manifest], dry_run=True, requests_per_day=2000, max_calls=8), "http://unused")
    assert budget["days_at_daily_quota"] == 1 and budget["runs_at_call_budget"] == 4
    assert "4 run(s) at the budget of 8 calls a run" in format_summary(budget)


def test_dry_run_json_is_machine_readable(tmp_path):
    manifest = _write_manifest(tmp_path / "p.jsonl", [{"id": f"j{i}", "text": f"t{i}"} for i in range(5)])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"manifests": [manifest], "output": {"path": str(tmp_path / "o")},
                                                     "api": {"base_url": "embedded"},
                                                     "beam": {"args": ["--runner=DirectRunner"]}}))
    out = subprocess.run([sys.executable, "-m", "pipeline", "--config", str(tmp_path / "c.yaml"), "--dry-run",
                          "--json"], capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = json.loads(out.stdout)
    assert plan["dry_run"] is True and plan["calls_needed"] == 5 and plan["calls_by_route"]["v1"] == 5


def test_finalize_keeps_this_runs_content_even_within_the_same_clock_tick(tmp_path):
    import datetime

    from transforms.store.finalize import finalize_output
    from transforms.records import Item, Outcome
    from transforms.stages.write import segments_table
    import pyarrow.parquet as pq

    (tmp_path / "segments").mkdir()
    same_time = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    for run_id, text in (("run-b", "new words"), ("run-a", "old words")):
        item = Item(id="x", modality="text", source="m.jsonl", row_number=1, content_hash=text, text=text)
        table = segments_table([Outcome(item, "marengo3.0", [(None, None, [0.5] * 512)])], 512, run_id, same_time)
        pq.write_table(table, str(tmp_path / "segments" / f"part-{run_id}-w-00001.parquet"))
    for current, kept in (("run-a", "old words"), ("run-b", "new words")):
        finalize_output(str(tmp_path), current, ["m.jsonl"])
        texts = [t for f in sorted((tmp_path / "segments").glob("*.parquet"))
                 for t in pq.read_table(str(f)).column("input_text").to_pylist()]
        assert texts == [kept]
        if current == "run-a":  # put run-b's row back for the second round
            item = Item(id="x", modality="text", source="m.jsonl", row_number=1, content_hash="new words",
                        text="new words")
            pq.write_table(segments_table([Outcome(item, "marengo3.0", [(None, None, [0.5] * 512)])], 512, "run-b",
                                          same_time), str(tmp_path / "segments" / "part-run-b-w-00001.parquet"))


def test_an_output_keeps_one_model(tmp_path):
    manifest = _write_manifest(tmp_path / "m.jsonl", [{"id": "a", "text": "one model per output"}])
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        run(make_config(output, [manifest], model="marengo2.7"), emu.base_url)
        again = run(make_config(output, [manifest], model="Marengo-retrieval-2.7"), emu.base_url)
        assert again["items_already_done"] == 1  # the other spelling of the same model
        with pytest.raises(ValueError, match="already holds marengo2.7 vectors; write marengo3.0 vectors to another"):
            run(make_config(output, [manifest], model="marengo3.0"), emu.base_url)
        assert emu.stats()["requests"] == 1


def test_small_pieces_of_a_run_are_compacted_when_it_finishes(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import transforms.store.finalize

    monkeypatch.setattr(transforms.store.finalize, "COMPACT_ROWS", 25)
    manifest = _write_manifest(tmp_path / "c.jsonl", [{"id": f"c{i}", "text": f"compact {i}"} for i in range(60)])
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        summary = run(make_config(output, [manifest], flush_sec=0), emu.base_url)  # a piece per call
        files = sorted(glob.glob(os.path.join(output, "segments", "*.parquet")))
        assert [os.path.basename(f).split("-compact-")[1] for f in files] == ["00001.parquet", "00002.parquet",
                                                                              "00003.parquet"]
        assert [pq.read_metadata(f).num_rows for f in files] == [25, 25, 10]
        assert summary["segments_written"] == 60 and summary["segment_files"] == files
        assert_exactly_once(output, 60)
        # The key index took the merged files' entries as they were written (not read back): a rerun finds
        # every item through it, and a changed row's old vectors are found in their merged file and dropped.
        _write_manifest(tmp_path / "c.jsonl", [{"id": f"c{i}", "text": f"compact {i}" + (" changed" if i == 30
                                                                                         else "")} for i in range(60)])
        again = run(make_config(output, [manifest]), emu.base_url)
        assert emu.stats()["requests"] == 61 and again["items_already_done"] == 59
    assert_exactly_once(output, 60)


def test_no_wait_submits_and_the_job_finalizes_itself(tmp_path):
    """Finalize is a step of the job: a submitted job (a Flex Template launch) finalizes its own output on its
    workers; a killed one is settled by the next run (test_incremental, test_unattended)."""

    manifest = _write_manifest(tmp_path / "n.jsonl", [{"id": f"n{i}", "text": f"no wait {i}"} for i in range(5)])
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        submitted = run(make_config(output, [manifest], no_wait=True), emu.base_url)
        assert submitted["status"] == "submitted" and submitted["exit_code"] == 0
        assert len(glob.glob(os.path.join(output, "runs", "*", layout.FINALIZED_MARK))) == 1
        assert len(glob.glob(os.path.join(output, "runs", "*", layout.FINALIZE_COUNTS_FILE))) == 1
        second = run(make_config(output, [manifest]), emu.base_url)
        assert emu.stats()["requests"] == 5  # the submitted job's results count: nothing paid twice
    assert second["items_already_done"] == 5 and second["status"] == "done"
    assert len(glob.glob(os.path.join(output, "runs", "*", layout.FINALIZED_MARK))) == 2
    assert_exactly_once(output, 5)
