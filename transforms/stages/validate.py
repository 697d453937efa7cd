"""ValidateRows: turn manifest rows into items, rejecting before any call what the API would reject."""
from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import os
import posixpath
import re
import unicodedata
import urllib.parse
from typing import Any, Callable, Iterable, List, Literal, NamedTuple, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from embed_client.secrets import redact_url
from transforms.calling.upload import MULTIPART_MAX
from transforms.models import MODELS, model, uses_v2
from transforms.progress import NAMESPACE, PROGRESS
from transforms.records import (
    DEAD_LETTERS,
    INPUT_FIELDS,
    MODALITIES,
    ROUTES,
    DeadLetter,
    DeadLetterOutput,
    Item,
    ManifestRow,
    content_hash,
)
from transforms.store.key_index import MODALITY_BITS, fingerprint

__all__ = ["MEDIA_RULES", "RejectDuplicateIds", "RoutePlan", "ValidateRows", "row_to_items"]

TEXT_TRUNCATE_VALUES = ("none", "start", "end")
# Longer texts are truncated by the API anyway; refusing them keeps one row from eating a worker's memory.
MAX_TEXT_CHARS = 100_000
MAX_ID_CHARS = 256
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1
_MB = 1024 * 1024
# Per model: the largest file of each kind the API takes (API-FACTS.md).
MEDIA_RULES = {m.name: m.v1_file_bytes for m in MODELS}
# v2 sends local files inline as base64 (a third larger than the file): a request body holds at most
# 36 MB of it for audio and video, and an image source is at most 32 MB (API-V2-FACTS.md, limits).
V2_BASE64_LIMIT = 36 * _MB
# Large files are hashed this much at a time.
_HASH_BLOCK = 8 * _MB
# The header probe of a file for the Assets API fetches blocks this large (one ranged request each on a bucket),
# and keeps this many (a head and a tail).
_PROBE_BUFFER = 1 * _MB
_PROBE_BLOCKS = 2
V2_MEDIA_RULES = {"image": 32 * _MB, "audio": V2_BASE64_LIMIT * 3 // 4, "video": V2_BASE64_LIMIT * 3 // 4}
TASK_MEDIA_SEC = (4.0, 4 * 3600.0)
MIN_IMAGE_SIDE = 128
_INPUTS = ("text", "image_url", "image_file", "audio_url", "audio_file", "video_url", "video_file", "asset_id")
_HASH_CHUNK = 1024 * 1024


class _Invalid(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _sniff(head: bytes) -> Optional[str]:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0):
        return "mp3"
    return None


_KINDS = {"image": ("png", "jpeg"), "audio": ("wav", "mp3", "flac"), "video": ("mp4", "matroska", "avi", "mpegts")}


def _sniff_video(head: bytes) -> Optional[str]:
    if head[4:8] == b"ftyp":
        return "mp4"  # MP4, MOV, M4V, 3GP
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # MKV, WebM
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return "mpegts"
    return None


def _resolve(manifest: str, path: str) -> str:
    """Relative media paths are relative to the manifest's folder."""
    if "://" in path or path.startswith("/"):
        return path
    folder = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    return posixpath.normpath(posixpath.join(folder, path)) if "://" not in folder else FileSystems.join(folder, path)


class _Checked(NamedTuple):
    digest: str        # sha256 of the file's bytes
    duration: float    # seconds of audio/video (0 for images)
    size: int
    upload: bool       # past the inline limit (or assets.upload: always): uploaded as an asset first


def _file_size(path: str, field: str) -> int:
    """The size of a media file that exists and is a regular file (else _Invalid saying what it is)."""
    # exists/metadata, not match: a name may hold glob characters ("shot[1].png").
    try:
        filesystem = FileSystems.get_filesystem(path)
        exists = filesystem.exists(path)
    except Exception as exc:
        raise _Invalid("missing_file", f"`{field}` {path} cannot be listed ({type(exc).__name__})")
    if isinstance(filesystem, LocalFileSystem) and exists and not os.path.isfile(path):
        # Directories, pipes and devices: a pipe would block the read forever.
        kind = "a directory" if os.path.isdir(path) else "not a regular file"
        raise _Invalid("not_a_file", f"`{field}` {path} is {kind}")
    if not exists:
        if FileSystems.match([path.rstrip("/") + "/*"])[0].metadata_list:
            raise _Invalid("not_a_file", f"`{field}` {path} is a directory")
        raise _Invalid("missing_file", f"`{field}` {path} does not exist")
    return filesystem.metadata(path).size_in_bytes


class _FileSize:
    """A media file's size, read from its filesystem at most once however many checks of a row ask (on an object
    store each metadata read is a request)."""

    def __init__(self, path: str, field: str):
        self.path, self.field = path, field
        self._size: Optional[int] = None
        self._error: Optional[Exception] = None

    def __call__(self) -> int:
        """The size; raises what made it unknown (an _Invalid names it for the dead letter)."""
        if self._size is None and self._error is None:
            try:
                self._size = _file_size(self.path, self.field)
            except Exception as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._size

    def known(self) -> Optional[int]:
        """The size, or None when it cannot be read (the file's own check then says why)."""
        try:
            return self()
        except Exception:
            return None


def _check_media_file(path: str, field: str, modality: str, model: str,
                      offset: Optional[float], v2: bool = False, upload: str = "auto",
                      file_size: Optional[Callable[[], int]] = None) -> _Checked:
    """Checks a media file the way the API would, reading no more of it than that needs. `file_size`: the row's
    memo of its size (_FileSize), when something else asked for it already."""
    size = (file_size or _FileSize(path, field))()
    limit = V2_MEDIA_RULES[modality] if v2 else MEDIA_RULES[model][modality]
    if size == 0:
        raise _Invalid("empty_file", f"`{field}` {path} is empty")
    if v2 and modality in ("audio", "video") and (size > limit or upload == "always"):
        return _check_large_media(path, field, modality, size, offset)
    if size > limit:
        if v2:
            raise _Invalid("file_too_large",
                           f"`{field}` {path} is {size} bytes; a local {modality} file goes to Embed API v2 as "
                           f"base64, which takes files up to {limit} bytes: give it as `{modality}_url` or "
                           "`asset_id` instead")
        raise _Invalid("file_too_large",
                       f"`{field}` {path} is {size} bytes; {model} takes {modality} files up to {limit} bytes")
    try:
        with FileSystems.open(path, compression_type="uncompressed") as stream:
            data = stream.read(limit + 1)
    except IsADirectoryError:
        raise _Invalid("not_a_file", f"`{field}` {path} is a directory")
    kind = _sniff_video(data[:200]) if modality == "video" else _sniff(data[:16])
    if kind not in _KINDS[modality]:
        wanted = "/".join(k.upper() for k in _KINDS[modality])
        raise _Invalid("unsupported_format",
                       f"`{field}` {path} is not {wanted} (its bytes are {'unknown' if kind is None else kind.upper()})")
    duration = _check_decodes(data, kind, field, path)
    _check_offset(offset, duration, modality, path)
    return _Checked(hashlib.sha256(data).hexdigest(), duration, size, False)


def _check_offset(offset: Optional[float], duration: float, modality: str, path: str) -> None:
    if modality == "audio" and offset is not None and offset >= duration:
        raise _Invalid("invalid_offset",
                       f"`audio_start_offset_sec` {offset} is not before the end of {path} ({duration:.2f} s)")


class _HashingRaw(io.RawIOBase):
    """The bytes under an open FileSystems stream's read-ahead (its `raw`, when it has one), hashed in file order as
    they are fetched: what the header probe fetches from the start is hashed on the way, and `finish()` fetches and
    hashes only the rest, into one block. Beam's remote readers fill a 16 MiB buffer (and copy each fill twice) for
    a 200-byte header: 33 MB at the peak of validating a file in a bucket, and a second fetch of that much."""

    def __init__(self, stream):
        self._raw = getattr(stream, "raw", stream)
        self._pos = 0
        self._hashed = 0  # bytes [0, _hashed) are in the digest
        self._digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._raw.seek(offset, whence)
        self._pos = self._raw.tell()
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if hasattr(self._raw, "readinto"):
            n = self._raw.readinto(view) or 0
        else:
            data = self._raw.read(len(view))
            n = len(data)
            view[:n] = data
        start, self._pos = self._pos, self._pos + n
        if start <= self._hashed < self._pos:
            self._digest.update(view[self._hashed - start:n])
            self._hashed = self._pos
        return n

    def finish(self) -> str:
        """The sha256 of the whole file, fetching on from the first byte not yet hashed."""
        self.seek(self._hashed)
        block = bytearray(_HASH_BLOCK)
        while self.readinto(block):
            pass
        return self._digest.hexdigest()


class _Probe:
    """What the decoders read a file's header through: blocks of _PROBE_BUFFER fetched from `source` (one ranged
    request each on a bucket), the last _PROBE_BLOCKS of them kept, so a decoder that seeks to the end and back to
    the head (MP4's index may sit at either end) fetches each block once."""

    def __init__(self, source: _HashingRaw, size: int):
        self._source, self._size = source, size
        self._blocks: "collections.OrderedDict[int, bytes]" = collections.OrderedDict()  # start -> bytes
        self._pos = 0

    def _block(self, pos: int) -> Tuple[int, bytes]:
        for start, data in self._blocks.items():
            if start <= pos < start + len(data):
                self._blocks.move_to_end(start)
                return start, data
        self._source.seek(pos)
        buffer = bytearray(min(_PROBE_BUFFER, self._size - pos))
        view, got = memoryview(buffer), 0
        while got < len(buffer):
            n = self._source.readinto(view[got:])
            if not n:
                break
            got += n
        data = bytes(view[:got])
        self._blocks[pos] = data
        if len(self._blocks) > _PROBE_BLOCKS:
            self._blocks.popitem(last=False)
        return pos, data

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        parts = []
        while self._pos < end:
            start, data = self._block(self._pos)
            if not data:
                break
            piece = data[self._pos - start:end - start]
            parts.append(piece)
            self._pos += len(piece)
        return b"".join(parts)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Moves only the position: decoders seek to the end for the length and back, which fetches nothing."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def _check_large_media(path: str, field: str, modality: str, size: int, offset: Optional[float]) -> _Checked:
    """A file that goes through the Assets API: its kind and duration from the container's header (read
    through FileSystems, so on gs:// and s3:// too), its sha256 streamed; never held whole. One open and one
    pass: the header the probe fetches is hashed as it goes, the hash fetches on from there."""
    if size > MULTIPART_MAX:
        raise _Invalid("file_too_large", f"`{field}` {path} is {size} bytes; the Assets API takes {modality} files "
                                         f"up to {MULTIPART_MAX} bytes (10 GB)")
    try:
        with FileSystems.open(path, compression_type="uncompressed") as stream:
            hashing = _HashingRaw(stream)  # closing it (or collecting it) leaves `stream` open: ours to close
            probe = _Probe(hashing, size)
            head = probe.read(200)
            kind = _sniff_video(head) if modality == "video" else _sniff(head[:16])
            if kind not in _KINDS[modality]:
                wanted = "/".join(k.upper() for k in _KINDS[modality])
                raise _Invalid("unsupported_format", f"`{field}` {path} is not {wanted} (its bytes are "
                                                     f"{'unknown' if kind is None else kind.upper()})")
            probe.seek(0)
            duration = _check_decodes(probe, kind, field, path)
            digest = hashing.finish()
    except IsADirectoryError:
        raise _Invalid("not_a_file", f"`{field}` {path} is a directory")
    except OSError as exc:
        raise _Invalid("unreadable_file", f"`{field}` {path} cannot be read ({exc})")
    _check_offset(offset, duration, modality, path)
    return _Checked(digest, duration, size, True)


def _reason(exc: Exception) -> str:
    # Pillow and soundfile name the in-memory buffer by its address: noise that differs on every run.
    return re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))


def _check_decodes(data, kind: str, field: str, path: str) -> float:
    """The media's duration (0 for images) if it decodes; `data` is its bytes, or a seekable stream of
    audio/video (whose decoders read only the header)."""
    if kind in _KINDS["video"]:
        from transforms.stages.media_probe import MissingMediaDecoder, video_duration

        try:
            duration = video_duration(data)
        except MissingMediaDecoder as exc:
            raise _Invalid("decoder_missing", f"`{field}` {path}: {exc}")
        except Exception as exc:
            raise _Invalid("corrupt_file", f"`{field}` {path} is not a readable video ({_reason(exc)})")
        if not duration or duration <= 0:
            raise _Invalid("corrupt_file", f"`{field}` {path} holds no video frames")
        return duration
    if kind in ("png", "jpeg"):
        Image = _decoder("PIL.Image", "checking a local image", field, path)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                image.verify()
            if kind == "jpeg":
                # verify() does not decode JPEG data, so a truncated file would pass; decode at 1/8 scale.
                with Image.open(io.BytesIO(data)) as image:
                    image.draft("RGB", (width // 8, height // 8))
                    image.load()
        except Exception as exc:
            raise _Invalid("corrupt_file",
                           f"`{field}` {path} is not a readable {kind.upper()} image ({_reason(exc)})")
        if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
            raise _Invalid("image_too_small",
                           f"`{field}` {path} is {width}x{height}; images must be at least "
                           f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
        return 0.0
    soundfile = _decoder("soundfile", "checking local audio", field, path)
    try:
        info = soundfile.info(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
        duration = info.frames / float(info.samplerate)
    except Exception as exc:
        raise _Invalid("corrupt_file",
                       f"`{field}` {path} is not readable {kind.upper()} audio ({_reason(exc)})")
    if duration <= 0:
        raise _Invalid("corrupt_file", f"`{field}` {path} holds no audio")
    return duration


def _decoder(module: str, what: str, field: str, path: str):
    """A media decoder of the `media` extra; its absence is the deployment's, named in a dead letter (validation
    runs again on every run, so installing it is all a rerun needs)."""
    import importlib

    from transforms.stages.media_probe import MEDIA_EXTRA

    try:
        return importlib.import_module(module)
    except ImportError:
        raise _Invalid("decoder_missing", f"`{field}` {path}: {what} needs {module.split('.')[0]}: {MEDIA_EXTRA}")


def _check_url(url: Any, field: str) -> str:
    if not isinstance(url, str):
        raise _Invalid("invalid_type", f"`{field}` must be a string, got {type(url).__name__}")
    url = url.strip()
    # urlsplit silently drops tabs and line breaks; the API would get a different URL than the row holds.
    for position, char in enumerate(url, 1):
        if char.isspace() or ord(char) < 0x20 or ord(char) == 0x7f:
            what = "a line break" if char in "\r\n" else "a space" if char.isspace() else "a control character"
            raise _Invalid("invalid_url", f"`{field}` has {what} at position {position}: "
                                          f"{redact_url(url[:200])!r}; percent-encode it (%20) or fix it")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        hint = f"; use `{field.replace('_url', '_file')}` for local files" if parsed.scheme in ("", "file") else ""
        raise _Invalid("invalid_url", f"`{field}` must be an http(s) URL, got {redact_url(url[:200])!r}{hint}")
    return url


def _parse_offset(value: Any, field: str = "audio_start_offset_sec") -> Optional[float]:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        offset = float(value)
    except (TypeError, ValueError):
        raise _Invalid("invalid_offset", f"`{field}` must be a number, got {value!r}")
    if math.isnan(offset) or math.isinf(offset) or offset < 0:
        raise _Invalid("invalid_offset", f"`{field}` must be a number >= 0, got {value!r}")
    return offset


def _row_id(row: ManifestRow) -> str:
    raw = row.fields.get("id")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        # A stable id: the manifest's name and the row's content, so a rerun derives the same one.
        name = row.source.rsplit("/", 1)[-1]
        stem = name.split(".", 1)[0]
        digest = content_hash(name, json.dumps(row.fields, sort_keys=True, default=str))[:16]
        return f"{stem}-{digest}"
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # pandas writes integer ids as floats (1.0) once a column has a gap
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        got = f"float {raw!r}" if isinstance(raw, float) else type(raw).__name__
        raise _Invalid("invalid_id", f"`id` must be a string or an integer, got {got}")
    # Spaces around an id are dropped and Unicode is NFC-normalised: ids that look the same are the same id.
    value = unicodedata.normalize("NFC", str(raw).strip())
    if len(value) > MAX_ID_CHARS:
        raise _Invalid("invalid_id", f"`id` is {len(value)} characters; the limit is {MAX_ID_CHARS}")
    control = _CONTROL_CHARS.search(value)
    if control:
        raise _Invalid("invalid_id", f"`id` holds a control character ({control.group()!r} at {control.start()})")
    return value


class RoutePlan:
    """Which API generation and call kind each item goes to, and what of the settings keys its content."""

    def __init__(self, model: str, api_version: str = "auto", embedding_signature: str = "",
                 dimension: Optional[int] = None, asset_upload: str = "auto"):
        self.model = model
        self.asset_upload = asset_upload
        self.api_version = api_version
        self.embedding_signature = embedding_signature
        self.dimension = dimension

    @classmethod
    def from_settings(cls, settings) -> "RoutePlan":
        return cls(settings.model, settings.api_version, settings.embedding.signature(),
                   settings.embedding.dimension, settings.asset_upload)

    def uses_v2(self, modality: str) -> bool:
        return uses_v2(self.model, self.api_version, modality)

    def audio_as_asset(self, file_size: Callable[[], Optional[int]]) -> bool:
        """Whether an audio file goes to v2 as an uploaded asset on a model v1 would take it on (auto only):
        every file with assets.upload: always, else one past v1's limit (instead of a dead letter).
        `file_size()`: its size, None when unknown (the file's own check names what is wrong); asked only if
        it decides, and given by the row's memo, so the file's check does not read the metadata again."""
        if self.api_version != "auto" or not model(self.model).v2:
            return False
        if self.asset_upload == "always":
            return True
        size = file_size()
        return size is not None and size > MEDIA_RULES[self.model]["audio"]

    def route(self, modality: str, clip_sec: Optional[float], v2: Optional[bool] = None,
              size: Optional[int] = None) -> str:
        if not (self.uses_v2(modality) if v2 is None else v2):
            return "v1"
        if modality in ("text", "image"):
            return "v2"
        limits = model(self.model)
        if clip_sec is None or clip_sec > limits.sync_media_sec or (size or 0) > limits.sync_source_bytes:
            return "task"  # a sync call takes neither media this long nor a source this large
        return "v2"

    def options_key(self, modality: str, v2: Optional[bool] = None) -> Tuple:
        """v1 keys stay as they were (saved outputs keep matching); v2 keys name the generation and options."""
        if not (self.uses_v2(modality) if v2 is None else v2):
            return ()
        return ("v2", self.dimension) + ((self.embedding_signature,) if modality in ("audio", "video") else ())


def _asset_modality(fields) -> Optional[str]:
    if fields.get("asset_id") is None:
        return None
    media_type = fields.get("media_type")
    return media_type if media_type in ("image", "audio", "video") else "invalid"


def _check_asset(asset: Any) -> str:
    if not isinstance(asset, str) or not asset.strip() or _CONTROL_CHARS.search(asset) or len(asset) > 256:
        raise _Invalid("invalid_asset_id", f"`asset_id` must be a platform asset id, got {str(asset)[:80]!r}")
    return asset.strip()


def _media_fields(modality: str, v2: bool, offset: Optional[float], start: Optional[float],
                  end: Optional[float]) -> dict:
    """The clip fields an item carries: v1 audio has its start offset; v2 audio/video a start and an end."""
    if modality == "image":
        return {}
    if not v2:
        return {"audio_start_offset_sec": offset}
    return {"start_sec": start if start is not None else offset, "end_sec": end}


def _clip_length(modality: str, duration: float, media: dict, what: str) -> Optional[float]:
    if modality == "image":
        return None
    start = media.get("start_sec") or 0.0
    if start and start >= duration:
        raise _Invalid("invalid_offset", f"`start_sec` {start} is not before the end of {what} ({duration:.2f} s)")
    end = min(media.get("end_sec") or duration, duration)
    return end - start


def row_to_items(row: ManifestRow, model: str, plan: Optional[RoutePlan] = None) -> List[Union[Item, DeadLetter]]:
    """One Item per modality the row carries, or a DeadLetter per modality that is invalid."""
    records = _row_to_items(row, model, plan)
    for record in records:
        if isinstance(record, DeadLetter):
            record.row = row.fields
    return records


def _row_to_items(row: ManifestRow, model: str, plan: Optional[RoutePlan] = None) -> List[Union[Item, DeadLetter]]:
    plan = plan or RoutePlan(model)
    where = f"{row.source} row {row.row_number}"
    try:
        item_id = _row_id(row)
    except _Invalid as exc:
        return [DeadLetter(None, row.source, row.row_number, None, "validate", exc.code, f"{where}: {exc}")]
    fields = row.fields
    attributes = json.dumps({k: v for k, v in fields.items() if k not in INPUT_FIELDS},
                            sort_keys=True, default=str, ensure_ascii=False)
    base = dict(id=item_id, source=row.source, row_number=row.row_number, attributes=attributes)
    out: List[Union[Item, DeadLetter]] = []

    def reject(modality: Optional[str], exc: _Invalid) -> None:
        out.append(DeadLetter(item_id, row.source, row.row_number, modality, "validate", exc.code, f"{where}: {exc}"))

    text = fields.get("text")
    if text is not None:
        try:
            if not isinstance(text, str):
                raise _Invalid("invalid_type", f"`text` must be a string, got {type(text).__name__}")
            if len(text) > MAX_TEXT_CHARS:
                raise _Invalid("text_too_long", f"`text` is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
            truncate = fields.get("text_truncate")
            if truncate is not None and truncate not in TEXT_TRUNCATE_VALUES:
                raise _Invalid("invalid_text_truncate",
                               "The `text_truncate` parameter is invalid. You should use one of the following "
                               f"values: `none`, `start`, `end` (got {str(truncate)[:50]!r}).")
            if text.strip():
                out.append(Item(modality="text", text=text, text_truncate=truncate, route=plan.route("text", None),
                                content_hash=content_hash("text", text, truncate, *plan.options_key("text")),
                                **base))
        except _Invalid as exc:
            reject("text", exc)

    offset_error = None
    try:
        offset = _parse_offset(fields.get("audio_start_offset_sec"))
    except _Invalid as exc:
        offset, offset_error = None, exc
    clip_error = None
    try:
        start = _parse_offset(fields.get("start_sec"), "start_sec")
        end = _parse_offset(fields.get("end_sec"), "end_sec")
        if start is not None and end is not None and end <= start:
            raise _Invalid("invalid_offset", f"`end_sec` {end} must be after `start_sec` {start}")
    except _Invalid as exc:
        start = end = None
        clip_error = exc
    asset_modality = _asset_modality(fields)
    if asset_modality == "invalid":
        reject(None, _Invalid("invalid_media_type", "`asset_id` needs `media_type` image, audio or video, got "
                                                    f"{str(fields.get('media_type'))[:40]!r}"))
    for modality in ("image", "audio", "video"):
        url, path = fields.get(f"{modality}_url"), fields.get(f"{modality}_file")
        asset = fields.get("asset_id") if asset_modality == modality else None
        if url is None and path is None and asset is None:
            continue
        # A file is the input (a URL or an asset wins): its size is read once, for routing and for its check.
        by_file = url is None and asset is None and isinstance(path, str) and bool(path.strip())
        resolved = _resolve(row.source, path.strip()) if by_file else None
        file_size = _FileSize(resolved, f"{modality}_file") if by_file else None
        try:
            v2 = plan.uses_v2(modality)
            if not v2 and modality == "audio" and by_file and plan.audio_as_asset(file_size.known):
                v2 = True  # Embed API v2, by an uploaded asset
            if modality == "video" and not v2:
                raise _Invalid("needs_api_v2", "video is embedded by Embed API v2 only: set api.version to v2 or "
                                               "leave it unset (auto)")
            if modality == "audio" and offset_error is not None:
                raise offset_error
            if modality != "image" and clip_error is not None and v2:
                raise clip_error
            if asset is not None and not v2:
                raise _Invalid("needs_api_v2", "`asset_id` is read by Embed API v2 only: set api.version to v2 or "
                                               "leave it unset (auto)")
            media = _media_fields(modality, v2, offset, start, end)
            # v1 keys are what earlier releases wrote (the offset, None for images): saved outputs keep matching.
            clip_key = (media.get("start_sec"), media.get("end_sec")) if v2 else (media.get("audio_start_offset_sec"),)
            options = clip_key + plan.options_key(modality, v2)
            if url is not None:  # the URL wins over a file, as in the API
                url = _check_url(url, f"{modality}_url")
                out.append(Item(modality=modality, url=url, route=plan.route(modality, None), **media,
                                content_hash=content_hash(modality, "url", url, *options), **base))
            elif asset is not None:
                asset = _check_asset(asset)
                out.append(Item(modality=modality, asset_id=asset, route=plan.route(modality, None), **media,
                                content_hash=content_hash(modality, "asset", asset, *options),
                                **base))
            else:
                if not by_file:
                    got = repr(path) if isinstance(path, str) else type(path).__name__
                    raise _Invalid("invalid_type", f"`{modality}_file` must be a non-empty path, got {got}")
                checked = _check_media_file(resolved, f"{modality}_file", modality, plan.model,
                                            media.get("audio_start_offset_sec"), v2, plan.asset_upload, file_size)
                clip = _clip_length(modality, checked.duration, media, f"{modality}_file {resolved}")
                route = plan.route(modality, clip, v2, checked.size)
                out.append(Item(modality=modality, file_path=resolved, route=route,
                                duration_sec=checked.duration if modality != "image" else None, **media,
                                content_hash=content_hash(modality, "bytes", checked.digest, *options),
                                upload=checked.upload, file_sha256=checked.digest if checked.upload else None,
                                file_size=checked.size if checked.upload else None, **base))
        except _Invalid as exc:
            reject(modality, exc)
    if not out:
        blank = "`text` is blank and " if isinstance(text, str) else ""
        out.append(DeadLetter(item_id, row.source, row.row_number, None, "validate", "no_input",
                              f"{where}: {blank}none of `text`, `image_url`, `image_file`, `audio_url`, "
                              "`audio_file`, `video_url`, `video_file`, `asset_id` is given"))
    return out


ROW_RECORDS = "rows"
# (row fingerprint, id fingerprint, modality mask, source, row number) of a row whose items all went on.
# The fingerprints are unsigned 64-bit: typed `int`, Beam would pick VarIntCoder (signed) and fail on half of them.
RowRecordOutput = TaggedOutput[Literal[ROW_RECORDS], Tuple[Any, ...]]


class _ToItems(beam.DoFn):
    def __init__(self, model: str, plan: Optional[RoutePlan] = None):
        self._model = model
        self._plan = plan or RoutePlan(model)
        self._items = {m: Metrics.counter(NAMESPACE, f"items_{m}") for m in MODALITIES}
        self._routes = {r: Metrics.counter(NAMESPACE, f"route_{r}") for r in ROUTES}

    def process(self, row: ManifestRow) -> Iterable[Union[Item, DeadLetterOutput, RowRecordOutput]]:
        mask, whole = 0, row.fingerprint is not None
        item_id = None
        for record in row_to_items(row, self._model, self._plan):
            if isinstance(record, DeadLetter):
                whole = False
                PROGRESS.add(done=1, dead_letters=1, rejected=1)
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, record)
            else:
                self._items[record.modality].inc()
                self._routes[record.route].inc()
                PROGRESS.add(items=1)
                mask |= MODALITY_BITS[record.modality]
                item_id = record.id
                whole = whole and record.file_path is None  # a local file may change under an unchanged row
                yield record
        if whole and mask:
            # Finalize lists the row as saved if none of its items ends as a dead letter or deferred.
            yield beam.pvalue.TaggedOutput(ROW_RECORDS, (row.fingerprint, fingerprint(item_id), mask, row.source,
                                                         row.row_number))


def _keep_first(keyed: Tuple[str, Iterable[Tuple[ManifestRow, str]]]) -> Iterable:
    _, rows = keyed
    ordered = sorted(rows, key=lambda pair: (pair[0].source, pair[0].row_number))
    if not ordered:  # an empty pane (streaming triggers can fire one)
        return
    first = ordered[0][0]
    yield first
    for row, item_id in ordered[1:]:
        PROGRESS.add(done=1, dead_letters=1, rejected=1)
        yield beam.pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter(
            item_id, row.source, row.row_number, None, "validate", "duplicate_id",
            f"{row.source} row {row.row_number}: `id` {item_id!r} is already used by "
            f"{first.source} row {first.row_number}", row=row.fields))


def _key_by_id(row: ManifestRow):
    try:
        item_id = _row_id(row)
    except _Invalid:
        item_id = None
    # Rows with a bad id are not grouped: each is rejected on its own later. Nor are rows with neither an id
    # nor an input: equal ones derive equal ids, and they should read no_input, not duplicate_id.
    raw_id = row.fields.get("id")
    if (raw_id is None or (isinstance(raw_id, str) and not raw_id.strip())) and not any(
            row.fields.get(f) is not None for f in _INPUTS):
        item_id = None
    key = item_id if item_id is not None else f"\x00{row.source}\x00{row.row_number}"
    return key, (row, item_id)


_UNSET = object()


class _FirstRowKeepsIdFn(beam.DoFn):
    """Stream grouping: the first row read with an id keeps it (manifests are read in order, one process)."""

    def __init__(self, state):
        self._state_handle = state

    def setup(self):
        self._state = self._state_handle.acquire()

    def start_bundle(self):
        self._saved = _UNSET

    def finish_bundle(self):
        self._saved = _UNSET  # not kept past a bundle, so the run's state can free them before finalize

    def process(self, row: ManifestRow) -> Iterable[Union[ManifestRow, DeadLetterOutput]]:
        key, (_, item_id) = _key_by_id(row)
        if item_id is None:
            yield row
            return
        if self._saved is _UNSET:  # loaded by the reader (before it yields a row), if it keeps them
            self._saved = self._state.saved_rows()
        saved = self._saved
        first = saved.claim_id(fingerprint(key), row.source, row.row_number) if saved is not None else None
        if first is None:
            first = self._state.first_row(key, row.source, row.row_number)
        if first is None:
            yield row
            return
        PROGRESS.add(done=1, dead_letters=1, rejected=1)
        yield beam.pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter(
            item_id, row.source, row.row_number, None, "validate", "duplicate_id",
            f"{row.source} row {row.row_number}: `id` {item_id!r} is already used by "
            f"{first[0]} row {first[1]}", row=row.fields))


class RejectDuplicateIds(beam.PTransform):
    """Keeps the first row of each id; later ones become dead letters.

    With `state` (a SharedRunState: the job in one process) rows pass as they are read and the first read
    keeps the id; without, rows are grouped by id and the first by manifest and row number keeps it."""

    def __init__(self, state=None):
        super().__init__()
        self._state = state

    def expand(self, rows):
        if self._state is not None:
            return rows | "FirstRowKeepsId" >> beam.ParDo(_FirstRowKeepsIdFn(self._state)).with_outputs(
                DEAD_LETTERS, main="rows")
        return (
            rows
            | "KeyById" >> beam.Map(_key_by_id)
            | "GroupById" >> beam.GroupByKey()
            | "KeepFirst" >> beam.FlatMap(_keep_first).with_outputs(DEAD_LETTERS, main="rows")
        )


class ValidateRows(beam.PTransform):
    """ManifestRow -> Item (one per modality), with a `dead_letters` output for what the API would reject.

    `state`: see RejectDuplicateIds."""

    def __init__(self, model: str, plan: Optional[RoutePlan] = None, state=None):
        super().__init__()
        if model not in MEDIA_RULES:
            raise ValueError(f"unknown model {model!r}; use one of {sorted(MEDIA_RULES)}")
        self._model = model
        self._plan = plan
        self._state = state

    def expand(self, rows):
        unique = rows | "RejectDuplicateIds" >> RejectDuplicateIds(self._state)
        items = unique.rows | "ToItems" >> beam.ParDo(_ToItems(self._model, self._plan)).with_outputs(
            DEAD_LETTERS, ROW_RECORDS, main="items")
        return {"items": items.items, ROW_RECORDS: items[ROW_RECORDS],
                DEAD_LETTERS: (unique[DEAD_LETTERS], items[DEAD_LETTERS])
                | "MergeValidationDeadLetters" >> beam.Flatten()}
