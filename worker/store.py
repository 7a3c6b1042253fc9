"""The shared store: idempotency, per-target ordering and "one in flight per target".

Everything that must hold across worker processes and machines is decided here, in
Redis, by Lua scripts that run atomically (through :class:`LuaScripts`, the one
runner, which also maps Redis errors). The executor depends on the :class:`Store`
protocol; :class:`RedisStore` implements it on Redis (or the embedded Redis), and
tests run it on fakeredis and on a real Redis.

Lifecycle of a command record (``subswitch.keys.command``):

* ``begin`` (atomic): a duplicate of a finished command gets its stored event back;
  a reused id with another payload is a conflict; a target whose lock is held is
  ``busy``, whatever else is true. Otherwise the target's lock is taken (a lease, so
  a killed worker never wedges a target) and the command is superseded, expired,
  exhausted, found applied already, or allowed one more upstream attempt.
* ``release`` after a transient failure: the lock goes, the error is kept. When the
  answer was lost the lock stays instead, as ``settling``, for the settle time: the
  upstream may still apply that write (contract §2.5).
* ``finish`` (atomic): the terminal event is stored, the target's watermark moves
  if the command was applied, and the lock goes. Whoever finishes holds a
  short claim on publishing the event; ``mark_published`` ends it.

Unresolved attempts (``subswitch.keys.target_pending``): a command counts for ordering
from its first attempt until it is finished, unless every attempt failed surely
unapplied. An older command on the target waits for it (``Unresolved``): it may
neither overtake it nor be superseded by it, since the newer one may still fail.
An attempt's lock lives its lease plus the settle time, so a worker that dies with
a write on its way leaves the target held as long as that write may land.

Fencing: ``release``, ``give_back`` and ``finish`` act only while the delivery's own
token is in the lock. A delivery whose lease ran out changes nothing, with one
exception: an applied write always moves the watermark (the upstream has it, so no
older command may follow it), and the next delivery then finds the command applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

import redis
from redis.commands.core import Script as RedisScript

from subswitch import keys
from subswitch.contract import AnyCommand, Target
from subswitch.errors import StoreError
from subswitch.redis_client import redis_client
from worker.metrics import NULL_RECORDER, Recorder

# Shared by the scripts below: may this delivery publish a finished record's event?
# Returns 'publish' (the claim is now ours), 'skip' (published already) or 'busy'
# (another delivery holds a live claim).
_CLAIM_LUA: Final = """
local function claim(key, token, claim_ms)
  local rec = redis.call('HMGET', key, 'published', 'claim', 'claim_until')
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if rec[1] == '1' then return 'skip' end
  if rec[2] and rec[2] ~= token and tonumber(rec[3]) > now_ms then return 'busy' end
  redis.call('HSET', key, 'claim', token, 'claim_until', now_ms + claim_ms)
  return 'publish'
end
"""

# KEYS: command, lock, target, pending, acceptance. ARGV: fp, token, lease_ms, max_attempts,
# retention_s, issued_us, command_id, expired (0/1), claim_ms, settle_ms,
# out_of_bounds (0/1: issued_at outside the acceptance window; refused unless sent before).
# A held lock means busy, whatever else is true: only the delivery holding the target
# may decide anything about a command on it. Every other answer but 'unresolved' takes
# the lock and writes this delivery's token into the record, which fences every later
# script; 'unresolved' records the command (fingerprint, token, attempts) and leaves
# the target free. The decision comes first, so the record and the lock are written
# once each.
_BEGIN_LUA: Final = (
    _CLAIM_LUA
    + """
local rec = redis.call('HMGET', KEYS[1], 'fp', 'state', 'attempts', 'event', 'last_error')
if rec[1] and rec[1] ~= ARGV[1] then return {'conflict'} end
if rec[2] == 'done' then return {'done', claim(KEYS[1], ARGV[2], tonumber(ARGV[9])), rec[4]} end
local lock = redis.call('GET', KEYS[2])
if lock then
  -- A holder with no more than the settle time left is past its attempt's deadline:
  -- it died or stalled, and whatever it sent is settling.
  local ttl = redis.call('PTTL', KEYS[2])
  if lock == 'settling' or ttl <= tonumber(ARGV[10]) then return {'settling', ttl} end
  return {'busy'}
end
local attempts = tonumber(rec[3] or '0')
-- The record now says where the command is: its producer's acceptance has served.
redis.call('DEL', KEYS[5])
local function keep(answer, hold)
  if hold then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'token', ARGV[2], 'attempts', attempts)
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return answer
end
local w = redis.call('HMGET', KEYS[3], 'us', 'id', 'status')
if w[2] == ARGV[7] then return keep({'applied', attempts, w[3] or ''}, true) end
if ARGV[11] == '1' and attempts == 0 then return keep({'out_of_bounds'}, true) end
if ARGV[8] == '1' then return keep({'expired', attempts, rec[5] or ''}, true) end
if attempts >= tonumber(ARGV[4]) then return keep({'exhausted', attempts, rec[5] or ''}, true) end
local us = tonumber(ARGV[6])
if w[1] then
  local w_us = tonumber(w[1])
  if w_us > us or (w_us == us and w[2] >= ARGV[7]) then
    return keep({'superseded', attempts}, true)
  end
end
local pending = redis.call('HGETALL', KEYS[4])
for i = 1, #pending, 2 do
  local p_id, p_us = pending[i], tonumber(pending[i + 1])
  if p_id ~= ARGV[7] and (p_us > us or (p_us == us and p_id > ARGV[7])) then
    return keep({'unresolved', p_id}, false)
  end
end
redis.call('HSET', KEYS[4], ARGV[7], ARGV[6])
redis.call('EXPIRE', KEYS[4], ARGV[5])
-- 'since': when the attempt went out, for `subswitch status` (in_flight since when).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- A delivery that dies mid-request leaves a write that may still land: its lock
-- outlives the attempt by the settle time.
redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[3]) + tonumber(ARGV[10]))
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'token', ARGV[2], 'state', 'sending',
  'attempts', attempts + 1, 'since', now_ms)
redis.call('HDEL', KEYS[1], 'next_at')
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {'go', attempts + 1}
"""
)

# Shared by release, give_back and finish: hand the target over. After an attempt
# whose answer was lost (settle_ms > 0) the lock stays, as 'settling', for the time
# in which the upstream may still apply that write; else it goes. The command stops
# counting for ordering once resolved, or once an attempt failed surely unapplied
# and none before it was in doubt.
_HAND_OVER_LUA: Final = """
local function hand_over(cmd, lock, pending, command_id, settle_ms, resolved)
  if resolved or redis.call('HGET', cmd, 'ambiguous') ~= '1' then
    redis.call('HDEL', pending, command_id)
  end
  if tonumber(settle_ms) > 0 then
    redis.call('SET', lock, 'settling', 'PX', settle_ms)
  else
    redis.call('DEL', lock)
  end
end
"""

# KEYS: command, lock, pending. ARGV: token, last_error, retention_s, settle_ms,
# command_id, ambiguous (0/1: the answer was lost), retry_ms (when the next attempt is
# due, from now). Only under this delivery's own lock: one whose lease ran out changes
# nothing.
_RELEASE_LUA: Final = (
    _HAND_OVER_LUA
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local settle_ms = tonumber(ARGV[4])
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'ambiguous', '1') end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if settle_ms > 0 then
  redis.call('HSET', KEYS[1], 'state', 'settling', 'settle_until', now_ms + settle_ms)
else
  redis.call('HSET', KEYS[1], 'state', 'waiting')
end
redis.call('HSET', KEYS[1], 'last_error', ARGV[2], 'since', now_ms,
  'next_at', now_ms + tonumber(ARGV[7]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
hand_over(KEYS[1], KEYS[2], KEYS[3], ARGV[5], settle_ms, false)
return 1
"""
)

# KEYS: command, lock, pending. ARGV: token, command_id, retry_ms. The attempt did not
# happen.
_YIELD_LUA: Final = (
    _HAND_OVER_LUA
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'state', 'waiting', 'since', now_ms,
  'next_at', now_ms + tonumber(ARGV[3]))
hand_over(KEYS[1], KEYS[2], KEYS[3], ARGV[2], 0, false)
return 1
"""
)

# KEYS: command, lock, target, pending. ARGV: token, fp, event, applied (0/1),
# issued_us, command_id, retention_s, target_retention_s, claim_ms, upstream status,
# settle_ms.
# An applied write always moves the watermark, whoever finished the record and whether
# or not this delivery still holds the target: the upstream has it either way. The
# record itself only changes under this delivery's own lock ('lost' otherwise).
_FINISH_LUA: Final = (
    _CLAIM_LUA
    + _HAND_OVER_LUA
    + """
if ARGV[4] == '1' then
  local w = redis.call('HMGET', KEYS[3], 'us', 'id')
  local us = tonumber(ARGV[5])
  if not w[1] or tonumber(w[1]) < us or (tonumber(w[1]) == us and w[2] < ARGV[6]) then
    redis.call('HSET', KEYS[3], 'us', ARGV[5], 'id', ARGV[6], 'status', ARGV[10])
  end
  redis.call('EXPIRE', KEYS[3], ARGV[8])
end
local mine = redis.call('GET', KEYS[2]) == ARGV[1]
if redis.call('HGET', KEYS[1], 'state') == 'done' then
  if mine then redis.call('DEL', KEYS[2]) end
  return {claim(KEYS[1], ARGV[1], tonumber(ARGV[9])), redis.call('HGET', KEYS[1], 'event')}
end
if not mine then return {'lost'} end
-- The record was not done, so nobody has published its event or holds a claim on it:
-- the claim is this delivery's, written with the record.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'fp', ARGV[2], 'state', 'done', 'event', ARGV[3], 'published', '0',
  'claim', ARGV[1], 'claim_until', now_ms + tonumber(ARGV[9]))
redis.call('EXPIRE', KEYS[1], ARGV[7])
hand_over(KEYS[1], KEYS[2], KEYS[4], ARGV[6], ARGV[11], true)
return {'publish', ARGV[3]}
"""
)

# KEYS: record, then any keys to delete with it (what the delivery that published leaves
# behind: its delivery count). The record's event reached the broker; nobody holds a
# claim any more.
_PUBLISHED_LUA: Final = """
redis.call('HSET', KEYS[1], 'published', '1')
redis.call('HDEL', KEYS[1], 'claim', 'claim_until')
if #KEYS > 1 then redis.call('DEL', unpack(KEYS, 2)) end
return 1
"""

# KEYS: record, and optionally the index of its command id's rejections. ARGV: token,
# event, retention_s, claim_ms.
_RECORD_LUA: Final = (
    _CLAIM_LUA
    + """
if redis.call('HSETNX', KEYS[1], 'event', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'done', 'published', '0')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  if KEYS[2] then
    redis.call('SADD', KEYS[2], KEYS[1])
    redis.call('EXPIRE', KEYS[2], ARGV[3])
  end
end
return {claim(KEYS[1], ARGV[1], tonumber(ARGV[4])), redis.call('HGET', KEYS[1], 'event')}
"""
)


Script = Callable[[Sequence[str], Sequence[Any]], Any]

#: One script run of a batch: the script, its KEYS and its ARGV.
ScriptCall = tuple["RegisteredScript", Sequence[str], Sequence[Any]]


class RegisteredScript:
    """A Lua script known to one :class:`LuaScripts`; call it as ``(keys, args)``."""

    def __init__(self, runner: LuaScripts, script: RedisScript) -> None:
        self._runner = runner
        self.script = script

    def __call__(self, keys_: Sequence[str], args: Sequence[Any]) -> Any:
        return self._runner.run(self, keys_, args)


class LuaScripts:
    """The one runner of the worker's Lua scripts on a Redis server.

    Store and traffic control register their scripts here; every Redis error any of
    them meets becomes a :class:`StoreError`, in this one place.
    """

    def __init__(self, *, client: redis.Redis, metrics: Recorder = NULL_RECORDER) -> None:
        self._redis = client
        self._metrics = metrics

    def __repr__(self) -> str:
        return "LuaScripts()"

    def register(self, source: str) -> RegisteredScript:
        """A callable ``(keys, args) -> reply`` running ``source`` atomically (EVALSHA)."""
        return RegisteredScript(self, self._redis.register_script(source))

    def run(self, script: RegisteredScript, keys_: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one registered script; Redis errors become :class:`StoreError`."""
        try:
            return script.script(keys=list(keys_), args=list(args))
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def run_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run many scripts in one round trip (a pipeline, not a transaction: each
        script is atomic on its own, as when run alone); their replies in order.

        A script the server does not know yet (its cache was flushed) never ran: it is
        loaded and only those runs are made again, one by one.
        """
        if not calls:
            return []
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for script, keys_, args in calls:
                    pipe.evalsha(script.script.sha, len(keys_), *keys_, *args)
                replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        for index, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.NoScriptError):
                script, keys_, args = calls[index]
                replies[index] = self.run(script, keys_, args)
            elif isinstance(reply, redis.RedisError):
                raise self._unavailable(reply)
        return replies

    def _unavailable(self, exc: redis.RedisError) -> StoreError:
        self._metrics.store_error()
        return StoreError(f"store unavailable: {exc}")

    def ping(self) -> bool:
        """Whether the server answers."""
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        """Close the client's connections."""
        self._redis.close()


# --- what the store answers ---------------------------------------------------------


class Claim(StrEnum):
    """Who publishes a finished record's event."""

    #: This delivery holds the claim now and must publish.
    PUBLISH = "publish"
    #: The event was published already.
    SKIP = "skip"
    #: Another delivery holds a live claim and is publishing it right now.
    BUSY = "busy"


class OutOfTimeReason(StrEnum):
    """Why a command gets no further attempt."""

    EXPIRED = "expired"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True)
class Go:
    """Send attempt number ``attempt`` upstream; the target's lock is held."""

    attempt: int


@dataclass(frozen=True)
class Busy:
    """Another command (or another delivery of this one) holds the target; try later."""


@dataclass(frozen=True)
class Settling:
    """An answer on the target was lost: the upstream may still apply that write, so
    the target stays held for every command for ``remaining_ms`` more."""

    remaining_ms: int


@dataclass(frozen=True)
class Unresolved:
    """A newer command on the target (``newer``) had an attempt whose result is unknown:
    this older one may not overtake it, nor is it superseded (the newer may still fail)."""

    newer: str


@dataclass(frozen=True)
class Conflict:
    """The command id was used before with another payload."""


@dataclass(frozen=True)
class Finished:
    """The command (or record) is terminal; ``event`` is its stored event, and
    ``claim`` says whether this delivery publishes it."""

    claim: Claim
    event: bytes


@dataclass(frozen=True)
class Lost:
    """This delivery no longer holds the target (its lease ran out): it changed nothing
    of the record, and the message must come back to be decided under a new lock."""


@dataclass(frozen=True)
class Superseded:
    """A newer command was applied to the target; the target's lock is held."""

    attempts: int


@dataclass(frozen=True)
class AlreadyApplied:
    """An earlier delivery's write was applied but its delivery lost the target before
    recording it (the watermark says so): finish as applied, without sending again.
    The target's lock is held."""

    attempts: int
    upstream_status: int | None


@dataclass(frozen=True)
class OutOfBounds:
    """``issued_at`` is outside the acceptance window and the command was never sent:
    refuse it. The target's lock is held."""


@dataclass(frozen=True)
class OutOfTime:
    """``not_after`` passed or the attempts ran out; the target's lock is held."""

    reason: OutOfTimeReason
    attempts: int
    last_error: str | None


BeginResult = (
    Go
    | Busy
    | Settling
    | Unresolved
    | Conflict
    | Finished
    | Superseded
    | AlreadyApplied
    | OutOfBounds
    | OutOfTime
)


@dataclass(frozen=True, kw_only=True)
class BeginRequest:
    """One command's :meth:`Store.begin`, for :meth:`BatchStore.begin_many`."""

    command: AnyCommand
    fingerprint: str
    token: str
    lease_ms: int
    max_attempts: int
    expired: bool
    settle_ms: int = 0
    out_of_bounds: bool = False


@dataclass(frozen=True, kw_only=True)
class FinishRequest:
    """One command's :meth:`Store.finish`, for :meth:`BatchStore.finish_many`."""

    command: AnyCommand
    fingerprint: str
    token: str
    event: bytes
    applied: bool
    upstream_status: int | None = None
    settle_ms: int = 0


class Store(Protocol):
    """What the executor needs of the shared store (:class:`RedisStore` is the real one).

    Every method but :meth:`begin` and :meth:`record` acts only for the delivery that
    holds the target under ``token``.
    """

    def begin(
        self,
        command: AnyCommand,
        *,
        fingerprint: str,
        token: str,
        lease_ms: int,
        max_attempts: int,
        expired: bool,
        settle_ms: int = 0,
        out_of_bounds: bool = False,
    ) -> BeginResult:
        """Decide what this delivery of ``command`` does next."""
        ...

    def release(
        self,
        command_id: str,
        target: Target,
        *,
        token: str,
        last_error: str,
        ambiguous: bool = False,
        settle_ms: int = 0,
        retry_ms: int = 0,
    ) -> bool:
        """Give the target back after a failed attempt; False if the lease was lost."""
        ...

    def give_back(self, command_id: str, target: Target, *, token: str, retry_ms: int = 0) -> None:
        """Give the target back without having sent: the attempt is not counted."""
        ...

    def finish(
        self,
        command: AnyCommand,
        *,
        fingerprint: str,
        token: str,
        event: bytes,
        applied: bool,
        upstream_status: int | None = None,
        settle_ms: int = 0,
    ) -> Finished | Lost:
        """Store the terminal event, move the watermark if applied, free the target."""
        ...

    def record(
        self, key: str, *, token: str, event: bytes, command_id: str | None = None
    ) -> Finished:
        """Keep a standalone terminal event (a rejected message) once, under ``key``."""
        ...

    def mark_published(self, key: str, *, ended: Sequence[str] = ()) -> None:
        """The event of the record at ``key`` reached the broker; the keys ``ended``
        (what the delivery leaves behind) go in the same call."""
        ...


class BatchStore(Store, Protocol):
    """A :class:`Store` that also takes many commands' calls in one round trip (the
    bulk lane's chunks). Each call is atomic on its own, exactly as when made alone."""

    def begin_many(self, requests: Sequence[BeginRequest]) -> list[BeginResult]:
        """:meth:`Store.begin` of each request, in order."""
        ...

    def finish_many(self, requests: Sequence[FinishRequest]) -> list[Finished | Lost]:
        """:meth:`Store.finish` of each request, in order."""
        ...

    def mark_published_many(self, keys_: Sequence[str]) -> None:
        """:meth:`Store.mark_published` of each key."""
        ...


class RedisStore:
    """The store on a Redis server (redis-py client; fakeredis in tests)."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        retention_s: int,
        max_clock_skew_s: int,
        claim_ms: int = keys.PUBLISH_CLAIM_MS,
        metrics: Recorder = NULL_RECORDER,
    ) -> None:
        self._scripts = LuaScripts(client=client, metrics=metrics)
        self._retention_s = retention_s
        self._target_retention_s = keys.target_retention_s(
            retention_s=retention_s, max_clock_skew_s=max_clock_skew_s
        )
        self._claim_ms = claim_ms
        self._begin = self._scripts.register(_BEGIN_LUA)
        self._release = self._scripts.register(_RELEASE_LUA)
        self._yield = self._scripts.register(_YIELD_LUA)
        self._finish = self._scripts.register(_FINISH_LUA)
        self._record = self._scripts.register(_RECORD_LUA)
        self._published = self._scripts.register(_PUBLISHED_LUA)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        retention_s: int,
        max_clock_skew_s: int,
        metrics: Recorder = NULL_RECORDER,
    ) -> RedisStore:
        """A store on the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://`` or
        ``redis+sentinel://``)."""
        client = redis_client(url, timeout_s=5)
        return cls(
            client=client,
            retention_s=retention_s,
            max_clock_skew_s=max_clock_skew_s,
            metrics=metrics,
        )

    def __repr__(self) -> str:
        return f"RedisStore(retention_s={self._retention_s})"

    @property
    def scripts(self) -> LuaScripts:
        """The script runner, for other shared state on the same server (traffic control)."""
        return self._scripts

    def begin(
        self,
        command: AnyCommand,
        *,
        fingerprint: str,
        token: str,
        lease_ms: int,
        max_attempts: int,
        expired: bool,
        settle_ms: int = 0,
        out_of_bounds: bool = False,
    ) -> BeginResult:
        """Decide what this delivery of ``command`` does next (see the module doc).

        ``settle_ms``: how long after its lease a write may still land upstream; the
        lock of an attempt is held that much longer, in case its delivery dies.
        ``out_of_bounds``: ``issued_at`` lies outside the acceptance window; such a
        command is refused (:class:`OutOfBounds`) unless an attempt was made before.
        """
        request = BeginRequest(
            command=command,
            fingerprint=fingerprint,
            token=token,
            lease_ms=lease_ms,
            max_attempts=max_attempts,
            expired=expired,
            settle_ms=settle_ms,
            out_of_bounds=out_of_bounds,
        )
        return _parse_begin(self._begin(*self._begin_call(request)))

    def begin_many(self, requests: Sequence[BeginRequest]) -> list[BeginResult]:
        """:meth:`begin` of each request, all in one round trip."""
        calls = [(self._begin, *self._begin_call(request)) for request in requests]
        return [_parse_begin(reply) for reply in self._scripts.run_many(calls)]

    def _begin_call(self, request: BeginRequest) -> tuple[list[str], list[Any]]:
        command = request.command
        args = [
            request.fingerprint,
            request.token,
            request.lease_ms,
            request.max_attempts,
            self._retention_s,
            command.order_key[0],
            command.command_id,
            int(request.expired),
            self._claim_ms,
            request.settle_ms,
            int(request.out_of_bounds),
        ]
        return _keys(command.command_id, command.target), args

    def release(
        self,
        command_id: str,
        target: Target,
        *,
        token: str,
        last_error: str,
        ambiguous: bool = False,
        settle_ms: int = 0,
        retry_ms: int = 0,
    ) -> bool:
        """Give the target back after a failed attempt, keeping the error.

        ``ambiguous`` (the answer was lost): the command keeps counting for ordering
        until it is resolved, and the target stays held ``settle_ms`` for every
        command, this one's retry included. ``retry_ms``: when the next attempt is due,
        from now (kept for ``subswitch status``). False (and nothing changed) when this
        delivery no longer holds the target.
        """
        keys_ = [keys.command(command_id), keys.target_lock(target), keys.target_pending(target)]
        args = [
            token, last_error, self._retention_s, settle_ms, command_id, int(ambiguous), retry_ms
        ]  # fmt: skip
        return bool(self._release(keys_, args))

    def give_back(self, command_id: str, target: Target, *, token: str, retry_ms: int = 0) -> None:
        """Give the target back without having sent: the attempt is not counted; the
        next one is due in ``retry_ms``."""
        keys_ = [keys.command(command_id), keys.target_lock(target), keys.target_pending(target)]
        self._yield(keys_, [token, command_id, retry_ms])

    def finish(
        self,
        command: AnyCommand,
        *,
        fingerprint: str,
        token: str,
        event: bytes,
        applied: bool,
        upstream_status: int | None = None,
        settle_ms: int = 0,
    ) -> Finished | Lost:
        """Store the terminal event, move the watermark if applied, free the target.

        ``settle_ms > 0``: the last attempt's answer was lost, the target stays held that
        long. If another delivery finished first, its event wins and is returned. A
        delivery that lost the target gets :class:`Lost` and changed nothing but the
        watermark.
        """
        request = FinishRequest(
            command=command,
            fingerprint=fingerprint,
            token=token,
            event=event,
            applied=applied,
            upstream_status=upstream_status,
            settle_ms=settle_ms,
        )
        return _parse_finish(self._finish(*self._finish_call(request)))

    def finish_many(self, requests: Sequence[FinishRequest]) -> list[Finished | Lost]:
        """:meth:`finish` of each request, all in one round trip."""
        calls = [(self._finish, *self._finish_call(request)) for request in requests]
        return [_parse_finish(reply) for reply in self._scripts.run_many(calls)]

    def _finish_call(self, request: FinishRequest) -> tuple[list[str], list[Any]]:
        command, status = request.command, request.upstream_status
        args = [
            request.token,
            request.fingerprint,
            request.event,
            int(request.applied),
            command.order_key[0],
            command.command_id,
            self._retention_s,
            self._target_retention_s,
            self._claim_ms,
            "" if status is None else status,
            request.settle_ms,
        ]
        return _keys(command.command_id, command.target), args

    def record(
        self, key: str, *, token: str, event: bytes, command_id: str | None = None
    ) -> Finished:
        """Keep a standalone terminal event (a rejected message) once, under ``key``;
        with ``command_id``, indexed under it (``subswitch status`` finds it there)."""
        keys_ = [key] if command_id is None else [key, keys.rejections(command_id)]
        reply = self._record(keys_, [token, event, self._retention_s, self._claim_ms])
        return Finished(claim=Claim(_text(reply[0])), event=_bytes(reply[1]))

    def mark_published(self, key: str, *, ended: Sequence[str] = ()) -> None:
        """The event of the record at ``key`` reached the broker; the keys ``ended``
        are deleted in the same round trip (the delivery's count, see
        :meth:`worker.deliveries.DeliveryCounter.end_keys`)."""
        self._published(*_published_call(key, ended))

    def mark_published_many(self, keys_: Sequence[str]) -> None:
        """:meth:`mark_published` of each key, in one round trip."""
        self._scripts.run_many([(self._published, *_published_call(key, ())) for key in keys_])

    def ping(self) -> bool:
        """Whether the store answers."""
        return self._scripts.ping()

    def close(self) -> None:
        """Close the store's connections."""
        self._scripts.close()


def _published_call(key: str, ended: Sequence[str]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the published script (it replies 1)."""
    return [key, *ended], []


def _keys(command_id: str, target: Target) -> list[str]:
    return [
        keys.command(command_id),
        keys.target_lock(target),
        keys.target(target),
        keys.target_pending(target),
        keys.acceptance(command_id),
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _optional_int(value: Any) -> int | None:
    text = _text(value)
    return int(text) if text else None


def _out_of_time(kind: str, reply: list[Any]) -> OutOfTime:
    last_error = _text(reply[2]) or None
    return OutOfTime(reason=OutOfTimeReason(kind), attempts=int(reply[1]), last_error=last_error)


_BEGIN_REPLIES: Final[dict[str, Callable[[list[Any]], BeginResult]]] = {
    "go": lambda reply: Go(attempt=int(reply[1])),
    "busy": lambda reply: Busy(),
    "settling": lambda reply: Settling(remaining_ms=max(0, int(reply[1]))),
    "unresolved": lambda reply: Unresolved(newer=_text(reply[1])),
    "conflict": lambda reply: Conflict(),
    "done": lambda reply: Finished(claim=Claim(_text(reply[1])), event=_bytes(reply[2])),
    "superseded": lambda reply: Superseded(attempts=int(reply[1])),
    "applied": lambda reply: AlreadyApplied(
        attempts=int(reply[1]), upstream_status=_optional_int(reply[2])
    ),
    "out_of_bounds": lambda reply: OutOfBounds(),
    "expired": lambda reply: _out_of_time("expired", reply),
    "exhausted": lambda reply: _out_of_time("exhausted", reply),
}


def _parse_finish(reply: list[Any]) -> Finished | Lost:
    if _text(reply[0]) == "lost":
        return Lost()
    return Finished(claim=Claim(_text(reply[0])), event=_bytes(reply[1]))


def _parse_begin(reply: list[Any]) -> BeginResult:
    kind = _text(reply[0])
    parse = _BEGIN_REPLIES.get(kind)
    if parse is None:
        raise StoreError(f"unexpected store reply {kind!r}")
    return parse(reply)
