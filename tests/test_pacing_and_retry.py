"""Token bucket pacing and the tenacity retry policy, on a fake clock (no timing assertions)."""
import time

import pytest

from embed_client import errors
from embed_client.pacing.local import TokenBucket
from embed_client.retry import RetryPolicy, call_with_retries


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _call_times(bucket, clock, n):
    times = []
    for _ in range(n):
        bucket.acquire()
        times.append(clock.now)
    return times


@pytest.mark.parametrize("rate,burst", [(600, 1), (60, 1), (1000, 5)])
def test_bucket_never_exceeds_rate_over_any_window(rate, burst):
    clock = FakeClock()
    bucket = TokenBucket(rate, burst=burst, clock=clock, sleep=clock.sleep)
    times = _call_times(bucket, clock, 3 * rate)
    for window in (1.0, 10.0, 60.0):
        allowed = rate / 60.0 * window + burst
        worst = max(sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times))
        assert worst <= allowed + 1e-9, (window, worst, allowed)
    # ...and it uses the rate: 3 minutes of calls take 3 minutes (less the burst), within the margin.
    assert times[-1] - times[0] == pytest.approx(3 * 60 - burst * 60 / rate, rel=0.015)
    assert max(sum(1 for t in times if s <= t < s + 60) for s in times) <= rate  # a minute never holds more


def test_429_pauses_everyone_and_slows_down_then_recovers():
    clock = FakeClock()
    bucket = TokenBucket(600, clock=clock, sleep=clock.sleep)
    bucket.acquire()
    bucket.on_rate_limited(retry_after_sec=5)
    before = clock.now
    bucket.acquire()
    assert clock.now - before >= 5  # Retry-After obeyed by the next caller
    assert bucket.current_rate_per_minute == pytest.approx(420)
    for _ in range(20):
        bucket.on_success()
    # fast back to just under the rate that drew the 429, then a slow probe above it (1% a minute)
    assert bucket.current_rate_per_minute == pytest.approx(570, abs=7)
    for _ in range(600):
        bucket.on_success()
    assert 580 < bucket.current_rate_per_minute <= 600


def test_repeated_429s_never_stop_the_bucket():
    clock = FakeClock()
    bucket = TokenBucket(600, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        bucket.on_rate_limited()
        clock.now += 3  # separate events
    assert bucket.current_rate_per_minute == pytest.approx(30)


def test_429s_that_come_back_together_cut_the_pace_once():
    clock = FakeClock()
    bucket = TokenBucket(600, clock=clock, sleep=clock.sleep)
    for _ in range(8):  # the calls in flight when the limit was crossed
        bucket.on_rate_limited(retry_after_sec=1)
    assert bucket.current_rate_per_minute == pytest.approx(420)
    clock.now += 5
    bucket.on_rate_limited()
    assert bucket.current_rate_per_minute == pytest.approx(294)


def test_unlimited_bucket_does_not_wait():
    clock = FakeClock()
    bucket = TokenBucket(None, clock=clock, sleep=clock.sleep)
    assert sum(bucket.acquire() for _ in range(1000)) == 0


def test_bad_bucket_arguments_fail_fast():
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValueError):
        TokenBucket(10, burst=0.5)


def _failing(errors_then_value):
    seq = list(errors_then_value)
    calls = []

    def fn():
        calls.append(1)
        item = seq.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return fn, calls


def _rate_limited(wait):
    return errors.RateLimitError("slow down", status=429, code="too_many_requests",
                                 rate_limit=errors.RateLimitInfo(retry_after_sec=wait))


def test_retries_transient_errors_then_succeeds():
    fn, calls = _failing([errors.ServerError("x", status=500), errors.EmbedTimeoutError("t"),
                          errors.ConnectionFailedError("c"), errors.MalformedResponseError("m"), "ok"])
    slept, retried = [], []
    result = call_with_retries(fn, RetryPolicy(max_attempts=6), on_retry=lambda e, s: retried.append(type(e)),
                               sleep=slept.append)
    assert result == "ok" and len(calls) == 5
    assert retried == [errors.ServerError, errors.EmbedTimeoutError, errors.ConnectionFailedError,
                       errors.MalformedResponseError]
    assert all(0 <= s <= 30 for s in slept)


def test_gives_up_after_max_attempts_and_reports_attempts():
    fn, calls = _failing([errors.ServerError("x", status=503)] * 10)
    with pytest.raises(errors.ServerError) as info:
        call_with_retries(fn, RetryPolicy(max_attempts=3), sleep=lambda s: None)
    assert len(calls) == 3 and info.value.attempts == 3


def test_bad_request_and_auth_are_not_retried():
    for exc in (errors.BadRequestError("bad", status=400), errors.AuthError("no", status=401)):
        fn, calls = _failing([exc, "ok"])
        with pytest.raises(type(exc)):
            call_with_retries(fn, RetryPolicy(), sleep=lambda s: None)
        assert len(calls) == 1


def test_retry_after_is_obeyed():
    error = _rate_limited(7)
    fn, calls = _failing([error, "ok"])
    wakes = []  # when each sleep would end, on the clock Retry-After was received by
    assert call_with_retries(fn, RetryPolicy(), sleep=lambda s: wakes.append(time.time() + s)) == "ok"
    # The wait counts from the reply, so time spent before the sleep is not waited twice.
    waited = wakes[0] - error.rate_limit.received_at
    assert 7 <= waited <= 7.3


def test_quota_reset_beyond_deadline_is_not_retried():
    fn, calls = _failing([_rate_limited(3600), "ok"])
    with pytest.raises(errors.RateLimitError) as info:
        call_with_retries(fn, RetryPolicy(deadline_sec=120), sleep=lambda s: None)
    assert len(calls) == 1 and info.value.is_quota_exhausted


def test_backoff_grows_and_is_capped():
    fn, calls = _failing([errors.ServerError("x", status=500)] * 8 + ["ok"])
    slept = []
    call_with_retries(fn, RetryPolicy(max_attempts=9, initial_backoff_sec=0.5, max_backoff_sec=4), sleep=slept.append)
    assert len(slept) == 8
    assert slept[0] <= 0.5 + 1 and max(slept) <= 4
    assert sum(slept[4:]) > sum(slept[:2])


def test_deadline_bounds_total_time():
    fn, calls = _failing([errors.ServerError("x", status=500)] * 100)
    start = time.monotonic()
    with pytest.raises(errors.ServerError):
        call_with_retries(fn, RetryPolicy(max_attempts=100, deadline_sec=0.3, initial_backoff_sec=0.05,
                                          max_backoff_sec=0.1))
    assert time.monotonic() - start < 2


def test_unknown_limit_is_learned_from_a_429_that_states_it():
    clock = FakeClock()
    bucket = TokenBucket(None, clock=clock, sleep=clock.sleep)
    for _ in range(300):
        assert bucket.acquire() == 0  # unpaced until told
    bucket.on_rate_limited(retry_after_sec=2)  # a burst 429 without the limit: pause only
    assert bucket.current_rate_per_minute is None and not bucket.learned
    bucket.on_rate_limited(retry_after_sec=30, limit_per_minute=600)
    assert bucket.learned and bucket.current_rate_per_minute == pytest.approx(570)
    start = clock.now
    times = _call_times(bucket, clock, 571)
    assert times[0] - start >= 30  # Retry-After first
    assert times[-1] - times[0] == pytest.approx(60, rel=0.015)  # then paced to 0.95 of the limit
    bucket.on_rate_limited()
    assert bucket.current_rate_per_minute == pytest.approx(570 * 0.7)  # and AIMD from there


def _sliding_window_server(bucket, clock, limit, minutes, retry_after=None):
    """One caller against a server allowing `limit` calls in any 60 s; returns (accepted times, 429 times)."""
    import collections

    window, accepted, refused = collections.deque(), [], []
    end = clock.now + minutes * 60
    while clock.now < end:
        bucket.acquire()
        while window and window[0] <= clock.now - 60:
            window.popleft()
        if len(window) >= limit:
            refused.append(clock.now)
            wait = retry_after if retry_after is not None else window[0] + 60 - clock.now
            bucket.on_rate_limited(retry_after_sec=wait)
        else:
            window.append(clock.now)
            accepted.append(clock.now)
            bucket.on_success()
    return accepted, refused


def test_a_configured_rate_above_a_stated_limit_is_replaced_by_the_limit_without_a_cut():
    bucket = TokenBucket(1200)
    bucket.on_rate_limited(retry_after_sec=1, limit_per_minute=900)
    assert bucket.learned and bucket.current_rate_per_minute == pytest.approx(855)
    bucket.on_rate_limited(retry_after_sec=1, limit_per_minute=900)  # the same news again: no further cut
    assert bucket.current_rate_per_minute == pytest.approx(855)


def test_a_configured_rate_above_an_unstated_limit_converges_with_calls_in_flight_too():
    """8 calls in flight all come back 429 when the window fills: still one cut, still >= 0.9 of the limit."""
    import collections

    clock = FakeClock()
    bucket = TokenBucket(1200, clock=clock, sleep=clock.sleep)
    window, accepted = collections.deque(), []
    end = clock.now + 12 * 60
    while clock.now < end:
        batch = []
        for _ in range(8):
            bucket.acquire()
            batch.append(clock.now)
        for sent in batch:
            while window and window[0] <= sent - 60:
                window.popleft()
            if len(window) >= 900:
                bucket.on_rate_limited(retry_after_sec=window[0] + 60 - sent)
            else:
                window.append(sent)
                accepted.append(sent)
                bucket.on_success()
    held = sum(1 for t in accepted if t > clock.now - 300) / 5
    assert held >= 0.9 * 900, held


def test_a_configured_rate_above_an_unstated_limit_converges_under_it_without_a_sawtooth():
    clock = FakeClock()
    bucket = TokenBucket(1200, clock=clock, sleep=clock.sleep)
    accepted, refused = _sliding_window_server(bucket, clock, limit=900, minutes=12)
    last = clock.now
    held = sum(1 for t in accepted if t > last - 300) / 5  # calls per minute over the last 5 minutes
    assert held >= 0.9 * 900, held
    assert sum(1 for t in refused if t > last - 300) <= 5  # a probe now and then, not bursts
    # no sawtooth: every minute of the last five holds between 0.85 and 1.0 of the limit
    minutes = [sum(1 for t in accepted if last - 60 * (k + 1) < t <= last - 60 * k) for k in range(5)]
    assert all(0.85 * 900 <= n <= 900 for n in minutes), minutes
