"""HTTP plumbing (stdlib ThreadingHTTPServer, keep-alive) and the Emulator that runs it.

Every response goes out in one write with TCP_NODELAY set: otherwise Nagle plus the
client's delayed ACK add ~40 ms to each keep-alive call.
"""
from __future__ import annotations

import hashlib
import json
import logging
import socket
import socketserver
import threading
from contextlib import contextmanager
from http import HTTPStatus
import http.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional
from urllib.parse import parse_qs, urlsplit

from .assets import ASSETS_PATH, CHUNK_PATH, AssetService
from .categories import CategoryLimiter
from .config import EmulatorConfig
from .faults import FaultInjector
from .limits import MediaMinutesLimiter, RateLimiter
from .reply import Reply, json_reply
from .service import EmbedService
from .stats import Stats
from .tasks import TaskStore
from .v2 import V2_PATH, V2Service

logger = logging.getLogger(__name__)

__all__ = ["Emulator", "serve", "EMBED_PATH", "V2_PATH", "ASSETS_PATH"]

API_PREFIX = "/v1.3"
EMBED_PATH = API_PREFIX + "/embed"
MAX_BODY_BYTES = 100 * 1024 * 1024  # emulator choice: above the 36 MB audio limit plus form overhead
# What is left of a body nobody read (a refused upload) is read and dropped up to this much, so the
# connection stays usable; a longer rest closes the connection instead.
DRAIN_MAX_BYTES = 8 * 1024 * 1024


# The headers that state the limit; `rate_limit_headers: false` leaves them out (Retry-After stays).
_LIMIT_STATEMENT = frozenset({"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-used", "x-ratelimit-reset"})

class _BodyError(Exception):
    """The request body could not be read; the connection must close."""


class _BodyStream:
    """A request body read as a stream (Content-Length or chunked), for uploads that go to disk
    instead of memory. read() returns b"" at the end; `length` is None when chunked."""

    def __init__(self, rfile, headers):
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        if self._chunked:
            self.length = None
        else:
            try:
                self.length = int(headers.get("Content-Length") or 0)
            except ValueError:
                raise _BodyError("bad Content-Length")
            if self.length < 0:
                raise _BodyError("bad Content-Length")
        self._left = 0 if self._chunked else self.length  # of the body, or of the current chunk
        self.finished = not self._chunked and self.length == 0
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if self.finished:
            return b""
        if size is None or size < 0:
            size = 1 << 20
        if self._chunked and self._left == 0:
            line = self._rfile.readline(65537)
            try:
                self._left = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _BodyError("bad chunk size")
            if self._left == 0:
                while self._rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.finished = True
                return b""
        block = self._rfile.read(min(size, self._left))
        if not block:
            raise _BodyError("client closed mid-body")
        self._left -= len(block)
        self.count += len(block)
        if self._left == 0:
            if self._chunked:
                self._rfile.readline()  # CRLF after the chunk
            else:
                self.finished = True
        return block

    def remaining(self) -> Optional[int]:
        return None if self._chunked else self.length - self.count

    def drain(self, limit: int) -> bool:
        """Read and drop the rest, up to `limit` bytes; whether the body is now fully read."""
        remaining = self.remaining()
        if remaining is not None and remaining > limit:
            return False
        dropped = 0
        while not self.finished and dropped <= limit:
            dropped += len(self.read(1 << 20))
        return self.finished


class _HeadersOnly(http.client.HTTPMessage):
    """Request headers. The stdlib parses the header block as a whole message, and for a multipart
    Content-Type compiles a regex of the (per-request, random) boundary: a sixth of the emulator's
    time per call. Headers have no body to split, so the message never claims to be multipart."""

    def get_content_maintype(self) -> str:
        return "text"


class _Handler(BaseHTTPRequestHandler):
    MessageClass = _HeadersOnly
    protocol_version = "HTTP/1.1"
    server_version = "embed-emulator/1.0"
    disable_nagle_algorithm = True  # StreamRequestHandler.setup sets TCP_NODELAY
    server: "_HTTPServer"

    def setup(self) -> None:
        super().setup()
        self.server.emulator._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._track(self.connection, add=False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib name)
        logger.debug("%s " + format, self.address_string(), *args)

    # ---- routing --------------------------------------------------------------------

    def _route(self) -> tuple:
        parts = urlsplit(self.path)
        return parts.path.rstrip("/") or "/", parse_qs(parts.query)

    def do_POST(self) -> None:
        path, query = self._route()
        if path == EMBED_PATH:
            return self._embed()
        if _is_assets(path):
            return self._assets(path, query)
        if path.startswith(V2_PATH):  # v1 is matched first: v2 costs it one string compare
            return self._v2(path, query)
        body = self._read_body_or_close()
        if body is None:
            return
        emulator = self.server.emulator
        if path == "/emulator/reset":
            emulator.reset_stats()
            return self._send(json_reply(200, {"reset": True}))
        if path == "/emulator/config":
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object")
                config = emulator.configure(**changes)
            except (ValueError, TypeError) as exc:
                return self._send(json_reply(400, {"code": "parameter_invalid", "message": str(exc)}))
            return self._send(json_reply(200, config.public_dict()))
        self._not_found(path)

    def do_GET(self) -> None:
        path, query = self._route()
        emulator = self.server.emulator
        if path == "/emulator/stats":
            detail = query.get("detail", ["0"])[-1].lower() in ("1", "true", "yes")
            return self._send(json_reply(200, emulator._stats.snapshot(detail=detail)))
        if path == "/emulator/config":
            return self._send(json_reply(200, emulator.config.public_dict()))
        if path.startswith(V2_PATH):
            return self._v2(path, query)
        self._other_method()

    def _other_method(self) -> None:
        path, query = self._route()
        if path.startswith(V2_PATH):
            return self._v2(path, query)
        if _is_assets(path):
            return self._assets(path, query)
        if path.startswith(CHUNK_PATH + "/"):
            return self._chunk_put(path, query)
        if self._read_body_or_close() is None:
            return
        if path == EMBED_PATH:
            return self._send(json_reply(405, {  # code: emulator choice, none is documented
                "code": "method_not_allowed",
                "message": f"The {self.command} method is not allowed on {EMBED_PATH}; use POST."},
                {"Allow": "POST"}))
        self._not_found(path)

    do_PUT = do_DELETE = do_PATCH = _other_method

    def _not_found(self, path: str) -> None:
        self._send(json_reply(404, {"code": "resource_not_exist",
                                    "message": f"The requested resource `{path}` does not exist."}))

    # ---- the embed call -------------------------------------------------------------

    def _embed(self) -> None:
        emulator = self.server.emulator
        emulator._stats.begin()
        try:
            body = self._read_body_or_close()
            if body is None:
                return
            try:
                reply = emulator._service.handle(self.headers.get("x-api-key"),
                                                 self.headers.get("Content-Type"), body)
            except Exception:  # a bug in the emulator must still answer like a server would
                logger.exception("embed call failed inside the emulator")
                emulator._stats.status(500)
                reply = json_reply(500, {"code": "internal_error",
                                         "message": "The emulator failed to handle the request."})
            if reply.action == "drop":
                return self._drop()
            if reply.action == "hang":
                emulator._stopping.wait(reply.hang_sec)
                return self._drop()
            self._send(reply)
        finally:
            emulator._stats.end()

    def _v2(self, path: str, query: dict) -> None:
        """Every /v1.3/embed-v2... call (see v2/); unknown paths and methods get the nested
        404/405 before anything is counted."""
        emulator = self.server.emulator
        endpoint, task_id, early = V2Service.route(self.command, path)
        if early is not None:
            if self._read_body_or_close(nested=True) is not None:
                self._send(early)
            return
        emulator._stats.begin()
        try:
            body = self._read_body_or_close(nested=True)
            if body is None:
                return
            try:
                reply = emulator._v2.handle(endpoint, task_id, query, self.headers.get("x-api-key"),
                                            body)
            except Exception:  # a bug in the emulator must still answer like a server would
                logger.exception("embed-v2 call failed inside the emulator")
                emulator._stats.status(500)
                reply = json_reply(500, {"error": {"code": "internal_error", "message":
                                                   "The emulator failed to handle the request."}})
            if reply.action == "drop":
                return self._drop()
            if reply.action == "hang":
                emulator._stopping.wait(reply.hang_sec)
                return self._drop()
            self._send(reply)
        finally:
            emulator._stats.end()

    def _assets(self, path: str, query: dict) -> None:
        """Every /v1.3/assets... call (see assets/). The body is handed over as a stream: a
        direct upload goes to disk as it arrives."""
        emulator = self.server.emulator
        endpoint, ident, early = AssetService.route(self.command, path)
        try:
            body = _BodyStream(self.rfile, self.headers)
            if early is not None:
                reply = early
            else:
                host = self.headers.get("Host") or f"{self.server.server_name}:{self.server.server_port}"
                try:
                    reply = emulator._assets.handle(endpoint, ident, query,
                                                    self.headers.get("x-api-key"),
                                                    self.headers.get("Content-Type"), body, host)
                except _BodyError:
                    raise
                except Exception:  # a bug in the emulator must still answer like a server would
                    logger.exception("assets call failed inside the emulator")
                    reply = json_reply(500, {"code": "internal_error",
                                             "message": "The emulator failed to handle the request."})
            self._after_stream(body)
        except _BodyError as exc:
            logger.debug("closing connection: %s", exc)
            self.close_connection = True
            return
        if reply.action == "drop":
            return self._drop()
        if reply.action == "hang":
            emulator._stopping.wait(reply.hang_sec)
            return self._drop()
        self._send(reply)

    def _chunk_put(self, path: str, query: dict) -> None:
        """A request on a presigned chunk URL: object storage, so no API key is read."""
        stats = self.server.emulator._stats
        body = None
        try:
            body = _BodyStream(self.rfile, self.headers)
            try:
                reply = self.server.emulator._assets.put_chunk(self.command, path, query, body)
            except _BodyError:
                raise
            except Exception:
                logger.exception("chunk PUT failed inside the emulator")
                reply = Reply(status=500, content_type="application/xml",
                              body=b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                                   b'InternalError</Code><Message>We encountered an internal '
                                   b'error. Please try again.</Message></Error>')
            self._after_stream(body)
        except _BodyError as exc:
            logger.debug("closing connection: %s", exc)
            self.close_connection = True
            return
        finally:  # every body byte read, refused or not: what the client put on the wire
            stats.asset("chunk_bytes_received", body.count if body is not None else 0)
        self._send(reply)

    def _after_stream(self, body: "_BodyStream") -> None:
        """A refused upload leaves its body unread: drop a short rest, close on a long one."""
        if not body.finished and not body.drain(DRAIN_MAX_BYTES):
            self.close_connection = True

    # ---- I/O ------------------------------------------------------------------------

    def _read_body_or_close(self, nested: bool = False) -> Optional[bytes]:
        """The body, or None after closing the connection; nested: a v2 error body."""
        try:
            return self._read_body()
        except _BodyError as exc:
            logger.debug("closing connection: %s", exc)
            if str(exc) == "too large":
                error = {"code": "parameter_invalid", "message": "The request body is too large."}
                self._send(json_reply(413, {"error": error} if nested else error), close=True)
            self.close_connection = True
            return None

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _BodyError("bad Content-Length")
        if length > MAX_BODY_BYTES:
            raise _BodyError("too large")
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:
            raise _BodyError("client closed mid-body")
        return body

    def _read_chunked(self) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _BodyError("bad chunk size")
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise _BodyError("too large")
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise _BodyError("client closed mid-body")
            chunks.append(chunk)
            self.rfile.readline()  # CRLF after the chunk

    def _send(self, reply: Reply, close: bool = False) -> None:
        """Status line, headers and body in a single write."""
        if close:
            self.close_connection = True
        lines = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
                 f"Server: {self.server_version}",
                 f"Date: {self.date_time_string()}",
                 f"Content-Type: {reply.content_type}",
                 f"Content-Length: {len(reply.body)}"]
        stated = self.server.emulator.config.rate_limit_headers
        lines += [f"{name}: {value}" for name, value in reply.headers.items()
                  if stated or name.lower() not in _LIMIT_STATEMENT]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + reply.body)
        except OSError:
            self.close_connection = True  # the client went away; nothing to tell it
        self.log_request(reply.status, len(reply.body))

    def _drop(self) -> None:
        """Close without any response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _is_assets(path: str) -> bool:
    return path == ASSETS_PATH or path.startswith(ASSETS_PATH + "/")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True     # a hung request never blocks exit
    block_on_close = False    # server_close must not join handler threads
    request_queue_size = 128  # the stdlib's 5 drops connects under a burst of clients

    def __init__(self, address, emulator: "Emulator"):
        self.emulator = emulator
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's getfqdn(): a reverse DNS lookup can stall startup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class Emulator:
    """The emulator in a background thread. Use as a context manager, or start()/stop()."""

    def __init__(self, config: Optional[EmulatorConfig] = None, host: str = "127.0.0.1",
                 port: int = 0):
        self._config = config or EmulatorConfig()
        self._config_lock = threading.Lock()
        self.host = host
        self._requested_port = port
        self._stats = Stats()
        self._limiter = RateLimiter()
        self._faults = FaultInjector(self._config.seed)
        self._stopping = threading.Event()
        self._categories = CategoryLimiter()
        self._service = EmbedService(lambda: self._config, self._stats, self._limiter,
                                     self._faults, lambda: self._stopping, categories=self._categories)
        self._media_limiter = MediaMinutesLimiter()
        self._tasks = TaskStore(on_final=lambda status: self._stats.task(status))
        self._tasks.reseed(self._config.seed)
        self._stats.set_sweeper(self._tasks.sweep)
        self._assets = AssetService(lambda: self._config, self._stats, self._faults,
                                    lambda: self._stopping)
        self._v2 = V2Service(lambda: self._config, self._stats, self._limiter,
                             self._media_limiter, self._faults, self._tasks,
                             lambda: self._stopping, asset_lookup=self._assets.store.lookup,
                             categories=self._categories)
        self._server: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._connections: set = set()
        self._connections_lock = threading.Lock()

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> "Emulator":
        if self._server is not None:
            return self
        self._stopping = threading.Event()
        self._assets.open()
        self._server = _HTTPServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"embed-emulator:{self.port}", daemon=True)
        self._thread.start()
        logger.info("embed emulator listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes hung requests and latency sleeps
        server.shutdown()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:  # idle keep-alive and hung connections
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        self._tasks.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._assets.close()  # uploaded bytes live only as long as the instance
        logger.info("embed emulator stopped")

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _track(self, connection, add: bool) -> None:
        with self._connections_lock:
            (self._connections.add if add else self._connections.discard)(connection)

    # ---- public surface ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}{API_PREFIX}"

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    def asset_sha256(self, asset_id: str) -> Optional[str]:
        """The sha256 of the bytes an uploaded asset holds (None: no such asset, or not processed yet), for tests
        that check an upload arrived exact."""
        asset = self._assets.store.lookup(asset_id)
        if asset is None or not asset.done:
            return None
        digest = hashlib.sha256()
        with open(asset.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def stats(self) -> dict:
        """Same as GET /emulator/stats?detail=1."""
        return self._stats.snapshot(detail=True)

    def reset_stats(self) -> None:
        """Zero the counters and also start fresh rate-limit windows (requests and media
        minutes, the assets category), 429 burst and fault RNGs, so a test can reuse one emulator as if it had just
        started. Existing v2 tasks are kept (clients may still be polling them); tasks that
        turn ready or failed later are counted again from zero."""
        self._stats.reset()
        self._limiter.reset()
        self._media_limiter.reset()
        self._categories.reset()
        self._assets.limiter.reset()
        self._faults.reseed(self._config.seed)
        self._tasks.reseed(self._config.seed)

    def configure(self, **changes) -> EmulatorConfig:
        """Change knobs at runtime; requests already running keep their snapshot."""
        with self._config_lock:
            self._config = self._config.with_changes(**changes)
            if "seed" in changes:
                self._faults.reseed(self._config.seed)
                self._tasks.reseed(self._config.seed)
            return self._config


@contextmanager
def serve(config: Optional[EmulatorConfig] = None, host: str = "127.0.0.1",
          port: int = 0) -> Iterator[Emulator]:
    """with serve(config) as emulator: ... (a started Emulator, stopped on exit)."""
    with Emulator(config, host, port) as emulator:
        yield emulator
