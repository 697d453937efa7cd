"""multipart/form-data bodies written byte for byte as the official SDK (httpx) writes them."""
from __future__ import annotations

import mimetypes
import os
import random
import re
from typing import BinaryIO, Iterable, Iterator, List, Optional, Tuple, Union

from embed_client import errors

__all__ = ["FilePart", "SourceChangedError", "StreamingBody", "encode_multipart", "new_boundary", "stream_length",
           "stream_multipart"]

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


# ---- streaming: the same bytes, produced from file objects a piece at a time ----

READ_SIZE = 64 * 1024


def stream_length(fileobj) -> Optional[int]:
    """The whole size of a binary file object (httpx's `peek_filelike_length`): fstat of a real file,
    else seek to the end and back; None when neither works."""
    try:
        return os.fstat(fileobj.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        pass
    try:
        offset = fileobj.tell()
        length = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(offset)
        return length
    except (AttributeError, OSError, ValueError):
        return None


class SourceChangedError(errors.BadRequestError):
    """A file gave fewer bytes than its length promised while its body was being sent (it shrank)."""

    def __init__(self, message: str, **kwargs):
        kwargs.setdefault("code", "file_changed")
        super().__init__(message, **kwargs)


class _FileSlice:
    """`length` bytes of a binary file object from `offset` (None: from wherever it is), read on demand."""

    __slots__ = ("fileobj", "offset", "length", "_left")

    def __init__(self, fileobj, offset: Optional[int], length: int):
        self.fileobj, self.offset, self.length, self._left = fileobj, offset, length, None

    def read(self, size: int) -> bytes:
        if self._left is None:
            if self.offset is not None:
                self.fileobj.seek(self.offset)
            self._left = self.length
        if self._left <= 0:
            return b""
        data = self.fileobj.read(min(size, self._left))
        if isinstance(data, str):
            raise TypeError("file objects must be opened in binary mode")
        if not data:
            raise SourceChangedError(
                f"the file ended {self._left} bytes before the {self.length} its length promised "
                "(it shrank while being sent)")
        self._left -= len(data)
        return data


class StreamingBody:
    """A request body of known length made of byte strings and file slices, read a piece at a time.

    `len()` is the Content-Length; `read(n)` and iteration give the bytes, never more than `n` (or
    `READ_SIZE`) of a file in memory at once. A body is read once; build a new one to send again.
    requests and urllib3 stream it as a file-like object with the precomputed Content-Length.
    """

    def __init__(self, pieces: Iterable[Union[bytes, _FileSlice]]):
        self._pieces = [p for p in pieces if not isinstance(p, bytes) or p]
        self._length = sum(len(p) if isinstance(p, bytes) else p.length for p in self._pieces)
        self._index = 0
        self._pos = 0  # within a bytes piece

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(READ_SIZE), b""))
        while self._index < len(self._pieces):
            piece = self._pieces[self._index]
            if isinstance(piece, bytes):
                data = piece[self._pos:self._pos + size]
                self._pos += len(data)
                if self._pos >= len(piece):
                    self._index, self._pos = self._index + 1, 0
                if data:
                    return data
            else:
                data = piece.read(size)
                if data:
                    return data
                self._index += 1
        return b""

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(READ_SIZE), b"")

    def to_bytes(self) -> bytes:
        """The whole body in memory (tests and small bodies)."""
        return self.read()


# (filename or None, content: bytes or a binary file object, content_type or None)
StreamFilePart = Tuple[Optional[str], Union[bytes, BinaryIO], Optional[str]]


def stream_multipart(
    fields: Iterable[Tuple[str, str]], files: Iterable[Tuple[str, StreamFilePart]], boundary: str
) -> StreamingBody:
    """`encode_multipart`'s bytes (httpx's MultipartStream: fields, then files) as a `StreamingBody`.

    A file object is sent whole from its start, as httpx sends it (seek(0), length by fstat or seek);
    a part without a filename has no `filename=` and, without a content type, no Content-Type line."""
    dash = b"--" + boundary.encode()
    pieces: List[Union[bytes, _FileSlice]] = []
    for name, value in fields:
        pieces.append(b"".join([dash, b"\r\nContent-Disposition: form-data; ", _param("name", name), b"\r\n\r\n",
                                value.encode("utf-8"), b"\r\n"]))
    for name, (filename, content, content_type) in files:
        head = [dash, b"\r\nContent-Disposition: form-data; ", _param("name", name)]
        if filename:
            head += [b"; ", _param("filename", filename)]
        if content_type is not None:
            head += [b"\r\nContent-Type: ", content_type.encode()]
        head.append(b"\r\n\r\n")
        pieces.append(b"".join(head))
        if isinstance(content, (bytes, bytearray, memoryview)):
            pieces.append(bytes(content))
        else:
            length = stream_length(content)
            if length is None:
                raise TypeError("a file object to stream must have a known length (a real file, or seekable)")
            pieces.append(_FileSlice(content, 0, length))
        pieces.append(b"\r\n")
    pieces.append(dash + b"--\r\n")
    return StreamingBody(pieces)
