"""The shared store: idempotency, per-target ordering and "one in flight per target".

Everything that must hold across worker processes and machines is decided here, in
Redis, by Lua scripts that run atomically. There is one implementation: production
runs it on Redis (or the embedded Redis), tests on fakeredis.

Lifecycle of a command record (``worker.keys.command``):

* ``begin`` (atomic): a duplicate of a finished command gets its stored event back;
  a reused id with another payload is a conflict; otherwise the target's lock is
  taken (a lease, so a killed worker never wedges a target) and the command is
  either superseded (older than the newest command applied to the target) or
  allowed one more upstream attempt.
* ``release`` after a transient failure: the lock goes, the error is kept.
* ``finish`` (atomic): the terminal event is stored, the target's watermark moves
  if the command was applied, and the lock goes. Whoever finishes holds a
  short claim on publishing the event; ``mark_published`` ends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import redis

from subswitch.contract import ChangeBlockStatus, ChangeServiceStatus, Target
from worker import keys

Command = ChangeServiceStatus | ChangeBlockStatus

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

# KEYS: command, lock, target. ARGV: fp, token, lease_ms, max_attempts, retention_s,
# issued_us, command_id, expired (0/1), claim_ms.
_BEGIN_LUA: Final = (
    _CLAIM_LUA
    + """
local rec = redis.call('HMGET', KEYS[1], 'fp', 'state', 'attempts', 'event', 'last_error')
if rec[1] and rec[1] ~= ARGV[1] then return {'conflict'} end
if rec[2] == 'done' then return {'done', claim(KEYS[1], ARGV[2], tonumber(ARGV[9])), rec[4]} end
local attempts = tonumber(rec[3] or '0')
if ARGV[8] == '1' then return {'expired', attempts, rec[5] or ''} end
if attempts >= tonumber(ARGV[4]) then return {'exhausted', attempts, rec[5] or ''} end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) == false then return {'busy'} end
local w = redis.call('HMGET', KEYS[3], 'us', 'id')
if w[1] then
  local w_us, us = tonumber(w[1]), tonumber(ARGV[6])
  if w_us > us or (w_us == us and w[2] >= ARGV[7]) then return {'superseded', attempts} end
end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'sending', 'attempts', attempts + 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {'go', attempts + 1}
"""
)

# KEYS: command, lock. ARGV: token, last_error, retention_s.
_RELEASE_LUA: Final = """
redis.call('HSET', KEYS[1], 'state', 'waiting', 'last_error', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS: command, lock. ARGV: token. The attempt did not happen after all.
_YIELD_LUA: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'state', 'waiting')
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: command, lock, target. ARGV: token, fp, event, applied (0/1), issued_us,
# command_id, retention_s, target_retention_s, claim_ms.
_FINISH_LUA: Final = (
    _CLAIM_LUA
    + """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if redis.call('HGET', KEYS[1], 'state') == 'done' then
  return {claim(KEYS[1], ARGV[1], tonumber(ARGV[9])), redis.call('HGET', KEYS[1], 'event')}
end
redis.call('HSET', KEYS[1], 'fp', ARGV[2], 'state', 'done', 'event', ARGV[3], 'published', '0')
redis.call('EXPIRE', KEYS[1], ARGV[7])
if ARGV[4] == '1' then
  local w = redis.call('HMGET', KEYS[3], 'us', 'id')
  local us = tonumber(ARGV[5])
  if not w[1] or tonumber(w[1]) < us or (tonumber(w[1]) == us and w[2] < ARGV[6]) then
    redis.call('HSET', KEYS[3], 'us', ARGV[5], 'id', ARGV[6])
  end
  redis.call('EXPIRE', KEYS[3], ARGV[8])
end
return {claim(KEYS[1], ARGV[1], tonumber(ARGV[9])), ARGV[3]}
"""
)

# KEYS: record. ARGV: token, event, retention_s, claim_ms.
_RECORD_LUA: Final = (
    _CLAIM_LUA
    + """
if redis.call('HSETNX', KEYS[1], 'event', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[1], 'state', 'done', 'published', '0')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return {claim(KEYS[1], ARGV[1], tonumber(ARGV[4])), redis.call('HGET', KEYS[1], 'event')}
"""
)


class StoreError(Exception):
    """The store could not be reached or answered unexpectedly; retry later."""


# --- what begin() can answer --------------------------------------------------------


@dataclass(frozen=True)
class Go:
    """Send attempt number ``attempt`` upstream; the target's lock is held."""

    attempt: int


@dataclass(frozen=True)
class Busy:
    """Another command (or another delivery of this one) holds the target; try later."""


@dataclass(frozen=True)
class Conflict:
    """The command id was used before with another payload."""


@dataclass(frozen=True)
class Finished:
    """The command (or record) is terminal; ``event`` is its stored event.

    ``claim`` is ``publish`` when this delivery must publish it, ``skip`` when it was
    published, ``busy`` when another delivery is publishing it right now.
    """

    claim: str
    event: bytes


@dataclass(frozen=True)
class Superseded:
    """A newer command was applied to the target; the target's lock is held."""

    attempts: int


@dataclass(frozen=True)
class OutOfTime:
    """``not_after`` passed (``expired``) or the attempts ran out (``exhausted``)."""

    reason: str
    attempts: int
    last_error: str | None


BeginResult = Go | Busy | Conflict | Finished | Superseded | OutOfTime


class RedisStore:
    """The store on a Redis server (redis-py client; fakeredis in tests)."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        retention_s: int = keys.DEFAULT_RETENTION_S,
        target_retention_s: int = keys.TARGET_RETENTION_S,
        claim_ms: int = keys.PUBLISH_CLAIM_MS,
    ) -> None:
        self._redis = client
        self._retention_s = retention_s
        self._target_retention_s = max(target_retention_s, retention_s)
        self._claim_ms = claim_ms
        self._begin = client.register_script(_BEGIN_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._yield = client.register_script(_YIELD_LUA)
        self._finish = client.register_script(_FINISH_LUA)
        self._record = client.register_script(_RECORD_LUA)

    @classmethod
    def from_url(cls, url: str, *, retention_s: int = keys.DEFAULT_RETENTION_S) -> RedisStore:
        """A store on the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return cls(client=client, retention_s=retention_s)

    def __repr__(self) -> str:
        return f"RedisStore(retention_s={self._retention_s})"

    @property
    def client(self) -> redis.Redis:
        """The Redis client, for other shared state on the same server."""
        return self._redis

    def begin(
        self,
        command: Command,
        *,
        fingerprint: str,
        token: str,
        lease_ms: int,
        max_attempts: int,
        expired: bool,
    ) -> BeginResult:
        """Decide what this delivery of ``command`` does next (see the module doc)."""
        target = command.target
        args = [
            fingerprint,
            token,
            lease_ms,
            max_attempts,
            self._retention_s,
            command.order_key[0],
            command.command_id,
            int(expired),
            self._claim_ms,
        ]
        reply = self._run(self._begin, self._keys(command.command_id, target), args)
        return _parse_begin(reply)

    def release(self, command_id: str, target: Target, *, token: str, last_error: str) -> None:
        """Give the target back after a failed attempt, keeping the error."""
        keys_ = [keys.command(command_id), keys.target_lock(target)]
        self._run(self._release, keys_, [token, last_error, self._retention_s])

    def give_back(self, command_id: str, target: Target, *, token: str) -> None:
        """Give the target back without having sent: the attempt is not counted."""
        keys_ = [keys.command(command_id), keys.target_lock(target)]
        self._run(self._yield, keys_, [token])

    def finish(
        self,
        command: Command,
        *,
        fingerprint: str,
        token: str,
        event: bytes,
        applied: bool,
    ) -> Finished:
        """Store the terminal event, move the watermark if applied, free the target.

        If another delivery finished first, its event wins and is returned.
        """
        args = [
            token,
            fingerprint,
            event,
            int(applied),
            command.order_key[0],
            command.command_id,
            self._retention_s,
            self._target_retention_s,
            self._claim_ms,
        ]
        reply = self._run(self._finish, self._keys(command.command_id, command.target), args)
        return Finished(claim=_text(reply[0]), event=_bytes(reply[1]))

    def record(self, key: str, *, token: str, event: bytes) -> Finished:
        """Keep a standalone terminal event (a rejected message) once, under ``key``."""
        args = [token, event, self._retention_s, self._claim_ms]
        reply = self._run(self._record, [key], args)
        return Finished(claim=_text(reply[0]), event=_bytes(reply[1]))

    def mark_published(self, key: str) -> None:
        """The event of the record at ``key`` reached the broker."""
        try:
            pipe = self._redis.pipeline(transaction=False)  # one round trip for both
            pipe.hset(key, mapping={"published": "1"})
            pipe.hdel(key, "claim", "claim_until")
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"store unavailable: {exc}") from exc

    def ping(self) -> bool:
        """Whether the store answers."""
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        """Close the store's connections."""
        self._redis.close()

    @staticmethod
    def _keys(command_id: str, target: Target) -> list[str]:
        return [keys.command(command_id), keys.target_lock(target), keys.target(target)]

    @staticmethod
    def _run(script: Any, keys_: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys_, args=args)
        except redis.RedisError as exc:
            raise StoreError(f"store unavailable: {exc}") from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _parse_begin(reply: list[Any]) -> BeginResult:
    kind = _text(reply[0])
    if kind == "go":
        return Go(attempt=int(reply[1]))
    if kind == "busy":
        return Busy()
    if kind == "conflict":
        return Conflict()
    if kind == "done":
        return Finished(claim=_text(reply[1]), event=_bytes(reply[2]))
    if kind == "superseded":
        return Superseded(attempts=int(reply[1]))
    if kind in {"expired", "exhausted"}:
        last_error = _text(reply[2]) or None
        return OutOfTime(reason=kind, attempts=int(reply[1]), last_error=last_error)
    raise StoreError(f"unexpected store reply {kind!r}")
