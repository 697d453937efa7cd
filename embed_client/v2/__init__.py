"""Embed API v2 (`POST /embed-v2`, `/embed-v2/tasks`).

- `bodies`: the request bodies and queries, byte for byte as SDK 1.3.6 sends them (no HTTP).
- `client.V2Client`: `client.v2` (`create`, `build_create` + `send`), holding `tasks`.
- `tasks.TasksClient`: `client.tasks` (`create`, `retrieve`, `list`, `list_page`) and `TaskPage`.
"""
from embed_client.v2.bodies import (
    MODEL_NAMES_V2,
    SYNC_INPUT_TYPES,
    TASK_INPUT_TYPES,
    TASK_STATUSES,
    build_create_body,
    build_extra_query,
    build_list_query,
    build_task_create_body,
    build_task_path,
    media_source,
    multi_input_source,
)
from embed_client.v2.client import V2Client
from embed_client.v2.tasks import TaskPage, TasksClient

__all__ = [
    "MODEL_NAMES_V2",
    "SYNC_INPUT_TYPES",
    "TASK_INPUT_TYPES",
    "TASK_STATUSES",
    "TaskPage",
    "TasksClient",
    "V2Client",
    "build_create_body",
    "build_extra_query",
    "build_list_query",
    "build_task_create_body",
    "build_task_path",
    "media_source",
    "multi_input_source",
]
