"""Does the store's Redis keep what subswitch writes? Checked once, at worker start.

Every guarantee lives in the store. A Redis without an append-only file forgets every
record on restart; an eviction policy other than ``noeviction`` removes exactly
subswitch's keys, which all carry a TTL (``volatile-*`` picks among keys with a TTL,
``allkeys-*`` among all). A managed Redis may refuse ``CONFIG``: then the worker says
it could not check, once, and starts anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

import redis

logger = logging.getLogger(__name__)

CHECKED: Final = ("appendonly", "maxmemory-policy")
_EVICTING: Final = ("volatile-", "allkeys-")


def durability_warnings(config: Mapping[str, str]) -> list[str]:
    """One line per risk that ``config`` (CONFIG GET answers) carries for the store."""
    warnings = []
    if config.get("appendonly", "").lower() != "yes":
        warnings.append(
            "store Redis runs without an append-only file (appendonly no): a restart "
            "forgets every command record, so duplicates reach the upstream again and "
            "older commands are no longer superseded; set appendonly yes "
            "(appendfsync everysec or always)"
        )
    policy = config.get("maxmemory-policy", "").lower()
    if policy.startswith(_EVICTING):
        warnings.append(
            f"store Redis may evict keys (maxmemory-policy {policy}): every subswitch "
            "key has a TTL, so eviction removes exactly the command records, target "
            "locks and ordering marks; set maxmemory-policy noeviction"
        )
    return warnings


def read_config(client: redis.Redis) -> dict[str, str]:
    """The :data:`CHECKED` settings of the server, as text.

    Raises:
        redis.ResponseError: the server refuses ``CONFIG`` (ACL, managed service).
    """
    found: dict[str, str] = {}
    for name in CHECKED:
        for key, value in client.config_get(name).items():
            found[_text(key)] = _text(value)
    return found


def check_durability(client: redis.Redis) -> list[str]:
    """Log a warning per risk (or one info line if it cannot be checked); the warnings."""
    try:
        config = read_config(client)
    except redis.ResponseError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.info(
            "store Redis durability (appendonly, maxmemory-policy) could not be checked: "
            "CONFIG GET refused (%s); see the README's Production checklist",
            reason[:200],
        )
        return []
    warnings = durability_warnings(config)
    for warning in warnings:
        logger.warning(warning)
    return warnings


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""
