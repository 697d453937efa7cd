"""What an asset's bytes are: its type from the first bytes and name, and the decode checks that make it ready or failed."""
from __future__ import annotations

import mimetypes
from dataclasses import dataclass, field
from typing import Optional, Tuple

import soundfile
from PIL import Image

from .. import media, video

__all__ = ["CheckError", "Inspection", "sniff", "inspect", "mime_of"]

_AUDIO_MIME = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
_IMAGE_MIME = {"png": "image/png", "jpeg": "image/jpeg"}


class CheckError(Exception):
    """The bytes are not usable media of their type; the message becomes the asset's error.message."""


@dataclass
class Inspection:
    kind: str
    file_type: str
    size: int
    duration: Optional[float] = None
    technical: dict = field(default_factory=dict)


def mime_of(filename: Optional[str], fallback: str = "application/octet-stream") -> str:
    guessed = mimetypes.guess_type(filename or "")[0]
    return guessed or fallback


def sniff(head: bytes, filename: Optional[str]) -> Tuple[str, str]:
    """(kind, MIME type) of a direct or URL upload, which names no type: the magic bytes first
    (the name is not trusted), then the name; anything else is taken for a video (emulator choice)
    and the video probe decides."""
    image = media.sniff_image(head)
    if image is not None:
        return "image", _IMAGE_MIME[image]
    audio = media.sniff_audio(head)
    if audio is not None:
        return "audio", _AUDIO_MIME[audio]
    guessed = mime_of(filename)
    for kind in ("image", "audio", "video"):
        if guessed.startswith(kind + "/"):
            return kind, guessed
    return "video", guessed


def inspect(path: str, kind: str, size: int, filename: Optional[str]) -> Inspection:
    """The decode checks of the emulator's embed paths, run on the file: an image must open and
    load, audio must open and give samples, a video must probe (its first frame decodes)."""
    if size == 0:
        raise CheckError("The file is empty.")
    if kind == "image":
        return _image(path, size)
    if kind == "audio":
        return _audio(path, size, filename)
    return _video(path, size, filename)


def _image(path: str, size: int) -> Inspection:
    try:
        with Image.open(path) as image:
            fmt, (width, height), mode = image.format, image.size, image.mode
            image.load()
    except Exception as exc:  # Pillow raises many types for broken files
        raise CheckError(f"The file is not a decodable image ({exc.__class__.__name__}).") from exc
    mime = Image.MIME.get(fmt or "", "application/octet-stream")
    return Inspection("image", mime, size, None, {
        "file_size_bytes": size, "file_mime_type": mime,
        "file_container_format": (fmt or "").lower(), "image_width": width,
        "image_height": height, "image_format": (fmt or "").lower(),
        "has_alpha": mode in ("RGBA", "LA", "PA")})


def _audio(path: str, size: int, filename: Optional[str]) -> Inspection:
    try:
        with soundfile.SoundFile(path) as f:
            frames, rate, channels = f.frames, f.samplerate, f.channels
            container, codec = f.format, f.subtype
            first = f.read(1024, dtype="float32")
    except Exception as exc:  # libsndfile errors, truncated files
        raise CheckError(f"The file is not decodable audio ({exc.__class__.__name__}).") from exc
    if frames <= 0 or len(first) == 0:
        raise CheckError("The audio contains no samples.")
    duration = frames / rate
    mime = _AUDIO_MIME.get(container.lower(), mime_of(filename, "audio/" + container.lower()))
    return Inspection("audio", mime, size, duration, {
        "file_size_bytes": size, "file_mime_type": mime,
        "file_container_format": container.lower(), "audio_codec": codec.lower(),
        "audio_sample_rate": rate, "audio_channels": channels,
        "audio_duration_seconds": round(duration, 6), "has_audio": True,
        "total_audio_streams": 1, "total_video_streams": 0})


def _video(path: str, size: int, filename: Optional[str]) -> Inspection:
    try:
        info = video.probe(path)
    except (video.VideoError, OSError) as exc:
        raise CheckError(f"The file is not a playable video ({exc}).") from exc
    if info.duration <= 0:
        raise CheckError("The video has no duration.")
    names = info.format_name.split(",")
    mime = ("video/mp4" if "mp4" in names else "video/webm" if "webm" in names
            else mime_of(filename, "video/" + names[0]))
    technical = {
        "file_size_bytes": size, "file_mime_type": mime,
        "file_container_format": info.format_name, "video_codec": info.video_codec,
        "video_width": info.width, "video_height": info.height,
        "video_duration_seconds": round(info.duration, 6), "has_audio": info.has_audio,
        "total_video_streams": 1, "storage_aspect_ratio": round(info.width / info.height, 6)}
    if info.fps:
        technical["video_fps"] = round(info.fps, 6)
    return Inspection("video", mime, size, info.duration, technical)
