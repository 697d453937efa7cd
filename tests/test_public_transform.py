"""EmbedWithTwelveLabs as one step of a user's pipeline: TestPipeline + assert_that, against the emulator."""
import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from embed_client import EmbedClient
from embed_emulator import Emulator, EmulatorConfig
from tests.helpers import TEST_KEY
from transforms import DeadLetterRow, EmbeddingRow, EmbedWithTwelveLabs, TwelveLabsOptions

OPTIONS = PipelineOptions(["--runner=FnApiRunner"])


@pytest.fixture(scope="module")
def emulator():
    with Emulator(EmulatorConfig()) as emu:
        yield emu


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)


def _options(emu, **changes):
    return TwelveLabsOptions(base_url=emu.base_url, **changes)


def test_dicts_in_rows_with_vectors_out_dead_letters_out(emulator):
    inputs = [{"id": "a", "text": "a dog in a park", "shelf": 1}, {"id": "b", "text": "a cat"},
              {"id": "c", "image_url": "ftp://nowhere"}, {"id": "d", "text": "a dog in a park"}]
    expected = EmbedClient(api_key=TEST_KEY, base_url=emulator.base_url).create(
        "marengo3.0", text="a dog in a park").text_embedding.segments[0].float_
    emulator.reset_stats()
    with TestPipeline(options=OPTIONS) as p:
        result = p | beam.Create(inputs) | EmbedWithTwelveLabs(_options(emulator))
        assert_that(result["embeddings"] | "Ids" >> beam.Map(lambda r: (r.id, r.modality, r.segment_index)),
                    equal_to([("a", "text", 0), ("b", "text", 0), ("d", "text", 0)]), label="ids")
        assert_that(result["embeddings"] | "DogVectors" >> beam.Filter(lambda r: r.id in ("a", "d"))
                    | beam.Map(lambda r: np.allclose(r.embedding, expected, atol=1e-6)),
                    equal_to([True, True]), label="vectors")
        assert_that(result["embeddings"] | "Attrs" >> beam.Filter(lambda r: r.id == "a")
                    | beam.Map(lambda r: json.loads(r.attributes)), equal_to([{"shelf": 1}]), label="attrs")
        assert_that(result["dead_letters"] | beam.Map(lambda r: (r.id, r.code, r.kind)),
                    equal_to([("c", "invalid_url", "permanent")]), label="dead")
        assert_that(result["deferred"], equal_to([]), label="deferred")
    assert emulator.stats()["items"]["text"] == 2  # identical inputs (a, d) were called once


def test_outputs_are_schema_rows_that_schema_transforms_accept(emulator):
    with TestPipeline(options=OPTIONS) as p:
        result = (p | beam.Create([beam.Row(title="t1", description="a red car"),
                                   beam.Row(title="t2", description="a blue bike")])
                  | EmbedWithTwelveLabs(_options(emulator), columns={"title": "id", "description": "text"}))
        assert result["embeddings"].element_type is EmbeddingRow
        assert result["dead_letters"].element_type is DeadLetterRow
        counted = (result["embeddings"] | beam.Select("modality", dims=lambda r: len(r.embedding))
                   | beam.GroupBy("modality").aggregate_field("dims", sum, "total"))
        assert_that(counted | beam.Map(lambda r: (r.modality, r.total)), equal_to([("text", 1024)]))


@pytest.mark.parametrize("windowing", [window.FixedWindows(10), window.SlidingWindows(20, 10)],
                         ids=["fixed", "sliding"])
def test_any_windowing(emulator, windowing):
    """Inputs are packed, deduplicated and called within their window; results keep their windows."""
    inputs = [({"id": f"w{i}", "text": f"caption {i % 3}"}, i * 4) for i in range(9)]
    with TestPipeline(options=OPTIONS) as p:
        result = (p | beam.Create(inputs) | beam.MapTuple(lambda row, t: window.TimestampedValue(row, t))
                  | beam.WindowInto(windowing)
                  | EmbedWithTwelveLabs(_options(emulator)))
        per_window = (result["embeddings"] | "Global" >> beam.WindowInto(window.GlobalWindows())
                      | beam.Map(lambda r: (r.id, 1)) | beam.CombinePerKey(sum))
        copies = 1 if isinstance(windowing, window.FixedWindows) else 2  # sliding: each input is in 2 windows
        assert_that(per_window, equal_to([(f"w{i}", copies) for i in range(9)]))


def test_deferred_items_can_join_the_dead_letters(emulator):
    opts = _options(emulator, max_calls=1)
    with TestPipeline(options=OPTIONS) as p:
        result = (p | beam.Create([{"id": f"q{i}", "text": f"t{i}"} for i in range(4)])
                  | EmbedWithTwelveLabs(opts, deferred_as_dead_letters=True))
        assert_that(result["deferred"], equal_to([]), label="none-deferred")
        assert_that(result["dead_letters"] | beam.Map(lambda r: r.code), equal_to(["deferred_max_calls"] * 3),
                    label="joined")


def test_bad_options_fail_when_the_transform_is_built():
    with pytest.raises(ValueError, match="embedding.dimension is for marengo3.5 only"):
        from transforms import EmbeddingSettings

        EmbedWithTwelveLabs(TwelveLabsOptions(embedding=EmbeddingSettings(dimension=256)))


def test_the_example_pipeline_runs_against_the_emulator(emulator, tmp_path):
    import glob
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "e1", "text": "a lighthouse at dusk"}, {"id": "e2", "text": "a busy market"},
        {"id": "e3", "image_url": "not a url"}]))
    out = subprocess.run([sys.executable, os.path.join(root, "examples", "embed_catalog.py"), "--input",
                          str(catalog), "--output", str(tmp_path / "out"), "--base-url", emulator.base_url],
                         capture_output=True, text=True, cwd=root, timeout=300,
                         env=dict(os.environ, PYTHONPATH=root, TWELVE_LABS_API_KEY=TEST_KEY))
    assert out.returncode == 0, out.stderr[-3000:]
    (parquet,) = glob.glob(str(tmp_path / "out-embeddings*"))
    table = pq.read_table(parquet)
    assert sorted(table.column("id").to_pylist()) == ["e1", "e2"] and len(table.column("embedding")[0]) == 512
    (dead,) = glob.glob(str(tmp_path / "out-dead-letters*.jsonl"))
    assert [json.loads(line)["code"] for line in open(dead)] == ["invalid_url"]
