"""The async embedding tasks of /v1.3/embed-v2/tasks: creation, status over time, listing.

A task is `processing` until `task_ready_after_sec` after its creation AND its embedding work
(run on a small thread pool from creation) is done; then it is `ready` with data, or `failed`
with error.message: from an injected failure (`task_failure_rate`, drawn at creation from an
RNG seeded by `seed`) or from media that passed the creation checks but does not embed.
Both final states stay as they are. Tasks older than `task_retention_sec` are forgotten.
"""
from __future__ import annotations

import logging
import math
import random
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

__all__ = ["Task", "TaskStore", "TaskFailure", "rfc3339", "INJECTED_FAILURE_MESSAGE"]

# Emulator choice, in the style of the platform's messages.
INJECTED_FAILURE_MESSAGE = ("The embedding task failed because the platform could not process "
                            "the media (injected fault). Create a new task to try again.")

# What a task's work returns: (data entries, usage or None).
Result = Tuple[List[dict], Optional[dict]]


class TaskFailure(Exception):
    """The media of a task turned out not to embed; the message becomes error.message."""


def rfc3339(epoch: float) -> str:
    """UTC time with milliseconds, e.g. 2026-11-28T22:10:03.123Z."""
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Task:
    id: str
    seq: int
    model_name: str
    input_type: str
    created_at: float
    ready_at: float
    metadata: dict            # the retrieve response's metadata (input_type discriminated)
    list_metadata: dict       # the list item's <input_type>_embedding.metadata
    key: str
    injected_failure: bool = False
    future: Optional[Future] = None
    data: Optional[List[dict]] = None
    usage: Optional[dict] = None
    error: Optional[str] = None
    final: Optional[str] = None   # "ready" | "failed" once it is observed as such
    finished_at: Optional[float] = None
    done_at: Optional[float] = None

    def status(self, now: float) -> str:
        if self.final is not None:
            return self.final
        if now < self.ready_at:
            return "processing"
        if self.injected_failure:
            return "failed"
        if self.future is not None and not self.future.done():
            return "processing"
        return "failed" if self.error is not None else "ready"

    def updated_at(self) -> float:
        return self.finished_at if self.finished_at is not None else self.created_at


class TaskStore:
    def __init__(self, on_final: Callable[[str], None], clock: Callable[[], float] = time.time,
                 workers: int = 2):
        self._clock = clock
        self._on_final = on_final
        self._lock = threading.Lock()
        self._tasks: Dict[str, Task] = {}
        self._seq = 0
        self._rng = random.Random()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._workers = workers

    # ---- lifecycle --------------------------------------------------------------------

    def reseed(self, seed: Optional[int]) -> None:
        with self._lock:
            # A stream of its own: turning task failures on does not shift the request faults.
            self._rng = random.Random(None if seed is None else f"tasks:{seed}")

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def clear(self) -> None:
        with self._lock:
            self._tasks.clear()

    # ---- create -----------------------------------------------------------------------

    def create(self, *, model_name: str, input_type: str, metadata: dict, list_metadata: dict,
               key: str, work: Callable[[], Result], ready_after_sec: float,
               failure_rate: float) -> Task:
        now = self._clock()
        with self._lock:
            self._seq += 1
            injected = failure_rate > 0 and self._rng.random() < failure_rate
            # A Mongo-like id: 8 hex digits of creation time, then 16 random ones.
            task_id = f"{int(now) & 0xFFFFFFFF:08x}{secrets.token_hex(8)}"
            task = Task(id=task_id, seq=self._seq, model_name=model_name, input_type=input_type,
                        created_at=now, ready_at=now + ready_after_sec, metadata=metadata,
                        list_metadata=list_metadata, key=key, injected_failure=injected)
            self._tasks[task_id] = task
            if not injected:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self._workers,
                                                        thread_name_prefix="embed-emulator-task")
                task.future = self._executor.submit(self._run, task, work)
        return task

    def _run(self, task: Task, work: Callable[[], Result]) -> None:
        try:
            task.data, task.usage = work()
        except TaskFailure as exc:
            task.error = str(exc)
        except Exception as exc:  # a bug in the emulator: still a failed task, not a hang
            logger.exception("task %s failed inside the emulator", task.id)
            task.error = f"The embedding task failed: {exc.__class__.__name__}."
        finally:
            task.done_at = self._clock()

    # ---- read -------------------------------------------------------------------------

    def _settle(self, task: Task, now: float) -> str:
        """The task's status now; the first time it is final, record it (and count it)."""
        status = task.status(now)
        if status != "processing" and task.final is None:
            task.final = status
            task.finished_at = max(task.ready_at, task.done_at or task.ready_at)
            if status == "failed" and task.error is None:
                task.error = INJECTED_FAILURE_MESSAGE
            self._on_final(status)
        return status

    def _purge(self, now: float, retention_sec: float) -> None:
        old = [tid for tid, t in self._tasks.items() if now - t.created_at > retention_sec]
        for tid in old:
            del self._tasks[tid]

    def get(self, task_id: str, retention_sec: float) -> Optional[Tuple[Task, str]]:
        now = self._clock()
        with self._lock:
            self._purge(now, retention_sec)
            task = self._tasks.get(task_id)
            if task is None:
                return None
            return task, self._settle(task, now)

    def sweep(self) -> None:
        """Settle every task (counts the ones that turned final)."""
        now = self._clock()
        with self._lock:
            for task in list(self._tasks.values()):
                self._settle(task, now)

    def list(self, *, started_at: float, ended_at: float, status: Optional[str], page: int,
             page_limit: int, retention_sec: float) -> Tuple[List[Tuple[Task, str]], int]:
        """(the page's tasks with their status, newest first; total matching tasks)."""
        now = self._clock()
        with self._lock:
            self._purge(now, retention_sec)
            rows = []
            for task in self._tasks.values():
                if not started_at <= task.created_at <= ended_at:
                    continue
                current = self._settle(task, now)
                if status is not None and current != status:
                    continue
                rows.append((task, current))
        rows.sort(key=lambda row: (row[0].created_at, row[0].seq), reverse=True)
        first = (page - 1) * page_limit
        return rows[first:first + page_limit], len(rows)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)


def total_pages(total: int, page_limit: int) -> int:
    return math.ceil(total / page_limit) if total else 0
