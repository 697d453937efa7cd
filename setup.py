"""Packaging for the embedding pipeline; also what Dataflow/Flink workers install via --setup_file."""
import setuptools

MEDIA = ["Pillow>=10", "soundfile>=0.12", "av>=14"]
DASK = ["dask>=2024.4.2", "distributed>=2024.4.2"]
# Outputs and manifests on S3 (or an S3-compatible store): Beam's s3:// filesystem (boto3).
AWS = ["apache-beam[aws]>=2.77.0,<2.79"]
# A LanceDB table of the output's segments kept in step with the Parquet (index.lancedb), queried by `search`.
INDEX = ["lancedb>=0.40"]
# Beam's RAG ingestion (apache_beam.ml.rag) into Qdrant, local `path=` mode or a server.
RAG = ["qdrant-client>=1.12"]
# The suite also writes Beam RAG items through Beam's Milvus sink into Milvus Lite (embedded, no server).
MILVUS = ["pymilvus>=2.5", "milvus-lite>=2.4"]

setuptools.setup(
    name="tl-embed-pipeline",
    version="0.1.0",
    description="Batch multimodal embeddings with Apache Beam and the TwelveLabs embed API",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["embed_client*", "embed_emulator*", "pipeline*", "transforms*"]),
    # The default configs live in configs/ at the top level, not inside a package, so package_data
    # cannot name them: MANIFEST.in puts them (and only them, besides the packages) into the sdist.
    # What a pipeline using the transforms needs. The rest is optional (extras below): install the library
    # without the emulator's media decoders or redis, and add them where they are used.
    install_requires=[
        "apache-beam>=2.77.0,<2.79",  # minors change typing and runners: move when one passes
        "pyarrow>=14,<26",
        "tenacity>=8.2",
        "requests>=2.31",
        "PyYAML>=6",
        "numpy>=1.24",  # the segment writer and the search command
    ],
    # `media`: checking local media files before any call (image size, audio and video durations): Pillow,
    #   soundfile, and PyAV for video (its wheels ship FFmpeg with libx264, so nothing needs installing beside
    #   it). Needed wherever rows name `image_file`, `audio_file` or `video_file`, workers included.
    # `emulator`: the local emulator (`api.base_url: embedded`, `python -m embed_emulator`, the tests): a
    #   multipart parser and the same decoders, for real durations, frames and audio.
    # `redis`: one rate limit shared by every worker (embed_client.pacing.redis_gcra); without it, or without a
    #   reachable server, each worker paces to its share of the limit.
    # `dask`: the job on a Dask cluster (--runner dask, pipeline/dask_runner.py); the versions Beam's own
    #   [dask] extra asks for.
    # `aws`: s3:// manifests and outputs (Beam's S3 filesystem and boto3); workers need it too.
    # `index`: the LanceDB table beside the Parquet (index.lancedb in the config) and its use by `search`.
    # `rag`: TwelveLabsEmbeddings over Beam's EmbeddableItem into VectorDatabaseWriteTransform's Qdrant sink.
    # `test`: the suite also reads the output with DuckDB, Polars and pandas, as users do, and runs Dask; it
    #   runs the whole job against a real S3 API on loopback (moto's server) through the `aws` extra;
    #   pytest-xdist runs it on every core.
    # ./run.sh installs [emulator,redis,index]; ./run.sh test installs [emulator,redis,index,dask,test].
    extras_require={
        "media": MEDIA,
        "emulator": ["python-multipart>=0.0.20"] + MEDIA,
        "redis": ["redis>=5"],
        "dask": DASK,
        "aws": AWS,
        "index": INDEX,
        "rag": RAG,
        "test": ["pytest>=8", "pytest-xdist>=3.5", "twelvelabs==1.3.6", "import-linter>=2.1", "duckdb>=1.1", "polars>=1.0",
                 "pandas>=2.0", "hypothesis>=6.100", "moto[server]>=5.0",
                 # gs:// against a GCS API on loopback: Beam's GCS filesystem needs only google-cloud-storage
                 # (apache-beam[gcp] pulls Vertex AI and backtracks for minutes against the lock).
                 "google-cloud-storage>=2.10", "gcp-storage-emulator>=2024.8"]
        + DASK + AWS + INDEX + RAG + MILVUS,
    },
)
