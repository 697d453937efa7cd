"""Embeddings as one step of your own Beam pipeline: JSONL catalog in, Parquet vectors and a dead-letter file out.

    TWELVE_LABS_API_KEY=... python examples/embed_catalog.py --input catalog.jsonl --output out/catalog \
        --requests-per-minute 600
"""
import argparse
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from transforms import EmbedWithTwelveLabs, TwelveLabsOptions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="JSONL: one object per line with id, text, image_url, ...")
    parser.add_argument("--output", required=True, help="prefix of the Parquet and dead-letter files")
    parser.add_argument("--base-url", default="https://api.twelvelabs.io/v1.3")
    parser.add_argument("--requests-per-minute", type=float)
    args, beam_args = parser.parse_known_args(argv)
    options = TwelveLabsOptions(base_url=args.base_url, requests_per_minute=args.requests_per_minute)
    with beam.Pipeline(options=PipelineOptions(beam_args or ["--runner=FnApiRunner"])) as p:
        result = (p | "Read" >> beam.io.ReadFromText(args.input)
                    | "Parse" >> beam.Map(json.loads)
                    | "Embed" >> EmbedWithTwelveLabs(options))
        # Rows with a schema: straight into a schema-aware sink, no Map.
        result["embeddings"] | "Vectors" >> beam.io.WriteToParquet(args.output + "-embeddings")
        (result["dead_letters"] | "DeadJson" >> beam.Map(lambda r: json.dumps(r._asdict()))
         | "Dead" >> beam.io.WriteToText(args.output + "-dead-letters", file_name_suffix=".jsonl"))


if __name__ == "__main__":
    main()
