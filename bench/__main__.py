"""python -m bench [--scenario NAME ...] [--full] [--scale-rows N,N,...] [--json PATH] [--workdir DIR]

Throughput of this pipeline against the peers a user would otherwise write, measured in one run
against one emulator (`python -m embed_emulator`, its own process, reset between arms).

Arms (each in its own subprocess, `python -m bench.arm`, so peak RSS is that arm's alone):
  pipeline      `pipeline.run.run_job` on the DirectRunner (pinned to FnApiRunner), packing on,
                max_in_flight 8; told the limit (`requests_per_minute`) or not.
  sdk           a loop over the official `twelvelabs` SDK 1.3.6, one item per call.
  handler       Beam `RunInference` + this project's TwelveLabsEmbeddingModelHandler (packed, paced, concurrent).
  runinference  Beam `RunInference` + a `RemoteModelHandler` posting with `requests`, one item per call.
  threads       8 threads posting with `requests`, one item per call, token bucket at the limit.

Scenarios:
  rate-limited  limit 600 calls/min, latency 200 +- 50 ms, mixed manifest (text, JPEG, WAV; rows
                carry 1-3 modalities so the pipeline packs). Default 360 items, --full 3000.
  overhead      no limit, no latency: a text-only manifest (5000, --full 20000) and a mixed one
                (900, --full 3000): the client's own cost per item.
  memory        the pipeline's peak RSS on a 20,000-row (--full 100,000) vs a 3000-row text manifest.
  v2            Embed API v2 under the same limit and latency, tasks ready 3 s after creation: a mixed
                manifest (text, JPEG, WAV, 3 s local MP4s sent to POST /embed-v2, 12 s MP4s by URL
                served on 127.0.0.1 that become async tasks, polled from 1 s) through the pipeline
                with api.version v2, then auto (text/image/audio packed on v1, video on v2).
                Default 340 items, --full 1530. Calls are embed POSTs (sync calls and task creates),
                polls are task GETs: the emulator counts both against the limit.
  adaptive      the pipeline told 1200 calls/min against an emulator allowing 900 (sliding 60 s window,
                200 +- 50 ms), text manifest (one item per call) of 1800 items (~2 min), --full 3600
                (~4.5 min): calls/s as a fraction of the real limit over the run and over its last 60 s,
                429s, and calls per 10 s (a sawtooth shows as bins near 0 between full ones). The
                emulator's 429s state X-Ratelimit-Limit and cannot be told to hide it, so the job
                always learns the limit from the header here.
  scale         cost by output size (issue 13): text manifests of N rows (default 10000 and 30000, --full
                10000, 100000, 300000; --scale-rows to choose), no limit, no latency, one output per N run
                three times: fresh; again on the manifest plus 1% new rows (calls must equal the new rows);
                again with 2 rows' text changed (the rewrite finalize does for them). Per run: wall time, time
                to the first call (the emulator's own time of its first request), finalize's time (timed in the
                arm) and bytes rewritten, peak RSS; then the ratios of the largest N to the smallest.
  upload        large media uploads (issue 23), the emulator's chunk size left at its platform-like 5 MiB, asset
                processing 0.05 s: (1) a 1 GB WAV (--full 2 GB) through our Uploader (multipart, max_parallel_chunks
                4 and 5) vs twelvelabs 1.3.6 `multipart_upload.upload_file` (max_workers 5, batch_size 10): upload
                seconds, MB/s, peak RSS, temp disk (the SDK's chunk copies, sampled) and disk writes; (2) our peak
                RSS on 256 MB vs 2 GB from a local path and from benchfs:// (bench.benchfs: Beam's remote-read
                stack over a local file); (3) SIGKILL at half of a 1 GB upload, then a rerun: bytes the emulator
                accepted over both vs the file (target: at most one chunk plus the chunks in flight more), ours
                (journal) and the SDK's (starts over). Arms `upload-job` / `upload-sdk`.
  categories    per-category rate limits (issue 24; bench/categories.py): (a) marengo3.5, text/image/audio/video
                at 300/min each: POSTs/s over the sum of the four limits, per-category job vs one bucket; (b)
                marengo3.0 packed, text/image 600/min, audio 60/min: items/s per category vs one bucket at 60
                and vs packing tied to every category; (c) told 1200/min, server 900 stating it on successes:
                calls per 10 s.
  objstore      the output on local disk vs in a bucket of a real S3 API on loopback (moto's server, a test
                dependency), text manifest, 100 ms latency, at 600 and 6,000 calls/min (default 300 and 1500
                items, --full 1200 and 10000): calls/s and the job's finalize time side by side, and S3's ratio
                to local disk (issue 25's targets: calls/s within 10%, finalize within 3x).
  durable       the cost of durability: text manifest (5000, --full 20000), no limit, no latency, the
                default output.flush_sec (5 s, every result journaled) against flush_sec 0 (a Parquet
                piece per call's results); two alternating rounds (--full: one).
  index         the LanceDB table of an output's segments and its ANN index (issue 26; bench/index.py):
                --rows N (default 1,000,000; 2 GB of 512-d vectors, several minutes) emulator vectors in
                OUTPUT/segments Parquet, the table streamed from them, `transforms.store.ann` building the index:
                recall@10 of 100 queries against the exact top 10, median query time against the project's
                exact scan (`pipeline.search.nearest`, the peer) and LanceDB's flat search, the same filtered
                (modality = 'image'), disk sizes, write and build times, then 1% more rows and the update.
                --index-types T,T: also measure these index types (each built in turn) before the chosen one.

Columns: items/s and calls/s over the arm's wall time (Beam start-up included); calls are the
emulator's answered requests (429s excluded); "of limit" is calls/s over limit/60; 429s come from
the emulator (rate limited + injected bursts); CPU is user+system of the arm's process after its
imports, per 1000 items; RSS is the process's peak. Then the pipeline's ratios to each peer.

What bounds each number: under a limit, calls/s can at best equal limit/60, so a packing arm
wins by items per call and a sequential arm loses by latency (1 / 0.2 s = 5 calls/s). A run
shorter than the emulator's sliding 60 s window never fills it, so a job that does not know the
limit can show "of limit" above 1 without a 429: only --full runs measure discovery. With no
latency, items/s is bounded by client CPU plus the emulator's, which share the machine's cores.
The slow peers (sdk and runinference, and threads under the limit) run over the first rows of the
manifest only (--peer-cap): their rates are steady, so the ratios hold, but "items" differs.
Numbers are ratios to judge, never pass/fail: other load on the machine moves them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence

from bench import report
from bench.arm import ARMS
from bench.emulator import ROOT, EmulatorProcess, RequestSampler
from bench import upload as up
from bench.manifests import (MediaServer, edited_manifest, head_manifest, mixed_manifest, text_manifest, v2_counts,
                             v2_manifest)

SCENARIOS = ("rate-limited", "overhead", "memory", "v2", "adaptive", "durable", "scale", "upload", "categories",
             "objstore", "index")
# (default, --full); None means no cap.
SIZES = {"rate_items": (360, 3000), "rate_peer_items": (40, 600),
         "text_items": (5000, 20000), "mixed_items": (900, 3000), "overhead_peer_items": (1000, None),
         "memory_rows": (20000, 100000), "memory_base_rows": (3000, 3000), "v2_items": (340, 1530),
         "adaptive_items": (1800, 3600), "durable_items": (5000, 20000),
         "scale_rows": ((10000, 30000), (10000, 100000, 300000)),
         "upload_mb": (1024, 2048), "upload_rss_mb": ((256, 2048), (256, 2048)), "upload_kill_mb": (1024, 1024),
         "objstore_600_items": (300, 1200), "objstore_6000_items": (1500, 10000)}
# scale: the rerun adds this fraction of new rows; the third run changes the text of this many rows.
SCALE_ADDED, SCALE_EDITED = 0.01, 2
RPM, LATENCY_MS, JITTER_MS, THREADS = 600, 200.0, 50.0, 8
OBJSTORE_LATENCY_MS = 100.0  # issue 25's setting: 8 in flight then reach 80 calls/s at most, on both outputs
TASK_READY_AFTER_SEC, TASK_POLL_SEC = 3.0, 1.0
# adaptive: the job is told more than the server allows and must find the real limit.
ADAPTIVE_TOLD_RPM, ADAPTIVE_SERVER_RPM = 1200, 900
# durable: the two arms alternate, so drift in the machine's load hits both; (default, --full) rounds.
DURABLE_ROUNDS = (2, 1)
# upload: the emulator's chunk size (its default, the platform's 5 MiB, set explicitly), its asset processing time
# (short: the wait for `ready` must not weigh on the upload), our parallel chunk PUTs, the SDK's max_workers.
UPLOAD_CHUNK, UPLOAD_PROCESSING_SEC, UPLOAD_PARALLEL, SDK_WORKERS = 5 * 1024 * 1024, 0.05, (4, 5), 5
LABELS = {"handler": "RunInference + our handler", "sdk": "twelvelabs SDK loop",
          "runinference": "RunInference remote",
          "threads": f"requests x{THREADS} threads"}


class PieceWatcher:
    """Counts the Parquet pieces in a folder every `interval` s in a thread (in the bench's process, not the
    arm's); `most` is the largest count seen."""

    def __init__(self, folder: str, interval: float = 0.5):
        self.folder, self.interval, self.most = folder, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-pieces", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.most = max(self.most, sum(1 for n in os.listdir(self.folder) if n.endswith(".parquet")))
            except OSError:
                pass
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PieceWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: str):
        self.full, self.arms, self.peer_cap, self.workdir = args.full, args.arms, args.peer_cap, workdir
        self.scale_rows = args.scale_rows
        self.index_rows, self.index_types = args.rows, args.index_types
        self.results: Dict[str, list] = {}

    def size(self, name: str) -> Optional[int]:
        if name.endswith("peer_items") and self.peer_cap is not None:
            return self.peer_cap or None
        return SIZES[name][1 if self.full else 0]

    def run_arm(self, emu: EmulatorProcess, arm: str, manifest: str, label: str,
                rpm: Optional[float] = None, emu_rpm: Optional[float] = None,
                arm_args: Sequence[str] = (), sample: bool = False, watch_pieces: bool = False,
                output: Optional[str] = None) -> Optional[dict]:
        """One arm's raw numbers; `arm_args` go to `bench.arm`; `sample` splits its wall time into phases
        from the emulator's counters (then the caller derives the rates); `watch_pieces` counts the segment
        pieces the pipeline committed (the most seen at once: the job's finalize step may merge them);
        `output`: the pipeline's output folder, kept before and after (the caller clears it), for reruns;
        default a folder cleared before and removed after."""
        if arm not in self.arms:
            return None
        emu.reset()
        out = os.path.join(self.workdir, "arm.json")
        keep = output is not None
        output = output or os.path.join(self.workdir, "pipeline-output")
        if not keep:
            shutil.rmtree(output, ignore_errors=True)  # a kept workdir must not hold a killed run's results
        cmd = [sys.executable, "-m", "bench.arm", arm, "--manifest", manifest, "--base-url", emu.base_url,
               "--out", out, "--output", output, "--threads", str(THREADS)] + (["--rpm", str(rpm)] if rpm else [])
        cmd += list(arm_args)
        env = dict(os.environ, TWELVE_LABS_API_KEY=os.environ.get("TWELVE_LABS_API_KEY", "bench-key"))
        cpu0 = emu.cpu_sec()
        with (RequestSampler(emu) if sample else contextlib.nullcontext()) as sampler, \
                (PieceWatcher(os.path.join(output, "segments")) if watch_pieces else contextlib.nullcontext()) as pieces:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
        if not keep:
            shutil.rmtree(output, ignore_errors=True)
        if proc.returncode:
            raise SystemExit(f"arm {label} failed:\n{proc.stderr[-3000:]}")
        with open(out, encoding="utf-8") as f:
            result = json.load(f)
        result.update(arm=arm, label=label, manifest=os.path.basename(manifest), told_rpm=rpm,
                      emulator=emu.stats(), emulator_cpu_sec=emu.cpu_sec() - cpu0, load_1m=os.getloadavg()[0])
        if pieces is not None:
            result["pieces"] = pieces.most
        if sampler is not None:
            result["phases"] = sampler.phases(result["started_at"], result["ended_at"])
            result["pace"] = sampler.pace(result["started_at"], result["ended_at"])
            return result
        return report.derive(result, emu_rpm)

    def emit(self, scenario: str, title: str, rows: List[Optional[dict]], note: str = "") -> None:
        rows = [r for r in rows if r]
        self.results.setdefault(scenario, []).extend(rows)
        print(report.table(title, rows))
        ours, peers = [r for r in rows if r["arm"] == "pipeline"], [r for r in rows if r["arm"] != "pipeline"]
        if ours and peers:
            print(report.ratios(ours[0], peers))
        if note:
            print(note)
        print(flush=True)

    def rate_limited(self) -> None:
        manifest = mixed_manifest(self.workdir, self.size("rate_items"))
        cap = self.size("rate_peer_items")
        peer_manifest = head_manifest(manifest, cap) if cap else manifest
        with EmulatorProcess(RPM, LATENCY_MS, JITTER_MS) as emu:
            rows = [self.run_arm(emu, "pipeline", manifest, f"pipeline (rpm={RPM} given)", RPM, RPM),
                    self.run_arm(emu, "pipeline", manifest, "pipeline (rpm unknown)", None, RPM),
                    self.run_arm(emu, "handler", manifest, LABELS["handler"], RPM, RPM)]
            rows += [self.run_arm(emu, arm, peer_manifest, LABELS[arm], RPM if arm == "threads" else None, RPM)
                     for arm in ("sdk", "runinference", "threads")]
        note = "" if self.full else (
            "  note: a short run is weighed down by start-up and the last call's latency, and never\n"
            "  fills the sliding minute window ('rpm unknown' can exceed 1 without a 429): use --full")
        self.emit("rate-limited", f"== rate-limited: {RPM} calls/min, {LATENCY_MS:.0f} +- {JITTER_MS:.0f} ms, "
                  f"mixed manifest of {self.size('rate_items')} items (peers: first {cap or 'all'})", rows, note)

    def overhead(self) -> None:
        cap = self.size("overhead_peer_items")
        with EmulatorProcess() as emu:
            for kind, manifest in (("text", text_manifest(self.workdir, self.size("text_items"))),
                                   ("mixed", mixed_manifest(self.workdir, self.size("mixed_items")))):
                peer_manifest = head_manifest(manifest, cap) if cap else manifest
                rows = [self.run_arm(emu, "pipeline", manifest, "pipeline")]
                rows += [self.run_arm(emu, arm, manifest if arm == "threads" else peer_manifest, LABELS[arm])
                         for arm in ("sdk", "runinference", "threads")]
                self.emit("overhead", f"== overhead ({kind}): no limit, no latency, "
                          f"{self.size(kind + '_items')} items (sequential peers: first {cap or 'all'})", rows)

    def memory(self) -> None:
        rows = []
        with EmulatorProcess() as emu:
            for n in (self.size("memory_base_rows"), self.size("memory_rows")):
                result = self.run_arm(emu, "pipeline", text_manifest(self.workdir, n), f"pipeline, {n} rows")
                if result:
                    rows.append(dict(result, rows=n))
        self.results["memory"] = rows
        print("== memory: the pipeline's peak RSS by manifest size (text, no limit, no latency)")
        print(report.memory_table(rows), end="\n\n", flush=True)

    def v2(self) -> None:
        items = self.size("v2_items")
        with MediaServer(self.workdir) as media, EmulatorProcess(RPM, LATENCY_MS, JITTER_MS) as emu:
            emu.configure(task_ready_after_sec=TASK_READY_AFTER_SEC)
            manifest = v2_manifest(self.workdir, items, media.url)
            counts = v2_counts(manifest)
            rows = []
            for version in ("v2", "auto"):
                args = ["--api-version", version, "--task-poll-sec", str(TASK_POLL_SEC)]
                result = self.run_arm(emu, "pipeline", manifest, f"pipeline (api {version})", RPM, RPM, args,
                                      sample=True)
                if result:
                    rows.append(report.derive_v2(dict(result, counts=counts), RPM))
        self.results.setdefault("v2", []).extend(rows)
        print(report.v2_table(
            f"== v2: {RPM} requests/min (calls + polls), {LATENCY_MS:.0f} +- {JITTER_MS:.0f} ms, tasks ready after "
            f"{TASK_READY_AFTER_SEC:g} s, polled from {TASK_POLL_SEC:g} s; {items} items: {counts['text']} text, "
            f"{counts['image']} image, {counts['audio']} audio, {counts['video_file']} local video, "
            f"{counts['video_url']} video by URL", rows))
        for row in rows:
            print(self._v2_check(row))
        print(self._items_per_call_line(rows, counts))
        if not self.full:
            print("  note: wall time includes start-up and the last tasks' wait, which nothing else overlaps:\n"
                  "  a short run is weighed down by them; use --full")
        print(flush=True)

    def categories(self) -> None:
        from bench.categories import run_categories

        run_categories(self)

    def index(self) -> None:
        from bench.index import report as index_report, run_index

        result = run_index(self.index_rows, self.workdir, self.index_types)
        self.results.setdefault("index", []).append(result)
        print(index_report(result))
        print(flush=True)

    def adaptive(self) -> None:
        items = self.size("adaptive_items")
        manifest = text_manifest(self.workdir, items)
        rows = []
        with EmulatorProcess(ADAPTIVE_SERVER_RPM, LATENCY_MS, JITTER_MS) as emu:
            result = self.run_arm(emu, "pipeline", manifest, f"pipeline (rpm={ADAPTIVE_TOLD_RPM}, headers)",
                                  ADAPTIVE_TOLD_RPM, ADAPTIVE_SERVER_RPM, sample=True)
            if result:
                rows.append(report.derive_adaptive(result, ADAPTIVE_SERVER_RPM))
            emu.configure(rate_limit_headers=False)  # the limit unstated: learned from the 429 pattern
            result = self.run_arm(emu, "pipeline", manifest, f"pipeline (rpm={ADAPTIVE_TOLD_RPM}, no headers)",
                                  ADAPTIVE_TOLD_RPM, ADAPTIVE_SERVER_RPM, sample=True)
            emu.configure(rate_limit_headers=True)
            if result:
                rows.append(report.derive_adaptive(result, ADAPTIVE_SERVER_RPM))
        self.results.setdefault("adaptive", []).extend(rows)
        print(report.adaptive_table(
            f"== adaptive: told {ADAPTIVE_TOLD_RPM} calls/min, the server allows {ADAPTIVE_SERVER_RPM} (sliding 60 s), "
            f"{LATENCY_MS:.0f} +- {JITTER_MS:.0f} ms, text manifest of {items} items (1 item per call)",
            rows, ADAPTIVE_SERVER_RPM))
        print("  'of limit': calls/s over the arm's wall time / (limit/60); 'active': over first to last answer;\n"
              "  'last 60 s': the 60 s before the last answer; '10 s min/max': calls per 10 s from 60 s after the\n"
              "  first answer (the first window filled and slid out) to the last whole 10 s.\n"
              "  'no headers': the emulator's rate_limit_headers off, so the limit is learned from 429s alone.",
              flush=True)
        print(flush=True)

    def objstore(self) -> None:
        from tests.moto_s3 import MotoS3

        rows = []
        with MotoS3() as moto:
            for name, value in moto.env.items():
                os.environ.setdefault(name, value)  # the arms' S3 keys (boto3's default chain)
            for rpm, items in ((600, self.size("objstore_600_items")), (6000, self.size("objstore_6000_items"))):
                manifest = text_manifest(self.workdir, items)
                with EmulatorProcess(rpm, OBJSTORE_LATENCY_MS) as emu:
                    pair = [self.run_arm(emu, "pipeline", manifest, f"local disk, {rpm}/min", rpm, rpm, sample=True),
                            self.run_arm(emu, "pipeline", manifest, f"S3 (moto), {rpm}/min", rpm, rpm, sample=True,
                                         arm_args=[f"--beam-arg={a}" for a in moto.beam_args],
                                         output=f"s3://{moto.new_bucket()}/out")]
                rows += [report.derive_objstore(r, rpm) for r in pair if r]
        self.results.setdefault("objstore", []).extend(rows)
        print(report.objstore_table(f"== objstore: text manifest, {OBJSTORE_LATENCY_MS:.0f} ms latency, "
                                    f"{THREADS} in flight, output on local disk vs moto's S3 on loopback", rows))
        for local, s3 in zip(rows[::2], rows[1::2]):
            print(f"  {s3['label']} / {local['label']}: calls/s over the calls' span "
                  f"x{s3['active_calls_per_sec'] / local['active_calls_per_sec']:.2f}, over the wall "
                  f"x{s3['calls_per_sec'] / local['calls_per_sec']:.2f}; finalize x"
                  f"{s3['finalize_sec'] / local['finalize_sec'] if local['finalize_sec'] else float('nan'):.1f}")
        print(flush=True)

    def durable(self) -> None:
        items = self.size("durable_items")
        manifest = text_manifest(self.workdir, items)
        rows, rounds = [], DURABLE_ROUNDS[1 if self.full else 0]
        with EmulatorProcess() as emu:
            for _ in range(rounds):
                for flush, label in ((None, "pipeline (flush_sec 5, journal)"), (0, "pipeline (flush_sec 0)")):
                    args = [] if flush is None else ["--flush-sec", str(flush)]
                    result = self.run_arm(emu, "pipeline", manifest, label, arm_args=args, sample=True,
                                          watch_pieces=True)
                    if result:
                        rows.append(report.derive_durable(result))
        self.results.setdefault("durable", []).extend(rows)
        print(report.durable_table(f"== durable: no limit, no latency, text manifest of {items} items, default "
                                   f"flush vs a piece per call ({rounds} round{'s' if rounds > 1 else ''}, alternating)", rows))
        by: Dict[str, List[dict]] = {}
        for r in rows:
            by.setdefault(r["label"], []).append(r)
        if len(by) == 2:
            (a_label, a), (b_label, b) = by.items()
            rate = lambda rs: sum(r["items"] for r in rs) / sum(r["wall_sec"] for r in rs)  # noqa: E731
            per_round = ", ".join(f"{x['items_per_sec'] / y['items_per_sec']:.2f}" for x, y in zip(b, a))
            active = lambda rs: sum(r["items"] for r in rs) / sum(r["active_sec"] for r in rs)  # noqa: E731
            print(f"  {b_label} / {a_label}: items/s x{rate(b) / rate(a):.2f} over all rounds (per round: "
                  f"{per_round}); over the calls' span only x{active(b) / active(a):.2f}")
        print(flush=True)

    def scale(self) -> None:
        sizes = self.scale_rows or self.size("scale_rows")
        output = os.path.join(self.workdir, "scale-output")
        rows: List[dict] = []
        load0 = os.getloadavg()
        with EmulatorProcess() as emu:
            for n in sizes:
                added = max(1, int(n * SCALE_ADDED))
                grown = text_manifest(self.workdir, n + added)
                # rows spread over the output (a third and two thirds in), not its newest piece
                edited = edited_manifest(grown, [(k + 1) * n // (SCALE_EDITED + 1) for k in range(SCALE_EDITED)])
                runs = (("fresh", text_manifest(self.workdir, n), n),
                        (f"+{SCALE_ADDED:.0%} rows", grown, added),
                        (f"{SCALE_EDITED} rows edited", edited, SCALE_EDITED))
                shutil.rmtree(output, ignore_errors=True)
                try:
                    for run, manifest, expected in runs:
                        result = self.run_arm(emu, "pipeline", manifest, f"{n} rows, {run}", output=output,
                                              sample=True)
                        if result:
                            rows.append(report.derive_scale(dict(result, rows=n, run=run, expected_calls=expected),
                                                            _read_summary(output)))
                finally:
                    shutil.rmtree(output, ignore_errors=True)
        self.results.setdefault("scale", []).extend(rows)
        print(report.scale_table(
            f"== scale: text manifests of {', '.join(map(str, sizes))} rows, no limit, no latency; each output run "
            f"fresh, then +{SCALE_ADDED:.0%} new rows, then {SCALE_EDITED} rows' text changed "
            f"(load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} at the start)", rows))
        print(report.scale_ratios(rows), flush=True)
        print(flush=True)

    def upload(self) -> None:
        folder = os.path.join(self.workdir, "upload")
        store = os.path.join(folder, "emulator")
        os.makedirs(store, exist_ok=True)
        mib = 1024 * 1024
        files: Dict[int, str] = {}

        def media(mb: int) -> str:
            if mb not in files:
                files[mb] = up.make_wav(os.path.join(folder, f"upload-{mb}mb.wav"), mb * mib)
            return files[mb]

        def arm(emu, name: str, path: str, label: str, args: Sequence[str] = ()) -> Optional[dict]:
            if name not in self.arms:
                return None
            emu.reset()
            proc = up.ArmProcess(emu, name, ["--file", path, *args], os.path.join(folder, "arm.json"), ROOT,
                                 watch=[up.sdk_chunk_dir(path)])
            result = proc.run()
            result.update(arm=name, temp_peak=proc.temp_peak, emulator=emu.stats()["assets"],
                          load_1m=os.getloadavg()[0])
            emu.delete_asset(result["upload"]["asset_id"])
            return report.derive_upload(result, label)

        size_mb = self.size("upload_mb")
        try:
            with EmulatorProcess(asset_chunk_size=UPLOAD_CHUNK, asset_processing_sec=UPLOAD_PROCESSING_SEC,
                                 asset_storage_dir=store, quiet=True) as emu:
                path = media(size_mb)
                rows = [arm(emu, "upload-job", path, f"Uploader, {p} parallel chunks", ["--parallel", str(p)])
                        for p in UPLOAD_PARALLEL]
                sdk = arm(emu, "upload-sdk", path, f"SDK upload_file, max_workers {SDK_WORKERS}",
                          ["--parallel", str(SDK_WORKERS)])
                rows = [r for r in rows + [sdk] if r]
                self.results.setdefault("upload", []).extend(rows)
                print(report.upload_table(
                    f"== upload: a {size_mb} MB WAV from a local path, multipart, chunks of {UPLOAD_CHUNK // mib} MiB "
                    f"(MB = 2^20 bytes; load average {os.getloadavg()[0]:.2f})", rows))
                ours = [r for r in rows if r["arm"] == "upload-job"]
                if ours and sdk:
                    print(report.upload_ratios(ours, sdk))
                print("  upload s: session created to last chunk reported (our ensure() minus the wait for ready);\n"
                      "  hash s: our sha256 pass before it (the job's validate step; the SDK keys nothing);\n"
                      "  temp MB: largest size seen of the SDK's chunk folder (<file>_chunks, next to the file);\n"
                      "  CPU s: the arm's user+system over its work (hash, upload and wait);\n"
                      "  disk wr / read MB: the arm's /proc/self/io write_bytes over its work, rchar over the upload",
                      flush=True)
                print(flush=True)

                rss_rows = []
                for mb in self.size("upload_rss_mb"):
                    for via in ("local", "benchfs"):
                        row = arm(emu, "upload-job", media(mb), f"Uploader {via}, {mb} MB",
                                  ["--parallel", str(UPLOAD_PARALLEL[0]), "--via", via])
                        if row:
                            rss_rows.append(row)
                self.results.setdefault("upload", []).extend(rss_rows)
                print(report.upload_table(
                    f"== upload RSS: our Uploader ({UPLOAD_PARALLEL[0]} parallel chunks) by file size, local path vs "
                    "benchfs:// (Beam's DownloaderStream in a 16 MiB BufferedReader, as s3io/gcsio)", rss_rows))
                by = {(r["upload"]["via"], r["size"]): r for r in rss_rows}
                small, big = (m * mib for m in self.size("upload_rss_mb"))
                for via in ("local", "benchfs"):
                    if (via, small) in by and (via, big) in by:
                        a, b = by[(via, small)], by[(via, big)]
                        growth = [r["peak_rss_mb"] - r["start_rss_mb"] for r in (a, b)]
                        print(f"  {via}: peak RSS {big // mib} MB / {small // mib} MB x"
                              f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}; growth over start {growth[0]:.0f} -> "
                              f"{growth[1]:.0f} MB; bytes read per byte uploaded {b['read_bytes'] / b['size']:.2f}")
                print(flush=True)

                kill_rows = []
                kill_mb = self.size("upload_kill_mb")
                path = media(kill_mb)
                for name, label, args in (
                        ("upload-job", f"Uploader, {UPLOAD_PARALLEL[0]} parallel",
                         ["--parallel", str(UPLOAD_PARALLEL[0])]),
                        ("upload-sdk", f"SDK, max_workers {SDK_WORKERS}", ["--parallel", str(SDK_WORKERS)])):
                    if name in self.arms:
                        kill_rows.append(self._upload_kill(emu, folder, name, label, path, args))
                self.results.setdefault("upload-kill", []).extend(kill_rows)
                print(report.upload_kill_table(
                    f"== upload kill/rerun: SIGKILL once the emulator accepted half of a {kill_mb} MB upload, then run "
                    "again; bytes accepted over both runs", kill_rows))
                print("  ours: the rerun reads the asset journal (OUTPUT/assets/) and carries the session on;\n"
                      "  target: the file + one chunk + the chunks in flight at the kill (max_parallel_chunks).\n"
                      "  SDK: nothing is kept across a kill: a new session and the whole file again; its chunk copies\n"
                      "  stay on disk after the kill ('left on disk') until a later run of the same file removes them.",
                      flush=True)
                print(flush=True)
        finally:
            up.remove(folder)

    def _upload_kill(self, emu: EmulatorProcess, folder: str, name: str, label: str, path: str,
                     args: Sequence[str]) -> dict:
        size = os.path.getsize(path)
        output = os.path.join(folder, "kill-output")
        up.remove(output)
        emu.reset()
        out = os.path.join(folder, "arm.json")
        extra = ["--output", output] if name == "upload-job" else []
        first = up.ArmProcess(emu, name, ["--file", path, *args, *extra], out, ROOT, kill_at_bytes=size // 2)
        first.run()
        if first.killed_at is None:
            raise SystemExit(f"{label}: finished before the kill at half ({first.returncode})")
        time.sleep(0.5)  # PUTs cut by the kill end on the emulator's side
        at_kill = emu.stats()["assets"]
        left = up.dir_bytes(up.sdk_chunk_dir(path)) if name == "upload-sdk" else 0
        second = up.ArmProcess(emu, name, ["--file", path, *args, *extra], out, ROOT, watch=[up.sdk_chunk_dir(path)])
        result = second.run()
        stats = emu.stats()["assets"]
        emu.delete_asset(result["upload"]["asset_id"])
        up.remove(output)
        parallel = int(args[args.index("--parallel") + 1])
        return {"arm": name, "label": label, "size": size, "killed_at": at_kill["chunk_bytes_accepted"],
                "killed_at_sampled": first.killed_at, "left_on_disk": left, "rerun_sec": result["upload"]["upload_sec"],
                "rerun": result["upload"], "rerun_peak_rss_mb": result["peak_rss_mb"], "temp_peak": second.temp_peak,
                "total_accepted": stats["chunk_bytes_accepted"], "total_received": stats["chunk_bytes_received"],
                "sessions": stats["sessions_created"], "chunk_size": UPLOAD_CHUNK,
                "target_excess": UPLOAD_CHUNK * (1 + parallel) if name == "upload-job" else None,
                "emulator": stats}

    @staticmethod
    def _v2_check(row: dict) -> str:
        """The job's own counts beside the emulator's; dead letters and deferrals would shrink 'items'."""
        s = row.get("summary") or {}
        tasks = s.get("tasks") or {}
        routes = (s.get("api") or {}).get("items_by_route") or {}
        return (f"  {row['label']}: routes v1 {routes.get('v1', 0)} / v2 {routes.get('v2', 0)} / task "
                f"{routes.get('task', 0)} items; job counted {s.get('calls')} calls, {s.get('task_polls')} polls, "
                f"{tasks.get('created', 0)} tasks created, {tasks.get('ready', 0)} ready, {s.get('http_429')} 429s, "
                f"{s.get('retries')} retries, {s.get('dead_letters')} dead letters, {s.get('deferred')} deferred; "
                f"{row['polls'] / tasks['created']:.2f} polls per task" if tasks.get("created") else
                f"  {row['label']}: {s}")

    def _items_per_call_line(self, rows: List[dict], counts: Dict[str, int]) -> str:
        by = {r["label"].split("api ")[-1].rstrip(")"): r for r in rows}
        parts = []
        ours = [r for r in self.results.get("rate-limited", []) if r["arm"] == "pipeline" and r.get("calls")]
        if ours:
            parts.append(f"v1 rate-limited scenario {ours[0]['items'] / ours[0]['calls']:.2f}")
        if "auto" in by:
            auto = by["auto"]
            videos = counts["video_file"] + counts["video_url"]  # one embed POST each on auto
            v1_items, v1_calls = auto["items"] - videos, auto["calls"] - videos
            if v1_calls > 0:
                parts.append(f"v1 packed (auto arm's text/image/audio) {v1_items / v1_calls:.2f}")
            parts.append(f"auto arm as a whole {auto['items_per_call']:.2f} ({auto['items_per_request']:.2f} "
                         "per call or poll)")
        if "v2" in by:
            parts.append(f"v2 arm {by['v2']['items_per_call']:.2f} ({by['v2']['items_per_request']:.2f} per call "
                         "or poll)")
        return "  items per call: " + "; ".join(parts)


def _read_summary(output: str) -> dict:
    """OUTPUT/summary.json, the last run's (empty if it is missing)."""
    try:
        with open(os.path.join(output, "summary.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only this scenario (repeatable; default all)")
    parser.add_argument("--full", action="store_true", help="the full sizes (several minutes)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    parser.add_argument("--peer-cap", type=int, help="items the slow peers run over (0: the whole manifest); "
                        "default 40 under the limit (--full 600) and 1000 for the sequential ones without")
    parser.add_argument("--scale-rows", type=lambda v: tuple(int(n) for n in v.split(",") if n.strip()),
                        help="scale: comma-separated manifest sizes (default 10000,30000; --full "
                             "10000,100000,300000); ratios are to the first")
    parser.add_argument("--rows", type=int, default=1_000_000, help="index: segment rows (default 1,000,000)")
    parser.add_argument("--index-types", type=lambda v: tuple(t.strip().upper() for t in v.split(",") if t.strip()),
                        default=(), help="index: also measure these (IVF_PQ, IVF_SQ, IVF_RQ, IVF_FLAT, IVF_HNSW_SQ, "
                                         "IVF_HNSW_PQ), each built in turn before the chosen one")
    parser.add_argument("--json", help="also save the raw numbers here")
    parser.add_argument("--workdir", help="where generated manifests and media go (kept, and reused); "
                                          "default a temp folder removed at the end")
    args = parser.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = os.path.abspath(args.workdir) if args.workdir else tmp
        os.makedirs(workdir, exist_ok=True)
        bench = Bench(args, workdir)
        for scenario in args.scenario or SCENARIOS:
            getattr(bench, scenario.replace("-", "_"))()
    print(f"done in {time.perf_counter() - started:.0f} s on {os.cpu_count()} cores")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"full": args.full, "sizes": SIZES, "results": bench.results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
