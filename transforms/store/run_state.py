"""What one run has seen so far, per worker process: the first row of each id and the fate of each content.

Used when the whole job runs in one process (the local runner): the duplicate-id rule and the dedup of
identical inputs then need no grouping, so nothing holds every row and calls start with the first rows.
Fingerprints in numpy tables keep it to a few dozen bytes a row. On runners with several worker processes
the job groups by id and by content instead (a shuffle, which those runners keep on disk).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from apache_beam.utils.shared import Shared

from transforms.store.key_index import FingerprintTable, KeyLookup, SavedRows, fingerprint

__all__ = ["RunState", "SharedRunState"]

_LOGGER = logging.getLogger(__name__)

CALL, COPY, EMBEDDED, FAILED, DEFERRED = "call", "copy", "embedded", "failed", "deferred"
_CODES = {CALL: 1, EMBEDDED: 2, FAILED: 3, DEFERRED: 4}
_NAMES = {v: k for k, v in _CODES.items()}


class _Loaded:
    """A value loaded once, by whoever asks first (a DoFn, or the launcher's prefetch); the others wait for it.
    A load that fails or returns None is not kept: the next asker loads again (and a DoFn reports a failure)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._value = None

    def get(self, load: Callable[[], object]):
        with self._lock:
            if self._value is None:
                self._value = load()
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._value = None


class RunState:
    def __init__(self):
        self._lock = threading.Lock()
        self._ids = FingerprintTable()
        self._sources: List[str] = []
        self._source_index: Dict[str, int] = {}
        self._contents = FingerprintTable()
        self._elected: Dict[Tuple[str, str], int] = {}   # (id, modality) of an item in flight -> content
        self._copies: Dict[int, list] = {}                # content in flight -> items waiting for its result
        self._settled: Dict[int, object] = {}             # content that failed or was deferred -> its record
        self._saved_rows = _Loaded()
        self._key_lookup = _Loaded()
        self._checked_prefixes = _Loaded()  # manifest path -> saved_prefix.CheckedPrefix

    def release(self) -> None:
        """Every row has been read and every item settled: the tables go before finalize needs the memory."""
        with self._lock:
            self._ids, self._contents = FingerprintTable(), FingerprintTable()
            self._elected, self._copies, self._settled = {}, {}, {}
        self._saved_rows.clear()
        self._key_lookup.clear()
        self._checked_prefixes.clear()

    def key_lookup(self, output: str) -> KeyLookup:
        """The output's key index, loaded once per process and run. DoFns ask for it per bundle and keep no
        reference, so `release` frees it."""
        return self._key_lookup.get(lambda: KeyLookup.load(output))

    def saved_rows(self, output: Optional[str] = None, row_key: bytes = b"") -> Optional[SavedRows]:
        """The saved rows of earlier runs, loaded once per process and run (held as the key index is). Without
        `output`: what the reader loaded, if it keeps them (None otherwise)."""
        return self._saved_rows.get(lambda: SavedRows.load(output, row_key) if output else None)

    def checked_prefix(self, source: str):
        """The saved prefix the prefetch checked for this manifest (saved_prefix.CheckedPrefix), once; None if
        it checked none. Waits for a check under way: doing it again would only compete with it."""
        return self._checked_prefixes.get(dict).pop(source, None)

    def prefetch(self, output: str, row_key: bytes, manifests: Sequence[str] = ()) -> threading.Thread:
        """Loads the key index and the saved rows, then checks the JSONL manifests' saved prefixes, in a
        thread: the work overlaps the runner's start-up instead of delaying the first call after it."""
        def check() -> Dict[str, object]:
            from transforms.records import manifest_format
            from transforms.store.saved_prefix import check_prefix, load_prefix

            saved, checked = self.saved_rows(output, row_key), {}
            for path in manifests if saved is not None and len(saved) else ():
                if manifest_format(path) == "jsonl":
                    found = check_prefix(path, saved.key, lambda name: load_prefix(output, name), saved)
                    if found is not None:
                        checked[path] = found
            return checked

        def load() -> None:
            try:
                self.key_lookup(output)  # asked for first: when the reader's bundle starts
                self.saved_rows(output, row_key)
                self._checked_prefixes.get(check)
            except Exception as exc:  # the DoFns load again, and fail the job if it is real
                _LOGGER.debug("prefetching %s's key index failed: %s", output, exc)

        thread = threading.Thread(target=load, name="prefetch-key-index", daemon=True)
        thread.start()
        return thread

    def first_row(self, item_id: str, source: str, row_number: int) -> Optional[Tuple[str, int]]:
        """None when this row is the first with this id; else (manifest, row) of the row that has the id."""
        with self._lock:
            index = self._source_index.get(source)
            if index is None:
                index = self._source_index[source] = len(self._sources)
                self._sources.append(source)
        earlier = self._ids.put_if_absent(fingerprint(item_id), (index << 40) | row_number)
        if earlier is None:
            return None
        return self._sources[earlier >> 40], earlier & ((1 << 40) - 1)

    def claim(self, item) -> Tuple[str, Optional[object]]:
        """What to do with an item whose content may be in this run already: (CALL, None) to call it,
        (COPY, None) when it now waits for the first item's result, (EMBEDDED, None) when that result is
        already written, (FAILED | DEFERRED, record) to share the first item's fate."""
        content = fingerprint(item.content_hash)
        with self._lock:
            state = self._contents.put_if_absent(content, _CODES[CALL])
            if state is None:
                self._elected[(item.id, item.modality)] = content
                self._copies[content] = []
                return CALL, None
            if content in self._copies:
                self._copies[content].append(item)
                return COPY, None
            name = _NAMES[state]
            return name, self._settled.get(content)

    def settle(self, item_id: str, modality: str, fate: str, record) -> list:
        """The first item's result is out: returns the items that waited for it (none for other items)."""
        with self._lock:
            content = self._elected.pop((item_id, modality), None)
            if content is None:
                return []
            self._contents.set(content, _CODES[fate])
            if fate != EMBEDDED:
                self._settled[content] = record
            return self._copies.pop(content, [])


class SharedRunState:
    """A handle pickled into the DoFns of one pipeline; each worker process resolves it to one RunState."""

    def __init__(self, token: str):
        self._token = token
        self._shared = Shared()

    def acquire(self) -> RunState:
        return self._shared.acquire(RunState, tag=self._token)

    def prefetch(self, output: str, row_key: bytes, manifests: Sequence[str] = ()) -> None:
        """In the process the job runs in (the stream grouping's local runner): starts loading what the DoFns
        will ask for. The handle keeps the state alive until they acquire it (it is not pickled with it)."""
        self._held = self.acquire()
        self._held.prefetch(output, row_key, manifests)

    def __getstate__(self):
        return {"_token": self._token, "_shared": self._shared}
