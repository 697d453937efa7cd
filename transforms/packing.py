"""PackCalls: put up to one text, one image and one audio, from any rows, into each API call."""
from __future__ import annotations

import collections
from typing import Deque, Dict, Iterable, List

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from transforms.items import MODALITIES, ROUTES, Call, Item

__all__ = ["CallPacker", "PackCalls", "RouteAndPack"]

# Items of one modality waiting for partners; past this, a call goes out part-filled so memory stays flat.
DEFAULT_MAX_WAITING = 32


class CallPacker:
    """Packs items into calls as they arrive; `flush()` packs what is left."""

    def __init__(self, pack: bool = True, max_waiting: int = DEFAULT_MAX_WAITING):
        if max_waiting < 1:
            raise ValueError("max_waiting must be at least 1")
        self.pack = pack
        self.max_waiting = max_waiting
        self._waiting: Dict[str, Deque[Item]] = {m: collections.deque() for m in MODALITIES}

    def _take(self) -> Call:
        return Call([queue.popleft() for queue in self._waiting.values() if queue])

    def add(self, item: Item) -> List[Call]:
        if not self.pack:
            return [Call([item])]
        self._waiting[item.modality].append(item)
        if all(self._waiting.values()) or len(self._waiting[item.modality]) > self.max_waiting:
            return [self._take()]
        return []

    def flush(self) -> List[Call]:
        calls = []
        while any(self._waiting.values()):
            calls.append(self._take())
        return calls


class _PackCallsFn(beam.DoFn):
    """Packs within a window only: items of different windows never share a call, and what is left at the
    end of a bundle goes out in its own window (any windowing, batch or streaming)."""

    def __init__(self, pack: bool, max_waiting: int):
        self._pack = pack
        self._max_waiting = max_waiting

    def start_bundle(self):
        self._packers: Dict[object, CallPacker] = {}

    def process(self, item: Item, window=beam.DoFn.WindowParam) -> Iterable[Call]:
        packer = self._packers.get(window)
        if packer is None:
            packer = self._packers[window] = CallPacker(self._pack, self._max_waiting)
        yield from packer.add(item)

    def finish_bundle(self):
        for window, packer in self._packers.items():
            for call in packer.flush():
                yield WindowedValue(call, window.max_timestamp(), [window])
        self._packers = {}


class PackCalls(beam.PTransform):
    """Item -> Call. With `pack=False` every item is its own call."""

    def __init__(self, pack: bool = True, max_waiting: int = DEFAULT_MAX_WAITING):
        super().__init__()
        CallPacker(pack, max_waiting)  # fail fast on bad arguments
        self._pack, self._max_waiting = pack, max_waiting

    def expand(self, items):
        return items | "Pack" >> beam.ParDo(_PackCallsFn(self._pack, self._max_waiting))


class RouteAndPack(beam.PTransform):
    """Item -> {route: Call}: v1 items packed several to a call (with `pack`), v2 items and async tasks one
    item per call; each route then goes to its own calling step."""

    def __init__(self, pack: bool = True):
        super().__init__()
        self._pack = pack

    def expand(self, items):
        parts = items | "Route" >> beam.Partition(lambda item, _: ROUTES.index(item.route), len(ROUTES))
        return {route: part | f"Pack_{route}" >> PackCalls(pack=self._pack and route == "v1")
                for route, part in zip(ROUTES, parts)}
