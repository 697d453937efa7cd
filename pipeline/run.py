"""Runs the job: resolves manifests, starts the embedded emulator if asked, runs Beam, writes the summary."""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import uuid
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.config import EMBEDDED, JobConfig
from pipeline.graph import build_pipeline
from pipeline.report import summary as summary_mod
from pipeline.report.progress_line import ProgressPrinter, count_manifest_rows
from transforms.calling.v2 import read_task_journal
from transforms.memory import return_freed_memory
from transforms.settings import (RATE_LIMIT_CATEGORIES, CallSettings, ConfigError, EmbeddingSettings, limits_in_force,
                                make_client, settings_from)
from transforms.stages.dedup import read_permanent_failures
from transforms.stages.read import check_manifest_columns, expand_manifest_patterns
from transforms.stages.write import recover_journals
from transforms.store.finalize import finalize_output, read_finalize_counts, settle_earlier_runs
from transforms.calling.upload import Cleanup, Uploader
from transforms.records import failure_kind
from transforms.store.assets import AssetBook, AssetJournal, uploaded_by
from transforms.store.layout import (DEAD_LETTER_DIR, DEFERRED_DIR, RUNS_DIR, SEGMENT_DIR, list_files,
                                     list_segment_pieces, read_jsonl)
from transforms.store.lock import OutputLock
from transforms.store.object_store import StoreUnreachable, apply_filesystem_options, check_stores_reachable

__all__ = ["run_job", "embedded_backend"]

_LOGGER = logging.getLogger(__name__)
# The embedded emulator accepts any key; this one only marks calls as coming from a local run.
EMULATOR_PLACEHOLDER_KEY = "local-emulator"
# DirectRunner first tries Prism, a download that fails or hangs offline; FnApiRunner is the engine it
# then falls back to for batch jobs, so the local runner is pinned to it.
PINNED_LOCAL_RUNNER = "FnApiRunner"
# `--runner dask` (or Beam's own DaskRunner by any of its names) runs on a Dask cluster through this class;
# `--dask_client_address=tcp://HOST:8786` names the scheduler (none: a local cluster on this machine).
DASK_RUNNER = "pipeline.dask_runner.DaskRunner"
_DASK_NAMES = ("dask", "daskrunner", "apache_beam.runners.dask.dask_runner.daskrunner", DASK_RUNNER.lower())


@contextlib.contextmanager
def embedded_backend(config: JobConfig) -> Iterator[Optional[str]]:
    """Yields the base URL of the in-process emulator when the config asks for it, else None."""
    if config.base_url != EMBEDDED:
        yield None
        return
    from embed_emulator import Emulator, EmulatorConfig

    with Emulator(EmulatorConfig(**config.emulator)) as emulator:
        _LOGGER.info("embedded emulator listening at %s", emulator.base_url)
        yield emulator.base_url


def beam_options(config: JobConfig) -> PipelineOptions:
    args = []
    runner = None
    given = list(config.beam_args)
    while given:
        arg = given.pop(0)
        if arg == "--runner" and given:
            runner = given.pop(0)
        elif arg.startswith("--runner="):
            runner = arg.split("=", 1)[1]
        else:
            args.append(arg)
    if runner is None or runner.lower() in ("direct", "directrunner", "switchingdirectrunner"):
        runner = PINNED_LOCAL_RUNNER
    elif runner.lower() in _DASK_NAMES:
        # Beam's own DaskRunner (2.77) mixes tagged outputs, drops finish_bundle outputs and runs only the last sink:
        # this job would lose its output without an error. pipeline.dask_runner fixes those gaps.
        runner = DASK_RUNNER
    return PipelineOptions([f"--runner={runner}"] + args)


def new_run_id(now: datetime.datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


# Runners whose workers live in this process, so the progress line can read them.
_IN_PROCESS_RUNNERS = ("fnapirunner",)


def _pace_per_minute(config) -> Optional[float]:
    """The calls per minute the progress line measures against: the one limit, or with a bucket per category
    the sum of the categories' limits (None when one of them is left to learn)."""
    limits = limits_in_force(config)
    if not limits["per_category"]:
        return config.requests_per_minute
    rates = [limits[c]["requests_per_minute"] for c in RATE_LIMIT_CATEGORIES]
    return None if any(r is None for r in rates) else sum(rates)


def _runs_in_process(options: PipelineOptions) -> bool:
    from apache_beam.options.pipeline_options import DirectOptions, PortableOptions, StandardOptions

    runner = (options.view_as(StandardOptions).runner or "").lower()
    if runner in _DASK_NAMES:
        return False  # the work runs in the Dask workers' processes, not here
    if runner in _IN_PROCESS_RUNNERS:
        return options.view_as(DirectOptions).direct_running_mode != "multi_processing"
    return runner == "portablerunner" and options.view_as(PortableOptions).environment_type == "LOOPBACK"


def _grouping(options: PipelineOptions) -> str:
    """"stream" when one process runs the job one bundle at a time (ids and identical inputs checked as rows
    pass, in manifest order); "shuffle" when several processes or threads share the work."""
    from apache_beam.options.pipeline_options import DirectOptions

    if not _runs_in_process(options):
        return "shuffle"
    return "stream" if options.view_as(DirectOptions).direct_num_workers == 1 else "shuffle"  # 0: one a core


def _refuse_other_model(pieces, model: str, output: str, dims: Optional[int] = None) -> None:
    """One output holds one model's vectors of one size: reruns must not mix them."""
    if not pieces:
        return
    import pyarrow.parquet as pq

    from transforms.models import canonical_model

    with FileSystems.open(pieces[0], compression_type="uncompressed") as f:
        parquet = pq.ParquetFile(f)
        found_dims = parquet.schema_arrow.field("embedding").type.list_size
        table = parquet.read(columns=["model_name"])
    found = table.column("model_name")[0].as_py() if table.num_rows else None
    if found is not None and canonical_model(found) != canonical_model(model):
        raise ConfigError(f"{output} already holds {found} vectors; write {model} vectors to another --output")
    if dims is not None and found_dims != dims:
        raise ConfigError(f"{output} already holds {found_dims}-d vectors; write {dims}-d vectors to another "
                          "--output (or use the embedding.dimension it was made with)")


def call_settings(config: JobConfig, base_url: str, run_id: str = "") -> CallSettings:
    """The calling step's settings from the job's config (one place for both the job and search): every
    setting of the same name, plus what is derived from the config."""
    return settings_from(
        config, base_url=base_url, run_id=run_id,
        timeline_dir=None if config.dry_run or not run_id else FileSystems.join(config.output, RUNS_DIR, run_id),
        placeholder_key=EMULATOR_PLACEHOLDER_KEY if config.base_url == EMBEDDED else None,
        embedding=EmbeddingSettings(
            dimension=config.embedding_dimension,
            options=None if config.embedding_options is None else tuple(config.embedding_options),
            scopes=None if config.embedding_scopes is None else tuple(config.embedding_scopes),
            type=None if config.embedding_type is None else tuple(config.embedding_type),
            segmentation=None if config.segmentation is None else json.dumps(config.segmentation, sort_keys=True)))


def _check_key_up_front(settings: CallSettings) -> None:
    """A key that cannot be sent stops the job before any call; a key only the workers have is theirs."""
    from transforms.settings import ApiKeyRejected, redact_url, resolve_api_key

    try:
        resolve_api_key(settings)
    except ApiKeyRejected as exc:
        if not str(exc).startswith("No API key"):
            raise
    except Exception as exc:
        # A local key file the launcher cannot read may still be on the workers' disks; a key file in a bucket
        # is the same file for the launcher and every worker: unreadable here, it is unreadable there.
        if settings.key_file and "://" in settings.key_file and not settings.key_file.startswith("file://"):
            raise ConfigError(f"api.key_file {redact_url(settings.key_file)} cannot be read ({type(exc).__name__}"
                              f"{': no such file' if _missing(exc) else ''}); name a file the job can read, "
                              "or set TWELVE_LABS_API_KEY") from None


def _missing(exc: BaseException) -> bool:
    """True when Beam's error says the file is not there (its wording differs by filesystem)."""
    text = f"{exc} {getattr(exc, 'exception_details', '')}".lower()
    return isinstance(exc, FileNotFoundError) or any(w in text for w in ("not found", "no such", "404", "nosuchkey"))


def run_job(config: JobConfig, base_url: Optional[str] = None, progress: bool = False) -> dict:
    """Runs one job to completion and returns its summary (also written as OUTPUT/summary.json).

    With `progress`, a progress line is printed to stderr while the job runs in this process.
    """
    # The filesystem flags (S3 endpoint and keys, GCS project, ...) before the first path is touched: Beam
    # gives them to its filesystems only when the pipeline is built, after the lock, recovery and the index.
    options = apply_filesystem_options(config.beam_args)
    call_settings(config, "http://settings.check/v1.3")  # every setting checked before anything runs
    # A wrong endpoint or bucket is one line in seconds, not Beam's minutes of retries on the first listing.
    try:
        check_stores_reachable([*config.manifests, config.output, config.key_file or "",
                                config.index_path or ""], options)
    except StoreUnreachable as exc:
        raise ConfigError(str(exc)) from None
    if config.index_lancedb and not config.dry_run:
        _check_index_installed()
    return_freed_memory()  # the local runner's workers are this process
    if config.samples:
        from pipeline.samples import ensure_samples

        ensure_samples(config.samples)
    manifest_paths = expand_manifest_patterns(config.manifests)
    check_manifest_columns(manifest_paths, config.columns)
    run_time = datetime.datetime.now(datetime.timezone.utc)
    run_id = new_run_id(run_time)
    # One run per output, held through finalize; a dry run only reads. Writing the claim also proves the
    # output can take files before anything is paid for.
    with contextlib.nullcontext() if config.dry_run else OutputLock(config.output, run_id):
        return _run_locked(config, base_url, progress, manifest_paths, run_time, run_id)


def _run_locked(config: JobConfig, base_url: Optional[str], progress: bool, manifest_paths, run_time, run_id) -> dict:
    with contextlib.ExitStack() as stack:
        if base_url is None:
            base_url = stack.enter_context(embedded_backend(config)) or config.base_url
        settings = call_settings(config, base_url, run_id)
        _check_key_up_front(settings)
        started = datetime.datetime.now(datetime.timezone.utc)
        # A killed run's journals become pieces first: what it paid for counts as done.
        recovered = recover_journals(config.output)
        if recovered:
            _LOGGER.info("recovered %d records a killed run had journaled but not committed", recovered)
        settled = {}
        if not config.dry_run:
            # Runs killed (or submitted without waiting) are finalized first: the key index then holds every
            # item earlier runs paid for, and this run looks items up in it instead of reading the output.
            settled = settle_earlier_runs(config.output, run_id)
        saved_pieces = list_segment_pieces(FileSystems.join(config.output, SEGMENT_DIR))
        _refuse_other_model(saved_pieces, config.model, config.output, settings.dims)
        known_tasks = read_task_journal(config.output)
        # Earlier runs' dead letters: permanent call failures are not paid for again (unless asked), and
        # the summary tells this run's new failures from those already reported.
        failed = {} if config.retry_dead_letters else read_permanent_failures(config.output)
        known_failures = summary_mod.dead_letter_keys(config.output)
        options = beam_options(config)
        p = beam.Pipeline(options=options)
        build_pipeline(p, manifest_paths=manifest_paths, output=config.output, settings=settings,
                       run_id=run_id, run_time=run_time, pack=config.pack,
                       rows_per_piece=config.rows_per_piece, flush_sec=config.flush_sec, dry_run=config.dry_run,
                       known_tasks=known_tasks, columns=config.columns, failed=failed,
                       grouping=_grouping(options), finalize=not config.dry_run)
        if progress and _runs_in_process(options):
            stack.enter_context(ProgressPrinter(count_manifest_rows(manifest_paths), _pace_per_minute(config)))
        result = p.run()
        if config.no_wait and not config.dry_run:
            # Submitted (a Flex Template launch must exit now): the next run finalizes this one's output.
            return summary_mod.submitted_summary(config, result, run_id)
        result.wait_until_finish()
        cleanup = Cleanup([], []) if config.dry_run or not settings.delete_assets_after_run else \
            _delete_uploaded_assets(config, settings, run_id)
    if config.dry_run:
        return summary_mod.plan_summary(config, result, run_id, manifest_paths)
    # The job finalized its own output (on its workers); a runner that skipped the step leaves it to us.
    finalized = read_finalize_counts(config.output, run_id) or finalize_output(config.output, run_id, manifest_paths)
    finalized["segment_rows_dropped"] += settled.get("segment_rows_dropped", 0)
    index = _sync_index(config) if config.index_lancedb else None
    finished = datetime.datetime.now(datetime.timezone.utc)
    return summary_mod.write_summary(config, result, run_id, manifest_paths, started, finished, finalized,
                                     known_failures=known_failures, assets_deleted=len(cleanup.deleted),
                                     assets_delete_refused=len(cleanup.kept), vector_index=index)


def _check_index_installed() -> None:
    from transforms.store.vector_index import IndexUnavailable, require_lancedb

    try:
        require_lancedb()
    except IndexUnavailable as exc:
        raise ConfigError(f"{exc}, or set index.lancedb: false") from None


def _sync_index(config: JobConfig) -> dict:
    """The LanceDB table brought in step with the finalized Parquet, still under the output's lock. A failure
    here loses nothing: the Parquet is whole, `search` scans it until a later run's sync succeeds."""
    from transforms.store.vector_index import IndexSettings, index_uri, lance_storage_options, sync_index

    settings = IndexSettings(True, config.index_path, config.index_ann_min_rows)
    uri = index_uri(config.output, settings)
    try:
        done = sync_index(config.output, settings, lance_storage_options(uri, PipelineOptions(config.beam_args)))
    except Exception as exc:  # the store refused, the disk is full: said, and the run's vectors stay saved
        _LOGGER.warning("the LanceDB index at %s was not synced (%s: %s); search scans the Parquet until the next "
                        "run syncs it", uri, type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
        return {"uri": uri, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return dict(done, uri=uri)


def _delete_uploaded_assets(config: JobConfig, settings: CallSettings, run_id: str) -> Cleanup:
    """assets.delete_after_run: the assets this run uploaded, once nothing of the run still needs them (no
    deferred item, no transient dead letter: the next run would upload them again). Never an `asset_id` row's."""
    pending = [r for folder in (DEFERRED_DIR, DEAD_LETTER_DIR)
               for path in list_files(FileSystems.join(config.output, folder), f"part-{run_id}-*.jsonl")
               for r in read_jsonl(path) if folder == DEFERRED_DIR or failure_kind(r.get("code", ""),
                                                                                   r.get("http_status")) == "transient"]
    ids = uploaded_by(config.output, run_id)
    if pending:
        _LOGGER.info("keeping the %d assets this run uploaded: %d items wait for the next run", len(ids), len(pending))
        return Cleanup([], [])
    with make_client(settings) as client:
        uploader = Uploader(settings, client, AssetJournal(config.output, run_id), AssetBook())
        try:
            return uploader.delete(ids)
        finally:
            uploader.close()
