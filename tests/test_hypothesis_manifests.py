"""Property: for any mix of good and bad rows over JSONL/CSV/Parquet manifests, every row and modality lands
exactly once, and each gets the outcome (embedded or its code) the generator predicts."""
import collections
import csv
import json
import os
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embed_emulator import Emulator, EmulatorConfig, synth
from tests.helpers import TEST_KEY, assert_exactly_once, make_config, placements, read_dead_letters, run

COLUMNS = ["id", "text", "text_truncate", "image_url", "image_file", "audio_file", "audio_start_offset_sec"]
# kind -> predicted outcome per modality (None: the whole row); "malformed" depends on the format.
OUTCOMES = {
    "text": {"text": "ok"}, "image": {"image": "ok"}, "audio": {"audio": "ok"},
    "multi": {"text": "ok", "image": "ok", "audio": "ok"},
    "text_and_missing_image": {"text": "ok", "image": "missing_file"},
    "empty": {None: "empty_row"}, "no_input": {None: "no_input"}, "tiny_image": {"image": "image_too_small"},
    "negative_offset": {"audio": "invalid_offset"}, "bad_truncate": {"text": "invalid_text_truncate"},
    "bad_url": {"image": "invalid_url"}, "bad_id": {None: "invalid_id"}, "malformed": None, "dup": {"text": "ok"},
}
# Rows whose id never reaches the duplicate check.
NO_ID = {"empty", "malformed", "bad_id"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    media = tmp_path_factory.mktemp("media")
    files = {"good.png": synth.png_bytes(140, 140, seed=3), "tiny.png": synth.png_bytes(32, 32, seed=4),
             "good.wav": synth.wav_bytes(2.0, 330.0)}
    for name, data in files.items():
        (media / name).write_bytes(data)
    with pytest.MonkeyPatch.context() as mp, Emulator(EmulatorConfig()) as emu:
        mp.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
        yield {"media": str(media), "url": emu.base_url, "tmp": str(tmp_path_factory.mktemp("runs"))}


def _fields(kind, n, media, ids):
    """The row's fields for a kind; n is its global index, `ids` the ids given so far."""
    row = {"id": f"r{n}"}
    text = f"caption {n} about {('dogs', 'rain', 'goals')[n % 3]}"
    if kind in ("text", "dup", "multi", "text_and_missing_image", "bad_truncate"):
        row["text"] = text
    if kind in ("image", "multi"):
        row["image_file"] = os.path.join(media, "good.png")
    if kind in ("audio", "multi", "negative_offset"):
        row["audio_file"] = os.path.join(media, "good.wav")
        row["audio_start_offset_sec"] = "-1" if kind == "negative_offset" else ("0.5" if n % 2 else None)
    if kind == "text_and_missing_image":
        row["image_file"] = os.path.join(media, f"missing{n}.png")
    if kind == "tiny_image":
        row["image_file"] = os.path.join(media, "tiny.png")
    if kind == "bad_truncate":
        row["text_truncate"] = "middle"
    if kind == "bad_url":
        row["image_url"] = f"ftp://example.com/{n}.png"
    if kind == "bad_id":
        row["id"] = f"r{n}\x01"
    if kind == "dup" and ids:
        row["id"] = ids[n % len(ids)]
    return {k: v for k, v in row.items() if v is not None}


def _write(path, fmt, rows):
    """rows: (kind, fields); a malformed or empty row is rendered the way its format allows."""
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for kind, fields in rows:
                line = json.dumps(fields)
                if kind == "empty":
                    line = ""
                elif kind == "malformed":
                    line = line[:-1] + ","  # an object that never closes
                f.write(line + "\n")
    elif fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for kind, fields in rows:
                values = [fields.get(c, "") for c in COLUMNS]
                if kind == "empty":
                    values = [""] * len(COLUMNS)
                elif kind == "malformed":
                    values.append("one column too many")
                writer.writerow(values)
    else:
        # Parquet cannot hold a malformed row: both render as an all-null row.
        records = [{} if kind in ("empty", "malformed") else fields for kind, fields in rows]
        pq.write_table(pa.table({c: pa.array([r.get(c) for r in records], pa.string()) for c in COLUMNS}), path)


def _predict(manifests):
    """(path, row) -> {modality: outcome}, applying the first-row-keeps-the-id rule across manifests."""
    predicted, by_id = {}, collections.defaultdict(list)
    for path, fmt, rows in manifests:
        for number, (kind, fields) in enumerate(rows, start=1):
            outcome = OUTCOMES[kind] or {None: "empty_row" if fmt == "parquet" else "malformed_row"}
            predicted[(path, number)] = dict(outcome)
            if kind not in NO_ID:
                by_id[fields["id"]].append((path, number))
    for keys in by_id.values():
        for key in sorted(keys)[1:]:
            predicted[key] = {None: "duplicate_id"}
    return predicted


manifest_strategy = st.lists(
    st.tuples(st.sampled_from(["jsonl", "csv", "parquet"]), st.lists(st.sampled_from(sorted(OUTCOMES)),
                                                                     min_size=1, max_size=8)),
    min_size=1, max_size=3)


@settings(max_examples=8, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=manifest_strategy)
def test_random_manifests_land_exactly_once_as_predicted(env, spec):
    folder = tempfile.mkdtemp(dir=env["tmp"])
    manifests, ids, n = [], [], 0
    for index, (fmt, kinds) in enumerate(spec):
        rows = []
        for kind in kinds:
            fields = _fields(kind, n, env["media"], ids)
            if kind not in NO_ID:
                ids.append(fields["id"])
            rows.append((kind, fields))
            n += 1
        path = os.path.join(folder, f"m{index}.{fmt}")
        _write(path, fmt, rows)
        manifests.append((path, fmt, rows))
    predicted = _predict(manifests)
    output = os.path.join(folder, "out")

    summary = run(make_config(output, [p for p, _, _ in manifests], flush_sec=5.0), env["url"])

    assert_exactly_once(output, len(predicted))
    embedded, dead = placements(output)
    want_ok = sum(1 for o in predicted.values() for c in o.values() if c == "ok")
    assert (len(embedded), len(dead)) == (want_ok, sum(len(o) for o in predicted.values()) - want_ok)
    got = collections.defaultdict(dict)
    for source, row, modality in embedded:
        got[(source, row)][modality] = "ok"
    for letter in read_dead_letters(output):
        got[(letter["source"], letter["row_number"])][letter["modality"]] = letter["code"]
    assert dict(got) == predicted
    assert summary["rows_read"] == len(predicted)
