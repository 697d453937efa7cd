"""The caller of each route: v1 packed calls, v2 sync calls, v2 async tasks."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from embed_client import EmbedClient
from transforms.calling.engine import Caller, WorkerState
from transforms.calling.upload import process_uploader
from transforms.calling.v2 import SyncV2Caller, TaskCaller, TaskJournal
from transforms.records import ROUTES
from transforms.settings import CallSettings

__all__ = ["make_caller"]


def make_caller(kind: str, settings: CallSettings, client: EmbedClient, state: WorkerState, *,
                known_tasks: Optional[Dict[str, Tuple[str, float]]] = None, output: Optional[str] = None
                ) -> Caller:
    """The caller of one route: "v1" packed calls, "v2" one item per sync call, or "task" (v2 async tasks,
    recorded under `output`/tasks/ when given; `known_tasks` are earlier runs' records)."""
    if kind not in ROUTES:
        raise ValueError(f"kind must be one of {ROUTES}")
    if kind == "v1":
        return Caller(settings, client, state.pacer, state.quota, state.meter)
    if kind == "v2":
        caller: Caller = SyncV2Caller(settings, client, state.pacer, state.quota)
    else:
        caller = TaskCaller(settings, client, state.pacer, state.quota, known=known_tasks or {},
                            journal=TaskJournal(output, settings.run_id))
    caller.meter = state.meter
    caller.media = state.media
    caller.uploads = lambda: process_uploader(state, settings, output)  # made on the first file that needs it
    return caller
