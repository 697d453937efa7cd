"""Tiny deterministic media for tests, samples and benchmarks.

Same arguments give identical bytes; different seeds or frequencies give clearly
different content (and so clearly different vectors).
"""
from __future__ import annotations

import io

import numpy as np
import soundfile
from PIL import Image

__all__ = ["image_array", "png_bytes", "jpeg_bytes", "tone", "wav_bytes", "flac_bytes",
           "mp3_bytes", "mp4_bytes"]


def image_array(width: int = 160, height: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth RGB pattern (uint8, height x width x 3): seeded waves plus a disc.
    Smooth on purpose, so JPEG keeps it close to the PNG of the same seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / float(max(width, height))
    channels = []
    for _ in range(3):
        fx, fy = rng.uniform(-2.5, 2.5, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        channels.append(0.5 + 0.4 * np.sin(2 * np.pi * (fx * x + fy * y) + phase))
    pixels = np.stack(channels, axis=-1)
    cx, cy, radius = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.1, 0.25)
    disc = (x - cx) ** 2 + (y - cy) ** 2 < radius ** 2
    pixels[disc] = rng.uniform(0, 1, size=3)
    return (pixels * 255).round().astype(np.uint8)


def _encode_image(width: int, height: int, seed: int, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_array(width, height, seed), "RGB").save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bytes(width: int = 160, height: int = 160, seed: int = 0) -> bytes:
    return _encode_image(width, height, seed, "PNG")


def jpeg_bytes(width: int = 160, height: int = 160, seed: int = 0) -> bytes:
    return _encode_image(width, height, seed, "JPEG", quality=90)


def tone(seconds: float = 2.0, freq: float = 440.0, sample_rate: int = 16000) -> np.ndarray:
    """A sine with its second harmonic and a slow tremolo, float32 mono."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = np.sin(2 * np.pi * freq * t) + 0.3 * np.sin(2 * np.pi * 2 * freq * t)
    return (0.25 * wave * (0.8 + 0.2 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)


def _encode_audio(seconds: float, freq: float, sample_rate: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(seconds, freq, sample_rate), sample_rate, format=fmt,
                    subtype=subtype)
    return buffer.getvalue()


def wav_bytes(seconds: float = 2.0, freq: float = 440.0, sample_rate: int = 16000) -> bytes:
    return _encode_audio(seconds, freq, sample_rate, "WAV", "PCM_16")


def flac_bytes(seconds: float = 2.0, freq: float = 440.0, sample_rate: int = 16000) -> bytes:
    return _encode_audio(seconds, freq, sample_rate, "FLAC", "PCM_16")


def mp3_bytes(seconds: float = 2.0, freq: float = 440.0, sample_rate: int = 16000) -> bytes:
    return _encode_audio(seconds, freq, sample_rate, "MP3", "MPEG_LAYER_III")


# ---- video ---------------------------------------------------------------------------

def _video_codec() -> str:
    """libx264 when the PyAV wheel has it (it does on the manylinux wheels), else MPEG-4 part 2."""
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # av.codec.codec.UnknownCodecError; older PyAV raised ValueError
        return "mpeg4"


def _video_frame(base: np.ndarray, t: float, seconds: float, seed: int) -> np.ndarray:
    """The frame at time t: the seeded pattern scrolled sideways and tinted by the second,
    plus a bright square that crosses the picture. Segments a few seconds apart look clearly
    different; frames within a second stay similar."""
    height, width = base.shape[:2]
    second = int(t)
    frame = np.roll(base, shift=(second * width) // 7, axis=1).astype(np.int16)
    rng = np.random.default_rng((seed, second))
    frame += rng.integers(-60, 61, size=3, dtype=np.int16)
    side = max(8, min(width, height) // 6)
    x = int((width - side) * (t / seconds if seconds > 0 else 0.0))
    y = (height - side) // 2
    frame[y:y + side, x:x + side] = (255, 255, 255)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _video_tone(start: float, count: int, sample_rate: int, seed: int) -> np.ndarray:
    """Audio samples from `start`: a tone whose pitch steps every 2 s, so audio segments differ."""
    t = start + np.arange(count) / sample_rate
    step = np.floor(t / 2.0)
    freq = 220.0 * (1.0 + ((step * 5 + seed) % 11) / 4.0)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    return (0.25 * np.sin(phase)).astype(np.float32)


def mp4_bytes(seconds: float = 4.0, width: int = 360, height: int = 360, fps: int = 4,
              seed: int = 0, with_audio: bool = True) -> bytes:
    """A tiny real MP4: H.264 video (MPEG-4 part 2 if the PyAV wheel lacks libx264) and, when
    with_audio, a mono 16 kHz AAC track. The picture and the pitch change over time, so
    segments of one clip get different vectors. Same arguments give identical bytes
    (single-threaded encoders, no creation time). A 10 s 360x360 clip is ~100 KB."""
    import av

    sample_rate = 16000
    buffer = io.BytesIO()
    container = av.open(buffer, mode="w", format="mp4")
    codec = _video_codec()
    video = container.add_stream(codec, rate=fps)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.codec_context.thread_count = 1
    if codec == "libx264":
        video.codec_context.options = {"preset": "ultrafast", "crf": "36", "tune": "zerolatency"}
    else:
        video.codec_context.bit_rate = 200_000
    audio = None
    if with_audio:
        audio = container.add_stream("aac", rate=sample_rate)
        audio.codec_context.layout = "mono"
        audio.codec_context.bit_rate = 24_000
        audio.codec_context.thread_count = 1
    base = image_array(width, height, seed)
    frames = max(1, int(round(seconds * fps)))
    for index in range(frames):
        frame = av.VideoFrame.from_ndarray(_video_frame(base, index / fps, seconds, seed),
                                           format="rgb24")
        frame.pts = index
        container.mux(video.encode(frame))
    container.mux(video.encode())
    if audio is not None:
        total = int(round(seconds * sample_rate))
        chunk = 1024
        for start in range(0, total, chunk):
            count = min(chunk, total - start)
            samples = _video_tone(start / sample_rate, count, sample_rate, seed)
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    container.close()
    return buffer.getvalue()
