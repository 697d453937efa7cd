"""Per worker process: the pace, quota, wait meter and media budget every calling DoFn instance and thread
shares, handed out through Beam's `apache_beam.utils.shared.Shared` rather than module-level dicts.

Shared keeps only a weak reference (plus one "last acquired" object of any kind): whoever acquires a state
holds it (the calling DoFn from setup to teardown, the RunInference model for its life). Some runners set a
DoFn up and tear it down for every bundle (Beam's BundleBasedDirectRunner, the Dask runner here), so between
bundles nobody would hold it and a run's call budget and quota stop would start over: the last few states
acquired are also held here. Handles are named by what they share, so DoFns of different routes and
transforms of one run, built apart and unpickled on the worker, meet on the same objects."""
from __future__ import annotations

import collections
import json
import threading

from apache_beam.utils import shared

from embed_client.pacing import make_pacer
from embed_client.pacing.categories import CategoryPacers
from embed_client.pacing.redis_gcra import RedisTokenBucket
from transforms.calling.engine import QuotaState, WaitMeter, WorkerState
from transforms.settings import RATE_LIMIT_CATEGORIES, CallSettings

__all__ = ["QuotaState", "WaitMeter", "WorkerState", "acquire_worker_state", "process_pacer"]


class _NamedShared(shared.Shared):
    """A Shared handle with a stable key (Beam's own draws a random one per handle)."""

    def __init__(self, key: str):
        self._key = key


def pacer_key(settings: CallSettings) -> str:
    """One pacer per process, endpoint and limit, across runs (the account's limit outlives a run)."""
    return "tl-embed/pacer/" + json.dumps([settings.base_url, settings.requests_per_minute, settings.max_workers,
                                            settings.rate_limit_backend, settings.redis_url,
                                            settings.rate_limit_key,
                                            [[c.category, c.requests_per_minute] for c in settings.category_limits]])


def state_key(settings: CallSettings) -> str:
    """One quota, call budget, wait meter and media budget per process, run and endpoint."""
    return "tl-embed/state/" + json.dumps([settings.run_id, settings.base_url, settings.max_calls,
                                           settings.max_workers, settings.outage_after_failures,
                                           settings.media_minutes_per_hour,
                                           [[c.category, c.media_minutes_per_hour] for c in settings.category_limits]]
                                          ) + pacer_key(settings)


def _make_pacers(settings: CallSettings) -> CategoryPacers:
    """One bucket for every category (no rate_limit.<category>.* set: as it always was), or one per category,
    at its own rate or calls.requests_per_minute; with Redis, one shared key per category (`KEY:text`, ...)."""

    def bucket(rate, key):
        pacer = make_pacer(rate, backend=settings.rate_limit_backend, redis_url=settings.redis_url,
                           max_workers=settings.max_workers, key=key)
        return pacer

    if not settings.per_category:
        pacer = bucket(settings.requests_per_minute, settings.rate_limit_key)
        return CategoryPacers.single(pacer, _share(pacer, settings))
    pacers = {c: bucket(settings.category_rate(c), f"{settings.rate_limit_key}:{c}") for c in RATE_LIMIT_CATEGORIES}
    return CategoryPacers(pacers, _share(pacers["text"], settings))


def _share(pacer, settings: CallSettings) -> float:
    """What a stated (account-wide) limit is divided by for this process: its share, unless Redis shares it."""
    return 1.0 if isinstance(pacer, RedisTokenBucket) else float(settings.max_workers)


def process_pacer(settings: CallSettings) -> CategoryPacers:
    """This process's pacers for `settings`; they live while someone (a WorkerState) holds them."""
    return _NamedShared(pacer_key(settings)).acquire(lambda: _make_pacers(settings))


# States of the last runs (and endpoints) this process called for, held between bundles.
RECENT_STATES = 8
_recent: collections.deque = collections.deque(maxlen=RECENT_STATES)
_recent_lock = threading.Lock()


def acquire_worker_state(settings: CallSettings) -> WorkerState:
    """This process's state for `settings`: keep the returned object referenced while calling."""
    state = _NamedShared(state_key(settings)).acquire(
        lambda: WorkerState.for_settings(settings, process_pacer(settings)))
    with _recent_lock:
        if not any(held is state for held in _recent):
            _recent.append(state)
    return state
