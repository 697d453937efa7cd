"""The models of the embed API, in one table: dimensions, API generations, limits, aliases, request shapes.

The client checks a model name against it before a call; the job (transforms.models) routes items by it."""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

__all__ = ["MODELS", "MODEL_DIMS", "V1_MODELS", "V2_MODELS", "Model", "canonical_model", "model"]

_MB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    dimensions: int                            # the vector length (the default, where it can be chosen)
    dimension_choices: Tuple[int, ...] = ()    # embedding.dimension values it takes (none: fixed)
    v1: bool = False                           # served by Embed API v1 (POST /embed, packed calls)
    v2: bool = False                           # served by Embed API v2 (/embed-v2 and its tasks)
    v1_file_bytes: Optional[Dict[str, int]] = None  # v1: the largest image/audio file it takes (API-FACTS.md)
    # Longest audio/video a sync `/embed-v2` call takes; longer (or unknown) goes to an async task. Marengo
    # 3.5's sync endpoint takes only multi_input (one vector, no segments): its audio and video always go to tasks.
    sync_media_sec: float = 0.0
    sync_source_bytes: int = 36 * _MB          # the largest audio/video source a sync call takes (any kind)
    aliases: Tuple[str, ...] = ()              # other spellings the API answers with
    # v2 request shapes that differ by model (API-V2-FACTS.md):
    sync_multi_input_only: bool = False        # its sync /embed-v2 takes multi_input only
    task_segmentation_in_temporal: bool = False  # its tasks take segmentation wrapped in `temporal`
    audio_fixed_windows_only: bool = False     # it cuts audio in fixed windows (dynamic does not apply)
    transcription: bool = False                # it has the `transcription` embedding option


MODELS: Tuple[Model, ...] = (
    Model("marengo3.0", 512, v1=True, v2=True, v1_file_bytes={"image": 5 * _MB, "audio": 36 * _MB},
          sync_media_sec=600.0, audio_fixed_windows_only=True, transcription=True),
    Model("marengo3.5", 512, dimension_choices=(128, 256, 512), v2=True,
          v1_file_bytes={"image": 5 * _MB, "audio": 36 * _MB}, sync_multi_input_only=True,
          task_segmentation_in_temporal=True, sync_source_bytes=32 * _MB),
    Model("marengo2.7", 1024, v1=True, v1_file_bytes={"image": 5 * _MB, "audio": 10 * _MB},
          aliases=("Marengo-retrieval-2.7",)),
    Model("Marengo-retrieval-2.7", 1024, v1=True, v1_file_bytes={"image": 5 * _MB, "audio": 10 * _MB},
          aliases=("marengo2.7",)),
)
_BY_NAME = {m.name: m for m in MODELS}
MODEL_DIMS = {m.name: m.dimensions for m in MODELS}
V1_MODELS = tuple(m.name for m in MODELS if m.v1)
V2_MODELS = tuple(m.name for m in MODELS if m.v2)


def model(name: str) -> Model:
    return _BY_NAME[name]


def canonical_model(name: str) -> str:
    """The API answers with either spelling of Marengo 2.7; both mean one model."""
    for m in MODELS:
        if name.lower() in {n.lower() for n in (m.name,) + m.aliases}:
            return min((m.name,) + m.aliases, key=len).lower()
    return name.lower()
