"""Uploads a large media file as a platform asset, once: streamed in chunks, resumable across kills.

    Uploader.ensure(item) -> asset_id (ready)
      known ready asset of the same bytes  -> reused (checked with one GET; gone -> uploaded again)
      known failed asset of the same bytes -> AssetFailed again, nothing uploaded
      known multipart session still active -> only the chunks the platform lacks are sent
      otherwise                            -> direct upload (<= 200 MB) or a multipart session
    then polls the asset until `ready` (AssetFailed on `failed`, AssetNotReady past the run's wait).

Files are read through Beam FileSystems a chunk at a time, never whole, so a 10 GB file in a bucket costs
`max_parallel_chunks` chunks of memory and no local copy. Every id is committed to the asset journal
(transforms.store.assets) before it is relied on. Every API request goes through a calling engine's `Caller.request`
(its own pacer: the assets category), so uploads are retried and throttled as calls are and counted in the stats of
the call they upload for."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional

from apache_beam.io.filesystems import FileSystems

from embed_client import EmbedClient, errors
from embed_client.pacing.local import TokenBucket
from transforms.calling.engine import Caller, CallStats, WorkerState, error_code, is_service_failure
from transforms.progress import PROGRESS
from transforms.records import Item
from transforms.settings import ApiKeyRejected, CallSettings, make_client
from transforms.store.assets import AssetBook, AssetJournal, AssetRecord, UploadRecord, read_asset_journal

__all__ = ["DIRECT_UPLOAD_MAX", "MULTIPART_MAX", "AssetFailed", "AssetNotReady", "Cleanup", "UploadStats",
           "Uploader", "process_uploader"]

_LOGGER = logging.getLogger(__name__)
_MB = 1024 * 1024
# The platform's limits (API-ASSETS-FACTS.md): a direct upload takes audio/video up to 200 MB, a multipart
# session up to 10 GB.
DIRECT_UPLOAD_MAX = 200 * _MB
MULTIPART_MAX = 10 * 1024 * _MB
# Chunks reported to the platform per call (the SDK's helper reports 10 at a time).
_REPORT_BATCH = 10
# Presigned URLs asked for per call when the initial set does not cover every chunk.
_URL_BATCH = 50
# A chunk PUT is retried this often (with a fresh URL when its URL expired or was used).
_CHUNK_ATTEMPTS = 5
_MAX_POLL_SEC = 30.0


class AssetFailed(Exception):
    """The platform could not process the uploaded media; not uploaded again while its bytes are unchanged."""

    def __init__(self, asset_id: str, reason: Optional[str]):
        super().__init__(f"asset {asset_id} failed processing: {reason or 'no reason given'}")
        self.asset_id, self.reason = asset_id, reason


class AssetNotReady(Exception):
    """Still processing after the run's wait; the asset is kept and the next run picks it up."""

    def __init__(self, asset_id: str):
        super().__init__(f"asset {asset_id} is still processing")
        self.asset_id = asset_id


@dataclasses.dataclass
class UploadStats:
    """What the uploads of one process did in a run (summed into Beam metrics by the calling step)."""

    uploaded: int = 0           # assets created from our bytes
    reused: int = 0             # ready assets of earlier runs (or earlier items) used as they were
    reuploaded: int = 0         # recorded assets that were gone (404), uploaded again
    sessions_restarted: int = 0  # multipart sessions that had expired, started again
    resumed: int = 0            # multipart sessions of an earlier run carried on
    bytes_uploaded: int = 0
    upload_seconds: float = 0.0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def add(self, **counts) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def take(self) -> Dict[str, float]:
        """The counts since the last take (what the calling step adds to its metrics)."""
        with self._lock:
            names = [f.name for f in dataclasses.fields(self) if not f.name.startswith("_")]
            out = {n: getattr(self, n) for n in names}
            for n in names:
                setattr(self, n, type(out[n])())
        return out


class _Chunks:
    """Reads chunk `index` (1-based) of a file through FileSystems, with one open stream and one chunk buffer per
    reading thread: on an object store each open is a request and a handshake, so a thread reads on from where
    its last chunk ended, and seeks only when its next chunk lies elsewhere. The bytes go straight into the
    thread's buffer (readinto): a read() of Beam's remote streams copies each chunk twice more, and a new
    chunk-sized block per read left the allocator holding tens of MB. `close()` closes every stream it opened."""

    def __init__(self, path: str, size: int, chunk_size: int):
        self.path, self.size, self.chunk_size = path, size, chunk_size
        self._local = threading.local()  # .stream: [raw stream, its position, the thread's chunk buffer]
        self._streams: List = []
        self._lock = threading.Lock()

    def length(self, index: int) -> int:
        start = (index - 1) * self.chunk_size
        return max(0, min(self.chunk_size, self.size - start))

    def _stream(self) -> list:
        held = getattr(self._local, "stream", None)
        if held is None:
            stream = FileSystems.open(self.path, compression_type="uncompressed")
            with self._lock:
                self._streams.append(stream)
            # Past the reader's read-ahead: Beam's remote readers buffer 16 MiB per open stream, which for
            # 5 MiB chunks tripled the bytes fetched and held 16 MiB per chunk in flight.
            held = self._local.stream = [getattr(stream, "raw", stream), 0, bytearray(self.chunk_size)]
        return held

    def read(self, index: int) -> memoryview:
        """The chunk's bytes: a view of this thread's buffer, valid until the thread reads its next chunk."""
        want = self.length(index)
        start = (index - 1) * self.chunk_size
        held = self._stream()
        raw, view = held[0], memoryview(held[2])[:want]
        if held[1] != start:
            raw.seek(start)
        held[1] = None  # unknown until this read ends (a read that raises leaves it so: the next one seeks)
        got = 0
        while got < want:
            n = raw.readinto(view[got:])
            if not n:
                break
            got += n
        held[1] = start + got
        if got != want:
            raise OSError(f"{self.path} changed while uploading (chunk {index} is {got} bytes)")
        return view

    def close(self) -> None:
        with self._lock:
            streams, self._streams = self._streams, []
        for stream in streams:
            stream.close()


class Cleanup(NamedTuple):
    """What `Uploader.delete` did: assets deleted, and assets kept because their delete was refused or failed."""

    deleted: List[str]
    kept: List[str]


class Uploader:
    """One per process and run (held by the worker state): uploads, resumes and waits for assets.

    `requests`: the engine that sends every API request (its pacer is the assets category's; default: unpaced
    until a 429, with a quota of its own)."""

    def __init__(self, settings: CallSettings, client: EmbedClient, journal: AssetJournal, book: AssetBook,
                 requests: Optional[Caller] = None, sleep: Callable[[float], None] = time.sleep):
        self.settings, self.client, self.journal, self.book = settings, client, journal, book
        self.requests = requests or Caller(settings, client, TokenBucket(None))
        self.stats = UploadStats()
        self._sleep = sleep
        self._retry = settings.retry_policy()
        self._locks: Dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._chunk_pool = concurrent.futures.ThreadPoolExecutor(settings.max_parallel_chunks,
                                                                 thread_name_prefix="asset-chunk")

    def close(self) -> None:
        self._chunk_pool.shutdown(wait=False, cancel_futures=True)

    # ---- the one entry point ----------------------------------------------------------------------------

    def ensure(self, item: Item, stats: Optional[CallStats] = None) -> str:
        """The id of a ready asset holding `item`'s file bytes, uploading them only if no such asset exists.
        `stats`: the call's, which the requests' retries, 429s and seconds throttled are added to."""
        with self._lock_for(item.file_sha256):  # identical files of one process: the first uploads
            return self._ensure(item, stats)

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    def _ensure(self, item: Item, stats: Optional[CallStats]) -> str:
        sha = item.file_sha256
        known = self.book.assets.get(sha)
        if known is not None:
            asset_id = self._known_asset(known, stats)
            if asset_id is not None:
                return asset_id
        asset_id = self._resume(item, stats) or self._upload(item, stats)
        self._remember(sha, asset_id, "uploaded")
        return self._wait_ready(sha, asset_id, stats)

    def _known_asset(self, known: AssetRecord, stats: Optional[CallStats]) -> Optional[str]:
        if known.status == "failed":
            raise AssetFailed(known.asset_id, known.error)
        try:
            asset = self._api(lambda: self.client.assets.retrieve(known.asset_id), stats)
        except errors.NotFoundError:
            _LOGGER.info("asset %s of an earlier run is gone: uploading its file again", known.asset_id)
            self.stats.add(reuploaded=1)
            del self.book.assets[known.sha256]
            return None
        if asset.status == "failed":
            self._remember(known.sha256, known.asset_id, "failed", asset.error)
            raise AssetFailed(known.asset_id, asset.error)
        self.stats.add(reused=1)
        if asset.status == "ready":
            return known.asset_id
        return self._wait_ready(known.sha256, known.asset_id, stats)

    def _remember(self, sha: str, asset_id: str, status: str, error: Optional[str] = None) -> None:
        self.journal.asset(sha, asset_id, status, error)
        self.book.assets[sha] = AssetRecord(sha, asset_id, status, error)

    # ---- waiting for processing -----------------------------------------------------------------------------

    def _wait_ready(self, sha: str, asset_id: str, stats: Optional[CallStats]) -> str:
        deadline = time.monotonic() + self.settings.asset_ready_timeout_sec
        wait = self.settings.asset_poll_sec
        while True:
            asset = self._api(lambda: self.client.assets.retrieve(asset_id), stats)
            if asset.status == "ready":
                if self.book.assets.get(sha) is None or self.book.assets[sha].status != "ready":
                    self._remember(sha, asset_id, "ready")
                return asset_id
            if asset.status == "failed":
                self._remember(sha, asset_id, "failed", asset.error)
                raise AssetFailed(asset_id, asset.error)
            if time.monotonic() + wait > deadline:
                raise AssetNotReady(asset_id)
            self._sleep(wait)
            wait = min(wait * 1.5, _MAX_POLL_SEC)

    # ---- uploading ----------------------------------------------------------------------------------------

    def _upload(self, item: Item, stats: Optional[CallStats]) -> str:
        started = time.monotonic()
        if item.file_size <= min(self.settings.direct_upload_max_bytes, DIRECT_UPLOAD_MAX):
            asset_id = self._direct(item, stats)
        else:
            asset_id = self._multipart(item, stats)
        self.stats.add(uploaded=1, upload_seconds=time.monotonic() - started)
        return asset_id

    def _direct(self, item: Item, stats: Optional[CallStats]) -> str:
        name = item.input_file_name

        def send():
            with FileSystems.open(item.file_path, compression_type="uncompressed") as stream:
                return self.client.assets.create(method="direct", file=(name, stream), filename=name)

        asset = self._api(send, stats)
        self.stats.add(bytes_uploaded=item.file_size)
        PROGRESS.add(bytes_uploaded=item.file_size)
        return asset.id

    def _multipart(self, item: Item, stats: Optional[CallStats]) -> str:
        session = self._api(lambda: self.client.multipart_upload.create(
            filename=item.input_file_name, type=item.modality, total_size=item.file_size), stats)
        record = UploadRecord(session.upload_id, session.asset_id, item.file_sha256, session.chunk_size,
                              session.total_chunks, item.file_size, session.expires_at)
        # Committed before any byte is sent: a rerun after a kill carries this session on.
        self.journal.session(record.sha256, record.upload_id, record.asset_id, record.chunk_size,
                             record.total_chunks, record.size, record.expires_at)
        self.book.sessions[record.sha256] = record
        urls = {u.chunk_index: u.url for u in session.upload_urls}
        self._send_chunks(item, record, set(), urls, getattr(session, "upload_headers", None), stats)
        return record.asset_id

    def _resume(self, item: Item, stats: Optional[CallStats]) -> Optional[str]:
        """Carries on an earlier run's session of the same bytes; None when there is none to carry on."""
        record = self.book.sessions.get(item.file_sha256)
        if record is None or record.size != item.file_size:
            return None
        try:
            status = self._api(lambda: self.client.multipart_upload.get_status(record.upload_id), stats)
        except errors.NotFoundError:
            status = None
        state = None if status is None else status.status
        if state == "completed":
            return record.asset_id
        if state != "active":
            _LOGGER.info("upload session %s is %s: starting a new one", record.upload_id, state or "gone")
            self.stats.add(sessions_restarted=1)
            del self.book.sessions[item.file_sha256]
            return None
        done = self._completed_chunks(record, status, stats)
        started = time.monotonic()
        self.stats.add(resumed=1)
        self._send_chunks(item, record, done, {}, None, stats)
        self.stats.add(upload_seconds=time.monotonic() - started)
        return record.asset_id

    def _completed_chunks(self, record: UploadRecord, status, stats: Optional[CallStats]) -> set:
        """Chunks the platform holds, over every page of the session's status."""
        done = {c.index for c in status.uploaded_chunks if c.status == "completed"}
        page, pages = 1, int((status.page_info or {}).get("total_page") or 1)
        while page < pages:
            page += 1
            more = self._api(lambda: self.client.multipart_upload.get_status(record.upload_id, page=page), stats)
            done.update(c.index for c in more.uploaded_chunks if c.status == "completed")
        return done

    def _send_chunks(self, item: Item, record: UploadRecord, done: set, urls: Dict[int, str],
                     headers: Optional[Dict[str, str]], stats: Optional[CallStats]) -> None:
        chunks = _Chunks(item.file_path, record.size, record.chunk_size)
        # Sent by an earlier run but never reported: reported now, not sent again.
        to_report = sorted(i for i in record.etags if i not in done)
        missing = [i for i in range(1, record.total_chunks + 1) if i not in done and i not in record.etags]
        lock = threading.Lock()

        def report(force: bool) -> None:
            with lock:
                if not to_report or (len(to_report) < _REPORT_BATCH and not force):
                    return
                batch = to_report[:]
                del to_report[:]
            self._api(lambda: self.client.multipart_upload.report_chunk_batch(
                record.upload_id, completed_chunks=[{"chunk_index": i, "proof": record.etags[i],
                                                     "chunk_size": chunks.length(i)} for i in batch]), stats)
            self.journal.reported(record.upload_id, batch)
            record.reported.update(batch)

        report(force=True)

        stop = threading.Event()  # one chunk failed for good: the others stop instead of sending on

        def put(index: int) -> None:
            if stop.is_set():
                return
            etag = self._put_chunk(record, chunks, index, urls, headers, stop, stats)
            if etag is None:
                return
            record.etags[index] = etag
            self.journal.chunk(record.upload_id, index, etag)
            self.stats.add(bytes_uploaded=chunks.length(index))
            PROGRESS.add(bytes_uploaded=chunks.length(index))  # the progress line shows uploads as they go
            with lock:
                to_report.append(index)
            report(force=False)

        # Bounded: at most max_parallel_chunks chunks are read and in flight at once.
        pending = set()
        try:
            for index in missing:
                if len(pending) >= self.settings.max_parallel_chunks:
                    finished, pending = concurrent.futures.wait(pending,
                                                                return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in finished:
                        future.result()
                pending.add(self._chunk_pool.submit(put, index))
            for future in concurrent.futures.as_completed(pending):
                future.result()
        except BaseException:
            stop.set()
            concurrent.futures.wait(pending)  # what was sent is journaled; the next run reports it
            raise
        finally:
            chunks.close()
        report(force=True)

    def _put_chunk(self, record: UploadRecord, chunks: _Chunks, index: int, urls: Dict[int, str],
                   headers: Optional[Dict[str, str]], stop: threading.Event, stats: Optional[CallStats]
                   ) -> Optional[str]:
        """The chunk's ETag; None when the upload stopped before it was sent. The PUTs go to storage, not the
        API (no pace, a fresh URL per retry), but their failures count toward an outage as calls' do."""
        data = chunks.read(index)
        wait = self._retry.initial_backoff_sec
        quota = self.requests.quota
        for attempt in range(1, _CHUNK_ATTEMPTS + 1):
            if stop.is_set():
                return None
            url = urls.get(index) or self._fresh_urls(record, index, urls, stats)
            try:
                etag = self.client.multipart_upload.put_chunk(url, data, headers=headers)
            except errors.EmbedError as exc:
                quota.service_result(is_service_failure(exc, paid=False), f"{error_code(exc)}: {exc.message}")
                urls.pop(index, None)  # a presigned URL is single use: the next try asks for a fresh one
                if attempt == _CHUNK_ATTEMPTS or not _chunk_retryable(exc):
                    raise
                _LOGGER.info("chunk %d of upload %s failed (%s); trying again", index, record.upload_id,
                             type(exc).__name__)
                self._sleep(wait)
                wait = min(wait * 2, self._retry.max_backoff_sec)
                continue
            quota.service_result(False)
            return etag
        raise AssertionError("unreachable")

    def _fresh_urls(self, record: UploadRecord, index: int, urls: Dict[int, str], stats: Optional[CallStats]) -> str:
        count = min(_URL_BATCH, record.total_chunks - index + 1)
        fresh = self._api(lambda: self.client.multipart_upload.get_additional_presigned_urls(
            record.upload_id, start=index, count=count), stats)
        for url in getattr(fresh, "upload_urls", fresh):
            urls.setdefault(url.chunk_index, url.url)
        return urls[index]

    # ---- every API request: the calls' engine, paced to the assets category ---------------------------------

    def _api(self, call, stats: Optional[CallStats]):
        return self.requests.request(call, stats)

    # ---- cleanup -----------------------------------------------------------------------------------------

    def delete(self, asset_ids: Iterable[str]) -> Cleanup:
        """Deletes assets this job uploaded (already gone counts as deleted). One the platform refuses (409:
        indexed assets reference it) or that fails to delete is kept and reported, never forced: the rest go on."""
        gone, kept = [], []
        for asset_id in asset_ids:
            try:
                self._api(lambda: self.client.assets.delete(asset_id), None)
            except errors.NotFoundError:
                pass
            except errors.ConflictError:
                _LOGGER.warning("asset %s is kept: the platform refuses to delete it while indexed assets reference "
                                "it (409); delete it with force=true if you mean to", asset_id)
                kept.append(asset_id)
                continue
            except (errors.EmbedError, ApiKeyRejected) as exc:
                _LOGGER.warning("asset %s could not be deleted (%s); it is kept", asset_id, type(exc).__name__)
                kept.append(asset_id)
                continue
            self.journal.deleted(asset_id)
            gone.append(asset_id)
        return Cleanup(gone, kept)


def _chunk_retryable(exc: errors.EmbedError) -> bool:
    """Worth another PUT: what can succeed later, and an expired or used URL (with a fresh one)."""
    return exc.is_retryable or getattr(exc, "needs_fresh_url", False)


def process_uploader(state: WorkerState, settings: CallSettings, output: Optional[str]) -> Uploader:
    """The process's uploader for this run, made once: its own client (callers' clients close with their DoFns),
    the asset journal read once, one lock per file content, and its requests on the calls' engine with the
    process's quota and wait meter but their own pace (the assets category)."""

    def make() -> Uploader:
        rate = settings.assets_requests_per_minute
        client = make_client(settings, settings.max_parallel_chunks + 4)
        pacer = TokenBucket(None if rate is None else rate / settings.max_workers)
        return Uploader(settings, client, AssetJournal(output, settings.run_id), read_asset_journal(output),
                        Caller(settings, client, pacer, state.quota, state.meter))

    return state.uploader(make)
