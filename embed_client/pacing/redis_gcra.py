"""One rate limit for every worker: a GCRA token bucket kept in Redis and run as atomic Lua scripts.

`RedisTokenBucket` has the interface of `embed_client.pacing.local.TokenBucket` (`acquire()`,
`on_rate_limited()`, `on_success()`, `current_rate_per_minute`), but its state lives in Redis under
one key, so every thread of every process (on any machine) that uses the same URL and key shares one
pace of `rate_per_minute`, one 429 slowdown and one Retry-After pause. A 429 that states the limit
(X-Ratelimit-Limit) sets the shared pace just under it and recovery stops there. One that states nothing
is learned from as the local bucket learns (the same functions decide, `observed_limit`, `cut_unstated`,
`recovered` in `embed_client.pacing.local`): every worker's successes are counted in Redis, so the calls
that got through in the last minute, all workers together, become the shared pace just under the limit;
before that can be read, the pace is cut (once per quiet period, whoever sees the 429) and climbs back fast
to just under the pace that drew it, then probes slowly. A bucket told no rate learns the first stated
limit (on a 429 or, through `on_stated`, on any answer) as everyone's pace. One bucket per key: the job
keeps one key per rate-limit category (`KEY:text`, `KEY:audio`, ...).

The algorithm is GCRA (the "generic cell rate algorithm", a token bucket written as one timestamp):
the key holds the theoretical arrival time `tat` of the next call. A caller is given the slot
`max(now, tat - (burst - 1) * interval, paused_until)` and `tat` moves to `max(tat, slot) + interval`,
where `interval = 60 / (rate * fraction)`. The caller sleeps until its slot. So over any window of
`w` seconds at most `burst + w / interval` calls start, whichever process they come from. Slots are
reserved (a caller waiting for a later slot does not block others from reserving the ones after), the
same "go into debt" behaviour as the local TokenBucket.

Every decision runs inside one Lua script on the server, with the server's clock (`TIME`), so
there is no read-modify-write race between workers and no dependency on workers' clocks agreeing.

If Redis becomes unreachable mid-run, the bucket logs one warning and paces with a local bucket at
`rate_per_minute / max_workers` (this process's share) until Redis answers again; it never stops the
job and never runs unthrottled. `make_pacer` in `embed_client.pacing` does the same when Redis is
unreachable from the start.
"""
from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from typing import Callable, Optional, Tuple

from embed_client.pacing.local import (CUT_QUIET_SEC, LEARNED_RATE_MARGIN, MIN_RATE_FRACTION, TokenBucket,
                                       cut_unstated, observed_limit, recovered)

__all__ = ["RedisTokenBucket", "connect", "redacted_url"]

_LOGGER = logging.getLogger(__name__)

# State left by a finished job expires this long after its last use (and never before a reserved slot).
STATE_TTL_SEC = 3600
# How long a bucket that lost Redis paces locally before it asks Redis again.
RECONNECT_AFTER_SEC = 30.0
# Several workers see the same 429 incident at once; without this each of them would cut the shared
# pace again (N workers -> 0.7 ** N). Within this many seconds of a cut (or of its Retry-After), further
# 429s only extend the pause; a limit that is really lower keeps producing 429s after it and is cut again.
# The local bucket's quiet period, so both cut alike.
CUT_COOLDOWN_SEC = CUT_QUIET_SEC

# Every script takes the clock scale as its last ARGV: the server's time is multiplied by it (1 but in tests,
# which run a bucket's minute in a few seconds).

# Every script starts here: `now` is the Redis server's clock (one clock for every worker), scaled.
_NOW = """
local t = redis.call('TIME')
local now = (tonumber(t[1]) + tonumber(t[2]) / 1000000) * tonumber(ARGV[#ARGV])
"""

# Shared by the scripts that pause every worker: the pause only ever grows, and its key outlives it by ttl.
_EXTEND_PAUSE = """
local function extend_pause(key, now, seconds, ttl)
  local paused = tonumber(redis.call('GET', key) or '0') or 0
  local paused_until = math.max(paused, now + seconds)
  redis.call('SET', key, string.format('%.6f', paused_until),
             'EX', string.format('%d', math.ceil(paused_until - now + ttl)))
end
"""

# KEYS: tat, fraction, paused_until, learned rate. ARGV: rate per minute (0 = unlimited unless a limit was
# learned), burst, ttl, clock scale. Returns {slot, now, fraction} as strings (a Lua number would be truncated to an integer reply).
_RESERVE = _NOW + """
local rate = tonumber(ARGV[1])
if rate <= 0 then
  rate = tonumber(redis.call('GET', KEYS[4]) or '0') or 0
end
local burst = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local fraction = tonumber(redis.call('GET', KEYS[2]) or '1') or 1
local paused = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
local slot = math.max(now, paused)
if rate > 0 then
  local interval = 60.0 / (rate * fraction)
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
  slot = math.max(slot, tat - (burst - 1) * interval)
  local new_tat = math.max(tat, slot) + interval
  redis.call('SET', KEYS[1], string.format('%.6f', new_tat),
             'EX', string.format('%d', math.ceil(new_tat - now + ttl)))
end
return {string.format('%.6f', slot), string.format('%.6f', now), string.format('%.6f', fraction)}
"""

# KEYS: fraction, paused_until, cap, ceiling. ARGV: min fraction, pause seconds (0 = none), ttl, the stated
# limit as a fraction of the configured rate (0 = none stated), clock scale. A stated limit under the pace
# sets the pace just under it and caps the recovery there (no cut, no sawtooth); one at or over the pace (a
# burst) only pauses. Returns "fraction cap".
_STATED = _NOW + _EXTEND_PAUSE + """
local min_fraction = tonumber(ARGV[1])
local retry_after = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local stated = tonumber(ARGV[4])
local fraction = tonumber(redis.call('GET', KEYS[1]) or '1') or 1
local cap = tonumber(redis.call('GET', KEYS[3]) or '1') or 1
if stated > 0 and stated < fraction then
  fraction = math.max(min_fraction, stated)
  cap = fraction
  redis.call('SET', KEYS[1], string.format('%.6f', fraction), 'EX', ttl)
  redis.call('SET', KEYS[3], string.format('%.6f', cap), 'EX', ttl)
  redis.call('SET', KEYS[4], string.format('%.6f', cap), 'EX', ttl)
end
if retry_after > 0 then
  extend_pause(KEYS[2], now, retry_after, ttl)
end
return string.format('%.6f %.6f', fraction, cap)
"""

# KEYS: learned rate, paused_until. ARGV: the stated limit just under it (0 = none), pause seconds (0 = none), ttl,
# clock scale.
# For a bucket told no rate: a stated limit under what was learned (or the first one) becomes the shared pace.
# Returns the learned rate.
_LEARN = _NOW + _EXTEND_PAUSE + """
local stated = tonumber(ARGV[1])
local pause = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local rate = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if stated > 0 and (rate <= 0 or stated < rate) then
  rate = stated
  redis.call('SET', KEYS[1], string.format('%.6f', rate), 'EX', ttl)
end
if pause > 0 then
  extend_pause(KEYS[2], now, pause, ttl)
end
return string.format('%.6f', rate)
"""

# The calls that got through, every worker's, as a sorted set of success times (the last 60 s kept), and
# when the first was counted. The decisions on them are made in Python by the local bucket's functions;
# these scripts only count, claim and store atomically.
# KEYS: successes, sequence, watch start, fraction, ceiling, cap, learned rate. ARGV: ttl, clock scale.
# Counts one success; returns {fraction, ceiling, cap, learned rate}.
_SUCCESS = _NOW + """
local ttl = tonumber(ARGV[1])
local n = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], now, n)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[3], string.format('%.6f', now), 'NX', 'EX', ttl)
return {redis.call('GET', KEYS[4]) or '1', redis.call('GET', KEYS[5]) or '1', redis.call('GET', KEYS[6]) or '1',
        redis.call('GET', KEYS[7]) or '0'}
"""

# KEYS: last cut, successes, watch start, paused_until, fraction, ceiling, cap, learned rate. ARGV: quiet
# seconds, pause seconds (0 = none), ttl, clock scale. A 429 that states no limit: shares the pause and claims
# the cut unless one was made within the quiet period (the calls in flight when the limit is crossed all come
# back 429 together, in every worker: one event, one cut). Returns {claimed (0/1), fraction, ceiling, cap,
# learned rate, successes in the last 60 s, seconds since the first success}.
_CLAIM_CUT = _NOW + _EXTEND_PAUSE + """
local quiet = tonumber(ARGV[1])
local pause = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local claimed = 0
local cut_at = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if now - cut_at >= quiet then
  claimed = 1
  redis.call('SET', KEYS[1], string.format('%.6f', now), 'EX', ttl)
end
if pause > 0 then
  extend_pause(KEYS[4], now, pause, ttl)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60)
local watch = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
local watched = 0
if watch > 0 then watched = now - watch end
return {claimed, redis.call('GET', KEYS[5]) or '1', redis.call('GET', KEYS[6]) or '1',
        redis.call('GET', KEYS[7]) or '1', redis.call('GET', KEYS[8]) or '0',
        redis.call('ZCARD', KEYS[2]), string.format('%.6f', watched)}
"""

# KEYS: fraction, ceiling. ARGV: the fraction the new pace was decided from ('' = store regardless), new
# fraction, new ceiling, ttl. Stores a pace decided in Python; a success's step is dropped when the pace
# moved meanwhile (another worker's cut must not be undone by a step computed from the pace before it).
_SET_PACE = """
if ARGV[1] ~= '' then
  local fraction = tonumber(redis.call('GET', KEYS[1]) or '1') or 1
  if math.abs(fraction - tonumber(ARGV[1])) > 1e-9 then return 0 end
end
local ttl = tonumber(ARGV[4])
if tonumber(ARGV[2]) >= 1 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ttl)
return 1
"""


def connect(redis_url: str):
    """A `redis.Redis` for the bucket: short timeouts and one immediate retry (a pooled connection
    may be stale after a Redis restart), never redis-py's multi-second backoff: a worker that cannot
    reach Redis soon paces locally instead."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(redis_url, socket_connect_timeout=2.0, socket_timeout=5.0,
                                retry=Retry(NoBackoff(), 1), health_check_interval=30)


def redacted_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and errors."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable redis url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisTokenBucket:
    """A token bucket whose state is shared through Redis by every worker using the same key.

    `rate_per_minute` is the limit for all workers together (None: no pace, but 429 pauses are
    still shared). `max_workers` only sizes the local fallback used while Redis is unreachable.
    `client` is a `redis.Redis`; by default one is made from `redis_url`.
    """

    def __init__(self, rate_per_minute: Optional[float], redis_url: Optional[str] = None, *,
                 key: str = "tl-embed:ratelimit", burst: float = 1.0, max_workers: int = 1,
                 client=None, cut_cooldown_sec: float = CUT_COOLDOWN_SEC,
                 sleep: Callable[[float], None] = time.sleep, clock_scale: float = 1.0):
        if rate_per_minute is not None and rate_per_minute <= 0:
            raise ValueError(f"rate_per_minute must be positive, got {rate_per_minute}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        if clock_scale <= 0:
            raise ValueError(f"clock_scale must be positive, got {clock_scale}")
        if client is None:
            if not redis_url:
                raise ValueError("RedisTokenBucket needs redis_url or client")
            client = connect(redis_url)
        self.configured_rate = rate_per_minute
        self.burst = float(burst)
        self.max_workers = max_workers
        self.key = key
        self.url = redacted_url(redis_url) if redis_url else repr(client)
        self._client = client
        self._sleep = sleep
        self._cut_cooldown = float(cut_cooldown_sec)
        # Tests only: the bucket's seconds are this many times shorter than real ones (60 = a minute a second).
        self._scale = float(clock_scale)
        # A hash tag keeps all keys of one bucket in one Redis Cluster slot (a script may only touch those).
        self._keys = {name: f"{{{key}}}:{name}" for name in
                      ("tat", "fraction", "paused", "cut", "cap", "ceiling", "learned", "ok", "seq", "watch")}
        self._reserve_script = client.register_script(_RESERVE)
        self._stated_script = client.register_script(_STATED)
        self._success_script = client.register_script(_SUCCESS)
        self._claim_cut_script = client.register_script(_CLAIM_CUT)
        self._set_pace_script = client.register_script(_SET_PACE)
        self._learn_script = client.register_script(_LEARN)
        self._fraction = 1.0  # last fraction seen
        self._cap = 1.0
        self._lock = threading.Lock()
        self._fallback: Optional[TokenBucket] = None
        self._retry_redis_at = 0.0

    # ---- Redis, with the local fallback ---------------------------------------------------

    def _redis_errors(self) -> Tuple[type, ...]:
        import redis

        return (redis.exceptions.RedisError, OSError)

    def _local(self) -> Optional[TokenBucket]:
        """The local fallback while Redis is out, else None (time to use or retry Redis)."""
        with self._lock:
            if self._fallback is not None and time.monotonic() < self._retry_redis_at:
                return self._fallback
            return None

    def _lost_redis(self, exc: BaseException) -> TokenBucket:
        with self._lock:
            if self._fallback is None:
                share = None if self.configured_rate is None else self.configured_rate / self.max_workers
                _LOGGER.warning(
                    "Redis at %s unreachable: %s; falling back to a per-worker share of the limit: %s per minute "
                    "(retrying Redis every %.0f s)", self.url, exc,
                    "unlimited" if share is None else f"{self.configured_rate:g}/{self.max_workers} = {share:g}",
                    RECONNECT_AFTER_SEC)
                self._fallback = TokenBucket(share)
                self._fallback._fraction = self._fraction
            self._retry_redis_at = time.monotonic() + RECONNECT_AFTER_SEC
            return self._fallback

    def _redis_back(self) -> None:
        if self._fallback is not None:
            with self._lock:
                if self._fallback is not None:
                    _LOGGER.info("Redis at %s answers again; the shared limit is back in force", self.url)
                    self._fallback = None

    def _run(self, script, keys, args) -> Tuple[Optional[object], Optional[TokenBucket]]:
        """Runs a script: (its result, None), or (None, the local fallback) while Redis is out."""
        local = self._local()
        if local is not None:
            return None, local
        try:
            result = script(keys=keys, args=args)
        except self._redis_errors() as exc:
            return None, self._lost_redis(exc)
        self._redis_back()
        return result, None

    # ---- the TokenBucket interface --------------------------------------------------------

    @property
    def current_rate_per_minute(self) -> Optional[float]:
        """The shared pace now (the configured rate times the shared 429 slowdown); while Redis is
        out, the pace of this process's local fallback."""
        local = self._local()
        if local is not None:
            return local.current_rate_per_minute
        if self.configured_rate is None:
            try:
                learned = self._client.get(self._keys["learned"])
            except self._redis_errors():
                return None
            return None if learned is None else float(learned)
        try:
            value = self._client.get(self._keys["fraction"])
            self._fraction = 1.0 if value is None else float(value)
        except self._redis_errors():
            pass  # report the last fraction seen
        return self.configured_rate * self._fraction

    def _take(self) -> Tuple[Optional[Tuple[float, float]], Optional[TokenBucket]]:
        k = self._keys
        result, local = self._run(self._reserve_script, [k["tat"], k["fraction"], k["paused"], k["learned"]],
                                  [self.configured_rate or 0, self.burst, STATE_TTL_SEC, self._scale])
        if local is not None:
            return None, local
        slot, now, fraction = (float(v) for v in result)
        self._fraction = fraction
        return (slot, now), None

    def reserve_slot(self) -> Optional[Tuple[float, float]]:
        """Takes the next slot without waiting for it: returns (slot, now) in the Redis server's
        epoch seconds, or None when Redis is unreachable (`acquire` then paces locally)."""
        return self._take()[0]

    def _reserve(self) -> float:
        """Takes a slot and returns how long the caller must wait for it (without sleeping)."""
        taken, local = self._take()
        if local is not None:
            return local._reserve()
        slot, now = taken
        return max(0.0, slot - now)

    def acquire(self) -> float:
        """Blocks until a call may start; returns the seconds waited."""
        wait = self._reserve()
        if wait > 0:
            self._sleep(wait / self._scale)
        return wait

    def on_rate_limited(self, retry_after_sec: Optional[float] = None,
                        limit_per_minute: Optional[float] = None) -> None:
        """A 429: pauses every worker for `retry_after_sec`. A stated `limit_per_minute` (X-Ratelimit-Limit,
        for all workers together) under the shared pace sets the pace just under it for everyone, and the
        recovery stops there; without one the shared pace learns as the local bucket's does (`cut_unstated`
        on every worker's successes of the last minute), once per quiet period."""
        if limit_per_minute and not self.configured_rate:
            # Told no rate: the stated limit becomes everyone's pace (no cut), the pause is shared.
            self._learn(limit_per_minute, retry_after_sec)
            return
        k = self._keys
        if limit_per_minute:
            stated = max(1.0, limit_per_minute * LEARNED_RATE_MARGIN) / self.configured_rate
            result, local = self._run(self._stated_script, [k["fraction"], k["paused"], k["cap"], k["ceiling"]],
                                      [MIN_RATE_FRACTION, float(retry_after_sec or 0), STATE_TTL_SEC, stated,
                                       self._scale])
            if local is not None:
                local.on_rate_limited(retry_after_sec, limit_per_minute / self.max_workers)
                return
            self._fraction, self._cap = (float(v) for v in result.split())
            return
        quiet = max(self._cut_cooldown, float(retry_after_sec or 0))
        result, local = self._run(self._claim_cut_script,
                                  [k["cut"], k["ok"], k["watch"], k["paused"], k["fraction"], k["ceiling"],
                                   k["cap"], k["learned"]],
                                  [quiet, float(retry_after_sec or 0), STATE_TTL_SEC, self._scale])
        if local is not None:
            local.on_rate_limited(retry_after_sec, None)
            return
        claimed, fraction, _, cap, learned, successes, watched = result
        fraction, cap = float(fraction), float(cap)
        self._fraction, self._cap = fraction, cap
        rate = self.configured_rate or float(learned)
        if not int(claimed) or not rate:
            return  # the same event as a cut already made, or no pace to cut (only the pause applies)
        observed = observed_limit(int(successes), float(watched), rate * fraction) if int(successes) else None
        fraction, ceiling = cut_unstated(fraction, observed, rate)
        fraction = min(fraction, cap)
        self._run(self._set_pace_script, [k["fraction"], k["ceiling"]],
                  ["", f"{fraction:.6f}", f"{min(ceiling, cap):.6f}", STATE_TTL_SEC])
        self._fraction = fraction

    def _learn(self, limit_per_minute: Optional[float], pause_sec: Optional[float]) -> None:
        stated = max(1.0, limit_per_minute * LEARNED_RATE_MARGIN) if limit_per_minute else 0.0
        result, local = self._run(self._learn_script, [self._keys["learned"], self._keys["paused"]],
                                  [stated, float(pause_sec or 0), STATE_TTL_SEC, self._scale])
        if local is not None:
            local.on_stated(limit_per_minute / self.max_workers if limit_per_minute else None,
                            0 if pause_sec else None, pause_sec)

    def on_stated(self, limit_per_minute: Optional[float] = None, remaining: Optional[int] = None,
                  reset_in_sec: Optional[float] = None) -> None:
        """An answer (a success too) stated the limit (for all workers together): every worker paces just
        under it, and with nothing remaining in the window, every worker waits for its reset. Unlike a 429,
        it never cuts the pace."""
        pause = reset_in_sec if remaining == 0 and reset_in_sec else 0.0
        if not self.configured_rate:
            if limit_per_minute or pause:
                self._learn(limit_per_minute, pause)
            return
        stated = 0.0
        if limit_per_minute and limit_per_minute < self.configured_rate * self._fraction:
            stated = max(1.0, limit_per_minute * LEARNED_RATE_MARGIN) / self.configured_rate
        if not pause and not stated:
            return  # nothing new: no round trip on every success
        k = self._keys
        result, local = self._run(self._stated_script, [k["fraction"], k["paused"], k["cap"], k["ceiling"]],
                                  [MIN_RATE_FRACTION, float(pause), STATE_TTL_SEC, stated, self._scale])
        if local is not None:
            local.on_stated(limit_per_minute / self.max_workers if limit_per_minute else None, remaining,
                            reset_in_sec)
            return
        self._fraction, self._cap = (float(v) for v in result.split())

    def ready_in(self) -> float:
        """Seconds until the next shared slot, without taking it (one read of Redis; 0 when it cannot tell)."""
        local = self._local()
        if local is not None:
            return local.ready_in()
        try:
            tat, paused, learned = self._client.mget(self._keys["tat"], self._keys["paused"], self._keys["learned"])
            now = time.time() * self._scale  # the server's clock decides slots; a small skew only shifts a peek
        except self._redis_errors():
            return 0.0
        rate = self.configured_rate or (float(learned) if learned else 0.0)
        wait = max(0.0, float(paused) - now) if paused else 0.0
        if rate and tat:
            interval = 60.0 / (rate * (self._fraction or 1.0))
            wait = max(wait, float(tat) - (self.burst - 1) * interval - now)
        return wait

    def on_success(self) -> None:
        """A call went through: counted for every worker (what gets through teaches an unstated limit), and
        the shared pace steps back up as the local bucket's does (`recovered`), never over a stated limit."""
        local = self._local()
        if local is not None:
            local.on_success()
            return
        k = self._keys
        result, local = self._run(self._success_script,
                                  [k["ok"], k["seq"], k["watch"], k["fraction"], k["ceiling"], k["cap"], k["learned"]],
                                  [STATE_TTL_SEC, self._scale])
        if local is not None:
            local.on_success()
            return
        fraction, ceiling, cap, learned = (float(v) for v in result)
        self._fraction, self._cap = fraction, cap
        if fraction >= cap:
            return  # nothing to recover: no second round trip
        new_fraction, new_ceiling = recovered(fraction, ceiling, self.configured_rate or learned or None)
        new_fraction = min(new_fraction, cap)
        stored, _ = self._run(self._set_pace_script, [k["fraction"], k["ceiling"]],
                              [f"{fraction:.6f}", f"{new_fraction:.6f}", f"{min(new_ceiling, cap):.6f}",
                               STATE_TTL_SEC])
        if stored:
            self._fraction = new_fraction

    def reset(self) -> None:
        """Deletes the shared state (for tests and for a fresh job under a reused key)."""
        self._client.delete(*self._keys.values())
        self._fraction = self._cap = 1.0

    def __repr__(self) -> str:
        return (f"RedisTokenBucket(rate_per_minute={self.configured_rate}, url={self.url!r}, "
                f"key={self.key!r}, burst={self.burst:g})")
