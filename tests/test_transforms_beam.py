"""Each transform fed by beam.Create and checked with Beam's own TestPipeline + assert_that, and build_pipeline
in a TestPipeline: the pieces of the job, apart from the whole-job tests."""
import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from embed_emulator import Emulator, EmulatorConfig
from tests.helpers import TEST_KEY, read_dead_letters, read_segments
from transforms.settings import CallSettings
from transforms.stages.call import CreateEmbeddings
from transforms.records import DEAD_LETTERS
from transforms.records import Call, Item, ManifestRow
from transforms.stages.pack import PackCalls
from transforms.stages.validate import ValidateRows

OPTIONS = PipelineOptions(["--runner=FnApiRunner"])


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)


def _item(i, modality="text"):
    return Item(id=f"i{i}", modality=modality, source="m.jsonl", row_number=i, content_hash=f"h{i}",
                text=f"text {i}" if modality == "text" else None,
                url=f"http://127.0.0.1:9/{i}.png" if modality == "image" else None)  # loopback, closed


def test_validate_rows_splits_items_and_dead_letters():
    rows = [ManifestRow("m.jsonl", 1, {"id": "a", "text": "hello", "image_url": "https://x.example/a.png"}),
            ManifestRow("m.jsonl", 2, {"id": "b"}),
            ManifestRow("m.jsonl", 3, {"id": "a", "text": "again"})]
    with TestPipeline(options=OPTIONS) as p:
        result = p | beam.Create(rows) | ValidateRows("marengo3.0")
        assert_that(result["items"] | beam.Map(lambda i: (i.id, i.modality, i.route)),
                    equal_to([("a", "text", "v1"), ("a", "image", "v1")]), label="items")
        assert_that(result[DEAD_LETTERS] | beam.Map(lambda d: (d.row_number, d.code)),
                    equal_to([(2, "no_input"), (3, "duplicate_id")]), label="dead")


def test_pack_calls_puts_one_item_per_modality_in_a_call():
    items = [_item(i) for i in range(3)] + [_item(10 + i, "image") for i in range(2)]
    with TestPipeline(options=OPTIONS) as p:
        calls = p | beam.Create(items) | PackCalls(pack=True)
        assert_that(calls | beam.Map(lambda c: tuple(sorted(i.modality for i in c.items))),
                    equal_to([("image", "text"), ("image", "text"), ("text",)]))


def test_create_embeddings_against_the_emulator():
    with Emulator(EmulatorConfig(fault_modality_error_rate=0.0)) as emu:
        settings = CallSettings(base_url=emu.base_url, model="marengo3.0", max_in_flight=2)
        calls = [Call([_item(1)]), Call([_item(2), _item(3, "image")])]
        with TestPipeline(options=OPTIONS) as p:
            result = p | beam.Create(calls) | CreateEmbeddings(settings)
            assert_that(result.outcomes | beam.Map(lambda o: (o.item.id, len(o.segments[0][2]))),
                        equal_to([("i1", 512), ("i2", 512)]), label="outcomes")
            # the image URL (a closed loopback port) cannot be fetched by the emulator: a dead letter, not a crash
            assert_that(result[DEAD_LETTERS] | beam.Map(lambda d: (d.id, d.modality)),
                        equal_to([("i3", "image")]), label="dead")


def test_build_pipeline_in_a_test_pipeline(tmp_path):
    import datetime

    from pipeline.graph import build_pipeline

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "t1", "text": "a test pipeline"}) + "\n" + json.dumps({"id": "x"}) + "\n")
    output = str(tmp_path / "out")
    with Emulator(EmulatorConfig()) as emu:
        settings = CallSettings(base_url=emu.base_url, model="marengo3.0", run_id="run-test")
        with TestPipeline(options=OPTIONS) as p:
            written = build_pipeline(p, manifest_paths=[str(manifest)], output=output, settings=settings,
                                     run_id="run-test", run_time=datetime.datetime.now(datetime.timezone.utc))
            assert_that(written[DEAD_LETTERS] | beam.Map(lambda path: path.endswith(".jsonl")), equal_to([True]))
    assert read_segments(output).column("id").to_pylist() == ["t1"]
    assert [l["code"] for l in read_dead_letters(output)] == ["no_input"]


def test_two_calling_steps_of_a_run_share_one_call_budget_and_write_the_timeline(tmp_path):
    """The process's quota (apache_beam.utils.shared) is shared by the DoFn instances of both steps: a budget of
    3 calls allows 3 calls in all, not 3 per step; each sent call is one timeline record, written for the report."""
    from pipeline.report.html import read_calls
    from transforms.records import DEFERRED
    from transforms.stages.timeline import TIMELINE, WriteTimeline

    folder = tmp_path / "timeline"
    folder.mkdir()
    with Emulator(EmulatorConfig()) as emu:
        settings = CallSettings(base_url=emu.base_url, model="marengo3.0", max_in_flight=1, max_calls=3,
                                run_id="shared-budget")
        with TestPipeline(options=OPTIONS) as p:
            outcomes, deferred = [], []
            for step in ("A", "B"):
                calls = p | f"Calls{step}" >> beam.Create([Call([_item(i)]) for i in range(4)])
                called = calls | f"Embed{step}" >> CreateEmbeddings(settings)
                called[TIMELINE] | f"Timeline{step}" >> WriteTimeline(str(folder))
                outcomes.append(called.outcomes)
                deferred.append(called[DEFERRED])
            assert_that(tuple(outcomes) | "AllOut" >> beam.Flatten() | beam.combiners.Count.Globally(),
                        equal_to([3]), label="three_embedded")
            assert_that(tuple(deferred) | "AllDeferred" >> beam.Flatten() | beam.Map(lambda d: d.reason),
                        equal_to(["max_calls"] * 5), label="five_deferred")
        served = emu.stats()
    assert served["requests"] == 3
    timeline, latency = read_calls(str(folder))
    assert sum(c for _, c, _ in timeline) == 3 and latency["count"] == 3
