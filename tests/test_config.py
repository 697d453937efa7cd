"""Configs and command-line parsing: every shipped config loads, overrides apply, secrets are refused."""
import os

import pytest
from apache_beam.options.pipeline_options import SetupOptions, StandardOptions

from pipeline.config import EMBEDDED, load_config, parse_args
from pipeline.run import beam_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


@pytest.mark.parametrize("name,runner", [("local.yaml", "FnApiRunner"), ("twelvelabs.yaml", "FnApiRunner"),
                                         ("dataflow.yaml", "DataflowRunner"), ("flink.yaml", "FlinkRunner")])
def test_shipped_configs_load_and_give_beam_options(name, runner):
    config = load_config(os.path.join(CONFIGS, name))
    options = beam_options(config)
    assert options.view_as(StandardOptions).runner == runner
    if name in ("dataflow.yaml", "flink.yaml"):
        assert options.view_as(SetupOptions).setup_file == os.path.join(ROOT, "setup.py")
        assert config.max_workers == 4 and config.key_file != ""
    assert config.model == "marengo3.0"
    assert "api_key" not in str(options.get_all_options())


def test_local_config_is_the_embedded_default():
    config = load_config(os.path.join(CONFIGS, "local.yaml"))
    assert config.base_url == EMBEDDED
    assert config.output == os.path.join(ROOT, "output", "local")
    assert all(m.startswith(os.path.join(ROOT, "samples")) for m in config.manifests)


def test_overrides_and_unknown_flags_go_to_beam():
    config, beam_args = parse_args(["--config", os.path.join(CONFIGS, "local.yaml"), "--manifest", "a.jsonl",
                                    "--manifest", "b/*.csv", "--output", "/tmp/x", "--model", "marengo2.7",
                                    "--base-url", "http://127.0.0.1:9/v1.3", "--requests-per-minute", "120",
                                    "--max-in-flight", "3", "--no-pack", "--direct_num_workers=2"])
    assert config.manifests == [os.path.abspath("a.jsonl"), os.path.abspath("b/*.csv")]
    assert config.output == "/tmp/x"
    assert (config.model, config.base_url, config.requests_per_minute, config.max_in_flight, config.pack) == (
        "marengo2.7", "http://127.0.0.1:9/v1.3", 120.0, 3, False)
    assert beam_args == ["--direct_num_workers=2"]
    assert "--direct_num_workers=2" in config.beam_args


def test_runner_given_as_two_words_is_honoured(tmp_path):
    config, _ = parse_args(["--config", os.path.join(CONFIGS, "local.yaml"), "--runner", "PortableRunner"])
    assert beam_options(config).view_as(StandardOptions).runner == "PortableRunner"


@pytest.mark.parametrize("flag", ["--api-key=abc", "--api_key", "--key=zzz", "--x-api-key=1"])
def test_key_on_the_command_line_is_refused(flag):
    with pytest.raises(SystemExit) as info:
        parse_args(["--config", os.path.join(CONFIGS, "local.yaml"), flag, "value"])
    message = str(info.value)
    assert "TWELVE_LABS_API_KEY" in message and "api.key_file" in message
    assert "abc" not in message and "zzz" not in message


def test_bad_configs_fail_with_the_reason(tmp_path):
    bad = tmp_path / "configs" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text("manifests: [a]\nmodle: marengo3.0\n")
    with pytest.raises(ValueError, match="unknown setting `modle` \\(did you mean model\\?\\)"):
        load_config(str(bad))
    bad.write_text("manifests: [a]\ncalls:\n  request_per_minute: 60\n")
    with pytest.raises(ValueError, match="unknown setting `calls.request_per_minute` "
                                         "\\(did you mean calls.requests_per_minute\\?\\)"):
        load_config(str(bad))
    bad.write_text("manifests: [a]\nembedding:\n  dimensions: 256\n")
    with pytest.raises(ValueError, match="did you mean embedding.dimension"):
        load_config(str(bad))
    bad.write_text("api:\n  api_key: secret\n")
    with pytest.raises(ValueError, match="do not put the API key in a config"):
        load_config(str(bad))


def test_paths_in_a_config_are_relative_to_its_folder_and_on_the_command_line_to_the_caller(tmp_path):
    data = tmp_path / "data"
    (data / "cfg").mkdir(parents=True)
    (data / "cfg" / "job.yaml").write_text("manifests: [../m/*.jsonl]\noutput: {path: out}\n"
                                           "api: {key_file: secrets/key}\n")
    config = load_config(str(data / "cfg" / "job.yaml"))
    assert config.manifests == [str(data / "m" / "*.jsonl")]
    assert config.output == str(data / "cfg" / "out") and config.key_file == str(data / "cfg" / "secrets" / "key")
    here = os.getcwd()
    try:
        os.chdir(data)
        config, _ = parse_args(["--config", "cfg/job.yaml", "--manifest", "mine.csv", "--output", "o"])
    finally:
        os.chdir(here)
    assert config.manifests == [str(data / "mine.csv")] and config.output == str(data / "o")


def test_run_sh_keeps_the_callers_folder(tmp_path):
    import json
    import subprocess

    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "text": "hello"}) + "\n")
    (tmp_path / "my.yaml").write_text("manifests: [m.jsonl]\noutput: {path: out}\napi: {base_url: embedded}\n"
                                      "beam: {args: [--runner=DirectRunner]}\n")
    out = subprocess.run([os.path.join(ROOT, "run.sh"), "--config", "my.yaml", "--output", "elsewhere"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "elsewhere" / "summary.json").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, expected", [
    ("manifests: [a\n", "is not valid YAML"),
    ("manifests: [nothing-here-*.jsonl]\napi: {base_url: embedded}\n", "matched no files"),
    ("model: marengo9\nmanifests: [x]\n", "`model` must be one of marengo3.0, marengo3.5"),
    ("manifests: [x]\ncalls: {pack: 'false'}\n", "`calls.pack` must be true or false (unquoted), got 'false'"),
    ("manifests: [x]\ncalls: {max_in_flight: many}\n", "`calls.max_in_flight` must be an integer, got 'many'"),
    ("manifests: [x]\noutput: {pth: o}\n", "unknown setting `output.pth` (did you mean output.path?)"),
    ("manifests: [x]\ncalls: {max_in_flight: 0}\n", "`calls.max_in_flight` must be >= 1, got 0"),
    ("manifests: [x]\nemulator: {latency: 3}\n", "unknown setting `emulator.latency` (did you mean"),
])
def test_ordinary_mistakes_are_one_line_and_exit_2(tmp_path, text, expected):
    import subprocess
    import sys

    (tmp_path / "x").write_text('{"id": "a", "text": "t"}\n')
    (tmp_path / "c.yaml").write_text(text)
    out = subprocess.run([sys.executable, "-m", "pipeline", "--config", "c.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], out.stderr
    assert "Traceback" not in out.stderr


def test_the_settings_reference_lists_every_key_and_fills_every_config_field():
    import dataclasses
    import subprocess
    import sys

    from pipeline.config import JobConfig
    from pipeline.settings import SETTINGS

    fields = {f.name for f in dataclasses.fields(JobConfig)}
    assert {s.field for s in SETTINGS} == fields - {"dry_run", "retry_dead_letters", "config_path", "json_output",
                                                    "no_wait"}
    out = subprocess.run([sys.executable, "-m", "pipeline", "config"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0
    for setting in SETTINGS:
        assert f"\n{setting.key} " in out.stdout, setting.key


def test_the_calling_settings_and_public_options_take_every_default_from_the_table():
    """CallSettings and TwelveLabsOptions list their fields for readers and IDEs; the table stays the one place
    a default is written, and every calling setting a job can set, a pipeline author can set too."""
    import dataclasses

    from transforms import TwelveLabsOptions
    from transforms.settings import DEFAULTS, SETTINGS, CallSettings

    call_fields = {f.name: f for f in dataclasses.fields(CallSettings)}
    option_fields = {f.name: f for f in dataclasses.fields(TwelveLabsOptions)}
    for fields in (call_fields, option_fields):
        for name, field in fields.items():
            # (base_url: `embedded` is the job's word for the emulator; required fields have no default)
            if name in DEFAULTS and name != "base_url" and field.default is not dataclasses.MISSING:
                assert field.default == DEFAULTS[name], name
    table_fields = {s.field for s in SETTINGS}
    # CallSettings carries each calling setting of the table, and the public options offer it, except what a
    # plain pipeline has no place for (an output folder to clean up assets after).
    job_only = {"delete_assets_after_run"}
    assert (table_fields & set(call_fields)) - set(option_fields) == job_only
    assert len(table_fields & set(call_fields)) >= 25


def test_worker_processes_is_the_new_name_of_max_workers(tmp_path):
    from transforms.settings import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("manifests: [x]\ncalls: {worker_processes: 3}\n")
    assert load_config(str(path)).max_workers == 3
    path.write_text("manifests: [x]\ncalls: {max_workers: 4}\n")  # the old name is still read
    assert load_config(str(path)).max_workers == 4
    path.write_text("manifests: [x]\ncalls: {max_workers: 4, worker_processes: 2}\n")
    with pytest.raises(ConfigError, match="old name of `calls.worker_processes`; give only one"):
        load_config(str(path))


def test_wall_time_waiting_counts_overlapping_waits_once():
    import threading
    import time

    from transforms.calling.engine import WaitMeter

    meter = WaitMeter()
    first = threading.Thread(target=meter.wait, args=(lambda: time.sleep(0.4),))
    first.start()
    time.sleep(0.2)
    meter.wait(lambda: time.sleep(0.4))  # overlaps the first wait by 0.2 s
    first.join()
    assert meter.take() == pytest.approx(0.6, abs=0.1)  # 0.6 s of wall time, 0.8 thread-s
    assert meter.take() == 0.0
