"""Multipart upload sessions: presigned chunk URLs, chunk PUTs stored on disk, chunk reports, and assembly."""
from __future__ import annotations

import hashlib
import math
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import BinaryIO, Callable, Dict, List, Optional, Tuple

from ..rules import ApiError, MB, invalid_message
from ..tasks import rfc3339
from .spec import CHUNK_PATH

__all__ = ["Session", "Grant", "StorageError", "SessionStore", "BodyStream"]

_BLOCK = 1 * MB


class StorageError(Exception):
    """A chunk PUT refused the way object storage refuses it: status, S3 error code, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BodyStream:
    """The request body of a chunk PUT as the HTTP layer hands it over (see server.py)."""
    length: Optional[int]  # Content-Length, None when chunked

    def read(self, size: int = -1) -> bytes:  # pragma: no cover - protocol
        raise NotImplementedError


@dataclass
class Grant:
    """One presigned URL: single use, for one chunk, until expires_at."""
    index: int
    expires_at: float
    ttl_sec: int
    used: bool = False


@dataclass
class Chunk:
    """A chunk whose bytes are on disk."""
    size: int
    etag: str                        # md5 hex, unquoted
    received_at: float
    reported_at: Optional[float] = None


@dataclass
class Session:
    id: str
    asset_id: str
    filename: str
    kind: str
    total_size: int
    chunk_size: int
    total_chunks: int
    created_at: float
    expires_at: float
    folder: str
    updated_at: float = 0.0
    chunks: Dict[int, Chunk] = field(default_factory=dict)
    failed: Dict[int, Tuple[str, float]] = field(default_factory=dict)  # index -> (error, when)
    grants: Dict[str, Grant] = field(default_factory=dict)             # signature -> grant
    completed_at: Optional[float] = None
    failure: Optional[str] = None

    def status(self, now: float) -> str:
        if self.completed_at is not None:
            return "completed"
        if self.failure is not None:
            return "failed"
        return "expired" if now >= self.expires_at else "active"

    def expected_size(self, index: int) -> int:
        if index < self.total_chunks:
            return self.chunk_size
        return self.total_size - self.chunk_size * (self.total_chunks - 1)

    def reported(self) -> List[int]:
        return sorted(i for i, c in self.chunks.items() if c.reported_at is not None)

    def chunk_path(self, index: int) -> str:
        return os.path.join(self.folder, f"{index}.part")


class SessionStore:
    """Every multipart session of one emulator instance; chunk bytes go to one folder per session
    (never held in memory: uploads run to gigabytes)."""

    def __init__(self, folder: Callable[[], str], clock: Callable[[], float] = time.time):
        self._folder = folder
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: Dict[str, Session] = {}

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()

    def now(self) -> float:
        return self._clock()

    # ---- the API side -------------------------------------------------------------------------

    def create(self, asset_id: str, filename: str, kind: str, total_size: int, chunk_size: int,
               session_ttl: float) -> Session:
        now = self._clock()
        upload_id = secrets.token_hex(12)
        folder = os.path.join(self._folder(), "upload-" + upload_id)
        os.makedirs(folder)
        session = Session(upload_id, asset_id, filename, kind, total_size, chunk_size,
                          max(1, math.ceil(total_size / chunk_size)), now, now + session_ttl,
                          folder, updated_at=now)
        with self._lock:
            self._sessions[upload_id] = session
        return session

    def get(self, upload_id: str) -> Optional[Session]:
        with self._lock:
            session = self._sessions.get(upload_id)
        if session is not None and session.status(self._clock()) == "expired":
            self._drop_bytes(session)  # an expired session can never complete: free the disk
        return session

    def incomplete(self) -> List[Session]:
        now = self._clock()
        with self._lock:
            rows = [s for s in self._sessions.values() if s.status(now) != "completed"]
        return sorted(rows, key=lambda s: s.created_at, reverse=True)

    def drop_asset(self, asset_id: str) -> None:
        """The asset was deleted: its session goes too."""
        with self._lock:
            gone = [s for s in self._sessions.values() if s.asset_id == asset_id]
            for session in gone:
                del self._sessions[session.id]
        for session in gone:
            self._drop_bytes(session)

    @staticmethod
    def _drop_bytes(session: Session) -> None:
        if os.path.isdir(session.folder) and session.completed_at is None:
            shutil.rmtree(session.folder, ignore_errors=True)

    def presign(self, session: Session, start: int, count: int, url_ttl: float,
                base: str) -> List[dict]:
        """Fresh URLs (PresignedURLChunk objects) for chunks start .. start+count-1."""
        now = self._clock()
        expires = min(now + url_ttl, session.expires_at)
        ttl = max(1, math.ceil(expires - now))
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        rows = []
        with self._lock:
            for index in range(start, start + count):
                signature = secrets.token_hex(32)
                session.grants[signature] = Grant(index, expires, ttl)
                # Shaped like an S3 presigned URL; only the signature matters to the emulator.
                url = (f"{base}{CHUNK_PATH}/{session.id}/{index}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                       f"&X-Amz-Date={stamp}&X-Amz-Expires={ttl}&X-Amz-SignedHeaders=host"
                       f"&X-Amz-Signature={signature}")
                rows.append({"chunk_index": index, "url": url, "expires_at": rfc3339(expires)})
        return rows

    def report(self, session: Session, chunks: List[dict]) -> Tuple[int, int]:
        """Record reported chunks ({chunk_index, proof, chunk_size}, already validated as JSON):
        (processed, duplicates). All or nothing: when one chunk fails verification (not uploaded,
        wrong ETag, wrong size) none is recorded, each failed one shows `failed` with its error in
        the session status, and ApiError 400 names them."""
        now = self._clock()
        with self._lock:
            seen, fresh, duplicates, problems = set(), [], 0, []
            for item in chunks:
                index = item["chunk_index"]
                chunk = session.chunks.get(index)
                if index in seen or (chunk is not None and chunk.reported_at is not None):
                    duplicates += 1
                    continue
                seen.add(index)
                proof = item["proof"].strip().strip('"').lower()
                if chunk is None:
                    problems.append((index, "the chunk was not uploaded to its presigned URL"))
                elif proof != chunk.etag:
                    problems.append((index, "the proof does not match the ETag of the uploaded "
                                            "chunk"))
                elif item["chunk_size"] != chunk.size:
                    problems.append((index, f"chunk_size {item['chunk_size']} does not match the "
                                            f"{chunk.size} bytes uploaded"))
                else:
                    fresh.append(chunk)
            if problems:
                for index, reason in problems:
                    session.failed[index] = (reason[0].upper() + reason[1:] + ".", now)
                session.updated_at = now
                detail = "; ".join(f"chunk {i}: {reason}" for i, reason in problems)
                raise ApiError(400, "parameter_invalid",
                               invalid_message("completed_chunks", f"Upload and report these "
                                               f"chunks again ({detail})."))
            for chunk in fresh:
                chunk.reported_at = now
            session.updated_at = now
            if len(session.reported()) == session.total_chunks and session.completed_at is None:
                session.completed_at = now
            return len(fresh), duplicates

    def assemble(self, session: Session, dest: str) -> None:
        """Concatenate the chunk files (on disk, block by block) into `dest`, then drop them."""
        with open(dest + ".tmp", "wb") as out:
            for index in range(1, session.total_chunks + 1):
                with open(session.chunk_path(index), "rb") as part:
                    shutil.copyfileobj(part, out, _BLOCK)
        os.replace(dest + ".tmp", dest)
        shutil.rmtree(session.folder, ignore_errors=True)

    # ---- the object-storage side: a PUT to a presigned URL ------------------------------------

    def check_grant(self, upload_id: str, index: int, signature: str) -> Tuple[Session, Grant]:
        """The session and grant a PUT may use, or StorageError (403 expired / used / bad
        signature, 404 no such upload)."""
        now = self._clock()
        with self._lock:
            session = self._sessions.get(upload_id)
            if session is None or session.completed_at is not None or session.failure:
                raise StorageError(404, "NoSuchUpload", "The specified upload does not exist. The "
                                   "upload ID may be invalid, or the upload may have been aborted "
                                   "or completed.")
            grant = session.grants.get(signature)
            if grant is None or grant.index != index:
                raise StorageError(403, "SignatureDoesNotMatch", "The request signature we "
                                   "calculated does not match the signature you provided.")
            if now >= grant.expires_at or now >= session.expires_at:
                raise StorageError(403, "AccessDenied", "Request has expired")
            if grant.used:
                raise StorageError(403, "AccessDenied", "The presigned URL has already been used; "
                                   "request a new one.")
            chunk = session.chunks.get(index)
            if chunk is not None and chunk.reported_at is not None:
                raise StorageError(403, "AccessDenied", "The chunk was already reported; it "
                                   "cannot be replaced.")
            return session, grant

    def receive(self, session: Session, index: int, body: BinaryIO, expected: int
                ) -> Tuple[str, int]:
        """Stream the body to a scratch file of the session: (its path, md5 hex); a body of the
        wrong length is StorageError 400 (S3's EntityTooSmall / EntityTooLarge)."""
        scratch = os.path.join(session.folder, f"{index}.{secrets.token_hex(4)}.incoming")
        digest = hashlib.md5()
        size = 0
        try:
            with open(scratch, "wb") as out:
                while True:
                    block = body.read(_BLOCK)
                    if not block:
                        break
                    size += len(block)
                    if size > expected:  # stop writing; the HTTP layer drains or closes
                        raise StorageError(400, "EntityTooLarge", _size_message(size, expected))
                    digest.update(block)
                    out.write(block)
            if size < expected:
                raise StorageError(400, "EntityTooSmall", _size_message(size, expected))
        except BaseException:
            _unlink(scratch)
            raise
        return scratch, digest.hexdigest()

    def commit(self, session: Session, grant: Grant, index: int, scratch: str, etag: str,
               size: int) -> None:
        """Keep the received chunk (replacing an unreported earlier upload of it) and spend the URL."""
        now = self._clock()
        with self._lock:
            if grant.used or session.completed_at is not None or (
                    index in session.chunks and session.chunks[index].reported_at is not None):
                _unlink(scratch)  # a concurrent PUT with the same URL, or a report, won
                raise StorageError(403, "AccessDenied", "The presigned URL has already been used; "
                                   "request a new one.")
            os.replace(scratch, session.chunk_path(index))
            grant.used = True
            session.chunks[index] = Chunk(size, etag, now)
            session.failed.pop(index, None)
            session.updated_at = now


def _size_message(size: int, expected: int) -> str:
    return (f"Your proposed upload {'exceeds' if size > expected else 'is smaller than'} the "
            f"chunk size: this chunk must be exactly {expected} bytes.")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
