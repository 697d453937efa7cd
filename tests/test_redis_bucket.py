"""The shared rate limit (embed_client.pacing.redis_gcra) on a real redis-server, from threads and processes."""
import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from embed_client.pacing import make_pacer
from embed_client.pacing.local import TokenBucket
from embed_client.pacing.redis_gcra import RedisTokenBucket

TEST_KEY = "tlk_TEST_KEY_do_not_leak_7f3a9c"
# Spawned, not forked: the test process runs emulator and Redis client threads, which fork would copy
# in whatever state they are in. A spawned child imports this module afresh and builds its own client.
SPAWN = multiprocessing.get_context("spawn")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on 127.0.0.1: no persistence, its own folder, stopped by the test."""

    def __init__(self, binary: str, folder: str):
        self.folder = folder
        for _ in range(5):  # the free port may be taken between the probe and the bind
            self.port = _free_port()
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", folder, "--daemonize", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        message = ("redis-server is not installed, so the shared rate limit cannot be tested here "
                   "(apt-get install redis-server; .ci/run installs it)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(_redis_binary(), str(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


_KEYS = iter(range(10**6))


@pytest.fixture
def key(request):
    """A bucket key of its own for each test: no state carried over between tests."""
    return f"test:{request.node.name}:{next(_KEYS)}"


def _windows_max(times, width):
    """The most events in any half-open window [t, t + width) of the sorted times."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# ---- what runs in the worker processes ------------------------------------------------------------------

def _worker(url, key, rate, burst, threads, mode, per_thread, go, start, duration, ready, results, base_url=None):
    """One worker process: `threads` threads sharing one RedisTokenBucket (one Redis client).

    mode "slots": each thread takes `per_thread` slots without waiting for them (reserve_slot).
    mode "acquire": each thread acquires until `duration` after the shared start, noting the time.
    mode "embed": the same, and each acquire is followed by a call to the emulator at base_url.
    """
    bucket = RedisTokenBucket(rate, url, key=key, burst=burst)
    client = None
    if mode == "embed":
        from embed_client import EmbedClient, errors

        client = EmbedClient(api_key=TEST_KEY, base_url=base_url, max_connections=threads,
                             timeout=(5.0, 30.0))
    out, lock = [], threading.Lock()

    def run(index):
        mine = []
        if mode == "slots":
            for _ in range(per_thread):
                mine.append(bucket.reserve_slot()[0])
        else:
            deadline = start.value + duration
            n = 0
            while True:
                bucket.acquire()
                sent = time.time()
                if sent >= deadline:
                    break
                if mode == "acquire":
                    mine.append(sent)
                    continue
                n += 1
                try:
                    client.create("marengo3.0", text=f"pid {os.getpid()} thread {index} call {n}")
                    bucket.on_success()
                    mine.append((sent, 200))
                except errors.RateLimitError as exc:
                    bucket.on_rate_limited(exc.wait_seconds)
                    mine.append((sent, 429))
                except errors.EmbedError as exc:
                    mine.append((sent, exc.status or 0))
        with lock:
            out.extend(mine)

    ready.put(os.getpid())
    go.wait(60)
    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if client is not None:
        client.close()
    results.put(out)


def _run_workers(url, key, rate, *, processes=3, threads=3, mode="acquire", per_thread=0, burst=1.0,
                 duration=0.0, base_url=None):
    """Starts the worker processes, lets them go at one instant, returns (start time, all results)."""
    go, ready, results = SPAWN.Event(), SPAWN.Queue(), SPAWN.Queue()
    start = SPAWN.Value("d", 0.0)
    procs = [SPAWN.Process(target=_worker, args=(url, key, rate, burst, threads, mode, per_thread, go, start,
                                                  duration, ready, results, base_url), daemon=True)
             for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        pids = {ready.get(timeout=60) for _ in procs}
        assert len(pids) == processes
        start.value = time.time()
        go.set()
        collected = []
        for _ in procs:
            collected.extend(results.get(timeout=duration + 60))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return start.value, collected


def _cut_elsewhere(url, key, retry_after, cooldown):
    """In another process: one 429 seen, with this Retry-After; returns the fraction after it."""
    bucket = RedisTokenBucket(600, url, key=key, cut_cooldown_sec=cooldown)
    bucket.on_rate_limited(retry_after)
    return bucket.current_rate_per_minute / 600


def _rate_elsewhere(url, key):
    return RedisTokenBucket(600, url, key=key).current_rate_per_minute


# ---- the tests ----------------------------------------------------------------------------------------

@pytest.mark.serial
def test_slots_are_never_closer_than_the_interval_across_processes_and_threads(redis_server, key):
    """3 processes x 4 threads grab 480 slots as fast as they can: every slot is at least one interval
    after the one before, whoever took it. A read-then-write in the client instead of one script would
    hand out the same slot twice under this contention."""
    rate = 6000.0  # 100 per second: the reservations outrun it, so slots queue up into the future
    _, slots = _run_workers(redis_server.url, key, rate, processes=3, threads=4, mode="slots", per_thread=40)
    slots.sort()
    assert len(slots) == 480
    interval = 60.0 / rate
    gaps = [b - a for a, b in zip(slots, slots[1:])]
    assert min(gaps) >= interval - 2e-6, min(gaps)  # slots are stored with microsecond precision
    # and no more than the rate over any window (here: the whole span and every 1 s window)
    assert _windows_max(slots, 1.0) <= rate / 60 + 1
    assert slots[-1] - slots[0] == pytest.approx(479 * interval, abs=0.01)


@pytest.mark.serial
def test_acquire_paces_processes_and_threads_to_the_rate_over_any_window(redis_server, key):
    """3 processes x 3 threads acquire for 3 s at 30 per second: they start at most the rate (plus the
    burst of 1) in any window, and together reach it."""
    rate, duration = 1800.0, 3.0
    start, times = _run_workers(redis_server.url, key, rate, processes=3, threads=3, duration=duration)
    per_sec = rate / 60
    assert len(times) <= duration * per_sec + 2
    assert len(times) >= 0.9 * duration * per_sec
    for width in (0.5, 1.0, 2.0):
        # +2: times are read after each sleep, which may overshoot and bunch two calls together
        assert _windows_max(times, width) <= width * per_sec + 2, width


def test_burst_lets_that_many_through_at_once_then_paces(redis_server, key):
    bucket = RedisTokenBucket(60, redis_server.url, key=key, burst=3)
    waits = [bucket.acquire() if i < 3 else bucket._reserve() for i in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(1.0, abs=0.1)
    assert waits[4] == pytest.approx(2.0, abs=0.1)


def test_429_slowdown_and_pause_are_shared_across_processes(redis_server, key):
    here = RedisTokenBucket(600, redis_server.url, key=key)
    assert here.current_rate_per_minute == 600
    with ProcessPoolExecutor(1, mp_context=SPAWN) as other:
        # Another process sees a 429 with Retry-After 1 s: this one slows to 70 % and pauses too.
        assert other.submit(_cut_elsewhere, redis_server.url, key, 1.0, 1.0).result() == pytest.approx(0.7)
        assert here.current_rate_per_minute == pytest.approx(420)
        # The same incident seen by another worker within the cooldown (1 s): one cut, not two.
        assert other.submit(_cut_elsewhere, redis_server.url, key, None, 1.0).result() == pytest.approx(0.7)
        began = time.monotonic()
        waited = here.acquire()
        assert 0.5 <= waited <= 1.05
        assert time.monotonic() - began >= 0.5
        # A later 429 cuts again.
        assert other.submit(_cut_elsewhere, redis_server.url, key, None, 0.0).result() == pytest.approx(0.49)
        # Successes here raise the pace for everyone, step by step.
        here.acquire()
        here.on_success()
        assert other.submit(_rate_elsewhere, redis_server.url, key).result() == pytest.approx(600 * 0.51)
    for _ in range(30):
        here.on_success()
    assert here.current_rate_per_minute == 600


def _stated_elsewhere(url, key, limit):
    """In another process: a 429 stating the limit (X-Ratelimit-Limit); returns the shared rate after it."""
    bucket = RedisTokenBucket(600, url, key=key)
    bucket.on_rate_limited(None, limit)
    return bucket.current_rate_per_minute


def test_a_stated_limit_sets_every_workers_pace_just_under_it_and_recovery_stops_there(redis_server, key):
    """The configured 600/min is above the account's 300: one worker's 429 saying so sets the shared pace to
    285 (95 %) for all, successes do not climb back over it (no sawtooth of 429s), a limit stated above the
    pace (a burst) cuts nothing, and a 429 stating nothing still cuts."""
    here = RedisTokenBucket(600, redis_server.url, key=key, cut_cooldown_sec=0)
    with ProcessPoolExecutor(1, mp_context=SPAWN) as other:
        assert other.submit(_stated_elsewhere, redis_server.url, key, 300).result() == pytest.approx(285)
        assert here.current_rate_per_minute == pytest.approx(285)
        for _ in range(40):
            here.on_success()
        assert here.current_rate_per_minute == pytest.approx(285)
        assert other.submit(_stated_elsewhere, redis_server.url, key, 1000).result() == pytest.approx(285)
    here.on_rate_limited(None)  # nothing stated: a cut, under the cap
    assert here.current_rate_per_minute == pytest.approx(285 * 0.7)
    for _ in range(60):
        here.on_success()
    assert here.current_rate_per_minute == pytest.approx(285)  # back to the stated limit, not to 600


def test_paced_interval_follows_the_shared_slowdown(redis_server, key):
    bucket = RedisTokenBucket(600, redis_server.url, key=key, cut_cooldown_sec=0)
    bucket.acquire()
    assert bucket._reserve() == pytest.approx(0.1, abs=0.02)
    bucket.on_rate_limited(None)  # 420 per minute: the next slot after that one is 1/7 s later
    first = bucket._reserve()
    second = bucket._reserve()
    assert second - first == pytest.approx(60 / 420, abs=0.02)


def test_unlimited_rate_still_shares_the_pause(redis_server, key):
    a = RedisTokenBucket(None, redis_server.url, key=key)
    b = RedisTokenBucket(None, redis_server.url, key=key)
    assert [a.acquire() for _ in range(50)] == [0.0] * 50
    assert a.current_rate_per_minute is None
    a.on_rate_limited(0.5)
    assert 0.3 <= b._reserve() <= 0.55


def test_factory_backends(redis_server, key):
    local = make_pacer(600, "local", max_workers=4)
    assert type(local) is TokenBucket and local.configured_rate == 150
    assert make_pacer(None).configured_rate is None
    shared = make_pacer(600, "redis", redis_server.url, max_workers=4, key=key)
    assert isinstance(shared, RedisTokenBucket) and shared.configured_rate == 600
    with pytest.raises(ValueError, match="unknown rate limit backend"):
        make_pacer(600, "memcached")
    with pytest.raises(ValueError, match="redis_url"):
        make_pacer(600, "redis")


def test_factory_falls_back_to_a_per_worker_share_when_redis_is_unreachable(caplog):
    port = _free_port()  # nothing listens there
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
    with caplog.at_level(logging.WARNING, logger="embed_client"):
        began = time.monotonic()
        bucket = make_pacer(600, "redis", url, max_workers=4)
        again = make_pacer(600, "redis", url, max_workers=4)
    assert time.monotonic() - began < 5
    assert type(bucket) is TokenBucket and bucket.configured_rate == 150
    assert type(again) is TokenBucket and again.configured_rate == 150
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert f"Redis at redis://:***@127.0.0.1:{port}/0 unreachable" in message
    assert "falling back to a per-worker share of the limit: 600/4 = 150 per minute" in message
    assert "s3cret-pw" not in caplog.text
    # and the fallback paces: 150 per minute is one call per 0.4 s
    bucket.acquire()
    assert bucket._reserve() == pytest.approx(0.4, abs=0.05)


def test_redis_lost_mid_run_paces_locally_at_the_share(tmp_path, key, caplog):
    server = RedisServer(_redis_binary(), str(tmp_path))
    try:
        bucket = make_pacer(600, "redis", server.url, max_workers=2, key=key)
        assert isinstance(bucket, RedisTokenBucket)
        bucket.acquire()
    finally:
        server.stop()
    with caplog.at_level(logging.WARNING, logger="embed_client"):
        began = time.monotonic()
        waits = [bucket.acquire() for _ in range(4)]  # no exception: a local pace of 300 per minute
        elapsed = time.monotonic() - began
        bucket.on_rate_limited(None)
        bucket.on_success()
    assert waits[0] == 0.0
    assert elapsed == pytest.approx(0.6, abs=0.15)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "600/2 = 300 per minute" in warnings[0]


@pytest.mark.slow
@pytest.mark.serial
def test_workers_sharing_the_limit_reach_it_without_a_429(redis_server, key):
    """3 worker processes x 3 threads call the emulator, which refuses more than R calls per sliding
    minute, each call paced by one RedisTokenBucket at R: no 429, and together they reach the limit.

    The run is shorter than the emulator's 60 s window, so the emulator alone would accept up to R calls
    in it at any speed and its 429 count only proves there was no burst over R. The pace is therefore
    also checked here, as calls / elapsed over the run and as the most calls in any 10 s window: a
    GCRA bucket with burst 1 starts at most 1 + t * R / 60 calls in any t seconds (about R / 60 per
    second, 121 calls in 24 s against the 300 the window would take), so it can never send the window
    more than it accepts, whatever the run's length. (Paced exactly at R for longer than a window, the
    call R + 1 lands 60 s after the first and network jitter decides whether the first has left the
    window: give a sliding-window API a rate a little under its limit for long runs.)
    """
    from embed_emulator import Emulator, EmulatorConfig

    rate, duration = 300, 24.0
    with Emulator(EmulatorConfig(requests_per_minute=rate, latency_ms=10)) as emulator:
        start, calls = _run_workers(redis_server.url, key, rate, processes=3, threads=3, mode="embed",
                                    duration=duration, base_url=emulator.base_url)
        stats = emulator.stats()
    statuses = [status for _, status in calls]
    assert stats["rate_limited"] == 0 and statuses.count(429) == 0, stats
    assert set(statuses) == {200}
    assert stats["requests"] == len(calls)
    per_sec = rate / 60
    ratio = len(calls) / duration / per_sec
    print(f"\n{len(calls)} calls in {duration:.0f} s from 3 processes x 3 threads: "
          f"{len(calls) / duration:.3f}/s against a limit of {per_sec:.3f}/s ({ratio:.3f} of it)")
    assert ratio >= 0.9
    assert len(calls) <= duration * per_sec + 2
    assert _windows_max([sent for sent, _ in calls], 10.0) <= 10 * per_sec + 2
