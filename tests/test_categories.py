"""Per-category limits in the job (issue 24 items 1-3): one bucket per rate-limit category, a packed call takes
from each category it touches, a limit learned from any answer updates only the category it is about, and a
daily quota spent in one category defers only that category. Driven without Beam against the emulator."""
import io
import time

import pytest
from PIL import Image

from embed_client import EmbedClient
from embed_client.errors import RateLimitInfo
from embed_client.pacing.categories import CategoryPacers, named_category, per_minute_limit
from embed_client.pacing.local import TokenBucket
from embed_emulator import Emulator, EmulatorConfig
from tests.helpers import TEST_KEY
from transforms.calling.callers import make_caller
from transforms.calling.engine import Caller, CallStats, QuotaState, WorkerState
from transforms.calling.worker_state import acquire_worker_state
from transforms.records import Call, Deferred, Item, Outcome
from transforms.settings import CallSettings, CategoryLimit, ConfigError


def _item(i, modality, **fields):
    if modality == "text":
        fields.setdefault("text", f"caption {i}")
    return Item(id=f"{modality[0]}{i}", modality=modality, source="m.jsonl", row_number=i,
                content_hash=f"h{modality}{i}", **fields)


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "p.png"
    buffer = io.BytesIO()
    Image.new("RGB", (160, 160), (20, 200, 30)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return str(path)


def _buckets(**rates):
    return CategoryPacers({c: TokenBucket(rates.get(c)) for c in ("text", "image", "audio", "video")})


# ---- the pacers -------------------------------------------------------------------------------------------

def test_a_429_naming_a_category_slows_that_category_only():
    pacers = _buckets(text=600, audio=600)
    reset = time.time() + 30
    pacers.on_rate_limited(("text", "audio"), RateLimitInfo(limit=60, reset_at=reset, dimensions="rpm:audio"), None)
    rates = pacers.rates()
    assert rates["audio"] == pytest.approx(57.0) and rates["text"] == 600  # 60 x 0.95 learned, text untouched


def test_a_success_stating_its_limit_teaches_its_category_before_any_429():
    pacers = _buckets(text=1200, image=1200)
    stated = RateLimitInfo(limit=900, remaining=850, reset_at=time.time() + 40)
    pacers.on_success(("text",), stated)
    assert pacers.rates()["text"] == pytest.approx(855.0) and pacers.rates()["image"] == 1200
    pacers.on_success(("text", "image"), RateLimitInfo(limit=10, remaining=5, reset_at=time.time() + 40))
    # a packed call's statement does not say which category it is about: nothing learned from it
    assert pacers.rates() == {"text": pytest.approx(855.0), "image": 1200, "audio": None, "video": None}
    # nothing left in the window: wait for its reset instead of drawing the 429
    pacers.on_success(("image",), RateLimitInfo(limit=1200, remaining=0, reset_at=time.time() + 3))
    assert 2.0 < pacers.ready_in(("image",)) <= 3.0 and pacers.ready_in(("text",)) < 0.1


def test_the_one_number_is_one_bucket_and_a_packed_call_takes_a_turn_from_each_category():
    single = CategoryPacers.single(TokenBucket(60))
    assert single.is_single and single.pacer("audio") is single.pacer("text")
    pacers = _buckets(text=6000, audio=60)
    assert pacers.acquire(("text",)) == 0.0 and pacers.acquire(("audio",)) == 0.0  # the burst token each
    started = time.monotonic()
    pacers.acquire(("text", "audio"))  # the audio bucket is empty: the packed call waits for it
    assert 0.9 <= time.monotonic() - started <= 1.5
    assert pacers.ready_in(("text",)) < 0.05  # the text bucket was not held up


def test_dimension_names_and_minute_windows_are_read_from_the_headers():
    assert named_category(RateLimitInfo(dimensions="rpd:video")) == "video"
    assert named_category(RateLimitInfo(dimensions="rpm")) is None
    assert named_category(RateLimitInfo(dimensions="tpm:speech")) is None
    assert per_minute_limit(RateLimitInfo(limit=5, reset_at=time.time() + 20)) == 5.0
    assert per_minute_limit(RateLimitInfo(limit=5, reset_at=time.time() + 3600)) is None  # a daily window


# ---- settings ---------------------------------------------------------------------------------------------

def test_per_category_settings_override_the_one_number():
    settings = CallSettings(base_url="x", model="marengo3.5", requests_per_minute=300,
                            category_limits=(CategoryLimit("text", 600), CategoryLimit("audio", 60, None, 30.0)))
    assert [settings.category_rate(c) for c in ("text", "image", "audio", "video")] == [600, 300, 60, 300]
    limits = settings.limits_in_force()
    assert limits["per_category"] and limits["audio"]["media_minutes_per_hour"] == 30.0
    assert CallSettings(base_url="x", model="marengo3.0", requests_per_minute=300).limits_in_force() == {
        "per_category": False, "all": {"requests_per_minute": 300, "requests_per_day": None,
                                       "media_minutes_per_hour": None}}
    with pytest.raises(ConfigError, match="rate_limit.audio.requests_per_minute must be > 0"):
        CallSettings(base_url="x", model="marengo3.0", category_limits=(CategoryLimit("audio", -1),))


def test_each_process_keeps_one_bucket_per_category_and_the_one_number_keeps_one():
    per = acquire_worker_state(CallSettings(base_url="http://127.0.0.1:9/v1.3", model="marengo3.5", run_id="c1",
                                            requests_per_minute=300, category_limits=(CategoryLimit("text", 600),)))
    assert not per.pacer.is_single
    assert {c: r for c, r in per.pacer.rates().items()} == {"text": 600, "image": 300, "audio": 300, "video": 300}
    one = acquire_worker_state(CallSettings(base_url="http://127.0.0.1:9/v1.3", model="marengo3.5", run_id="c1",
                                            requests_per_minute=300))
    assert one.pacer.is_single and one.pacer.rates()["video"] == 300


# ---- the caller against the emulator ----------------------------------------------------------------------

def _caller(emu, kind="v1", model="marengo3.0", **changes):
    settings = CallSettings(base_url=emu.base_url, model=model, max_attempts=3, initial_backoff_sec=0.01,
                            max_backoff_sec=0.02, item_deadline_sec=10.0, run_id=f"t{time.monotonic_ns()}",
                            **changes)
    state = WorkerState.for_settings(settings, acquire_worker_state(settings).pacer)
    return make_caller(kind, settings, EmbedClient(api_key=TEST_KEY, base_url=emu.base_url), state)


def test_a_daily_quota_spent_in_one_category_defers_only_that_categorys_items(png):
    config = EmulatorConfig(category_limits={"image": {"rpd": 2}}, day_length_sec=3600)
    with Emulator(config) as emu:
        caller = _caller(emu, category_limits=(CategoryLimit("text", 6000), CategoryLimit("image", 6000)))
        records = []
        for i in range(5):  # packed text + image calls: the third finds the image quota spent
            records += caller.run(Call([_item(i, "text"), _item(i, "image", file_path=png)])).records
        served = emu.stats()
    embedded = sorted(r.item.id for r in records if isinstance(r, Outcome))
    deferred = [r for r in records if isinstance(r, Deferred)]
    assert embedded == ["i0", "i1", "t0", "t1", "t2", "t3", "t4"]  # every text, the images before the quota
    assert sorted(d.id for d in deferred) == ["i2", "i3", "i4"]
    assert {(d.reason, d.detail) for d in deferred} == {("quota_exhausted", "image quota")}
    assert all(d.resets_at and d.resets_at - time.time() > 300 for d in deferred)
    assert caller.quota.stopped is None and set(caller.quota.stopped_categories) == {"image"}
    # one refused call learned it; after that the images were not sent again
    assert served["rate_limited_by"] == {"rpd:image": 1} and served["calls_ok"] == 2 + 3


def test_a_v2_call_learns_its_categorys_limit_from_its_answers_and_counts_per_category():
    config = EmulatorConfig(category_limits={"text": {"rpm": 120}})
    with Emulator(config) as emu:
        caller = _caller(emu, kind="v2", model="marengo3.5", requests_per_minute=6000,
                         category_limits=(CategoryLimit("image", 6000),))
        stats = CallStats()
        records = caller._run([_item(1, "text")], stats)
        assert isinstance(records[0], Outcome)
    rates = caller.pacer.rates()
    assert rates["text"] == pytest.approx(114.0) and rates["image"] == 6000 and rates["video"] == 6000
    assert stats.by_category == {"text": [1, 0]}


# ---- scheduling under several buckets ------------------------------------------------------------------------

def _scheduler(split=True, **rates):
    from transforms.calling.schedule import CategoryScheduler

    return CategoryScheduler(_buckets(**rates), QuotaState(None), split_packed=split)


def test_calls_of_a_category_with_an_empty_bucket_wait_without_holding_up_the_others():
    scheduler = _scheduler(text=600, audio=6)
    for name, modality in [("a1", "audio"), ("a2", "audio"), ("t1", "text"), ("t2", "text"), ("t3", "text")]:
        scheduler.add(Call([_item(int(name[1]), modality)]), name)
    first = scheduler.take_ready(8)
    assert [(tag, prepaid) for _, tag, prepaid in first] == [("a1", True), ("t1", True)]  # a burst turn each
    assert 0.05 < scheduler.soonest() <= 0.11  # the next text turn; a2 waits ~10 s behind it
    time.sleep(scheduler.soonest())
    assert [tag for _, tag, _ in scheduler.take_ready(8)] == ["t2"]  # overtakes a2
    time.sleep(0.11)
    assert [tag for _, tag, _ in scheduler.take_ready(8)] == ["t3"]
    assert len(scheduler) == 1 and scheduler.soonest() > 9


def test_a_packed_call_sends_its_ready_part_unless_told_to_wait_for_every_category():
    for split, expected in ((True, [["t2"]]), (False, [])):
        scheduler = _scheduler(split, text=600, audio=6)
        scheduler.add(Call([_item(1, "audio")]), "first")
        assert [tag for _, tag, _ in scheduler.take_ready(8)] == ["first"]  # the audio bucket is empty now
        time.sleep(0.11)
        scheduler.add(Call([_item(2, "text"), _item(2, "audio")]), "packed")
        went = scheduler.take_ready(8)
        assert [[i.id for i in call.items] for call, _, _ in went] == expected
        assert len(scheduler) == 1  # the audio part (or the whole call) waits for its turn


def test_items_of_a_spent_category_are_handed_out_at_once_to_be_deferred_without_a_turn():
    scheduler = _scheduler(text=600, audio=6)
    scheduler._quota.stop_category("audio", None)
    scheduler.add(Call([_item(1, "audio")]), "a")
    scheduler.add(Call([_item(2, "audio")]), "b")
    assert [(tag, prepaid) for _, tag, prepaid in scheduler.take_ready(8)] == [("a", False), ("b", False)]


# ---- through the CLI ----------------------------------------------------------------------------------------

def _cli(tmp_path, config):
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import TEST_KEY

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=root, TWELVE_LABS_API_KEY=TEST_KEY)
    out = subprocess.run([sys.executable, "-m", "pipeline", "--config", str(path)], capture_output=True, text=True,
                         env=env, cwd=root, timeout=300)
    with open(os.path.join(config["output"]["path"], "summary.json")) as f:
        return out, json.load(f)


def test_a_spent_daily_quota_of_one_category_defers_only_it_and_the_summary_says_which(tmp_path):
    import json

    rows = 12
    manifest = tmp_path / "m.jsonl"
    lines = []
    for i in range(rows):
        path = tmp_path / f"p{i}.png"
        Image.new("RGB", (160, 160), (10 * i, 200, 30)).save(path, format="PNG")
        lines.append(json.dumps({"id": f"r{i}", "text": f"caption {i}", "image_file": str(path)}) + "\n")
    manifest.write_text("".join(lines))
    out, summary = _cli(tmp_path, {
        "model": "marengo3.0", "manifests": [str(manifest)], "output": {"path": str(tmp_path / "out")},
        "api": {"base_url": "embedded"}, "calls": {"max_in_flight": 2, "pack": True},
        "rate_limit": {"text": {"requests_per_minute": 6000}, "image": {"requests_per_minute": 6000}},
        "emulator": {"category_limits": {"image": {"rpd": 3}}, "day_length_sec": 3600},
        "beam": {"args": ["--runner=DirectRunner"]}})
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    assert summary["status"] == "deferred" and summary["items_embedded"] == {"image": 3, "text": rows}
    assert summary["quota_spent_categories"] == {"image": rows - 3} and summary["deferred"] == rows - 3
    assert f"quota spent only in image ({rows - 3} items), the rest went on" in out.stdout
    by_category = summary["by_category"]
    assert by_category["text"]["calls"] == rows and by_category["image"]["http_429"] >= 1
    assert by_category["image"]["calls"] == 3 + by_category["image"]["http_429"]
    assert summary["limits"]["per_category"] and summary["limits"]["image"]["requests_per_minute"] == 6000
    assert "categories       " in out.stdout and "image 3" not in out.stdout.split("categories")[0]
    with open(summary["report_file"], encoding="utf-8") as f:
        report = f.read()
    assert f'data-key="by_category.text.calls">{rows}<' in report
    assert f"Quota spent only in image ({rows - 3} items deferred)" in report


def test_category_limits_in_the_config_show_in_the_dry_run_and_a_mistake_is_one_line(tmp_path):
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"r{i}", "text": f"caption {i}"}) + "\n" for i in range(120)))
    config = {"model": "marengo3.0", "manifests": [str(manifest)], "output": {"path": str(tmp_path / "out")},
              "api": {"base_url": "embedded"}, "calls": {"requests_per_minute": 300, "requests_per_day": 10},
              "rate_limit": {"text": {"requests_per_minute": 60, "requests_per_day": 50},
                             "audio": {"media_minutes_per_hour": 30}},
              "beam": {"args": ["--runner=DirectRunner"]}}

    def cli(given, *flags):
        path = tmp_path / "job.yaml"
        path.write_text(json.dumps(given))
        return subprocess.run([sys.executable, "-m", "pipeline", "--config", str(path), *flags],
                              capture_output=True, text=True, cwd=root, timeout=300,
                              env=dict(os.environ, PYTHONPATH=root))

    bad = cli(dict(config, rate_limit={"audio": {"requests_per_minut": 5}}), "--dry-run")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "unknown setting `rate_limit.audio.requests_per_minut` (did you mean " \
           "rate_limit.audio.requests_per_minute?)" in bad.stderr
    plan = cli(config, "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr[-2000:]
    plan = json.loads(plan.stdout)
    assert plan["limits"]["per_category"] and plan["limits"]["text"] == {"requests_per_minute": 60,
                                                                           "requests_per_day": 50}
    assert plan["limits"]["image"]["requests_per_minute"] == 300  # the one number for the rest
    assert plan["limits"]["image"]["requests_per_day"] == 10      # and the one daily quota too
    # The days estimate takes each category's own daily quota, as calls.requests_per_day alone does for one
    # bucket: 120 texts at text's 50/day are 3 days (not 12 at the 10/day the other categories have).
    assert plan["days_at_daily_quota"] == 3 and plan["days_by_category"] == {"text": 3}
    assert plan["limits"]["audio"]["media_minutes_per_hour"] == 30
    assert plan["minutes_at_rate"] == 2.0  # 120 texts at text's own 60/min, not at 300/min


def test_the_scheduled_pool_sends_every_text_while_audio_waits_for_its_turns(tmp_path):
    """2 pool threads, 3 audio calls queued first (audio: one turn a second), then 20 texts: every text is
    answered before the second audio call is sent; threads blocking on the audio bucket would hold them."""
    import concurrent.futures
    import wave

    from tests.capture_server import CaptureServer, json_response
    from transforms.calling.schedule import CategoryScheduler, ScheduledPool

    wav = tmp_path / "a.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 8000)
    sent = []

    def answer(request):
        modality = "audio" if b'name="audio_file"' in request.body else "text"
        sent.append((time.monotonic(), modality))
        body = {"model_name": "marengo3.0", f"{modality}_embedding": {"segments": [{"float": [0.5] * 512}]}}
        return json_response(200, body)

    with CaptureServer(answer) as server:
        settings = CallSettings(base_url=server.base_url, model="marengo3.0", run_id="sched",
                                category_limits=(CategoryLimit("text", 6000), CategoryLimit("audio", 60)))
        pacers = _buckets(text=6000, audio=60)
        caller = Caller(settings, EmbedClient(api_key=TEST_KEY, base_url=server.base_url), pacers)
        with concurrent.futures.ThreadPoolExecutor(2) as threads:
            pool = ScheduledPool(CategoryScheduler(pacers, caller.quota), threads, caller.run, slots=2)
            for i in range(3):
                pool.add(Call([_item(i, "audio", file_path=str(wav))]), f"a{i}")
            for i in range(20):
                pool.add(Call([_item(i, "text")]), f"t{i}")
            done = []
            while len(done) < 23:
                finished, _, _ = pool.collect(22 - len(done))
                done += finished
            pool.stop()
    assert all(isinstance(r, Outcome) for f in done for r in f.result().records)
    audio = [t for t, m in sent if m == "audio"]
    texts = [t for t, m in sent if m == "text"]
    assert len(audio) == 3 and len(texts) == 20
    assert max(texts) < audio[1], "a text waited behind the audio bucket"
    assert audio[2] - audio[0] >= 1.9  # audio kept its own pace
