"""The whole job once over the bad-input corpus (tests/data/bad_inputs): every row gets the outcome it is
labelled with, dead letters name their row and field, good rows next to bad ones are embedded, exactly once."""
import collections
import importlib.util
import json
import os

import numpy as np
import pytest

from embed_client import EmbedClient
from embed_emulator import Emulator, EmulatorConfig
from tests.helpers import (TEST_KEY, StaticFiles, assert_exactly_once, make_config, read_dead_letters,
                           read_segments, run)
from transforms.records import manifest_format

_SPEC = importlib.util.spec_from_file_location(
    "make_corpus", os.path.join(os.path.dirname(__file__), "data", "bad_inputs", "make_corpus.py"))
corpus = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(corpus)


def _named_fields(modality, code):
    """The fields a validation dead letter may name; its message must name one of them."""
    if modality is None:
        return ["`text`"] if code == "no_input" else ["`id`"]
    if code == "invalid_text_truncate":
        return ["`text_truncate`"]
    if modality == "text":
        return ["`text`"]
    if code == "invalid_offset":
        return ["`audio_start_offset_sec`"]
    if code == "invalid_url":
        return [f"`{modality}_url`"]
    if code == "invalid_type":
        return [f"`{modality}_url`", f"`{modality}_file`"]
    return [f"`{modality}_file`"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("bad_inputs"))
    os.makedirs(os.path.join(folder, "media"))
    output = os.path.join(folder, "out")
    with pytest.MonkeyPatch.context() as mp, StaticFiles(os.path.join(folder, "media")) as files, \
            Emulator(EmulatorConfig()) as emu:
        mp.setenv("TWELVE_LABS_API_KEY", TEST_KEY)
        manifests, expected, says = corpus.make_corpus(folder, files.url)
        summary = run(make_config(output, manifests), emu.base_url)
        client = EmbedClient(api_key=TEST_KEY, base_url=emu.base_url)
        url_vector = client.create("marengo3.0", image_url=f"{files.url}/good.png").image_embedding.segments[0].float_
        file_vector = client.create("marengo3.0", image_file=os.path.join(folder, "media", "other.png")
                                    ).image_embedding.segments[0].float_
        yield dict(folder=folder, output=output, expected=expected, says=says, summary=summary, url=files.url,
                   url_vector=url_vector, file_vector=file_vector)


def _outcomes(output):
    """(manifest name, row) -> {modality: 'ok' or code}, and the dead letters by (name, row)."""
    got, letters = collections.defaultdict(dict), collections.defaultdict(list)
    for row in read_segments(output).select(["source", "row_number", "modality", "segment_index"]).to_pylist():
        if row["segment_index"] == 0:
            got[(os.path.basename(row["source"]), row["row_number"])][row["modality"]] = "ok"
    for letter in read_dead_letters(output):
        key = (os.path.basename(letter["source"]), letter["row_number"])
        got[key][letter["modality"]] = letter["code"]
        letters[key].append(letter)
    return got, letters


def test_corpus_covers_at_least_40_bad_rows_in_every_format(result):
    bad = collections.Counter()
    for (name, _), spec in result["expected"].items():
        if any(code != "ok" for code in spec.values()):
            bad[manifest_format(name)] += 1
    assert sum(bad.values()) >= 40 and bad["jsonl"] >= 10 and bad["csv"] >= 10 and bad["parquet"] >= 10, bad


def test_every_row_gets_the_outcome_it_is_labelled_with(result):
    got, _ = _outcomes(result["output"])
    wrong = {}
    for key, spec in result["expected"].items():
        actual = got.get(key, {})
        if set(actual) != set(spec) or any(actual[m] not in spec[m].split("|") for m in spec):
            wrong[key] = (spec, actual)
    assert not wrong, wrong
    assert set(got) <= set(result["expected"]), set(got) - set(result["expected"])


def test_each_row_and_modality_lands_exactly_once(result):
    assert_exactly_once(result["output"], len(result["expected"]))
    assert result["summary"]["rows_read"] == len(result["expected"])
    by_reason = collections.Counter(c for spec in result["expected"].values() for c in spec.values() if c != "ok")
    assert sum(result["summary"]["dead_letters_by_reason"].values()) == sum(by_reason.values())


def test_dead_letters_name_their_row_and_field(result):
    _, letters = _outcomes(result["output"])
    for (name, row), found in letters.items():
        for letter in found:
            message = letter["message"]
            assert message.startswith(f"{letter['source']} row {row}: "), message
            if letter["stage"] == "read":
                assert letter["modality"] is None and letter["id"] is None, letter
            elif letter["stage"] == "validate":
                fields = _named_fields(letter["modality"], letter["code"])
                assert any(field in message for field in fields), (fields, message)
        text = result["says"].get((name, row))
        if text:
            assert any(text in letter["message"] for letter in found), (name, row, text, found)
    assert all("0x" not in l["message"] for found in letters.values() for l in found if l["code"] == "corrupt_file")


def test_url_wins_over_a_file_and_is_what_gets_embedded(result):
    rows = {r["id"]: r for r in read_segments(result["output"]).to_pylist() if r["modality"] == "image"}
    for row_id in ("j-url-wins", "j-url-wins-2"):
        row = rows[row_id]
        assert (row["input_url"], row["input_file"]) == (f"{result['url']}/good.png", None)
        np.testing.assert_array_equal(np.asarray(row["embedding"], np.float32),
                                      np.asarray(result["url_vector"], np.float32))
    # other.png is a different image: had the file been sent, the vector would differ.
    assert not np.allclose(result["url_vector"], result["file_vector"])
    assert rows["j-glob-name"]["input_file"] == "shot[1]*?.png"


def test_good_rows_carry_their_label_as_an_attribute(result):
    table = read_segments(result["output"]).to_pylist()
    labelled = [r for r in table if "expect" in json.loads(r["attributes"])]
    assert len(labelled) >= 30
    for row in labelled:
        assert f"{row['modality']}:ok" in json.loads(row["attributes"])["expect"], row["id"]
