"""Traffic control in front of the upstream: a global rate limit and a circuit breaker.

Both live in the shared store, so they hold across every worker process and machine.

* :class:`RateLimiter` is a GCRA that hands out *reservations*: a caller gets the
  next free slot (at most a short horizon ahead), sleeps until it, then is admitted
  by the hard cap right before it sends: at most the rate in any sliding second, and
  no sooner than the pace allows after the previous send, so callers that woke late
  go one after the other, not in a bunch. Slots and admissions are paced 1% under
  the rate, which leaves room for the jitter between admission and the upstream.
  Higher lanes may reserve further ahead, and an urgent caller that finds no slot
  makes the others step back until it got one: when the budget is short, urgent
  commands go first.
* :class:`CircuitBreaker` opens when most recent requests failed with 5xx, timeouts or
  connection errors, lets nothing through during a cool-down, then lets one probe
  through; the probe's result closes or reopens it.

Waiting never costs an attempt: the executor hands the target back and the command
returns later through the broker, or the thread waits briefly in place.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from subswitch import keys
from subswitch.contract import Lane
from worker.metrics import NULL_RECORDER, Recorder
from worker.store import Script

logger = logging.getLogger(__name__)

# KEYS: tat, urgent marker. ARGV: interval_us, horizon_us, urgent (0/1), marker_ms,
# furthest_us. A stored time further ahead than any lane may reserve means the store's
# clock stepped back: it starts afresh from now (the hard cap still holds), so a clock
# step never stalls traffic.
_RESERVE_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
if tat > now + tonumber(ARGV[5]) then tat = now end
local wait, horizon = tat - now, tonumber(ARGV[2])
if ARGV[3] == '1' then
  if wait > horizon then
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
    return {0, wait - horizon}
  end
elseif wait > horizon or redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, math.max(wait - horizon, tonumber(ARGV[1]))}
end
local next_tat = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil(wait / 1000) + 60000)
return {1, wait, string.format('%d', tat)}
"""

# KEYS: log of sends (zset, µs), pace (next admission, µs). ARGV: cap, window_us,
# member, interval_us, tolerance_us. The hard cap, checked right before sending, in the
# store's clock. A send is admitted only if (1) the last second holds fewer than ``cap``
# sends and (2) it keeps the pace: no sooner than one interval after the previous
# admission, give or take ``tolerance``. (1) bounds every sliding second; (2) keeps
# threads that woke late from their reservations from going out together (before it,
# a second that had room let a whole bunch through at once, and the bunch, plus the
# jitter between admission and the upstream, made a clock second at the upstream hold
# more than the cap). Sends logged in the future, or a pace further ahead than a
# window (the store's clock stepped back), are dropped, or they would hold the cap for
# the step.
_ADMIT_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local pace = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
if pace > now + window then pace = now end
local wait = math.max(pace - now - tonumber(ARGV[5]), 0)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  wait = math.max(wait, tonumber(oldest[2]) + window - now + 1)
end
if wait > 0 then return {0, wait} end
local ttl = math.ceil(window / 1000) + 1000
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], string.format('%d', pace + tonumber(ARGV[4])), 'PX', ttl)
return {1, 0}
"""

# KEYS: state, probe. ARGV: token, probe_ttl_ms, cooldown_ms. An open circuit never
# waits longer than one cool-down from now (a step of the store's clock).
_CHECK_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'state', 'until')
if not st[1] or st[1] == 'closed' then return {'closed', 0} end
if st[1] == 'open' and tonumber(st[2]) > now + tonumber(ARGV[3]) then
  st[2] = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], 'until', st[2])
end
if st[1] == 'open' and now < tonumber(st[2]) then return {'open', tonumber(st[2]) - now} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'half_open')
  return {'probe', 0}
end
return {'probing', 0}
"""

# KEYS: state, probe. ARGV: ok, failed, window_s, min_requests, ratio, cooldown_ms,
# probe token ('' if none), probe ok ('1'/'0'), bucket prefix.
_RECORD_LUA: Final = """
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local bucket = ARGV[9] .. now_s
redis.call('HINCRBY', bucket, 'ok', ARGV[1])
redis.call('HINCRBY', bucket, 'failed', ARGV[2])
redis.call('EXPIRE', bucket, tonumber(ARGV[3]) + 2)
if ARGV[7] ~= '' and redis.call('GET', KEYS[2]) == ARGV[7] then
  redis.call('DEL', KEYS[2])
  if ARGV[8] == '1' then
    redis.call('HSET', KEYS[1], 'state', 'closed')
    return 'closed'
  end
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[6]))
  return 'opened'
end
local state = redis.call('HGET', KEYS[1], 'state')
if tonumber(ARGV[2]) == 0 or (state and state ~= 'closed') then return 'same' end
local total, failed = 0, 0
for s = now_s - tonumber(ARGV[3]) + 1, now_s do
  local counts = redis.call('HMGET', ARGV[9] .. s, 'ok', 'failed')
  failed = failed + tonumber(counts[2] or '0')
  total = total + tonumber(counts[1] or '0') + tonumber(counts[2] or '0')
end
if total >= tonumber(ARGV[4]) and failed >= total * tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[6]))
  return 'opened'
end
return 'same'
"""

# KEYS: probe. ARGV: token. A probe that never reached the upstream hands the probe
# back (the state stays half-open), so the next caller probes without waiting out
# the probe's lease.
_ABANDON_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: How much further ahead than bulk each lane may reserve: the first to be turned
#: away when the budget runs short is bulk, the last is urgent.
_LANE_REACH: Final = {Lane.BULK: 1.0, Lane.NORMAL: 1.5, Lane.URGENT: 2.0}
#: Longest a thread waits in place for a slot, holding its target's lock meanwhile:
#: part of the lock's lease (see worker/bootstrap.py).
MAX_WAIT_S: Final = 2.0
#: How long "urgent commands are waiting" holds the other lanes back, once set (ms).
_URGENT_MARK_MS: Final = 1000
#: The hard cap's window: no admission hint is longer.
_ADMIT_WINDOW_S: Final = 1.0
#: Share of the configured rate that slots and admissions are paced at. What the store
#: admits reaches the upstream a little later, and not always by the same delay (a
#: thread waits for the GIL, a process for a core): pacing 1% under the cap leaves that
#: jitter room, so a clock second at the upstream stays within the cap.
PACE_SHARE: Final = 0.99
#: How far off the pace an admission may be, in intervals: threads woken a little
#: apart still go at once, a late bunch goes one interval apart.
_PACE_TOLERANCE: Final = 2


class Scripts(Protocol):
    """What traffic control needs of the shared store: Lua scripts run atomically
    (:class:`worker.store.LuaScripts`, which maps store errors to ``StoreError``)."""

    def register(self, source: str) -> Script:
        """A callable ``(keys, args) -> reply`` running ``source``."""
        ...


class RateLimiter:
    """Global cap on upstream writes per second (GCRA with reservations)."""

    def __init__(
        self,
        *,
        scripts: Scripts,
        rate_per_s: float,
        horizon_s: float = 0.25,
        max_wait_s: float = MAX_WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        metrics: Recorder = NULL_RECORDER,
    ) -> None:
        self._metrics = metrics
        self._interval_us = max(1, math.ceil(1_000_000 / (rate_per_s * PACE_SHARE)))
        self._horizon_us = int(horizon_s * 1_000_000)
        self._max_wait_s = max_wait_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._cap = max(1, math.floor(rate_per_s))
        self._reserve = scripts.register(_RESERVE_LUA)
        self._admit = scripts.register(_ADMIT_LUA)

    @property
    def interval_us(self) -> int:
        """The pace: microseconds between two slots (and two admissions)."""
        return self._interval_us

    def reserve(self, lane: Lane) -> Reservation:
        """One try for a slot within this lane's reach (one store round trip)."""
        horizon = int(self._horizon_us * _LANE_REACH[lane])
        furthest = int(self._horizon_us * max(_LANE_REACH.values())) + self._interval_us
        args = [self._interval_us, horizon, int(lane is Lane.URGENT), _URGENT_MARK_MS, furthest]
        reply = self._reserve([keys.RATE_TAT, keys.RATE_URGENT_WAITING], args)
        slot_us = int(reply[2]) if int(reply[0]) else None
        return Reservation(wait_s=int(reply[1]) / 1_000_000, slot_us=slot_us)

    def admit(self) -> float | None:
        """Record a send now if the last second holds fewer than the cap and the send
        keeps the pace (``None``: send right away); else the seconds until it may
        (nothing recorded)."""
        interval = self._interval_us
        args = [self._cap, 1_000_000, uuid.uuid4().hex, interval, interval * _PACE_TOLERANCE]
        granted, wait_us = self._admit([keys.RATE_SENT, keys.RATE_PACE], args)
        return None if int(granted) else min(int(wait_us) / 1_000_000, _ADMIT_WINDOW_S)

    def acquire(self, lane: Lane) -> float | None:
        """Wait for a slot; ``None`` once it is this caller's turn to send, else the
        seconds to come back after (the wait would hold this thread too long).

        After the sleep until its slot, the caller is admitted again (:meth:`admit`):
        a thread that woke late sends only if the cap and the pace still allow it. A
        refused non-urgent caller waits a little longer than told, at random, so that
        callers refused together do not all come back together (and urgent ones come
        back first).
        """
        waited = 0.0
        reserved = False
        while True:
            if reserved:
                wait = self.admit()
                if wait is None:
                    self._metrics.rate_limit_wait(waited)
                    return None
                if lane is not Lane.URGENT:
                    wait += self._rng.uniform(0, self._interval_us / 1_000_000)
            else:
                reservation = self.reserve(lane)
                reserved, wait = reservation.granted, reservation.wait_s
            if waited + wait > self._max_wait_s:
                return min(wait, self._max_wait_s) + self._rng.uniform(0, 0.1)
            self._sleep(wait)
            waited += wait


@dataclass(frozen=True)
class Reservation:
    """A rate limiter's answer: a slot ``wait_s`` from now (``slot_us``, store time), or
    no slot yet (``slot_us`` is None) and a hint of how long until one may be had."""

    wait_s: float
    slot_us: int | None

    @property
    def granted(self) -> bool:
        """Whether a slot was reserved for the caller."""
        return self.slot_us is not None


@dataclass(frozen=True, kw_only=True)
class BreakerPolicy:
    """When the circuit opens, and for how long (the first four from ``Settings``)."""

    failure_ratio: float
    min_requests: int
    window_s: int
    cooldown_s: float
    #: How long a probe may take before another caller may probe instead.
    probe_ttl_s: float = 30.0
    #: A closed circuit is looked up at most this often per process.
    recheck_s: float = 0.25


class CircuitBreaker:
    """Shared circuit breaker; counts are batched per process to spare the store."""

    def __init__(
        self,
        *,
        scripts: Scripts,
        policy: BreakerPolicy,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        metrics: Recorder = NULL_RECORDER,
    ) -> None:
        self._metrics = metrics
        self._policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self._check = scripts.register(_CHECK_LUA)
        self._record = scripts.register(_RECORD_LUA)
        self._abandon = scripts.register(_ABANDON_LUA)
        self._lock = threading.Lock()
        self._closed_until = 0.0
        self._counts = [0, 0]  # ok, failed, not yet in the store
        self._flush_at = 0.0
        self._local = threading.local()

    def before_request(self) -> float | None:
        """``None`` to go ahead; else the seconds to wait while the circuit is open."""
        if self._clock() < self._closed_until:
            return None
        policy = self._policy
        token = uuid.uuid4().hex
        args = [token, int(policy.probe_ttl_s * 1000), int(policy.cooldown_s * 1000)]
        state, wait_ms = self._check([keys.BREAKER_STATE, keys.BREAKER_PROBE], args)
        state = _text(state)
        if state == "closed":
            self._closed_until = self._clock() + policy.recheck_s
            return None
        if state == "probe":
            logger.warning("circuit half-open: probing the upstream")
            self._metrics.breaker_transition("half_open")
            self._local.probe = token
            return None
        if state == "probing":
            return policy.cooldown_s / 4 + self._rng.uniform(0, 0.5)
        return min(int(wait_ms) / 1000, policy.cooldown_s) + self._rng.uniform(0, 1.0)

    def abandon(self) -> None:
        """The request allowed by :meth:`before_request` will not be made (the rate
        limiter made it wait, or something failed before it reached the upstream):
        hand back the probe, if this thread holds it."""
        probe = getattr(self._local, "probe", None)
        self._local.probe = None
        if probe is not None:
            self._abandon([keys.BREAKER_PROBE], [probe])

    def after_request(self, *, failed: bool) -> None:
        """Count one answer (``failed``: 5xx, timeout or connection error)."""
        probe = getattr(self._local, "probe", None)
        self._local.probe = None
        with self._lock:
            self._counts[int(failed)] += 1
            due = failed or probe is not None or self._clock() >= self._flush_at
            if not due:
                return
            ok, bad = self._counts
            self._counts = [0, 0]
            self._flush_at = self._clock() + self._policy.recheck_s
        self._flush(ok, bad, probe, probe_ok=not failed)

    def _flush(self, ok: int, bad: int, probe: str | None, *, probe_ok: bool) -> None:
        policy = self._policy
        args = [
            ok,
            bad,
            policy.window_s,
            policy.min_requests,
            policy.failure_ratio,
            int(policy.cooldown_s * 1000),
            probe or "",
            int(probe_ok),
            keys.BREAKER_BUCKET,
        ]
        change = _text(self._record([keys.BREAKER_STATE, keys.BREAKER_PROBE], args))
        if change in ("opened", "closed"):
            self._metrics.breaker_transition("open" if change == "opened" else "closed")
        if change == "opened":
            self._closed_until = 0.0
            logger.warning(
                "circuit opened: the upstream is failing; pausing %.1fs", policy.cooldown_s
            )
        elif change == "closed":
            logger.warning("circuit closed: the upstream answers again")


class TrafficControl:
    """What stands between the executor and the upstream; each part is optional."""

    def __init__(
        self, *, limiter: RateLimiter | None = None, breaker: CircuitBreaker | None = None
    ) -> None:
        self._limiter = limiter
        self._breaker = breaker

    def admit(self, lane: Lane) -> float | None:
        """``None`` to send now; else seconds to come back after (no attempt spent).

        After ``None`` the caller must report :meth:`after_request` or :meth:`abandon`.
        """
        if self._breaker is not None:
            wait = self._breaker.before_request()
            if wait is not None:
                return wait
        wait = self._limiter.acquire(lane) if self._limiter is not None else None
        if wait is not None:
            self.abandon()
        return wait

    def after_request(self, *, failed: bool) -> None:
        """Report how the request went."""
        if self._breaker is not None:
            self._breaker.after_request(failed=failed)

    def abandon(self) -> None:
        """The admitted request was not made, or ended before an upstream answer."""
        if self._breaker is not None:
            self._breaker.abandon()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
