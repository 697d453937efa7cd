"""Packaging for the embedding pipeline; also what Dataflow/Flink workers install via --setup_file."""
import setuptools

setuptools.setup(
    name="tl-embed-pipeline",
    version="0.1.0",
    description="Batch multimodal embeddings with Apache Beam and the TwelveLabs embed API",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["embed_client*", "embed_emulator*", "pipeline*", "transforms*"]),
    # The default configs live in configs/ at the top level, not inside a package, so package_data
    # cannot name them: MANIFEST.in puts them (and only them, besides the packages) into the sdist.
    install_requires=[
        "apache-beam>=2.77.0,<3",
        "pyarrow>=14,<26",
        "tenacity>=8.2",
        "requests>=2.31",
        "PyYAML>=6",
        # The emulator: multipart parsing, image and audio decoding.
        "python-multipart>=0.0.20",
        "Pillow>=10",
        "soundfile>=0.12",
        "numpy>=1.24",
        # The emulator's Embed API v2 video: PyAV decodes containers for real durations, frames and
        # audio (and the pipeline may measure local video durations with it). Its wheels ship
        # FFmpeg (with libx264 for the test clips), so nothing needs installing beside it.
        "av>=14",
        # One rate limit shared by every worker (embed_client.redis_bucket): an atomic Lua script on a
        # Redis server. redis-py is the maintained client; without a reachable server the job falls back
        # to a per-worker share of the limit, so the dependency is needed only to try.
        "redis>=5",
    ],
    # Tests also read the output with DuckDB, Polars and pandas, as users do.
    # `dask`: the job on a Dask cluster (--runner dask, pipeline/dask_runner.py); the versions Beam's own
    # [dask] extra asks for. The tests run it on a LocalCluster, so the test extra holds it too.
    extras_require={
        "dask": ["dask>=2024.4.2", "distributed>=2024.4.2"],
        "test": ["pytest>=8", "twelvelabs==1.3.6", "duckdb>=1.1", "polars>=1.0", "pandas>=2.0", "hypothesis>=6.100",
                 "dask>=2024.4.2", "distributed>=2024.4.2"],
    },
)
