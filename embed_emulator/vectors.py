"""Deterministic, content-derived unit vectors: similar inputs give similar vectors.

Each modality is turned into a small feature vector (text: hashed character 3-grams;
image: a 16x16 RGB grid; audio: per-segment spectral band energies), then projected to
the model's dimension by one fixed random matrix seeded by the model name only. Random
projection keeps cosine similarity roughly unchanged, so "a cat on a mat" lands near
"a cat on a hat" and far from "stock market report". Nothing here is the real model.
"""
from __future__ import annotations

import hashlib
import math
import threading
from functools import lru_cache
from typing import List, Tuple

import numpy as np
from PIL import Image

from . import media, rules

__all__ = ["text_vector", "image_vector", "audio_segment_vectors", "image_vector_from_image",
           "audio_segment_vectors_from_samples", "dimension"]

TEXT_BUCKETS = 4096
IMAGE_GRID = 16
AUDIO_BANDS = 64
# Rows of the projection matrix: text buckets, image pixels, audio bands, one bias per modality.
_TEXT_ROWS = slice(0, TEXT_BUCKETS)
_IMAGE_ROWS = slice(_TEXT_ROWS.stop, _TEXT_ROWS.stop + IMAGE_GRID * IMAGE_GRID * 3)
_AUDIO_ROWS = slice(_IMAGE_ROWS.stop, _IMAGE_ROWS.stop + AUDIO_BANDS)
_BIAS_ROW = {"text": _AUDIO_ROWS.stop, "image": _AUDIO_ROWS.stop + 1, "audio": _AUDIO_ROWS.stop + 2}
_FEATURE_ROWS = _AUDIO_ROWS.stop + 3
# Small constant feature: keeps flat images and silence from becoming zero vectors.
_BIAS_WEIGHT = 1e-3
# Band edges in Hz, independent of the sample rate so resampled audio stays similar.
_BAND_EDGES_HZ = np.geomspace(40.0, 12000.0, AUDIO_BANDS + 1)
_DECIMALS = 7  # wire floats stay short; the norm stays 1 within 1e-6

_projections: dict = {}
_projection_lock = threading.Lock()


def dimension(model_name: str) -> int:
    return rules.MODEL_DIMS[_model(model_name)]


def _model(model_name: str) -> str:
    model = rules.canonical_model(model_name)
    if model is None:
        raise ValueError(f"unknown model {model_name!r}")
    return model


def _projection(model: str) -> np.ndarray:
    """The (features x dims) Gaussian matrix of a model; built once, seeded by its name."""
    matrix = _projections.get(model)
    if matrix is None:
        with _projection_lock:
            matrix = _projections.get(model)
            if matrix is None:
                seed = int.from_bytes(hashlib.sha256(model.encode()).digest()[:8], "little")
                rng = np.random.default_rng(seed)
                matrix = rng.standard_normal((_FEATURE_ROWS, rules.MODEL_DIMS[model]),
                                             dtype=np.float32)
                _projections[model] = matrix
    return matrix


def _unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to L2 norm 1, rounded for the wire."""
    rows = rows.astype(np.float64)
    rows /= np.linalg.norm(rows, axis=-1, keepdims=True)
    return np.round(rows, _DECIMALS)


# ---- text ---------------------------------------------------------------------------

_U64 = np.uint64


def _text_buckets(text: str) -> np.ndarray:
    """Bucket index of every character 3-gram of the lowercased, space-normalised text."""
    padded = " " + " ".join(text.lower().split()) + " "
    codes = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if codes.size < 3:
        codes = np.concatenate([codes, np.zeros(3 - codes.size, dtype=np.uint64)])
    # A fixed integer hash (not Python's hash(), which changes per process).
    h = (codes[:-2] * _U64(0x9E3779B97F4A7C15)) ^ (codes[1:-1] * _U64(0xC2B2AE3D27D4EB4F)) \
        ^ (codes[2:] * _U64(0x165667B19E3779F9))
    h ^= h >> _U64(29)
    h *= _U64(0xBF58476D1CE4E5B9)
    h ^= h >> _U64(32)
    return (h % _U64(TEXT_BUCKETS)).astype(np.intp)


@lru_cache(maxsize=4096)  # repeated texts are common in benchmarks; arrays keep it <= 32 MB
def _text_vector(text: str, model: str) -> np.ndarray:
    counts = np.bincount(_text_buckets(text), minlength=TEXT_BUCKETS).astype(np.float32)
    used = np.flatnonzero(counts)
    matrix = _projection(model)
    vector = counts[used] @ matrix[_TEXT_ROWS][used] + _BIAS_WEIGHT * matrix[_BIAS_ROW["text"]]
    return _unit(vector)


def text_vector(text: str, model_name: str) -> List[float]:
    """The vector the server returns for this (already truncated) text."""
    return _text_vector(text, _model(model_name)).tolist()


# ---- image --------------------------------------------------------------------------

def image_vector_from_image(image: Image.Image, model_name: str) -> List[float]:
    """Vector of a decoded RGB image: its centred 16x16 colour grid, projected."""
    small = image.resize((IMAGE_GRID, IMAGE_GRID), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
    pixels -= pixels.mean()  # brightness alone should not make images similar
    matrix = _projection(_model(model_name))
    vector = pixels @ matrix[_IMAGE_ROWS] + _BIAS_WEIGHT * matrix[_BIAS_ROW["image"]]
    return _unit(vector).tolist()


def image_vector(image_bytes: bytes, model_name: str) -> List[float]:
    """The vector the server returns for these PNG/JPEG bytes."""
    return image_vector_from_image(media.decode_image(image_bytes), model_name)


# ---- audio --------------------------------------------------------------------------

def _band_profile(segment: np.ndarray, sample_rate: int) -> np.ndarray:
    """Square root of each log-spaced band's share of the power: a unit-norm spectral shape."""
    if segment.size < 2:
        return np.zeros(AUDIO_BANDS)
    power = np.abs(np.fft.rfft(segment)) ** 2
    freqs = np.fft.rfftfreq(segment.size, 1.0 / sample_rate)
    cumulative = np.concatenate([[0.0], np.cumsum(power, dtype=np.float64)])
    edges = np.searchsorted(freqs, _BAND_EDGES_HZ)
    bands = np.maximum(cumulative[edges[1:]] - cumulative[edges[:-1]], 0.0)
    total = bands.sum()
    return np.sqrt(bands / total) if total > 0 else bands


def segment_bounds(duration_sec: float, model: str, start_offset_sec: float,
                   segment_sec: float, max_sec_30: float) -> List[Tuple[float, float]]:
    """(start, end) of each segment, in seconds from the file start.

    Emulator choices (undocumented): marengo3.0 splits [offset, offset+max_sec_30] into
    segment_sec pieces, the last one shorter (a tail under 1 ms joins the piece before);
    marengo2.7 gives one segment, the 10 s after the offset.
    """
    if start_offset_sec >= duration_sec:
        raise ValueError("start offset is not before the end of the audio")
    if _model(model) == "marengo2.7":
        return [(start_offset_sec, min(start_offset_sec + rules.MARENGO27_AUDIO_WINDOW_SEC,
                                       duration_sec))]
    stop = min(duration_sec, start_offset_sec + max_sec_30)
    count = max(1, math.ceil((stop - start_offset_sec - 1e-3) / segment_sec))
    starts = [start_offset_sec + i * segment_sec for i in range(count)]
    return [(s, stop if i == count - 1 else s + segment_sec) for i, s in enumerate(starts)]


def audio_segment_vectors_from_samples(samples: np.ndarray, sample_rate: int, model_name: str,
                                       start_offset_sec: float = 0.0, segment_sec: float = 6.0,
                                       max_sec_30: float = 600.0
                                       ) -> List[Tuple[float, float, List[float]]]:
    """(start, end, vector) per segment of decoded mono audio."""
    model = _model(model_name)
    bounds = segment_bounds(samples.size / sample_rate, model, start_offset_sec,
                            segment_sec, max_sec_30)
    profiles = np.stack([_band_profile(samples[round(s * sample_rate):round(e * sample_rate)],
                                       sample_rate) for s, e in bounds])
    matrix = _projection(model)
    vectors = profiles @ matrix[_AUDIO_ROWS] + _BIAS_WEIGHT * matrix[_BIAS_ROW["audio"]]
    return [(round(s, 6), round(e, 6), v) for (s, e), v in zip(bounds, _unit(vectors).tolist())]


def audio_segment_vectors(audio_bytes: bytes, model_name: str, start_offset_sec: float = 0.0,
                          segment_sec: float = 6.0, max_sec_30: float = 600.0
                          ) -> List[Tuple[float, float, List[float]]]:
    """The segments the server returns for these WAV/MP3/FLAC bytes (default config)."""
    samples, sample_rate = media.decode_audio(audio_bytes)
    return audio_segment_vectors_from_samples(samples, sample_rate, model_name, start_offset_sec,
                                              segment_sec, max_sec_30)
