"""Embed API v2 calls: one item per `POST /embed-v2`, and async tasks that are created once, recorded in
the output before they are polled, and polled (paced like calls) until ready, failed or the deadline."""
from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import logging
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from apache_beam.io.filesystems import FileSystems

from embed_client import errors
from transforms.calling.engine import Attempts, Caller, CallStats, NotCalled, endpoint_missing, error_code
from transforms.calling.upload import AssetFailed, AssetNotReady, Uploader
from transforms.models import model
from transforms.records import DeadLetter, Deferred, Item, Outcome, item_row
from transforms.settings import CallSettings
from transforms.store.layout import TASKS_DIR, commit, list_files, mkdirs, piece_name, read_jsonl

__all__ = ["SyncV2Caller", "TaskCaller", "TASKS_DIR", "TaskRecord", "read_task_journal", "segments_from_data"]

_LOGGER = logging.getLogger(__name__)
_MODALITY_OPTIONS = {"audio": ("audio", "transcription"), "video": ("visual", "audio", "transcription")}
_SCOPE_ORDER = {None: 0, "clip": 0, "page": 0, "chunk": 0, "asset": 1}
_OPTION_ORDER = {None: 0, "visual": 1, "audio": 2, "transcription": 3, "text": 4, "fused": 5}
# Between polls of one task: the configured first wait, growing by this factor up to the cap.
_POLL_GROWTH = 1.5
_POLL_CAP_SEC = 60.0
# A recorded task older than the API's retention (7 days), less this margin, is created again.
_RETENTION_MARGIN_SEC = 3600.0

TaskRecord = Tuple[str, float]  # (task id, created at: UTC epoch seconds)
# The task id of a record whose create was sent but whose answer was never recorded (a kill in between):
# the next run looks for that task in the API's task list before it pays for another.
UNRECORDED = ""
# How far the API's clock may differ from ours, and how long a create (with its retries) may take.
_CLOCK_SKEW_SEC = 300.0
_CREATE_WINDOW_SEC = 1800.0
# Bounds on the search for an unrecorded task: list pages, and candidates read one by one.
_LIST_PAGES = 20
_CANDIDATES = 20
_OFFSET_TOLERANCE_SEC = 0.01


def _media_source(item: Item) -> Dict[str, str]:
    if item.url is not None:
        return {"url": item.url}
    if item.asset_id is not None:
        return {"asset_id": item.asset_id}
    with FileSystems.open(item.file_path, compression_type="uncompressed") as f:
        return {"base64_string": base64.b64encode(f.read()).decode("ascii")}


def _segmentation(settings: CallSettings, modality: str, task: bool) -> Optional[Dict[str, Any]]:
    seg = settings.embedding.segmentation_dict()
    if seg is None:
        return None
    strategy = seg["strategy"]
    field = "duration_sec" if strategy == "fixed" else "min_duration_sec"
    if strategy == "dynamic" and modality == "audio" and model(settings.model).audio_fixed_windows_only:
        return None  # the API default applies
    shape: Dict[str, Any] = {"strategy": strategy}
    if seg.get(field) is not None:
        shape[strategy] = {field: int(seg[field])}
    return {"temporal": shape} if task and model(settings.model).task_segmentation_in_temporal else shape


def media_input(item: Item, settings: CallSettings, task: bool) -> Dict[str, Any]:
    """The `audio`/`video` object of a v2 request for one item."""
    body: Dict[str, Any] = {"media_source": _media_source(item)}
    if item.start_sec is not None:
        body["start_sec"] = item.start_sec
    if item.end_sec is not None:
        body["end_sec"] = item.end_sec
    segmentation = _segmentation(settings, item.modality, task)
    if segmentation is not None:
        body["segmentation"] = segmentation
    emb = settings.embedding
    options = None
    if emb.options is not None:
        options = [o for o in emb.options if o in _MODALITY_OPTIONS[item.modality]]
        if options:
            body["embedding_option"] = options
    if emb.scopes is not None:
        body["embedding_scope"] = list(emb.scopes)
    if emb.type is not None and options and len(options) >= 2:
        body["embedding_type"] = list(emb.type)
    return body


def sync_request(item: Item, settings: CallSettings) -> Dict[str, Any]:
    """Keyword arguments of `EmbedClient.v2.build_create` for one item."""
    model_name = settings.model
    truncate = None if item.text_truncate is None else item.text_truncate != "none"
    if model(model_name).sync_multi_input_only:
        if item.modality == "text":
            multi = {"input_text": item.text}
        else:
            multi = {"media_sources": [{"media_type": item.modality, **_media_source(item)}]}
        return dict(input_type="multi_input", model_name=model_name, multi_input=multi, auto_truncate=truncate,
                    embedding_dimension=settings.embedding.dimension)
    if item.modality == "text":
        return dict(input_type="text", model_name=model_name, text={"input_text": item.text})
    if item.modality == "image":
        return dict(input_type="image", model_name=model_name, image={"media_source": _media_source(item)})
    return {"input_type": item.modality, "model_name": model_name, item.modality: media_input(item, settings, False)}


def task_request(item: Item, settings: CallSettings) -> Dict[str, Any]:
    """Keyword arguments of `EmbedClient.tasks.build_create` for one audio or video item."""
    return {"input_type": item.modality, "model_name": settings.model,
            "embedding_dimension": settings.embedding.dimension,
            item.modality: media_input(item, settings, True)}


def segments_from_data(data, dims: int) -> Tuple[List[Tuple[Optional[float], Optional[float], List[float]]],
                                                List[Tuple[Optional[str], Optional[str]]]]:
    """v2 `data[]` (order not guaranteed) as segments in a stable order: clips by time, then the asset."""
    if not data:
        raise errors.MalformedResponseError("the response holds no embeddings", status=200)
    ordered = sorted(data, key=lambda d: (_SCOPE_ORDER.get(d.embedding_scope, 0), d.start_sec or 0.0,
                                          d.end_sec or 0.0, _OPTION_ORDER.get(d.embedding_option, 9),
                                          d.embedding_option or ""))
    segments, labels = [], []
    for entry in ordered:
        vector = entry.embedding
        if vector is None or len(vector) != dims:
            raise errors.MalformedResponseError(
                f"a vector has {len(vector or [])} values, expected {dims}", status=200)
        segments.append((entry.start_sec, entry.end_sec, vector))
        labels.append((entry.embedding_option, entry.embedding_scope))
    return segments, labels


def clip_minutes(item: Item) -> Optional[float]:
    """Minutes of audio/video an item sends, when known before the call."""
    if item.modality not in ("audio", "video") or item.duration_sec is None:
        return None
    end = min(item.end_sec or item.duration_sec, item.duration_sec)
    return max(0.0, end - (item.start_sec or 0.0)) / 60.0


def data_minutes(data) -> float:
    """Minutes of media an answer covers (for media whose length was unknown before the call)."""
    spans = [(d.start_sec, d.end_sec) for d in data or [] if d.start_sec is not None and d.end_sec is not None]
    return (max(e for _, e in spans) - min(s for s, _ in spans)) / 60.0 if spans else 0.0


class _MediaPaced:
    """Audio and video minutes paced to `calls.media_minutes_per_hour`, besides the request rate; and files
    past the inline limit uploaded as assets before their call."""

    media = None  # a MediaMinutesBudget, set by the calling step
    uploads: Optional[Callable[[], Uploader]] = None  # the process's uploader, set by the calling step

    def _with_asset(self, item: Item, stats: CallStats) -> Union[Item, List[Union[DeadLetter, Deferred]]]:
        """The item as it is sent: an uploaded file by its asset id; or the records that end it here. The
        upload's requests count toward the outage and throttling like the call's own (Caller.request)."""
        if not item.upload:
            return item
        if self.uploads is None:
            raise RuntimeError("a file to upload reached a caller without an uploader")
        try:
            asset_id = self.uploads().ensure(item, stats)
        except AssetFailed as exc:
            return [DeadLetter(i.id, i.source, i.row_number, i.modality, "upload", "asset_failed",
                               f"{i.source} row {i.row_number}: `{i.modality}_file` {i.file_path} was uploaded as "
                               f"asset {exc.asset_id}, which the platform could not process: {exc.reason}",
                               content_hash=i.content_hash, row=item_row(i))
                    for i in item.with_copies()]
        except AssetNotReady as exc:
            return [Deferred(i.id, i.source, i.row_number, i.modality, "asset_processing",
                             detail=f"asset {exc.asset_id}") for i in item.with_copies()]
        except errors.RateLimitError as exc:
            if self._quota_spent(exc):
                return self._deferred([item])
            return self._dead(item, exc, exc.attempts or 1)
        except errors.EmbedError as exc:
            # The uploader handles the 404s that are about an asset or session (gone: uploaded again); one that
            # reaches here answered a create, so it is the endpoint's, as on an embed call: transient, and one
            # more failure toward an outage (its attempts counted the rest).
            if endpoint_missing(exc):
                self.quota.service_result(True, error_code(exc, paid=True))
            return self._dead(item, exc, exc.attempts or 1, paid=True)
        except OSError as exc:
            return [DeadLetter(i.id, i.source, i.row_number, i.modality, "upload", "unreadable_file",
                               f"{i.source} row {i.row_number}: {i.file_path} cannot be read ({exc})")
                    for i in item.with_copies()]
        return dataclasses.replace(item, asset_id=asset_id, file_path=None)

    def _media_budget(self, item: Item):
        """The media-minutes budget of the item's category (one for all audio/video unless paced per category)."""
        return self.media.get(item.modality) if isinstance(self.media, dict) else self.media

    def _pace_media(self, item: Item, stats: CallStats) -> None:
        budget = self._media_budget(item)
        if budget is not None:
            minutes = clip_minutes(item)
            if minutes is not None:
                stats.throttled_sec += budget.acquire(minutes)

    def _charge_media(self, item: Item, data) -> None:
        budget = self._media_budget(item)
        if budget is not None and item.modality in ("audio", "video") and clip_minutes(item) is None:
            budget.charge(data_minutes(data))


class SyncV2Caller(_MediaPaced, Caller):
    """One item per `POST /embed-v2` call; the same pacing, budget, retries and error mapping as v1."""

    def _run(self, items: List[Item], stats: CallStats):
        if self.quota.stopped:
            return self._deferred(items)
        sent = self._with_asset(items[0], stats)
        if isinstance(sent, list):
            return sent
        self._pace_media(sent, stats)
        return super()._run([sent], stats)

    def _build(self, items: List[Item]):
        (item,) = items
        return self.client.v2.build_create(**sync_request(item, self.settings))

    def _send(self, body):
        return self.client.v2.send(body)

    def _check(self, items: List[Item], response) -> None:
        segments_from_data(response.data, self.dims)

    def _map(self, items, response, attempts, stats=None) -> List[Union[Outcome, DeadLetter]]:
        segments, labels = segments_from_data(response.data, self.dims)
        self._charge_media(items[0], response.data)
        if stats is not None:
            stats.add_usage(response.usage)
        return [Outcome(each, self.settings.model, segments, attempts, labels=labels)
                for item in items for each in item.with_copies()]


def task_key(item: Item) -> str:
    return json.dumps([item.id, item.modality, item.content_hash])


class TaskJournal:
    """Commits each created task's id to OUTPUT/tasks/ before it is polled: a rerun polls it, never pays again."""

    def __init__(self, output: Optional[str], run_id: str):
        self._dir = None if output is None else FileSystems.join(output, TASKS_DIR)
        self._run_id = run_id
        self._worker = uuid.uuid4().hex[:8]
        self._sequence = 0
        self._lock = threading.Lock()  # tasks are created from many pool threads

    def intend(self, item: Item, at: float) -> None:
        """Before a create is sent: if the run dies before its answer is recorded, the next run knows to look
        for the task instead of paying for another."""
        self._write(item, {"key": task_key(item), "intent_at": at})

    def record(self, item: Item, task_id: str, created_at: float) -> None:
        self._write(item, {"key": task_key(item), "task_id": task_id, "created_at": created_at})

    def _write(self, item: Item, record: Dict[str, Any]) -> None:
        if self._dir is None:
            return
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
        line = json.dumps({**record, "id": item.id, "modality": item.modality, "source": item.source,
                           "row_number": item.row_number, "run_id": self._run_id}) + "\n"
        mkdirs(self._dir)
        commit(self._dir, piece_name(self._run_id, self._worker, sequence, ".jsonl"),
               lambda f: f.write(line.encode("utf-8")))


def read_task_journal(output: str) -> Dict[str, TaskRecord]:
    """The newest recorded task per item key, from every run's journal. A create sent later than the newest
    record (or with none) whose answer was never recorded is `(UNRECORDED, sent at)`."""
    tasks: Dict[str, TaskRecord] = {}
    intents: Dict[str, float] = {}
    for path in list_files(FileSystems.join(output, TASKS_DIR), "*.jsonl"):
        for record in read_jsonl(path):
            try:
                key = record["key"]
                if "intent_at" in record:
                    at = float(record["intent_at"])
                    intents[key] = max(at, intents.get(key, at))
                    continue
                task_id, created = str(record["task_id"]), float(record["created_at"])
            except (KeyError, TypeError, ValueError):
                continue  # a torn or foreign record; the task is created again
            if key not in tasks or created >= tasks[key][1]:
                tasks[key] = (task_id, created)
    for key, at in intents.items():
        # A create's answer is recorded after it was sent, so a record at or after the intent settles it.
        if key not in tasks or tasks[key][1] < at:
            tasks[key] = (UNRECORDED, at)
    return tasks


def _epoch(stamp: Optional[str]) -> Optional[float]:
    if not stamp:
        return None
    try:
        moment = datetime.datetime.fromisoformat(stamp.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def _rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _TaskGone(Exception):
    """A recorded task the API no longer knows (expired or purged): it is created again."""


class TaskCaller(_MediaPaced, Caller):
    """Audio and video too long for a sync call: create a task once, record it, poll it to the end."""

    def __init__(self, settings: CallSettings, client, pacer, quota=None, known: Optional[Dict[str, TaskRecord]] = None,
                 journal: Optional[TaskJournal] = None, clock=time.time, sleep=time.sleep):
        super().__init__(settings, client, pacer, quota)
        self.known = dict(known or {})
        self.journal = journal or TaskJournal(None, settings.run_id)
        # Task ids some item already owns: an unrecorded create may only be matched to another task.
        self._claimed = {task_id for task_id, _ in self.known.values() if task_id != UNRECORDED}
        self._claim_lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def _run(self, items: List[Item], stats: CallStats):
        (item,) = items
        recorded = self.known.get(task_key(item))
        if recorded is not None and recorded[0] == UNRECORDED:
            recorded = self._find_unrecorded(item, recorded[1], stats)
            if recorded is not None:
                self.journal.record(item, *recorded)
                self.known[task_key(item)] = recorded
        max_age = self.settings.task_retention_sec - _RETENTION_MARGIN_SEC
        if recorded is not None and self._clock() - recorded[1] < max_age:
            stats.tasks_resumed += 1
            try:
                return self._poll(item, recorded[0], stats, attempts=0)
            except _TaskGone:
                pass
        if recorded is not None:
            stats.tasks_recreated += 1
        if self.quota.stopped:
            return self._deferred(items)
        sent = self._with_asset(item, stats)
        if isinstance(sent, list):
            return sent
        try:
            body = self.client.tasks.build_create(**task_request(sent, self.settings))
        except errors.BadRequestError as exc:
            return self._dead(item, exc, 0)
        except OSError as exc:
            return [DeadLetter(i.id, i.source, i.row_number, i.modality, "call", "unreadable_file",
                               f"{i.source} row {i.row_number}: {i.file_path} cannot be read ({exc})")
                    for i in item.with_copies()]
        self._pace_media(item, stats)
        counter = Attempts()
        self.journal.intend(item, self._clock())
        try:
            created = self._send_paced(lambda: self._created(self.client.tasks.send_create(body)), 1, stats, counter,
                                       categories=(item.modality,))
        except NotCalled:
            return self._deferred(items)
        except errors.RateLimitError as exc:
            if self._quota_spent(exc, (item.modality,)):
                return self._deferred(items)
            return self._dead(item, exc, counter.count)
        except errors.EmbedError as exc:
            return self._dead(item, exc, counter.count, paid=True)
        created_at = self._clock()
        # Before the first poll: a kill from here on costs nothing, the next run polls this id.
        self.journal.record(item, created.id, created_at)
        self.known[task_key(item)] = (created.id, created_at)
        with self._claim_lock:
            self._claimed.add(created.id)
        stats.tasks_created += 1
        try:
            return self._poll(item, created.id, stats, attempts=counter.count)
        except _TaskGone:
            return self._dead(item, errors.NotFoundError(f"task {created.id} vanished right after it was created",
                                                          status=404, code="resource_not_exist"), counter.count)

    def _find_unrecorded(self, item: Item, sent_at: float, stats: CallStats) -> Optional[TaskRecord]:
        """The task an earlier run created for `item` but was killed before recording, found in the API's
        task list by its model, input and span; None when it is not there or cannot be told apart (then it
        is created)."""
        started, ended = _rfc3339(sent_at - _CLOCK_SKEW_SEC), _rfc3339(sent_at + _CREATE_WINDOW_SEC + _CLOCK_SKEW_SEC)
        listed: List[Any] = []
        try:
            for page in range(1, _LIST_PAGES + 1):
                found, _ = self._send_paced(
                    lambda page=page: self.client.tasks.list_page(started_at=started, ended_at=ended, page=page,
                                                                  page_limit=50), 1, stats, Attempts(), paid=False)
                listed += [task for task in found if self._lists_as(item, task)]
                if len(found) < 50:
                    break
            with self._claim_lock:
                listed = [task for task in listed if task.id not in self._claimed]
            match = None
            for task in listed[:_CANDIDATES]:
                full = self._send_paced(lambda task_id=task.id: self.client.tasks.retrieve(task_id), 1, stats,
                                        Attempts(), paid=False)
                fit = self._fits(item, full.metadata or {})
                if fit is True or (fit is None and len(listed) == 1):
                    match = task
                    break
        except (errors.EmbedError, NotCalled) as exc:
            _LOGGER.warning("%s row %d: could not look for the task an earlier run created (%s); creating it",
                            item.source, item.row_number, getattr(exc, "message", exc))
            return None
        if match is None:
            return None
        with self._claim_lock:
            if match.id in self._claimed:  # another item of this run took it while this one looked
                return None
            self._claimed.add(match.id)
        _LOGGER.info("%s row %d: found task %s, created by an earlier run that stopped before recording it",
                     item.source, item.row_number, match.id)
        return match.id, _epoch(match.created_at) or sent_at

    def _lists_as(self, item: Item, task) -> bool:
        """Whether a task-list entry may be the one created for `item` (same model, kind and source)."""
        if task.model_name != self.settings.model or not task.id:
            return False
        entry = task.extra.get(f"{item.modality}_embedding")
        if not isinstance(entry, dict):
            return False
        listed_url = (entry.get("metadata") or {}).get("input_url")
        return listed_url is None or listed_url == item.url

    @staticmethod
    def _fits(item: Item, metadata: Dict[str, Any]) -> Optional[bool]:
        """Whether a task's metadata matches `item`'s span and source; None when it does not say."""
        said = False
        for asked, field in ((item.start_sec, "start_offset_sec"), (item.end_sec, "end_offset_sec")):
            if asked is None or not isinstance(metadata.get(field), (int, float)):
                continue
            said = True
            if abs(float(metadata[field]) - float(asked)) > _OFFSET_TOLERANCE_SEC:
                return False
        if item.url is not None and metadata.get("input_url") is not None:
            said = True
            if metadata["input_url"] != item.url:
                return False
        return True if said else None

    @staticmethod
    def _created(response):
        if not getattr(response, "id", None):
            raise errors.MalformedResponseError("the task create answer has no _id", status=202)
        return response

    def _poll(self, item: Item, task_id: str, stats: CallStats, attempts: int):
        deadline = time.monotonic() + self.settings.task_deadline_sec
        wait = self.settings.task_poll_sec
        while True:
            if self.quota.stopped:
                return self._pending(item, task_id, self.quota.stopped, self.quota.resets_at)
            counter = Attempts()
            try:
                # Polls take from no category (the platform's categories list the POSTs only): with one
                # bucket for every category they are paced by it, as they always were.
                task = self._send_paced(lambda: self.client.tasks.retrieve(task_id), 1, stats, counter, paid=False)
            except errors.NotFoundError:
                raise _TaskGone()
            except errors.RateLimitError as exc:
                if self._quota_spent(exc, (item.modality,)):
                    return self._pending(item, task_id, "quota_exhausted", self.quota.resets_at)
                return self._pending(item, task_id, "task_pending", None)
            except errors.EmbedError as exc:
                if exc.is_retryable:  # the status read failed for now: the task goes on; the next run polls it
                    return self._pending(item, task_id, "task_pending", None)
                return self._dead(item, exc, attempts)
            if task.status == "ready":
                segments, labels = segments_from_data(task.data, self.dims)
                stats.tasks_ready += 1
                stats.add_usage(task.usage)
                self._charge_media(item, task.data)
                return [Outcome(each, self.settings.model, segments, attempts, labels=labels)
                        for each in item.with_copies()]
            if task.status == "failed":
                stats.tasks_failed += 1
                message = task.error_message or "the platform gave no reason"
                return [DeadLetter(each.id, each.source, each.row_number, each.modality, "call", "task_failed",
                                   f"{each.source} row {each.row_number}: task {task_id} failed: {message}",
                                   None, attempts) for each in item.with_copies()]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._pending(item, task_id, "task_pending", None)
            self._sleep(min(wait, remaining))
            wait = min(wait * _POLL_GROWTH, _POLL_CAP_SEC)

    def _pending(self, item: Item, task_id: str, reason: str, resets_at: Optional[float]) -> List[Deferred]:
        """Not done in this run; the task id is recorded, so the next run polls it instead of paying again."""
        return [Deferred(i.id, i.source, i.row_number, i.modality, reason, resets_at, detail=f"task {task_id}")
                for i in item.with_copies()]
