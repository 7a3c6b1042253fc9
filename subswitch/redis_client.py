"""The one way to a Redis client for a store URL: ``redis://``, ``rediss://``,
``unix://``, or ``redis+sentinel://`` (the master that the Sentinels name, found again
after a failover)."""

from __future__ import annotations

from typing import Any

import redis
from redis.retry import Retry
from redis.sentinel import Sentinel

from subswitch.errors import ConfigurationError
from subswitch.urls import STORE_VARIABLE, is_sentinel_url, parse_sentinel_url


def redis_client(
    url: str,
    *,
    timeout_s: float,
    retry: Retry | None = None,
    variable: str = STORE_VARIABLE,
) -> redis.Redis:
    """A client of the Redis at ``url`` with ``timeout_s`` to connect and per command.

    Through Sentinel the client asks the Sentinels for the master on connecting, and
    again after a failover (redis-py's ``SentinelConnectionPool``); the Sentinels are
    asked with the same timeouts and no password.

    Raises:
        ConfigurationError: an unknown scheme or a malformed ``redis+sentinel://`` URL
            (one line naming ``variable``, never the URL).
    """
    # Without a retry of its own, the client keeps redis-py's default one.
    extra: dict[str, Any] = {} if retry is None else {"retry": retry}
    if not is_sentinel_url(url):
        try:
            return redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **extra
            )
        except ValueError:  # redis-py's answer to a scheme it does not know
            scheme = url.partition("://")[0]
            raise ConfigurationError(
                f"unknown store scheme {scheme!r}; use redis://, rediss://, unix:// or "
                "redis+sentinel://",
                variable=variable,
            ) from None
    parsed = parse_sentinel_url(url, variable=variable)
    # redis-py's Sentinel API is untyped.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels),
        sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s},
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        parsed.master,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **extra,
    )
    return master
