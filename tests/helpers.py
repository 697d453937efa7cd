"""Shared test helpers: run the job against an emulator, read what it wrote, check the invariant."""
from __future__ import annotations

import glob
import http.server
import json
import os
import threading
from typing import Dict, List, Optional, Tuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from pipeline.config import JobConfig
from pipeline.run import run_job

TEST_KEY = "tlk_TEST_KEY_do_not_leak_7f3a9c"


def make_config(output: str, manifests: List[str], **overrides) -> JobConfig:
    config = JobConfig(manifests=manifests, output=output, base_url="http://unused", requests_per_minute=None,
                       max_in_flight=4, flush_sec=1.0, item_deadline_sec=60.0,
                       beam_args=["--runner=DirectRunner"])
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def run(config: JobConfig, base_url: str) -> dict:
    config.base_url = base_url
    return run_job(config, base_url=base_url)


def read_segments(output: str) -> pa.Table:
    files = sorted(glob.glob(os.path.join(output, "segments", "*.parquet")))
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f) for f in files])


def read_dead_letters(output: str) -> List[dict]:
    letters = []
    for path in sorted(glob.glob(os.path.join(output, "dead_letters", "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            letters += [json.loads(line) for line in f if line.strip()]
    return letters


def placements(output: str) -> Tuple[Dict[Tuple[str, int, str], int], Dict[Tuple[str, int, Optional[str]], int]]:
    """How many times each (source, row, modality) landed in the output and in the dead letters."""
    table = read_segments(output)
    embedded: Dict = {}
    if table.num_rows:
        for source, row, modality, index in zip(*(table.column(c).to_pylist()
                                                  for c in ("source", "row_number", "modality", "segment_index"))):
            if index == 0:
                key = (source, row, modality)
                embedded[key] = embedded.get(key, 0) + 1
    dead: Dict = {}
    for letter in read_dead_letters(output):
        key = (letter["source"], letter["row_number"], letter["modality"])
        dead[key] = dead.get(key, 0) + 1
    return embedded, dead


def assert_exactly_once(output: str, expected_rows: int) -> None:
    """Every manifest row and modality is in exactly one place: the output or the dead letters."""
    embedded, dead = placements(output)
    doubles = {k: n for k, n in {**embedded, **dead}.items() if n != 1}
    assert not doubles, f"landed more than once: {doubles}"
    both = set(embedded) & set(dead)
    assert not both, f"both embedded and dead-lettered: {both}"
    rows = {(s, r) for s, r, _ in embedded} | {(s, r) for s, r, _ in dead}
    assert len(rows) == expected_rows, (len(rows), expected_rows)


@pytest.fixture(name="http")
def loopback_http():
    """The `http` fixture: a requests session that ignores the environment's proxies (the emulators listen on
    loopback). A test module takes it with `from tests.helpers import loopback_http  # noqa: F401`."""
    session = requests.Session()
    session.trust_env = False  # never send 127.0.0.1 traffic to an env proxy
    yield session
    session.close()


def started_emulators(**defaults):
    """Body of a `make_emulator` fixture: `make(**knobs)` starts an emulator (these defaults under the knobs);
    every one started is stopped at the end. A module's fixture: `yield from started_emulators(...)`."""
    from embed_emulator import Emulator, EmulatorConfig

    started = []

    def make(**knobs):
        started.append(Emulator(EmulatorConfig(**{**defaults, **knobs})).start())
        return started[-1]

    try:
        yield make
    finally:
        for running in started:
            running.stop()


class StaticFiles:
    """Serves a folder over HTTP on 127.0.0.1, for image_url/audio_url inputs."""

    def __init__(self, folder: str):
        handler = lambda *a, **kw: _QuietHandler(*a, directory=folder, **kw)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def check_vectors_match_client(table, base_url, model, manifests_rows):
    """Each output vector equals the client's answer for that item alone (nothing attached to the wrong item).

    Identical requests are sent once.
    """
    import numpy as np

    from embed_client import EmbedClient

    client = EmbedClient(api_key=TEST_KEY, base_url=base_url)
    answers: Dict = {}
    by_key: Dict = {}
    for row in table.to_pylist():
        by_key.setdefault((row["id"], row["modality"]), []).append(row)
    for (item_id, modality), rows in by_key.items():
        fields = manifests_rows[item_id]
        kwargs = {}
        if modality == "video":  # Embed API v2: one call, its data[] in the job's stable order
            check_v2_rows_match_client(rows, client, model, fields)
            continue
        if modality == "text":
            kwargs = {"text": fields["text"], "text_truncate": fields.get("text_truncate")}
        elif fields.get(f"{modality}_url"):
            kwargs = {f"{modality}_url": fields[f"{modality}_url"]}
        else:
            kwargs = {f"{modality}_file": fields[f"{modality}_file"]}
        if modality == "audio" and fields.get("audio_start_offset_sec") is not None:
            kwargs["audio_start_offset_sec"] = float(fields["audio_start_offset_sec"])
        request = (modality, tuple(sorted(kwargs.items())))
        if request not in answers:
            answers[request] = getattr(client.create(model, **kwargs), f"{modality}_embedding")
        result = answers[request]
        rows.sort(key=lambda r: r["segment_index"])
        assert len(rows) == len(result.segments), (item_id, modality)
        for row, segment in zip(rows, result.segments):
            np.testing.assert_array_equal(np.asarray(row["embedding"], dtype=np.float32),
                                          np.asarray(segment.float_, dtype=np.float32))
            if modality == "audio":
                assert (row["start_offset_sec"], row["end_offset_sec"]) == (
                    segment.start_offset_sec, segment.end_offset_sec)
            else:
                assert row["start_offset_sec"] is None and row["end_offset_sec"] is None


V2_SCOPE_ORDER = {None: 0, "clip": 0, "asset": 1}
V2_OPTION_ORDER = {None: 0, "visual": 1, "audio": 2, "transcription": 3, "fused": 5}


def v2_sorted(data):
    """v2 data[] in the order the job writes segments: clips by time, then the asset; options in order."""
    return sorted(data, key=lambda d: (V2_SCOPE_ORDER.get(d.embedding_scope, 0), d.start_sec or 0.0,
                                       d.end_sec or 0.0, V2_OPTION_ORDER.get(d.embedding_option, 9)))


def check_v2_rows_match_client(rows, client, model, fields):
    import base64

    with open(fields["video_file"], "rb") as f:
        source = {"base64_string": base64.b64encode(f.read()).decode("ascii")}
    video = {"media_source": source}
    for name in ("start_sec", "end_sec"):
        if fields.get(name) is not None:
            video[name] = float(fields[name])
    assert_v2_rows(rows, v2_sorted(client.v2.create("video", model, video=video).data))


def assert_v2_rows(rows, expected) -> None:
    """An item's output rows are the v2 answer's data[] (`expected`, in v2_sorted order): vectors, spans, labels."""
    import numpy as np

    rows = sorted(rows, key=lambda r: r["segment_index"])
    assert len(rows) == len(expected)
    for row, entry in zip(rows, expected):
        np.testing.assert_array_equal(np.asarray(row["embedding"], dtype=np.float32),
                                      np.asarray(entry.embedding, dtype=np.float32))
        assert (row["start_offset_sec"], row["end_offset_sec"]) == (entry.start_sec, entry.end_sec)
        assert (row["embedding_option"], row["embedding_scope"]) == (entry.embedding_option, entry.embedding_scope)
