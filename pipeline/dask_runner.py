"""The job on a Dask cluster: Beam's DaskRunner with the fixes this job needs (selected by `--runner dask`).

Beam 2.77's `apache_beam.runners.dask.dask_runner.DaskRunner` runs ParDo, GroupByKey, Flatten and side
inputs, but three of its gaps lose this job's output without an error (each checked by running it here,
and by tests/test_dask.py against this runner):

- a ParDo with several outputs (`with_outputs`, `beam.Partition`) hands every element to every output:
  the tags are dropped, so dead letters would be embedded and every route would get every item;
- what a DoFn emits from `finish_bundle` is dropped (this job's packing and writers emit there);
- only the last transform of the graph is computed, so of the job's several sinks (segments, reused
  segments, dead letters, deferred items) all but one never run;

and `result.metrics()` raises NotImplementedError, so no counter reaches the summary.

This runner keeps Beam's translation (its overrides for Create, GroupByKey, Flatten, Reshuffle) and replaces
the evaluation. Every PCollection is read from a Dask bag of ((step, tag), WindowedValue) pairs, each
consumer taking its own; ParDos are fused into stages as on Beam's other runners, so an element reaches the
next step as it is emitted (a call's results are committed by the writer while the bundle still runs,
and a bundle's outputs are not all held in memory between steps); finish_bundle outputs are kept; each step
runs with a Beam MetricsContainer whose values come back to the launcher; and every stage is computed
(through its metrics), not only the last one. A GroupByKey spreads its keys over `--dask_npartitions`
partitions (default: twice the cluster's worker threads), keyed by the deterministic encoding of the key,
so the stages after it run on every worker.

One bag partition is one Beam bundle: each DoFn of the stage is unpickled, set up, run and torn down in the
worker process that runs the partition, as on Beam's own DaskRunner. Prints in DoFns go to the Dask
workers' logs. Beam's `Read` (sources) and `Impulse` are not supported (this job reads manifests in a
ParDo): the runner says so instead of running a graph that would drop them. What a stage hands to the
next one (after a grouping or a Flatten) is held in the workers' memory, partition by partition.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import logging
import typing as t

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.metrics.cells import DistributionResult, GaugeResult
from apache_beam.metrics.execution import MetricResult, MetricsContainer
from apache_beam.metrics.metric import MetricResults
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask.overrides import _Create, _Flatten, _GroupByKeyOnly, _Reshuffle, dask_overrides
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils import counters
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

__all__ = ["DaskRunner", "DaskRunnerResult", "DaskOptions"]

_LOGGER = logging.getLogger(__name__)

DaskOptions = beam_dask.DaskOptions
# Each bundle's metric values travel in its bag partition under this tag; no consumer selects it.
_METRICS = "__tl_embed_bundle_metrics__"


# ---- what runs on the workers -------------------------------------------------------------------------------

class _Stage:
    """One fused stage while a partition runs through it: its DoFn invokers and their metric states."""

    def __init__(self):
        self.invokers: list = []
        self.states: list = []


class _Forward(Receiver):
    """One output tag of one step: handed on at once to the steps of the stage that read it (in the same
    thread, as Beam's fused stages do), and kept for the stage's output when steps outside the stage read it."""

    def __init__(self, stage: _Stage, targets, key, out: list):
        super().__init__()
        self.stage, self.targets, self.key, self.out = stage, targets, key, out

    def receive(self, windowed_value) -> None:
        for index in self.targets:
            with self.stage.states[index]:
                self.stage.invokers[index].invoke_process(windowed_value)
        if self.key is not None:
            self.out.append((self.key, windowed_value))

    def receive_batch(self, windowed_batch) -> None:  # not produced by this job's DoFns
        raise NotImplementedError("batched DoFn outputs are not supported on the Dask runner")


class _Receivers(dict):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, tag):
        self[tag] = self.make(tag)
        return self[tag]


class _Step(t.NamedTuple):
    label: str            # the step's full label: its metrics and its outputs' keys
    name: str             # the transform's own label (DoFnContext)
    fn: bytes             # the DoFn, pickled by Beam's pickler
    window_fn: t.Any
    args: tuple
    kwargs: dict
    parent: t.Optional[int]   # the stage's step whose output this one reads (None: the stage's input)
    parent_tag: t.Optional[str]


def _side_input_maps(side_specs, side_values):
    from apache_beam.transforms.sideinputs import SideInputMap

    return [SideInputMap(view_class, view_options, values)
            for (view_class, view_options), values in zip(side_specs, side_values or [])]


_applied_options: t.Optional[dict] = None


def _apply_filesystem_options(options: t.Optional[dict]) -> None:
    """The job's filesystem flags (an S3 endpoint, a GCS project) in this Dask worker process, once: Beam's
    own workers get them from their harness, a Dask worker from nothing but this."""
    global _applied_options
    if options is None or options == _applied_options:
        return
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.store.object_store import share_s3_clients

    share_s3_clients()
    FileSystems.set_options(PipelineOptions.from_dictionary(options))
    _applied_options = options


def _run_stage(part, input_key, steps, exported, side_specs, side_values=None, filesystem_options=None):
    """One Beam bundle of a fused stage: the partition's elements through the stage's DoFns, each freshly
    unpickled, set up, started, fed, finished and torn down, with its own metrics container.

    Returns ((step label, tag), WindowedValue) for the outputs read outside the stage (finish_bundle's
    included), and one (_METRICS, MetricUpdates) per step."""
    _apply_filesystem_options(filesystem_options)
    out: list = []
    stage = _Stage()
    children = collections.defaultdict(list)
    for index, step in enumerate(steps):
        if step.parent is not None:
            children[(step.parent, step.parent_tag)].append(index)
    sampler = statesampler.StateSampler("", counters.CounterFactory())
    containers = [MetricsContainer(step.label) for step in steps]
    stage.states = [sampler.scoped_state(step.label, "process", metrics_container=container)
                    for step, container in zip(steps, containers)]
    for index, step in enumerate(steps):
        def make(tag, index=index, label=step.label):
            return _Forward(stage, children.get((index, tag), []), (label, tag) if (label, tag) in exported else None,
                            out)

        receivers = _Receivers(make)
        handler = _OutputHandler(window_fn=step.window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
                                 per_element_output_counter=None, output_batch_converter=None,
                                 process_yields_batches=False, process_batch_yields_elements=False)
        stage.invokers.append(DoFnInvoker.create_invoker(
            DoFnSignature(pickler.loads(step.fn)), handler, context=DoFnContext(step.name, state=None),
            side_inputs=_side_input_maps(side_specs, side_values) if index == 0 else [],
            input_args=list(step.args), input_kwargs=dict(step.kwargs), user_state_context=None,
            bundle_finalizer_param=beam.DoFn.BundleFinalizerParam()))
    # Metrics.counter(...).inc() finds its container through the thread's state sampler, as on Beam's
    # DirectRunner; the worker thread's earlier tracker (if any) is put back afterwards.
    previous = statesampler.get_current_tracker()
    statesampler.set_current_tracker(sampler)
    set_up = []
    try:
        for index, invoker in enumerate(stage.invokers):
            with stage.states[index]:
                invoker.invoke_setup()
            set_up.append(index)
        for index, invoker in enumerate(stage.invokers):
            with stage.states[index]:
                invoker.invoke_start_bundle()
        root = stage.invokers[0]
        with stage.states[0]:
            for key, element in part:
                if key == input_key:
                    root.invoke_process(element)
        # Parents first: what a step emits when its bundle ends still reaches its readers' bundles.
        for index, invoker in enumerate(stage.invokers):
            with stage.states[index]:
                invoker.invoke_finish_bundle()
    finally:
        try:
            for index in set_up:
                with stage.states[index]:
                    stage.invokers[index].invoke_teardown()
        finally:
            statesampler.set_current_tracker(previous)
    out.extend((_METRICS, container.get_cumulative()) for container in containers)
    return out


def _select(part, key):
    return [value for got, value in part if got == key]


def _metrics_of(part):
    return [value for got, value in part if got == _METRICS]


def _keyed(part, key):
    return [(key, value) for value in part]


def _concat_lists(parts):
    return [value for part in parts for value in part]


def _as_list(*values):
    return list(values)


def _key_bytes(coder, windowed) -> bytes:
    return coder.encode(windowed.value[0])


def _key_hash(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def _grouped(group, key):
    """(encoded key, [reified (k, WindowedValue(v))]) -> (key, WindowedValue((k, [WindowedValue(v)]))): what
    Beam's GroupAlsoByWindow step after it takes."""
    _, windowed = group
    return key, WindowedValue((windowed[0].value[0], [w.value[1] for w in windowed]), MIN_TIMESTAMP,
                              (GlobalWindow(),))


# ---- the graph, built on the launcher ------------------------------------------------------------------------

def _name(label: str) -> str:
    """A readable Dask task name for a step (the Dask dashboard and task stream show it)."""
    return "beam-" + "".join(c if c.isalnum() or c in "_." else "_" for c in label)[:80]


def _key(pcoll) -> tuple:
    return pcoll.producer.full_label, pcoll.tag


class _Primitives(PipelineVisitor):
    def __init__(self):
        self.nodes: list = []

    def visit_transform(self, node: AppliedPTransform) -> None:
        self.nodes.append(node)


class _GraphBuilder:
    """Turns the primitive transforms into Dask bags of ((step, tag), WindowedValue).

    ParDos are fused as Beam's runners fuse them: a ParDo whose input another ParDo makes runs in that ParDo's
    task, each element handed on as it is emitted, so a call's results reach the writer (and are committed)
    while the bundle still runs. A stage starts at a ParDo fed by a Create, a GroupByKey, a Flatten or a
    Reshuffle, or one with side inputs. Each stage's metrics bag is computed, so every stage runs."""

    def __init__(self, npartitions: t.Optional[int], partition_size: t.Optional[int], group_partitions: int,
                 filesystem_options: t.Optional[dict] = None):
        self.filesystem_options = filesystem_options
        self.npartitions = npartitions
        self.partition_size = partition_size
        self.group_partitions = group_partitions
        self.bags: dict = {}       # step label -> the bag holding its outputs read elsewhere
        self.metrics: list = []

    def build(self, pipeline) -> None:
        primitives = _Primitives()
        pipeline.visit(primitives)
        nodes = primitives.nodes
        # Stages: the root ParDo's label -> its steps, in order; a fused ParDo joins its producer's stage.
        stage_of, stages, parents = {}, {}, {}
        for node in nodes:
            if not isinstance(node.transform, beam.ParDo):
                continue
            (main,) = node.main_inputs.values()
            producer = main.producer
            if not node.side_inputs and producer is not None and producer.full_label in stage_of:
                root = stage_of[producer.full_label]
                parent = [n.full_label for n in stages[root]].index(producer.full_label)
                stages[root].append(node)
                stage_of[node.full_label] = root
                parents[node.full_label] = (parent, main.tag)
            else:
                stage_of[node.full_label] = node.full_label
                stages[node.full_label] = [node]
                parents[node.full_label] = (None, None)
        # Outputs read outside their stage (by another stage, a grouping, a Flatten or as a side input).
        exported = set()
        for node in nodes:
            fused = isinstance(node.transform, beam.ParDo) and stage_of[node.full_label] != node.full_label
            for pcoll in node.main_inputs.values() if isinstance(node.transform, beam.ParDo) else node.inputs:
                if not fused and isinstance(pcoll, beam.pvalue.PCollection) and pcoll.producer is not None:
                    exported.add(_key(pcoll))
            for si in node.side_inputs:
                exported.add(_key(si.pvalue))
        for node in nodes:
            transform = node.transform
            if isinstance(transform, beam.ParDo):
                if stage_of[node.full_label] == node.full_label:
                    self._stage(stages[node.full_label], parents, exported)
            elif isinstance(transform, _Create):
                self.bags[node.full_label] = self._create(node)
            elif isinstance(transform, _GroupByKeyOnly):
                self.bags[node.full_label] = self._group(node)
            elif isinstance(transform, _Flatten):
                import dask.bag as db

                inputs = [self._input(p) for p in node.inputs]
                if not inputs:
                    raise NotImplementedError(f"{node.full_label}: an empty Flatten is not supported on Dask")
                self.bags[node.full_label] = db.concat(inputs).map_partitions(_keyed, (node.full_label, None),
                                                                              token="beam-flatten")
            elif isinstance(transform, _Reshuffle):
                (pcoll,) = node.inputs
                self.bags[node.full_label] = self._input(pcoll).map_partitions(_keyed, (node.full_label, None),
                                                                               token="beam-reshuffle")
            else:
                raise NotImplementedError(
                    f"{node.full_label}: {type(transform).__name__} is not supported on the Dask runner "
                    "(it runs Create, ParDo, GroupByKey, Flatten and Reshuffle)")
        if not self.metrics:
            raise ValueError("the pipeline has no ParDo: nothing to run")

    def _input(self, pcoll):
        return self.bags[pcoll.producer.full_label].map_partitions(_select, _key(pcoll), token="beam-select")

    def _create(self, node: AppliedPTransform):
        import dask.bag as db

        values = [GlobalWindows.windowed_value(v) for v in node.transform.values]
        if self.npartitions:
            bag = db.from_sequence(values, npartitions=min(self.npartitions, max(1, len(values))))
        else:
            bag = db.from_sequence(values, partition_size=self.partition_size or 128)
        return bag.map_partitions(_keyed, (node.full_label, None), token="beam-create")

    def _stage(self, nodes, parents, exported) -> None:
        import dask

        root = nodes[0]
        (main,) = root.main_inputs.values()
        steps = []
        for node in nodes:
            (given,) = node.main_inputs.values()
            args, kwargs = node.transform.raw_side_inputs
            parent, parent_tag = parents[node.full_label]
            steps.append(_Step(node.full_label, node.transform.label, pickler.dumps(node.transform.fn),
                               given.windowing.windowfn if hasattr(given, "windowing") else None,
                               tuple(args), dict(kwargs), parent, parent_tag))
        side_specs, side_values = [], None
        if root.side_inputs:
            parts = []
            for si in root.side_inputs:
                side_specs.append((type(si), si._view_options()))
                selected = self._input(si.pvalue)
                parts.append(dask.delayed(_concat_lists)(selected.to_delayed(optimize_graph=False)))
            side_values = dask.delayed(_as_list)(*parts)
        labels = {node.full_label for node in nodes}
        mine = frozenset(key for key in exported if key[0] in labels)
        source = self.bags[main.producer.full_label]
        bag = source.map_partitions(_run_stage, _key(main), steps, mine, side_specs, side_values=side_values,
                                    filesystem_options=self.filesystem_options, token=_name(root.full_label))
        for label in labels:
            self.bags[label] = bag
        self.metrics.append(bag.map_partitions(_metrics_of, token="beam-metrics"))

    def _group(self, node: AppliedPTransform):
        from apache_beam import coders
        from apache_beam.typehints import trivial_inference
        from dask.bag.core import groupby_tasks

        (pcoll,) = node.inputs
        key_type, _ = trivial_inference.key_value_types(pcoll.element_type)
        coder = coders.registry.get_coder(key_type)
        try:
            coder = coder.as_deterministic_coder(node.full_label)
        except ValueError:
            pass  # as on FnApiRunner: grouped by the encoded key
        bag = self._input(pcoll)
        if bag.npartitions < self.group_partitions:
            bag = bag.repartition(npartitions=self.group_partitions)
        return groupby_tasks(bag, functools.partial(_key_bytes, coder), hash=_key_hash).map(
            _grouped, (node.full_label, None))


class _DaskMetrics(MetricResults):
    """Committed metric values summed over every bundle of every step."""

    def __init__(self, updates: t.Iterable):
        self._counters: dict = collections.defaultdict(int)
        self._distributions: dict = {}
        self._gauges: dict = {}
        for update in updates:
            for key, value in update.counters.items():
                self._counters[key] += value
            for key, value in update.distributions.items():
                seen = self._distributions.get(key)
                self._distributions[key] = value if seen is None else seen.combine(value)
            for key, value in update.gauges.items():
                seen = self._gauges.get(key)
                self._gauges[key] = value if seen is None else seen.combine(value)

    def query(self, filter=None):
        def results(cells, wrap):
            return [MetricResult(key, wrap(value), wrap(value)) for key, value in cells.items()
                    if self.matches(filter, key)]

        return {self.COUNTERS: results(self._counters, lambda v: v),
                self.DISTRIBUTIONS: results(self._distributions, DistributionResult),
                self.GAUGES: results(self._gauges, GaugeResult),
                self.STRINGSETS: [], self.BOUNDED_TRIES: []}


class DaskRunnerResult(PipelineResult):
    def __init__(self, client, futures, owns_client: bool):
        super().__init__(PipelineState.RUNNING)
        self.client = client
        self.futures = futures
        self._owns_client = owns_client
        self._metrics = None

    def wait_until_finish(self, duration=None):
        import dask.distributed as ddist

        if self._state in (PipelineState.DONE, PipelineState.FAILED, PipelineState.CANCELLED):
            return self._state
        updates = []
        try:
            # Gathering raises a worker's exception here, with its traceback.
            for _, result in ddist.as_completed(self.futures, timeout=None if duration is None else duration / 1000,
                                                with_results=True):
                updates.extend(result)
            self._state = PipelineState.DONE
        except TimeoutError:
            if duration is None:
                self._state = PipelineState.FAILED
                raise
            return self._state  # still running; a later call gathers everything again
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            if self._state in (PipelineState.DONE, PipelineState.FAILED):
                self._metrics = _DaskMetrics(updates)
                self._close()
        return self._state

    def _close(self):
        if self._owns_client:
            try:
                self.client.close()
            except Exception:  # closing is best effort; the job's outcome is decided
                pass

    def cancel(self):
        self._state = PipelineState.CANCELLING
        self.client.cancel(self.futures)
        self._state = PipelineState.CANCELLED
        self._close()
        return self._state

    def metrics(self):
        if self._metrics is None:
            raise RuntimeError("metrics are read after wait_until_finish()")
        return self._metrics


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner with tagged outputs, finish_bundle outputs, every sink run, and metrics."""

    def run_pipeline(self, pipeline, options):
        try:
            import dask.distributed as ddist
        except ImportError:
            raise ImportError("the Dask runner needs dask and distributed: pip install 'tl-embed-pipeline[dask]'")

        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
        npartitions = dask_options.pop("npartitions", None)
        partition_size = dask_options.pop("partition_size", None)
        client = ddist.Client(**dask_options)
        try:
            threads = sum(client.nthreads().values()) or 1
            pipeline.replace_all(dask_overrides())
            # Every flag the job was given (the filesystems pick theirs): the workers apply them before a step.
            flags = options.get_all_options(drop_default=True, retain_unknown_options=True)
            builder = _GraphBuilder(npartitions, partition_size, npartitions or 2 * threads, flags)
            builder.build(pipeline)
            futures = client.compute(builder.metrics)
        except BaseException:
            client.close()
            raise
        _LOGGER.info("running on Dask at %s (%d worker threads)", client.scheduler.address, threads)
        return DaskRunnerResult(client, futures, owns_client=True)
