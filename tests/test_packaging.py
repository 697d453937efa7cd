"""The sdist is what a worker installs: it holds the job's code and default configs, nothing else, and
SDK workers running from a fresh venv with only that sdist installed produce the DirectRunner's output."""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest

from embed_emulator import Emulator, EmulatorConfig
from pipeline.samples import EXPECTED, ensure_samples
from tests.helpers import TEST_KEY, make_config, read_dead_letters, read_segments, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("embed_client", "embed_emulator", "pipeline", "transforms")
# What may sit at the top of the sdist besides the packages.
ALLOWED_TOP = {"configs", "setup.py", "setup.cfg", "README.md", "MANIFEST.in", "PKG-INFO",
               "tl_embed_pipeline.egg-info"}
WORKERS = 2


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """`python setup.py sdist` of the checkout, built into a temporary folder (egg-info too, so the
    checkout is left as it was)."""
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(out),
                    "sdist", "--dist-dir", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    (path,) = glob.glob(str(out / "*.tar.gz"))
    return path


def _sdist_names(path):
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    top = {n.split("/", 1)[0] for n in names}
    assert len(top) == 1, top  # one folder: NAME-VERSION/
    return sorted(n.split("/", 1)[1] for n in names)


def test_sdist_holds_the_worker_code_and_configs_and_nothing_else(sdist):
    names = set(_sdist_names(sdist))
    for package in PACKAGES:
        on_disk = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, package, "**", "*.py"),
                                                                 recursive=True)}
        assert on_disk and on_disk <= names, sorted(on_disk - names)
    configs = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))}
    assert {"configs/local.yaml", "configs/dataflow.yaml", "configs/flink.yaml"} <= configs <= names
    assert "setup.py" in names and "PKG-INFO" in names
    stray = sorted(n for n in names if n.split("/", 1)[0] not in set(PACKAGES) | ALLOWED_TOP)
    assert not stray, f"the sdist holds files a worker must not get: {stray}"
    junk = sorted(n for n in names if n.endswith((".pyc", ".parquet")) or "__pycache__" in n)
    assert not junk, junk


# ---- SDK workers from a fresh venv, on Beam's portable runner -----------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fresh_venv(folder, sdist):
    """A new venv (no system site-packages) with the sdist installed the way a worker image would:
    `pip install 'SDIST[media]'`, resolving install_requires and the media decoders.

    Measured here: venv ~3 s, install ~20 s, as every dependency is a wheel already on this machine
    (pip's find-links and local index); nothing is built. That is cheap enough to install for real
    rather than borrow the project venv's site-packages through a .pth file, and it proves that
    install_requires is complete. The versions are pinned to the project venv's (pip freeze as
    constraints): the driver (this process) and the workers must run the same Beam, and no newer
    release may sneak in between them.
    """
    venv = os.path.join(folder, "venv")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                            capture_output=True, text=True, timeout=120).stdout
    constraints = os.path.join(folder, "constraints.txt")
    with open(constraints, "w") as f:
        f.writelines(line + "\n" for line in frozen.splitlines()
                     if "==" in line and " @ " not in line and not line.startswith("tl-embed-pipeline"))
    python = os.path.join(venv, "bin", "python")
    # The job's workers check the samples' local images, audio and video before calling: the `media` extra.
    installed = subprocess.run([python, "-m", "pip", "install", "-q", "-c", constraints, f"{sdist}[media]"],
                               capture_output=True, text=True, timeout=900, env=_clean_env(venv))
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return venv


def _clean_env(venv):
    """The environment of anything run from the fresh venv: its bin first on PATH, and nothing that
    could lead Python back to the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")}
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = venv
    env["PYTHONNOUSERSITE"] = "1"
    return env


class _WorkerWatch:
    """Notes every SDK worker process the pool starts (children of the pool running SdkHarness):
    its worker id, working folder and environment, read from /proc while it lives."""

    def __init__(self, pool_pid):
        self.pool_pid = pool_pid
        self.workers = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def _poll(self):
        while not self._stop.wait(0.05):
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) in self.workers:
                    continue
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    if ppid != self.pool_pid:
                        continue
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read().decode(errors="replace").split("\0")
                    if not any("SdkHarness" in part for part in cmdline):
                        continue
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        environ = dict(kv.split("=", 1) for kv in f.read().decode(errors="replace").split("\0")
                                       if "=" in kv)
                    self.workers[int(pid)] = {"cmdline": cmdline, "cwd": os.readlink(f"/proc/{pid}/cwd"),
                                              "environ": environ}
                except (OSError, ValueError, IndexError):
                    continue  # gone, or not ours


@pytest.fixture
def worker_pool(sdist, tmp_path):
    """A Beam worker pool run from the fresh venv, in an empty folder, without PYTHONPATH."""
    venv = _fresh_venv(str(tmp_path), sdist)
    workdir = tmp_path / "worker-cwd"
    workdir.mkdir()
    env = _clean_env(venv)
    env["TWELVE_LABS_API_KEY"] = TEST_KEY  # as on real workers: from their environment, not the options
    port = _free_port()
    log = open(tmp_path / "worker_pool.log", "wb")
    pool = subprocess.Popen([os.path.join(venv, "bin", "python"), "-m",
                             "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
                            cwd=str(workdir), env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert pool.poll() is None, (tmp_path / "worker_pool.log").read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the worker pool did not start listening"
                time.sleep(0.2)
        yield {"venv": venv, "port": port, "pid": pool.pid, "cwd": str(workdir),
               "log": str(tmp_path / "worker_pool.log")}
    finally:
        # The pool and the SDK workers it started are in the session started above: stop them all.
        try:
            os.killpg(pool.pid, signal.SIGTERM)
            pool.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(pool.pid, signal.SIGKILL)
            pool.wait()
        log.close()


@pytest.fixture
def workers_per_job(monkeypatch):
    """Makes Beam's embedded job service start --sdk_worker_parallelism SDK workers per environment.

    Beam 2.77 defines --sdk_worker_parallelism (PortableOptions) but only the Flink and Spark job
    servers read it; the embedded Python job service (--job_endpoint=embed) runs FnApiRunner with one
    worker, and FnApiRunner reads its own --direct_num_workers only on its non-portable path
    (run_pipeline, which ignores --environment_type). This runner, swapped in for the job service's
    FnApiRunner for the duration of the test, takes its worker count from --sdk_worker_parallelism,
    so the portable path asks the worker pool for that many workers, as a Flink task manager would.
    """
    from apache_beam.options.pipeline_options import PortableOptions
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    class ParallelFnApiRunner(fn_runner.FnApiRunner):
        def run_via_runner_api(self, pipeline_proto, options):
            self._num_workers = max(1, int(options.view_as(PortableOptions).sdk_worker_parallelism or 1))
            return super().run_via_runner_api(pipeline_proto, options)

    assert local_job_service.fn_runner is fn_runner  # where BeamJob._invoke_runner finds FnApiRunner
    monkeypatch.setattr(local_job_service.fn_runner, "FnApiRunner", ParallelFnApiRunner)


def _portable_args(port):
    return ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{port}", f"--sdk_worker_parallelism={WORKERS}"]


def _where_workers_import_from(port, output):
    """A small job on the same pool: each element reports the worker process that handled it and
    where that process imported the project from."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    def where(_):
        import os
        import sys

        import apache_beam
        import embed_client
        import embed_emulator
        import pipeline
        import transforms

        return json.dumps({"pid": os.getpid(), "executable": sys.executable, "prefix": sys.prefix,
                           "cwd": os.getcwd(), "pythonpath": os.environ.get("PYTHONPATH"),
                           "sys_path_has_checkout": any(p.startswith(ROOT) for p in sys.path if p),
                           "files": {m.__name__: m.__file__ for m in
                                     (transforms, pipeline, embed_client, embed_emulator, apache_beam)}})

    with beam.Pipeline(options=PipelineOptions(_portable_args(port))) as p:
        (p | beam.Create(range(64)) | beam.Reshuffle() | beam.Map(where)
         | beam.io.WriteToText(os.path.join(output, "where"), shard_name_template="-SS"))
    reports = []
    for path in glob.glob(os.path.join(output, "where*")):
        with open(path) as f:
            reports += [json.loads(line) for line in f if line.strip()]
    return reports


def _segments_by_key(output):
    table = read_segments(output)
    rows = {}
    for row in table.to_pylist():
        key = (row["id"], row["modality"], row["segment_index"])
        assert key not in rows, f"segment written twice: {key}"
        row.pop("run_id")
        row.pop("run_time")
        row["embedding"] = np.asarray(row["embedding"], dtype=np.float32)
        rows[key] = row
    return rows


def _letters(output):
    return sorted((l["id"] or "", l["source"], l["row_number"], l["modality"] or "", l["stage"], l["code"])
                  for l in read_dead_letters(output))


@pytest.mark.slow
def test_sdk_workers_from_the_installed_sdist_match_the_direct_runner(tmp_path, monkeypatch, worker_pool,
                                                                      request):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
    manifests_dir = ensure_samples(str(tmp_path / "samples"))
    manifests = [os.path.join(manifests_dir, n) for n in ("catalog.jsonl", "extra.csv", "more.parquet")]
    direct_out, portable_out = str(tmp_path / "direct"), str(tmp_path / "portable")

    with Emulator(EmulatorConfig()) as emulator:
        direct = run(make_config(direct_out, manifests), emulator.base_url)
        request.getfixturevalue("workers_per_job")  # only now: the DirectRunner run keeps its own runner
        with _WorkerWatch(worker_pool["pid"]) as watch:
            portable = run(make_config(portable_out, manifests, beam_args=_portable_args(worker_pool["port"])),
                           emulator.base_url)
        job_workers = dict(watch.workers)
        with _WorkerWatch(worker_pool["pid"]) as watch:
            reports = _where_workers_import_from(worker_pool["port"], str(tmp_path / "probe"))
        probe_workers = dict(watch.workers)

    # The job ran on WORKERS SDK worker processes of the pool, from the fresh venv, outside the checkout.
    log = open(worker_pool["log"]).read()[-3000:]
    assert len(job_workers) >= WORKERS, (job_workers, log)
    for info in list(job_workers.values()) + list(probe_workers.values()):
        assert info["cwd"] == worker_pool["cwd"]
        assert "PYTHONPATH" not in info["environ"]
        assert info["environ"]["PATH"].split(os.pathsep)[0] == os.path.join(worker_pool["venv"], "bin")
    # ... and imported the project from the installed sdist: ask the workers themselves.
    assert len(reports) == 64
    assert len({r["pid"] for r in reports}) >= WORKERS, "the probe job ran on one worker only"
    assert {r["pid"] for r in reports} <= set(probe_workers)
    site = os.path.join(worker_pool["venv"], "lib")
    for r in reports:
        assert r["prefix"] == worker_pool["venv"], r
        assert r["pythonpath"] is None and not r["sys_path_has_checkout"], r
        for module, path in r["files"].items():
            assert path.startswith(site + os.sep) and "site-packages" in path, (module, path)
            assert not path.startswith(ROOT + os.sep), (module, path)

    print(f"\njob: {len(job_workers)} SDK worker processes {sorted(job_workers)}; probe: {len(reports)} elements on "
          f"pids {sorted({r['pid'] for r in reports})}; transforms from {reports[0]['files']['transforms']}")

    # Same output as the DirectRunner: ids, modalities, segment indexes, vectors, everything but the run's id.
    assert direct["items_embedded"] == portable["items_embedded"] == EXPECTED["items_embedded"]
    expected, got = _segments_by_key(direct_out), _segments_by_key(portable_out)
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        have = got[key]
        np.testing.assert_array_equal(have.pop("embedding"), want.pop("embedding"), err_msg=str(key))
        assert have == want, key
    assert _letters(portable_out) == _letters(direct_out)
    assert direct["dead_letters_by_reason"] == portable["dead_letters_by_reason"] == EXPECTED["dead_letters_by_reason"]
