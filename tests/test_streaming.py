"""EmbedWithTwelveLabs on streaming input: TestStream on Beam's BundleBasedDirectRunner (--streaming) against
the emulator, and the packer's bounded buffer with its flushes by size and by time."""
import time
import types

import apache_beam as beam
import pytest
import requests
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from embed_emulator import Emulator, EmulatorConfig, synth
from tests.helpers import TEST_KEY, StaticFiles
from transforms import EmbedWithTwelveLabs, TwelveLabsOptions
from transforms.records import Item
from transforms.stages.pack import CallPacker, _PackCallsFn

GATE = "gate"


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("TWELVE_LABS_API_KEY", TEST_KEY)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream-media")
    (folder / "kite.png").write_bytes(synth.png_bytes(160, 140, seed=4))
    (folder / "sea.wav").write_bytes(synth.wav_bytes(4.0, 330.0))
    with StaticFiles(str(folder)) as server:
        yield server.url


class _Gate(beam.DoFn):
    """Holds the first input of a later window until the emulator has answered `calls` calls (or 30 s pass),
    and reports how many it had answered: the earlier window was called while the stream was still going."""

    def __init__(self, stats_url, first_id, calls):
        self._url, self._first_id, self._calls = stats_url, first_id, calls

    def process(self, row):
        if row["id"] == self._first_id:
            deadline, answered = time.monotonic() + 30, 0
            while time.monotonic() < deadline:
                answered = requests.get(self._url, timeout=5).json()["calls_ok"]
                if answered >= self._calls:
                    break
                time.sleep(0.05)
            yield beam.pvalue.TaggedOutput(GATE, answered)
        yield row


def _stats_url(emu):
    return emu.base_url.rsplit("/v1.3", 1)[0] + "/emulator/stats"


def _run(stream, emu, gate, windowing=None):
    """(id, modality, window start or None) of every first segment, and what the gate saw."""
    p = beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions(["--streaming"]))
    gated = p | stream | beam.ParDo(gate).with_outputs(GATE, main="rows")
    rows = gated.rows if windowing is None else gated.rows | beam.WindowInto(windowing)
    result = rows | EmbedWithTwelveLabs(TwelveLabsOptions(base_url=emu.base_url, max_wait_sec=1))

    def placed(row, w=beam.DoFn.WindowParam):
        start = None if isinstance(w, window.GlobalWindow) else w.start.micros // 1_000_000
        return row.id, row.modality, start

    firsts = result["embeddings"] | beam.Filter(lambda r: r.segment_index == 0) | beam.Map(placed)
    return p, firsts, gated[GATE], result


def test_fixed_windows_each_input_once_in_its_window_called_before_the_stream_ends(media):
    first = [{"id": "t1", "text": "a red kite"}, {"id": "i1", "image_url": f"{media}/kite.png"},
             {"id": "a1", "audio_url": f"{media}/sea.wav"}, {"id": "t2", "text": "a blue boat"}]
    second = [{"id": "t3", "text": "gulls over the pier"}, {"id": "t4", "text": "gulls over the pier"},
              {"id": "t5", "text": "waves"}]
    stream = (TestStream()
              .advance_watermark_to(0)
              .add_elements([window.TimestampedValue(row, 1 + i) for i, row in enumerate(first)])
              .advance_processing_time(30)      # past max_wait_sec: the first window's buffer flushes
              .advance_watermark_to(10)
              .add_elements([window.TimestampedValue(row, 11 + i) for i, row in enumerate(second)])
              .advance_processing_time(30)
              .advance_watermark_to_infinity())
    with Emulator(EmulatorConfig()) as emu:
        # window 1 is two calls: text + image + audio packed (full), and the other text alone
        p, firsts, gate, result = _run(stream, emu, _Gate(_stats_url(emu), "t3", 2), window.FixedWindows(10))
        assert_that(firsts, equal_to([("t1", "text", 0), ("i1", "image", 0), ("a1", "audio", 0), ("t2", "text", 0),
                                      ("t3", "text", 10), ("t4", "text", 10), ("t5", "text", 10)]), label="placed")
        assert_that(gate, equal_to([2]), label="gate")
        assert_that(result["dead_letters"], equal_to([]), label="no_dead_letters")
        p.run().wait_until_finish()
        stats = emu.stats()
    # t3 and t4 are the same text: called once. 4 calls: one full (3 items), three single texts.
    assert stats["calls_ok"] == 4
    assert stats["items"] == {"text": 4, "image": 1, "audio": 1}
    assert stats["items_per_call"] == {"1": 3, "2": 0, "3": 1}


def test_the_global_window_is_called_as_inputs_arrive_not_at_the_end():
    """Unbounded input in the global window (no windowing at all) works: the groupings fire by time."""
    early = [{"id": f"e{i}", "text": f"early caption {i}"} for i in range(3)]
    late = [{"id": f"l{i}", "text": f"late caption {i}"} for i in range(2)] + [{"id": "dup", "text": "late caption 0"}]
    stream = (TestStream()
              .add_elements([window.TimestampedValue(row, i) for i, row in enumerate(early)])
              .advance_processing_time(30)
              .add_elements([window.TimestampedValue(row, 100 + i) for i, row in enumerate(late)])
              .advance_processing_time(30)
              .advance_watermark_to_infinity())
    with Emulator(EmulatorConfig()) as emu:
        p, firsts, gate, _ = _run(stream, emu, _Gate(_stats_url(emu), "l0", 3))
        assert_that(firsts, equal_to([(r["id"], "text", None) for r in early + late]), label="placed")
        assert_that(gate, equal_to([3]), label="gate")
        p.run().wait_until_finish()
        stats = emu.stats()
    assert stats["calls_ok"] == 5 and stats["items"]["text"] == 5  # "dup" got l0's vector


# ---- the packer: bounded buffer, flush by size and by time -----------------------------------------------

class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _item(i, modality="text"):
    return Item(id=f"{modality}{i}", modality=modality, source="m", row_number=i, content_hash=f"h{modality}{i}")


def test_a_full_call_goes_out_at_once_and_a_waiting_one_after_max_wait_sec():
    clock = _Clock()
    packer = CallPacker(max_wait_sec=5.0, clock=clock)
    assert packer.add(_item(1)) == [] and packer.add(_item(2)) == [] and packer.add(_item(1, "image")) == []
    (full,) = packer.add(_item(1, "audio"))  # one of each packable modality: full
    assert [i.id for i in full.items] == ["text1", "image1", "audio1"]
    clock.now = 4.9
    assert not packer.due()
    clock.now = 5.0  # text2 has waited 5 s
    assert packer.due()
    assert [[i.id for i in c.items] for c in packer.flush()] == [["text2"]] and not packer.due()
    (video,) = packer.add(_item(1, "video"))  # v1 calls take no video: alone
    assert [i.id for i in video.items] == ["video1"]


def test_the_buffer_is_bounded_by_max_waiting():
    packer = CallPacker(max_waiting=2)
    assert packer.add(_item(1)) == [] and packer.add(_item(2)) == []
    (overflow,) = packer.add(_item(3))
    assert [i.id for i in overflow.items] == ["text1"] and not packer.due()  # no time limit set
    assert [[i.id for i in c.items] for c in packer.flush()] == [["text2"], ["text3"]]


def test_the_packing_step_flushes_a_window_that_waited_too_long_when_another_gets_an_item(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("transforms.stages.pack.time", types.SimpleNamespace(monotonic=clock))
    fn = _PackCallsFn(pack=True, max_waiting=32, max_wait_sec=2.0)
    a, b = window.IntervalWindow(0, 10), window.IntervalWindow(10, 20)
    fn.start_bundle()
    assert list(fn.process(_item(1), window=a)) == []
    clock.now = 3.0
    out = list(fn.process(_item(2), window=b))  # window a's text has waited 3 s: out, in window a
    assert len(out) == 1 and isinstance(out[0], WindowedValue) and list(out[0].windows) == [a]
    assert [i.id for i in out[0].value.items] == ["text1"]
    rest = list(fn.finish_bundle())  # and the rest at the bundle's end, in its own window
    assert [(list(w.windows), [i.id for i in w.value.items]) for w in rest] == [([b], ["text2"])]
