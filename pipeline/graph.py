"""build_pipeline: the job's graph, one straight line from manifests to committed pieces."""
from __future__ import annotations

import datetime
import hashlib
from typing import Dict, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.progress import NAMESPACE
from transforms.records import DEAD_LETTERS, DEFERRED, Call, DeadLetter
from transforms.settings import CallSettings
from transforms.stages.call import CreateEmbeddings
from transforms.stages.dedup import FanOutCopies, ResolveLateCopies, SkipDoneAndDedup
from transforms.stages.pack import RouteAndPack
from transforms.stages.read import ReadManifests
from transforms.stages.timeline import TIMELINE, WriteTimeline  # the run report's calls per second
from transforms.stages.validate import ROW_RECORDS, RoutePlan, ValidateRows
from transforms.stages.write import WriteDeadLetters, WriteDeferred, WriteRowRecords, WriteSegments
from transforms.store.finalize import FinalizeRun
from transforms.store.run_state import SharedRunState

__all__ = ["build_pipeline"]


class _CountPlannedCalls(beam.DoFn):
    """Dry runs: count the calls that would be made, make none."""

    def __init__(self, route: str = "v1"):
        self._calls = Metrics.counter(NAMESPACE, "planned_calls")
        self._route_calls = Metrics.counter(NAMESPACE, f"planned_calls_{route}")
        self._items = Metrics.distribution(NAMESPACE, "planned_items_per_call")
        # Files that go through the Assets API first (an upper bound: earlier runs' assets are reused).
        self._uploads = Metrics.counter(NAMESPACE, "planned_uploads")
        self._upload_bytes = Metrics.counter(NAMESPACE, "planned_upload_bytes")

    def process(self, call: Call):
        self._calls.inc()
        self._route_calls.inc()
        self._items.update(len(call.items))
        for item in call.items:
            if item.upload:
                self._uploads.inc()
                self._upload_bytes.inc(item.file_size or 0)
        return []


class _CountDeadLetters(beam.DoFn):
    """Dry runs: count rejected rows by reason instead of writing them."""

    def process(self, letter: DeadLetter):
        Metrics.counter(NAMESPACE, f"planned_dead_letters.{letter.code}").inc()
        return []


def row_key(settings: CallSettings, columns: Optional[Dict[str, str]]) -> bytes:
    """What turns a manifest row into items besides the row itself: a saved row counts as saved only under
    the same model, embedding settings and column mapping."""
    shape = repr(("rows-v1", settings.model, settings.api_version, settings.embedding, sorted((columns or {}).items())))
    return hashlib.blake2b(shape.encode("utf-8"), digest_size=16).digest()


def build_pipeline(p: beam.Pipeline, *, manifest_paths: Sequence[str], output: str, settings: CallSettings,
                   run_id: str, run_time: datetime.datetime,
                   pack: bool = True, rows_per_piece: int = 4096, flush_sec: Optional[float] = None,
                   dry_run: bool = False, known_tasks: Optional[Dict[str, Tuple[str, float]]] = None,
                   columns: Optional[Dict[str, str]] = None, failed: Optional[Dict] = None,
                   grouping: str = "stream", finalize: bool = False) -> Dict[str, beam.PCollection]:
    """Adds the job to `p`. What earlier runs saved is looked up in `output`'s key index; `known_tasks` are
    the v2 tasks they created (polled again, never created twice).

    `grouping`: "stream" when the whole job runs in one process (the local runner): ids and identical
    inputs are checked as rows pass, so calls start with the first rows and memory stays flat; "shuffle"
    on runners with several worker processes: rows are grouped by id and by content."""
    state = SharedRunState(f"{output}:{run_id}") if grouping == "stream" else None
    if state is not None and not dry_run:
        state.prefetch(output, row_key(settings, columns), manifest_paths)  # loads while the runner starts
    read = p | "ReadManifests" >> ReadManifests(manifest_paths, columns, state, output, row_key(settings, columns),
                                                None if dry_run else run_id)
    valid = read["rows"] | "ValidateItems" >> ValidateRows(settings.model, RoutePlan.from_settings(settings), state)
    row_records = None
    if state is not None and not dry_run:
        row_records = valid[ROW_RECORDS] | "RecordRows" >> WriteRowRecords(output, run_id)
    todo = valid["items"] | "SkipDoneAndDedup" >> SkipDoneAndDedup(
        output, settings.model, failed, grouping=grouping, token=f"{output}:{run_id}", state=state)
    routes = todo["to_call"] | "RouteAndPack" >> RouteAndPack(pack)
    if dry_run:
        for route, calls in routes.items():
            calls | f"CountCalls_{route}" >> beam.ParDo(_CountPlannedCalls(route))
        ((read[DEAD_LETTERS], valid[DEAD_LETTERS], todo["carried"]) | "MergeDeadLetters" >> beam.Flatten()
         | "CountDeadLetters" >> beam.ParDo(_CountDeadLetters()))
        return {}
    dead_letters = [read[DEAD_LETTERS], valid[DEAD_LETTERS], todo["carried"], todo[DEAD_LETTERS]]
    deferred = [todo[DEFERRED]]
    segments = []

    def write(outcomes, name):
        return outcomes | name >> WriteSegments(output, run_id, run_time, settings.model, rows_per_piece, flush_sec,
                                                dims=settings.dims)

    for route, calls in routes.items():
        name = "" if route == "v1" else f"_{route}"
        called = calls | f"CreateEmbeddings{name}" >> CreateEmbeddings(
            settings, kind=route, output=output, known_tasks=known_tasks if route == "task" else None)
        called[TIMELINE] | f"WriteTimeline{name}" >> WriteTimeline(settings.timeline_dir)
        results = {"outcomes": called.outcomes, DEAD_LETTERS: called[DEAD_LETTERS], DEFERRED: called[DEFERRED]}
        if state is not None:  # identical items that waited for this item's result get it too
            results = results | f"FanOutCopies{name}" >> FanOutCopies(state)
        # The writer follows the caller with only ParDos in between so the runner fuses them: each result is
        # committed as soon as its call returns (a Flatten here made FnApiRunner hold all results to the end).
        segments.append(write(results["outcomes"], f"WriteSegments{name}"))
        dead_letters.append(results[DEAD_LETTERS])
        deferred.append(results[DEFERRED])
    segments.append(write(todo["reused"], "WriteReusedSegments"))
    if state is not None:
        # Identical items that came after their first one's vectors were written: copied once all are written.
        pieces = tuple(segments) | "ThisRunsPieces" >> beam.Flatten()
        late = todo["late"] | "ResolveLateCopies" >> ResolveLateCopies(pieces)
        segments.append(write(late["outcomes"], "WriteLateCopies"))
        deferred.append(late[DEFERRED])
    dead = (
        tuple(dead_letters)
        | "MergeDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> WriteDeadLetters(output, run_id, rows_per_piece, flush_sec)
    )
    later = (tuple(deferred) | "MergeDeferred" >> beam.Flatten()
             | "WriteDeferred" >> WriteDeferred(output, run_id, rows_per_piece, flush_sec))
    written = {"segments": segments, DEAD_LETTERS: dead, DEFERRED: later}
    if finalize:
        every = tuple(segments) + (dead, later) + ((row_records,) if row_records is not None else ())
        written["finalized"] = every | "FinalizeRun" >> FinalizeRun(output, run_id, manifest_paths, state)
    return written
