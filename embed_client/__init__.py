"""A client of the TwelveLabs embed API (`POST /v1.3/embed`, the v2 `/embed-v2` endpoints, and the
`/assets` and `/assets/multipart-uploads` endpoints that bring large media to them), with its retry policy
and rate limiter."""
from embed_client.assets import AssetsClient
from embed_client.client import API_KEY_ENV, DEFAULT_BASE_URL, MODEL_NAMES, EmbedClient, load_file_part
from embed_client.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    ConnectionFailedError,
    ContentTooLargeError,
    EmbedError,
    EmbedTimeoutError,
    MalformedResponseError,
    NotFoundError,
    PresignedUrlExpiredError,
    RateLimitError,
    RateLimitInfo,
    ServerError,
)
from embed_client.multipart_upload import MultipartUploadClient, chunk_span
from embed_client.types import (
    AudioEmbeddingResult,
    AudioSegment,
    BaseEmbeddingMetadata,
    BaseSegment,
    CreateEmbeddingsResult,
    ImageEmbeddingResult,
    TextEmbeddingResult,
)
from embed_client.types_assets import (
    Asset,
    ChunkBatchReport,
    ChunkInfo,
    CompletedChunk,
    IncompleteUpload,
    Page,
    PresignedUrl,
    PresignedUrls,
    UploadSession,
    UploadStatus,
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
    "AssetsClient", "MultipartUploadClient", "chunk_span", "ConflictError", "PresignedUrlExpiredError",
    "Asset", "ChunkBatchReport", "ChunkInfo", "CompletedChunk", "IncompleteUpload", "Page", "PresignedUrl",
    "PresignedUrls", "UploadSession", "UploadStatus",
]
