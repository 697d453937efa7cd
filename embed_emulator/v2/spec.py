"""The documented facts of Embed API v2 the emulator checks against: paths, models, input types, limits."""
from __future__ import annotations

from ..rules import MB

# Facts come from /work/shared/reference/API-V2-FACTS.md; lines marked "emulator choice", here and
# in the other modules, are behaviour the public docs leave open.

API_PREFIX = "/v1.3"
V2_PATH = API_PREFIX + "/embed-v2"
TASKS_PATH = V2_PATH + "/tasks"

MODELS = ("marengo3.0", "marengo3.5")
M30, M35 = MODELS
SYNC_INPUT_TYPES = ("text", "image", "text_image", "audio", "video", "multi_input")
TASK_INPUT_TYPES = ("audio", "video", "document", "image")
DIMENSIONS = (128, 256, 512)
FULL_DIMENSION = 512
TEXT_TOKEN_LIMITS = {M30: 500, M35: 2000}
MAX_MEDIA_SOURCES = 10

IMAGE_MAX_BYTES = 32 * MB            # 3.0 image; every 3.5 media source
AV_MAX_BYTES = 36 * MB               # 3.0 sync audio/video, decoded
BASE64_MAX = {"image": 32 * MB, "audio": 36 * MB, "video": 36 * MB, "document": 32 * MB}
TASK_FETCH_MAX_BYTES = 200 * MB      # emulator choice: a URL task reads at most this much
# An audio/video asset in a task is opened by path, not read: it may be as large as an asset may
# be (10 GB by multipart upload, see assets/spec.py). Config-mapped files are held to the same.
TASK_ASSET_MAX_BYTES = 10 * 1024 * MB
TASK_DOCUMENT_MAX_BYTES = 512 * MB
IMAGE_MIN_SIDE = 128
SYNC_MAX_SEC_35 = 30.0
TASK_MIN_SEC, TASK_MAX_SEC = 4.0, 4 * 3600.0
VIDEO_MIN_SIDE, VIDEO_MAX_LONG, VIDEO_MAX_SHORT, VIDEO_MAX_ASPECT = 360, 5184, 2160, 2.4
FIXED_RANGE, DYNAMIC_RANGE = (2, 10), (2, 5)

AV_OPTIONS = {"audio": ("audio", "transcription"), "video": ("visual", "audio", "transcription")}
EMBEDDING_TYPES = ("separate_embedding", "fused_embedding")

# usage.input_tokens (3.5 only). Emulator choice: the real per-modality rates are not published.
IMAGE_TOKENS = 258
AUDIO_TOKENS_PER_SEC = 25
VIDEO_TOKENS_PER_SEC = 258

LIST_DEFAULT_RANGE_SEC = 7 * 86400.0
PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX = 10, 50
