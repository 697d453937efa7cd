"""MLTransform embeddings providers for TwelveLabs, like Beam's `VertexAITextEmbeddings` / `VertexAIImageEmbeddings`.

    from apache_beam.ml.transforms.base import MLTransform
    from transforms import TwelveLabsImageEmbeddings, TwelveLabsOptions, TwelveLabsTextEmbeddings

    options = TwelveLabsOptions(requests_per_minute=600)
    rows | MLTransform(write_artifact_location=ARTIFACTS)
             .with_transform(TwelveLabsTextEmbeddings(columns=["caption"], options=options))
             .with_transform(TwelveLabsImageEmbeddings(columns=["picture"], options=options))

Each named column's value is replaced by its vector (a list of floats). Text columns hold texts; image columns an
http(s) URL (fetched by the API) or a file path (local or any Beam FileSystems path, uploaded). The calls are
the RunInference handler's: validated, packed, deduplicated within a batch, run `max_in_flight` at a time, paced
and retried as in the job.

A value that cannot be embedded (a blank text, a missing file, an image the API refuses): with
`on_error="raise"` (default, as Beam's providers do) the batch fails with `TwelveLabsEmbeddingFailed`, which
`MLTransform(...).with_exception_handling()` routes to its error output; with `on_error="none"` the column
gets None and the rest of the batch keeps its vectors (counted in `tl_embed/inference_errors`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.ml.transforms.base import EmbeddingsManager, _EmbeddingHandler, _TextEmbeddingHandler

from transforms.public.embed import TwelveLabsOptions
from transforms.public.model_handler import EmbeddingError, TwelveLabsEmbeddingModel, TwelveLabsEmbeddingModelHandler

__all__ = ["TwelveLabsEmbeddingFailed", "TwelveLabsImageEmbeddings", "TwelveLabsTextEmbeddings"]

ON_ERROR = ("raise", "none")


class TwelveLabsEmbeddingFailed(RuntimeError):
    """A column value of the batch could not be embedded (on_error="raise")."""


class _ColumnValueHandler(TwelveLabsEmbeddingModelHandler):
    """Column values in (texts, or image URLs / paths), one vector per value out, as MLTransform expects."""

    def __init__(self, options: TwelveLabsOptions, field: str, on_error: str, **batching):
        super().__init__(options, output="segments", **batching)
        self.field = field
        self.on_error = on_error

    def _example(self, value: Any) -> Dict[str, Any]:
        if self.field == "text" or value is None:
            return {"text": value}
        if isinstance(value, str) and value.strip().lower().startswith(("http://", "https://")):
            return {"image_url": value}
        return {"image_file": value}

    def run_inference(self, batch: Sequence[Any], model: TwelveLabsEmbeddingModel,
                      inference_args: Optional[Dict[str, Any]] = None) -> List[Optional[List[float]]]:
        results = super().run_inference([self._example(value) for value in batch], model, inference_args)
        vectors: List[Optional[List[float]]] = []
        failures = []
        for value, result in zip(batch, results):
            inference = result.inference
            if isinstance(inference, EmbeddingError):
                failures.append((value, inference))
                vectors.append(None)
            else:  # a text or an image has one vector
                vectors.append(inference["segments"][0]["embedding"])
        if failures and self.on_error == "raise":
            value, first = failures[0]
            shown = value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "..."
            raise TwelveLabsEmbeddingFailed(
                f"{len(failures)} of {len(batch)} {self.field} values could not be embedded; the first, "
                f"{shown!r}: {first.code}: {first.message} (on_error='none' writes None instead)")
        return vectors

    def __repr__(self) -> str:
        return f"TwelveLabs{self.field.capitalize()}Embeddings(model={self.options.model!r})"


class _TwelveLabsEmbeddings(EmbeddingsManager):
    _field = "text"

    def __init__(self, columns: List[str], options: Optional[TwelveLabsOptions] = None, *,
                 on_error: str = "raise", **kwargs):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
        self.options = options or TwelveLabsOptions()
        self.on_error = on_error
        super().__init__(columns=columns, **kwargs)
        self.get_model_handler()  # checks the options now, not on a worker

    def _labelled(self, transform: beam.PTransform) -> beam.PTransform:
        # MLTransform applies each provider's RunInference unnamed: two of them (text and image) would both be
        # "RunInference". Named by provider and columns, they can sit side by side.
        transform.label = f"{type(self).__name__}({','.join(self.columns or [])})"
        return transform

    def get_model_handler(self) -> ModelHandler:
        batching = {"min_batch_size": self.min_batch_size, "max_batch_size": self.max_batch_size}
        return _ColumnValueHandler(self.options, self._field, self.on_error, **batching)


class TwelveLabsTextEmbeddings(_TwelveLabsEmbeddings):
    """MLTransform provider: each text column's value becomes its TwelveLabs vector (a list of floats).

    Args:
      columns: the columns holding texts.
      options: model, endpoint, rate, in-flight calls, retries, key source (TwelveLabsOptions).
      on_error: "raise" (the batch fails; see MLTransform.with_exception_handling) or "none" (None in the column).
      min_batch_size, max_batch_size: RunInference batching (default 8 x max_in_flight to 512).
    """

    _field = "text"

    def get_ptransform_for_processing(self, **kwargs) -> beam.PTransform:
        return self._labelled(RunInference(model_handler=_TextEmbeddingHandler(self),
                                           inference_args=self.inference_args))


class _ImageValueEmbeddingHandler(_EmbeddingHandler):
    """Beam's image adapter wants image objects; ours takes URLs and paths (strings)."""

    def _validate_column_data(self, batch):
        bad = next((value for value in batch if value is not None and not isinstance(value, str)), None)
        if bad is not None:
            raise TypeError("TwelveLabsImageEmbeddings takes image URLs or file paths (strings), got "
                            f"{type(bad).__name__}")

    def get_metrics_namespace(self) -> str:
        return self._underlying.get_metrics_namespace()


class TwelveLabsImageEmbeddings(_TwelveLabsEmbeddings):
    """MLTransform provider: each image column's value (an http(s) URL or a file path) becomes its vector.

    Args: as TwelveLabsTextEmbeddings. Images are checked before any call (JPEG/PNG, at least 128x128, size).
    """

    _field = "image"

    def get_ptransform_for_processing(self, **kwargs) -> beam.PTransform:
        return self._labelled(RunInference(model_handler=_ImageValueEmbeddingHandler(self),
                                           inference_args=self.inference_args))
