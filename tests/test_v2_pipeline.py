"""The job on Embed API v2: mixed manifests on marengo3.0 and marengo3.5, tasks created once across kills,
failed and timed-out tasks, and the settings refused before any call. All against the emulator on 127.0.0.1."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from embed_client import EmbedClient
from embed_emulator import Emulator, EmulatorConfig, synth
from tests.helpers import (TEST_KEY, StaticFiles, assert_exactly_once, make_config, read_dead_letters,
                           read_segments, run)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v2-media")
    (folder / "img.png").write_bytes(synth.png_bytes(160, 160, seed=11))
    (folder / "snd.wav").write_bytes(synth.wav_bytes(9.0, 330.0))
    (folder / "short.mp4").write_bytes(synth.mp4_bytes(8.0, 360, 360, fps=4, seed=1))
    (folder / "long.mp4").write_bytes(synth.mp4_bytes(14.0, 360, 360, fps=2, seed=2))
    return folder


def _manifest(folder, base_url=None):
    rows = [{"id": "t", "text": "a red kite over the dunes"},
            {"id": "i", "image_file": "img.png"},
            {"id": "a", "audio_file": "snd.wav"},
            {"id": "v-short", "video_file": "short.mp4", "shot": 1},
            {"id": "v-clip", "video_file": "short.mp4", "start_sec": 2, "end_sec": 6},
            {"id": "bad-clip", "video_file": "short.mp4", "start_sec": 5, "end_sec": 3},
            {"id": "missing", "video_file": "nope.mp4"}]
    if base_url:  # a URL's duration is unknown up front: an async task
        rows.append({"id": "v-long", "video_url": f"{base_url}/long.mp4"})
    path = folder / ("m-url.jsonl" if base_url else "m.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), len(rows)


def _by_item(table):
    grouped = {}
    for row in table.to_pylist():
        grouped.setdefault((row["id"], row["modality"]), []).append(row)
    for rows in grouped.values():
        rows.sort(key=lambda r: r["segment_index"])
    return grouped


def _expected(data):
    order = {None: 0, "clip": 0, "asset": 1}
    opt = {None: 0, "visual": 1, "audio": 2, "transcription": 3, "fused": 5}
    return sorted(data, key=lambda d: (order.get(d.embedding_scope, 0), d.start_sec or 0.0, d.end_sec or 0.0,
                                       opt.get(d.embedding_option, 9)))


def _assert_rows_match(rows, data, dims):
    expected = _expected(data)
    assert len(rows) == len(expected)
    for row, entry in zip(rows, expected):
        assert len(row["embedding"]) == dims
        np.testing.assert_array_equal(np.asarray(row["embedding"], dtype=np.float32),
                                      np.asarray(entry.embedding, dtype=np.float32))
        assert (row["embedding_option"], row["embedding_scope"]) == (entry.embedding_option, entry.embedding_scope)
        assert (row["start_offset_sec"], row["end_offset_sec"]) == (entry.start_sec, entry.end_sec)


def _wait_task(client, task_id, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        task = client.tasks.retrieve(task_id)
        if task.status != "processing":
            return task
        time.sleep(0.1)
    raise AssertionError("task never finished")


def test_mixed_manifest_on_marengo30_auto_routes_video_to_v2_with_exact_vectors(tmp_path, media, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    output = str(tmp_path / "out")
    with StaticFiles(str(media)) as files, Emulator(EmulatorConfig(task_ready_after_sec=0.3)) as emu:
        manifest, rows = _manifest(media, files.url)
        summary = run(make_config(output, [manifest], task_poll_sec=0.1), emu.base_url)
        stats = emu.stats()
        table = read_segments(output)
        grouped = _by_item(table)
        client = EmbedClient(api_key=TEST_KEY, base_url=emu.base_url)
        b64 = lambda name: {"base64_string": __import__("base64").b64encode((media / name).read_bytes()).decode()}
        # text, image and audio went packed through v1 (auto on marengo3.0): v1 vectors
        v1 = client.create("marengo3.0", text="a red kite over the dunes")
        np.testing.assert_array_equal(np.float32(grouped[("t", "text")][0]["embedding"]),
                                      np.float32(v1.text_embedding.segments[0].float_))
        short = client.v2.create("video", "marengo3.0", video={"media_source": b64("short.mp4")})
        _assert_rows_match(grouped[("v-short", "video")], short.data, 512)
        clip = client.v2.create("video", "marengo3.0", video={"media_source": b64("short.mp4"),
                                                              "start_sec": 2.0, "end_sec": 6.0})
        _assert_rows_match(grouped[("v-clip", "video")], clip.data, 512)
        created = client.tasks.create("video", "marengo3.0", video={"media_source": {"url": f"{files.url}/long.mp4"}})
        _assert_rows_match(grouped[("v-long", "video")], _wait_task(client, created.id).data, 512)
    assert_exactly_once(output, rows)
    letters = {l["id"]: l["code"] for l in read_dead_letters(output)}
    assert letters == {"bad-clip": "invalid_offset", "missing": "missing_file"}
    assert summary["api"]["items_by_route"] == {"v1": 3, "v2": 2, "task": 1}
    assert summary["api"]["v2_chosen_because"] == "video is embedded by Embed API v2 only"
    assert summary["tasks"]["created"] == 1 and summary["tasks"]["ready"] == 1
    assert stats["tasks"]["created"] == 1
    assert {r["embedding_option"] for r in grouped[("v-short", "video")]} >= {"visual", "audio"}
    assert [r["embedding_option"] for r in grouped[("t", "text")]] == [None]
    # a rerun pays nothing: every item is done, no task is created or polled
    with Emulator(EmulatorConfig()) as emu2:
        again = run(make_config(output, [manifest], task_poll_sec=0.1), emu2.base_url)
        assert emu2.stats()["requests"] == 0
    assert again["items_already_done"] == 6 and again["calls"] == 0


def test_mixed_manifest_on_marengo35_with_dimension_256(tmp_path, media, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    output = str(tmp_path / "out35")
    with StaticFiles(str(media)) as files, Emulator(EmulatorConfig(task_ready_after_sec=0.3)) as emu:
        manifest, rows = _manifest(media, files.url)
        summary = run(make_config(output, [manifest], model="marengo3.5", embedding_dimension=256,
                                  task_poll_sec=0.1), emu.base_url)
        stats = emu.stats()
        grouped = _by_item(read_segments(output))
        client = EmbedClient(api_key=TEST_KEY, base_url=emu.base_url)
        text = client.v2.create("multi_input", "marengo3.5", multi_input={"input_text": "a red kite over the dunes"},
                                embedding_dimension=256)
        _assert_rows_match(grouped[("t", "text")], text.data, 256)
        created = client.tasks.create("audio", "marengo3.5", embedding_dimension=256, audio={
            "media_source": {"base64_string": __import__("base64").b64encode((media / "snd.wav").read_bytes()).decode()}})
        _assert_rows_match(grouped[("a", "audio")], _wait_task(client, created.id).data, 256)
    assert_exactly_once(output, rows)
    assert summary["dimension"] == 256
    assert summary["api"]["items_by_route"] == {"v1": 0, "v2": 2, "task": 4}
    assert summary["api"]["v2_chosen_because"] == "marengo3.5 is served by Embed API v2 only"
    assert stats["tasks"]["created"] == 4 == summary["tasks"]["created"]
    assert read_segments(output).schema.field("embedding").type.list_size == 256


def test_a_failed_task_is_a_dead_letter_and_a_slow_one_is_deferred_then_finished_without_a_second_task(
        tmp_path, media, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "long", "video_file": str(media / "long.mp4")}) + "\n")
    failed_out = str(tmp_path / "failed")
    with Emulator(EmulatorConfig(task_ready_after_sec=0.2, task_failure_rate=1.0)) as emu:
        summary = run(make_config(failed_out, [str(manifest)], api_version="v2", task_poll_sec=0.1,
                                  model="marengo3.5"), emu.base_url)
    (letter,) = read_dead_letters(failed_out)
    assert letter["code"] == "task_failed" and "failed:" in letter["message"] and summary["tasks"]["failed"] == 1

    slow_out = str(tmp_path / "slow")
    with Emulator(EmulatorConfig(task_ready_after_sec=3.0)) as emu:
        first = run(make_config(slow_out, [str(manifest)], model="marengo3.5", task_poll_sec=0.1,
                                task_deadline_sec=0.5), emu.base_url)
        assert first["deferred_by_reason"] == {"task_pending": 1} and first["tasks"]["created"] == 1
        time.sleep(3.0)
        second = run(make_config(slow_out, [str(manifest)], model="marengo3.5", task_poll_sec=0.1),
                     emu.base_url)
        stats = emu.stats()
    assert second["tasks"] == {"created": 0, "resumed": 1, "recreated": 0, "ready": 1, "failed": 0}
    assert stats["tasks"]["created"] == 1 and second["deferred"] == 0
    assert_exactly_once(slow_out, 1)


def _write_config(tmp_path, manifest, base_url, output, **extra):
    config = {"model": "marengo3.0", "manifests": [manifest], "output": {"path": output},
              "api": {"base_url": base_url}, "calls": {"task_poll_sec": 0.2, "max_in_flight": 4},
              "beam": {"args": ["--runner=DirectRunner"]}}
    for key, value in extra.items():
        config[key] = value if not isinstance(value, dict) else {**config.get(key, {}), **value}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(config))
    return str(path)


def _cli(args, timeout=240):
    env = dict(os.environ, PYTHONPATH=ROOT, TWELVE_LABS_API_KEY=TEST_KEY)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def test_sigkill_while_tasks_process_then_rerun_creates_each_task_once(tmp_path, media):
    rows = [{"id": f"v{i}", "video_file": str(media / "long.mp4"), "start_sec": i, "end_sec": i + 6}
            for i in range(6)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig(task_ready_after_sec=4.0)) as emu:
        config = _write_config(tmp_path, str(manifest), emu.base_url, output, model="marengo3.5")
        env = dict(os.environ, PYTHONPATH=ROOT, TWELVE_LABS_API_KEY=TEST_KEY)
        job = subprocess.Popen([sys.executable, "-m", "pipeline", "--config", config], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while emu.stats()["tasks"]["created"] < len(rows) and time.time() < deadline and job.poll() is None:
            time.sleep(0.05)
        created_before_kill = emu.stats()["tasks"]["created"]
        job.send_signal(signal.SIGKILL)
        job.wait()
        assert created_before_kill == len(rows) and emu.stats()["tasks"]["ready"] == 0  # killed mid-processing
        out = _cli(["--config", config])
        stats = emu.stats()
    assert out.returncode == 0, out.stderr[-3000:]
    assert stats["tasks"]["created"] == len(rows)
    assert sorted(stats["task_keys"].values()) == [1] * len(rows)
    assert_exactly_once(output, len(rows))
    assert "6 resumed from earlier runs" in out.stdout


@pytest.mark.parametrize("extra, expected", [
    ({"embedding": {"dimension": 256}}, "embedding.dimension is for marengo3.5 only"),
    ({"model": "marengo3.5", "api": {"version": "v1"}}, "marengo3.5 is served by Embed API v2 only"),
    ({"embedding": {"dimensions": 256}}, "did you mean embedding.dimension?"),
    ({"embedding": {"options": ["visual", "smell"]}}, "embedding.options has 'smell'"),
    ({"embedding": {"segmentation": {"strategy": "fixed", "duration_sec": 30}}},
     "embedding.segmentation.duration_sec must be a number from 2 to 10"),
])
def test_incompatible_v2_settings_are_one_line_before_any_call(tmp_path, extra, expected):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "x", "text": "hello"}\n')
    with Emulator(EmulatorConfig()) as emu:
        out = _cli(["--config", _write_config(tmp_path, str(manifest), emu.base_url, str(tmp_path / "o"), **extra)])
        requests = emu.stats()["requests"]
    assert out.returncode == 2 and requests == 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], out.stderr
    assert "Traceback" not in out.stderr


def test_a_video_past_the_assets_api_limit_is_a_dead_letter_naming_it_before_any_call(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    big = tmp_path / "big.mp4"
    with open(big, "wb") as f:
        f.truncate(10 * 1024 ** 3 + 1)  # sparse: past what even a multipart upload takes (10 GB)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "big", "video_file": "big.mp4"}) + "\n")
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        run(make_config(output, [str(manifest)]), emu.base_url)
        assert emu.stats()["requests"] == 0 and emu.stats()["assets"]["requests"] == 0
    (letter,) = read_dead_letters(output)
    assert letter["code"] == "file_too_large" and "10 GB" in letter["message"] and "Assets API" in letter["message"]


def test_media_minutes_budget_paces_to_the_hourly_limit():
    from embed_client.pacing.local import MediaMinutesBudget

    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    budget = MediaMinutesBudget(60.0, clock=lambda: now[0], sleep=sleep)  # a minute of media per minute
    for _ in range(60):
        budget.acquire(1.0)          # the first hour's worth goes at once
    assert sum(slept) == 0
    for _ in range(30):
        budget.acquire(1.0)          # then one minute of media per ~60.6 s (1% under the limit)
    assert sum(slept) == pytest.approx(30 * 60 / 0.99, rel=1e-6)
    budget.charge(10.0)              # media of unknown length, charged after its call
    assert budget.acquire(1.0) == pytest.approx(11 * 60 / 0.99, rel=1e-6)


def test_a_spent_daily_media_quota_defers_the_rest_and_a_later_run_finishes(tmp_path, media, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    rows = [{"id": f"v{i}", "video_file": str(media / "short.mp4"), "start_sec": 0, "end_sec": 2 + i * 0.5}
            for i in range(6)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig(media_minutes_per_day=0.1)) as emu:  # 6 s: the first two or three clips
        first = run(make_config(output, [str(manifest)], max_in_flight=1), emu.base_url)
    assert first["deferred_by_reason"].get("quota_exhausted", 0) >= 2
    assert first["http_429_by_dimension"].get("dpd", 0) >= 1
    embedded_first = sum(first["items_embedded"].values())
    assert embedded_first + first["deferred"] == len(rows)
    with Emulator(EmulatorConfig()) as emu:
        second = run(make_config(output, [str(manifest)]), emu.base_url)
        calls = emu.stats()["requests"]
    assert second["items_already_done"] == embedded_first and calls == len(rows) - embedded_first
    assert_exactly_once(output, len(rows))


def test_asset_ids_go_to_v2_and_an_unknown_one_is_a_dead_letter(tmp_path, media, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    rows = [{"id": "known", "asset_id": "asset-img-1", "media_type": "image"},
            {"id": "unknown", "asset_id": "asset-nope", "media_type": "image"},
            {"id": "no-type", "asset_id": "asset-img-1"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig(assets={"asset-img-1": str(media / "img.png")})) as emu:
        summary = run(make_config(output, [str(manifest)], api_version="v2"), emu.base_url)
    assert summary["items_embedded"] == {"image": 1}
    letters = {l["id"]: l["code"] for l in read_dead_letters(output)}
    assert letters == {"unknown": "resource_not_exist", "no-type": "invalid_media_type"}
    assert_exactly_once(output, 3)


def test_a_recorded_task_past_retention_or_gone_is_created_again_and_the_summary_says_so(tmp_path, media,
                                                                                         monkeypatch):
    import time as _time

    from transforms.calling.v2 import task_key

    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "old", "video_file": str(media / "long.mp4")}) + "\n"
                        + json.dumps({"id": "lost", "video_file": str(media / "long.mp4"), "end_sec": 8}) + "\n")
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig(task_ready_after_sec=0.2)) as emu:
        # learn each item's content key from a dry run of the real routing, then plant journal records:
        # one 8 days old (past the 7-day retention), one recent that the API does not know (purged)
        from pipeline.run import call_settings
        from transforms.records import ManifestRow
        from transforms.stages.validate import RoutePlan, row_to_items

        config = make_config(output, [str(manifest)], model="marengo3.5", task_poll_sec=0.1)
        plan = RoutePlan.from_settings(call_settings(config, emu.base_url))
        items = [i for n, line in enumerate(manifest.read_text().splitlines(), 1)
                 for i in row_to_items(ManifestRow(str(manifest), n, json.loads(line)), "marengo3.5", plan)]
        os.makedirs(os.path.join(output, "tasks"))
        with open(os.path.join(output, "tasks", "part-planted-0-00001.jsonl"), "w") as f:
            for item, task_id, age in ((items[0], "t-expired", 8 * 86400), (items[1], "t-purged", 60)):
                f.write(json.dumps({"key": task_key(item), "task_id": task_id,
                                    "created_at": _time.time() - age}) + "\n")
        summary = run(config, emu.base_url)
        stats = emu.stats()
    assert summary["tasks"]["recreated"] == 2 and summary["tasks"]["created"] == 2
    assert summary["tasks"]["resumed"] == 1  # the recent one was polled first (404), then re-created
    assert stats["tasks"]["created"] == 2
    assert "2 re-created (past retention)" in __import__("pipeline.report.summary", fromlist=["x"]).format_summary(summary)
    assert_exactly_once(output, 2)


def test_a_task_created_but_never_recorded_is_found_in_the_task_list_not_paid_again(tmp_path, media, monkeypatch):
    """A kill between the API creating a task and the journal recording its id leaves only the intent; the
    rerun finds each such task by its source and span in `GET /embed-v2/tasks` and polls it."""
    import time as _time

    from pipeline.run import call_settings
    from transforms.calling.v2 import task_key, task_request
    from transforms.records import ManifestRow
    from transforms.stages.validate import RoutePlan, row_to_items

    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    spans = {"a": (0, 6), "b": (2, 8), "c": (4, 10), "d": (6, 12)}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": key, "video_file": str(media / "long.mp4"), "start_sec": start,
                                            "end_sec": end}) + "\n" for key, (start, end) in spans.items()))
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig(task_ready_after_sec=0.2)) as emu:
        config = make_config(output, [str(manifest)], model="marengo3.5", task_poll_sec=0.1)
        settings = call_settings(config, emu.base_url)
        plan = RoutePlan.from_settings(settings)
        items = {i.id: i for n, line in enumerate(manifest.read_text().splitlines(), 1)
                 for i in row_to_items(ManifestRow(str(manifest), n, json.loads(line)), "marengo3.5", plan)}
        client = EmbedClient(api_key=TEST_KEY, base_url=emu.base_url)
        # The killed run: b and a were created (in that order) but not recorded, d was recorded, c never sent.
        sent_at = _time.time()
        orphans = {key: client.tasks.create(**task_request(items[key], settings)).id for key in ("b", "a")}
        recorded = client.tasks.create(**task_request(items["d"], settings)).id
        os.makedirs(os.path.join(output, "tasks"))
        with open(os.path.join(output, "tasks", "part-planted-0-00001.jsonl"), "w") as f:
            for key in ("a", "b", "c", "d"):
                f.write(json.dumps({"key": task_key(items[key]), "intent_at": sent_at}) + "\n")
            f.write(json.dumps({"key": task_key(items["d"]), "task_id": recorded, "created_at": sent_at + 1}) + "\n")
        summary = run(config, emu.base_url)
        stats = emu.stats()
        rows = read_segments(output).to_pylist()
        from transforms.calling.v2 import read_task_journal
        journal = read_task_journal(output)
    assert stats["tasks"]["created"] == 4  # 3 by the killed run, 1 (for c) by the rerun
    assert summary["tasks"]["created"] == 1 and summary["tasks"]["resumed"] == 3
    assert_exactly_once(output, 4)
    for row in rows:  # each id got the vectors of its own span, not a neighbour's task
        start, end = spans[row["id"]]
        assert start - 0.01 <= row["start_offset_sec"] and row["end_offset_sec"] <= end + 0.01, row
    assert {key: journal[task_key(items[key])][0] for key in ("a", "b")} == orphans


def test_embedding_options_scopes_and_segmentation_reach_the_output(tmp_path, media, monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "v", "video_file": str(media / "short.mp4")}) + "\n")
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        run(make_config(output, [str(manifest)], embedding_options=["visual"], embedding_scopes=["clip"],
                        segmentation={"strategy": "fixed", "duration_sec": 2}), emu.base_url)
    rows = read_segments(output).to_pylist()
    assert {(r["embedding_option"], r["embedding_scope"]) for r in rows} == {("visual", "clip")}
    assert [(r["start_offset_sec"], r["end_offset_sec"]) for r in rows] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0),
                                                                          (6.0, 8.0)]
