"""Embed API v2 of the emulator: POST /v1.3/embed-v2 (sync), POST/GET /v1.3/embed-v2/tasks and GET .../tasks/{id}."""
from .errors import V2Error
from .service import V2Service
from .spec import MODELS, TASKS_PATH, V2_PATH

__all__ = ["V2Service", "V2_PATH", "TASKS_PATH", "V2Error", "MODELS"]
