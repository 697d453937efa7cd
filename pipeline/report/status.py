"""Where a run stands: the one table of run statuses (exit code, text, report style) and the backfill's progress."""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional

__all__ = ["EXIT_CODES", "STATUSES", "STATUS_CLASS", "STATUS_TEXT", "Status", "backfill_progress", "exit_code",
           "run_status"]


@dataclasses.dataclass(frozen=True)
class Status:
    name: str       # `status` in summary.json ("" for exits that write no summary)
    exit_code: int  # the process's exit status (README "Exit codes")
    text: str       # what it means, in the summary and the report
    style: str      # the report's colour: ok, warn or bad


STATUSES = (
    Status("done", 0, "done: every item is embedded", "ok"),
    Status("done_with_known_dead_letters", 0, "done; the dead letters are the same as the last run's (nothing new)",
           "ok"),
    Status("submitted", 0, "submitted: the job runs on its runner and finalizes its own output", "ok"),
    Status("failed", 1, "an unexpected failure (a bug): run again with --debug for the traceback", "bad"),
    Status("usage_error", 2, "a usage or config error (a bucket that cannot be reached too), or an unusable key: "
                             "nothing was called", "bad"),
    Status("finished_with_dead_letters", 3, "finished; some rows are dead letters (see dead_letters/)", "bad"),
    Status("deferred", 4, "deferred: some items wait for the quota, the call budget or their task; run again",
           "warn"),
    Status("stopped_service_unavailable", 5, "stopped: the API was unreachable or failing; the rest is deferred, "
                                             "run again when it is back", "bad"),
    Status("locked", 6, "another run holds the output; this one stopped before any call", "warn"),
)
_BY_NAME = {s.name: s for s in STATUSES}
EXIT_CODES = {s.name: s.exit_code for s in STATUSES}
STATUS_TEXT = {s.name: s.text for s in STATUSES}
STATUS_CLASS = {s.name: s.style for s in STATUSES}


def run_status(deferred: int, deferred_by_reason, dead_letters: int, new_dead_letters: Optional[int] = None) -> str:
    if deferred_by_reason.get("service_unavailable"):
        return "stopped_service_unavailable"
    if deferred:
        return "deferred"
    if not dead_letters:
        return "done"
    # Dead letters an earlier run already reported do not alert again: only new ones turn the run to 3.
    return "finished_with_dead_letters" if new_dead_letters is None or new_dead_letters else \
        "done_with_known_dead_letters"


def exit_code(status: str, dead_letters_exit_code: Optional[int] = None) -> int:
    """The exit status of `status`; a config may make new dead letters exit 0 (exit_codes.dead_letters)."""
    if status == "finished_with_dead_letters" and dead_letters_exit_code is not None:
        return dead_letters_exit_code
    return _BY_NAME[status].exit_code


def backfill_progress(summary: dict) -> Dict[str, int]:
    """Where this run's manifests stand over all runs: done (before and in this run), still to do, failed.

    done = already done + embedded this run; remaining = deferred + transient dead letters (the next run
    takes them); failed = permanent dead letters (fix the rows, or --retry-dead-letters)."""
    embedded = sum((summary.get("items_embedded") or {}).values())
    already = summary.get("items_already_done", 0)
    dead = summary.get("dead_letters", 0)
    transient = summary.get("dead_letters_transient", 0)
    failed = summary.get("dead_letters_permanent", dead - transient)
    deferred = summary.get("deferred", 0)
    done, remaining = already + embedded, deferred + transient
    total = done + remaining + failed
    return {"done": done, "already_done": already, "embedded": embedded, "remaining": remaining,
            "deferred": deferred, "transient": transient, "failed": failed, "total": total,
            "percent": math.floor(1000.0 * done / total) / 10 if total else 100.0}  # 100 only when all done
