"""The call policy: build a request, pace it, send it with retries, split a packed call on 400, and map the
answer to outcomes, dead letters or deferred items. No Beam in here: the calling step's DoFn, the
RunInference handler and the unit tests drive the same objects.

    caller = Caller(settings, client, pacer)       # pacer: any embed_client.pacing.Pacer
    records, stats = policy.run(Call([item, ...]))     # never raises for an item; ApiKeyRejected for a bad key
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, List, NamedTuple, Optional, Tuple, TypeVar, Union

from embed_client import API_KEY_ENV, EmbedClient, errors
from embed_client.pacing import Pacer
from embed_client.pacing.categories import CategoryPacers, named_category
from embed_client.pacing.local import MediaMinutesBudget
from embed_client.retry import call_with_retries
from transforms.records import Call, DeadLetter, Deferred, Item, Outcome, item_row
from transforms.settings import ApiKeyRejected, CallSettings

if TYPE_CHECKING:  # the uploader builds on the Caller below (transforms.calling.upload imports this module)
    from transforms.calling.upload import Uploader

__all__ = ["Attempts", "Caller", "CallRecord", "CallResult", "CallStats", "NotCalled", "QuotaState",
           "WaitMeter", "WorkerState", "read_file"]

_LOGGER = logging.getLogger(__name__)

CallRecord = Union[Outcome, DeadLetter, Deferred]
T = TypeVar("T")


class NotCalled(Exception):
    """The quota or budget stopped this call before it was made."""


class Attempts:
    """How many times a call was sent, readable after it raised."""

    def __init__(self):
        self.count = 0


@dataclasses.dataclass
class CallStats:
    """What one call (with its retries, splits and polls) cost; the calling step turns it into metrics."""

    calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    throttled_sec: float = 0.0
    items_per_call: List[int] = dataclasses.field(default_factory=list)
    split_calls: int = 0
    polls: int = 0                  # v2 task status reads: paced like calls, not paid for
    tasks_created: int = 0
    tasks_resumed: int = 0          # recorded by an earlier run: polled, not created again
    tasks_recreated: int = 0        # recorded, but past the API's retention: created again
    tasks_ready: int = 0
    tasks_failed: int = 0
    # v2 usage: input tokens by kind (text, image, audio, video) and how many answers were truncated.
    usage_tokens: Dict[str, int] = dataclasses.field(default_factory=dict)
    truncated: int = 0
    limited_dimensions: List[str] = dataclasses.field(default_factory=list)  # X-Ratelimit-Dimensions of 429s
    latencies_ms: List[int] = dataclasses.field(default_factory=list)
    # Whole UTC second -> [calls answered, of which 429], for the run report's chart.
    timeline: Dict[int, List[int]] = dataclasses.field(default_factory=dict)
    # Rate-limit category -> [answers that took from it, of which 429], for the summary's share of each limit.
    by_category: Dict[str, List[int]] = dataclasses.field(default_factory=dict)

    def add_usage(self, usage) -> None:
        if usage is None:
            return
        for kind, tokens in (usage.input_tokens or {}).items():
            self.usage_tokens[kind] = self.usage_tokens.get(kind, 0) + int(tokens or 0)
        self.truncated += int(bool(usage.truncated))

    def add_waits(self, other: "CallStats") -> None:
        """Another request's retries, 429s and seconds throttled (not its calls, polls or latencies): what an
        upload's API requests add to the call they upload for."""
        self.retries += other.retries
        self.rate_limited += other.rate_limited
        self.throttled_sec += other.throttled_sec
        self.limited_dimensions.extend(other.limited_dimensions)
        for category, (answers, limited) in other.by_category.items():
            entry = self.by_category.setdefault(category, [0, 0])
            entry[0] += answers
            entry[1] += limited

    def count_category(self, category: str, limited: bool) -> None:
        """An answer for a category: calls (2xx or 429) and 429s, for the per-category summary."""
        entry = self.by_category.setdefault(category, [0, 0])
        entry[0] += 1
        entry[1] += int(limited)

    def mark(self, rate_limited: bool) -> None:
        bucket = self.timeline.setdefault(int(time.time()), [0, 0])
        bucket[0] += 1
        bucket[1] += int(rate_limited)


class CallResult(NamedTuple):
    records: List[CallRecord]
    stats: CallStats


class QuotaState:
    """Per process and run: once the quota, the call budget or the service is gone, nothing more is called."""

    def __init__(self, max_calls: Optional[int], outage_after: int = 0):
        self._lock = threading.Lock()
        self.max_calls = max_calls
        self.calls = 0
        self.stopped: Optional[str] = None
        self.resets_at: Optional[float] = None
        # Consecutive attempts that failed for the service's reason (refused, timed out, 5xx, no endpoint).
        self.outage_after = outage_after
        self.service_failures = 0
        self.last_service_error: Optional[str] = None
        # Categories whose (daily) quota is spent: category -> when it resets (None: not said).
        self.stopped_categories: Dict[str, Optional[float]] = {}

    def service_result(self, failed: bool, error: Optional[str] = None) -> None:
        """Counts an attempt's outcome; past `outage_after` failures in a row, calling stops for this run."""
        with self._lock:
            if not failed:
                self.service_failures = 0
                return
            self.service_failures += 1
            self.last_service_error = error
            if self.outage_after and self.service_failures >= self.outage_after and not self.stopped:
                self.stopped = "service_unavailable"
                _LOGGER.warning("the API failed %d attempts in a row (last: %s): calling stops and the rest is "
                                "deferred to the next run", self.service_failures, error)

    def take_call(self) -> bool:
        """Counts a call against the budget; False when it may not be made."""
        with self._lock:
            if self.stopped:
                return False
            if self.max_calls is not None and self.calls >= self.max_calls:
                self.stopped = "max_calls"
                _LOGGER.warning("the run's budget of %d calls is spent; the rest is deferred to the next run",
                                self.max_calls)
                return False
            self.calls += 1
            return True

    def stop(self, reason: str, resets_at: Optional[float]) -> None:
        with self._lock:
            if not self.stopped:
                from transforms.records import iso_utc

                _LOGGER.warning("the API quota is spent (resets at %s); the rest is deferred to the next run",
                                iso_utc(resets_at) or "an unknown time")
                self.stopped, self.resets_at = reason, resets_at

    def spent_by(self, exc: errors.RateLimitError, deadline_sec: float, category: Optional[str] = None) -> bool:
        """A 429 whose reset lies beyond what a call may wait: the quota is spent, not the items. With
        `category` (the one the 429 names, or the call's only one when paced per category) only that category
        stops; otherwise calling stops."""
        if exc.is_retryable and exc.wait_seconds is not None and exc.wait_seconds <= deadline_sec:
            return False
        wait = exc.wait_seconds
        resets_at = exc.rate_limit.reset_at or (None if wait is None else exc.rate_limit.received_at + wait)
        if category is not None:
            self.stop_category(category, resets_at)
        else:
            self.stop("quota_exhausted", resets_at)
        return True

    def stop_category(self, category: str, resets_at: Optional[float]) -> None:
        """One category's quota is spent (a daily limit): only its items are deferred, the others go on."""
        with self._lock:
            if category not in self.stopped_categories:
                from transforms.records import iso_utc

                _LOGGER.warning("the API quota of the %s category is spent (resets at %s); its items are deferred to "
                                "the next run, the other categories go on", category,
                                iso_utc(resets_at) or "an unknown time")
                self.stopped_categories[category] = resets_at

    def category_stopped(self, category: str) -> bool:
        return category in self.stopped_categories

    def deferred(self, items: List[Item]) -> List[Deferred]:
        """The items of a call not made, for the next run."""
        out = []
        for item in items:
            if not self.stopped and item.modality in self.stopped_categories:
                reason, resets_at = "quota_exhausted", self.stopped_categories[item.modality]
                detail: Optional[str] = f"{item.modality} quota"
            else:
                reason, resets_at, detail = self.stopped or "quota_exhausted", self.resets_at, None
            out += [Deferred(i.id, i.source, i.row_number, i.modality, reason, resets_at, detail=detail)
                    for i in item.with_copies()]
        return out


class WaitMeter:
    """Wall seconds during which at least one caller of this process waited for its turn at the limit
    (thread-seconds add up every waiting thread and can exceed the run's length)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting = 0
        self._since = 0.0
        self._total = 0.0

    def wait(self, acquire: Callable[[], float]) -> float:
        with self._lock:
            if self._waiting == 0:
                self._since = self._clock()
            self._waiting += 1
        try:
            return acquire()
        finally:
            with self._lock:
                self._waiting -= 1
                if self._waiting == 0:
                    self._total += self._clock() - self._since

    def take(self) -> float:
        """The wall seconds gathered since the last take (each second is reported once, whoever takes it)."""
        with self._lock:
            total, self._total = self._total, 0.0
            return total


@dataclasses.dataclass(eq=False)
class WorkerState:
    """What every caller of one process shares for a run: the pace, the quota, the wait meter and the
    media-minutes budget (None when not configured). transforms.calling.worker_state hands these out per process."""

    pacer: CategoryPacers
    quota: QuotaState
    meter: WaitMeter = dataclasses.field(default_factory=WaitMeter)
    # One budget for all audio/video, or per category ({"audio": ..., "video": ...}) when paced per category.
    media: Union[None, MediaMinutesBudget, Dict[str, MediaMinutesBudget]] = None
    _uploader: Optional["Uploader"] = None
    _uploader_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def current_uploader(self) -> Optional["Uploader"]:
        return self._uploader

    def uploader(self, make: Callable[[], "Uploader"]) -> "Uploader":
        """The process's uploader for this run, made once by `make` (transforms.calling.upload.process_uploader)."""
        with self._uploader_lock:
            if self._uploader is None:
                self._uploader = make()
            return self._uploader

    @classmethod
    def for_settings(cls, settings: CallSettings, pacer: Pacer) -> "WorkerState":
        """A fresh state with this process's share of the run's call budget and media minutes."""
        budget = None if settings.max_calls is None else settings.max_calls // settings.max_workers
        media: Union[None, MediaMinutesBudget, Dict[str, MediaMinutesBudget]] = None
        if settings.per_category:
            media = {c: MediaMinutesBudget(settings.category_media_minutes(c) / settings.max_workers)
                     for c in ("audio", "video") if settings.category_media_minutes(c) is not None}
        elif settings.media_minutes_per_hour is not None:
            media = MediaMinutesBudget(settings.media_minutes_per_hour / settings.max_workers)
        if not isinstance(pacer, CategoryPacers):
            pacer = CategoryPacers.single(pacer)
        return cls(pacer, QuotaState(budget, settings.outage_after_failures), WaitMeter(), media)


def read_file(path: str) -> Tuple[str, bytes, str]:
    """(name, bytes, content type) of a local or FileSystems file, as the multipart body takes it."""
    from apache_beam.io.filesystems import FileSystems

    from embed_client.multipart import guess_content_type

    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = f.read()
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name, data, guess_content_type(name)


def call_categories(items: List[Item]) -> Tuple[str, ...]:
    """The rate-limit categories a call touches: one per modality it carries (a packed v1 call takes a turn
    from each; the platform does not say how it counts them, so the job assumes the strictest reading)."""
    return tuple(dict.fromkeys(i.modality for i in items))


_SERVICE_FAILURES = (errors.ConnectionFailedError, errors.EmbedTimeoutError, errors.ServerError,
                     errors.MalformedResponseError)


# A POST to an embed route names no resource that could be missing (an unknown asset id is a 400), so a 404 or
# 405 there says the endpoint is not where the config points: the service's (or the config's) fault, never the row's.
_ENDPOINT_MISSING_STATUSES = (404, 405)


def endpoint_missing(exc: errors.EmbedError) -> bool:
    """A 404/405 answer to an embed call: no such endpoint at the base URL."""
    return isinstance(exc, errors.BadRequestError) and exc.status in _ENDPOINT_MISSING_STATUSES


def is_service_failure(exc: errors.EmbedError, paid: bool) -> bool:
    """Fails every item alike: unreachable, hanging, 5xx, lying, or (for an embed call) no such endpoint."""
    return isinstance(exc, _SERVICE_FAILURES) or (paid and endpoint_missing(exc))


def error_code(exc: errors.EmbedError, paid: bool = False) -> str:
    """The dead-letter code of a failed call; `paid`: an embed call, whose 404/405 is the endpoint's."""
    if paid and endpoint_missing(exc):
        return "endpoint_not_found"  # transient (transforms.records.TRANSIENT_CODES): the next run tries again
    if exc.code:
        return exc.code
    return {errors.EmbedTimeoutError: "timeout", errors.ConnectionFailedError: "connection_failed",
            errors.MalformedResponseError: "malformed_response", errors.ServerError: "server_error",
            errors.RateLimitError: "too_many_requests"}.get(type(exc), "bad_request")


class Caller:
    """Embed API v1: one packed `POST /embed` call per Call. Thread-safe: one instance serves a pool.

    The v2 callers (transforms.calling.v2) override `_run`, `_build`, `_send`, `_check` and `_map`."""

    def __init__(self, settings: CallSettings, client: EmbedClient, pacer: Pacer,
                 quota: Optional[QuotaState] = None, meter: Optional[WaitMeter] = None,
                 read: Callable[[str], Tuple[str, bytes, str]] = read_file):
        self.settings = settings
        self.client = client
        # Per category (text, image, audio, video); a plain Pacer paces every category as one.
        self.pacer = pacer if isinstance(pacer, CategoryPacers) else CategoryPacers.single(pacer)
        self.quota = quota or QuotaState(settings.max_calls, settings.outage_after_failures)
        self.meter = meter or WaitMeter()
        self.policy = settings.retry_policy()
        self.dims = settings.dims
        self._local = threading.local()  # per pool thread: whether the current call's first turn is paid for
        self._read = read
        self._waits_lock = threading.Lock()  # request(): an upload's chunk threads share one call's stats

    def run(self, call: Call, prepaid: bool = False) -> CallResult:
        """`prepaid`: the scheduler already took this call's turn in its categories (its first try does not
        wait for the pacers again)."""
        stats = CallStats()
        self._local.prepaid = prepaid
        records = self._run(call.items, stats)
        self._local.prepaid = False
        # A call's dead letter carries what was sent: its content key (a later run re-tries it only if that
        # changed) and the manifest fields (to fix or re-drive it).
        by_key = {(i.id, i.source, i.row_number, i.modality): i for item in call.items for i in item.with_copies()}
        for record in records:
            if isinstance(record, DeadLetter) and record.row is None:
                item = by_key.get((record.id, record.source, record.row_number, record.modality))
                if item is not None:
                    record.content_hash, record.row = item.content_hash, item_row(item)
        return CallResult(records, stats)

    def _deferred(self, items: List[Item]) -> List[Deferred]:
        return self.quota.deferred(items)

    def _run(self, items: List[Item], stats: CallStats) -> List[CallRecord]:
        if self.quota.stopped:
            return self._deferred(items)
        spent = [i for i in items if self.quota.category_stopped(i.modality)]
        if spent:  # a category whose quota is spent: its items wait for the next run, the call-mates go on
            rest = [i for i in items if i not in spent]
            return self._deferred(spent) + (self._run(rest, stats) if rest else [])
        categories = call_categories(items)
        try:
            request = self._build(items)
        except errors.BadRequestError as exc:
            return [d for item in items for d in self._dead(item, exc, 0)]
        except OSError as exc:
            return [DeadLetter(i.id, i.source, i.row_number, i.modality, "call", "unreadable_file",
                               f"{i.source} row {i.row_number}: {i.file_path} cannot be read ({exc})")
                    for item in items for i in item.with_copies()]
        counter = Attempts()
        try:
            response = self._send_paced(lambda: self._checked(items, self._send(request)), len(items), stats,
                                        counter, categories=categories)
        except NotCalled:
            return self._deferred(items)
        except errors.RateLimitError as exc:
            if self._quota_spent(exc, categories):
                if self.quota.stopped or not any(self.quota.category_stopped(i.modality) for i in items):
                    return self._deferred(items)
                # Only a category of this call is spent: its items are deferred, the call-mates go on.
                return self._run(items, stats)
            return [d for item in items for d in self._dead(item, exc, counter.count)]
        except errors.BadRequestError as exc:
            if endpoint_missing(exc):
                # Not the items' fault: no split (every part would get the same answer), a transient letter each.
                return [d for item in items for d in self._dead(item, exc, counter.count, paid=True)]
            if len(items) > 1:
                # One bad item must not sink its call-mates: retry each alone.
                stats.split_calls += 1
                return [r for item in items for r in self._run([item], stats)]
            return self._dead(items[0], exc, counter.count)
        except errors.EmbedError as exc:
            return [d for item in items for d in self._dead(item, exc, counter.count)]
        return self._map(items, response, counter.count, stats)

    def attempt(self, send: Callable[[], object], items_in_call: int, stats: CallStats, counter: Attempts,
                paid: bool = True, categories: Tuple[str, ...] = ()):
        """One try: wait for a turn in every rate-limit category the call touches, take the budget (paid calls
        only), send, and tell the pacers and the quota how it went. Raises NotCalled when the budget is spent."""
        if getattr(self._local, "prepaid", False):
            self._local.prepaid = False  # the scheduler took this turn; retries and split parts take their own
        else:
            stats.throttled_sec += self.meter.wait(lambda: self.pacer.acquire(categories))
        if paid and not self.quota.take_call():
            raise NotCalled()
        counter.count += 1
        if paid:
            stats.calls += 1
            stats.items_per_call.append(items_in_call)
        else:
            stats.polls += 1
        sent = time.monotonic()
        try:
            response = send()
        except errors.EmbedError as exc:
            # The service's failure, not the item's: enough in a row and the run stops calling.
            self.quota.service_result(is_service_failure(exc, paid), f"{error_code(exc, paid)}: {exc.message}")
            if isinstance(exc, errors.RateLimitError):
                stats.mark(True)
                stats.rate_limited += 1
                dimension = getattr(exc.rate_limit, "dimensions", None)
                if dimension:
                    stats.limited_dimensions.append(dimension)
                named = named_category(exc.rate_limit)
                for category in ([named] if named else categories):
                    stats.count_category(category, limited=True)
                self.pacer.on_rate_limited(categories, exc.rate_limit,
                                           None if exc.is_quota_exhausted else exc.wait_seconds)
            raise
        stats.latencies_ms.append(int((time.monotonic() - sent) * 1000))
        stats.mark(False)
        for category in categories:
            stats.count_category(category, limited=False)
        self.quota.service_result(False)
        self.pacer.on_success(categories, getattr(response, "rate_limit", None))
        return response

    def _send_paced(self, send, items_in_call: int, stats: CallStats, counter: Attempts, paid: bool = True,
                    categories: Tuple[str, ...] = ()):
        """`attempt`, retried by the policy; a 401/403 stops the job."""

        def on_retry(exc, seconds):
            stats.retries += 1
            stats.throttled_sec += seconds

        try:
            return call_with_retries(lambda: self.attempt(send, items_in_call, stats, counter, paid, categories),
                                     self.policy,
                                     on_retry=on_retry)
        except errors.AuthError as exc:
            raise ApiKeyRejected(f"The API refused the key ({exc}). Check {API_KEY_ENV} or the key file; "
                                 "no further calls were made by this worker.") from None

    def request(self, send: Callable[[], T], stats: Optional[CallStats] = None) -> T:
        """An unpaid API request outside a call (an upload's create, status, report, delete): paced, retried
        and judged as calls are (`attempt`), so its 429s, retries and seconds throttled reach `stats` (the call
        it is made for) and the job's throttling metrics like a call's. Thread-safe."""
        part = CallStats()
        try:
            return self._send_paced(send, 0, part, Attempts(), paid=False)
        finally:
            if stats is not None:
                with self._waits_lock:
                    stats.add_waits(part)

    def _quota_spent(self, exc: errors.RateLimitError, categories: Tuple[str, ...] = ()) -> bool:
        """Whether a 429 says a quota is spent: the category it names, or (paced per category) the call's only
        category, stops; else every call stops."""
        category = named_category(exc.rate_limit)
        if category is None and not self.pacer.is_single and len(categories) == 1:
            category = categories[0]
        return self.quota.spent_by(exc, self.policy.deadline_sec, category)

    def _checked(self, items: List[Item], response):
        self._check(items, response)
        return response

    def _send(self, request):
        fields, files = request
        return self.client.send(fields, files)

    def _build(self, items: List[Item]):
        kwargs = {}
        for item in items:
            if item.modality == "text":
                kwargs.update(text=item.text, text_truncate=item.text_truncate)
            elif item.url is not None:
                kwargs[f"{item.modality}_url"] = item.url
            else:
                kwargs[f"{item.modality}_file"] = self._read(item.file_path)
            if item.modality == "audio" and item.audio_start_offset_sec is not None:
                kwargs["audio_start_offset_sec"] = item.audio_start_offset_sec
        return self.client.build_request(self.settings.model, **kwargs)

    def _check(self, items: List[Item], response) -> None:
        """A response that does not answer what was asked is treated as malformed (and retried)."""
        for item in items:
            result = getattr(response, f"{item.modality}_embedding")
            if result is None:
                raise errors.MalformedResponseError(f"no {item.modality}_embedding in the response", status=200)
            if result.error_message is not None:
                continue
            if not result.segments:
                raise errors.MalformedResponseError(f"{item.modality}_embedding has no segments", status=200)
            for segment in result.segments:
                if segment.float_ is None or len(segment.float_) != self.dims:
                    raise errors.MalformedResponseError(
                        f"{item.modality} vector has {len(segment.float_ or [])} values, expected {self.dims}",
                        status=200)
            meta = getattr(result, "metadata", None)
            if meta is not None and item.url is not None and meta.input_url not in (None, item.url):
                raise errors.MalformedResponseError(f"{item.modality} result is for another input", status=200)

    def _map(self, items, response, attempts, stats=None) -> List[CallRecord]:
        out: List[CallRecord] = []
        for item in items:
            result = getattr(response, f"{item.modality}_embedding")
            for each in item.with_copies():
                if result.error_message is not None:
                    out.append(DeadLetter(each.id, each.source, each.row_number, each.modality, "call",
                                          "embedding_failed", f"{each.source} row {each.row_number}: "
                                          f"the API could not embed the {each.modality}: {result.error_message}",
                                          200, attempts))
                    continue
                segments = [(getattr(s, "start_offset_sec", None), getattr(s, "end_offset_sec", None), s.float_)
                            for s in result.segments]
                out.append(Outcome(each, response.model_name, segments, attempts))
        return out

    @staticmethod
    def _dead(item: Item, exc: errors.EmbedError, attempts: int, paid: bool = False) -> List[DeadLetter]:
        code = error_code(exc, paid)
        message = exc.message if code != "endpoint_not_found" else (
            f"the endpoint itself answered {exc.status} ({exc.message}): check api.base_url; the row is not at "
            "fault and the next run tries it again")
        return [DeadLetter(each.id, each.source, each.row_number, each.modality, "call", code,
                           f"{each.source} row {each.row_number}: {message}", exc.status,
                           getattr(exc, "attempts", attempts) or attempts)
                for each in item.with_copies()]
