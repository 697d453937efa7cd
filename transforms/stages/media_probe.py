"""Durations of local video files, measured before any call (to route sync vs async and check limits)."""
from __future__ import annotations

import io
from typing import Union

__all__ = ["MEDIA_EXTRA", "MissingMediaDecoder", "video_duration"]

# Pillow, soundfile and PyAV: what checks local media files before any call (and what the emulator decodes with).
MEDIA_EXTRA = "pip install 'tl-embed-pipeline[media]'"


class MissingMediaDecoder(ImportError):
    """A local media file needs a decoder that is not installed (the `media` extra)."""


def video_duration(data: Union[bytes, str]) -> float:
    """Seconds of the longest stream: container metadata first, decoding the timestamps only if absent."""
    try:
        import av  # PyAV: FFmpeg in its wheels; imported here so v1-only jobs never load it
    except ImportError as exc:
        raise MissingMediaDecoder(f"measuring a local video's duration needs PyAV: {MEDIA_EXTRA}") from exc

    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with av.open(source, mode="r") as container:
        if container.duration:
            return container.duration / 1_000_000.0  # av.time_base is microseconds
        best = 0.0
        for stream in container.streams:
            if stream.duration and stream.time_base:
                best = max(best, float(stream.duration * stream.time_base))
        if best:
            return best
        last = 0.0
        for packet in container.demux(container.streams.video[0] if container.streams.video else None):
            if packet.pts is not None and packet.time_base is not None:
                end = packet.pts + (packet.duration or 0)
                last = max(last, float(end * packet.time_base))
        return last
