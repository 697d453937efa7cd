"""A client of the TwelveLabs embed API (`POST /v1.3/embed`), with its retry policy and rate limiter."""
from embed_client.client import API_KEY_ENV, DEFAULT_BASE_URL, MODEL_NAMES, EmbedClient, load_file_part
from embed_client.errors import (
    AuthError,
    BadRequestError,
    ConnectionFailedError,
    EmbedError,
    EmbedTimeoutError,
    MalformedResponseError,
    RateLimitError,
    RateLimitInfo,
    ServerError,
)
from embed_client.types import (
    AudioEmbeddingResult,
    AudioSegment,
    BaseEmbeddingMetadata,
    BaseSegment,
    CreateEmbeddingsResult,
    ImageEmbeddingResult,
    TextEmbeddingResult,
)

__all__ = [
    "API_KEY_ENV", "DEFAULT_BASE_URL", "MODEL_NAMES", "EmbedClient", "load_file_part",
    "AuthError", "BadRequestError", "ConnectionFailedError", "EmbedError", "EmbedTimeoutError",
    "MalformedResponseError", "RateLimitError", "RateLimitInfo", "ServerError",
    "AudioEmbeddingResult", "AudioSegment", "BaseEmbeddingMetadata", "BaseSegment",
    "CreateEmbeddingsResult", "ImageEmbeddingResult", "TextEmbeddingResult",
]
