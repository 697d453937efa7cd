"""build_pipeline: the job's graph, one straight line from manifests to committed pieces."""
from __future__ import annotations

import datetime
from typing import Dict, Sequence

import apache_beam as beam

from transforms.calling import CallSettings, CreateEmbeddings
from transforms.manifests import DEAD_LETTERS, ReadManifests
from transforms.packing import PackCalls
from transforms.sinks import WriteDeadLetters, WriteSegments
from transforms.validation import ValidateRows

__all__ = ["build_pipeline"]


def build_pipeline(p: beam.Pipeline, *, manifest_paths: Sequence[str], output: str, settings: CallSettings,
                   run_id: str, run_time: datetime.datetime, pack: bool = True,
                   rows_per_piece: int = 4096, flush_sec: float = 5.0) -> Dict[str, beam.PCollection]:
    """Adds the job to `p`; returns the PCollections of committed segment and dead-letter pieces."""
    read = p | "ReadManifests" >> ReadManifests(manifest_paths)
    valid = read["rows"] | "ValidateItems" >> ValidateRows(settings.model)
    called = (
        valid["items"]
        | "PackCalls" >> PackCalls(pack=pack)
        | "CreateEmbeddings" >> CreateEmbeddings(settings)
    )
    segments = called.outcomes | "WriteSegments" >> WriteSegments(
        output, run_id, run_time, settings.model, rows_per_piece, flush_sec)
    dead = (
        (read[DEAD_LETTERS], valid[DEAD_LETTERS], called[DEAD_LETTERS])
        | "MergeDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> WriteDeadLetters(output, run_id, rows_per_piece, flush_sec)
    )
    return {"segments": segments, DEAD_LETTERS: dead}
