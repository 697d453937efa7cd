"""Beam RAG ingestion: EmbeddableItems (texts, images, audio) embedded by TwelveLabs into Qdrant's local mode.

    python examples/rag_qdrant.py --qdrant-path out/qdrant                    # the embedded emulator, sample items
    TWELVE_LABS_API_KEY=... python examples/rag_qdrant.py --qdrant-path out/qdrant \\
        --base-url https://api.twelvelabs.io/v1.3 --input catalog.jsonl --requests-per-minute 600

`--input` is JSONL: one object per line with `id` and one of `text`, `image` (URL, path), `audio` or `video` (URL,
path); other fields go to the metadata (Qdrant's payload). Without it, a few sample texts, an image and a 14 s
audio clip are made (the emulator's synthetic media). Qdrant point ids must be UUIDs or unsigned integers: an
item's id is uuid5 of the line's `id`, which is kept in the metadata as `id`. Needs the `rag` extra
(qdrant-client).
"""
import argparse
import json
import os
import tempfile
import uuid

import apache_beam as beam
from apache_beam.ml.rag.ingestion.base import VectorDatabaseWriteTransform
from apache_beam.ml.rag.ingestion.qdrant import QdrantConnectionParameters, QdrantWriteConfig
from apache_beam.ml.rag.types import Content, EmbeddableItem
from apache_beam.ml.transforms.base import MLTransform
from apache_beam.options.pipeline_options import PipelineOptions

from transforms import TwelveLabsEmbeddings, TwelveLabsOptions
from transforms.models import MODEL_DIMS

EMBEDDED = "embedded"
SAMPLE_TEXTS = ["a lighthouse at dusk", "a busy market in the morning", "waves breaking on a rocky shore",
                "a cat asleep on a windowsill"]
_IDS = uuid.UUID("0f6f7a52-3c1e-4f0b-9a5e-6b2d8c4e1a70")


def item_from_record(record: dict) -> EmbeddableItem:
    """A JSONL record as an EmbeddableItem: text or image in the content, audio or video in the metadata."""
    record = dict(record)
    source_id = str(record.pop("id"))
    text, image = record.pop("text", None), record.pop("image", None)
    metadata = {"id": source_id, **record}  # `audio` / `video` stay in the metadata: that is where they are read
    return EmbeddableItem(content=Content(text=text, image=image), id=str(uuid.uuid5(_IDS, source_id)),
                          metadata=metadata)


def sample_records(folder: str) -> list:
    from embed_emulator import synth  # the emulator's synthetic media (extra `emulator`)

    image, audio = os.path.join(folder, "sample.png"), os.path.join(folder, "sample.wav")
    with open(image, "wb") as f:
        f.write(synth.png_bytes(160, 160, seed=7))
    with open(audio, "wb") as f:
        f.write(synth.wav_bytes(14.0, 440.0))
    return ([{"id": f"text-{i}", "text": text} for i, text in enumerate(SAMPLE_TEXTS)]
            + [{"id": "image-0", "image": image}, {"id": "audio-0", "audio": audio, "title": "a 14 s tone"}])


def create_collection(connection: QdrantConnectionParameters, name: str, size: int) -> None:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(location=connection.location, url=connection.url, path=connection.path)
    try:
        if not client.collection_exists(name):
            client.create_collection(name, vectors_config={
                "dense": models.VectorParams(size=size, distance=models.Distance.COSINE)})
    finally:
        client.close()  # local mode locks its folder: the pipeline's writer opens it next


def count_points(connection: QdrantConnectionParameters, name: str) -> int:
    from qdrant_client import QdrantClient

    client = QdrantClient(location=connection.location, url=connection.url, path=connection.path)
    try:
        return client.count(name, exact=True).count
    finally:
        client.close()


def run(args, beam_args, base_url: str, folder: str) -> int:
    if args.input:
        with open(args.input, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        records = sample_records(folder)
    connection = (QdrantConnectionParameters(path=args.qdrant_path) if args.qdrant_path
                  else QdrantConnectionParameters(url=args.qdrant_url))
    create_collection(connection, args.collection, MODEL_DIMS[args.model])
    options = TwelveLabsOptions(model=args.model, base_url=base_url, requests_per_minute=args.requests_per_minute)
    artifacts = args.artifacts or os.path.join(folder, "artifacts")
    with beam.Pipeline(options=PipelineOptions(beam_args or ["--runner=FnApiRunner"])) as p:
        _ = (p
             | "Records" >> beam.Create(records)
             | "Items" >> beam.Map(item_from_record)
             | "Embed" >> MLTransform(write_artifact_location=artifacts).with_transform(
                 TwelveLabsEmbeddings(options=options, on_error=args.on_error))
             | "Qdrant" >> VectorDatabaseWriteTransform(QdrantWriteConfig(connection, args.collection)))
    points = count_points(connection, args.collection)
    print(f"{points} points in Qdrant collection {args.collection!r} ({len(records)} items; an audio or video "
          f"item is a point per segment)")
    return points


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--qdrant-path", help="folder of Qdrant's local mode (no server)")
    where.add_argument("--qdrant-url", help="a Qdrant server, e.g. http://localhost:6333")
    parser.add_argument("--collection", default="catalog")
    parser.add_argument("--input", help="JSONL of items (default: sample texts, an image and an audio clip)")
    parser.add_argument("--base-url", default=EMBEDDED, help="the API's base URL, or 'embedded' (default): "
                                                             "start the local emulator in this process")
    parser.add_argument("--model", default="marengo3.0", choices=sorted(MODEL_DIMS))
    parser.add_argument("--requests-per-minute", type=float)
    parser.add_argument("--on-error", default="raise", choices=("raise", "none"))
    parser.add_argument("--artifacts", help="MLTransform's artifact folder (default: a temporary one)")
    args, beam_args = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="rag-qdrant-") as folder:
        if args.base_url != EMBEDDED:
            return run(args, beam_args, args.base_url, folder)
        from embed_emulator import Emulator, EmulatorConfig

        os.environ.setdefault("TWELVE_LABS_API_KEY", "local-emulator")  # the emulator takes any key
        with Emulator(EmulatorConfig()) as emulator:
            return run(args, beam_args, emulator.base_url, folder)


if __name__ == "__main__":
    main()
