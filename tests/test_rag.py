"""TwelveLabsEmbeddings (MLTransform over Beam's EmbeddableItem) into Beam's vector database sinks: Qdrant's local
mode (path=, no server) and Milvus Lite, in real pipelines against the emulator over loopback HTTP."""
import base64
import os
import subprocess
import sys
import tempfile
import uuid

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.rag.ingestion.base import VectorDatabaseWriteTransform
from apache_beam.ml.rag.types import Content, EmbeddableItem
from apache_beam.ml.transforms.base import MLTransform
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from embed_client import EmbedClient
from embed_emulator import synth
from tests.helpers import TEST_KEY, StaticFiles, started_emulators, v2_sorted
from transforms import TwelveLabsEmbeddings, TwelveLabsOptions
from transforms.public.mltransform import TwelveLabsEmbeddingFailed
from transforms.public.rag import segment_id

qdrant_client = pytest.importorskip("qdrant_client")
from apache_beam.ml.rag.ingestion.qdrant import QdrantConnectionParameters, QdrantWriteConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = PipelineOptions(["--runner=FnApiRunner"])
MODEL = "marengo3.0"
NS = uuid.UUID("6c1d3f0e-2b4a-4e8f-9d71-0a5b3c2e1f90")


def uid(name: str) -> str:
    """A Qdrant-valid id (UUID) for a test item's name."""
    return str(uuid.uuid5(NS, name))


@pytest.fixture(scope="module")
def make_emulator():
    yield from started_emulators()


@pytest.fixture(scope="module")
def emulator(make_emulator):
    return make_emulator()


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    files = {"cat.png": synth.png_bytes(160, 140, seed=1), "dog.jpg": synth.jpeg_bytes(200, 200, seed=2),
             "bird.png": synth.png_bytes(150, 150, seed=4), "a.wav": synth.wav_bytes(14.0, 440.0),
             "v.mp4": synth.mp4_bytes(4.0)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with StaticFiles(str(folder)) as server:
        yield str(folder), server.url


def _client(emu):
    return EmbedClient(api_key=TEST_KEY, base_url=emu.base_url)


def _collection(path, name="catalog", size=512):
    """An empty collection with one dense vector. DOT: Qdrant normalises COSINE vectors, DOT keeps them as sent."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=path)
    try:
        client.create_collection(name, vectors_config={"dense": models.VectorParams(size=size,
                                                                                    distance=models.Distance.DOT)})
    finally:
        client.close()  # local mode locks the folder; the pipeline's writer opens it next
    return QdrantWriteConfig(QdrantConnectionParameters(path=path), name)


def _points(path, name="catalog"):
    from qdrant_client import QdrantClient

    client = QdrantClient(path=path)
    try:
        points, _ = client.scroll(name, limit=10_000, with_payload=True, with_vectors=True)
    finally:
        client.close()
    return {str(p.id): p for p in points}


def _same(got, expected):
    return np.allclose(np.asarray(got, dtype=np.float32), np.asarray(expected, dtype=np.float32), atol=1e-6)


def test_texts_images_audio_and_video_land_in_qdrant_with_the_emulators_vectors(emulator, media, tmp_path,
                                                                               monkeypatch):
    folder, url = media
    scratch = tmp_path / "tmp"  # where the image bytes' temporary files go (the runner is in this process)
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cat, wav, mp4 = (os.path.join(folder, n) for n in ("cat.png", "a.wav", "v.mp4"))
    bird_bytes = open(os.path.join(folder, "bird.png"), "rb").read()
    document = "The lighthouse keeper climbed the stairs. The lamp was lit at dusk. Ships passed safely."
    chunks = [EmbeddableItem.from_text(sentence.strip() + ".", id=uid(f"doc-{i}"), index=i, metadata={"doc": "lh"})
              for i, sentence in enumerate(document.rstrip(".").split(". "))]
    items = chunks + [
        EmbeddableItem.from_image(cat, id=uid("cat"), metadata={"kind": "file"}),
        EmbeddableItem.from_image(f"{url}/dog.jpg", id=uid("dog"), metadata={"kind": "url"}),
        EmbeddableItem.from_image(bird_bytes, id=uid("bird"), metadata={"kind": "bytes"}),
        EmbeddableItem(content=Content(text="a 14 s tone"), id=uid("tone"), metadata={"audio": wav, "album": "x"}),
        EmbeddableItem(content=Content(), id=uid("clip"), metadata={"video": mp4}),
    ]
    store = str(tmp_path / "qdrant")
    config = _collection(store)
    options = TwelveLabsOptions(base_url=emulator.base_url)
    with TestPipeline(options=OPTIONS) as p:
        _ = (p | beam.Create(items)
             | MLTransform(write_artifact_location=str(tmp_path / "artifacts"))
             .with_transform(TwelveLabsEmbeddings(options=options))
             | VectorDatabaseWriteTransform(config))
    points = _points(store)
    assert not [name for name in os.listdir(scratch) if name.startswith("tl-rag-images-")]  # deleted after use

    client = _client(emulator)
    audio = client.create(MODEL, audio_file=wav).audio_embedding.segments
    video = v2_sorted(client.v2.create("video", MODEL, video={"media_source": {
        "base64_string": base64.b64encode(open(mp4, "rb").read()).decode("ascii")}}).data)
    assert len(audio) == 3 and len(video) >= 2
    assert len(points) == len(chunks) + 3 + len(audio) + len(video), sorted(points)

    # Texts and images: one point each, under the item's own id, with its metadata as the payload.
    for chunk in chunks:
        point = points[chunk.id]
        assert _same(point.vector["dense"], client.create(MODEL, text=chunk.content.text).text_embedding
                     .segments[0].float_)
        assert point.payload == {"doc": "lh"}
    for name, kwargs in (("cat", {"image_file": cat}), ("dog", {"image_url": f"{url}/dog.jpg"}),
                         ("bird", {"image_file": os.path.join(folder, "bird.png")})):
        expected = client.create(MODEL, **kwargs).image_embedding.segments[0].float_
        assert _same(points[uid(name)].vector["dense"], expected), name
    assert not _same(points[uid("cat")].vector["dense"], points[uid("bird")].vector["dense"])

    # Audio: a point per segment, with its offsets; the item's metadata kept; ids derived and unique.
    for index, segment in enumerate(audio):
        point = points[segment_id(uid("tone"), index)]
        assert _same(point.vector["dense"], segment.float_)
        assert point.payload == {"audio": wav, "album": "x", "source_id": uid("tone"), "modality": "audio",
                                 "segment_index": index, "start_offset_sec": segment.start_offset_sec,
                                 "end_offset_sec": segment.end_offset_sec, "embedding_option": None,
                                 "embedding_scope": None}
    assert [points[segment_id(uid("tone"), i)].payload["start_offset_sec"] for i in range(3)] == [0.0, 6.0, 12.0]
    # Video (Embed API v2): a point per returned segment, with its option and scope.
    for index, data in enumerate(video):
        point = points[segment_id(uid("clip"), index)]
        assert _same(point.vector["dense"], data.embedding)
        got = point.payload
        assert (got["embedding_option"], got["embedding_scope"]) == (data.embedding_option, data.embedding_scope)
        assert (got["start_offset_sec"], got["end_offset_sec"]) == (data.start_sec, data.end_sec)
        assert got["source_id"] == uid("clip") and got["modality"] == "video" and got["video"] == mp4
    labels = {(points[segment_id(uid("clip"), i)].payload["embedding_option"],
               points[segment_id(uid("clip"), i)].payload["embedding_scope"]) for i in range(len(video))}
    assert len(labels) == len(video)  # option and scope tell the video's points apart
    assert len(set(points)) == len(points)


def test_more_items_than_a_batch_and_the_saved_artifacts(emulator, tmp_path):
    """30 texts (two of them the same), batches of at most 8: batch boundaries are crossed, each item keeps its
    own vector. A second pipeline reads the saved artifacts back and embeds the same way."""
    texts = [f"caption number {i}" for i in range(28)] + ["caption number 3", "caption number 27"]
    items = [EmbeddableItem.from_text(text, id=uid(f"t{i}")) for i, text in enumerate(texts)]
    store, artifacts = str(tmp_path / "qdrant"), str(tmp_path / "artifacts")
    config = _collection(store)
    manager = TwelveLabsEmbeddings(options=TwelveLabsOptions(base_url=emulator.base_url), min_batch_size=1,
                                   max_batch_size=8)
    p = beam.Pipeline(options=OPTIONS)
    _ = (p | beam.Create(items) | MLTransform(write_artifact_location=artifacts).with_transform(manager)
         | VectorDatabaseWriteTransform(config))
    result = p.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter())
    dists = {(d.key.metric.namespace, d.key.metric.name): d.committed for d in metrics["distributions"]}
    counters = {(c.key.metric.namespace, c.key.metric.name): c.committed for c in metrics["counters"]}
    batches = dists[("BeamML_TwelveLabs", "inference_batch_latency_micro_secs")].count
    assert batches >= 4, batches  # 30 items, at most 8 a batch
    assert counters[("BeamML_TwelveLabs", "num_inferences")] == 30

    points = _points(store)
    client = _client(emulator)
    expected = {t: client.create(MODEL, text=t).text_embedding.segments[0].float_ for t in set(texts)}
    assert sorted(points) == sorted(item.id for item in items)
    for item in items:
        assert _same(points[item.id].vector["dense"], expected[item.content.text]), item.content.text
    assert not _same(points[uid("t0")].vector["dense"], points[uid("t1")].vector["dense"])

    later = [EmbeddableItem.from_text("a late caption", id=uid("late"))]
    with TestPipeline(options=OPTIONS) as p:
        _ = (p | beam.Create(later) | MLTransform(read_artifact_location=artifacts)
             | VectorDatabaseWriteTransform(config))
    points = _points(store)
    assert len(points) == 31
    assert _same(points[uid("late")].vector["dense"],
                 client.create(MODEL, text="a late caption").text_embedding.segments[0].float_)


def _bad_and_good(folder):
    return [EmbeddableItem.from_text("a good caption", id=uid("good")),
            EmbeddableItem.from_text("   ", id=uid("blank")),
            EmbeddableItem.from_image(os.path.join(folder, "missing.png"), id=uid("missing")),
            EmbeddableItem(content=Content(text="a caption", image=os.path.join(folder, "cat.png")), id=uid("both")),
            EmbeddableItem(content=Content(), id=uid("nothing")),
            EmbeddableItem.from_image(b"not an image", id=uid("garbage")),
            EmbeddableItem(content=Content(), id=uid("tone"), metadata={"audio": os.path.join(folder, "a.wav")})]


def test_on_error_none_drops_the_items_that_cannot_be_embedded(emulator, media, tmp_path):
    folder, _ = media
    store = str(tmp_path / "qdrant")
    config = _collection(store)
    manager = TwelveLabsEmbeddings(options=TwelveLabsOptions(base_url=emulator.base_url), on_error="none")
    p = beam.Pipeline(options=OPTIONS)
    _ = (p | beam.Create(_bad_and_good(folder))
         | MLTransform(write_artifact_location=str(tmp_path / "a")).with_transform(manager)
         | VectorDatabaseWriteTransform(config))
    result = p.run()
    result.wait_until_finish()
    counters = {(c.key.metric.namespace, c.key.metric.name): c.committed
                for c in result.metrics().query(MetricsFilter())["counters"]}
    # The good text and the audio's three segments are written; blank, missing, ambiguous, empty and
    # not-an-image bytes are dropped.
    assert sorted(_points(store)) == sorted([uid("good")] + [segment_id(uid("tone"), i) for i in range(3)])
    assert counters[("tl_embed", "rag_items_dropped")] == 5


def test_on_error_raise_fails_the_batch_and_mltransform_routes_it(emulator, media, tmp_path):
    folder, _ = media
    options = TwelveLabsOptions(base_url=emulator.base_url)
    items = _bad_and_good(folder)[:2]  # the good text and the blank one
    with pytest.raises(Exception, match=r"TwelveLabsEmbeddingFailed|could not be embedded") as failed:
        with TestPipeline(options=OPTIONS) as p:
            _ = (p | beam.Create(items) | MLTransform(write_artifact_location=str(tmp_path / "a"))
                 .with_transform(TwelveLabsEmbeddings(options=options, min_batch_size=2)))
    assert f"the first, id {uid('blank')!r}: no_input" in str(failed.value)
    assert issubclass(TwelveLabsEmbeddingFailed, RuntimeError)

    # with_exception_handling: a batch of one item each, the bad one's batch goes to the error output.
    with TestPipeline(options=OPTIONS) as p:
        good, bad = (p | beam.Create(items) | MLTransform(write_artifact_location=str(tmp_path / "b"))
                     .with_transform(TwelveLabsEmbeddings(options=options, min_batch_size=1, max_batch_size=1))
                     .with_exception_handling())
        assert_that(good | beam.Map(lambda item: (item.id, len(item.dense_embedding))), equal_to([(uid("good"), 512)]),
                    label="good")
        assert_that(bad | beam.Map(lambda row: ([item.id for item in row.element], "no_input" in row.msg,
                                                row.transform_name)),
                    equal_to([([uid("blank")], True, "TwelveLabsEmbeddings(model='marengo3.0')")]), label="bad")


def test_milvus_lite_through_beams_milvus_sink(emulator, media, tmp_path):
    pymilvus = pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from apache_beam.ml.rag.ingestion.milvus_search import MilvusVectorWriterConfig, MilvusWriteConfig
    from apache_beam.ml.rag.ingestion.postgres_common import ColumnSpecsBuilder
    from apache_beam.ml.rag.utils import MilvusConnectionParameters

    folder, _ = media
    wav = os.path.join(folder, "a.wav")
    uri = str(tmp_path / "milvus.db")
    schema = pymilvus.MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", pymilvus.DataType.VARCHAR, is_primary=True, max_length=256)
    schema.add_field("embedding", pymilvus.DataType.FLOAT_VECTOR, dim=512)
    schema.add_field("metadata", pymilvus.DataType.JSON)
    client = pymilvus.MilvusClient(uri)
    index = client.prepare_index_params()
    index.add_index("embedding", index_type="FLAT", metric_type="IP")
    client.create_collection("catalog", schema=schema, index_params=index)
    client.close()

    specs = (ColumnSpecsBuilder().with_id_spec().with_embedding_spec(convert_fn=list)
             .with_metadata_spec(convert_fn=dict).build())
    config = MilvusVectorWriterConfig(connection_params=MilvusConnectionParameters(uri=uri),
                                      write_config=MilvusWriteConfig(collection_name="catalog"), column_specs=specs)
    items = [EmbeddableItem.from_text("a red boat", id="t1", metadata={"n": 1}),
             EmbeddableItem.from_text("a blue train", id="t2", metadata={"n": 2}),
             EmbeddableItem(content=Content(), id="tone", metadata={"audio": wav})]
    with TestPipeline(options=OPTIONS) as p:
        _ = (p | beam.Create(items) | MLTransform(write_artifact_location=str(tmp_path / "a"))
             .with_transform(TwelveLabsEmbeddings(options=TwelveLabsOptions(base_url=emulator.base_url),
                                                  segment_ids="suffix"))
             | VectorDatabaseWriteTransform(config))

    client = pymilvus.MilvusClient(uri)
    try:
        rows = {r["id"]: r for r in client.query("catalog", filter='id != ""',
                                                 output_fields=["id", "embedding", "metadata"])}
    finally:
        client.close()
    api = _client(emulator)
    audio = api.create(MODEL, audio_file=wav).audio_embedding.segments
    assert sorted(rows) == ["t1", "t2", "tone#0", "tone#1", "tone#2"]
    assert _same(rows["t1"]["embedding"], api.create(MODEL, text="a red boat").text_embedding.segments[0].float_)
    assert rows["t2"]["metadata"] == {"n": 2}
    for index, segment in enumerate(audio):
        row = rows[f"tone#{index}"]
        assert _same(row["embedding"], segment.float_)
        assert (row["metadata"]["start_offset_sec"], row["metadata"]["end_offset_sec"], row["metadata"]["source_id"]) \
            == (segment.start_offset_sec, segment.end_offset_sec, "tone")


def test_the_example_writes_its_items_into_qdrant(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import rag_qdrant
    finally:
        sys.path.pop(0)
    store = str(tmp_path / "qdrant")
    # The embedded emulator, the sample items: 4 texts, an image, a 14 s audio clip (3 segments).
    assert rag_qdrant.main(["--qdrant-path", store, "--artifacts", str(tmp_path / "a")]) == 8
    points = _points(store)
    assert len(points) == 8
    by_source = {}
    for point in points.values():
        by_source.setdefault(point.payload["id"], []).append(point)
        assert len(point.vector["dense"]) == 512
    assert sorted(by_source) == ["audio-0", "image-0", "text-0", "text-1", "text-2", "text-3"]
    segments = sorted(by_source["audio-0"], key=lambda point: point.payload["segment_index"])
    assert [(s.payload["start_offset_sec"], s.payload["end_offset_sec"]) for s in segments] == [
        (0.0, 6.0), (6.0, 12.0), (12.0, 14.0)]
    assert all(s.payload["title"] == "a 14 s tone" for s in segments)


def test_bad_arguments_are_refused_when_built():
    with pytest.raises(ValueError, match="on_error"):
        TwelveLabsEmbeddings(on_error="skip")
    with pytest.raises(ValueError, match="segment_ids"):
        TwelveLabsEmbeddings(segment_ids="readable")
    with pytest.raises(TypeError, match="EmbeddableItems"):
        TwelveLabsEmbeddings(columns=["text"])
    with pytest.raises(ValueError):
        TwelveLabsEmbeddings(TwelveLabsOptions(model="no-such-model"))
    assert segment_id("doc", 2, "suffix") == "doc#2"
    assert uuid.UUID(segment_id("doc", 2)) != uuid.UUID(segment_id("doc", 3))


def test_the_module_imports_and_builds_without_qdrant_or_milvus():
    script = r'''
import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("qdrant_client", "pymilvus", "milvus_lite"):
            raise ImportError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, NotInstalled())
from transforms import TwelveLabsEmbeddings, TwelveLabsOptions
from transforms.public.rag import TwelveLabsEmbeddings as same
TwelveLabsEmbeddings(TwelveLabsOptions(base_url="http://127.0.0.1:9")).get_ptransform_for_processing()
print("OK", same is TwelveLabsEmbeddings, any(m.split(".")[0] == "qdrant_client" for m in sys.modules))
'''
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ["OK", "True", "False"]
