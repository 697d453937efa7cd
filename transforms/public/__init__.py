"""What users compose: the PTransform, the RunInference handler, the MLTransform providers (dict columns, and
EmbeddableItems for Beam's RAG ingestion)."""
from transforms.public.embed import DeadLetterRow, DeferredRow, EmbeddingRow, EmbedWithTwelveLabs, TwelveLabsOptions
from transforms.public.mltransform import TwelveLabsEmbeddingFailed, TwelveLabsImageEmbeddings, TwelveLabsTextEmbeddings
from transforms.public.model_handler import EmbeddingError, TwelveLabsEmbeddingModelHandler
from transforms.public.rag import TwelveLabsEmbeddings

__all__ = ["DeadLetterRow", "DeferredRow", "EmbedWithTwelveLabs", "EmbeddingError", "EmbeddingRow",
           "TwelveLabsEmbeddingFailed", "TwelveLabsEmbeddingModelHandler", "TwelveLabsEmbeddings",
           "TwelveLabsImageEmbeddings", "TwelveLabsOptions", "TwelveLabsTextEmbeddings"]
