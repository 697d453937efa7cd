"""The Dataflow Flex Template (deploy/): every template parameter is a real flag of `python -m pipeline`, and the
image's entry point, laid out as deploy/Dockerfile lays it out, runs. Docker cannot run here: the image is
simulated by unpacking the sdist into a folder as the Dockerfile does and running its entry point with this
venv's Python (the image installs the same sdist into its own Python 3.11). `python -m build --sdist` names the sdist
tl_embed_pipeline-VERSION.tar.gz, `setup.py sdist` tl-embed-pipeline-VERSION.tar.gz: the Dockerfile takes either."""
import fnmatch
import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from pipeline.config import build_arg_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
LAUNCHER_BASE = "gcr.io/dataflow-templates-base/python311-template-launcher-base"


def _metadata():
    with open(os.path.join(DEPLOY, "metadata.json")) as f:
        return json.load(f)


def _entry_point(path=os.path.join(DEPLOY, "main.py")):
    spec = importlib.util.spec_from_file_location("flex_template_main", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _actions():
    return {option: action for action in build_arg_parser()._actions for option in action.option_strings}


# A value each kind of parameter takes (choices are tried one by one).
SAMPLES = {"config": "/template/configs/dataflow.yaml", "manifest": "gs://bucket/manifests/*.jsonl",
           "output": "gs://bucket/embeddings/run1", "base_url": "https://api.twelvelabs.io/v1.3",
           "requests_per_minute": "600", "max_in_flight": "8", "max_calls": "1000"}


def test_every_template_parameter_maps_onto_a_flag_of_the_job():
    metadata = _metadata()
    params = metadata["parameters"]
    names = [p["name"] for p in params]
    assert len(names) == len(set(names)), names
    assert {"config", "manifest", "output", "model", "api_version", "requests_per_minute", "max_in_flight"} <= set(names)
    assert {p["name"] for p in params if not p.get("isOptional")} == {"manifest", "output"}
    entry, actions = _entry_point(), _actions()
    parser = build_arg_parser()
    for param in params:
        name = param["name"]
        assert param["label"] and param["helpText"], name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), f"{name}: template parameter names are plain identifiers"
        flag = "--" + name.replace("_", "-")
        assert flag in actions, f"template parameter {name} has no flag {flag} in python -m pipeline"
        action = actions[flag]
        regexes = [re.compile(r) for r in param.get("regexes", [])]
        assert regexes, f"{name}: give the launcher a regex to check values against"
        if action.nargs == 0:
            values = {"true": True, "false": False}
        elif action.choices:
            values = {str(c): c for c in action.choices}
            assert not any(r.fullmatch("nonsense") for r in regexes), name
        else:
            values = {SAMPLES[name]: action.type(SAMPLES[name]) if action.type else SAMPLES[name]}
        for value, parsed in values.items():
            assert all(r.fullmatch(value) for r in regexes), (name, value)
            # as the launcher passes it: --NAME=VALUE, through the image's entry point, into the job's parser
            argv = entry.translate([f"--{name}={value}"], default_config="/template/configs/dataflow.yaml")
            args, left = parser.parse_known_args(argv)
            assert left == [], f"--{name}={value} reached Beam instead of the job: {left}"
            got = getattr(args, action.dest)
            assert (got == [parsed] if type(action).__name__ == "_AppendAction" else got == parsed), (name, argv)


def test_the_launchers_pipeline_options_go_to_beam_untouched():
    entry = _entry_point()
    beam = ["--project=p", "--region=europe-west1", "--temp_location=gs://b/tmp", "--staging_location=gs://b/stage",
            "--setup_file=/template/setup.py", "--job_name=tl-embed-1", "--sdk_container_image=img:1",
            "--max_num_workers=4"]
    argv = entry.translate(beam + ["--output=gs://b/out", "--no_pack=false", "--retry_dead_letters=true"],
                           default_config="/template/configs/dataflow.yaml")
    assert argv == ["--config", "/template/configs/dataflow.yaml"] + beam + ["--output=gs://b/out",
                                                                              "--retry-dead-letters"]
    args, left = build_arg_parser().parse_known_args(argv)
    assert left == beam and args.output == "gs://b/out" and args.retry_dead_letters and not args.no_pack
    assert entry.translate(["--config=/x.yaml", "--help"])[:2] == ["--config=/x.yaml", "--help"]
    with pytest.raises(SystemExit, match="true or false"):
        entry.translate(["--no_pack=maybe"])
    # a key flag is not a parameter: it reaches the job's refusal as given
    assert "--api_key=abc" in entry.translate(["--api_key=abc"])


def _dockerfile():
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        text = "\n".join(line for line in f.read().splitlines() if not line.lstrip().startswith("#"))
    lines = [" ".join(line.split()) for line in text.replace("\\\n", " ").splitlines() if line.strip()]
    args = {m.group(1): m.group(2) for m in (re.match(r"ARG (\w+)=(\S+)", l) for l in lines) if m}
    env = {m.group(1): m.group(2).strip('"') for m in (re.match(r"ENV (\w+)=(\S+)", l) for l in lines) if m}
    expand = lambda s: re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], s)  # noqa: E731
    return lines, args, {k: expand(v) for k, v in env.items()}, expand


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(out), "sdist", "--dist-dir",
                    str(out)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    (path,) = glob.glob(str(out / "*.tar.gz"))
    return path


def test_the_images_entry_point_runs(sdist, tmp_path):
    lines, args, env, expand = _dockerfile()
    assert lines[0] == f"FROM {LAUNCHER_BASE}"
    workdir = args["WORKDIR"]
    assert env["FLEX_TEMPLATE_PYTHON_PY_FILE"] == f"{workdir}/main.py"
    assert env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"] == f"{workdir}/setup.py"
    copies = [l.split()[1:] for l in lines if l.startswith("COPY ")]
    (sdist_glob, _), = [c for c in copies if c[0].endswith(".tar.gz")]
    assert fnmatch.fnmatch(os.path.basename(sdist), sdist_glob), (sdist, sdist_glob)
    assert ["main.py", f"{workdir}/main.py"] in [[c[0], expand(c[1])] for c in copies]
    run = next(l for l in lines if l.startswith("RUN pip install"))
    assert "--strip-components=1" in run and "${WORKDIR}" in run

    # The image's /template: the sdist unpacked (as the RUN line does) and deploy/main.py beside it.
    template = tmp_path / "template"
    template.mkdir()
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            member.name = member.name.split("/", 1)[1] if "/" in member.name else ""
            if member.name:
                tar.extract(member, template, filter="data")
    (template / "main.py").write_bytes(open(os.path.join(DEPLOY, "main.py"), "rb").read())
    assert (template / "setup.py").is_file() and (template / "configs" / "dataflow.yaml").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    # What the launcher runs: python $FLEX_TEMPLATE_PYTHON_PY_FILE --NAME=VALUE ...
    shown = subprocess.run([sys.executable, str(template / "main.py"), "--help"], cwd=str(template), env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "usage: python -m pipeline" in shown.stdout and "--requests-per-minute" in shown.stdout
    # ... and it runs the job: a dry run of the sample config from the unpacked sdist, with a parameter.
    planned = subprocess.run([sys.executable, str(template / "main.py"), f"--config={template}/configs/local.yaml",
                              "--dry-run", "--max_in_flight=2", f"--output={tmp_path}/out"], cwd=str(tmp_path),
                             env=env, capture_output=True, text=True, timeout=300)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "dry run (marengo3.0): nothing was called" in planned.stdout, planned.stdout
    # ... and a launch exits once the job is submitted (--no-wait added by main.py): the next run finalizes it
    launched = subprocess.run([sys.executable, str(template / "main.py"), f"--config={template}/configs/local.yaml",
                               f"--output={tmp_path}/launched"], cwd=str(tmp_path), env=env, capture_output=True,
                              text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "submitted" in launched.stdout and "finalized by the job's last step (--no-wait)" in launched.stdout
    print(f"\n{os.path.basename(sdist)} unpacked as the image's {workdir}; main.py --help and a dry run: ok")
