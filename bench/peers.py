"""The peers: what a user would write instead of this pipeline, one item per call each.

- `run_sdk`: a plain loop over the official `twelvelabs` SDK 1.3.6, as in its docs.
- `run_runinference`: Beam `RunInference` with a `RemoteModelHandler` whose `request()` posts
  with `requests`; Beam runs one request at a time per worker.
- `run_threads`: a `ThreadPoolExecutor` posting with `requests`, paced by a token bucket when
  the limit is known and obeying `Retry-After` on 429.
Each returns the number of items embedded.
"""
from __future__ import annotations

import concurrent.futures
import json
import mimetypes
import os
import threading
import time
from typing import Iterable, List, Optional

import requests

from bench.manifests import iter_items, row_items

MODEL = "marengo3.0"
KEY = os.environ.get("TWELVE_LABS_API_KEY", "bench-key")


def run_sdk(manifest: str, base_url: str) -> int:
    from twelvelabs import TwelveLabs

    client = TwelveLabs(api_key=KEY, base_url=base_url)
    done = 0
    for item in iter_items(manifest):
        retry = {"max_retries": 5}  # the SDK retries 429/5xx with backoff only when asked
        if item["modality"] == "text":
            client.embed.create(model_name=MODEL, text=item["text"], request_options=retry)
        else:
            with open(item["file"], "rb") as f:
                client.embed.create(model_name=MODEL, **{f"{item['modality']}_file": f}, request_options=retry)
        done += 1
    return done


def _post(session: requests.Session, base_url: str, item: dict) -> requests.Response:
    """One multipart call (tuples with a None filename force multipart for plain fields too)."""
    files = {"model_name": (None, MODEL)}
    if item["modality"] == "text":
        files["text"] = (None, item["text"])
    else:
        with open(item["file"], "rb") as f:
            data = f.read()
        name = os.path.basename(item["file"])
        files[f"{item['modality']}_file"] = (name, data, mimetypes.guess_type(name)[0])
    return session.post(base_url + "/embed", files=files, headers={"x-api-key": KEY}, timeout=(10, 120))


def _embed(session: requests.Session, base_url: str, item: dict, pace: Optional["Pace"] = None) -> dict:
    for _ in range(20):
        if pace is not None:
            pace.wait()
        response = _post(session, base_url, item)
        if response.status_code == 429:
            time.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        response.raise_for_status()
        return response.json()
    raise RuntimeError("still rate limited after 20 attempts")


class Pace:
    """The simplest token bucket: one call every 60/rpm seconds, shared by all threads."""

    def __init__(self, rpm: float):
        self.interval = 60.0 / rpm
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            time.sleep(start - now)


def run_threads(manifest: str, base_url: str, rpm: Optional[float], threads: int) -> int:
    local = threading.local()
    pace = Pace(rpm) if rpm else None

    def work(item):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        _embed(local.session, base_url, item, pace)
        return 1

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(work, iter_items(manifest), chunksize=1))


def run_handler(manifest: str, base_url: str, rpm: Optional[float]) -> int:
    """RunInference with this project's TwelveLabsEmbeddingModelHandler: packed, paced, concurrent calls."""
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms import TwelveLabsEmbeddingModelHandler, TwelveLabsOptions

    folder = os.path.dirname(os.path.abspath(manifest))
    counted = Metrics.counter("bench", "items")

    def absolute(row: dict) -> dict:
        return {k: (os.path.join(folder, v) if k.endswith("_file") and isinstance(v, str) else v)
                for k, v in row.items()}

    def count(result):
        inference = result.inference
        counted.inc(len(inference) if isinstance(inference, dict) else 1)

    options = TwelveLabsOptions(base_url=base_url, requests_per_minute=rpm, max_in_flight=8)
    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    _ = (p | beam.io.ReadFromText(manifest)
         | beam.Map(lambda line: absolute(json.loads(line)))
         | RunInference(TwelveLabsEmbeddingModelHandler(options))
         | beam.Map(count))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("items"))["counters"]
    return sum(c.committed for c in counters)


def run_runinference(manifest: str, base_url: str) -> int:
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import PredictionResult, RemoteModelHandler, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    class EmbedHandler(RemoteModelHandler):
        def __init__(self, url: str):
            super().__init__(namespace="bench")
            self.url = url

        def create_client(self) -> requests.Session:
            return requests.Session()

        def request(self, batch: List[dict], model: requests.Session, inference_args=None) -> Iterable:
            return [PredictionResult(item, _embed(model, self.url, item)) for item in batch]

    folder = os.path.dirname(manifest)
    counted = Metrics.counter("bench", "items")

    def count(_):
        counted.inc()

    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    _ = (p | beam.io.ReadFromText(manifest)
         | beam.FlatMap(lambda line: row_items(json.loads(line), folder))
         | RunInference(EmbedHandler(base_url))
         | beam.Map(count))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("items"))["counters"]
    return sum(c.committed for c in counters)
