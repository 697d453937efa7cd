"""The records that flow between the pipeline's steps: manifest rows, items, calls, outcomes, dead letters."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Dict, List, Literal, Optional, Tuple

from apache_beam.pvalue import TaggedOutput

__all__ = ["MODALITIES", "Call", "DeadLetter", "DeadLetterOutput", "Deferred", "DeferredOutput", "Item", "ManifestRow",
           "Outcome", "content_hash", "manifest_format"]

MODALITIES = ("text", "image", "audio", "video")
# Output tags of the steps that can reject or postpone what they were given.
DEAD_LETTERS = "dead_letters"
DEFERRED = "deferred"
# How an item is sent: packed into a v1 `POST /embed`, alone to v2's `POST /embed-v2`, or as a v2 async task.
ROUTES = ("v1", "v2", "task")
# Manifest columns the pipeline understands; every other column is carried through as attributes.
INPUT_FIELDS = ("id", "text", "text_truncate", "image_url", "image_file", "audio_url", "audio_file",
                "audio_start_offset_sec", "video_url", "video_file", "asset_id", "media_type", "start_sec",
                "end_sec")

# Manifest files by name: a format, optionally compressed.
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_COMPRESSED = (".gz", ".bz2", ".zst", ".deflate", ".xz")


def manifest_format(path: str) -> str:
    name = path.lower()
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for suffix, fmt in _FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"manifest {path}: unknown format (use .jsonl, .csv or .parquet, optionally compressed)")


def _compact_reduce(self):
    # Pickled as a plain tuple of values, not a dict of field names: these records are what local
    # runners hold in memory while grouping, so every byte counts once per manifest row.
    return type(self), tuple(getattr(self, f.name) for f in dataclasses.fields(self))


@dataclasses.dataclass
class ManifestRow:
    source: str        # the manifest's path
    row_number: int    # 1-based data row number within the manifest
    fields: Dict[str, Any]
    fingerprint: Optional[int] = None  # of the row as written (key_index.SavedRows), when the job keeps them

    __reduce__ = _compact_reduce


@dataclasses.dataclass
class Item:
    """One modality of one manifest row: what a single slot of an API call embeds."""

    id: str
    modality: str
    source: str
    row_number: int
    content_hash: str
    attributes: str = "{}"           # JSON of the row's other columns
    text: Optional[str] = None
    text_truncate: Optional[str] = None
    url: Optional[str] = None
    file_path: Optional[str] = None  # resolved path, read through Beam FileSystems at call time
    audio_start_offset_sec: Optional[float] = None
    route: str = "v1"
    asset_id: Optional[str] = None     # v2: media already uploaded to the platform
    start_sec: Optional[float] = None  # v2 audio/video: the clip to embed
    end_sec: Optional[float] = None
    duration_sec: Optional[float] = None  # measured before any call for local files; None when unknown
    # A file past the inline limit (or any audio/video file with assets.upload: always) is uploaded as an asset
    # first; its bytes' sha256 names the asset in the output's asset journal, so identical files upload once.
    upload: bool = False
    file_sha256: Optional[str] = None
    file_size: Optional[int] = None
    # Other items with the same content, model and options: they get this item's result, for free.
    copies: List["Item"] = dataclasses.field(default_factory=list)

    __reduce__ = _compact_reduce

    def with_copies(self) -> List["Item"]:
        return [self] + self.copies

    @property
    def input_file_name(self) -> Optional[str]:
        return None if self.file_path is None else self.file_path.replace("\\", "/").rsplit("/", 1)[-1]

    def key(self) -> Tuple[str, str]:
        return self.id, self.modality


@dataclasses.dataclass
class Call:
    """Up to one item per modality, sent as one API call."""

    items: List[Item]


# Dead-letter codes of failures that are the service's or the moment's, not the item's: the next run
# tries them again. Every other code is the item's own (bad input, refused by the API): permanent.
TRANSIENT_CODES = frozenset({"connection_failed", "timeout", "server_error", "malformed_response", "decoder_missing",
                             "too_many_requests", "unreadable_file", "internal_error", "service_unavailable",
                             "endpoint_not_found"})


def failure_kind(code: str, http_status: Optional[int] = None) -> str:
    if code in TRANSIENT_CODES or (http_status is not None and (http_status >= 500 or http_status in (408, 409,
                                                                                                      429))):
        return "transient"
    return "permanent"


@dataclasses.dataclass
class DeadLetter:
    id: Optional[str]
    source: str
    row_number: Optional[int]
    modality: Optional[str]
    stage: str          # read | validate | call
    code: str
    message: str
    http_status: Optional[int] = None
    attempts: int = 0
    content_hash: Optional[str] = None   # call stage: what was sent, so a later run knows if it changed
    row: Optional[Dict[str, Any]] = None  # the manifest row (its fields), to fix or re-drive it
    carried: bool = False                # a permanent failure of an earlier run, for unchanged content: not re-tried

    def as_dict(self) -> Dict[str, Any]:
        record = dataclasses.asdict(self)
        record["kind"] = failure_kind(self.code, self.http_status)
        return record


def item_row(item: "Item") -> Dict[str, Any]:
    """The manifest fields an item came from (its own modality's input, the id and the other columns)."""
    import json

    row: Dict[str, Any] = {"id": item.id}
    if item.text is not None:
        row["text"] = item.text
        if item.text_truncate is not None:
            row["text_truncate"] = item.text_truncate
    if item.url is not None:
        row[f"{item.modality}_url"] = item.url
    if item.file_path is not None:
        row[f"{item.modality}_file"] = item.file_path
    if item.asset_id is not None:
        row.update(asset_id=item.asset_id, media_type=item.modality)
    for name in ("audio_start_offset_sec", "start_sec", "end_sec"):
        if getattr(item, name) is not None:
            row[name] = getattr(item, name)
    try:
        row.update(json.loads(item.attributes or "{}"))
    except ValueError:
        pass
    return row


@dataclasses.dataclass
class Deferred:
    """An item not called because the quota (or the run's call budget) is spent: the next run takes it."""

    id: str
    source: str
    row_number: int
    modality: str
    reason: str                        # quota_exhausted | max_calls | task_pending | service_unavailable
    resets_at: Optional[float] = None  # UTC epoch seconds, when the API said
    detail: Optional[str] = None       # e.g. the pending task's id

    def as_dict(self) -> Dict[str, Any]:
        record = dataclasses.asdict(self)
        record["resets_at"] = iso_utc(self.resets_at)  # every time the job writes is ISO 8601 UTC
        return record


@dataclasses.dataclass
class Outcome:
    """A successful item: its segments as (start, end, vector) with offsets None for non-audio."""

    item: Item
    model_name: str
    segments: List[Tuple[Optional[float], Optional[float], List[float]]]
    attempts: int = 1
    # v2: (embedding_option, embedding_scope) of each segment, in the same order; None on v1.
    labels: Optional[List[Tuple[Optional[str], Optional[str]]]] = None


# The tagged outputs of the steps that reject or postpone, as DoFn return annotations (Beam 2.78 reads them):
# `-> Iterable[Union[Item, DeadLetterOutput]]`.
DeadLetterOutput = TaggedOutput[Literal[DEAD_LETTERS], DeadLetter]
DeferredOutput = TaggedOutput[Literal[DEFERRED], Deferred]


def iso_utc(epoch: Optional[float]) -> Optional[str]:
    """ISO 8601 UTC (second precision) of an epoch time, None for None or a number no clock can show."""
    import datetime
    import math

    if epoch is None or not isinstance(epoch, (int, float)) or not math.isfinite(epoch):
        return None
    try:
        moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).replace(microsecond=0)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat().replace("+00:00", "Z")


def content_hash(*parts: Any) -> str:
    """sha256 over the parts; bytes are hashed as they are, everything else by its repr."""
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, (bytes, bytearray)) else repr(part).encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()
