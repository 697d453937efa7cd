"""TwelveLabsEmbeddingModelHandler under RunInference, and the MLTransform providers, against the emulator."""
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.ml.transforms.base import MLTransform
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from embed_client import EmbedClient
from embed_emulator import Emulator, EmulatorConfig, synth
from tests.helpers import TEST_KEY, StaticFiles
from transforms import TwelveLabsOptions
from transforms.public.model_handler import OUTAGE_RETRY_SEC, EmbeddingError, TwelveLabsEmbeddingModelHandler
from transforms.public.mltransform import TwelveLabsImageEmbeddings, TwelveLabsTextEmbeddings

OPTIONS = PipelineOptions(["--runner=FnApiRunner"])
MODEL = "marengo3.0"


@pytest.fixture(scope="module")
def emulator():
    with Emulator(EmulatorConfig()) as emu:
        yield emu


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    files = {"cat.png": synth.png_bytes(160, 140, seed=1), "dog.jpg": synth.jpeg_bytes(200, 200, seed=2),
             "tiny.png": synth.png_bytes(64, 64, seed=3), "a.wav": synth.wav_bytes(14.0, 440.0)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with StaticFiles(str(folder)) as server:
        yield str(folder), server.url


def _client(emu):
    return EmbedClient(api_key=TEST_KEY, base_url=emu.base_url)


def _vectors(result_part):
    return [segment.float_ for segment in result_part.segments]


def _same(got, expected):
    return len(got) == len(expected) and all(np.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))


def test_vectors_equal_the_clients_for_each_example(emulator, media):
    folder, url = media
    cat, wav = os.path.join(folder, "cat.png"), os.path.join(folder, "a.wav")
    client = _client(emulator)
    expected = {
        "plain": _vectors(client.create(MODEL, text="a plain string").text_embedding),
        "t": _vectors(client.create(MODEL, text="a dog in a park").text_embedding),
        "i": _vectors(client.create(MODEL, image_file=cat).image_embedding),
        "u": _vectors(client.create(MODEL, image_url=f"{url}/dog.jpg").image_embedding),
        "a": _vectors(client.create(MODEL, audio_file=wav).audio_embedding),
    }
    assert len(expected["a"]) == 3  # 14 s of audio: three segments
    examples = ["a plain string", {"id": "t", "text": "a dog in a park"}, {"id": "i", "image_file": cat},
                {"id": "u", "image_url": f"{url}/dog.jpg"}, {"id": "a", "audio_file": wav},
                {"id": "ti", "text": "a dog in a park", "image_file": cat},
                beam.Row(id="r", text="a dog in a park")]
    emulator.reset_stats()

    def check(results):
        by_id = {(r.example if isinstance(r.example, str) else
                  r.example["id"] if isinstance(r.example, dict) else r.example.id): r.inference for r in results}
        assert set(by_id) == {"a plain string", "t", "i", "u", "a", "ti", "r"}, by_id.keys()
        assert _same(by_id["a plain string"], expected["plain"])
        for name in ("t", "i", "u", "a"):
            assert _same(by_id[name], expected[name]), name
        assert set(by_id["ti"]) == {"text", "image"}  # several inputs: vectors by modality
        assert _same(by_id["ti"]["text"], expected["t"]) and _same(by_id["ti"]["image"], expected["i"])
        assert _same(by_id["r"], expected["t"])

    with TestPipeline(options=OPTIONS) as p:
        results = p | beam.Create(examples) | RunInference(
            TwelveLabsEmbeddingModelHandler(TwelveLabsOptions(base_url=emulator.base_url), min_batch_size=7))
        assert_that(results, check)
    stats = emulator.stats()
    # Identical inputs are called once per batch (the dog text 3x, cat.png 2x); texts, images and audio packed.
    assert stats["items"] == {"text": 2, "image": 2, "audio": 1}
    assert stats["calls_ok"] == 2


def test_a_bad_example_is_an_error_inference_not_a_failed_batch(emulator, media):
    folder, _ = media
    examples = [{"id": "good", "text": "a red car"},
                {"id": "ftp", "image_url": "ftp://nowhere/x.png"},
                {"id": "blank", "text": "  "},
                {"id": "tiny", "image_file": os.path.join(folder, "tiny.png")},
                {"id": "gone", "image_file": os.path.join(folder, "missing.png")},
                {"id": "refused", "text": "packed with a refused image", "image_url": "http://127.0.0.1:9/no.png"},
                {"id": "notext", "text": 42},
                3.5]
    expected_codes = {"ftp": "invalid_url", "blank": "no_input", "tiny": "image_too_small", "gone": "missing_file",
                      "refused": "embedding_failed", "notext": "invalid_type", 3.5: "invalid_example"}

    def check(output):
        def matcher(results):
            by_id = {(r.example["id"] if isinstance(r.example, dict) else r.example): r.inference for r in results}
            assert len(by_id) == len(examples)
            assert len(by_id["good"][0]) == 512 if output == "vectors" else len(by_id["good"]["segments"]) == 1
            for name, code in expected_codes.items():
                inference = by_id[name]
                if name == "refused" and output == "segments":
                    # The API refused the image of a packed call: the text still has its vector.
                    assert [s["modality"] for s in inference["segments"]] == ["text"]
                    (inference,) = inference["errors"]
                assert isinstance(inference, EmbeddingError), (name, inference)
                assert inference.code == code, (name, inference)
                assert inference.kind == "permanent" and inference.message, inference
                assert "run_inference row" not in inference.message
        return matcher

    with TestPipeline(options=OPTIONS) as p:
        created = p | beam.Create(examples)
        for output in ("vectors", "segments"):
            handler = TwelveLabsEmbeddingModelHandler(TwelveLabsOptions(base_url=emulator.base_url),
                                                      output=output, min_batch_size=len(examples))
            assert_that(created | f"Infer_{output}" >> RunInference(handler), check(output), label=f"check_{output}")


def test_calls_run_concurrently_with_the_jobs_metrics():
    """24 texts at 200 ms a call: 8 in flight take about 3 x 0.2 s, not 24 x 0.2 s."""
    examples = [{"id": f"t{i}", "text": f"caption number {i}"} for i in range(24)]
    with Emulator(EmulatorConfig(latency_ms=200)) as emu:
        handler = TwelveLabsEmbeddingModelHandler(TwelveLabsOptions(base_url=emu.base_url, max_in_flight=8),
                                                  min_batch_size=24)
        p = beam.Pipeline(options=OPTIONS)
        dims = p | beam.Create(examples) | RunInference(handler) | beam.Map(lambda r: len(r.inference[0]))
        assert_that(dims, equal_to([512] * 24))
        result = p.run()
        result.wait_until_finish()
        stats = emu.stats()
    metrics = result.metrics().query(MetricsFilter())
    counters = {(c.key.metric.namespace, c.key.metric.name): c.committed for c in metrics["counters"]}
    dists = {(d.key.metric.namespace, d.key.metric.name): d.committed for d in metrics["distributions"]}
    assert counters[("tl_embed", "calls")] == 24 and counters[("tl_embed", "http_429")] == 0
    assert counters[("tl_embed", "items_embedded")] == 24
    assert counters[("BeamML_TwelveLabs", "num_inferences")] == 24
    latency = dists[("BeamML_TwelveLabs", "inference_batch_latency_micro_secs")]
    assert latency.count == 1  # one batch of 24
    assert latency.sum / 1e6 < 24 * 0.2 / 3, latency.sum  # well under one call at a time (4.8 s)
    assert stats["max_concurrent"] >= 6 and stats["calls_ok"] == 24


def test_v2_sync_calls_and_tasks_with_segments_output(media):
    """Embed API v2: a text and a local audio clip go to sync calls, an audio URL (length unknown) to a task."""
    folder, url = media
    examples = ["hello", {"id": "sync", "audio_file": os.path.join(folder, "a.wav")},
                {"id": "task", "audio_url": f"{url}/a.wav"}]
    with Emulator(EmulatorConfig(task_ready_after_sec=0.3)) as emu:
        handler = TwelveLabsEmbeddingModelHandler(
            TwelveLabsOptions(base_url=emu.base_url, api_version="v2", task_poll_sec=0.2), output="segments")
        model = handler.load_model()
        try:
            text, sync, task = [r.inference for r in handler.run_inference(examples, model)]
        finally:
            model.close()
        tasks = emu.stats()["tasks"]
    assert [(s["modality"], s["embedding_option"]) for s in text["segments"]] == [("text", None)]
    assert not text["errors"] and len(text["segments"][0]["embedding"]) == 512
    for result in (sync, task):
        labels = {(s["embedding_option"], s["embedding_scope"]) for s in result["segments"]}
        assert labels == {(o, c) for o in ("audio", "transcription") for c in ("clip", "asset")}, labels
        clips = sorted({(s["start_sec"], s["end_sec"]) for s in result["segments"] if s["embedding_scope"] == "clip"})
        assert clips[0][0] == 0.0 and clips[-1][1] == pytest.approx(14.0)
    assert tasks["created"] == 1 and tasks["ready"] == 1


def test_an_empty_category_bucket_holds_up_only_its_own_category(media):
    """Per-category limits, one thread: an audio whose bucket is empty (20/min, its turn taken: 3 s away) must
    not hold the thread while a text of the same batch, whose bucket is full, could go. A thread blocking on
    the audio's bucket would finish the text after the audio, 3 s in."""
    import time

    from transforms.settings import CategoryLimit

    folder, _ = media
    examples = [{"id": "audio", "audio_file": os.path.join(folder, "a.wav")}, {"id": "text", "text": "hello"}]
    with Emulator(EmulatorConfig()) as emu:
        handler = TwelveLabsEmbeddingModelHandler(TwelveLabsOptions(
            base_url=emu.base_url, api_version="v2", max_in_flight=1,
            category_limits=(CategoryLimit("audio", 20), CategoryLimit("text", 600))))
        model = handler.load_model()
        finished = {}
        caller = model.callers["v2"]
        run = caller.run

        def timed(call, *args, **kwargs):
            result = run(call, *args, **kwargs)
            finished[call.items[0].modality] = time.monotonic() - began
            return result

        caller.run = timed
        try:
            model.pacer.reserve(["audio"])  # the audio bucket's one turn is spent: the next is 3 s away
            began = time.monotonic()
            audio, text = [r.inference for r in handler.run_inference(examples, model)]
        finally:
            model.close()
    assert len(text[0]) == 512 and len(audio[0]) == 512
    assert finished["text"] < 1.0, finished       # at once, not after the audio's wait
    assert finished["audio"] >= 2.5, finished     # the audio's bucket was really empty
    assert finished["text"] < finished["audio"] - 2.0


def test_a_spent_quota_defers_then_calls_again_after_the_reset():
    """The job stops for the run on a spent quota; a RunInference step may run for days: it calls again later."""
    with Emulator(EmulatorConfig(requests_per_day=2)) as emu:  # the day resets at UTC midnight
        handler = TwelveLabsEmbeddingModelHandler(TwelveLabsOptions(base_url=emu.base_url, item_deadline_sec=5,
                                                                    max_in_flight=1))
        model = handler.load_model()
        try:
            first = [r.inference for r in handler.run_inference([f"text {i}" for i in range(4)], model)]
            assert sum(isinstance(i, list) for i in first) == 2
            deferred = [i for i in first if isinstance(i, EmbeddingError)]
            assert [(e.code, e.kind) for e in deferred] == [("deferred_quota_exhausted", "transient")] * 2
            assert "resets at" in deferred[0].message
            requests = emu.stats()["requests"]
            still = [r.inference for r in handler.run_inference(["text 2"], model)]
            assert still[0].code == "deferred_quota_exhausted" and emu.stats()["requests"] == requests  # no call
            emu.configure(requests_per_day=None)                  # midnight comes
            resets_at = model.quota.resets_at
            model.clock = lambda: resets_at + 1
            again = [r.inference for r in handler.run_inference(["text 2", "text 3"], model)]
            assert all(isinstance(i, list) and len(i[0]) == 512 for i in again), again
            # After an outage stop: OUTAGE_RETRY_SEC later it calls again (the job waits for the next run).
            model.quota.stop("service_unavailable", None)
            model.clock = lambda: resets_at + 2
            assert handler.run_inference(["text 4"], model)[0].inference.code == "deferred_service_unavailable"
            model.clock = lambda: resets_at + 2 + OUTAGE_RETRY_SEC
            assert len(handler.run_inference(["text 4"], model)[0].inference[0]) == 512
        finally:
            model.close()


def test_a_refused_key_fails_the_step(monkeypatch):
    with Emulator(EmulatorConfig(api_keys={"tlk_the_only_good_key_1234"})) as emu:
        handler = TwelveLabsEmbeddingModelHandler(TwelveLabsOptions(base_url=emu.base_url, max_attempts=1))
        with pytest.raises(Exception, match="refused the key"):
            with TestPipeline(options=OPTIONS) as p:
                _ = p | beam.Create(["x"]) | RunInference(handler)


def test_mltransform_with_text_and_image_providers(emulator, media, tmp_path):
    folder, url = media
    cat = os.path.join(folder, "cat.png")
    client = _client(emulator)
    text_vectors = {t: _vectors(client.create(MODEL, text=t).text_embedding)[0] for t in ("a cat", "a dog")}
    image_vectors = {cat: _vectors(client.create(MODEL, image_file=cat).image_embedding)[0],
                     f"{url}/dog.jpg": _vectors(client.create(MODEL, image_url=f"{url}/dog.jpg").image_embedding)[0]}
    rows = [{"id": 1, "caption": "a cat", "picture": cat}, {"id": 2, "caption": "a dog", "picture": f"{url}/dog.jpg"}]
    options = TwelveLabsOptions(base_url=emulator.base_url)

    def check(results):
        assert sorted(r["id"] for r in results) == [1, 2]
        for row in results:
            source = rows[row["id"] - 1]
            assert np.allclose(row["caption"], text_vectors[source["caption"]], atol=1e-6)
            assert np.allclose(row["picture"], image_vectors[source["picture"]], atol=1e-6)

    artifacts = str(tmp_path / "artifacts")
    with TestPipeline(options=OPTIONS) as p:
        embedded = (p | beam.Create(rows)
                    | MLTransform(write_artifact_location=artifacts)
                    .with_transform(TwelveLabsTextEmbeddings(columns=["caption"], options=options))
                    .with_transform(TwelveLabsImageEmbeddings(columns=["picture"], options=options)))
        assert_that(embedded, check)
    assert os.listdir(artifacts)
    # The providers were saved with the artifacts: a later pipeline reads them back and embeds the same way.
    with TestPipeline(options=OPTIONS) as p:
        assert_that(p | beam.Create(rows) | MLTransform(read_artifact_location=artifacts), check)


def test_mltransform_on_error(emulator, tmp_path):
    rows = [{"caption": "a cat"}, {"caption": "   "}]
    options = TwelveLabsOptions(base_url=emulator.base_url)
    with TestPipeline(options=OPTIONS) as p:
        embedded = (p | beam.Create(rows) | MLTransform(write_artifact_location=str(tmp_path / "a"))
                    .with_transform(TwelveLabsTextEmbeddings(columns=["caption"], options=options, on_error="none")))
        assert_that(embedded | beam.Map(lambda r: None if r["caption"] is None else len(r["caption"])),
                    equal_to([512, None]))
    with pytest.raises(Exception, match="1 of 2 text values could not be embedded"):
        with TestPipeline(options=OPTIONS) as p:
            _ = (p | beam.Create(rows) | MLTransform(write_artifact_location=str(tmp_path / "b"))
                 .with_transform(TwelveLabsTextEmbeddings(columns=["caption"], options=options, min_batch_size=2)))


def test_options_are_checked_when_the_handler_is_built():
    with pytest.raises(ValueError):
        TwelveLabsEmbeddingModelHandler(TwelveLabsOptions(model="no-such-model"))
    with pytest.raises(ValueError):
        TwelveLabsEmbeddingModelHandler(output="everything")
    with pytest.raises(ValueError):
        TwelveLabsTextEmbeddings(columns=["c"], on_error="ignore")
