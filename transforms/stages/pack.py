"""PackCalls: put up to one text, one image and one audio, from any rows, into each API call."""
from __future__ import annotations

import collections
import time
from typing import Callable, Deque, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from transforms.records import ROUTES, Call, Item

__all__ = ["CallPacker", "PackCalls", "RouteAndPack"]

# What one v1 `POST /embed` call can hold: one input of each.
PACKABLE = ("text", "image", "audio")
# Items of one modality waiting for partners; past this, a call goes out part-filled so memory stays flat.
DEFAULT_MAX_WAITING = 32


class CallPacker:
    """Packs items into calls as they arrive: a call goes out when it is full (one of each packable modality) or
    a modality has more than `max_waiting` items waiting; `due()` says when the oldest has waited `max_wait_sec`;
    `flush()` packs what is left."""

    def __init__(self, pack: bool = True, max_waiting: int = DEFAULT_MAX_WAITING,
                 max_wait_sec: Optional[float] = None, clock: Optional[Callable[[], float]] = None):
        if max_waiting < 1:
            raise ValueError("max_waiting must be at least 1")
        if max_wait_sec is not None and max_wait_sec < 0:
            raise ValueError("max_wait_sec must be >= 0 (or None: no time limit)")
        self.pack = pack
        self.max_waiting = max_waiting
        self.max_wait_sec = max_wait_sec
        self._clock = clock or time.monotonic
        # (arrival time, item) per modality, oldest first
        self._waiting: Dict[str, Deque[Tuple[float, Item]]] = {m: collections.deque() for m in PACKABLE}

    def _take(self) -> Call:
        return Call([queue.popleft()[1] for queue in self._waiting.values() if queue])

    def add(self, item: Item) -> List[Call]:
        if not self.pack or item.modality not in self._waiting:
            return [Call([item])]
        self._waiting[item.modality].append((self._clock(), item))
        if all(self._waiting.values()) or len(self._waiting[item.modality]) > self.max_waiting:
            return [self._take()]
        return []

    def due(self) -> bool:
        """Whether the oldest waiting item has waited `max_wait_sec` (then flush)."""
        if self.max_wait_sec is None or not any(self._waiting.values()):
            return False
        oldest = min(queue[0][0] for queue in self._waiting.values() if queue)
        return self._clock() - oldest >= self.max_wait_sec

    def flush(self) -> List[Call]:
        calls = []
        while any(self._waiting.values()):
            calls.append(self._take())
        return calls


class _PackCallsFn(beam.DoFn):
    """Packs within a window only: items of different windows never share a call. A window's waiting items go
    out when their call is full, when too many wait, when the oldest has waited `max_wait_sec` (checked as
    each element arrives) and at the end of the bundle, in their own window (any windowing, batch or streaming)."""

    def __init__(self, pack: bool, max_waiting: int, max_wait_sec: Optional[float] = None):
        self._pack = pack
        self._max_waiting = max_waiting
        self._max_wait_sec = max_wait_sec

    def start_bundle(self):
        self._packers: Dict[object, CallPacker] = {}

    def process(self, item: Item, window=beam.DoFn.WindowParam) -> Iterable[Call]:
        packer = self._packers.get(window)
        if packer is None:
            packer = self._packers[window] = CallPacker(self._pack, self._max_waiting, self._max_wait_sec)
        yield from packer.add(item)
        for other, waiting in list(self._packers.items()):
            if waiting.due():
                yield from self._flush(other, waiting)

    def finish_bundle(self):
        for window, packer in list(self._packers.items()):
            yield from self._flush(window, packer)
        self._packers = {}

    def _flush(self, window, packer: CallPacker) -> Iterable[WindowedValue]:
        del self._packers[window]
        for call in packer.flush():
            yield WindowedValue(call, window.max_timestamp(), [window])


class PackCalls(beam.PTransform):
    """Item -> Call. With `pack=False` every item is its own call. `max_waiting` bounds the items a window
    holds per modality, `max_wait_sec` how long one waits for call-mates (None: until the bundle ends)."""

    def __init__(self, pack: bool = True, max_waiting: int = DEFAULT_MAX_WAITING, max_wait_sec: Optional[float] = None):
        super().__init__()
        CallPacker(pack, max_waiting, max_wait_sec)  # fail fast on bad arguments
        self._pack, self._max_waiting, self._max_wait_sec = pack, max_waiting, max_wait_sec

    def expand(self, items):
        return items | "Pack" >> beam.ParDo(_PackCallsFn(self._pack, self._max_waiting, self._max_wait_sec))


class RouteAndPack(beam.PTransform):
    """Item -> {route: Call}: v1 items packed several to a call (with `pack`), v2 items and async tasks one
    item per call; each route then goes to its own calling step."""

    def __init__(self, pack: bool = True, max_waiting: int = DEFAULT_MAX_WAITING,
                 max_wait_sec: Optional[float] = None):
        super().__init__()
        self._pack, self._max_waiting, self._max_wait_sec = pack, max_waiting, max_wait_sec

    def expand(self, items):
        parts = items | "Route" >> beam.Partition(lambda item, _: ROUTES.index(item.route), len(ROUTES))
        return {route: part | f"Pack_{route}" >> PackCalls(self._pack and route == "v1", self._max_waiting,
                                                           self._max_wait_sec)
                for route, part in zip(ROUTES, parts)}
