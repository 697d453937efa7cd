"""Video containers with PyAV (FFmpeg inside its wheels): metadata, duration, decoded content.

    probe_duration(data_or_path) -> float   # cheap: container metadata first, decode only if needed
    probe(data_or_path) -> VideoInfo        # duration, size, streams; decodes one frame (playability)
    decode(data, start, end) -> Decoded     # sampled small frames plus mono audio of [start, end)

The pipeline may import probe_duration to measure local files before any call, so this module
imports nothing from the server side and loads PyAV only when first used.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import numpy as np

__all__ = ["VideoError", "VideoInfo", "Decoded", "probe", "probe_duration", "decode",
           "FRAME_GRID", "AUDIO_RATE"]

FRAME_GRID = 16        # decoded frames are kept as 16x16 RGB: all the vectors use
SAMPLE_FPS = 2.0       # at most this many frames per second are kept (the rest are only decoded)
AUDIO_RATE = 16000     # audio tracks are resampled to mono at this rate

Source = Union[bytes, bytearray, memoryview, str, os.PathLike]


class VideoError(Exception):
    """The data is not a playable video container (or has no video stream)."""


@dataclass
class VideoInfo:
    duration: float
    width: int
    height: int
    fps: Optional[float]
    has_audio: bool
    video_codec: str
    format_name: str


@dataclass
class Decoded:
    """Content of [start, end): `frames` holds (time, 16x16x3 uint8) sampled at <= SAMPLE_FPS;
    `audio` is mono float32 at AUDIO_RATE, sample 0 at time `audio_start`."""
    start: float
    end: float
    frames: List[Tuple[float, np.ndarray]] = field(default_factory=list)
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    audio_start: float = 0.0
    has_audio: bool = False

    def frames_between(self, start: float, end: float) -> np.ndarray:
        """The sampled frames with start <= t < end, as (n, 16, 16, 3); when none falls inside
        (a window shorter than the sampling step), the last frame before `end`."""
        inside = [f for t, f in self.frames if start <= t < end]
        if not inside:
            before = [f for t, f in self.frames if t < end] or [f for _, f in self.frames[:1]]
            inside = before[-1:]
        if not inside:
            return np.zeros((0, FRAME_GRID, FRAME_GRID, 3), dtype=np.uint8)
        return np.stack(inside)

    def audio_between(self, start: float, end: float) -> np.ndarray:
        lo = max(0, int(round((start - self.audio_start) * AUDIO_RATE)))
        hi = max(lo, int(round((end - self.audio_start) * AUDIO_RATE)))
        return self.audio[lo:hi]


def _av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is in install_requires
        raise VideoError("PyAV (the `av` package) is not installed") from exc
    av.logging.set_level(av.logging.PANIC)  # FFmpeg's own stderr chatter about broken input
    return av


def _open(source: Source):
    av = _av()
    target = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) \
        else os.fspath(source)
    try:
        return av.open(target, mode="r", metadata_errors="ignore")
    except Exception as exc:  # av.error.InvalidDataError and friends; FileNotFoundError
        if isinstance(exc, FileNotFoundError):
            raise
        raise VideoError(f"not a readable media container ({exc.__class__.__name__})") from exc


def _container_duration(container) -> Optional[float]:
    """Duration from metadata alone: the container's, else the longest stream's."""
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
    best = None
    for stream in container.streams:
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            seconds = float(stream.duration * stream.time_base)
            best = seconds if best is None else max(best, seconds)
    return best


def _decoded_duration(container) -> float:
    """Duration by reading every packet: the end of the last packet of any stream."""
    end = 0.0
    for packet in container.demux():
        if packet.pts is None or packet.time_base is None:
            continue
        stop = packet.pts + (packet.duration or 0)
        end = max(end, float(stop * packet.time_base))
    return end


def probe_duration(data_or_path: Source) -> float:
    """Seconds of media in a container (bytes or a path). Reads the container metadata; only a
    container without a duration (some streamed formats) is read packet by packet."""
    container = _open(data_or_path)
    try:
        duration = _container_duration(container)
        if duration is None:
            duration = _decoded_duration(container)
        return float(duration)
    finally:
        container.close()


def probe(data_or_path: Source) -> VideoInfo:
    """Metadata of a video, after checking that its first frame decodes (playability)."""
    container = _open(data_or_path)
    try:
        if not container.streams.video:
            raise VideoError("the file has no video stream")
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream), None)
        except Exception as exc:
            raise VideoError(f"the video stream does not decode ({exc.__class__.__name__})") from exc
        if first is None:
            raise VideoError("the video stream has no frames")
        width = stream.codec_context.width or first.width
        height = stream.codec_context.height or first.height
        duration = _container_duration(container)
        if duration is None:
            container.seek(0)
            duration = _decoded_duration(container)
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(duration=float(duration), width=int(width), height=int(height),
                         fps=float(rate) if rate else None,
                         has_audio=bool(container.streams.audio),
                         video_codec=stream.codec_context.name,
                         format_name=container.format.name)
    finally:
        container.close()


def decode(data_or_path: Source, start: float = 0.0, end: Optional[float] = None,
           audio: bool = True) -> Decoded:
    """Decode [start, end) of a video: frames sampled at SAMPLE_FPS as 16x16 RGB, and (unless
    audio is False) the first audio track as mono float32 at AUDIO_RATE (empty when there is
    none)."""
    av = _av()
    container = _open(data_or_path)
    end = math.inf if end is None else end
    result = Decoded(start=start, end=end)
    try:
        if not container.streams.video:
            raise VideoError("the file has no video stream")
        vstream = container.streams.video[0]
        # The default (slice) threading: frame threading ("AUTO") deadlocks on close when the
        # loop below stops before the end of the file.
        streams = [vstream]
        astream = container.streams.audio[0] if audio and container.streams.audio else None
        resampler = None
        if astream is not None:
            streams.append(astream)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        if start > 1.0:
            # Seek to the keyframe before `start`; frames before it are decoded and dropped.
            container.seek(int(start * 1_000_000), backward=True, any_frame=False)
        chunks: List[np.ndarray] = []
        audio_start: Optional[float] = None
        last_bucket = -1
        done_video = done_audio = False
        packets = container.demux(*streams)
        for packet in packets:
            if packet.stream is vstream and done_video:
                continue
            if packet.stream is astream and done_audio:
                continue
            try:
                frames = packet.decode()
            except Exception as exc:  # corrupt packet in the middle of the file
                raise VideoError(f"the media does not decode ({exc.__class__.__name__})") from exc
            for frame in frames:
                t = frame.time
                if t is None:
                    continue
                if packet.stream is vstream:
                    if t >= end:
                        done_video = True
                        break
                    if t < start:
                        continue
                    bucket = int(math.floor(t * SAMPLE_FPS))
                    if bucket == last_bucket:
                        continue
                    last_bucket = bucket
                    small = frame.reformat(width=FRAME_GRID, height=FRAME_GRID, format="rgb24",
                                           interpolation="AREA")
                    result.frames.append((float(t), small.to_ndarray()))
                else:
                    if t >= end:
                        done_audio = True
                        break
                    for out in resampler.resample(frame):
                        samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                        if audio_start is None:
                            audio_start = float(out.time if out.time is not None else t)
                        chunks.append(samples)
            if done_video and (astream is None or done_audio):
                break
        packets.close()
        if not result.frames:
            raise VideoError("no video frames in the requested time range")
        if chunks:
            result.audio = np.concatenate(chunks)
            result.audio_start = audio_start or 0.0
            result.has_audio = True
        return result
    finally:
        container.close()
