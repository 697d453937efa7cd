"""The v2 service: routing, admission (gate.py), what each answer counts, and the GET task endpoints."""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Tuple

from ..categories import CategoryLimiter, v2_categories
from ..config import EmulatorConfig
from ..faults import FaultInjector
from ..gate import Gate
from ..limits import MediaMinutesLimiter, RateLimiter
from ..reply import Reply, json_reply
from ..rules import invalid_message
from ..stats import Stats
from ..tasks import TaskStore, rfc3339, total_pages
from .common import Outcome
from .errors import MediaRefused, V2Error, bad, error_reply
from .sources import AssetLookup
from .spec import LIST_DEFAULT_RANGE_SEC, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX, TASKS_PATH, V2_PATH
from .sync_call import SyncCall
from .task_call import TaskCall


class V2Service:
    """Every v2 call. Order, as on v1: route (404/405), then admission (see gate.py: auth (401),
    429 burst fault, request limits (429 rpm/rpd, shared with v1), other faults), then validation
    (400), media-minute limits (429 dph/dpd, only for calls that embed audio or video), media
    checks (400/413), processing. Errors are nested, {"error": {"code", "message"}}, except the
    list endpoint's 400, which the spec declares flat ({"code", "message"})."""

    def __init__(self, get_config: Callable[[], EmulatorConfig], stats: Stats,
                 limiter: RateLimiter, media_limiter: MediaMinutesLimiter, faults: FaultInjector,
                 tasks: TaskStore, stopping: Callable[[], threading.Event],
                 asset_lookup: Optional[AssetLookup] = None, categories: Optional[CategoryLimiter] = None):
        self._stats = stats
        # Uploaded assets (assets/ store), so media_source.asset_id also names them.
        self.asset_lookup = asset_lookup
        self._media = media_limiter
        self.tasks = tasks
        self._categories = categories
        self._gate = Gate(get_config, stats, limiter, faults, stopping,
                          nested_errors=True, dimension_header=True, categories=categories)

    # ---- routing ------------------------------------------------------------------------

    @staticmethod
    def route(method: str, path: str) -> Tuple[Optional[str], Optional[str], Optional[Reply]]:
        """(endpoint name, task id, None) or (None, None, a 404/405 reply)."""
        if path == V2_PATH:
            endpoints = {"POST": "embed"}
        elif path == TASKS_PATH:
            endpoints = {"POST": "create", "GET": "list"}
        elif path.startswith(TASKS_PATH + "/") and "/" not in path[len(TASKS_PATH) + 1:]:
            endpoints = {"GET": "retrieve"}
        else:
            return None, None, error_reply(404, "resource_not_exist",
                                           f"The requested resource `{path}` does not exist.")
        if method not in endpoints:
            allowed = ", ".join(sorted(endpoints))
            return None, None, error_reply(
                405, "method_not_allowed",  # code: emulator choice, none is documented
                f"The {method} method is not allowed on {path}; use {allowed}.",
                {"Allow": allowed})
        task_id = path[len(TASKS_PATH) + 1:] if endpoints.get("GET") == "retrieve" else None
        return endpoints[method], task_id, None

    def handle(self, endpoint: str, task_id: Optional[str], query: Dict[str, List[str]],
               api_key: Optional[str], body: bytes) -> Reply:
        categories: tuple = ()
        if endpoint in ("embed", "create"):  # the POSTs the platform's categories list; polls take from none
            try:
                categories = v2_categories(json.loads(body or b"{}"))
            except (ValueError, UnicodeDecodeError, RecursionError):
                categories = ()
        return self._gate.handle(
            api_key, lambda config: self._answer(config, endpoint, task_id, query, body), categories)

    def _answer(self, config: EmulatorConfig, endpoint: str, task_id: Optional[str],
                query: Dict[str, List[str]], body: bytes) -> Reply:
        """The admitted call's answer; MediaRefused goes up to the gate, which answers 429."""
        try:
            outcome = self._dispatch(config, endpoint, task_id, query, body)
            reply = json_reply(outcome.status, outcome.payload)
            self._count(config, outcome)
        except V2Error as exc:
            reply = exc.reply()
        return reply

    def _count(self, config: EmulatorConfig, outcome: Outcome) -> None:
        if outcome.media_sec > 0:
            self._media.add(outcome.media_sec, config.day_length_sec)
            if self._categories is not None:
                self._categories.add_media(outcome.input_type, outcome.media_sec, config.day_length_sec)
            self._stats.media(outcome.media_sec)
        if outcome.task_created:
            self._stats.task("created", outcome.key if config.record_keys else None)
        elif outcome.input_type:
            self._stats.embedded([outcome.input_type],
                                 [outcome.key] if config.record_keys and outcome.key else [])

    def check_media_minutes(self, config: EmulatorConfig) -> None:
        """Raises MediaRefused when the audio/video minutes are spent (calls that embed media)."""
        refusal = self._media.check(config.media_minutes_per_hour, config.media_minutes_per_day,
                                    config.day_length_sec)
        if refusal is not None:
            raise MediaRefused(refusal)

    def _dispatch(self, config, endpoint, task_id, query, body) -> Outcome:
        if endpoint == "retrieve":
            self._stats.task("polled")
            return self._retrieve(config, task_id)
        if endpoint == "list":
            return self._list(config, query)
        request = _json_body(body)
        if endpoint == "embed":
            return SyncCall(self, config, request).run()
        return TaskCall(self, config, request).run()

    # ---- tasks: retrieve and list -------------------------------------------------------

    def _retrieve(self, config: EmulatorConfig, task_id: str) -> Outcome:
        found = self.tasks.get(task_id, config.task_retention_sec)
        if found is None:
            raise V2Error(404, "resource_not_exist",
                          f"The embedding task `{task_id}` does not exist.")
        task, status = found
        payload = {"_id": task.id, "status": status, "created_at": rfc3339(task.created_at),
                   "updated_at": rfc3339(task.updated_at()),
                   "data": task.data if status == "ready" else None,
                   "metadata": task.metadata}
        if status == "ready" and task.usage is not None:
            payload["usage"] = task.usage
        if status == "failed":
            payload["error"] = {"message": task.error}
        return Outcome(200, payload)

    def _list(self, config: EmulatorConfig, query: Dict[str, List[str]]) -> Outcome:
        def one(name: str) -> Optional[str]:
            values = query.get(name)
            return values[-1] if values else None

        def flat_bad(message: str) -> V2Error:  # the spec declares this endpoint's 400 flat
            return V2Error(400, "parameter_invalid", message, flat=True)

        now = time.time()
        started = _parse_time(one("started_at"), "started_at", flat_bad)
        ended = _parse_time(one("ended_at"), "ended_at", flat_bad)
        if started is None:
            started = (ended if ended is not None else now) - LIST_DEFAULT_RANGE_SEC
        if ended is None:
            ended = max(now, started) + 1.0
        status = one("status")
        if status is not None and status not in ("processing", "ready", "failed"):
            raise flat_bad(invalid_message("status", "You should use one of the following "
                                           "values: `processing`, `ready`, `failed`."))
        page = _parse_int(one("page"), "page", 1, 1, None, flat_bad)
        limit = _parse_int(one("page_limit"), "page_limit", PAGE_LIMIT_DEFAULT, 1,
                           PAGE_LIMIT_MAX, flat_bad)
        rows, total = self.tasks.list(started_at=started, ended_at=ended, status=status,
                                      page=page, page_limit=limit,
                                      retention_sec=config.task_retention_sec)
        data = []
        for task, current in rows:
            data.append({"_id": task.id, "model_name": task.model_name, "status": current,
                         "created_at": rfc3339(task.created_at),
                         "updated_at": rfc3339(task.updated_at()),
                         f"{task.input_type}_embedding": {"metadata": task.list_metadata}})
        return Outcome(200, {"data": data, "page_info": {
            "limit_per_page": limit, "page": page, "total_page": total_pages(total, limit),
            "total_results": total}})


def _json_body(body: bytes) -> dict:
    try:
        request = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        raise bad("The request body is not valid JSON.")
    if not isinstance(request, dict):
        raise bad("The request body must be a JSON object.")
    return request


def _parse_time(raw: Optional[str], name: str, error) -> Optional[float]:
    if raw is None or raw == "":
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise error(invalid_message(name, "It must be a date and time in the RFC 3339 format "
                                    "(YYYY-MM-DDTHH:mm:ssZ)."))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _parse_int(raw: Optional[str], name: str, default: int, low: int, high: Optional[int],
               error) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise error(invalid_message(name, f"It must be an integer {bound}."))
    return value
