"""multipart/form-data bodies written byte for byte as the official SDK (httpx) writes them."""
from __future__ import annotations

import mimetypes
import random
import re
from typing import Iterable, Optional, Tuple

__all__ = ["FilePart", "encode_multipart", "new_boundary"]

# httpx escapes quotes, backslashes and control characters in names and filenames.
_ESCAPES = {'"': "%22", "\\": "\\\\"}
_ESCAPES.update({chr(c): "%{:02X}".format(c) for c in range(0x20) if c != 0x1B})
_ESCAPE_RE = re.compile("|".join(re.escape(c) for c in _ESCAPES))

# (filename, content, content_type)
FilePart = Tuple[str, bytes, str]


def _param(name: str, value: str) -> bytes:
    return f'{name}="{_ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], value)}"'.encode()


def guess_content_type(filename: Optional[str]) -> str:
    return mimetypes.guess_type(filename or "")[0] or "application/octet-stream"


def new_boundary() -> str:
    # 32 hex digits like httpx's; it only has to be absent from the body, so no syscall per call.
    return "%032x" % random.getrandbits(128)


def encode_multipart(
    fields: Iterable[Tuple[str, str]], files: Iterable[Tuple[str, FilePart]], boundary: str
) -> bytes:
    """Text fields first, then file parts, each in the given order."""
    dash = b"--" + boundary.encode()
    chunks = []
    for name, value in fields:
        chunks += [dash, b"\r\nContent-Disposition: form-data; ", _param("name", name), b"\r\n\r\n",
                   value.encode("utf-8"), b"\r\n"]
    for name, (filename, content, content_type) in files:
        chunks += [dash, b"\r\nContent-Disposition: form-data; ", _param("name", name), b"; ",
                   _param("filename", filename), b"\r\nContent-Type: ", content_type.encode(),
                   b"\r\n\r\n", content, b"\r\n"]
    chunks += [dash, b"--\r\n"]
    return b"".join(chunks)
