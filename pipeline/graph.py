"""build_pipeline: the job's graph, one straight line from manifests to committed pieces."""
from __future__ import annotations

import datetime
from typing import Dict, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.calling import DEFERRED, CallSettings, CreateEmbeddings
from transforms.items import Call, DeadLetter
from transforms.manifests import DEAD_LETTERS, NAMESPACE, ReadManifests
from transforms.packing import PackCalls
from transforms.resume import SkipDoneAndDedup
from transforms.sinks import WriteDeadLetters, WriteDeferred, WriteSegments
from transforms.validation import ValidateRows

__all__ = ["build_pipeline"]


class _CountPlannedCalls(beam.DoFn):
    """Dry runs: count the calls that would be made, make none."""

    def __init__(self):
        self._calls = Metrics.counter(NAMESPACE, "planned_calls")
        self._items = Metrics.distribution(NAMESPACE, "planned_items_per_call")

    def process(self, call: Call):
        self._calls.inc()
        self._items.update(len(call.items))
        return []


class _CountDeadLetters(beam.DoFn):
    """Dry runs: count rejected rows by reason instead of writing them."""

    def process(self, letter: DeadLetter):
        Metrics.counter(NAMESPACE, f"planned_dead_letters.{letter.code}").inc()
        return []


def build_pipeline(p: beam.Pipeline, *, manifest_paths: Sequence[str], output: str, settings: CallSettings,
                   run_id: str, run_time: datetime.datetime, saved_pieces: Sequence[str] = (),
                   pack: bool = True, rows_per_piece: int = 4096, flush_sec: float = 5.0,
                   dry_run: bool = False) -> Dict[str, beam.PCollection]:
    """Adds the job to `p`. `saved_pieces` are the segment pieces earlier runs committed to `output`."""
    read = p | "ReadManifests" >> ReadManifests(manifest_paths)
    valid = read["rows"] | "ValidateItems" >> ValidateRows(settings.model)
    todo = valid["items"] | "SkipDoneAndDedup" >> SkipDoneAndDedup(saved_pieces, settings.model)
    calls = todo["to_call"] | "PackCalls" >> PackCalls(pack=pack)
    if dry_run:
        calls | "CountCalls" >> beam.ParDo(_CountPlannedCalls())
        ((read[DEAD_LETTERS], valid[DEAD_LETTERS]) | "MergeDeadLetters" >> beam.Flatten()
         | "CountDeadLetters" >> beam.ParDo(_CountDeadLetters()))
        return {}
    called = calls | "CreateEmbeddings" >> CreateEmbeddings(settings)
    # The writer follows the caller with nothing in between so the runner fuses them: each result is
    # committed as soon as its call returns (a Flatten here made FnApiRunner hold all results to the end).
    segments = called.outcomes | "WriteSegments" >> WriteSegments(
        output, run_id, run_time, settings.model, rows_per_piece, flush_sec)
    todo["reused"] | "WriteReusedSegments" >> WriteSegments(
        output, run_id, run_time, settings.model, rows_per_piece, flush_sec)
    dead = (
        (read[DEAD_LETTERS], valid[DEAD_LETTERS], called[DEAD_LETTERS])
        | "MergeDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> WriteDeadLetters(output, run_id, rows_per_piece, flush_sec)
    )
    deferred = called[DEFERRED] | "WriteDeferred" >> WriteDeferred(output, run_id, rows_per_piece, flush_sec)
    return {"segments": segments, DEAD_LETTERS: dead, DEFERRED: deferred}
