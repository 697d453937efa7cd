"""`TwelveLabsEmbeddings`: an MLTransform embeddings manager over Beam's RAG items (`apache_beam.ml.rag`).

    from apache_beam.ml.rag.ingestion.base import VectorDatabaseWriteTransform
    from apache_beam.ml.rag.ingestion.qdrant import QdrantConnectionParameters, QdrantWriteConfig
    from apache_beam.ml.rag.types import Content, EmbeddableItem
    from apache_beam.ml.transforms.base import MLTransform
    from transforms import TwelveLabsEmbeddings, TwelveLabsOptions

    items = p | beam.Create([
        EmbeddableItem.from_text("a dog in a park"),                      # Content.text
        EmbeddableItem.from_image("gs://bucket/cat.jpg"),                  # Content.image: URL, path or bytes
        EmbeddableItem(content=Content(), metadata={"audio": "/podcasts/ep1.wav"}),   # one item per segment
    ])
    (items
     | MLTransform(write_artifact_location=ARTIFACTS).with_transform(TwelveLabsEmbeddings(options=options))
     | VectorDatabaseWriteTransform(QdrantWriteConfig(QdrantConnectionParameters(path="qdrant/"), "catalog")))

What is embedded, one input per item:
- `metadata["video"]` or `metadata["audio"]`: an http(s) URL or a file path (local or any Beam FileSystems path).
  The item is a media item; its `content` (a title, say) is kept as it is and not embedded.
- otherwise `content.image`: an http(s) URL (fetched by the API), a file path (local or any FileSystems path,
  checked and uploaded), or raw bytes (written to a temporary file for the batch's calls, deleted after them;
  JPEG or PNG, as for files);
- otherwise `content.text`.
An item with both `audio` and `video`, or with both `content.text` and `content.image` (and no media key), is
ambiguous and cannot be embedded (code `ambiguous_item`): put a caption in the metadata instead.

What comes out:
- a text or image item: the same item (its own id, index and metadata) with `embedding=Embedding(dense_embedding=
  [...])`;
- an audio or video item: ONE item per segment the API returns, each with the source's content, index and
  metadata plus `source_id` (the item's id), `modality`, `segment_index` (0, 1, ... over all of the item's
  segments), `start_offset_sec`, `end_offset_sec`, `embedding_option` and `embedding_scope` (None where the API
  gives none, e.g. v1 audio's option/scope); these keys are written over same-named keys of the metadata. Its
  id, with `segment_ids="uuid"` (default), is `uuid5(TWELVELABS_SEGMENT_NAMESPACE, f"{id}#{segment_index}")`:
  stable across runs, unique per segment, and a valid Qdrant point id (Qdrant takes only UUIDs and unsigned
  integers); with `segment_ids="suffix"` it is `f"{id}#{segment_index}"`, for stores that take any string key
  (Milvus VARCHAR, pgvector). Video needs Embed API v2 (marengo3.0 with api_version auto or v2, marengo3.5).

An item that cannot be embedded (blank text, missing file, an image the API refuses, nothing to embed):
- `on_error="raise"` (default, as Beam's providers): the batch fails with `TwelveLabsEmbeddingFailed`, which
  `MLTransform(...).with_exception_handling()` routes to its error output (the whole batch is the bad record);
- `on_error="none"`: the item is dropped, the rest of the batch goes on (counted in `tl_embed/inference_errors`
  and `tl_embed/rag_items_dropped`, logged). It is not passed on with `embedding=None`: Beam's vector database
  sinks refuse an item without an embedding, so one bad item would fail the write instead.

The calls are those of `TwelveLabsEmbeddingModelHandler` (RunInference): validated, packed, deduplicated within
a batch, `max_in_flight` at a time, paced and retried as in the job. Batches hold `min_batch_size` to
`max_batch_size` items (default 8 x max_in_flight to 512).

`MLTransform` maps each element one to one; a media item's segments are flattened by the PTransform this manager
gives MLTransform (RunInference, then a FlatMap), so the usage above holds for every modality. Nothing here
imports qdrant-client or pymilvus: those are the sinks' (extra `rag`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import uuid
from typing import Any, Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference
from apache_beam.ml.rag.types import EmbeddableItem, Embedding
from apache_beam.ml.transforms.base import EmbeddingsManager, EmbeddingTypeAdapter, _EmbeddingHandler

from transforms.progress import NAMESPACE
from transforms.public.embed import TwelveLabsOptions
from transforms.public.mltransform import ON_ERROR, TwelveLabsEmbeddingFailed
from transforms.public.model_handler import EmbeddingError, TwelveLabsEmbeddingModel, TwelveLabsEmbeddingModelHandler

__all__ = ["MEDIA_KEYS", "SEGMENT_IDS", "TWELVELABS_SEGMENT_NAMESPACE", "TwelveLabsEmbeddings", "segment_id"]

_LOGGER = logging.getLogger(__name__)

# The metadata keys naming an item's audio or video (a URL or a path).
MEDIA_KEYS = ("video", "audio")
SEGMENT_IDS = ("uuid", "suffix")
# uuid5 namespace of the segment ids (a fixed value: the same item and segment get the same id on every run).
TWELVELABS_SEGMENT_NAMESPACE = uuid.UUID("5b0c6a3e-8f1d-5e7a-9c42-1d7e0f6b2a91")
# What a segment adds to (or overwrites in) its item's metadata.
SEGMENT_KEYS = ("source_id", "modality", "segment_index", "start_offset_sec", "end_offset_sec", "embedding_option",
                "embedding_scope")
# An example field the handler turns into a temporary `image_file` (the job's validation takes files, not bytes).
_IMAGE_BYTES = "_image_bytes"


def segment_id(item_id: str, segment_index: int, segment_ids: str = "uuid") -> str:
    """The id of an audio or video item's segment (see the module's docstring)."""
    key = f"{item_id}#{segment_index}"
    return key if segment_ids == "suffix" else str(uuid.uuid5(TWELVELABS_SEGMENT_NAMESPACE, key))


def _is_url(value: str) -> bool:
    return value.strip().lower().startswith(("http://", "https://"))


def _invalid(code: str, message: str) -> EmbeddingError:
    return EmbeddingError(code, message, "permanent")


def _example(item: Any) -> Any:
    """An item as the handler's example (manifest fields), or the EmbeddingError saying why it has none."""
    if not isinstance(item, EmbeddableItem):
        return _invalid("invalid_example", f"TwelveLabsEmbeddings takes EmbeddableItems, got {type(item).__name__}")
    metadata = item.metadata or {}
    media = [key for key in MEDIA_KEYS if metadata.get(key) is not None]
    if len(media) > 1:
        return _invalid("ambiguous_item", "an item embeds one input: metadata has both `audio` and `video`")
    if media:
        modality = media[0]
        value = metadata[modality]
        if not isinstance(value, str):
            return _invalid("invalid_type", f"metadata[{modality!r}] must be a URL or a path (a string), got "
                                            f"{type(value).__name__}")
        return {f"{modality}_url" if _is_url(value) else f"{modality}_file": value}
    content = item.content
    text, image = getattr(content, "text", None), getattr(content, "image", None)
    if text is not None and image is not None:
        return _invalid("ambiguous_item", "an item embeds one input: content has both text and image (put a "
                                          "caption in the metadata)")
    if image is not None:
        if isinstance(image, (bytes, bytearray, memoryview)):
            return {_IMAGE_BYTES: bytes(image)}
        if not isinstance(image, str):
            return _invalid("invalid_type", "content.image must be a URL, a path or bytes, got "
                                            f"{type(image).__name__}")
        return {"image_url" if _is_url(image) else "image_file": image}
    if text is not None:
        return {"text": text}
    return _invalid("no_input", "the item has no content.text, content.image, metadata['audio'] or "
                                "metadata['video']")


def _examples(items: Sequence[Any]) -> List[Any]:
    """The adapter's input_fn: never raises, so one bad item follows `on_error` like any other failure."""
    return [_example(item) for item in items]


class _ToEmbeddedItems:
    """The adapter's output_fn: for each item, the list of embedded items it becomes (RunInference emits one list
    per item; the manager's PTransform flattens them). Raises for on_error="raise"."""

    def __init__(self, on_error: str = "raise", segment_ids: str = "uuid"):
        self.on_error = on_error
        self.segment_ids = segment_ids

    def __call__(self, items: Sequence[EmbeddableItem], inferences: Sequence[Any]) -> List[List[EmbeddableItem]]:
        inferences = [EmbeddingError("no_result", "the API returned no segment", "transient")
                      if not isinstance(inference, EmbeddingError) and not inference.get("segments") else inference
                      for inference in inferences]
        failures = [(item, inference) for item, inference in zip(items, inferences)
                    if isinstance(inference, EmbeddingError)]
        if failures and self.on_error == "raise":
            item, first = failures[0]
            item_id = getattr(item, "id", None)
            raise TwelveLabsEmbeddingFailed(
                f"{len(failures)} of {len(items)} items could not be embedded; the first, id {item_id!r}: "
                f"{first.code}: {first.message} (on_error='none' drops them instead)")
        if failures:
            Metrics.counter(NAMESPACE, "rag_items_dropped").inc(len(failures))
            item, first = failures[0]
            _LOGGER.warning("TwelveLabsEmbeddings dropped %d of %d items; the first, id %r: %s: %s", len(failures),
                            len(items), getattr(item, "id", None), first.code, first.message)
        return [[] if isinstance(inference, EmbeddingError) else self._embedded(item, inference)
                for item, inference in zip(items, inferences)]

    def _embedded(self, item: EmbeddableItem, inference: Dict[str, Any]) -> List[EmbeddableItem]:
        segments = inference["segments"]
        if segments[0]["modality"] in ("text", "image"):
            # A text or an image has one vector: the item keeps its id, index and metadata.
            return [dataclasses.replace(item, metadata=dict(item.metadata or {}),
                                        embedding=Embedding(dense_embedding=segments[0]["embedding"]))]
        out = []
        for segment in segments:
            metadata = dict(item.metadata or {})
            metadata.update(source_id=item.id, modality=segment["modality"], segment_index=segment["segment_index"],
                            start_offset_sec=segment["start_sec"], end_offset_sec=segment["end_sec"],
                            embedding_option=segment["embedding_option"],
                            embedding_scope=segment["embedding_scope"])
            out.append(dataclasses.replace(item, id=segment_id(item.id, segment["segment_index"], self.segment_ids),
                                           metadata=metadata,
                                           embedding=Embedding(dense_embedding=segment["embedding"])))
        return out


class _ItemExamplesHandler(TwelveLabsEmbeddingModelHandler):
    """The RunInference handler under the adapter: examples of one input each in, one inference each out (the
    `segments` output, or an EmbeddingError). Items the adapter refused are not called; image bytes go to a
    temporary folder for the batch's calls and are deleted after them."""

    def __init__(self, options: TwelveLabsOptions, **batching):
        super().__init__(options, output="segments", **batching)

    def run_inference(self, batch: Sequence[Any], model: TwelveLabsEmbeddingModel,
                      inference_args: Optional[Dict[str, Any]] = None) -> List[Any]:
        inferences: List[Any] = list(batch)  # the adapter's EmbeddingErrors stay as they are
        examples, positions = [], []
        folder = None
        try:
            for index, example in enumerate(batch):
                if isinstance(example, EmbeddingError):
                    continue
                if _IMAGE_BYTES in example:
                    folder = folder or tempfile.mkdtemp(prefix="tl-rag-images-")
                    path = os.path.join(folder, f"image-{index}")
                    with open(path, "wb") as f:
                        f.write(example[_IMAGE_BYTES])
                    example = {"image_file": path}
                examples.append(example)
                positions.append(index)
            results = super().run_inference(examples, model, inference_args) if examples else []
            for index, result in zip(positions, results):
                inferences[index] = result.inference
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        return inferences

    def __repr__(self) -> str:
        return f"TwelveLabsEmbeddings(model={self.options.model!r})"


class _EmbedItems(beam.PTransform):
    """What MLTransform applies: RunInference over the items (Beam's embedding handler with this manager's adapter),
    then the lists of embedded items flattened (a media item gives one item per segment)."""

    def __init__(self, manager: "TwelveLabsEmbeddings"):
        super().__init__(label=f"TwelveLabsEmbeddings({manager.options.model})")
        self.manager = manager
        self._exception_handling: Optional[Dict[str, Any]] = None

    def with_exception_handling(self, **kwargs) -> "_EmbedItems":
        """As RunInference's: `pcoll | this` gives (embedded items, failed batches with their errors)."""
        self._exception_handling = kwargs
        return self

    def _inference(self) -> RunInference:
        return RunInference(model_handler=_EmbeddingHandler(self.manager), inference_args=self.manager.inference_args)

    def annotations(self) -> Dict[str, Any]:
        # MLTransform names a failed batch's transform by its `model_handler` annotation, as RunInference's.
        return {"model_handler": f"TwelveLabsEmbeddings(model={self.manager.options.model!r})",
                "model_handler_type": f"{_ItemExamplesHandler.__module__}.{_ItemExamplesHandler.__qualname__}",
                **super().annotations()}

    def expand(self, pcoll):
        inference = self._inference()
        if self._exception_handling is None:
            lists = pcoll | "RunInference" >> inference
            return lists | "Segments" >> beam.FlatMap(_flatten).with_output_types(EmbeddableItem)
        lists, dlq = pcoll | "RunInference" >> inference.with_exception_handling(**self._exception_handling)
        return lists | "Segments" >> beam.FlatMap(_flatten).with_output_types(EmbeddableItem), dlq


def _flatten(items: List[EmbeddableItem]) -> List[EmbeddableItem]:
    return items


class TwelveLabsEmbeddings(EmbeddingsManager):
    """MLTransform embeddings manager: `EmbeddableItem`s in, embedded `EmbeddableItem`s out (see the module).

    Args:
      options: model, endpoint, rate, in-flight calls, retries, key source (TwelveLabsOptions).
      on_error: "raise" (the batch fails with TwelveLabsEmbeddingFailed; see MLTransform.with_exception_handling)
        or "none" (an item that cannot be embedded is dropped).
      segment_ids: "uuid" (default; a valid Qdrant point id) or "suffix" (`f"{id}#{segment_index}"`).
      min_batch_size, max_batch_size: RunInference batching (default 8 x max_in_flight to 512).
    """

    def __init__(self, options: Optional[TwelveLabsOptions] = None, *, on_error: str = "raise",
                 segment_ids: str = "uuid", **kwargs):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
        if segment_ids not in SEGMENT_IDS:
            raise ValueError(f"segment_ids must be one of {list(SEGMENT_IDS)}, got {segment_ids!r}")
        if "columns" in kwargs or "type_adapter" in kwargs:
            raise TypeError("TwelveLabsEmbeddings works on EmbeddableItems: it takes no columns or type_adapter "
                            "(see TwelveLabsTextEmbeddings for dict rows)")
        self.options = options or TwelveLabsOptions()
        self.on_error = on_error
        self.segment_ids = segment_ids
        adapter = EmbeddingTypeAdapter(input_fn=_examples, output_fn=_ToEmbeddedItems(on_error, segment_ids))
        super().__init__(type_adapter=adapter, **kwargs)
        self.get_model_handler()  # checks the options now, not on a worker

    def get_model_handler(self) -> _ItemExamplesHandler:
        return _ItemExamplesHandler(self.options, min_batch_size=self.min_batch_size,
                                    max_batch_size=self.max_batch_size)

    def get_ptransform_for_processing(self, **kwargs) -> beam.PTransform:
        return _EmbedItems(self)
