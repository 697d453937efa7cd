"""Beam transforms of the embedding job; the public ones, for use in any pipeline, are exported here."""
from transforms.call_settings import EmbeddingSettings
from transforms.embed import (DeadLetterRow, DeferredRow, EmbeddingRow, EmbedWithTwelveLabs, TwelveLabsOptions)

__all__ = ["DeadLetterRow", "DeferredRow", "EmbedWithTwelveLabs", "EmbeddingRow", "EmbeddingSettings",
           "TwelveLabsOptions"]
