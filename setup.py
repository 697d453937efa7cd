"""Packaging for the embedding pipeline; also what Dataflow/Flink workers install via --setup_file."""
import setuptools

setuptools.setup(
    name="tl-embed-pipeline",
    version="0.1.0",
    description="Batch multimodal embeddings with Apache Beam and the TwelveLabs embed API",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["embed_client*", "embed_emulator*", "pipeline*", "transforms*"]),
    package_data={"pipeline": ["configs/*.yaml"]},
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
    ],
    extras_require={
        "test": ["pytest>=8", "twelvelabs==1.3.6"],
    },
)
