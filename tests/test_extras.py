"""The library without its optional dependencies: media decoders, the multipart parser and redis are extras
(`media`, `emulator`, `redis`); a pipeline that does not use them runs without them installed."""
import json
import os
import re
import subprocess
import sys

import pytest

from embed_emulator import Emulator, EmulatorConfig
from tests.helpers import TEST_KEY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("av", "soundfile", "PIL", "redis", "multipart", "python_multipart")

# Run in a fresh interpreter where importing any BLOCKED module fails, as if it were not installed.
_SCRIPT = r'''
import json, sys

BLOCKED = set(sys.argv[2].split(","))


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

import embed_client
import transforms
from embed_client.pacing import make_pacer
from embed_client.pacing.local import TokenBucket
from transforms import (EmbedWithTwelveLabs, TwelveLabsEmbeddingModelHandler, TwelveLabsImageEmbeddings,
                        TwelveLabsOptions, TwelveLabsTextEmbeddings)
from transforms.stages.media_probe import MissingMediaDecoder, video_duration

report = {}
options = TwelveLabsOptions(base_url=sys.argv[1])
TwelveLabsEmbeddingModelHandler(options)
TwelveLabsTextEmbeddings(columns=["text"], options=options)
TwelveLabsImageEmbeddings(columns=["image"], options=options)
with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
    result = (p | beam.Create([{"id": "a", "text": "a dog in a park"}, {"id": "b", "text": "a cat"},
                               {"id": "c", "image_url": "ftp://nowhere"}])
              | EmbedWithTwelveLabs(options))
    result["embeddings"] | "E" >> beam.Map(lambda r: print("EMBEDDED", r.id, len(r.embedding), flush=True))
    result["dead_letters"] | "D" >> beam.Map(lambda r: print("DEAD", r.id, r.code, flush=True))
report["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
try:
    video_duration(b"not a video")
except MissingMediaDecoder as exc:
    report["video"] = str(exc)
try:
    from embed_emulator import Emulator
except ImportError as exc:
    report["emulator"] = str(exc)
bucket = make_pacer(600, backend="redis", redis_url="redis://127.0.0.1:9/0")
report["redis_fallback"] = isinstance(bucket, TokenBucket)
print("REPORT", json.dumps(report), flush=True)
'''


def test_the_public_transforms_build_and_embed_without_the_optional_dependencies(tmp_path):
    script = tmp_path / "without_extras.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT, TWELVE_LABS_API_KEY=TEST_KEY)
    with Emulator(EmulatorConfig()) as emu:  # here, where the emulator's extra is installed
        out = subprocess.run([sys.executable, str(script), emu.base_url, ",".join(BLOCKED)], cwd=str(tmp_path),
                             env=env, capture_output=True, text=True, timeout=300)
        served = emu.stats()
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert sorted(l for l in lines if l.startswith("EMBEDDED")) == ["EMBEDDED a 512", "EMBEDDED b 512"]
    assert [l for l in lines if l.startswith("DEAD")] == ["DEAD c invalid_url"]
    assert served["calls_ok"] == 2
    (report,) = [json.loads(l.split(" ", 1)[1]) for l in lines if l.startswith("REPORT")]
    assert report["loaded"] == []  # nothing even tried to load them
    assert "tl-embed-pipeline[media]" in report["video"]
    assert "tl-embed-pipeline[emulator]" in report["emulator"]
    assert report["redis_fallback"] is True


@pytest.fixture(scope="module")
def requires(tmp_path_factory):
    """The package's requirements by extra ("" for install_requires), as setuptools writes them."""
    out = tmp_path_factory.mktemp("egg")
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(out)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    section, by_extra = "", {"": []}
    for line in (out / "tl_embed_pipeline.egg-info" / "requires.txt").read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
            by_extra[section] = []
        elif line.strip():
            by_extra[section].append(re.split(r"[<>=!~ ;]", line, 1)[0].lower())
    return by_extra


def test_the_metadata_lists_the_extras_and_keeps_them_out_of_the_core(requires):
    assert {"apache-beam", "pyarrow", "tenacity", "requests", "pyyaml", "numpy"} <= set(requires[""])
    assert not {"pillow", "soundfile", "av", "redis", "python-multipart"} & set(requires[""])
    assert set(requires["media"]) == {"pillow", "soundfile", "av"}
    assert set(requires["emulator"]) == {"python-multipart", "pillow", "soundfile", "av"}
    assert requires["redis"] == ["redis"]
    assert requires["index"] == ["lancedb"] and requires["rag"] == ["qdrant-client"]
    assert not {"lancedb", "qdrant-client", "pymilvus"} & set(requires[""])
    assert {"lancedb", "qdrant-client", "pymilvus", "milvus-lite"} <= set(requires["test"])
    assert {"dask", "distributed"} <= set(requires["dask"]) and "pytest" in requires["test"]


def test_run_sh_installs_every_extra_the_job_and_the_tests_use():
    text = open(os.path.join(ROOT, "run.sh")).read()
    assert re.search(r'^MAIN_EXTRAS="emulator,redis,index"$', text, re.M)
    assert re.search(r'^TEST_EXTRAS="emulator,redis,index,dask,test"$', text, re.M)
    assert 'spec="$HERE[$MAIN_EXTRAS]"' in text and 'spec="$HERE[$TEST_EXTRAS]"' in text


def test_run_sh_newest_asks_for_every_requirement_of_the_test_install():
    """`./run.sh test --newest` names each requirement of the test install to pip by its name (with its own
    extras, and the SDK's == pin). Stop 21's version reused one variable for both kinds of extras and named only
    the core, so the newest venv had no pytest."""
    text = open(os.path.join(ROOT, "run.sh")).read()
    script = text.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    extras = re.search(r'^TEST_EXTRAS="([^"]+)"$', text, re.M).group(1)
    out = subprocess.run([sys.executable, "-", extras], input=script, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    names = out.stdout.split()
    for wanted in ("apache-beam", "pytest", "pytest-xdist", "twelvelabs==1.3.6", "moto[server]", "apache-beam[aws]",
                   "dask", "redis", "av", "lancedb", "qdrant-client", "pymilvus"):
        assert wanted in names, (wanted, names)
