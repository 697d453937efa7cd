"""The assets API of the emulator: POST/GET/DELETE /v1.3/assets, multipart uploads and their presigned chunk URLs."""
from .service import AssetService
from .spec import ASSETS_PATH, CHUNK_PATH, UPLOADS_PATH

__all__ = ["AssetService", "ASSETS_PATH", "UPLOADS_PATH", "CHUNK_PATH"]
