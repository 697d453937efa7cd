"""The API key never leaves the process: not in logs (DEBUG, every logger), stdout/stderr, output files,
dead letters, summary, exceptions, Beam's pipeline options or pickled settings, whatever the API answers."""
import json
import logging
import os
import pickle
import subprocess
import sys
import traceback

import pyarrow.parquet as pq
import pytest
from apache_beam.internal.cloudpickle import cloudpickle

from embed_emulator import Emulator, EmulatorConfig, synth
from pipeline.run import beam_options
from tests.helpers import make_config, read_dead_letters, run
from transforms.settings import CallSettings
from transforms.stages.call import CreateEmbeddings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "tlk_FAKE_SECRET_5d1c9e7a40b24f6e"
# The whole key, and its random part alone in case something cuts or masks the prefix.
NEEDLES = (KEY, KEY.rsplit("_", 1)[1])
LONG_TEXT = " ".join(f"word{i}" for i in range(200))


def _leaks(haystack) -> list:
    if isinstance(haystack, bytes):
        return [n for n in NEEDLES if n.encode() in haystack]
    return [n for n in NEEDLES if n in str(haystack)]


def _output_texts(output: str):
    """Every file under the output folder: its raw bytes, and the decoded rows of Parquet files."""
    for folder, _, names in os.walk(output):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                yield path, f.read()
            if name.endswith(".parquet"):
                yield path, repr(pq.read_table(path).to_pylist())


def _exception_texts(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield str(exc)
        yield repr(exc)
        yield repr(exc.args)
        yield repr(vars(exc)) if hasattr(exc, "__dict__") else ""
        yield "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        exc = exc.__cause__ or exc.__context__


@pytest.fixture
def all_logs(caplog, request):
    """caplog at DEBUG for every logger, including ones that do not propagate to the root."""
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        caplog.set_level(logging.DEBUG, logger=name)
        if not logger.propagate:
            logger.addHandler(caplog.handler)
            request.addfinalizer(lambda lg=logger: lg.removeHandler(caplog.handler))
    return caplog


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("secret-media")
    (folder / "img.png").write_bytes(synth.png_bytes(150, 150, seed=2))
    (folder / "snd.wav").write_bytes(synth.wav_bytes(2.0, 300.0))
    rows = [{"id": "s-text", "text": "a caption with nothing to hide"}, {"id": "s-image", "image_file": "img.png"},
            {"id": "s-audio", "audio_file": "snd.wav"},
            # Over Marengo 2.7's 77 tokens with truncation off: a 400 for that model.
            {"id": "s-long", "text": LONG_TEXT, "text_truncate": "none"}]
    path = folder / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _proof(stats, letters, error):
    """Per scenario: evidence that the failure it is about really happened."""
    codes = {l["code"] for l in letters}
    faults = stats["faults"]
    return {
        "success_and_400": stats["by_status"].get("200", 0) > 0 and "parameter_invalid" in codes,
        "429_retry_after": faults["429_burst"] > 0,
        "daily_quota": stats["rate_limited"] > 0,
        "5xx": faults["5xx"] > 0 and letters and all(l["http_status"] >= 500 for l in letters),
        "malformed_body": faults["malformed"] > 0 and "malformed_response" in codes,
        "dropped_connection": faults["drop"] > 0 and codes == {"connection_failed"},
        "hang": faults["hang"] > 0 and codes == {"timeout"},
        "modality_error": faults["modality_error"] > 0 and "embedding_failed" in codes,
        "401": error is not None and "refused the key" in str(error),
        "key_file": stats["by_status"].get("200", 0) > 0 and error is None,
    }


SCENARIOS = {
    "success_and_400": ({}, {"model": "marengo2.7"}),
    "429_retry_after": ({"fault_429_burst_rate": 0.5, "fault_429_burst_sec": 0.2, "seed": 1}, {}),
    "daily_quota": ({"requests_per_day": 1}, {}),
    "5xx": ({"fault_5xx_rate": 1.0}, {}),
    "malformed_body": ({"fault_malformed_rate": 1.0, "seed": 2}, {}),
    "dropped_connection": ({"fault_drop_rate": 1.0}, {}),
    "hang": ({"fault_hang_rate": 1.0, "fault_hang_sec": 3.0}, {"read_timeout_sec": 0.3}),
    "modality_error": ({"fault_modality_error_rate": 1.0}, {}),
    "401": ({"api_keys": {"someone-elses-key"}}, {}),
    "key_file": ({}, {}),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_key_appears_nowhere(scenario, tmp_path, manifest, all_logs, capfd, monkeypatch):
    emulator_changes, job_changes = ({"api_keys": {KEY}, **SCENARIOS[scenario][0]},
                                     {"max_attempts": 2, "connect_timeout_sec": 1.0, "read_timeout_sec": 2.0,
                                      "item_deadline_sec": 20.0, **SCENARIOS[scenario][1]})
    if scenario == "key_file":
        monkeypatch.delenv("TWELVE_LABS_API_KEY", raising=False)
        key_file = tmp_path / "key"
        key_file.write_text(KEY + "\n")
        job_changes["key_file"] = str(key_file)
    else:
        monkeypatch.setenv("TWELVE_LABS_API_KEY", KEY)
    output = str(tmp_path / "out")
    config = make_config(output, [manifest], **job_changes)
    summary, error = None, None
    with Emulator(EmulatorConfig(**emulator_changes)) as emu:
        try:
            summary = run(config, emu.base_url)
        except Exception as exc:  # the 401 scenario stops the job
            error = exc
        stats = emu.stats()
    letters = read_dead_letters(output) if os.path.isdir(output) else []
    assert _proof(stats, letters, error)[scenario], (stats, letters, error)
    assert (error is not None) == (scenario == "401"), error

    captured = capfd.readouterr()
    places = {"caplog": all_logs.text, "stdout": captured.out, "stderr": captured.err,
              "summary": json.dumps(summary), "dead letters": json.dumps(letters),
              "options": repr(beam_options(config).get_all_options(retain_unknown_options=True)),
              "display data": repr(beam_options(config).display_data()), "config": repr(config)}
    for i, record in enumerate(all_logs.records):
        places[f"log record {i}"] = repr(record.__dict__) + record.getMessage()
    for path, text in _output_texts(output):
        places[path + (" (rows)" if isinstance(text, str) else "")] = text
    if error is not None:
        for i, text in enumerate(_exception_texts(error)):
            places[f"exception {i}"] = text
    assert len(all_logs.records) > 5  # the logs were captured at all
    leaked = {where: found for where, text in places.items() for found in [_leaks(text)] if found}
    assert not leaked, leaked


def test_pickled_settings_and_transforms_hold_no_key(monkeypatch, tmp_path):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", KEY)
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    for settings in (CallSettings(base_url="http://127.0.0.1:9/v1.3", model="marengo3.0"),
                     CallSettings(base_url="http://127.0.0.1:9/v1.3", model="marengo3.0", key_file=str(key_file))):
        assert not _leaks(pickle.dumps(settings)) and not _leaks(repr(settings))
        assert not _leaks(cloudpickle.dumps(CreateEmbeddings(settings)))
    # The needle check itself works on pickles: a pickled key is found.
    assert _leaks(pickle.dumps({"k": KEY}))


def _write_config(tmp_path, manifest, base_url, output, max_in_flight=4):
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({  # JSON is YAML
        "model": "marengo3.0", "manifests": [manifest], "output": {"path": output},
        "api": {"base_url": base_url, "connect_timeout_sec": 1, "read_timeout_sec": 1},
        "calls": {"max_attempts": 3, "max_in_flight": max_in_flight, "item_deadline_sec": 30},
        "beam": {"args": ["--runner=DirectRunner"]}}))
    return str(path)


def _cli(args, key=KEY, timeout=180):
    env = {k: v for k, v in os.environ.items() if k != "TWELVE_LABS_API_KEY"}
    env.update(PYTHONPATH=ROOT, TWELVE_LABS_API_KEY=key)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def test_cli_run_with_every_fault_prints_no_key(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "img.png").write_bytes(synth.png_bytes(140, 140, seed=1))
    (folder / "snd.wav").write_bytes(synth.wav_bytes(1.5, 500.0))
    manifest = folder / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"c{i}", "text": f"caption {i}", "image_file": "img.png",
                                            "audio_file": "snd.wav"}) + "\n" for i in range(20)))
    output = str(tmp_path / "out")
    faults = EmulatorConfig(api_keys={KEY}, fault_5xx_rate=0.15, fault_malformed_rate=0.1, fault_drop_rate=0.1,
                            fault_hang_rate=0.05, fault_hang_sec=2.0, fault_modality_error_rate=0.1,
                            fault_429_burst_rate=0.05, fault_429_burst_sec=0.2, seed=5)
    with Emulator(faults) as emu:
        out = _cli(["--config", _write_config(tmp_path, str(manifest), emu.base_url, output)])
        stats = emu.stats()
    assert out.returncode in (0, 3), out.stderr[-3000:]
    assert "rows read        20" in out.stdout
    assert sum(stats["faults"].values()) >= 3, stats["faults"]
    assert not _leaks(out.stdout) and not _leaks(out.stderr)
    for path, text in _output_texts(output):
        assert not _leaks(text), path


def test_cli_rejected_key_fails_with_one_clear_error_and_no_key(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"r{i}", "text": f"t{i}"}) + "\n" for i in range(10)))
    with Emulator(EmulatorConfig(api_keys={"the-right-key"})) as emu:
        out = _cli(["--config", _write_config(tmp_path, str(manifest), emu.base_url, str(tmp_path / "out"),
                                              max_in_flight=2)])
        requests = emu.stats()["requests"]
    assert out.returncode == 2
    assert "refused the key" in out.stderr and "TWELVE_LABS_API_KEY" in out.stderr
    # One error line, not a runner traceback.
    assert "Traceback" not in out.stderr
    assert [l for l in out.stderr.splitlines() if l.startswith("error:")][0].startswith("error: The API refused")
    assert requests <= 4  # the calls in flight (and one queued) when the first 401 came back
    assert not _leaks(out.stdout) and not _leaks(out.stderr)


@pytest.mark.parametrize("argv", [["--api-key", KEY], [f"--api_key={KEY}"], ["--x-api-key", KEY],
                                  [f"--API-KEY={KEY}"]])
def test_key_on_the_command_line_is_refused_and_not_echoed(argv, tmp_path):
    output = tmp_path / "out"
    out = _cli(["--config", "configs/local.yaml", "--output", str(output), *argv], key="", timeout=60)
    assert out.returncode != 0
    assert "TWELVE_LABS_API_KEY" in out.stderr and "api.key_file" in out.stderr
    assert not _leaks(out.stdout + out.stderr)
    assert not output.exists()  # refused before anything ran


@pytest.mark.parametrize("flag", ["--twelve_labs_api_key", "--x_api_key"])
def test_underscore_spellings_of_a_key_flag_are_refused_too(flag):
    from pipeline.config import parse_args

    with pytest.raises(SystemExit) as info:
        parse_args(["--config", os.path.join(ROOT, "configs", "local.yaml"), f"{flag}={KEY}"])
    assert "TWELVE_LABS_API_KEY" in str(info.value) and KEY not in str(info.value)


# --- issue 16.1: keys in any form, server echoes, credentials in URLs ---------------------------------------

def _text_manifest(tmp_path, rows=6):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"r{i}", "text": f"t{i}"}) + "\n" for i in range(rows)))
    return str(manifest)


def _cli_with_key_file(tmp_path, key_text, base_url):
    key_file = tmp_path / "key"
    key_file.write_bytes(key_text.encode("utf-8"))
    config = json.loads(open(_write_config(tmp_path, _text_manifest(tmp_path), base_url,
                                           str(tmp_path / "out"))).read())
    config["api"]["key_file"] = str(key_file)
    (tmp_path / "job.yaml").write_text(json.dumps(config))
    return _cli(["--config", str(tmp_path / "job.yaml")], key="")


@pytest.mark.parametrize("key_text, problem", [
    (KEY + "\nsecond-line-" + KEY[::-1] + "\n", "a line break"),
    (KEY[:10] + " " + KEY[10:], "a space"),
    (KEY[:10] + "\x00" + KEY[10:], "cannot be sent in an HTTP header"),
    (KEY[:10] + "é" + KEY[10:], "cannot be sent in an HTTP header"),
])
def test_a_key_file_that_cannot_be_sent_stops_before_any_call_with_one_line(tmp_path, key_text, problem):
    with Emulator(EmulatorConfig(api_keys={KEY})) as emu:
        out = _cli_with_key_file(tmp_path, key_text, emu.base_url)
        requests = emu.stats()["requests"]
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and problem in errors[0] and "api.key_file" in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    assert requests == 0
    assert not _leaks(out.stdout + out.stderr) and KEY[::-1] not in out.stderr


@pytest.mark.parametrize("key_text", [KEY + "\r\n", "\ufeff" + KEY + "\n", "  " + KEY + "  \n\n"])
def test_a_key_file_with_crlf_a_bom_or_blank_lines_around_the_key_works(tmp_path, key_text):
    with Emulator(EmulatorConfig(api_keys={KEY})) as emu:
        out = _cli_with_key_file(tmp_path, key_text, emu.base_url)
        ok = emu.stats()["by_status"].get("200", 0)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ok >= 1 and "rows read        6" in out.stdout


def test_a_key_with_a_newline_in_the_environment_is_one_line_naming_the_variable(tmp_path):
    with Emulator(EmulatorConfig(api_keys={KEY})) as emu:
        out = _cli(["--config", _write_config(tmp_path, _text_manifest(tmp_path), emu.base_url,
                                              str(tmp_path / "out"))], key=KEY + "\nX-Other: " + KEY)
        requests = emu.stats()["requests"]
    assert out.returncode == 2 and requests == 0
    assert "TWELVE_LABS_API_KEY has a line break" in out.stderr and "Traceback" not in out.stderr
    assert not _leaks(out.stdout + out.stderr)


class _EchoingServer:
    """A lying API on 127.0.0.1 that quotes the request's key (and a signed URL) in its answers."""

    def __init__(self, mode):
        import http.server
        import threading

        mode_ = mode

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                key = self.headers.get("x-api-key", "")
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if mode_ == "400":
                    status, body = 400, {"code": "parameter_invalid",
                                         "message": f"key {key} may not use https://u:{key}@h/x?X-Amz-Signature={key}"}
                else:
                    status, body = 200, {"model_name": "marengo3.0",
                                         "text_embedding": {"error_message": f"failed for key={key} ({key})"}}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/v1.3"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()


@pytest.mark.parametrize("mode", ["400", "modality_error"])
def test_a_server_that_quotes_the_key_back_gets_it_masked_in_dead_letters(tmp_path, mode, monkeypatch, capfd):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", KEY)
    server = _EchoingServer(mode)
    output = str(tmp_path / "out")
    try:
        summary = run(make_config(output, [_text_manifest(tmp_path, rows=3)], max_attempts=1), server.base_url)
    finally:
        server.close()
    letters = read_dead_letters(output)
    assert len(letters) == 3 and all("***" in l["message"] for l in letters), letters
    captured = capfd.readouterr()
    for where, text in [("letters", json.dumps(letters)), ("summary", json.dumps(summary)),
                        ("stdout", captured.out), ("stderr", captured.err)] + list(_output_texts(output)):
        assert not _leaks(text), where


def test_credentials_in_media_urls_are_redacted_everywhere(tmp_path):
    from tests.helpers import StaticFiles, read_segments

    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "img.png").write_bytes(synth.png_bytes(150, 150, seed=3))
    secret = "pa55-W0rd-9f8e7d"
    output = str(tmp_path / "out")
    with StaticFiles(str(folder)) as files, Emulator(EmulatorConfig()) as emu:
        host = files.url.split("://", 1)[1]
        rows = [{"id": "ok", "image_url": f"http://alice:{secret}@{host}/img.png"},
                {"id": "signed", "image_url": f"http://{host}/img.png?X-Amz-Signature={secret}&v=1"},
                {"id": "gone", "image_url": f"http://bob:{secret}@{host}/missing.png"},
                {"id": "newline", "image_url": f"http://{host}/img.png\nX-Injected: 1"}]
        manifest = tmp_path / "m.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = _cli(["--config", _write_config(tmp_path, str(manifest), emu.base_url, output)])
    assert out.returncode == 3, out.stderr[-2000:]  # two rows are dead letters
    urls = dict(zip(*(read_segments(output).column(c).to_pylist() for c in ("id", "input_url"))))
    assert urls == {"ok": f"http://***@{host}/img.png", "signed": f"http://{host}/img.png?X-Amz-Signature=***&v=1"}
    letters = {l["id"]: l for l in read_dead_letters(output)}
    assert letters["gone"]["code"] != "invalid_url" and letters["newline"]["code"] == "invalid_url"
    assert "line break" in letters["newline"]["message"]
    everything = [out.stdout, out.stderr] + [text for _, text in _output_texts(output)]
    assert not [t for t in everything if (secret.encode() in t if isinstance(t, bytes) else secret in t)]


def test_scrub_and_redact_url_units():
    from embed_client.secrets import redact_url, register_secret, scrub

    assert redact_url("https://u:p@h.example/a.png?sig=abc&x=1") == "https://***@h.example/a.png?sig=***&x=1"
    assert redact_url("https://h.example/a.png") == "https://h.example/a.png"
    register_secret("tlk_unit_secret_42")
    assert scrub("said tlk_unit_secret_42 and ftp://me:pw@host/x?token=t0k") == \
        "said *** and ftp://***@host/x?token=***"
