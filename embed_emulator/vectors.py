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
           "audio_segment_vectors_from_samples", "dimension", "V2_MODELS", "v2_text", "v2_image",
           "v2_visual", "v2_audio", "v2_transcription", "v2_combine", "v2_uncertainty",
           "prefix"]

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
# Embed API v2 models and their full dimension. marengo3.0 is the same model as on v1, so its
# text, image and audio vectors equal v1's; marengo3.5 has its own projection (its vectors are
# documented as incompatible with 3.0's) and Matryoshka prefixes (see prefix()).
V2_MODELS = {"marengo3.0": 512, "marengo3.5": 512}
_projection_lock = threading.Lock()


def dimension(model_name: str) -> int:
    return rules.MODEL_DIMS[_model(model_name)]


def _model(model_name: str) -> str:
    if model_name in V2_MODELS:
        return model_name
    model = rules.canonical_model(model_name)
    if model is None:
        raise ValueError(f"unknown model {model_name!r}")
    return model


def _projection(model: str) -> np.ndarray:
    """The (features x dims) Gaussian matrix of a model; built once, seeded by its name."""
    return _matrix(model, _FEATURE_ROWS, V2_MODELS.get(model) or rules.MODEL_DIMS[model])


def _matrix(name: str, rows: int, dims: int) -> np.ndarray:
    """A (rows x dims) standard Gaussian matrix seeded by `name` only; built once."""
    matrix = _projections.get(name)
    if matrix is None:
        with _projection_lock:
            matrix = _projections.get(name)
            if matrix is None:
                seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
                rng = np.random.default_rng(seed)
                matrix = rng.standard_normal((rows, dims), dtype=np.float32)
                _projections[name] = matrix
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


# ---- Embed API v2 ----------------------------------------------------------------------
# Every function returns one unit float64 vector of the model's full dimension, rounded for the
# wire. Options of one segment stay distinct: visual uses the image rows, audio the audio rows,
# transcription its own rows of a second matrix (the emulator has no speech recogniser: a
# "transcription" is a different projection of the same spectral shape), and each kind adds
# its own small bias row.

_X_TRANSCRIPTION = slice(0, AUDIO_BANDS)
_X_BIAS = {kind: AUDIO_BANDS + i for i, kind in enumerate(
    ("visual", "transcription", "fused", "multi_input", "text_image", "uncertainty"))}
_X_ROWS = AUDIO_BANDS + len(_X_BIAS)


def _extra(model: str) -> np.ndarray:
    """v2-only rows, in a matrix of their own so v1's projection never changes."""
    return _matrix(model + "#v2", _X_ROWS, V2_MODELS[model])


def _v2_model(model_name: str) -> str:
    if model_name not in V2_MODELS:
        raise ValueError(f"unknown v2 model {model_name!r}")
    return model_name


def v2_text(text: str, model_name: str) -> np.ndarray:
    """Same as text_vector for marengo3.0."""
    return _text_vector(text, _v2_model(model_name))


def _grid_pixels(grid: np.ndarray) -> np.ndarray:
    pixels = np.asarray(grid, dtype=np.float32).reshape(-1) / 255.0
    return pixels - pixels.mean()


def v2_image(image: Image.Image, model_name: str) -> np.ndarray:
    """Same as image_vector_from_image for marengo3.0."""
    model = _v2_model(model_name)
    small = image.resize((IMAGE_GRID, IMAGE_GRID), Image.Resampling.BOX)
    matrix = _projection(model)
    vector = _grid_pixels(np.asarray(small)) @ matrix[_IMAGE_ROWS] \
        + _BIAS_WEIGHT * matrix[_BIAS_ROW["image"]]
    return _unit(vector)


def v2_visual(frames: np.ndarray, model_name: str) -> np.ndarray:
    """Visual vector of decoded video frames (n x 16 x 16 x 3): their mean picture through the
    image rows, so a still image and a video of it land close together."""
    model = _v2_model(model_name)
    frames = np.asarray(frames, dtype=np.float32)
    mean = frames.mean(axis=0) if frames.size else np.zeros((IMAGE_GRID, IMAGE_GRID, 3))
    matrix = _projection(model)
    vector = _grid_pixels(mean) @ matrix[_IMAGE_ROWS] \
        + _BIAS_WEIGHT * _extra(model)[_X_BIAS["visual"]]
    return _unit(vector)


def v2_audio(samples: np.ndarray, sample_rate: int, model_name: str) -> np.ndarray:
    """Audio vector of one span of mono samples; for marengo3.0 the same as a v1 audio segment."""
    model = _v2_model(model_name)
    matrix = _projection(model)
    vector = _band_profile(samples, sample_rate) @ matrix[_AUDIO_ROWS] \
        + _BIAS_WEIGHT * matrix[_BIAS_ROW["audio"]]
    return _unit(vector)


def v2_transcription(samples: np.ndarray, sample_rate: int, model_name: str) -> np.ndarray:
    """Stand-in for a transcription vector: the spectral shape through rows of its own."""
    model = _v2_model(model_name)
    extra = _extra(model)
    vector = _band_profile(samples, sample_rate) @ extra[_X_TRANSCRIPTION] \
        + _BIAS_WEIGHT * extra[_X_BIAS["transcription"]]
    return _unit(vector)


def v2_combine(parts: List[np.ndarray], model_name: str, kind: str) -> np.ndarray:
    """One vector for several (fused options, text_image, multi_input): the normalised sum of
    the parts' unit vectors plus the kind's bias, so it is close to each part."""
    model = _v2_model(model_name)
    total = np.sum(np.stack([np.asarray(p, dtype=np.float64) for p in parts]), axis=0)
    return _unit(total + _BIAS_WEIGHT * _extra(model)[_X_BIAS[kind]])


def v2_uncertainty(vector: np.ndarray, model_name: str) -> np.ndarray:
    """Per-dimension uncertainty in (0, 1): high where the value is small. Element-wise, so the
    uncertainty of a prefix is the prefix of the uncertainty."""
    model = _v2_model(model_name)
    noise = np.abs(_extra(model)[_X_BIAS["uncertainty"]]) * 0.01
    values = 1.0 / (1.0 + 40.0 * np.abs(np.asarray(vector, dtype=np.float64))) + noise
    return np.round(np.clip(values, 0.0, 1.0), _DECIMALS)


def prefix(vector: np.ndarray, dims: int) -> List[float]:
    """Matryoshka truncation: the first `dims` values, exactly (not re-normalised), as the docs
    define it: a 256-d vector is the first 256 values of the 512-d one of the same content."""
    return np.asarray(vector)[:dims].tolist()
