"""Beam transforms of the embedding job; the public ones, for use in any pipeline, are exported here."""
from transforms.public.embed import DeadLetterRow, DeferredRow, EmbeddingRow, EmbedWithTwelveLabs, TwelveLabsOptions
from transforms.public.mltransform import TwelveLabsImageEmbeddings, TwelveLabsTextEmbeddings
from transforms.public.model_handler import EmbeddingError, TwelveLabsEmbeddingModelHandler
from transforms.public.rag import TwelveLabsEmbeddings
from transforms.settings import EmbeddingSettings

__all__ = ["DeadLetterRow", "DeferredRow", "EmbedWithTwelveLabs", "EmbeddingError", "EmbeddingRow", "EmbeddingSettings",
           "TwelveLabsEmbeddingModelHandler", "TwelveLabsEmbeddings", "TwelveLabsImageEmbeddings", "TwelveLabsOptions",
           "TwelveLabsTextEmbeddings"]
