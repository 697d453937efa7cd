"""The whole job on a real S3 API (moto's server on loopback), through the command line as a user runs it
(issue 25): options applied before the first path, an output protocol that holds on an object store, the lock
under a slow claim write, a key file in the bucket, search, a killed run and its rerun."""
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

from embed_emulator import Emulator, EmulatorConfig
from tests.helpers import TEST_KEY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(start, stop):
    return "".join(json.dumps({"id": f"r{i}", "text": f"caption number {i}"}) + "\n" for i in range(start, stop))


_BAD = '{"id": "bad-no-input"}\n{"id": "bad-url", "image_url": "ftp://nope"}\n'


def _config(tmp_path, moto, bucket, base_url, manifests=None, key_file=None, name="job.yaml", **calls):
    raw = {"model": "marengo3.0", "manifests": manifests or [f"s3://{bucket}/manifests/*.jsonl"],
           "output": {"path": f"s3://{bucket}/out"},
           "api": {"base_url": base_url, "connect_timeout_sec": 2, "read_timeout_sec": 10},
           "calls": {"pack": False, "max_in_flight": 4, **calls},
           # The endpoint and region as Beam flags (what a user of an S3-compatible store writes); the keys
           # from the environment, boto3's default chain.
           "beam": {"args": ["--runner=DirectRunner", f"--s3_endpoint_url={moto.endpoint}",
                             "--s3_region_name=us-east-1"]}}
    if key_file:
        raw["api"]["key_file"] = key_file
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return str(path)


def _env(moto, key=True, tmp=None):
    env = dict(os.environ, PYTHONPATH=ROOT, **moto.env)
    if tmp is not None:
        env["TMPDIR"] = str(tmp)  # the journals of an output in a bucket live under it (transforms.stages.write)
    env.pop("TWELVE_LABS_API_KEY", None)
    if key:
        env["TWELVE_LABS_API_KEY"] = TEST_KEY
    return env


def _cli(args, env, script=("-m", "pipeline")):
    return subprocess.run([sys.executable, *script, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def _segment_ids(moto, bucket):
    ids = []
    for key in moto.keys(bucket, "out/segments/"):
        if key.endswith(".parquet"):
            ids += pq.read_table(io.BytesIO(moto.read(bucket, key)), columns=["id"]).column("id").to_pylist()
    return ids


def _summary(moto, bucket):
    return json.loads(moto.read(bucket, "out/summary.json"))


def test_a_job_on_s3_runs_reruns_adds_and_searches_through_the_cli(tmp_path, moto_s3):
    """Fresh run (exit 3: bad rows), rerun (no call), +20 rows (20 calls), search; the key from a file in the
    bucket, the manifest a glob in the bucket, no empty object anywhere."""
    bucket = moto_s3.new_bucket()
    moto_s3.write(bucket, "manifests/a.jsonl", (_rows(0, 40) + _BAD).encode())
    moto_s3.write(bucket, "secrets/tl.key", TEST_KEY.encode())
    env = _env(moto_s3, key=False, tmp=tmp_path)
    with Emulator(EmulatorConfig()) as emu:
        config = _config(tmp_path, moto_s3, bucket, emu.base_url, key_file=f"s3://{bucket}/secrets/tl.key")
        first = _cli(["--config", config], env)
        assert first.returncode == 3, first.stderr[-3000:]
        assert emu.stats()["requests"] == 40
        assert "Finished listing" not in first.stderr and "Traceback" not in first.stderr
        summary = _summary(moto_s3, bucket)
        assert summary["exit_code"] == 3 and summary["status"] == "finished_with_dead_letters"
        keys = moto_s3.keys(bucket, "out/")
        run_id = summary["run_id"]
        for needed in ("out/summary.json", "out/report.html", "out/runs/index.html",
                       f"out/runs/{run_id}/summary.json", f"out/runs/{run_id}/finalized"):
            assert keys.get(needed, 0) > 0, (needed, sorted(keys))
        assert not [k for k, size in keys.items() if size == 0], "empty objects"
        assert not [k for k in keys if k.startswith("out/locks/")], "the claim was not withdrawn"
        assert sorted(_segment_ids(moto_s3, bucket)) == sorted(f"r{i}" for i in range(40))

        emu.reset_stats()
        rerun = _cli(["--config", config], env)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert emu.stats()["requests"] == 0
        again = _summary(moto_s3, bucket)
        assert again["calls"] == 0 and again["items_already_done"] == 40 and again["run_id"] != run_id

        moto_s3.write(bucket, "manifests/b.jsonl", _rows(40, 60).encode())
        emu.reset_stats()
        more = _cli(["--config", config], env)
        assert more.returncode == 0, more.stderr[-3000:]
        assert emu.stats()["requests"] == 20
        assert sorted(_segment_ids(moto_s3, bucket)) == sorted(f"r{i}" for i in range(60))

        found = _cli(["search", "--config", config, "--text", "caption number 47", "-k", "3"], env)
    assert found.returncode == 0, found.stderr[-3000:]
    best = found.stdout.splitlines()[0].split()
    assert best[0] == "1" and best[2] == "r47" and float(best[1]) > 0.999, found.stdout


def test_a_key_file_missing_from_the_bucket_is_exit_2_before_any_call(tmp_path, moto_s3):
    bucket = moto_s3.new_bucket()
    moto_s3.write(bucket, "manifests/a.jsonl", _rows(0, 5).encode())
    with Emulator(EmulatorConfig()) as emu:
        config = _config(tmp_path, moto_s3, bucket, emu.base_url, key_file=f"s3://{bucket}/secrets/missing.key")
        out = _cli(["--config", config], _env(moto_s3, key=False, tmp=tmp_path))
        requests = emu.stats()["requests"]
    assert out.returncode == 2 and requests == 0, out.stderr[-3000:]
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert f"api.key_file s3://{bucket}/secrets/missing.key cannot be read" in error, error
    assert "Traceback" not in out.stderr
    assert not moto_s3.keys(bucket, "out/segments/")


def test_search_takes_the_store_s_flags_from_its_command_line(tmp_path, moto_s3):
    """A config without the endpoint: the flag on search's command line reaches Beam's S3 filesystem (without
    it, listing fails with "Must provide one of client or options" and search said "run the job first")."""
    bucket = moto_s3.new_bucket()
    config = tmp_path / "bare.yaml"
    config.write_text(json.dumps({"model": "marengo3.0", "manifests": ["unused.jsonl"],
                                  "output": {"path": f"s3://{bucket}/out"}, "api": {"base_url": "embedded"}}))
    empty = _cli(["search", "--config", str(config), "--text", "x", f"--s3_endpoint_url={moto_s3.endpoint}"],
                 _env(moto_s3))
    assert empty.returncode == 2, empty.stderr[-3000:]
    (error,) = [line for line in empty.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: no segment files under s3://{bucket}/out/segments"), error


def test_search_names_the_store_s_error_instead_of_no_segments(monkeypatch):
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.filesystems import FileSystems

    from pipeline import search

    def refuse(patterns):
        inner = BeamIOError("List operation failed", {"s3://b/out/segments/": PermissionError("AccessDenied")})
        raise BeamIOError("Match operation failed", {patterns[0]: inner})

    monkeypatch.setattr(FileSystems, "match", refuse)
    with pytest.raises(search.NoSegments) as caught:
        search._segment_files("s3://b/out")
    assert str(caught.value) == "cannot list s3://b/out/segments: PermissionError: AccessDenied"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_slow_claim_write_never_lets_two_runs_hold_the_output(where, tmp_path, request):
    """The first claimant's write is held back 1.5 s; a second run claims 0.3 s later, while the first claim is
    not yet visible. Exactly one of them may hold the output (the old lock let both: 2 of 2 tries)."""
    from transforms.store import lock as lock_mod
    from transforms.store.lock import OutputLock, OutputLocked

    if where == "s3":
        output = f"s3://{request.getfixturevalue('s3_bucket')}/out"
    else:
        output = str(tmp_path / "out")
    original = lock_mod.OutputLock._write
    for attempt in range(2):
        # The first claimant waits settle_sec for a later one to withdraw before it gives up (5 s by default).
        slow = OutputLock(output, f"run-slow-{attempt}", settle_sec=1.0)
        fast = OutputLock(output, f"run-fast-{attempt}", settle_sec=1.0)
        held = []

        def write(self, original=original, slow=slow, held=held):
            if self is slow and not held:
                held.append(True)
                time.sleep(1.5)
            original(self)

        outcomes = {}

        def take(claim, name):
            try:
                claim.acquire()
                outcomes[name] = "held"
            except OutputLocked as exc:
                outcomes[name] = str(exc)

        lock_mod.OutputLock._write = write
        try:
            first = threading.Thread(target=take, args=(slow, "slow"))
            first.start()
            time.sleep(0.3)
            take(fast, "fast")
            first.join()
        finally:
            lock_mod.OutputLock._write = original
        assert sorted(v == "held" for v in outcomes.values()) == [False, True], outcomes
        winner = slow if outcomes["slow"] == "held" else fast
        loser_message = outcomes["fast" if winner is slow else "slow"]
        assert "another run (" in loser_message and "is writing to this output" in loser_message
        winner.release()


def test_the_lock_error_names_the_output_itself(tmp_path):
    from transforms.settings import ConfigError
    from transforms.store.lock import OutputLock

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError) as caught:
        OutputLock(str(blocker / "out"), "run-x").acquire()
    assert str(caught.value).startswith(f"the output {blocker / 'out'} cannot be written"), caught.value


def test_two_overlapping_cli_runs_on_s3_one_claim_slowed_never_both_proceed(tmp_path, moto_s3):
    """Run A begins to claim first, but its claim's write is held back until run B's claim is in the bucket:
    B goes on, A stops with exit 6 before any call (before this fix A went on too, by its earlier start)."""
    bucket = moto_s3.new_bucket()
    moto_s3.write(bucket, "manifests/a.jsonl", _rows(0, 40).encode())
    env = _env(moto_s3, tmp=tmp_path)
    claiming, go = str(tmp_path / "claiming"), str(tmp_path / "go")
    with Emulator(EmulatorConfig(latency_ms=300)) as emu:
        config = _config(tmp_path, moto_s3, bucket, emu.base_url, max_in_flight=2)  # B calls for about 6 s
        slowed = subprocess.Popen([sys.executable, "tests/slow_claim_cli.py", claiming, go, "--config", config],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not os.path.exists(claiming) and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.exists(claiming), "the slowed run never began its claim"
        other = subprocess.Popen([sys.executable, "-m", "pipeline", "--config", config], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while not [k for k in moto_s3.keys(bucket, "out/locks/") if k.endswith(".json")] and time.time() < deadline:
            time.sleep(0.05)
        open(go, "w").close()
        a_out, a_err = slowed.communicate(timeout=300)
        b_out, b_err = other.communicate(timeout=300)
        requests = emu.stats()["requests"]
    assert other.returncode == 0, b_err[-3000:]
    assert slowed.returncode == 6, (a_out[-1000:], a_err[-3000:])
    (error,) = [line for line in a_err.splitlines() if line.startswith("error:")]
    assert "another run" in error and "this one stopped before any call" in error
    assert requests == 40
    assert sorted(_segment_ids(moto_s3, bucket)) == sorted(f"r{i}" for i in range(40))


@pytest.mark.parametrize("flush_sec", [None, 0])
def test_a_killed_run_on_s3_is_resumed_re_paying_at_most_the_calls_in_flight(tmp_path, moto_s3, flush_sec):
    """Default: results journaled on this machine's disk (S3 cannot append), shipped every 5 s; the rerun
    commits the journal. flush_sec 0: a piece a call; the rerun merges the killed run's pieces."""
    bucket = moto_s3.new_bucket()
    moto_s3.write(bucket, "manifests/a.jsonl", _rows(0, 60).encode())
    env = _env(moto_s3, tmp=tmp_path)
    with Emulator(EmulatorConfig(latency_ms=150)) as emu:
        config = _config(tmp_path, moto_s3, bucket, emu.base_url)
        if flush_sec is not None:
            raw = json.loads(open(config).read())
            raw["output"]["flush_sec"] = flush_sec
            open(config, "w").write(json.dumps(raw))
        first = subprocess.Popen([sys.executable, "-m", "pipeline", "--config", config], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while emu.stats()["requests"] < 20 and time.time() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        time.sleep(0.5)  # calls the killed run had in flight reach the emulator and are counted
        paid_before = emu.stats()["requests"]
        assert 20 <= paid_before < 60
        rerun = _cli(["--config", config], env)
        total = emu.stats()["requests"]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # Every call whose results were committed or journaled is not paid again: at most the 4 in flight (plus
    # the one whose results were being written) are.
    assert total - 60 <= 4 + 1, (total, paid_before)
    assert sorted(_segment_ids(moto_s3, bucket)) == sorted(f"r{i}" for i in range(60))
    files = [k for k in moto_s3.keys(bucket, "out/segments/") if k.endswith(".parquet")]
    if flush_sec == 0:  # the killed run's pieces (one a call) were merged by the rerun: one file a run
        assert len(files) == 2 and all("-compact-" in k for k in files), files
    else:  # the journal became one piece
        assert "recovered" in rerun.stderr and len(files) == 2, (files, rerun.stderr[-2000:])


def test_s3_files_of_any_size_empty_included_are_written_whole(s3_bucket, moto_s3):
    """Empty and small files are one put_object (Beam's multipart upload of no parts is refused: MalformedXML);
    a file past 5 MB still goes up in parts. Each reads back byte for byte."""
    from apache_beam.io.filesystems import FileSystems

    sizes = {"empty": 0, "small": 3, "parts": 6 * 1024 * 1024 + 17}
    for name, size in sizes.items():
        data = bytes(i % 251 for i in range(size))
        with FileSystems.create(f"s3://{s3_bucket}/{name}", compression_type="uncompressed") as f:
            for start in range(0, max(size, 1), 1 << 20):
                f.write(data[start:start + (1 << 20)])
        assert moto_s3.read(s3_bucket, name) == data, name
    assert moto_s3.keys(s3_bucket) == sizes
    assert not moto_s3.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads")  # none left open


# Beam's S3 client retries a refused connection for about 8.5 minutes: well past this, so the test fails
# (TimeoutExpired) if the launcher's bounded first touch is lost.
_UNREACHABLE_BOUND_SEC = 30


@pytest.mark.parametrize("command", ["job", "search"])
def test_an_unreachable_s3_endpoint_is_one_line_and_exit_2_in_seconds_before_any_call(tmp_path, command):
    """A wrong --s3_endpoint_url (a closed port on loopback): one `error:` line naming the bucket and the flag,
    exit 2, within seconds, and no call to the API."""
    pytest.importorskip("boto3", reason="apache-beam[aws] is a test dependency (setup.py extra `test`)")
    from tests.moto_s3 import ACCESS_KEY, REGION, SECRET_KEY, _free_port

    closed = f"http://127.0.0.1:{_free_port()}"  # bound then released: nothing listens there
    env = dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(tmp_path), AWS_ACCESS_KEY_ID=ACCESS_KEY,
               AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION, TWELVE_LABS_API_KEY=TEST_KEY)
    with Emulator(EmulatorConfig()) as emu:
        config = tmp_path / "job.yaml"
        config.write_text(json.dumps({
            "model": "marengo3.0", "manifests": ["s3://bkt/manifests/*.jsonl"], "output": {"path": "s3://bkt/out"},
            "api": {"base_url": emu.base_url},
            "beam": {"args": ["--runner=DirectRunner", f"--s3_endpoint_url={closed}", "--s3_region_name=us-east-1"]}}))
        args = ["--config", str(config)] if command == "job" else ["search", "--config", str(config), "--text", "x"]
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env,
                             cwd=ROOT, timeout=3 * _UNREACHABLE_BOUND_SEC)
        elapsed = time.monotonic() - started
        requests = emu.stats()["requests"]
    assert out.returncode == 2, out.stderr[-3000:]
    assert elapsed < _UNREACHABLE_BOUND_SEC, elapsed
    assert requests == 0
    assert out.stderr.strip().splitlines() == [
        f"error: s3://bkt cannot be reached: {closed} does not answer (EndpointConnectionError); check "
        "--s3_endpoint_url in beam.args (or the network) and run again"], out.stderr[-3000:]
    assert TEST_KEY not in out.stderr + out.stdout


def test_a_bucket_missing_from_the_store_is_one_line_and_exit_2(tmp_path, moto_s3):
    with Emulator(EmulatorConfig()) as emu:
        config = _config(tmp_path, moto_s3, "no-such-bucket", emu.base_url)
        out = _cli(["--config", config], _env(moto_s3, tmp=tmp_path))
        requests = emu.stats()["requests"]
    assert out.returncode == 2 and requests == 0, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [
        f"error: s3://no-such-bucket does not exist at {moto_s3.endpoint}; create the bucket or fix the path"]


def test_s3_client_arguments_come_from_the_flags_with_or_without_beam_s_builder(monkeypatch):
    """Beam 2.78 builds boto3's arguments in `client_options`; 2.77 has no such module, and the fallback reads
    the --s3_* flags as 2.77's own client does. Both give the same endpoint, keys and region."""
    pytest.importorskip("boto3")
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.store.object_store import s3_client_kwargs

    flags = ["--s3_endpoint_url=http://127.0.0.1:9", "--s3_region_name=eu-west-3", "--s3_access_key_id=AK",
             "--s3_secret_access_key=SK"]
    wanted = {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-3", "aws_access_key_id": "AK",
              "aws_secret_access_key": "SK", "use_ssl": True}
    found = s3_client_kwargs(PipelineOptions(flags))
    assert {k: found[k] for k in wanted} == wanted
    import apache_beam.io.aws.clients as clients

    monkeypatch.setitem(sys.modules, "apache_beam.io.aws.clients.client_options", None)  # as on Beam 2.77
    monkeypatch.delattr(clients, "client_options", raising=False)
    with pytest.raises(ImportError):
        from apache_beam.io.aws.clients import client_options  # noqa: F401
    for options in (PipelineOptions(flags), {"s3_endpoint_url": "http://127.0.0.1:9", "s3_region_name": "eu-west-3",
                                             "s3_access_key_id": "AK", "s3_secret_access_key": "SK"}):
        found = s3_client_kwargs(options)
        assert {k: found[k] for k in wanted} == wanted
