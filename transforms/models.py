"""The route decision: which API generation an item of a modality goes to, by the model table
(embed_client.models, the one list of models and what each allows; its names are re-exported here for the job)."""
from __future__ import annotations

from embed_client.models import MODEL_DIMS, MODELS, V1_MODELS, V2_MODELS, Model, canonical_model, model

__all__ = ["API_VERSIONS", "MODELS", "MODEL_DIMS", "V1_MODELS", "V2_MODELS", "Model", "canonical_model", "model",
           "uses_v2"]

# auto: v1 (packed, cheapest) where the model and modality allow it, v2 for video and v2-only models.
API_VERSIONS = ("auto", "v1", "v2")


def uses_v2(model_name: str, api_version: str, modality: str) -> bool:
    """Whether items of this modality go to Embed API v2: as configured, or (auto) v1 where the model serves
    it, v2 for video (v1 embeds no video) and for v2-only models."""
    if api_version != "auto":
        return api_version == "v2"
    return not model(model_name).v1 or modality == "video"
