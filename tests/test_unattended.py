"""Unattended runs: exit codes that tell the truth, and an outage that costs nothing (issue: unattended operation)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from embed_emulator import Emulator, EmulatorConfig
from tests.capture_server import CaptureServer, json_response
from tests.helpers import TEST_KEY, assert_exactly_once, read_dead_letters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _manifest(tmp_path, rows=60):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": f"caption {i}"}) + "\n" for i in range(rows)))
    return str(path)


def _config(tmp_path, manifest, base_url, output, **calls):
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({
        "model": "marengo3.0", "manifests": [manifest], "output": {"path": output},
        "api": {"base_url": base_url, "connect_timeout_sec": 1, "read_timeout_sec": 2},
        "calls": {"max_attempts": 3, "max_in_flight": 4, "item_deadline_sec": 30, "pack": False, **calls},
        "beam": {"args": ["--runner=DirectRunner"]}}))
    return str(path)


def _cli(config):
    env = dict(os.environ, PYTHONPATH=ROOT, TWELVE_LABS_API_KEY=TEST_KEY)
    return subprocess.run([sys.executable, "-m", "pipeline", "--config", config], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def _summary(output):
    with open(os.path.join(output, "summary.json")) as f:
        return json.load(f)


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_api_stops_calling_defers_the_rest_and_exits_5_then_a_rerun_finishes(tmp_path):
    manifest, output = _manifest(tmp_path), str(tmp_path / "out")
    out = _cli(_config(tmp_path, manifest, f"http://127.0.0.1:{_closed_port()}/v1.3", output))
    assert out.returncode == 5, out.stderr[-2000:]
    summary = _summary(output)
    assert summary["status"] == "stopped_service_unavailable" and summary["exit_code"] == 5
    assert "status           stopped_service_unavailable (exit 5)" in out.stdout
    # at most the attempts before the 20th failure in a row, plus the calls in flight, were tried
    letters = read_dead_letters(output)
    assert summary["deferred_by_reason"]["service_unavailable"] >= 60 - 8
    assert len(letters) + summary["deferred"] == 60
    assert all(l["kind"] == "transient" and l["code"] == "connection_failed" for l in letters)
    with Emulator(EmulatorConfig()) as emu:
        again = _cli(_config(tmp_path, manifest, emu.base_url, output))
    assert again.returncode == 0, again.stderr[-2000:]
    assert _summary(output)["status"] == "done"
    assert_exactly_once(output, 60)


@pytest.mark.parametrize("fault", ["no_v13_prefix", "5xx_storm"])
def test_a_wrong_base_url_or_a_5xx_storm_stops_after_20_failures_in_a_row(tmp_path, fault):
    manifest, output = _manifest(tmp_path, rows=100), str(tmp_path / "out")
    config = EmulatorConfig(fault_5xx_rate=1.0 if fault == "5xx_storm" else 0.0)
    with Emulator(config) as emu:
        base = emu.base_url.replace("/v1.3", "") if fault == "no_v13_prefix" else emu.base_url
        out = _cli(_config(tmp_path, manifest, base, output))
        requests = emu.stats()["requests"]
    assert out.returncode == 5, out.stdout[-2000:] + out.stderr[-2000:]
    assert requests <= 20 + 4 + 1, requests  # the failures in a row, the calls in flight, one queued
    assert _summary(output)["deferred"] >= 100 - 25


def test_exit_codes_done_and_dead_letters(tmp_path):
    good = _manifest(tmp_path, rows=3)
    with Emulator(EmulatorConfig()) as emu:
        done = _cli(_config(tmp_path, good, emu.base_url, str(tmp_path / "a")))
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"id": "x", "text": "fine"}\n{"id": "y", "image_url": "ftp://nope"}\n')
        dead = _cli(_config(tmp_path, str(bad), emu.base_url, str(tmp_path / "b")))
    assert done.returncode == 0 and _summary(str(tmp_path / "a"))["status"] == "done"
    assert dead.returncode == 3 and _summary(str(tmp_path / "b"))["status"] == "finished_with_dead_letters"
    assert _summary(str(tmp_path / "b"))["dead_letters_permanent"] == 1


def test_a_config_can_make_new_dead_letters_exit_0_and_keeps_the_status(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "text": "fine"}\n{"id": "y", "image_url": "ftp://nope"}\n')
    with Emulator(EmulatorConfig()) as emu:
        path = _config(tmp_path, str(bad), emu.base_url, str(tmp_path / "b"))
        with open(path) as f:
            config = json.load(f)
        config["exit_codes"] = {"dead_letters": 0}
        with open(path, "w") as f:
            json.dump(config, f)
        dead = _cli(path)
    summary = _summary(str(tmp_path / "b"))
    assert dead.returncode == 0 and summary["status"] == "finished_with_dead_letters" and summary["exit_code"] == 0
    assert summary["dead_letters_permanent"] == 1


def test_column_mapping_from_the_config_and_the_command_line(tmp_path):
    from embed_emulator import synth

    (tmp_path / "img.png").write_bytes(synth.png_bytes(150, 150, seed=4))
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("sku,title,description,image_path\n"
                       "a1,Red shoe,a red running shoe,img.png\n"
                       "a2,Blue hat,a blue woollen hat,\n")
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        path = tmp_path / "job.yaml"
        path.write_text(json.dumps({
            "manifests": [str(catalog)], "output": {"path": output}, "api": {"base_url": emu.base_url},
            "columns": {"sku": "id", "description": "text"}, "beam": {"args": ["--runner=DirectRunner"]}}))
        env = dict(os.environ, PYTHONPATH=ROOT, TWELVE_LABS_API_KEY=TEST_KEY)
        out = subprocess.run([sys.executable, "-m", "pipeline", "--config", str(path), "--column",
                              "image_path=image_file"], capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "text <- description" in out.stderr and "image_file <- image_path" in out.stderr
    from tests.helpers import read_segments

    rows = {(r["id"], r["modality"]): r for r in read_segments(output).to_pylist()}
    assert set(rows) == {("a1", "text"), ("a1", "image"), ("a2", "text")}
    assert rows[("a2", "text")]["input_text"] == "a blue woollen hat"
    assert json.loads(rows[("a1", "text")]["attributes"]) == {"title": "Red shoe"}


def test_a_manifest_with_no_known_column_is_refused_up_front_naming_its_columns(tmp_path):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("title,description,image_path\nRed shoe,a red running shoe,img.png\n")
    with Emulator(EmulatorConfig()) as emu:
        out = _cli(_config(tmp_path, str(catalog), emu.base_url, str(tmp_path / "out")))
        requests = emu.stats()["requests"]
    assert out.returncode == 2 and requests == 0
    (error,) = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert "has columns title, description, image_path; none is an input" in error
    assert "columns: {title: text}" in error and "Traceback" not in out.stderr


@pytest.mark.parametrize("columns, expected", [({"description": "txt"}, "did you mean text?"),
                                               ({"a": "text", "b": "text"}, "maps two columns to 'text'")])
def test_a_bad_column_mapping_is_one_line(tmp_path, columns, expected):
    from pipeline.config import load_config
    from transforms.settings import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"manifests": ["x.csv"], "columns": columns}))
    with pytest.raises(ConfigError, match=expected.replace("?", "\\?")):
        load_config(str(path))


def test_a_csv_header_that_names_a_column_twice_is_refused_not_half_read(tmp_path):
    from transforms.stages.read import parse_manifest

    path = tmp_path / "d.csv"
    path.write_text("id,text,text\n1,first,second\n")
    (letter,) = list(parse_manifest(str(path)))
    assert letter.code == "malformed_row" and "'text' more than once" in letter.message


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path):
    import signal
    import time

    from transforms.store.lock import OutputLock, OutputLocked

    manifest, output = _manifest(tmp_path, rows=40), str(tmp_path / "out")
    with Emulator(EmulatorConfig(latency_ms=300)) as emu:
        config = _config(tmp_path, manifest, emu.base_url, output, max_in_flight=1)
        env = dict(os.environ, PYTHONPATH=ROOT, TWELVE_LABS_API_KEY=TEST_KEY)
        first = subprocess.Popen([sys.executable, "-m", "pipeline", "--config", config], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while emu.stats()["requests"] < 2 and time.time() < deadline:
            time.sleep(0.05)
        second = _cli(config)
        calls_during = emu.stats()["requests"]
        first.send_signal(signal.SIGKILL)  # a dead run's claim must not block the next one
        first.wait()
        third = _cli(config)
    assert second.returncode == 6, second.stderr[-2000:]
    (error,) = [l for l in second.stderr.splitlines() if l.startswith("error:")]
    assert "another run" in error and "is writing to this output" in error
    assert calls_during < 40
    assert third.returncode == 0, third.stderr[-2000:]
    assert_exactly_once(output, 40)
    # two claims written at once: exactly one wins
    a, b = OutputLock(output, "run-a"), OutputLock(output, "run-b")
    a.acquire()
    with pytest.raises(OutputLocked):
        b.acquire()
    a.release()
    b.acquire()
    b.release()
    assert not os.listdir(os.path.join(output, "locks"))


def test_an_output_that_cannot_be_written_is_refused_before_any_call(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with Emulator(EmulatorConfig()) as emu:
        out = _cli(_config(tmp_path, _manifest(tmp_path, rows=5), emu.base_url, str(blocker / "out")))
        requests = emu.stats()["requests"]
    assert out.returncode == 2 and requests == 0, out.stderr[-2000:]
    (error,) = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert "cannot be written" in error and "Traceback" not in out.stderr


def test_permanent_failures_report_once_transient_ones_retry_and_re_drive_on_demand(tmp_path):
    long_text = " ".join(f"word{i}" for i in range(200))  # over Marengo 2.7's 77 tokens, truncation off: 400
    rows = [{"id": "ok", "text": "fine"}, {"id": "long", "text": long_text, "text_truncate": "none", "shelf": 3},
            {"id": "bad", "image_url": "ftp://nope"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        config = _config(tmp_path, str(manifest), emu.base_url, output)
        raw = json.loads(open(config).read())
        raw["model"] = "marengo2.7"
        open(config, "w").write(json.dumps(raw))
        first = _cli(config)
        after_first = emu.stats()["requests"]
        second = _cli(config)
        after_second = emu.stats()["requests"]
        env = dict(os.environ, PYTHONPATH=ROOT, TWELVE_LABS_API_KEY=TEST_KEY)
        third = subprocess.run([sys.executable, "-m", "pipeline", "--config", config, "--retry-dead-letters"],
                               capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        after_third = emu.stats()["requests"]
    assert first.returncode == 3 and second.returncode == 0 and third.returncode == 0, second.stdout
    assert after_second == after_first  # the refused text was not paid for again
    assert after_third == after_first + 1  # re-driven on demand
    assert "status           done_with_known_dead_letters (exit 0)" in second.stdout
    assert "1 permanent API refusals not re-tried" in second.stdout
    letters = {l["id"]: l for l in read_dead_letters(output)}
    assert set(letters) == {"long", "bad"}  # each reported once in the output, never doubled
    assert letters["long"]["row"] == {"id": "long", "text": long_text, "text_truncate": "none", "shelf": 3}
    assert letters["long"]["kind"] == "permanent" and letters["bad"]["row"] == rows[2]
    assert_exactly_once(output, 3)
    # the content changes: called again
    rows[1]["text"] = "now short"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with Emulator(EmulatorConfig()) as emu:
        fourth = _cli(_config(tmp_path, str(manifest), emu.base_url, output))
        # the output now holds marengo2.7 rows, so this config (marengo3.0) is refused in one line
        assert fourth.returncode == 2
        open(config, "w").write(json.dumps({**raw, "api": {**raw["api"], "base_url": emu.base_url}}))
        fifth = _cli(config)
        assert emu.stats()["requests"] == 1
    assert fifth.returncode == 3 or fifth.returncode == 0
    assert "long" not in {l["id"] for l in read_dead_letters(output)}


def test_a_404_on_the_embed_route_is_never_the_rows_fault_and_a_rerun_embeds_them_once_each(tmp_path, status=404):
    """Issue 24 item 4: the endpoint's 404/405 defers or marks transient every row hit, never permanent."""
    manifest, output = _manifest(tmp_path, rows=200), str(tmp_path / "out")
    # A base URL whose embed route does not exist, as one missing a path part answers.
    no_route = json_response(status, {"code": "resource_not_exist",
                                      "message": "The requested resource does not exist."})
    with CaptureServer(lambda request: no_route) as server:
        out = _cli(_config(tmp_path, manifest, server.base_url, output, pack=True))
    assert out.returncode == 5, out.stdout[-2000:] + out.stderr[-2000:]
    summary = _summary(output)
    assert summary["status"] == "stopped_service_unavailable"
    letters = read_dead_letters(output)
    assert 20 <= len(letters) <= 20 + 4 + 1, len(letters)  # the failures in a row and the calls in flight
    assert len(letters) + summary["deferred"] == 200
    assert {(l["kind"], l["code"], l["http_status"]) for l in letters} == {("transient", "endpoint_not_found",
                                                                             status)}
    assert "check api.base_url" in letters[0]["message"]
    assert summary["dead_letters_permanent"] == 0
    with Emulator(EmulatorConfig()) as emu:
        again = _cli(_config(tmp_path, manifest, emu.base_url, output))
        calls = emu.stats()["calls_ok"]
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert _summary(output)["status"] == "done"
    assert calls == 200  # one call per text: none were left as "known dead letters", none sent twice
    assert_exactly_once(output, 200)
