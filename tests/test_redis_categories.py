"""The Redis pacer keeps one bucket per rate-limit category (issue 24 item 3), held across processes on a real
redis-server: each category's slots are spaced by its own rate, and what one process learns about one category
(a 429 naming it, a limit stated on a success) paces every process in that category only."""
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from embed_client.errors import RateLimitInfo
from tests.test_redis_bucket import SPAWN, RedisServer, _redis_binary
from transforms.settings import CallSettings, CategoryLimit


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(_redis_binary(), str(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pool():
    """Two spawned worker processes for the module (each spawn imports Beam: seconds on a shared machine)."""
    with ProcessPoolExecutor(2, mp_context=SPAWN) as workers:
        yield workers


def _settings(url, key):
    return CallSettings(base_url="http://127.0.0.1:9/v1.3", model="marengo3.5", rate_limit_backend="redis",
                        redis_url=url, rate_limit_key=key, max_workers=2,
                        category_limits=(CategoryLimit("text", 6000), CategoryLimit("audio", 60),
                                         CategoryLimit("image", 600)))


def _pacers(url, key):
    from transforms.calling.worker_state import _make_pacers

    return _make_pacers(_settings(url, key))


def _slots(url, key, per_category):
    """In another process: reserve slots of each category without waiting; returns {category: [slot, ...]}."""
    pacers = _pacers(url, key)
    return {c: [pacers.pacer(c).reserve_slot()[0] for _ in range(n)] for c, n in per_category.items()}


def _learn(url, key):
    """In another process: a 429 naming audio's minute limit, and a video success stating its limit."""
    pacers = _pacers(url, key)
    pacers.on_rate_limited(("text", "audio"), RateLimitInfo(limit=30, reset_at=time.time() + 20,
                                                            dimensions="rpm:audio"), None)
    pacers.on_success(("video",), RateLimitInfo(limit=120, remaining=100, reset_at=time.time() + 30))
    return pacers.rates()


@pytest.mark.serial  # the span of the slots is judged by the wall clock: 1.058 s for 0.99 under a neighbour's load
def test_each_category_keeps_its_own_shared_bucket_across_processes(redis_server, pool):
    key = f"cat:{time.monotonic_ns()}"
    jobs = [pool.submit(_slots, redis_server.url, key, {"text": 50, "audio": 3}) for _ in range(2)]
    taken = [job.result(timeout=60) for job in jobs]
    text = sorted(s for t in taken for s in t["text"])
    audio = sorted(s for t in taken for s in t["audio"])
    # 100 text slots from two processes, spaced by text's own 10 ms; 6 audio slots by audio's 1 s
    assert min(b - a for a, b in zip(text, text[1:])) >= 0.01 - 2e-6
    assert text[-1] - text[0] == pytest.approx(99 * 0.01, abs=0.01)
    assert min(b - a for a, b in zip(audio, audio[1:])) >= 1.0 - 2e-6
    assert audio[-1] - audio[0] == pytest.approx(5.0, abs=0.01)  # the audio queue did not slow text
    assert {k.decode() for k in _pacers(redis_server.url, key).pacer("text")._client.keys(f"{{{key}:*")} >= {
        f"{{{key}:text}}:tat", f"{{{key}:audio}}:tat"}


def test_what_one_process_learns_about_a_category_paces_every_process_in_that_category_only(redis_server, pool):
    key = f"learn:{time.monotonic_ns()}"
    here = _pacers(redis_server.url, key)
    there = pool.submit(_learn, redis_server.url, key).result(timeout=60)
    rates = here.rates()
    assert rates["audio"] == pytest.approx(28.5) and there["audio"] == pytest.approx(28.5)  # 30 x 0.95
    assert rates["video"] == pytest.approx(114.0)  # told no rate: learned from a success's statement
    assert rates["text"] == 6000 and rates["image"] == 600  # nothing else slowed
