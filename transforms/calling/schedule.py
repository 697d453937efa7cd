"""Which waiting calls go out now, when calls are paced per rate-limit category. Beam-free; the calling step's
DoFn feeds it and runs what it hands back.

With one bucket per category, a pool thread that blocks on an empty bucket holds a slot the other categories
could use: a few slow audio calls would hold up every text. So calls wait here, not in threads: a call goes
out when every category it touches has a turn (taken here, so the thread does not wait again), and a packed
v1 call whose categories are only partly ready sends the ready part now and keeps the rest (packing saves an
HTTP request, not a turn: each category is charged either way), unless `pack_waits_for_every_category`.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Tuple

from embed_client.pacing.categories import CategoryPacers
from transforms.calling.engine import QuotaState, call_categories
from transforms.records import Call

__all__ = ["CategoryScheduler", "ScheduledPool"]

# A bucket this close to its next turn counts as ready: the thread's short wait costs less than a pass.
READY_WITHIN_SEC = 0.02
# The shortest wait of the dispatching thread between passes.
_MIN_WAIT_SEC = 0.002


class CategoryScheduler:
    """A backlog of calls in arrival order; `take_ready(slots)` hands out those that may go now."""

    def __init__(self, pacers: CategoryPacers, quota: QuotaState, split_packed: bool = True):
        self._pacers = pacers
        self._quota = quota
        self._split_packed = split_packed
        self._waiting: Deque[Tuple[Call, Any]] = collections.deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, call: Call, tag: Any = None) -> None:
        self._waiting.append((call, tag))

    def _live(self, call: Call) -> List[str]:
        """The call's categories that still call (a stopped category's items are deferred without a turn)."""
        if self._quota.stopped:
            return []
        return [c for c in call_categories(call.items) if not self._quota.category_stopped(c)]

    def take_ready(self, slots: int) -> List[Tuple[Call, Any, bool]]:
        """Up to `slots` calls (or parts of packed calls) that may go now, as (call, tag, prepaid): their turns
        are taken here when prepaid. Calls of other categories overtake one waiting for an empty bucket."""
        out: List[Tuple[Call, Any, bool]] = []
        peeked: Dict[str, float] = {}

        def wait_of(category: str) -> float:
            if category not in peeked:
                peeked[category] = self._pacers.ready_in((category,))
            return peeked[category]

        kept: Deque[Tuple[Call, Any]] = collections.deque()
        while self._waiting:
            call, tag = self._waiting.popleft()
            if len(out) >= slots:
                kept.append((call, tag))
                continue
            live = self._live(call)
            if not live:  # nothing to pace: deferred by the caller without a request
                out.append((call, tag, False))
                continue
            ready = [c for c in live if wait_of(c) <= READY_WITHIN_SEC]
            if len(ready) == len(live):
                self._take(live, peeked)
                out.append((call, tag, True))
            elif ready and self._split_packed and len(call.items) > 1:
                now = [i for i in call.items if i.modality in ready]
                later = [i for i in call.items if i.modality not in ready]
                self._take(ready, peeked)
                out.append((Call(now), tag, True))
                kept.append((Call(later), tag))
            else:
                kept.append((call, tag))
        self._waiting = kept
        return out

    def _take(self, categories: List[str], peeked: Dict[str, float]) -> None:
        self._pacers.reserve(categories)
        for category in categories:
            peeked.pop(category, None)  # its next turn is later now: peek again

    def soonest(self) -> Optional[float]:
        """Seconds until some waiting call (or, when packed calls may split, part of one) could go; None when
        nothing waits."""
        best: Optional[float] = None
        peeked: Dict[str, float] = {}
        for call, _ in self._waiting:
            live = self._live(call)
            if not live:
                return 0.0
            waits = []
            for category in live:
                if category not in peeked:
                    peeked[category] = self._pacers.ready_in((category,))
                waits.append(peeked[category])
            wait = min(waits) if self._split_packed and len(call.items) > 1 else max(waits)
            best = wait if best is None else min(best, wait)
            if best <= READY_WITHIN_SEC:
                break
        return best


class ScheduledPool:
    """A thread pool fed by a `CategoryScheduler` from a thread of its own: calls wait in the scheduler until
    every category they touch has a turn, then run on the pool. The bundle's thread only adds calls and collects
    finished ones, so a calling step that is blocked elsewhere (another route's step in the same fused stage)
    does not stop this one from sending as turns come."""

    def __init__(self, scheduler: CategoryScheduler, pool, run, slots: int):
        self._scheduler = scheduler
        self._pool = pool
        self._run = run
        self._slots = slots
        self._cond = threading.Condition()
        self._running = 0
        self._done: Deque = collections.deque()
        self._stopped = False
        self._waited = 0.0  # seconds a slot was free and every waiting call waited for a turn
        self._thread = threading.Thread(target=self._loop, name="embed-scheduler", daemon=True)
        self._thread.start()

    def add(self, call: Call, tag: Any) -> None:
        with self._cond:
            self._scheduler.add(call, tag)
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                free = self._slots - self._running
                if free > 0 and len(self._scheduler):
                    taken = self._scheduler.take_ready(free)
                    for call, tag, prepaid in taken:
                        self._running += 1
                        future = self._pool.submit(self._run, call, prepaid)
                        future.tag = tag
                        future.add_done_callback(self._finished)
                    if taken:
                        continue
                    soonest = self._scheduler.soonest() or 0.0
                    started = time.monotonic()
                    self._cond.wait(max(_MIN_WAIT_SEC, soonest))
                    self._waited += time.monotonic() - started
                else:
                    self._cond.wait()  # a finished call or a new one wakes it

    def _finished(self, future) -> None:
        with self._cond:
            self._running -= 1
            self._done.append(future)
            self._cond.notify_all()

    def collect(self, keep: int) -> Tuple[List[Any], bool, float]:
        """(finished futures, whether more than `keep` calls still wait or run, seconds waited for turns since
        the last collect). Blocks while more than `keep` wait or run and none has finished."""
        with self._cond:
            while len(self._scheduler) + self._running > keep and not self._done:
                self._cond.wait()
            done = list(self._done)
            self._done.clear()
            waited, self._waited = self._waited, 0.0
            return done, len(self._scheduler) + self._running > keep, waited

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
