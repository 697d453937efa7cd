"""Beam transforms of the embedding job; the public ones, for use in any pipeline, are exported here."""
from transforms.settings import EmbeddingSettings
from transforms.public.embed import (DeadLetterRow, DeferredRow, EmbeddingRow, EmbedWithTwelveLabs, TwelveLabsOptions)
from transforms.public.model_handler import EmbeddingError, TwelveLabsEmbeddingModelHandler
from transforms.public.mltransform import TwelveLabsImageEmbeddings, TwelveLabsTextEmbeddings

__all__ = ["DeadLetterRow", "DeferredRow", "EmbedWithTwelveLabs", "EmbeddingError", "EmbeddingRow", "EmbeddingSettings",
           "TwelveLabsEmbeddingModelHandler", "TwelveLabsImageEmbeddings", "TwelveLabsOptions",
           "TwelveLabsTextEmbeddings"]
