"""`python -m bench.arm NAME --manifest M --base-url U --out FILE [...]`: one arm in its own process.

Its own process so that peak RSS (`ru_maxrss`) belongs to that arm alone. CPU and wall time are
measured around the work only (after imports), and include any child processes it waited for.
Writes {"items", "wall_sec", "cpu_sec", "peak_rss_mb", "start_rss_mb", "started_at", "ended_at"} as JSON
to FILE (the two epoch times bound the work, so the bench can place the emulator's samples in it); the
pipeline arm adds "summary": the job's own counts (calls, task polls, tasks, 429s, items by route), and
"finalize": the job's finalize step (a step of the Beam job) as its summary reports it ({"sec",
"segment_rows_dropped", "segment_bytes_rewritten", "pieces_compacted"}).

The upload arms (`upload-job`: our Uploader, `upload-sdk`: twelvelabs' `upload_file`) take `--file` instead
of a manifest and add "upload": timings, the asset's status and the Uploader's counts (bench.upload), and
"io": the process's /proc/self/io counters over the work (write_bytes: what it wrote to disk).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import threading
import time

ARMS = ("pipeline", "handler", "sdk", "runinference", "threads", "upload-job", "upload-sdk")
UPLOAD_ARMS = ("upload-job", "upload-sdk")


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _rss_mb() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return max(own.ru_maxrss, children.ru_maxrss) / 1024.0  # kB on Linux


# The job's summary keys the bench keeps (the v2 scenario cross-checks the emulator's counts with them).
SUMMARY_KEYS = ("api", "tasks", "task_polls", "calls", "http_429", "retries", "items_embedded", "dead_letters",
                "by_category", "items_per_call",
                "dead_letters_by_reason", "deferred", "deferred_by_reason", "seconds_throttled", "call_latency_ms",
                "items_already_done", "items_deduplicated", "segment_rows_dropped", "seconds")


def run_pipeline(manifest: str, base_url: str, rpm, output: str, max_in_flight: int, extra=None,
                 **settings) -> int:
    """`settings`: more JobConfig fields (api_version, task_poll_sec, ...); `extra` gets the summary's counts."""
    from pipeline.config import JobConfig
    from pipeline.run import run_job

    beam_args = ["--runner=DirectRunner"] + list(settings.pop("beam_args", None) or [])
    config = JobConfig(manifests=[manifest], output=output, base_url=base_url, requests_per_minute=rpm,
                       max_in_flight=max_in_flight, pack=True, beam_args=beam_args, **settings)
    summary = run_job(config, base_url=base_url)
    if extra is not None:
        extra.update({key: summary.get(key) for key in SUMMARY_KEYS})
        # The job's finalize step (a step of the job itself), as its summary reports it.
        extra["finalize"] = {"sec": summary.get("finalize_seconds", 0.0),
                             **{key: summary.get(key, 0) for key in ("segment_rows_dropped", "segment_bytes_rewritten",
                                                                     "pieces_compacted")}}
    embedded = summary["items_embedded"]
    return sum(embedded.values()) if isinstance(embedded, dict) else int(embedded)


def _profiled(work, path: str):
    """cProfile of every thread the work starts (the calls run in pool threads), merged into one file."""
    import cProfile
    import pstats

    profiles = [cProfile.Profile()]

    def start_in_new_thread(*_):
        sys.setprofile(None)
        profiles.append(cProfile.Profile())
        profiles[-1].enable()

    threading.setprofile(start_in_new_thread)
    profiles[0].enable()
    try:
        return work()
    finally:
        profiles[0].disable()
        threading.setprofile(None)
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)  # threads still alive are cut where they stand
        stats.dump_stats(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.arm")
    parser.add_argument("arm", choices=ARMS)
    parser.add_argument("--manifest", help="the manifest (every arm but the upload ones)")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--output", help="the pipeline's output folder (default: a new temp folder)")
    parser.add_argument("--rpm", type=float, help="the limit the arm is told about (pipeline, threads)")
    parser.add_argument("--threads", type=int, default=8, help="pipeline max_in_flight / thread-pool size")
    parser.add_argument("--profile", help="write a cProfile of the work (all its threads, merged) here")
    parser.add_argument("--api-version", choices=("auto", "v1", "v2"), help="pipeline: api.version (default: the job's)")
    parser.add_argument("--task-poll-sec", type=float, help="pipeline: calls.task_poll_sec (default: the job's)")
    parser.add_argument("--max-tasks-in-flight", type=int, help="pipeline: calls.max_tasks_in_flight")
    parser.add_argument("--flush-sec", type=float, help="pipeline: output.flush_sec (0: a piece per call's results)")
    parser.add_argument("--model", help="pipeline: the model (default: the job's)")
    parser.add_argument("--category-rpm", action="append", default=[], metavar="CATEGORY=N",
                        help="pipeline: rate_limit.CATEGORY.requests_per_minute (repeatable)")
    parser.add_argument("--pack-waits", action="store_true",
                        help="pipeline: calls.pack_waits_for_every_category (packing tied to every category)")
    parser.add_argument("--beam-arg", action="append", dest="beam_args",
                        help="pipeline: one more Beam flag (the S3 endpoint of an output in a bucket); repeatable")
    parser.add_argument("--file", help="upload arms: the file to upload")
    parser.add_argument("--parallel", type=int, default=4,
                        help="upload-job: max_parallel_chunks; upload-sdk: max_workers")
    parser.add_argument("--via", choices=("local", "benchfs"), default="local",
                        help="upload-job: read the file by its local path or as benchfs:// (bench.benchfs)")
    args = parser.parse_args(argv)
    if (args.arm in UPLOAD_ARMS) != (args.file is not None) or (args.arm not in UPLOAD_ARMS and not args.manifest):
        parser.error("the upload arms take --file, the others --manifest")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TWELVE_LABS_API_KEY", "bench-key")

    # Each arm imports only what it needs, before the clock starts: an SDK loop carries no Beam.
    if args.arm == "pipeline":
        import pipeline.run  # noqa: F401
    elif args.arm in ("runinference", "handler"):
        import apache_beam.ml.inference.base  # noqa: F401
    elif args.arm in ("sdk", "upload-sdk"):
        import twelvelabs  # noqa: F401
    elif args.arm == "upload-job":
        import transforms.calling.upload  # noqa: F401
    if args.arm in UPLOAD_ARMS:
        from bench import upload
    else:
        from bench import peers

    settings = {name: getattr(args, name) for name in ("api_version", "task_poll_sec", "max_tasks_in_flight", "flush_sec",
                                                       "model", "beam_args")
                if getattr(args, name) is not None}
    for given in args.category_rpm:
        category, _, rate = given.partition("=")
        settings[f"{category}_requests_per_minute"] = float(rate)
    if args.pack_waits:
        settings["pack_waits_for_every_category"] = True
    extra: dict = {}
    upload_extra: dict = {}
    runners = {
        "upload-job": lambda: upload.run_upload_job(args.file, args.base_url, args.parallel, args.via, args.output,
                                                    upload_extra),
        "upload-sdk": lambda: upload.run_upload_sdk(args.file, args.base_url, args.parallel, upload_extra),
        "pipeline": lambda: run_pipeline(args.manifest, args.base_url, args.rpm,
                                         args.output or tempfile.mkdtemp(prefix="bench-out-"), args.threads,
                                         extra, **settings),
        "sdk": lambda: peers.run_sdk(args.manifest, args.base_url),
        "runinference": lambda: peers.run_runinference(args.manifest, args.base_url),
        "handler": lambda: peers.run_handler(args.manifest, args.base_url, args.rpm),
        "threads": lambda: peers.run_threads(args.manifest, args.base_url, args.rpm, args.threads),
    }
    io0 = upload.proc_io() if args.arm in UPLOAD_ARMS else {}
    start_rss, cpu0, started_at, t0 = _rss_mb(), _cpu(), time.time(), time.perf_counter()
    items = _profiled(runners[args.arm], args.profile) if args.profile else runners[args.arm]()
    wall, cpu, ended_at = time.perf_counter() - t0, _cpu() - cpu0, time.time()
    result = {"items": items, "wall_sec": wall, "cpu_sec": cpu, "peak_rss_mb": _rss_mb(),
              "start_rss_mb": start_rss, "started_at": started_at, "ended_at": ended_at}
    if upload_extra:
        result["upload"] = upload_extra
        result["io"] = {name: value - io0.get(name, 0) for name, value in upload.proc_io().items()}
    if extra:
        finalize = extra.pop("finalize", None)
        result["summary"] = extra
        if finalize is not None:
            result["finalize"] = finalize
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
