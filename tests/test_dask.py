"""The whole job on a real distributed engine: a Dask cluster (scheduler + 2 worker processes) on 127.0.0.1.

`--runner dask` runs the job through pipeline.dask_runner (Beam's DaskRunner with the gaps this job hits
fixed; see that module). One LocalCluster serves the module: started once, stopped at the end.
"""
import collections
import glob
import logging
import os
import random
import shutil
import time
import uuid

import numpy as np
import pytest

pytest.importorskip("dask")
pytest.importorskip("distributed")

import pipeline.run as run_module  # noqa: E402
from apache_beam.io.filesystem import FileMetadata, FileSystem  # noqa: E402
from apache_beam.io.localfilesystem import LocalFileSystem  # noqa: E402
from embed_emulator import Emulator, EmulatorConfig, synth  # noqa: E402
from embed_emulator import server as emulator_server  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.samples import EXPECTED, ensure_samples  # noqa: E402
from tests.helpers import TEST_KEY, assert_exactly_once, make_config, read_dead_letters, read_segments, run  # noqa: E402
from tests.test_redis_bucket import RedisServer  # noqa: E402

WORKERS = 2
# The shared limit: the emulator refuses more than RPM calls per sliding minute, the job is configured to it.
RPM = 600
ROWS = 300


@pytest.fixture(scope="module")
def dask_cluster():
    """A LocalCluster of WORKERS worker processes (one thread each) on 127.0.0.1, dashboard off.

    The workers are started with TWELVE_LABS_API_KEY in their environment: as on real workers, the key
    comes from there (or a key file), never from pipeline options."""
    from dask.distributed import Client, LocalCluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
        cluster = LocalCluster(n_workers=WORKERS, processes=True, threads_per_worker=1, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
        try:
            yield cluster, client
        finally:
            client.close()
            cluster.close()


def _dask_args(cluster):
    return ["--runner", "dask", f"--dask_client_address={cluster.scheduler_address}"]


# ---- the runner's choice and options -----------------------------------------------------------------------

def test_runner_dask_and_its_full_names_select_the_dask_runner(tmp_path):
    for given in (["--runner", "dask"], ["--runner=DaskRunner"],
                  ["--runner=apache_beam.runners.dask.dask_runner.DaskRunner"]):
        options = run_module.beam_options(make_config("out", [], beam_args=given + [
            "--dask_client_address=tcp://127.0.0.1:8786"]))
        from apache_beam.options.pipeline_options import StandardOptions

        from pipeline.dask_runner import DaskOptions

        assert options.view_as(StandardOptions).runner == run_module.DASK_RUNNER
        assert options.view_as(DaskOptions).address == "tcp://127.0.0.1:8786"
        assert not run_module._runs_in_process(options)  # no progress line: the work is in the workers
    # The config way: beam.args.
    config = tmp_path / "dask.yaml"
    config.write_text("manifests: []\noutput:\n  path: out\nbeam:\n  args: [--runner=dask, "
                      "--dask_client_address=tcp://10.1.2.3:8786, --dask_npartitions=8]\n")
    options = run_module.beam_options(load_config(str(config)))
    from pipeline.dask_runner import DaskOptions

    assert options.view_as(DaskOptions).address == "tcp://10.1.2.3:8786"
    assert options.view_as(DaskOptions).npartitions == 8


# ---- the runner itself: what Beam's DaskRunner (2.77) gets wrong -------------------------------------------

def _note(folder):
    def write(value):
        import os

        from apache_beam.metrics import Metrics

        Metrics.counter("probe", "written").inc()
        with open(os.path.join(folder, f"{os.getpid()}.txt"), "a") as f:
            f.write(repr(value) + "\n")
        return value
    return write


def test_runner_keeps_tagged_and_finish_bundle_outputs_runs_every_sink_and_reports_metrics(dask_cluster, tmp_path):
    """Each of these lost data on Beam's own DaskRunner (checked by running it): tags dropped (every output got
    every element), finish_bundle outputs dropped, only the last sink computed, metrics() not implemented. And
    steps are fused: an element reaches the next step when it is emitted (Beam's runner ran each step over a
    whole partition before the next one saw any of it)."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.transforms.window import GlobalWindows

    cluster, _ = dask_cluster

    class Split(beam.DoFn):
        def process(self, x):
            yield beam.pvalue.TaggedOutput("odd", x) if x % 2 else x

    class Slow(beam.DoFn):
        def process(self, x):
            time.sleep(0.05)
            yield "slow", x, time.time()

    class Batch(beam.DoFn):
        def start_bundle(self):
            self.held = []

        def process(self, x):
            self.held.append(x)

        def finish_bundle(self):
            for x in self.held:
                yield GlobalWindows.windowed_value(("late", x))

    out = str(tmp_path)
    options = run_module.beam_options(make_config("out", [], beam_args=_dask_args(cluster)))
    p = beam.Pipeline(options=options)
    split = p | "Numbers" >> beam.Create(range(10)) | beam.ParDo(Split()).with_outputs("odd", main="even")
    split.even | "Even" >> beam.Map(lambda x: ("even", x)) | "WriteEven" >> beam.Map(_note(out))
    split.odd | "Odd" >> beam.Map(lambda x: ("odd", x)) | "WriteOdd" >> beam.Map(_note(out))
    low, high = p | "More" >> beam.Create(range(6)) | beam.Partition(lambda x, n: int(x >= 3), 2)
    low | "Low" >> beam.Map(lambda x: ("low", x)) | "WriteLow" >> beam.Map(_note(out))
    high | "High" >> beam.Map(lambda x: ("high", x)) | "WriteHigh" >> beam.Map(_note(out))
    p | "Few" >> beam.Create([1, 2, 3]) | beam.ParDo(Batch()) | "WriteLate" >> beam.Map(_note(out))
    (p | "Pairs" >> beam.Create([(f"k{i % 5}", i) for i in range(100)]) | beam.GroupByKey()
     | beam.MapTuple(lambda k, vs: ("group", k, sorted(vs))) | "WriteGroups" >> beam.Map(_note(out)))
    # Fused steps stream: each element reaches the next step as it is emitted, not when the bundle ends.
    (p | "Slowly" >> beam.Create(range(20)) | beam.ParDo(Slow())
     | "Received" >> beam.MapTuple(lambda tag, x, sent: (tag, x, sent, time.time())) | "WriteSlow" >> beam.Map(_note(out)))
    result = p.run()
    result.wait_until_finish()

    written, slow = collections.Counter(), []
    for name in os.listdir(out):
        with open(os.path.join(out, name)) as f:
            for record in map(eval, f):  # noqa: S307 - our own repr()s
                written[record[0]] += 1
                slow += [record[2:]] if record[0] == "slow" else []
    assert written == {"even": 5, "odd": 5, "low": 3, "high": 3, "late": 3, "group": 5, "slow": 20}, written
    assert min(received for _, received in slow) < max(sent for sent, _ in slow), "the step waited for the bundle"
    counters = result.metrics().query(MetricsFilter().with_namespace("probe"))["counters"]
    assert sum(c.committed for c in counters) == sum(written.values())


# ---- the whole job: a mixed manifest with faults, the local runner's output, one shared limit ----------------

def _mixed_manifest(folder, rows, seed=7):
    """A JSONL manifest of `rows` rows mixing text, image and audio files (as tests/test_pipeline.py's), then
    five bad rows; returns (path, number of rows)."""
    import json

    rng = random.Random(seed)
    media = os.path.join(folder, "media")
    os.makedirs(media, exist_ok=True)
    images, audios = [], []
    for i in range(6):
        path = os.path.join(media, f"img{i}.png")
        with open(path, "wb") as f:
            f.write(synth.png_bytes(128 + 8 * i, 128, seed=i))
        images.append(path)
        path = os.path.join(media, f"snd{i}.wav")
        with open(path, "wb") as f:
            f.write(synth.wav_bytes(1.0 + i, 200.0 + 90 * i))
        audios.append(path)
    with open(os.path.join(media, "tiny.png"), "wb") as f:
        f.write(synth.png_bytes(64, 64, seed=99))
    manifest = os.path.join(folder, "mixed.jsonl")
    with open(manifest, "w") as f:
        for n in range(rows):
            row = {"id": f"r{n}"}
            kinds = rng.choice([("text",), ("image",), ("audio",), ("text", "image"), ("text", "image", "audio")])
            if "text" in kinds:
                row["text"] = f"caption number {n} about {rng.choice(['dogs', 'cats', 'goals', 'rain'])}"
            if "image" in kinds:
                row["image_file"] = rng.choice(images)
            if "audio" in kinds:
                row["audio_file"] = rng.choice(audios)
            f.write(json.dumps(row) + "\n")
        for bad in ({"id": "bad-missing", "image_file": "media/nope.png"}, {"id": "bad-empty"},
                    {"id": "bad-url", "image_url": "ftp://example.invalid/a.png"},
                    {"id": "r3", "text": "an id used before"}, {"id": "bad-small", "image_file": "media/tiny.png"}):
            f.write(json.dumps(bad) + "\n")
    return manifest, rows + 5


def _segments_by_key(output):
    rows = {}
    for row in read_segments(output).to_pylist():
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


class _Callers:
    """Who sent each embed call, seen from the emulator (nothing in the job's DoFns): the peer port of the
    request's connection, mapped to the process owning that socket among the candidates (psutil)."""

    def __init__(self, emulator, candidates):
        self.emulator = emulator
        self.candidates = list(candidates)
        self.owner = {}
        self.calls = []  # (time, pid or None)

    def owner_of(self, port):
        import psutil

        if port not in self.owner:
            self.owner[port] = None
            for pid in self.candidates:
                try:
                    connections = psutil.Process(pid).net_connections(kind="tcp")
                except psutil.Error:
                    continue
                if any(c.laddr and c.laddr.port == port and c.raddr and c.raddr.port == self.emulator.port
                       for c in connections):
                    self.owner[port] = pid
                    break
        return self.owner[port]

    def install(self, monkeypatch):
        original = emulator_server._Handler._embed
        watch = self

        def embed(handler):
            if handler.server.emulator is watch.emulator:
                watch.calls.append((time.time(), watch.owner_of(handler.client_address[1])))
            return original(handler)

        monkeypatch.setattr(emulator_server._Handler, "_embed", embed)


def _windows_max(times, width):
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _redis_or_none(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        return None
    tmp_path.mkdir()
    return RedisServer(binary, str(tmp_path))


COMPARED = ("rows_read", "items", "items_embedded", "segments_written", "items_deduplicated", "dead_letters",
            "dead_letters_by_reason", "status")


@pytest.mark.slow
@pytest.mark.serial
def test_job_on_dask_matches_the_local_runner_and_workers_share_one_limit(dask_cluster, tmp_path, monkeypatch):
    """A mixed manifest (text, image, audio; five bad rows) on the Dask cluster against an emulator injecting
    5% 5xx and 20-60 ms latency and enforcing RPM calls per sliding minute, the workers sharing that limit
    through Redis: the output equals the local runner's (every row once, the same vectors bit for bit, the
    same dead letters), the calls came from both worker processes, no call was refused, and together the
    workers paced to the limit.

    The run is shorter than the emulator's 60 s window, so its 429 count alone only proves there was no burst
    over RPM; the pace is also checked over any 10 s window (at most the limit, +3) and over the
    steady part of the run (at least 0.9 of the limit). Two workers each pacing to the full limit on their
    own would send twice the limit in every window."""
    cluster, client = dask_cluster
    worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == WORKERS
    manifest, rows = _mixed_manifest(str(tmp_path / "in"), ROWS)
    local_out, dask_out = str(tmp_path / "local"), str(tmp_path / "dask")

    began = time.monotonic()
    with Emulator(EmulatorConfig()) as clean:
        local = run(make_config(local_out, [manifest]), clean.base_url)
    local_sec = time.monotonic() - began

    redis = _redis_or_none(tmp_path / "redis")
    shared = {"rate_limit_backend": "redis", "redis_url": redis.url, "rate_limit_key": f"dask:{uuid.uuid4().hex}"} \
        if redis else {"max_workers": WORKERS}  # without Redis: each worker paces to its share
    faults = EmulatorConfig(requests_per_minute=RPM, latency_ms=40, latency_jitter_ms=20, fault_5xx_rate=0.05, seed=3)
    finalize, pieces = run_module.finalize_output, []

    def finalize_noting_the_pieces(*args):  # before finalize compacts them: when each piece was committed
        pieces.extend(os.path.getmtime(p) for p in glob.glob(os.path.join(dask_out, "segments", "part-*.parquet")))
        return finalize(*args)

    monkeypatch.setattr(run_module, "finalize_output", finalize_noting_the_pieces)
    # The launcher finalizes here (the job's own last step left out), so the pieces are seen before compaction.
    build = run_module.build_pipeline
    monkeypatch.setattr(run_module, "build_pipeline", lambda p, **kwargs: build(p, **dict(kwargs, finalize=False)))
    try:
        with Emulator(faults) as emulator:
            callers = _Callers(emulator, worker_pids | {os.getpid()})
            callers.install(monkeypatch)
            config = make_config(dask_out, [manifest], requests_per_minute=RPM, max_in_flight=4, max_attempts=8,
                                 item_deadline_sec=120.0, beam_args=_dask_args(cluster), **shared)
            began = time.monotonic()
            on_dask = run(config, emulator.base_url)
            dask_sec = time.monotonic() - began
            stats = emulator.stats()
    finally:
        if redis:
            redis.stop()

    # The output: every row once, the local runner's segments and vectors exactly, its dead letters.
    assert_exactly_once(dask_out, rows)
    expected, got = _segments_by_key(local_out), _segments_by_key(dask_out)
    assert sorted(got) == sorted(expected)
    for key, want in expected.items():
        have = got[key]
        np.testing.assert_array_equal(have.pop("embedding"), want.pop("embedding"), err_msg=str(key))
        assert have == want, key
    assert _letters(dask_out) == _letters(local_out)
    for name in COMPARED:  # the summary's counts: the runner reports Beam metrics, as the local one does
        assert on_dask[name] == local[name], name
    assert on_dask["dead_letters_by_reason"] == {"duplicate_id": 1, "image_too_small": 1, "invalid_url": 1,
                                                 "missing_file": 1, "no_input": 1}

    # More than one worker process made the calls (seen by the emulator), and never the launcher.
    by_pid = collections.Counter(pid for _, pid in callers.calls)
    assert set(by_pid) <= worker_pids, by_pid
    assert len(by_pid) == WORKERS, by_pid

    # One shared limit: no 429, at most the limit in any 10 s window, and at least 0.9 of it while calling.
    per_sec = RPM / 60
    times = sorted(t for t, _ in callers.calls)
    assert stats["rate_limited"] == 0 and on_dask["http_429"] == 0, stats
    assert stats["faults"]["5xx"] > 0 and on_dask["retries"] >= stats["faults"]["5xx"]
    window_max = _windows_max(times, 10.0)
    # +3: the bucket's burst of 1, and calls bunched by send jitter at the window's two edges
    assert window_max <= 10 * per_sec + 3, window_max
    # Results were committed as the calls returned (the writer is fused with the calls), not after them.
    assert len(pieces) > WORKERS and min(pieces) < times[-1] - 5, (min(pieces) - times[0], times[-1] - times[0])
    span = times[-1] - times[0]
    # The steady part: from the moment every worker calls (a worker process still importing the job's modules
    # shares nothing yet) to 2 s before the end.
    all_calling = max(min(t for t, pid in callers.calls if pid == worker) for worker in by_pid)
    steady_from, steady_to = max(times[0] + 2, all_calling + 1), times[-1] - 2
    steady = [t for t in times if steady_from <= t <= steady_to]
    steady_ratio = len(steady) / (steady_to - steady_from) / per_sec
    overall_ratio = (len(times) - 1) / span / per_sec

    print(f"\nDask: {WORKERS} worker processes x 1 thread, max_in_flight 4; emulator {RPM}/min, 5% 5xx, 40+-20 ms; "
          f"rate limit {'shared through Redis' if redis else 'local share (no redis-server)'}")
    print(f"  {'':22} {'local (FnApiRunner)':>22} {'Dask':>22}")
    for name in COMPARED + ("calls", "retries", "http_429", "seconds"):
        print(f"  {name:22} {str(local.get(name)):>22} {str(on_dask.get(name)):>22}")
    print(f"  wall time (run_job)    {local_sec:>21.1f}s {dask_sec:>21.1f}s")
    print(f"  segments: {len(got)} rows, vectors equal bit for bit; dead letters equal ({len(_letters(dask_out))})")
    print(f"  calls by worker pid (emulator side): {dict(by_pid)}; {len(pieces)} segment pieces committed, the first "
          f"{min(pieces) - times[0]:.1f} s after the first call, the last call at {span:.1f} s")
    print(f"  attempts seen by the emulator: {len(times)} in {span:.1f} s; 5xx injected {stats['faults']['5xx']}, "
          f"429 {stats['rate_limited']}")
    print(f"  pace: {overall_ratio:.3f} of the limit first to last call, {steady_ratio:.3f} over the steady part "
          f"({len(steady)} calls in {steady_to - steady_from:.1f} s, every worker calling from "
          f"{all_calling - times[0]:.1f} s); most in any 10 s: {window_max} (limit {10 * per_sec:.0f})")
    if redis is None:
        pytest.skip("redis-server is not installed: the output and the workers were checked, the shared limit "
                    "through Redis was not (apt-get install redis-server)")
    # At least 0.9 of the limit in the median 2 s window of the steady part (a stall of the shared 2-core machine
    # in one window does not decide it; a pacer that under-uses the limit lowers every window), and 0.8 over it all.
    edges = np.arange(steady_from, steady_to - 2 + 1e-9, 2.0)
    per_window = [sum(1 for t in steady if start <= t < start + 2) for start in edges]
    assert float(np.median(per_window)) >= 0.9 * 2 * per_sec, per_window
    assert steady_ratio >= 0.8, steady_ratio


# ---- driver-side steps: the launcher reaches the workers' output by another path ----------------------------

_MOUNTS = {}


def _mount(name, root):
    """Where mnt://NAME is in this process (run on each Dask worker through client.run)."""
    _MOUNTS[name] = root
    return os.getpid()


class _MountedFileSystem(FileSystem):
    """mnt://NAME/PATH: the folder NAME as this process mounts it (_MOUNTS), the way each machine reaches one
    shared bucket or volume its own way. Registered with Beam's FileSystems by being imported; the workers
    import it through client.run(_mount, ...)."""

    def __init__(self, pipeline_options=None):
        super().__init__(pipeline_options)
        self._disk = LocalFileSystem(pipeline_options)

    @classmethod
    def scheme(cls):
        return "mnt"

    @staticmethod
    def _local(url):
        name, _, rest = url[len("mnt://"):].partition("/")
        root = _MOUNTS[name]
        return os.path.join(root, rest) if rest else root

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def _url_dirname(self, url):
        return self.split(url)[0]

    def has_dirs(self):
        return True

    def mkdirs(self, path):
        return self._disk.mkdirs(self._local(path))

    def _list(self, dir_or_prefix):
        local = self._local(dir_or_prefix)
        for meta in self._disk._list(local):
            yield FileMetadata(dir_or_prefix + meta.path[len(local):], meta.size_in_bytes,
                               meta.last_updated_in_seconds)

    def create(self, path, *args, **kwargs):
        return self._disk.create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return self._disk.open(self._local(path), *args, **kwargs)

    def copy(self, sources, destinations):
        return self._disk.copy([self._local(p) for p in sources], [self._local(p) for p in destinations])

    def rename(self, sources, destinations):
        return self._disk.rename([self._local(p) for p in sources], [self._local(p) for p in destinations])

    def exists(self, path):
        return self._disk.exists(self._local(path))

    def size(self, path):
        return self._disk.size(self._local(path))

    def last_updated(self, path):
        return self._disk.last_updated(self._local(path))

    def checksum(self, path):
        return self._disk.checksum(self._local(path))

    def metadata(self, path):
        meta = self._disk.metadata(self._local(path))
        return FileMetadata(path, meta.size_in_bytes, meta.last_updated_in_seconds)

    def delete(self, paths):
        return self._disk.delete([self._local(p) for p in paths])

    def report_lineage(self, path, *args, **kwargs):
        pass


def test_workers_finalize_and_the_launcher_reports_through_its_own_path_to_the_output(dask_cluster, tmp_path,
                                                                                    monkeypatch):
    """The output is mnt://shared/out. The Dask workers mount `shared` at worker-view/, the launcher (this
    process) at launcher-view/: two paths to one store, as two machines reach one bucket. Finalize is a step
    of the job, so it runs on the workers through their path; once the job is done the workers' path is
    removed, so the summary and the report can only have worked through the launcher's own path. The launcher
    never finalizes itself; a second run skips everything through both paths."""
    cluster, client = dask_cluster
    store, worker_view, launcher_view = tmp_path / "store", tmp_path / "worker-view", tmp_path / "launcher-view"
    store.mkdir()
    os.symlink(store, worker_view)
    os.symlink(store, launcher_view)
    assert set(client.run(_mount, "shared", str(worker_view)).values()) == set(client.run(os.getpid).values())
    monkeypatch.setitem(_MOUNTS, "shared", str(launcher_view))
    output = "mnt://shared/out"

    read_counts = run_module.read_finalize_counts
    finalized, launcher_finalized = [], []

    def job_done(out, run_id):
        if worker_view.is_symlink():
            os.unlink(worker_view)  # from here on the workers' path does not exist
        counts = read_counts(out, run_id)
        finalized.append(counts)
        return counts

    monkeypatch.setattr(run_module, "read_finalize_counts", job_done)
    monkeypatch.setattr(run_module, "finalize_output", lambda *a: launcher_finalized.append(a))
    manifests_dir = ensure_samples(str(tmp_path / "samples"))
    manifests = [os.path.join(manifests_dir, n) for n in ("catalog.jsonl", "extra.csv", "more.parquet")]
    with Emulator(EmulatorConfig()) as emulator:
        first = run(make_config(output, manifests, beam_args=_dask_args(cluster)), emulator.base_url)
        os.symlink(store, worker_view)  # the workers' mount is back for the next run
        second = run(make_config(output, manifests, beam_args=_dask_args(cluster)), emulator.base_url)
        served = emulator.stats()

    assert len(finalized) == 2 and all(counts is not None for counts in finalized) and not worker_view.exists()
    assert launcher_finalized == []
    on_disk = str(store / "out")
    assert first["items_embedded"] == EXPECTED["items_embedded"]
    assert first["dead_letters_by_reason"] == EXPECTED["dead_letters_by_reason"]
    assert first["rows_read"] == EXPECTED["rows"] and first["segments_written"] == 25
    assert_exactly_once(on_disk, EXPECTED["rows"])
    # Everything the launcher recorded names the output by its URL, never by a worker's or its own local path.
    assert first["output"] == output and first["summary_file"] == output + "/summary.json"
    assert first["segment_files"] and all(f.startswith(output + "/segments/") for f in first["segment_files"])
    for name in ("summary.json", "report.html"):
        text = (store / "out" / name).read_text()
        assert "worker-view" not in text and "launcher-view" not in text and str(store) not in text, name
    assert "<html" in (store / "out" / "report.html").read_text().lower()
    # the workers' finalize compacted this run's pieces into files under segments/
    assert read_segments(on_disk).num_rows == 25 and finalized[0]["pieces_written"] >= 1
    assert [p for p in os.listdir(store / "out" / "segments") if "-compact-" not in p] == []
    # The rerun read what was done through both mounts and called nothing.
    assert second["items_already_done"] == sum(EXPECTED["items_embedded"].values()) and second["calls"] == 0
    assert served["requests"] == first["calls"]
    print(f"\nlauncher via {launcher_view.name}/, workers via {worker_view.name}/ (removed after the job): "
          f"run 1 {first['status']}, {first['segments_written']} segment rows, {first['calls']} calls; "
          f"run 2 {second['status']}, {second['items_already_done']} already done, {second['calls']} calls")


def test_job_on_dask_writes_its_output_to_s3(dask_cluster, tmp_path, moto_s3):
    """The output in a bucket (moto's S3 on loopback): the Dask workers get the job's S3 flags with each stage
    (a Dask worker has no Beam harness to give them), write and finalize there; a rerun calls nothing."""
    import io
    import json

    import pyarrow.parquet as pq

    cluster, client = dask_cluster
    bucket = moto_s3.new_bucket()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"d{i}", "text": f"dask caption {i}"}) + "\n" for i in range(30)))
    output = f"s3://{bucket}/out"
    beam_args = _dask_args(cluster) + moto_s3.beam_args
    with Emulator(EmulatorConfig()) as emulator:
        first = run(make_config(output, [str(manifest)], beam_args=beam_args, pack=False), emulator.base_url)
        second = run(make_config(output, [str(manifest)], beam_args=beam_args, pack=False), emulator.base_url)
        served = emulator.stats()
    ids = []
    for key in moto_s3.keys(bucket, "out/segments/"):
        ids += pq.read_table(io.BytesIO(moto_s3.read(bucket, key)), columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(f"d{i}" for i in range(30))
    assert first["calls"] == 30 == served["requests"] and second["calls"] == 0
    assert second["items_already_done"] == 30
    assert "out/summary.json" in moto_s3.keys(bucket, "out/")
