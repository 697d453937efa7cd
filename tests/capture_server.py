"""A loopback HTTP server that records raw requests and answers with canned responses."""
from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from typing import Callable, List, Optional, Tuple

Response = Tuple[int, dict, bytes]


def json_response(status: int, obj, headers: Optional[dict] = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()


DEFAULT_OK = json_response(200, {"model_name": "marengo3.0", "text_embedding": {"segments": [{"float": [0.5]}]}})


class CapturedRequest:
    def __init__(self, method: str, path: str, headers: dict, body: bytes):
        self.method, self.path, self.headers, self.body = method, path, headers, body

    @property
    def boundary(self) -> str:
        return self.headers["Content-Type"].split("boundary=", 1)[1]

    def normalized_body(self) -> bytes:
        """The body with the random boundary replaced, for byte comparison."""
        return self.body.replace(self.boundary.encode(), b"BOUNDARY")


class CaptureServer:
    """Records every request (GET, POST, PUT, DELETE); `responder(request)` picks the answer (default: a tiny 200).
    `sink=True` reads bodies a piece at a time and keeps only their first 400 bytes, length (`received`) and
    SHA-256 (`sha256`), so a 50 MB upload costs the test process no memory."""

    def __init__(self, responder: Optional[Callable[[CapturedRequest], Response]] = None, sink: bool = False):
        self.requests: List[CapturedRequest] = []
        self.responder = responder or (lambda req: DEFAULT_OK)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                self._answer("POST")

            def do_GET(self):
                self._answer("GET")

            def do_PUT(self):
                self._answer("PUT")

            def do_DELETE(self):
                self._answer("DELETE")

            def _answer(self, method):
                length = int(self.headers.get("Content-Length", 0))
                if sink:
                    digest, left, head = hashlib.sha256(), length, b""
                    while left:
                        piece = self.rfile.read(min(65536, left))
                        if not piece:
                            break
                        head = head or piece[:400]
                        digest.update(piece)
                        left -= len(piece)
                    req = CapturedRequest(method, self.path, dict(self.headers), head)
                    req.received, req.sha256 = length - left, digest.hexdigest()
                else:
                    req = CapturedRequest(method, self.path, dict(self.headers), self.rfile.read(length))
                outer.requests.append(req)
                status, headers, payload = outer.responder(req)
                head = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
                head.append(f"Content-Length: {len(payload)}")
                self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_port}/v1.3"

    def __enter__(self) -> "CaptureServer":
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
