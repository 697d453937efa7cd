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
           "mp3_bytes"]


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
