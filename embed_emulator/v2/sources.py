"""The media sources of v2 requests (url, base64_string, asset_id) and the checks of what they hold."""
from __future__ import annotations

import base64
import binascii
import io
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol, Tuple, Union

import numpy as np
from PIL import Image

from .. import media, video
from ..config import EmulatorConfig
from ..rules import MB, MediaError, invalid_message
from .errors import bad, megabytes, size_message, too_large
from .spec import BASE64_MAX, IMAGE_MIN_SIDE, M30, VIDEO_MAX_ASPECT, VIDEO_MAX_LONG, VIDEO_MAX_SHORT, VIDEO_MIN_SIDE


BLOCK = 1 << 20  # bytes per read when an asset's file is hashed (content keys)


@dataclass
class Source:
    """One media source: its bytes (base64, URL, image and document assets), or, for an
    audio/video asset, the path of its file, which the decoders open themselves so an asset of
    gigabytes is never held in memory."""
    data: Optional[bytes] = None
    url: Optional[str] = None
    filename: Optional[str] = None
    path: Optional[str] = None     # set instead of data: an audio/video asset's file

    @property
    def media(self) -> Union[bytes, str]:
        """What the decoders take: the bytes, or the file path."""
        return self.data if self.data is not None else self.path

    def blocks(self) -> Iterator[bytes]:
        """The bytes in order: all at once, or the file in blocks of BLOCK (content keys)."""
        if self.data is not None:
            yield self.data
            return
        try:
            f = open(self.path, "rb")
        except OSError:  # deleted since it was measured
            raise bad(f"The asset file `{self.filename}` is no longer there.", "resource_not_exist")
        with f:
            while True:
                block = f.read(BLOCK)
                if not block:
                    return
                yield block

    def metadata(self) -> dict:
        if self.url is not None:
            return {"input_url": self.url}
        return {"input_filename": self.filename} if self.filename else {}


class UploadedAsset(Protocol):
    """What the v2 calls need of an asset uploaded through /v1.3/assets (assets/store.py's Asset)."""
    path: str
    filename: str
    error: Optional[str]

    def status(self, now: float) -> str: ...


# asset id -> the uploaded asset, or None. Injected by the server: v2 does not import assets/.
AssetLookup = Callable[[str], Optional[UploadedAsset]]


def load_source(config: EmulatorConfig, assets: Optional[AssetLookup], ms: dict, path: str,
                kind: str, max_bytes: int, fetch_max: Optional[int] = None,
                asset_max: Optional[int] = None) -> Source:
    """The bytes of one media source (url, base64_string or asset_id), with the size checks
    that need no decoding: 413 for a measured overage. An asset_id names a config-mapped file
    (`assets` knob) first, else an uploaded asset, which must be `ready`.

    An audio or video asset is not read: the Source holds its path, measured against
    `asset_max` (default max_bytes) only, never against the emulator's read cap `fetch_max`.
    Image and document assets are read, within max_bytes and fetch_max."""
    given = [k for k in ("url", "base64_string", "asset_id") if ms.get(k) is not None]
    if len(given) != 1:
        raise bad(invalid_message(path, "Provide exactly one of `url`, `base64_string` or "
                                  "`asset_id`."))
    which = given[0]
    value = ms[which]
    field_path = f"{path}.{which}"
    if not isinstance(value, str) or not value.strip():
        raise bad(invalid_message(field_path, "It must be a non-empty string."))
    if which == "base64_string":
        limit = BASE64_MAX.get(kind, max_bytes)
        if len(value) > limit:
            raise too_large(f"The `{field_path}` is too large. Base64 string size "
                            f"({megabytes(len(value))}) exceeds maximum limit of {limit // MB} MB.")
        try:
            data = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise bad(invalid_message(field_path, "It is not valid base64."))
        source = Source(data)
    elif which == "url":
        cap = max_bytes if fetch_max is None else fetch_max
        try:
            data = media.fetch_url(value, field_path, config.fetch_timeout_sec, cap)
        except MediaError as exc:
            raise bad(str(exc))
        if len(data) > cap:
            if fetch_max is not None:  # emulator limit, not the API's
                raise bad(invalid_message(field_path, f"The emulator reads at most "
                                          f"{cap // MB} MB from a URL."))
            raise too_large(f"The file at `{field_path}` is too large. File size (more than "
                            f"{max_bytes // MB} MB) exceeds maximum limit of {max_bytes // MB} MB.")
        source = Source(data, url=value)
    else:
        file_path, filename = _asset_file(config, assets, value, field_path)
        if kind in ("audio", "video"):
            return _file_source(file_path, filename, value, path, field_path,
                                max_bytes if asset_max is None else asset_max)
        cap = max_bytes if fetch_max is None else fetch_max
        try:
            size = os.path.getsize(file_path)
            if size > cap:  # measured before reading: an asset may be gigabytes
                if fetch_max is not None:  # emulator limit, not the API's
                    raise bad(invalid_message(field_path, f"The emulator reads at most "
                                              f"{cap // MB} MB of an asset."))
                raise too_large(size_message(size, max_bytes, f"The `{path}` is too large. "))
            with open(file_path, "rb") as f:
                data = f.read()
        except OSError:
            raise bad(f"The asset `{value}` is not ready.", "resource_not_exist")
        source = Source(data, filename=filename)
    if not source.data:
        raise bad(invalid_message(field_path, "The file is empty."))
    if len(source.data) > max_bytes:
        raise too_large(size_message(len(source.data), max_bytes,
                                     f"The `{path}` is too large. "))
    return source


def _file_source(file_path: str, filename: str, asset_id: str, path: str, field_path: str,
                 limit: int) -> Source:
    """An audio/video asset by path: sized (413 over `limit`), opened once to see it is there,
    not read."""
    try:
        size = os.path.getsize(file_path)
        with open(file_path, "rb"):
            pass
    except OSError:
        raise bad(f"The asset `{asset_id}` is not ready.", "resource_not_exist")
    if size == 0:
        raise bad(invalid_message(field_path, "The file is empty."))
    if size > limit:
        raise too_large(size_message(size, limit, f"The `{path}` is too large. "))
    return Source(path=file_path, filename=filename)


def _asset_file(config: EmulatorConfig, assets: Optional[AssetLookup], asset_id: str,
                field_path: str) -> Tuple[str, str]:
    """(file path, filename) of an asset id. An uploaded asset still processing, or failed, is a
    400 (codes: emulator choice) naming its state, so a client knows to poll or re-upload."""
    mapped = config.assets or {}
    if asset_id in mapped:
        return mapped[asset_id], os.path.basename(mapped[asset_id])
    asset = assets(asset_id) if assets is not None else None
    if asset is None:
        raise bad(f"The asset `{asset_id}` does not exist.", "resource_not_exist")
    status = asset.status(time.time())
    if status == "processing":
        raise bad(f"The asset `{asset_id}` (`{field_path}`) is not ready: its status is "
                  f"`processing`. Poll GET /assets/{asset_id} until it is `ready`.",
                  "asset_not_ready")
    if status == "failed":
        raise bad(f"The asset `{asset_id}` (`{field_path}`) cannot be used: its status is "
                  f"`failed` ({asset.error}). Upload the file again.", "asset_failed")
    return asset.path, asset.filename


def load_image(data: bytes, path: str) -> Image.Image:
    if media.sniff_image(data) is None:
        raise bad(invalid_message(path, "The image must be in JPEG or PNG format."))
    try:
        width, height = Image.open(io.BytesIO(data)).size
    except Exception:
        raise bad(invalid_message(path, "The image could not be decoded."))
    if min(width, height) < IMAGE_MIN_SIDE:
        raise bad(invalid_message(
            path, f"The image must be at least {IMAGE_MIN_SIDE}x{IMAGE_MIN_SIDE} pixels."))
    try:
        return media.decode_image(data)
    except Exception:
        raise bad(invalid_message(path, "The image could not be decoded."))


def head_of(data_or_path: Union[bytes, str], n: int = 64) -> bytes:
    """The first n bytes of inline bytes or of a file."""
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return bytes(data_or_path[:n])
    with open(data_or_path, "rb") as f:
        return f.read(n)


def load_audio(data_or_path: Union[bytes, str], path: str) -> Tuple[np.ndarray, int]:
    if media.sniff_audio(head_of(data_or_path)) is None:
        raise bad(invalid_message(path, "The audio must be in WAV, MP3 or FLAC format."))
    try:
        samples, rate = media.decode_audio(data_or_path)
    except Exception:
        raise bad(invalid_message(path, "The audio could not be decoded."))
    if samples.size == 0:
        raise bad(invalid_message(path, "The audio contains no samples."))
    return samples, rate


def probe_video(data_or_path: Union[bytes, str], path: str, model: str) -> video.VideoInfo:
    try:
        info = video.probe(data_or_path)
    except (video.VideoError, OSError) as exc:
        raise bad(invalid_message(path, f"The video could not be decoded: {exc}."))
    if model == M30:
        short, long_ = sorted((info.width, info.height))
        if short < VIDEO_MIN_SIDE or long_ > VIDEO_MAX_LONG or short > VIDEO_MAX_SHORT:
            raise bad(invalid_message(
                path, f"The video resolution ({info.width}x{info.height}) must be between "
                f"{VIDEO_MIN_SIDE}x{VIDEO_MIN_SIDE} and {VIDEO_MAX_LONG}x{VIDEO_MAX_SHORT}."))
        if long_ / short > VIDEO_MAX_ASPECT:
            raise bad(invalid_message(
                path, f"The video aspect ratio ({info.width}:{info.height}) must be between "
                f"1:{VIDEO_MAX_ASPECT} and {VIDEO_MAX_ASPECT}:1."))
    if info.duration <= 0:
        raise bad(invalid_message(path, "The video has no duration."))
    return info


def document_text(data: bytes, path: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad(invalid_message(path, "The document must be a PDF, plain text or Markdown "
                                  "file (UTF-8)."))
    if not text.strip():
        raise bad(invalid_message(path, "The document has no content to embed."))
    return text
