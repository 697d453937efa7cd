"""python -m embed_emulator --port 0 ...: run the emulator until SIGTERM/SIGINT.

Prints one line, EMULATOR_URL=http://HOST:PORT/v1.3, once listening.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import List, Optional

from .config import EmulatorConfig
from .server import Emulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m embed_emulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--rpm", type=int, help="requests per minute (default unlimited)")
    p.add_argument("--rpd", type=int, help="requests per day (default unlimited)")
    p.add_argument("--day-length-sec", type=float, default=86400.0)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--fault-5xx", type=float, default=0.0)
    p.add_argument("--fault-429-burst", type=float, default=0.0)
    p.add_argument("--burst-sec", type=float, default=1.0)
    p.add_argument("--fault-hang", type=float, default=0.0)
    p.add_argument("--hang-sec", type=float, default=30.0)
    p.add_argument("--fault-drop", type=float, default=0.0)
    p.add_argument("--fault-malformed", type=float, default=0.0)
    p.add_argument("--fault-modality-error", type=float, default=0.0)
    p.add_argument("--seed", type=int)
    # Embed API v2 (/v1.3/embed-v2 and its async tasks)
    p.add_argument("--media-minutes-per-hour", type=float,
                   help="v2 audio/video minutes per hour (default unlimited)")
    p.add_argument("--media-minutes-per-day", type=float,
                   help="v2 audio/video minutes per day (default unlimited)")
    p.add_argument("--max-sync-media-sec-30", type=float, default=600.0,
                   help="longest audio/video a marengo3.0 sync call takes")
    p.add_argument("--task-ready-after-sec", type=float, default=2.0)
    p.add_argument("--task-failure-rate", type=float, default=0.0)
    p.add_argument("--task-retention-sec", type=float, default=7 * 86400.0)
    p.add_argument("--asset", action="append", default=[], metavar="ID=PATH",
                   help="an asset id that media_source.asset_id may name (repeatable)")
    # Assets and multipart uploads (/v1.3/assets...)
    p.add_argument("--asset-processing-sec", type=float, default=0.2,
                   help="an uploaded asset stays processing at least this long")
    p.add_argument("--asset-chunk-size", type=int, default=5 * 1024 * 1024,
                   help="chunk_size of multipart sessions, bytes")
    p.add_argument("--asset-initial-urls", type=int, default=10,
                   help="presigned URLs in a new multipart session")
    p.add_argument("--asset-url-ttl-sec", type=float, default=3600.0)
    p.add_argument("--asset-session-ttl-sec", type=float, default=86400.0)
    p.add_argument("--assets-rpm", type=int,
                   help="requests per minute of the assets category (default unlimited)")
    p.add_argument("--category-limit", action="append", default=[], metavar="CATEGORY.DIM=N",
                   help="a per-category limit, e.g. text.rpm=600, audio.dph=120 (categories text, image, audio, "
                        "video, assets; rpm, rpd, and for audio/video dph, dpd in media minutes); repeatable")
    p.add_argument("--chunk-put-delay-ms", type=float, default=0.0)
    p.add_argument("--chunk-put-fail-rate", type=float, default=0.0)
    p.add_argument("--asset-storage-dir", help="parent folder of the uploaded bytes (default: temp)")
    p.add_argument("--assets-referenced", action="store_true",
                   help="every asset counts as referenced by indexed assets: DELETE answers 409 unless force=true")
    p.add_argument("--api-key", action="append", default=[],
                   help="accepted key (repeatable; also EMULATOR_API_KEYS=a,b). Default: any key")
    p.add_argument("--log-level", default="WARNING")
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    assets = {}
    for item in args.asset:
        asset_id, sep, path = item.partition("=")
        if not sep or not asset_id or not path:
            raise ValueError(f"--asset takes ID=PATH, got {item!r}")
        assets[asset_id] = path
    categories: dict = {}
    for item in args.category_limit:
        name, sep, value = item.partition("=")
        category, dot, dim = name.partition(".")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not dot or number is None:
            raise ValueError(f"--category-limit takes CATEGORY.DIM=N (e.g. text.rpm=600), got {item!r}")
        categories.setdefault(category, {})[dim] = int(number) if number.is_integer() else number
    keys = list(args.api_key)
    keys += [k.strip() for k in os.environ.get("EMULATOR_API_KEYS", "").split(",") if k.strip()]
    return EmulatorConfig(
        api_keys=keys or None, requests_per_minute=args.rpm, requests_per_day=args.rpd,
        day_length_sec=args.day_length_sec, latency_ms=args.latency_ms,
        latency_jitter_ms=args.jitter_ms, fault_5xx_rate=args.fault_5xx,
        fault_429_burst_rate=args.fault_429_burst, fault_429_burst_sec=args.burst_sec,
        fault_hang_rate=args.fault_hang, fault_hang_sec=args.hang_sec,
        fault_drop_rate=args.fault_drop, fault_malformed_rate=args.fault_malformed,
        fault_modality_error_rate=args.fault_modality_error, seed=args.seed,
        media_minutes_per_hour=args.media_minutes_per_hour,
        media_minutes_per_day=args.media_minutes_per_day,
        max_sync_media_sec_30=args.max_sync_media_sec_30,
        task_ready_after_sec=args.task_ready_after_sec, task_failure_rate=args.task_failure_rate,
        task_retention_sec=args.task_retention_sec, assets=assets or None,
        asset_processing_sec=args.asset_processing_sec, asset_chunk_size=args.asset_chunk_size,
        asset_initial_urls=args.asset_initial_urls, asset_url_ttl_sec=args.asset_url_ttl_sec,
        asset_session_ttl_sec=args.asset_session_ttl_sec,
        assets_requests_per_minute=args.assets_rpm, chunk_put_delay_ms=args.chunk_put_delay_ms,
        chunk_put_fail_rate=args.chunk_put_fail_rate, category_limits=categories or None,
        asset_storage_dir=args.asset_storage_dir, assets_referenced=args.assets_referenced)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"embed_emulator: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Emulator(config, args.host, args.port) as emulator:
        print(f"EMULATOR_URL={emulator.base_url}", flush=True)
        while not stop.wait(0.5):  # a timed wait lets the signal handler run
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
