"""The asset journal: what the job uploaded, committed to OUTPUT/assets/ before it is relied on.

Each event is a small committed piece (one JSON line), as task ids are, so a run killed at any moment leaves
a journal the next run can trust:

    {"event": "session", "sha256", "upload_id", "asset_id", "chunk_size", "total_chunks", "size", "expires_at"}
    {"event": "chunk", "upload_id", "index", "etag"}       a chunk PUT that succeeded (reported or not)
    {"event": "reported", "upload_id", "indexes": [...]}   chunks the platform was told about
    {"event": "asset", "sha256", "asset_id", "status": "uploaded" | "ready" | "failed", "error"}
    {"event": "deleted", "asset_id"}

A rerun reads them all (`read_asset_journal`) and, per file content, resumes an active session, reuses a
ready asset or reports a failed one again without uploading it."""
from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Set

from apache_beam.io.filesystems import FileSystems

from transforms.store.layout import ASSETS_DIR, commit, list_files, mkdirs, piece_name, read_jsonl

__all__ = ["AssetJournal", "AssetRecord", "UploadRecord", "read_asset_journal"]


@dataclasses.dataclass
class UploadRecord:
    """A multipart upload session and what of it is known to be sent."""

    upload_id: str
    asset_id: str
    sha256: str
    chunk_size: int
    total_chunks: int
    size: int
    expires_at: Optional[str] = None
    etags: Dict[int, str] = dataclasses.field(default_factory=dict)   # chunk index -> ETag of a PUT that worked
    reported: Set[int] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class AssetRecord:
    """The newest state of the asset of one file content."""

    sha256: str
    asset_id: str
    status: str                      # uploaded (processing), ready, failed
    error: Optional[str] = None
    run_id: Optional[str] = None


@dataclasses.dataclass
class AssetBook:
    """Every run's journal, read once: assets by content, upload sessions by content and by id."""

    assets: Dict[str, AssetRecord] = dataclasses.field(default_factory=dict)
    sessions: Dict[str, UploadRecord] = dataclasses.field(default_factory=dict)  # sha256 -> newest session
    deleted: Set[str] = dataclasses.field(default_factory=set)


def read_asset_journal(output: Optional[str]) -> AssetBook:
    book = AssetBook()
    if not output:
        return book
    by_upload: Dict[str, UploadRecord] = {}
    pending_chunks: List[dict] = []
    records = []
    for path in list_files(FileSystems.join(output, ASSETS_DIR), "*.jsonl"):
        records.extend(read_jsonl(path))
    records.sort(key=lambda r: r.get("at", 0.0))
    for record in records:
        event = record.get("event")
        if event == "session":
            session = UploadRecord(record["upload_id"], record["asset_id"], record["sha256"], int(record["chunk_size"]),
                                   int(record["total_chunks"]), int(record["size"]), record.get("expires_at"))
            by_upload[session.upload_id] = session
            book.sessions[session.sha256] = session
        elif event == "chunk":
            pending_chunks.append(record)
        elif event == "reported":
            session = by_upload.get(record.get("upload_id"))
            if session is not None:
                session.reported.update(int(i) for i in record.get("indexes", []))
        elif event == "asset":
            book.assets[record["sha256"]] = AssetRecord(record["sha256"], record["asset_id"], record["status"],
                                                        record.get("error"), record.get("run_id"))
            book.deleted.discard(record["asset_id"])
        elif event == "deleted":
            book.deleted.add(record["asset_id"])
    for record in pending_chunks:
        session = by_upload.get(record.get("upload_id"))
        if session is not None:
            session.etags[int(record["index"])] = record["etag"]
    for sha, asset in list(book.assets.items()):
        if asset.asset_id in book.deleted:
            del book.assets[sha]
    return book


class AssetJournal:
    """Commits each upload event to OUTPUT/assets/ (no output: remembers nothing, as in a plain pipeline)."""

    def __init__(self, output: Optional[str], run_id: str):
        self._dir = None if output is None else FileSystems.join(output, ASSETS_DIR)
        self._run_id = run_id
        self._worker = uuid.uuid4().hex[:8]
        self._sequence = 0
        self._lock = threading.Lock()  # chunk PUTs finish on many threads

    def session(self, sha256: str, upload_id: str, asset_id: str, chunk_size: int, total_chunks: int, size: int,
                expires_at: Optional[str]) -> None:
        self._write({"event": "session", "sha256": sha256, "upload_id": upload_id, "asset_id": asset_id,
                     "chunk_size": chunk_size, "total_chunks": total_chunks, "size": size, "expires_at": expires_at})

    def chunk(self, upload_id: str, index: int, etag: str) -> None:
        self._write({"event": "chunk", "upload_id": upload_id, "index": index, "etag": etag})

    def reported(self, upload_id: str, indexes: List[int]) -> None:
        self._write({"event": "reported", "upload_id": upload_id, "indexes": sorted(indexes)})

    def asset(self, sha256: str, asset_id: str, status: str, error: Optional[str] = None) -> None:
        self._write({"event": "asset", "sha256": sha256, "asset_id": asset_id, "status": status, "error": error})

    def deleted(self, asset_id: str) -> None:
        self._write({"event": "deleted", "asset_id": asset_id})

    def _write(self, record: Dict[str, Any]) -> None:
        if self._dir is None:
            return
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
        line = json.dumps({**record, "run_id": self._run_id, "at": time.time()}) + "\n"
        mkdirs(self._dir)
        commit(self._dir, piece_name(self._run_id, self._worker, sequence, ".jsonl"),
               lambda f: f.write(line.encode("utf-8")))


def uploaded_by(output: str, run_id: str) -> List[str]:
    """Asset ids this run uploaded and did not delete (what assets.delete_after_run deletes)."""
    ids: List[str] = []
    deleted: Set[str] = set()
    for path in list_files(FileSystems.join(output, ASSETS_DIR), "*.jsonl"):
        for record in read_jsonl(path):
            if record.get("event") == "asset" and record.get("run_id") == run_id and record.get("status") != "failed":
                ids.append(record["asset_id"])
            elif record.get("event") == "deleted":
                deleted.add(record["asset_id"])
    return sorted(set(ids) - deleted)
