"""The call timeline: what each call cost per second (answers, 429s) and its latency, emitted by the calling
step as its `timeline` output and written by `WriteTimeline` as the pieces the run report reads
(pipeline.report.read_calls): FOLDER/calls-WORKER-NNNNN.jsonl, one piece per bundle.

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

__all__ = ["LATENCY_EDGES_MS", "TIMELINE", "CallTimes", "WriteTimeline", "latency_bucket", "timeline_piece"]

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


def timeline_piece(records: Iterable[CallTimes]) -> str:
    """The JSONL text of one piece summing `records` ("" when they hold nothing)."""
    seconds: Dict[int, List[int]] = {}
    hist: Dict[int, int] = {}
    latencies: List[int] = []
    for record in records:
        for t, calls, limited in record.seconds:
            bucket = seconds.setdefault(t, [0, 0])
            bucket[0] += calls
            bucket[1] += limited
        for ms in record.latencies_ms:
            edge = latency_bucket(ms)
            hist[edge] = hist.get(edge, 0) + 1
        latencies += record.latencies_ms
    lines = "".join(json.dumps({"t": t, "calls": c, "http_429": r}) + "\n" for t, (c, r) in sorted(seconds.items()))
    if hist:
        lines += json.dumps({"t": max(seconds) if seconds else int(time.time()), "calls": 0, "http_429": 0,
                             "latency_ms_hist": {str(k): n for k, n in sorted(hist.items())},
                             "latency_ms": {"count": len(latencies), "sum": sum(latencies),
                                            "min": min(latencies), "max": max(latencies)}}) + "\n"
    return lines


class _WriteTimelineFn(beam.DoFn):
    """Gathers a bundle's records and writes them as one piece when the bundle ends."""

    def __init__(self, folder: Optional[str]):
        self._folder = folder

    def setup(self):
        self._worker = uuid.uuid4().hex[:8]
        self._pieces = 0

    def start_bundle(self):
        self._records: List[CallTimes] = []

    def process(self, record: CallTimes) -> Iterable[None]:
        if self._folder is not None:
            self._records.append(record)
        return ()

    def finish_bundle(self):
        records, self._records = self._records, []
        lines = timeline_piece(records)
        if not lines:
            return
        from apache_beam.io.filesystems import FileSystems

        self._pieces += 1
        path = FileSystems.join(self._folder, f"calls-{self._worker}-{self._pieces:05d}.jsonl")
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
