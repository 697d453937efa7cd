"""The call timeline: what each call cost per second (answers, 429s) and its latency, emitted by the calling
step as its `timeline` output and written by `WriteTimeline` as the pieces the run report reads
(pipeline.report.html.read_calls): FOLDER/calls-WORKER-NNNNN.jsonl, a piece per bundle or per 10,000 calls.

A piece holds one line per second, {"t": epoch second, "calls": n, "http_429": n}, and, when calls were
timed, one more line closing it: the latency histogram ({lower edge ms: calls}, see LATENCY_EDGES_MS) with
its count, sum, min and max. That line also carries "t" and zero counts, so a reader that only sums calls
per second reads it as nothing."""
from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import time
import uuid
from typing import Dict, Iterable, List, Optional, Tuple

import apache_beam as beam

from transforms.store.layout import calls_piece_name

__all__ = ["LATENCY_EDGES_MS", "TIMELINE", "CallTimes", "TimelineAggregate", "WriteTimeline", "latency_bucket",
           "timeline_piece"]

_LOGGER = logging.getLogger(__name__)

# The calling step's output tag for CallTimes records.
TIMELINE = "timeline"


def _latency_edges() -> List[int]:
    """Lower edges (ms) of the call latency histogram: 1 ms wide up to 16 ms, then 8 per doubling (~9%)."""
    edges, x = list(range(16)), 16.0
    while x < 3_600_000:
        if int(round(x)) > edges[-1]:
            edges.append(int(round(x)))
        x *= 2 ** 0.125
    return edges


LATENCY_EDGES_MS = _latency_edges()


def latency_bucket(ms: float) -> int:
    """The lower edge of the histogram bucket holding `ms`."""
    return LATENCY_EDGES_MS[max(0, bisect.bisect_right(LATENCY_EDGES_MS, ms) - 1)]


@dataclasses.dataclass(frozen=True)
class CallTimes:
    """One call's answers by whole UTC second (second, answered, of which 429) and its latencies in ms."""

    seconds: Tuple[Tuple[int, int, int], ...]
    latencies_ms: Tuple[int, ...] = ()

    @classmethod
    def from_stats(cls, stats) -> Optional["CallTimes"]:
        """From a call_policy.CallStats; None when nothing was sent."""
        if not stats.timeline and not stats.latencies_ms:
            return None
        return cls(tuple((t, c, r) for t, (c, r) in sorted(stats.timeline.items())), tuple(stats.latencies_ms))


class TimelineAggregate:
    """Call records summed as they come: per-second counts, the latency histogram and its count, sum, min and
    max. Its memory follows the seconds the calls span, not the number of calls (a record each kept a
    300k-call run's every latency: ~20 MB per 100k calls)."""

    def __init__(self):
        self.seconds: Dict[int, List[int]] = {}
        self.hist: Dict[int, int] = {}
        self.records = 0
        self._count = self._sum = 0
        self._min: Optional[int] = None
        self._max: Optional[int] = None

    def add(self, record: CallTimes) -> None:
        self.records += 1
        for t, calls, limited in record.seconds:
            bucket = self.seconds.setdefault(t, [0, 0])
            bucket[0] += calls
            bucket[1] += limited
        for ms in record.latencies_ms:
            edge = latency_bucket(ms)
            self.hist[edge] = self.hist.get(edge, 0) + 1
        if record.latencies_ms:
            self._count += len(record.latencies_ms)
            self._sum += sum(record.latencies_ms)
            low, high = min(record.latencies_ms), max(record.latencies_ms)
            self._min = low if self._min is None else min(self._min, low)
            self._max = high if self._max is None else max(self._max, high)

    def lines(self) -> str:
        """The JSONL text of one piece ("" when it holds nothing)."""
        lines = "".join(json.dumps({"t": t, "calls": c, "http_429": r}) + "\n"
                        for t, (c, r) in sorted(self.seconds.items()))
        if self.hist:
            lines += json.dumps({"t": max(self.seconds) if self.seconds else int(time.time()), "calls": 0,
                                 "http_429": 0, "latency_ms_hist": {str(k): n for k, n in sorted(self.hist.items())},
                                 "latency_ms": {"count": self._count, "sum": self._sum, "min": self._min,
                                                "max": self._max}}) + "\n"
        return lines


def timeline_piece(records: Iterable[CallTimes]) -> str:
    """The JSONL text of one piece summing `records` ("" when they hold nothing)."""
    aggregate = TimelineAggregate()
    for record in records:
        aggregate.add(record)
    return aggregate.lines()


class _WriteTimelineFn(beam.DoFn):
    """Sums records as they arrive and writes a piece when the bundle ends, or every PIECE_CALLS records or
    PIECE_SEC seconds: a local run is one bundle, and its memory must not grow with its calls."""

    PIECE_CALLS = 10_000
    PIECE_SEC = 60.0

    def __init__(self, folder: Optional[str]):
        self._folder = folder

    def setup(self):
        self._worker = uuid.uuid4().hex[:8]
        self._pieces = 0

    def start_bundle(self):
        self._aggregate = TimelineAggregate()
        self._started = time.monotonic()

    def process(self, record: CallTimes) -> Iterable[None]:
        if self._folder is not None:
            self._aggregate.add(record)
            if (self._aggregate.records >= self.PIECE_CALLS
                    or time.monotonic() - self._started >= self.PIECE_SEC):
                self._write()
        return ()

    def finish_bundle(self):
        self._write()

    def _write(self) -> None:
        lines, self._aggregate, self._started = self._aggregate.lines(), TimelineAggregate(), time.monotonic()
        if not lines:
            return
        from apache_beam.io.filesystems import FileSystems

        self._pieces += 1
        path = FileSystems.join(self._folder, calls_piece_name(self._worker, self._pieces))
        try:
            with FileSystems.create(path, compression_type="uncompressed") as f:
                f.write(lines.encode("utf-8"))
        except Exception as exc:  # the chart is a nicety; never fail the job for it
            _LOGGER.warning("could not write the call timeline %s: %s", path, exc)


class WriteTimeline(beam.PTransform):
    """CallTimes -> pieces under `folder` for the run report; with no folder, nothing is written."""

    def __init__(self, folder: Optional[str]):
        super().__init__()
        self._folder = folder

    def expand(self, records):
        return records | "WritePieces" >> beam.ParDo(_WriteTimelineFn(self._folder))
