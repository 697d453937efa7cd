"""`benchfs:///abs/path`: a Beam FileSystem serving a local file the way Beam's S3 and GCS filesystems serve
objects, so code reading through FileSystems takes Beam's generic remote-read path, not a local file's.

`open` returns what s3io/gcsio return: an `io.BufferedReader` (16 MiB read buffer, s3io's default) over Beam's
`filesystemio.DownloaderStream`, whose `Downloader` here reads byte ranges with `os.pread` on a descriptor
(an object store's ranged GET). No Python file object is handed out. Read-only; importing this module
registers the scheme (Beam finds FileSystem subclasses by `scheme()`)."""
from __future__ import annotations

import io
import os

from apache_beam.io import filesystemio
from apache_beam.io.filesystem import CompressionTypes, FileMetadata, FileSystem

SCHEME = "benchfs"
_READ_BUFFER = 16 * 1024 * 1024  # what Beam's s3io reads ahead per open stream


def _local(path: str) -> str:
    if not path.startswith(SCHEME + "://"):
        raise ValueError(f"not a {SCHEME}:// path: {path}")
    return path[len(SCHEME) + 3:]


class _LocalRanges(filesystemio.Downloader):
    """Byte ranges of a local file, read with os.pread on a descriptor: what an object store's ranged GET is."""

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    def get_range(self, start: int, end: int) -> bytes:
        return os.pread(self._fd, end - start, start)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _RangeStream(filesystemio.DownloaderStream):
    """Beam's DownloaderStream that also closes its descriptor."""

    def close(self) -> None:
        if not self.closed:
            self._downloader.close()
        super().close()


class BenchFileSystem(FileSystem):
    """`benchfs:///abs/path`: a local file read through Beam's remote-object stack (read-only)."""

    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path):
        raise NotImplementedError("benchfs is read-only")

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        folder = _local(dir_or_prefix)
        if os.path.isfile(folder):
            yield FileMetadata(dir_or_prefix, os.path.getsize(folder))
            return
        for name in sorted(os.listdir(folder)):
            full = os.path.join(folder, name)
            if os.path.isfile(full):
                yield FileMetadata(self.join(dir_or_prefix, name), os.path.getsize(full))

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        raise NotImplementedError("benchfs is read-only")

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        if compression_type not in (CompressionTypes.UNCOMPRESSED, CompressionTypes.AUTO):
            raise NotImplementedError("benchfs serves uncompressed bytes only")
        return io.BufferedReader(_RangeStream(_LocalRanges(_local(path))), buffer_size=_READ_BUFFER)

    def copy(self, source_file_names, destination_file_names):
        raise NotImplementedError("benchfs is read-only")

    def rename(self, source_file_names, destination_file_names):
        raise NotImplementedError("benchfs is read-only")

    def exists(self, path):
        return os.path.exists(_local(path))

    def size(self, path):
        return os.path.getsize(_local(path))

    def last_updated(self, path):
        return os.path.getmtime(_local(path))

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths):
        raise NotImplementedError("benchfs is read-only")
