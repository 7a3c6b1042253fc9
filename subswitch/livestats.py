"""Live figures of the worker processes, kept in the store for ``subswitch top``.

Every worker process reports its running totals every couple of seconds
(:func:`publish`); ``subswitch top`` reads them all (:func:`read_all`) together with
the shared circuit breaker's state (:func:`breaker_state`), so the live view needs
neither Prometheus nor a connection to any worker.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from subswitch import keys


class ProcessStats(BaseModel):
    """One worker process's running totals since it started.

    ``outcomes`` maps ``"<lane>:<outcome>"`` to a count; ``writes`` counts upstream
    writes; ``inflight`` and ``settling`` are levels at ``at`` (POSIX seconds).
    """

    model_config = ConfigDict(frozen=True)

    node: str
    pid: int
    outcomes: dict[str, int] = {}
    writes: int = 0
    inflight: int = 0
    settling: int = 0
    at: float = 0.0

    @property
    def key(self) -> str:
        """This process's key in the store."""
        return keys.process_stats(self.node, self.pid)


def publish(client: redis.Redis, stats: ProcessStats, *, now: float | None = None) -> None:
    """Store ``stats`` (expiring) and list its process in the index."""
    moment = time.time() if now is None else now
    body = stats.model_copy(update={"at": moment}).model_dump_json()
    with client.pipeline(transaction=False) as pipe:
        pipe.set(stats.key, body, ex=keys.STATS_TTL_S)
        pipe.zadd(keys.STATS_INDEX, {stats.key: int(moment * 1000)})
        pipe.zremrangebyscore(keys.STATS_INDEX, "-inf", int((moment - keys.STATS_TTL_S) * 1000))
        pipe.expire(keys.STATS_INDEX, keys.STATS_TTL_S)  # every subswitch key has a TTL
        pipe.execute()


def read_all(client: redis.Redis, *, now: float | None = None) -> list[ProcessStats]:
    """The figures of every process that reported within :data:`keys.STATS_TTL_S`."""
    moment = time.time() if now is None else now
    since = int((moment - keys.STATS_TTL_S) * 1000)
    names = [_text(name) for name in client.zrangebyscore(keys.STATS_INDEX, since, "+inf")]
    if not names:
        return []
    found = []
    for body in client.mget(names):
        if body is None:
            continue
        try:
            found.append(ProcessStats.model_validate_json(body))
        except ValidationError:
            continue  # another version's record: left out rather than fail the view
    return found


def breaker_state(client: redis.Redis) -> str:
    """The shared circuit's state: ``closed``, ``open`` or ``half_open``.

    An open circuit whose cool-down is over counts as half-open: the next request
    probes. Without traffic nobody moves the stored state on, and an idle fleet must
    not look open forever.
    """
    state, until = client.hmget(keys.BREAKER_STATE, ["state", "until"])
    if not state:
        return "closed"
    text = _text(state)
    if text == "open" and until is not None:
        seconds, micros = client.time()  # the store's clock, which wrote ``until``
        if int(_text(until)) <= int(seconds) * 1000 + int(micros) // 1000:
            return "half_open"
    return text


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
