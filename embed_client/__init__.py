"""A client of the TwelveLabs embed API (`POST /v1.3/embed` and the v2 `/embed-v2` endpoints), with its
retry policy and rate limiter."""
from embed_client.client import API_KEY_ENV, DEFAULT_BASE_URL, MODEL_NAMES, EmbedClient, load_file_part
from embed_client.errors import (
    AuthError,
    BadRequestError,
    ConnectionFailedError,
    ContentTooLargeError,
    EmbedError,
    EmbedTimeoutError,
    MalformedResponseError,
    NotFoundError,
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
from embed_client.types_v2 import (
    EmbeddingData,
    EmbeddingTask,
    EmbeddingsV2Result,
    MediaEmbeddingTask,
    TaskCreated,
    UsageV2,
)
from embed_client.v2 import MODEL_NAMES_V2, TaskPage, TasksClient, media_source, multi_input_source

__all__ = [
    "API_KEY_ENV", "DEFAULT_BASE_URL", "MODEL_NAMES", "EmbedClient", "load_file_part",
    "AuthError", "BadRequestError", "ConnectionFailedError", "ContentTooLargeError", "EmbedError",
    "EmbedTimeoutError", "MalformedResponseError", "NotFoundError", "RateLimitError", "RateLimitInfo",
    "ServerError",
    "AudioEmbeddingResult", "AudioSegment", "BaseEmbeddingMetadata", "BaseSegment",
    "CreateEmbeddingsResult", "ImageEmbeddingResult", "TextEmbeddingResult",
    "EmbeddingData", "EmbeddingTask", "EmbeddingsV2Result", "MediaEmbeddingTask", "TaskCreated", "UsageV2",
    "MODEL_NAMES_V2", "TaskPage", "TasksClient", "media_source", "multi_input_source",
]
