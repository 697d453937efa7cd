"""The emulator's per-category rate limits (issue 24 item 5), over HTTP on 127.0.0.1: text, image, audio, video
and assets each with their own RPM (sliding), RPD and (audio/video) media minutes, the platform's headers."""
from __future__ import annotations

import base64

import pytest

from embed_emulator import EmulatorConfig, synth
from embed_emulator.__main__ import _parser, config_from_args
from embed_emulator.categories import CategoryLimiter
from tests.helpers import loopback_http, started_emulators  # noqa: F401 (loopback_http: the `http` fixture)

KEY = {"x-api-key": "k"}
PNG = synth.png_bytes(seed=1)
WAV8 = synth.wav_bytes(8.0)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture
def make_emulator():
    yield from started_emulators()


def _v2(http, emu, kind, **extra):
    bodies = {"text": {"input_text": "a caption"}, "image": {"media_source": {"base64_string": _b64(PNG)}},
              "audio": {"media_source": {"base64_string": _b64(WAV8)}}}
    return http.post(emu.base_url + "/embed-v2", json={"input_type": kind, "model_name": "marengo3.0",
                                                       kind: bodies[kind], **extra}, headers=KEY, timeout=30)


def _v1(http, emu, text=True, image=False, audio=False):
    files = {"model_name": (None, "marengo3.0")}
    if text:
        files["text"] = (None, "a caption")
    if image:
        files["image_file"] = ("i.png", PNG, "image/png")
    if audio:
        files["audio_file"] = ("a.wav", WAV8, "audio/wav")
    return http.post(emu.base_url + "/embed", files=files, headers=KEY, timeout=30)


def test_each_category_has_its_own_minute_and_says_so_in_the_platforms_headers(make_emulator, http):
    emu = make_emulator(category_limits={"text": {"rpm": 3}, "image": {"rpm": 2}})
    texts = [_v2(http, emu, "text") for _ in range(3)]
    assert [r.status_code for r in texts] == [200, 200, 200]
    # limits stated on successes: the text category's own window
    assert [(r.headers["X-Ratelimit-Limit"], r.headers["X-Ratelimit-Remaining"]) for r in texts] == [
        ("3", "2"), ("3", "1"), ("3", "0")]
    refused = _v2(http, emu, "text")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_requests"
    assert refused.headers["X-Ratelimit-Dimensions"] == "rpm:text"
    assert (refused.headers["X-Ratelimit-Limit"], refused.headers["X-Ratelimit-Remaining"]) == ("3", "0")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert int(refused.headers["X-Ratelimit-Reset"]) > 0
    # a spent text minute does not touch images
    images = [_v2(http, emu, "image") for _ in range(3)]
    assert [r.status_code for r in images] == [200, 200, 429]
    assert images[0].headers["X-Ratelimit-Limit"] == "2" and images[2].headers["X-Ratelimit-Dimensions"] == "rpm:image"
    stats = emu.stats()
    assert stats["rate_limited_by"] == {"rpm:text": 1, "rpm:image": 1} and stats["calls_ok"] == 5


def test_a_packed_v1_call_takes_from_every_category_it_touches_and_a_refused_one_from_none(make_emulator, http):
    emu = make_emulator(category_limits={"text": {"rpm": 5}, "image": {"rpm": 1}})
    packed = _v1(http, emu, text=True, image=True)
    assert packed.status_code == 200 and set(packed.json()) >= {"text_embedding", "image_embedding"}
    assert packed.headers["X-Ratelimit-Limit"] == "1"  # the tightest category the call touched
    again = _v1(http, emu, text=True, image=True)
    assert again.status_code == 429 and again.json()["code"] == "too_many_requests"  # v1: flat body
    assert again.headers["X-Ratelimit-Dimensions"] == "rpm:image"
    text = _v1(http, emu, text=True)
    # the refused packed call took no text slot: 1 used by the first call, now 2 of 5
    assert text.status_code == 200 and text.headers["X-Ratelimit-Remaining"] == "3"


def test_media_minutes_per_hour_and_requests_per_day_are_per_category(make_emulator, http):
    emu = make_emulator(category_limits={"audio": {"dph": 0.1}, "text": {"rpd": 2}}, day_length_sec=3600)
    assert _v2(http, emu, "audio").status_code == 200  # 8 s crosses 6 s: the crossing call completes
    refused = _v2(http, emu, "audio")
    assert refused.status_code == 429 and refused.headers["X-Ratelimit-Dimensions"] == "dph:audio"
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert "0.1 media minutes per hour" in refused.json()["error"]["message"]
    v1_audio = _v1(http, emu, text=False, audio=True)  # v1 audio is the same category
    assert v1_audio.status_code == 429 and v1_audio.headers["X-Ratelimit-Dimensions"] == "dph:audio"
    assert [_v2(http, emu, k).status_code for k in ("image", "text", "text", "text")] == [200, 200, 200, 429]
    day = _v2(http, emu, "text")
    assert day.headers["X-Ratelimit-Dimensions"] == "rpd:text" and int(day.headers["Retry-After"]) > 60
    assert emu.stats()["rate_limited_by"] == {"dph:audio": 2, "rpd:text": 2}


def test_limits_unstated_on_successes_when_configured_so_but_a_429_still_names_its_limit(make_emulator, http):
    emu = make_emulator(category_limits={"text": {"rpm": 1}}, rate_limit_headers=False)
    ok = _v2(http, emu, "text")
    assert ok.status_code == 200 and "X-Ratelimit-Limit" not in ok.headers
    refused = _v2(http, emu, "text")
    assert refused.status_code == 429 and refused.headers["X-Ratelimit-Dimensions"] == "rpm:text"
    assert "Retry-After" in refused.headers


def test_the_minute_window_slides_and_the_day_window_is_fixed():
    now = [1000.0]
    limiter = CategoryLimiter(clock=lambda: now[0])
    limits = {"video": {"rpm": 2, "rpd": 3}}
    assert limiter.admit(["video"], limits, 3600)[1] is None
    now[0] += 30
    assert limiter.admit(["video"], limits, 3600)[1] is None
    now[0] += 29.9  # 59.9 s after the first: still in its window
    assert limiter.admit(["video"], limits, 3600)[1].dimension == "rpm:video"
    now[0] += 0.2   # the first slid out
    assert limiter.admit(["video"], limits, 3600)[1] is None
    now[0] += 120   # the minute is free again, the day is not
    refusal = limiter.admit(["video"], limits, 3600)[1]
    assert refusal.dimension == "rpd:video" and refusal.retry_after_sec > 60
    assert limiter.admit(["text"], limits, 3600) == ([], None)  # an unlimited category takes nothing


@pytest.mark.parametrize("limits, message", [
    ({"speech": {"rpm": 1}}, "unknown category 'speech'"),
    ({"text": {"dph": 1}}, "category_limits.text: unknown limit 'dph'"),
    ({"audio": {"rpm": 0}}, "category_limits.audio.rpm must be a positive integer"),
    ({"video": {"dpd": -2.5}}, "category_limits.video.dpd must be a positive number"),
])
def test_a_bad_category_limit_is_refused_naming_it(limits, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        EmulatorConfig(category_limits=limits)


def test_the_command_line_sets_category_limits():
    config = config_from_args(_parser().parse_args(["--category-limit", "text.rpm=600",
                                                    "--category-limit", "audio.dph=1.5"]))
    assert config.category_limits == {"text": {"rpm": 600}, "audio": {"dph": 1.5}}
    with pytest.raises(ValueError, match="CATEGORY.DIM=N"):
        config_from_args(_parser().parse_args(["--category-limit", "text=600"]))
