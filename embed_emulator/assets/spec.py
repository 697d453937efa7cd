"""The documented facts of /v1.3/assets and its multipart uploads the emulator checks against: paths, types, limits."""
from __future__ import annotations

from ..rules import MB

# Facts come from /work/shared/reference/API-ASSETS-FACTS.md and twelvelabs-assets-openapi.json;
# "emulator choice" marks behaviour the public docs leave open. Sizes read "MB"/"GB" as MiB/GiB,
# like the rest of the emulator.
GB = 1024 * MB

API_PREFIX = "/v1.3"
ASSETS_PATH = API_PREFIX + "/assets"
UPLOADS_PATH = ASSETS_PATH + "/multipart-uploads"
# Presigned chunk URLs live outside the API prefix: they stand for object storage, not the API.
CHUNK_PATH = "/_upload"

ASSET_TYPES = ("video", "audio", "image")
DIRECT_MAX_AV = 200 * MB        # video and audio by method=direct
URL_MAX_AV = 4 * GB             # video and audio by method=url
MULTIPART_MAX_AV = 10 * GB      # video and audio by multipart upload
IMAGE_MAX = 32 * MB             # images, whatever the method
# Emulator choice: a direct upload's body may exceed its file by this much (form fields, boundaries).
FORM_OVERHEAD = 1 * MB

CREATE_FIELDS = ("method", "file", "url", "filename", "enable_hls", "enable_thumbnail",
                 "user_metadata")
MULTIPART_FIELDS = ("filename", "type", "total_size", "enable_hls", "enable_thumbnail",
                    "user_metadata")
PRESIGN_MAX_COUNT = 50
PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX = 10, 50
