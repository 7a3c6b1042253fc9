"""What a piece of code asks of a real Redis: every command it runs on one database,
those inside Lua scripts included, seen through ``MONITOR``.

Deterministic: the recording starts and stops at marker commands sent on the same
database, so it holds exactly what ran between them (other databases of the server,
which other sessions may be using, are left out).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis


@dataclass
class Recording:
    """The commands seen, in order: ``(client_type, NAME)``; ``client_type`` is
    ``lua`` for a command a script ran, else how the client connected."""

    commands: list[tuple[str, str]] = field(default_factory=list)

    def names(self) -> Counter[str]:
        """How often each command ran (scripts' own commands included)."""
        return Counter(name for _, name in self.commands)

    def round_trips(self) -> Counter[str]:
        """How often each command was sent by a client (not run by a script)."""
        return Counter(name for kind, name in self.commands if kind != "lua")


@contextmanager
def recorded(url: str) -> Iterator[Recording]:
    """Record every command run on ``url``'s database inside the block."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    marker = f"subswitch-test-mark-{uuid.uuid4().hex}"
    recording = Recording()
    with client.monitor() as monitor:
        client.echo(f"{marker}-start")
        _read_until(monitor, db, f"{marker}-start", None)
        try:
            yield recording
        finally:
            client.echo(f"{marker}-stop")
            _read_until(monitor, db, f"{marker}-stop", recording)
    client.close()


def _read_until(monitor: Any, db: int, marker: str, into: Recording | None) -> None:
    while True:
        seen = monitor.next_command()
        if seen.get("db") != db:
            continue
        words = str(seen.get("command", "")).split()
        if len(words) == 2 and words[0].upper() == "ECHO" and words[1] == marker:
            return
        if into is not None and words:
            into.commands.append((str(seen.get("client_type", "")), words[0].upper()))
