"""Assets on disk: their records, the background work that makes them ready or failed, and the lookup /embed-v2 uses."""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ..rules import MB
from ..stats import Stats
from ..tasks import rfc3339
from .check import CheckError, Inspection, inspect, sniff
from .spec import IMAGE_MAX, URL_MAX_AV

logger = logging.getLogger(__name__)

__all__ = ["Asset", "AssetStore"]

_BLOCK = 1 * MB


@dataclass
class Asset:
    id: str
    method: str                      # direct | url | multipart
    filename: str
    file_type: str                   # MIME type; the guess until processing ends
    kind: Optional[str]              # video | audio | image (None: a URL not fetched yet)
    created_at: float
    path: str                        # where its bytes are, once they are in
    user_metadata: Optional[dict] = None
    # None while the bytes are still coming (multipart before completion); then the earliest
    # time the processing may end.
    ready_at: Optional[float] = None
    outcome: Optional[Inspection] = None
    error: Optional[str] = None      # set with outcome None when processing failed
    done: bool = False               # the background work finished (outcome or error set)

    def status(self, now: float) -> str:
        if self.ready_at is None or not self.done or now < self.ready_at:
            return "processing"
        return "ready" if self.outcome is not None else "failed"


class AssetStore:
    """Every asset of one emulator instance. Bytes live in a folder of their own, made at open()
    and removed at close(); the work (URL fetch, multipart assembly, decode checks) runs on a
    small pool so no request waits for it."""

    def __init__(self, stats: Stats, clock: Callable[[], float] = time.time):
        self._stats = stats
        self._clock = clock
        self._lock = threading.Lock()
        self._assets: Dict[str, Asset] = {}
        self._folder: Optional[str] = None
        self._pool: Optional[ThreadPoolExecutor] = None

    # ---- lifecycle ------------------------------------------------------------------------

    def open(self, parent: Optional[str]) -> None:
        with self._lock:
            if self._folder is None:
                self._folder = tempfile.mkdtemp(prefix="embed-emulator-assets-", dir=parent)
                self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emulator-assets")

    def close(self) -> None:
        with self._lock:
            folder, self._folder = self._folder, None
            pool, self._pool = self._pool, None
            self._assets.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    @property
    def folder(self) -> str:
        if self._folder is None:
            raise RuntimeError("the asset store is not open (the emulator is not running)")
        return self._folder

    def scratch(self, suffix: str = "") -> str:
        """A new empty file in the store's folder (uploads land there before they are kept)."""
        fd, path = tempfile.mkstemp(suffix=suffix, dir=self.folder)
        os.close(fd)
        return path

    # ---- creation ---------------------------------------------------------------------------

    def _new(self, method: str, filename: str, file_type: str, kind: Optional[str],
             user_metadata: Optional[dict]) -> Asset:
        # 24 hex digits, the shape of the platform's ids (ObjectIds).
        asset_id = secrets.token_hex(12)
        asset = Asset(asset_id, method, filename, file_type, kind, self._clock(),
                      os.path.join(self.folder, asset_id + ".asset"), user_metadata)
        with self._lock:
            self._assets[asset_id] = asset
        self._stats.asset_created(method)
        return asset

    def add_file(self, source_path: str, filename: str, kind: str, file_type: str,
                 user_metadata: Optional[dict], processing_sec: float) -> Asset:
        """A direct upload whose bytes are already in `source_path` (moved, not copied)."""
        asset = self._new("direct", filename, file_type, kind, user_metadata)
        os.replace(source_path, asset.path)
        self._start(asset, processing_sec, lambda: self._inspect(asset))
        return asset

    def add_url(self, url: str, filename: str, user_metadata: Optional[dict],
                processing_sec: float, timeout: float) -> Asset:
        """A URL upload: `processing` while the URL is fetched (in the background), then checked."""
        asset = self._new("url", filename, sniff(b"", filename)[1], None, user_metadata)

        def work() -> Inspection:
            size = _fetch(url, asset.path, timeout, URL_MAX_AV)
            with open(asset.path, "rb") as f:
                asset.kind, asset.file_type = sniff(f.read(64), filename)
            if asset.kind == "image" and size > IMAGE_MAX:
                raise CheckError(f"The image at the URL is too large ({size} bytes); images "
                                 f"support up to {IMAGE_MAX // MB} MB.")
            return self._inspect(asset)

        self._start(asset, processing_sec, work)
        return asset

    def reserve(self, filename: str, kind: str, file_type: str,
                user_metadata: Optional[dict]) -> Asset:
        """The asset of a multipart session: its id exists at once, `processing` until complete()."""
        return self._new("multipart", filename, file_type, kind, user_metadata)

    def complete(self, asset_id: str, assemble: Callable[[str], None],
                 processing_sec: float) -> None:
        """Every chunk of a multipart asset is in: assemble it (in the background) and check it."""
        asset = self.get(asset_id)
        if asset is None:
            return

        def work() -> Inspection:
            assemble(asset.path)
            return self._inspect(asset)

        self._start(asset, processing_sec, work)

    def _start(self, asset: Asset, processing_sec: float, work: Callable[[], Inspection]) -> None:
        asset.ready_at = self._clock() + processing_sec
        pool = self._pool
        if pool is None:
            raise RuntimeError("the asset store is not open (the emulator is not running)")
        future: Future = pool.submit(self._run, asset, work)
        del future  # the outcome is written on the asset itself

    def _run(self, asset: Asset, work: Callable[[], Inspection]) -> None:
        try:
            asset.outcome = work()
            asset.file_type = asset.outcome.file_type
            self._stats.asset("ready")
        except CheckError as exc:
            asset.error = str(exc)
            self._stats.asset("failed")
        except Exception as exc:  # a bug, or the store closing under the work: still an answer
            logger.debug("asset %s processing failed", asset.id, exc_info=True)
            asset.error = f"The platform could not process the file ({exc.__class__.__name__})."
            self._stats.asset("failed")
        finally:
            asset.done = True

    @staticmethod
    def _inspect(asset: Asset) -> Inspection:
        size = os.path.getsize(asset.path)
        return inspect(asset.path, asset.kind or "video", size, asset.filename)

    # ---- reading ----------------------------------------------------------------------------

    def get(self, asset_id: str) -> Optional[Asset]:
        with self._lock:
            return self._assets.get(asset_id)

    def list(self, *, asset_ids: Optional[List[str]], asset_types: Optional[List[str]],
             filename: Optional[str]) -> List[Asset]:
        """Newest first (documented), after the filters."""
        with self._lock:
            rows = sorted(self._assets.values(), key=lambda a: a.created_at, reverse=True)
        if asset_ids:
            rows = [a for a in rows if a.id in asset_ids]
        if asset_types:
            rows = [a for a in rows if a.kind in asset_types]
        if filename:
            rows = [a for a in rows if filename.lower() in a.filename.lower()]
        return rows

    def delete(self, asset_id: str) -> bool:
        with self._lock:
            asset = self._assets.pop(asset_id, None)
        if asset is None:
            return False
        try:
            os.unlink(asset.path)  # an embed call that already opened it still reads it
        except OSError:
            pass
        self._stats.asset("deleted")
        return True

    def lookup(self, asset_id: str) -> Optional[Asset]:
        """For /embed-v2: the asset (its status(now), path, filename, error), or None."""
        return self.get(asset_id)

    def now(self) -> float:
        return self._clock()

    def detail(self, asset: Asset, now: float) -> dict:
        """The AssetDetail object (the Asset fields plus size, duration, technical_metadata, error)."""
        status = asset.status(now)
        body = self.summary(asset, status)
        if status == "ready" and asset.outcome is not None:
            body["size"] = asset.outcome.size
            if asset.outcome.duration is not None:
                body["duration"] = round(asset.outcome.duration, 6)
            body["technical_metadata"] = asset.outcome.technical
        elif status == "failed":
            body["error"] = {"message": asset.error or "The platform could not process the file."}
        return body

    @staticmethod
    def summary(asset: Asset, status: str) -> dict:
        """The Asset object POST /assets answers with."""
        body = {"_id": asset.id, "method": asset.method, "status": status,
                "filename": asset.filename, "file_type": asset.file_type,
                "created_at": rfc3339(asset.created_at)}
        if asset.user_metadata is not None:
            body["user_metadata"] = asset.user_metadata
        return body


def _fetch(url: str, dest: str, timeout: float, max_bytes: int) -> int:
    """Stream the body at `url` into `dest`; the size, or CheckError (unreachable, too large)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    opener = _LOOPBACK_OPENER if _is_loopback(host) else _DEFAULT_OPENER
    size = 0
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "embed-emulator"}),
                         timeout=timeout) as response, open(dest, "wb") as out:
            while True:
                block = response.read(_BLOCK)
                if not block:
                    return size
                size += len(block)
                if size > max_bytes:
                    raise CheckError(f"The file at the URL is larger than "
                                     f"{max_bytes // (1024 * MB)} GB.")
                out.write(block)
    except urllib.error.HTTPError as exc:
        raise CheckError(f"The platform could not download the file from the URL "
                         f"(HTTP {exc.code}).") from exc
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CheckError(f"The platform could not download the file from the URL ({reason}).") \
            from exc


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Loopback fetches (tests, local file servers) must not go through an env proxy.
_LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_DEFAULT_OPENER = urllib.request.build_opener()
