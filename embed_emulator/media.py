"""Media checks the API makes on images and audio, and fetching inputs given by URL.

Every failure raises rules.MediaError with a message naming the field, so it can be
reported as that modality's error_message.
"""
from __future__ import annotations

import base64
import io
import ipaddress
import logging
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional, Tuple, Union

import numpy as np
import soundfile
from PIL import Image

from . import rules
from .rules import MediaError, invalid_message

logger = logging.getLogger(__name__)

__all__ = ["sniff_image", "sniff_audio", "load_image", "decode_image", "load_audio",
           "decode_audio", "fetch_url"]


def sniff_image(data: bytes) -> Optional[str]:
    """"png" or "jpeg" from the magic bytes; the file name is never trusted."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return None


def sniff_audio(data: bytes) -> Optional[str]:
    """"wav", "flac" or "mp3" from the magic bytes."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def load_image(data: bytes, field: str) -> Image.Image:
    """The decoded RGB image, after the documented format, size and dimension checks."""
    if not data:
        raise MediaError(invalid_message(field, "The file is empty."))
    if sniff_image(data) is None:
        raise MediaError(invalid_message(field, "The image must be in JPEG or PNG format."))
    if len(data) > rules.IMAGE_MAX_BYTES:
        raise MediaError(invalid_message(field, "The image file size must not exceed 5 MB."))
    try:
        width, height = Image.open(io.BytesIO(data)).size
    except Exception as exc:  # Pillow raises many types for broken files
        raise MediaError(invalid_message(field, "The image could not be decoded.")) from exc
    if min(width, height) < rules.IMAGE_MIN_SIDE:
        raise MediaError(invalid_message(
            field, f"The image must be at least {rules.IMAGE_MIN_SIDE}x{rules.IMAGE_MIN_SIDE} pixels."))
    try:
        return decode_image(data)
    except Exception as exc:
        raise MediaError(invalid_message(field, "The image could not be decoded.")) from exc


def decode_image(data: bytes) -> Image.Image:
    """Decode to RGB, no checks. Shared with vectors.image_vector so both see the same pixels."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft("RGB", (64, 64))  # decode big JPEGs at reduced scale: only 16x16 is used
    return image.convert("RGB")


def load_audio(data: bytes, field: str, model: str) -> Tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate), after the documented format and size checks."""
    if not data:
        raise MediaError(invalid_message(field, "The file is empty."))
    if sniff_audio(data) is None:
        raise MediaError(invalid_message(field, "The audio must be in WAV, MP3 or FLAC format."))
    max_bytes = rules.AUDIO_MAX_BYTES[model]
    if len(data) > max_bytes:
        raise MediaError(invalid_message(
            field, f"The audio file size must not exceed {max_bytes // rules.MB} MB."))
    try:
        samples, sample_rate = decode_audio(data)
    except Exception as exc:  # libsndfile errors, truncated files
        raise MediaError(invalid_message(field, "The audio could not be decoded.")) from exc
    if samples.shape[0] == 0:
        raise MediaError(invalid_message(field, "The audio contains no samples."))
    return samples, sample_rate


# Frames per read when a WAV/FLAC file is decoded block by block.
AUDIO_BLOCK_FRAMES = 1 << 16


def decode_audio(data: Union[bytes, str, os.PathLike]) -> Tuple[np.ndarray, int]:
    """Decode to mono float32, no checks. Shared with vectors.audio_segment_vectors.

    Bytes are decoded at once. A WAV/FLAC file path is decoded block by block into the mono
    array, so the multichannel float32 copy of a long file never exists; same samples as at
    once (PCM decodes sample by sample; each frame's channel mean is its own). An MP3 file is
    read in one call like bytes: libsndfile's MP3 decoder gives different samples when the
    same stream is read in several calls."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        samples, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return samples.mean(axis=1), int(sample_rate)
    path = os.fspath(data)
    with soundfile.SoundFile(path) as f:
        blockwise = f.format in ("WAV", "WAVEX", "FLAC")
    if not blockwise:
        samples, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
        return samples.mean(axis=1), int(sample_rate)
    with soundfile.SoundFile(path) as f:
        if f.seekable():
            f.seek(0)  # as soundfile.read does
        sample_rate, total = f.samplerate, f.frames
        mono = np.empty(max(0, total), dtype=np.float32)
        filled = 0
        while filled < total:
            block = f.read(min(AUDIO_BLOCK_FRAMES, total - filled), dtype="float32",
                           always_2d=True)
            if len(block) == 0:
                break
            mono[filled:filled + len(block)] = block.mean(axis=1)
            filled += len(block)
    return mono[:filled], int(sample_rate)


def fetch_url(url: str, field: str, timeout: float, max_bytes: int) -> bytes:
    """The body at an http(s) URL; any failure names the field."""
    try:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname
    except ValueError:
        parsed, host = None, None
    if parsed is None or parsed.scheme not in ("http", "https") or not host:
        raise MediaError(invalid_message(field, "The URL must be a valid http or https URL."))
    opener = _LOOPBACK_OPENER if _is_loopback(host) else _DEFAULT_OPENER
    headers = {"User-Agent": "embed-emulator"}
    if parsed.username is not None:  # user:password@ in the URL: HTTP basic auth, as a browser would
        token = f"{urllib.parse.unquote(parsed.username)}:{urllib.parse.unquote(parsed.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(token.encode("utf-8")).decode("ascii")
        url = urllib.parse.urlunsplit(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1]))
    try:
        with opener.open(urllib.request.Request(url, headers=headers),
                         timeout=timeout) as response:
            # One byte over the limit is enough for load_* to report the size error.
            return response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise MediaError(invalid_message(
            field, f"The file could not be downloaded from the URL (HTTP {exc.code}).")) from exc
    except (urllib.error.URLError, socket.timeout, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        logger.debug("fetch of %s failed: %r", url, reason)
        raise MediaError(invalid_message(
            field, f"The file could not be downloaded from the URL ({reason}).")) from exc


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Loopback fetches (tests, local file servers) must not go through an env proxy.
_LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_DEFAULT_OPENER = urllib.request.build_opener()
